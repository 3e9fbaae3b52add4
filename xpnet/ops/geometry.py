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


def spectral_frame(hw, kernel, stride, padding):
    """(Lh, Lw): the smallest frame whose circular correlation equals the zero-padded one on every
    output, input gradient and weight gradient (ops/spectral.py). Along an axis with ``size`` cells,
    padding (a, b), a kernel of k and stride s (o outputs): the input sits at [a, a + size), and a
    window reads up to cell (o - 1) s + k - 1 of the padded axis. A read that runs past the frame's
    end wraps to its start, where the frame holds the a leading zeros of the padding, which is what
    the padded axis has there (zeros after the input): so the frame needs a + size cells for the
    input and (o - 1) s + k - a for the reads, not a + size + b. For "same" 5x5 kernels that is
    size + 2 instead of size + 4 (14 -> 16, not 18): 20 % fewer frequency bins. The input gradient
    and the weight gradient read the same cells, so the same bound holds for them."""
    out = []
    for size, (a, b), k, s in ((hw[0], padding[:2], kernel[0], stride[0]),
                               (hw[1], padding[2:], kernel[1], stride[1])):
        o = out_size(size + a + b, k, s)
        out.append(max(a + size, (o - 1) * s + k - a, (o - 1) * s + 1, k))
    return tuple(out)


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
