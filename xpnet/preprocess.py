"""Image preprocessing on the host (NumPy): resizing, and MNIST-style centring of one digit.

MNIST's digits were made this way (LeCun, Cortes and Burges): the digit's bounding box was scaled
to fit a 20 x 20 box, keeping its aspect ratio (anti-aliased, hence the grey levels), and placed in
a 28 x 28 field so that its centre of mass lies at the field's centre. ``mnist_style`` does the
same to a drawn or photographed digit, so that a model trained on MNIST sees what it was trained
on. It is shared by ``xpnet predict --preprocess mnist`` and the draw-a-digit page.

    from xpnet.preprocess import mnist_style
    digit = mnist_style(image)       # (H, W) floats in [0, 1] or uint8, light strokes on dark
    digit.shape                      # (28, 28), float64 in [0, 1]
"""
import numpy as np

from .errors import DataError, ShapeError

FIELD = 28        # MNIST's image size
BOX = 20          # the box the digit's bounding box is scaled to fit
CENTRE = 14.0     # where MNIST puts the centre of mass (measured on its training images: 14.0 +- 0.3)
INK = 0.1         # a pixel brighter than this (of full brightness) belongs to the digit


def as_gray(image):
    """A 2-D image (H, W) as float64 in [0, 1] (uint8 is divided by 255)."""
    a = np.asarray(image)
    if a.ndim != 2:
        raise ShapeError(f"expected one gray image (H, W), got an array of shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if a.dtype.kind not in "fiu":
        raise DataError(f"expected a numeric image, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if not np.isfinite(a).all():
        raise DataError("the image contains NaN or infinite values")
    if a.size and (a.min() < 0.0 or a.max() > 1.0):
        raise DataError(f"expected pixel values in [0, 1] (or uint8), got {a.min():g} .. {a.max():g}")
    return a


def mnist_style(image, ink=INK):
    """One digit (H, W), light strokes on a dark background -> (28, 28) float64 in [0, 1], made the
    way MNIST's digits were: bounding box scaled to fit 20 x 20, centre of mass at the centre."""
    img = as_gray(image)
    rows, cols = np.nonzero(img > ink)
    if rows.size == 0:
        raise DataError(f"no digit found: no pixel is brighter than {ink:g} of full brightness "
                        "(a blank image, or dark strokes on a light background that need inverting)")
    crop = img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    h, w = crop.shape
    scale = BOX / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    box = np.clip(resize(crop[None], new_h, new_w)[0], 0.0, 1.0)
    total = box.sum()
    cy = (box.sum(axis=1) * np.arange(new_h)).sum() / total
    cx = (box.sum(axis=0) * np.arange(new_w)).sum() / total
    top, left = int(round(CENTRE - cy)), int(round(CENTRE - cx))
    field = np.zeros((FIELD, FIELD))
    # paste with clipping (a very lopsided digit may reach past the edge once centred)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + new_h, FIELD), min(left + new_w, FIELD)
    field[y0:y1, x0:x1] = box[y0 - top:y1 - top, x0 - left:x1 - left]
    return field


def resize(img, h, w):
    """Bilinear resize of a (C, H, W) float image (area-averaged first when shrinking a lot)."""
    c, h0, w0 = img.shape
    if (h0, w0) == (h, w):
        return img
    fy, fx = max(1, h0 // h), max(1, w0 // w)
    if fy > 1 or fx > 1:
        img = img[:, :h0 // fy * fy, :w0 // fx * fx].reshape(c, h0 // fy, fy, w0 // fx, fx).mean(axis=(2, 4))
        c, h0, w0 = img.shape
    ys = np.clip((np.arange(h) + 0.5) * h0 / h - 0.5, 0, h0 - 1)
    xs = np.clip((np.arange(w) + 0.5) * w0 / w - 0.5, 0, w0 - 1)
    y0, x0 = np.floor(ys).astype(int), np.floor(xs).astype(int)
    y1, x1 = np.minimum(y0 + 1, h0 - 1), np.minimum(x0 + 1, w0 - 1)
    wy, wx = (ys - y0)[:, None], (xs - x0)[None, :]
    top = img[:, y0][:, :, x0] * (1 - wx) + img[:, y0][:, :, x1] * wx
    bottom = img[:, y1][:, :, x0] * (1 - wx) + img[:, y1][:, :, x1] * wx
    return top * (1 - wy) + bottom * wy
