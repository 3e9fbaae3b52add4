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


def mnist_style(image, threshold=0.0):
    """One digit (H, W) -> (28, 28) float64 in [0, 1], made the way MNIST's digits were.

    ``image``: ink values >= 0 (light strokes on a dark background; any scale: uint8, [0, 1], or a
    canvas's alpha), scaled so the brightest pixel is 1 (each MNIST digit peaks at 254-255). The
    bounding box of the pixels brighter than ``threshold`` (of the brightest) is scaled so its longer
    side is 20 pixels, keeping the aspect ratio, each output pixel the mean of the input it covers;
    then placed in 28 x 28 with its centre of mass on pixel (14, 14), by a whole-pixel shift.
    A blank image is a DataError."""
    ink = np.asarray(image)
    if ink.ndim != 2:
        raise ShapeError(f"expected one gray image (H, W), got an array of shape {ink.shape}")
    if ink.dtype.kind not in "fiub":
        raise DataError(f"expected a numeric image, got dtype {ink.dtype}")
    ink = ink.astype(np.float64)
    if not np.isfinite(ink).all():
        raise DataError("the image contains NaN or infinite values")
    if ink.size and ink.min() < 0:
        raise DataError(f"expected ink values >= 0, got values down to {ink.min():g}")
    peak = ink.max() if ink.size else 0.0
    if not peak > 0:
        raise DataError("no digit found: the image is blank (dark strokes on a light background "
                        "need inverting first)")
    ink = ink / peak
    rows = np.nonzero((ink > threshold).any(axis=1))[0]
    cols = np.nonzero((ink > threshold).any(axis=0))[0]
    crop = ink[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    scale = BOX / max(crop.shape)
    small = area_matrix(crop.shape[0], scale) @ crop @ area_matrix(crop.shape[1], scale).T
    mass = small.sum()
    cy = small.sum(axis=1) @ np.arange(small.shape[0]) / mass
    cx = small.sum(axis=0) @ np.arange(small.shape[1]) / mass
    top, left = int(np.floor(CENTRE - cy + 0.5)), int(np.floor(CENTRE - cx + 0.5))
    out = np.zeros((FIELD, FIELD))
    # paste with clipping (a very lopsided digit may reach past the edge once centred)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + small.shape[0], FIELD), min(left + small.shape[1], FIELD)
    out[y0:y1, x0:x1] = small[y0 - top:y1 - top, x0 - left:x1 - left]
    return np.clip(out, 0.0, 1.0)


def area_matrix(n, scale):
    """(m, n) weights resampling n pixels to m = round(n * scale): each output pixel is the mean
    of the input it covers (partial pixels weighted by their overlap)."""
    m = max(1, int(round(n * scale)))
    lo = np.arange(m)[:, None] / scale           # output pixel j covers input [lo, hi)
    hi = lo + 1 / scale
    i = np.arange(n)[None, :]
    overlap = np.clip(np.minimum(hi, i + 1) - np.maximum(lo, i), 0.0, None)
    return overlap * scale


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
