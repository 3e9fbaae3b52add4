"""xpnet.preprocess: resizing and MNIST-style centring of one digit."""
import numpy as np
import pytest

from xpnet.errors import DataError, ShapeError
from xpnet.preprocess import mnist_style, resize


def centre_of_mass(img):
    r = np.arange(img.shape[0])
    c = np.arange(img.shape[1])
    return (img.sum(axis=1) * r).sum() / img.sum(), (img.sum(axis=0) * c).sum() / img.sum()


def test_resize_bilinear_and_area():
    img = np.arange(16, dtype=float).reshape(1, 4, 4)
    np.testing.assert_allclose(resize(img, 2, 2)[0], [[2.5, 4.5], [10.5, 12.5]])
    up = resize(np.array([[[0.0, 1.0]]]), 1, 4)
    np.testing.assert_allclose(up[0, 0], [0.0, 0.25, 0.75, 1.0])
    assert resize(img, 4, 4) is img


def test_a_tall_stroke_fills_20_rows_and_is_centred_by_mass():
    img = np.zeros((200, 120))
    img[10:190, 50:60] = 1.0  # a vertical bar off to the top-left of a large image
    out = mnist_style(img)
    assert out.shape == (28, 28) and out.dtype == np.float64
    rows = np.nonzero(out.max(axis=1) > 0.1)[0]
    cols = np.nonzero(out.max(axis=0) > 0.1)[0]
    assert rows.max() - rows.min() + 1 == 20  # the longer side scaled to 20
    assert cols.max() - cols.min() + 1 <= 2   # aspect ratio kept: 180 x 10 -> 20 x 1.1
    cy, cx = centre_of_mass(out)
    assert abs(cy - 14.0) <= 0.5 and abs(cx - 14.0) <= 0.5
    assert 0.0 <= out.min() and out.max() <= 1.0


def test_an_mnist_digit_is_nearly_unchanged():
    import xpnet
    (x, _), _ = xpnet.datasets.load("mnist")
    digit = x[0, 0]
    out = mnist_style(digit)
    # MNIST digits already are 20 x 20 boxes centred by mass: the result moves by at most a pixel
    best = min(np.abs(np.roll(np.roll(out, dy, 0), dx, 1) - digit / 255.0).mean()
               for dy in (-1, 0, 1) for dx in (-1, 0, 1))
    assert best < 0.03


def test_faint_noise_outside_the_digit_can_be_left_out_of_the_box():
    img = np.zeros((60, 60))
    img[20:40, 25:35] = 1.0
    img[2, 2] = img[57, 57] = 0.05  # specks far from the digit
    tight = mnist_style(img, threshold=0.1)
    rows = np.nonzero(tight.max(axis=1) > 0.5)[0]
    assert rows.max() - rows.min() + 1 == 20  # the digit, not the specks, fills the box
    loose = mnist_style(img)
    assert (loose > 0.5).sum() < (tight > 0.5).sum()  # with the specks the digit shrinks


def test_uint8_and_float_give_the_same_result():
    img = np.zeros((50, 40), dtype=np.uint8)
    img[10:30, 5:35] = 200
    np.testing.assert_allclose(mnist_style(img), mnist_style(img / 255.0))
    # any scale: the brightest pixel becomes 1 (200 / 255 and 0.2 are not left as they are)
    np.testing.assert_allclose(mnist_style(img), mnist_style(img / 1000.0))
    assert mnist_style(img).max() == pytest.approx(1.0, abs=1e-12)


def test_bad_input_is_refused_with_a_reason():
    with pytest.raises(DataError, match="no digit found"):
        mnist_style(np.zeros((30, 30)))
    with pytest.raises(ShapeError, match=r"one gray image \(H, W\)"):
        mnist_style(np.zeros((1, 28, 28)))
    with pytest.raises(DataError, match=r"ink values >= 0"):
        mnist_style(np.full((5, 5), -3.0))
    with pytest.raises(DataError, match="NaN"):
        mnist_style(np.full((5, 5), np.nan))
