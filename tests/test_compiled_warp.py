"""The compiled bilinear warp (backends/compiled.py ``affine_warp``, numba, optional) gives the bits
of augment._warp_centred's NumPy passes (compared as bytes), on float32 and float64, in both modes,
for maps that keep the samples inside the image or send them far outside, several channels,
images that are not square and of one pixel, a NaN fill, -0.0 pixels and a grid of -0.0; the NumPy
backend really runs it for RandomAffine's picked images and for its affine_warp, and runs NumPy's
passes where the kernel does not take the arrays (float16, maps that are NaN, inf or so large that
a grid value could overflow, no numba). Without numba the module skips."""
import numpy as np
import pytest

pytest.importorskip("numba")

import xpnet.backends.compiled as compiled  # noqa: E402
from xpnet import augment as A  # noqa: E402
from xpnet.augment import RandomAffine, KerasAffine  # noqa: E402
from xpnet.backends import get_backend  # noqa: E402


def maps_for(r, x, far):
    """Centred maps (the image centre added) for x: rotations, scales and shifts, and with ``far``
    shifts of up to twice the image on every other image."""
    n, _, h, w = x.shape
    odd = np.arange(n) % 2 if far else np.zeros(n)
    m = A.affine_matrices(np, angle=r.uniform(-180, 180, n), scale_x=r.uniform(0.3, 2, n),
                          scale_y=r.uniform(0.3, 2, n), shift_x=r.uniform(-2 * w, 2 * w, n) * odd,
                          shift_y=r.uniform(-2 * h, 2 * h, n) * odd).astype(x.dtype)
    m[:, :, 2] += A.warp_constants(np, x)[1]
    return m


def both(monkeypatch, x, k, fill, mode):
    """(the compiled warp, NumPy's passes) of x by the centred maps k."""
    uv, _, nearest, limits, offsets = A.warp_constants(np, x)
    constants = (uv, nearest, limits, offsets)
    got = A._warp_centred(np, x, k.copy(), fill, mode, constants, True)
    with monkeypatch.context() as m:
        m.setattr(compiled, "ENABLED", 0)
        want = A._warp_centred(np, x, k.copy(), fill, mode, constants, True)
    return got, want


def same_bits(a, b):
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()


@pytest.fixture
def calls(monkeypatch):
    """Calls of the compiled kernel (the real one runs)."""
    count = [0]
    module = compiled.kernels()
    real = module.affine_warp

    def spy(*args):
        count[0] += 1
        return real(*args)

    monkeypatch.setattr(module, "affine_warp", spy)
    return count


@pytest.mark.parametrize("shape", [(9, 1, 28, 28), (5, 3, 17, 23), (4, 2, 12, 7), (3, 1, 1, 1), (2, 1, 1, 9)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["constant", "nearest"])
def test_the_kernel_gives_numpys_bits(monkeypatch, calls, shape, dtype, mode):
    r = np.random.default_rng(sum(shape))
    x = (r.random(shape) * 4 - 2).astype(dtype)
    x.reshape(-1)[::7] = -0.0
    for far in (False, True):
        for fill in (0.0, 0.5, float("nan")):
            got, want = both(monkeypatch, x, maps_for(r, x, far), fill, mode)
            same_bits(got, want)
    assert calls[0] == 6


def test_a_grid_of_negative_zero(monkeypatch, calls):
    """Maps of zeros with -0.0 shifts: the grid is -0.0 where the pixel's centred column and row
    are negative; "nearest" clips it (NumPy gives +0.0 there)."""
    x = np.random.default_rng(2).random((2, 1, 5, 6)).astype(np.float32)
    k = np.zeros((2, 2, 3), np.float32)
    k[:, :, 2] = -0.0
    for mode in ("constant", "nearest"):
        for fill in (0.0, -1.0):
            same_bits(*both(monkeypatch, x, k, fill, mode))
    assert calls[0] == 4


def test_what_the_kernel_does_not_take(monkeypatch, calls):
    """float16 images, maps with NaN or inf, maps so large that a grid value could overflow, maps or
    pixel coordinates of another dtype or shape, non-contiguous images, images without pixels: None from the kernel's wrapper (NumPy's passes
    run, giving the warp all the same), the kernel never called."""
    r = np.random.default_rng(4)
    x = r.random((3, 1, 8, 8)).astype(np.float32)
    k = maps_for(r, x, False)
    uv = A.warp_constants(np, x)[0]
    for bad in (np.nan, np.inf, -np.inf, 1e38):   # 1e38 times 3.5 (a centred column) overflows
        big = k.copy()
        big[1, 0, 0] = bad
        assert compiled.affine_warp(x, big, uv, 0.0, False) is None
    for large in (1e30, -1e30):   # no overflow yet: the kernel
        big = k.copy()
        big[1, 0, 0] = large
        same_bits(*both(monkeypatch, x, big, 0.0, "constant"))
    assert calls[0] == 2
    assert compiled.affine_warp(x.astype(np.float16), k.astype(np.float16), uv.astype(np.float16), 0.0, False) is None
    assert compiled.affine_warp(x, k.astype(np.float64), uv, 0.0, False) is None
    assert compiled.affine_warp(x, k[:2], uv, 0.0, False) is None
    assert compiled.affine_warp(np.ones((3, 1, 8, 16), np.float32)[:, :, :, ::2], k, uv, 0.0, False) is None
    assert compiled.affine_warp(x, k, uv.astype(np.float64), 0.0, False) is None   # another dtype: other bits
    assert compiled.affine_warp(x, k, uv[:, :-1], 0.0, False) is None
    assert compiled.affine_warp(np.ones((3, 1, 8, 0), np.float32), k, uv[:, :0], 0.0, False) is None
    monkeypatch.setattr(compiled, "ENABLED", 0)
    assert compiled.affine_warp(x, k, uv, 0.0, False) is None
    assert calls[0] == 2
    monkeypatch.setattr(compiled, "ENABLED", 1)
    assert compiled.affine_warp(x, k, uv, 0.0, False) is not None and calls[0] == 3


def test_the_backend_runs_it(monkeypatch, calls):
    """RandomAffine's picked images (fit's block of batches and a batch alone) and the NumPy
    backend's affine_warp (KerasAffine: mode nearest) go through the kernel, with the bits of
    NumPy's passes."""
    b = get_backend("numpy")
    x = b.asarray(np.random.default_rng(6).random((32, 1, 28, 28)).astype(np.float32))
    random_affine, keras_affine = RandomAffine(probability=0.5), KerasAffine()
    order = np.random.default_rng(1).permutation(32)

    def run():
        out = []
        for call in (lambda: random_affine(x, b.rng(3)), lambda: keras_affine(x, b.rng(3)),
                     lambda: random_affine.fit_batch(x, order, 0, 8, b.rng(5))):
            before = calls[0]
            out.append(call())
            out.append(calls[0] - before)   # kernel calls: each path at least one
        return out

    on = run()
    assert min(on[1::2]) >= 1, on[1::2]
    for aug in (random_affine, keras_affine):   # the next call makes its look-ahead afresh
        for name in ("_plans", "_chunk", "_next"):
            aug.__dict__.pop(name, None)
    monkeypatch.setattr(compiled, "ENABLED", 0)
    off = run()
    assert off[1::2] == [0, 0, 0]
    for a, b_ in zip(on[::2], off[::2]):
        same_bits(a, b_)
