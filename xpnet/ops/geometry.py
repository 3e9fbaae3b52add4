"""Convolution and pooling geometry, in one place: output sizes, padding, and the window slices.

Shapes are NCHW. ``padding`` is always resolved to (top, bottom, left, right) ints before an op
runs; layers resolve "valid" / "same" / (ph, pw) here from the input size.
"""
import math

from ..errors import ShapeError


def out_size(size, k, s):
    """Positions of a window of k cells with stride s along an axis of ``size`` (padded) cells."""
    return (size - k) // s + 1


def padded_hw(hw, padding):
    """(H + top + bottom, W + left + right)."""
    top, bottom, left, right = padding
    return hw[0] + top + bottom, hw[1] + left + right


def output_hw(hw, kernel, stride, padding, what):
    """(Ho, Wo) of a window sliding over the zero-padded input, or a ShapeError naming ``what``
    when the window does not fit."""
    hp, wp = padded_hw(hw, padding)
    if hp < kernel[0] or wp < kernel[1]:
        raise ShapeError(f"{what}: window {tuple(kernel)} is larger than the padded input {(hp, wp)} "
                         f"(input {tuple(hw)}, padding {tuple(padding)})")
    return out_size(hp, kernel[0], stride[0]), out_size(wp, kernel[1], stride[1])


def same_padding(size, k, s):
    """TensorFlow's "same" along one axis: out = ceil(size / s); any odd extra row/column goes
    bottom/right. Returns (before, after)."""
    out = math.ceil(size / s)
    total = max((out - 1) * s + k - size, 0)
    return total // 2, total - total // 2


def resolve_padding(spec, hw, kernel, stride):
    """(top, bottom, left, right) for "valid", "same" or an explicit (ph, pw) on input size hw."""
    if spec == "valid":
        return (0, 0, 0, 0)
    if spec == "same":
        return same_padding(hw[0], kernel[0], stride[0]) + same_padding(hw[1], kernel[1], stride[1])
    return (spec[0], spec[0], spec[1], spec[1])


def window(i, j, ho, wo, sh, sw):
    """Index of the (N, C, Ho, Wo) block of a (padded) input that kernel offset (i, j) sees."""
    return (slice(None), slice(None), slice(i, i + sh * (ho - 1) + 1, sh), slice(j, j + sw * (wo - 1) + 1, sw))


def pad(xp, x, padding, value=0.0):
    """x (N, C, H, W) framed by ``value`` rows/columns: (top, bottom, left, right); x itself when
    there is no padding."""
    top, bottom, left, right = padding
    if not any(padding):
        return x
    n, c, h, w = x.shape
    out = xp.full((n, c, h + top + bottom, w + left + right), value, dtype=x.dtype)
    out[:, :, top:top + h, left:left + w] = x
    return out
