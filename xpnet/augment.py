"""Batched image augmentation on the device: random affine warps and elastic distortions.

Everything is written against ``xp`` and works on a whole (N, C, H, W) float batch at once; the
random numbers come from a CounterRandom, so one seed gives the same batch on every backend.

Coordinates: x is the column (to the right), y the row (downwards), in pixels, measured from the
image centre ((W - 1) / 2, (H - 1) / 2). A positive rotation turns the picture counter-clockwise
as displayed (row 0 at the top), like ``numpy.rot90``; a positive shift moves it right / down.
"""
import math
import numbers
import weakref

from . import checks
from .errors import ConfigError, ShapeError


def _check_images(x, who):
    if getattr(x, "ndim", None) != 4:
        raise ShapeError(f"{who}: expected a float batch (N, C, H, W), got shape "
                         f"{getattr(x, 'shape', type(x).__name__)}")
    if x.dtype.kind != "f":
        raise ShapeError(f"{who}: expected float images, got {x.dtype}; "
                         "convert uint8 data first (xpnet.datasets.to_float or x / 255)")
    if 0 in x.shape[2:]:
        raise ShapeError(f"{who}: expected images of at least one pixel, got shape {tuple(x.shape)}")


def bilinear_sample(xp, x, xs, ys, fill=0.0):
    """Sample each image of ``x`` (N, C, H, W) at columns ``xs`` and rows ``ys`` (N, H', W').

    Bilinear interpolation; neighbours outside the image read as ``fill``. Integer coordinates
    return the pixels exactly.
    """
    n, c, h, w = x.shape
    grid = xp.stack([xs.reshape(n, -1), ys.reshape(n, -1)], axis=1)
    limits, offsets = _gather_constants(xp, n, c, h, w, grid.dtype)
    return _bilinear(xp, x, grid, fill, limits, offsets).reshape((n, c) + tuple(xs.shape[1:]))


def _bilinear(xp, x, grid, fill, limits, offsets, per_corner=False):
    """``bilinear_sample`` at columns grid[:, 0] and rows grid[:, 1] (grid: (N, 2, P)); returns
    (N, C, P).

    The images sit in a two-pixel frame of ``fill``. The top-left neighbour (x0, y0) of a sample
    is clipped to [-2, W] x [-2, H] (``limits``): outside the image it and its right and lower
    neighbours then all lie in the frame, so the four neighbours are one gather at fixed flat
    offsets from (x0, y0), without a mask (the same values as masking each neighbour). x and y
    share each element-wise pass. The interpolation is ``top = c00 + fx (c01 - c00)``,
    ``bottom = c10 + fx (c11 - c10)``, ``top + fy (bottom - top)`` in the grid's dtype.
    ``per_corner`` (NumPy only): four gathers of N x C x P, one per neighbour, by NumPy's
    unbuffered ``take`` (mode "clip": the offsets are in range, and a NaN coordinate's index, the
    most negative int64, is clipped at once, where "wrap" adds the size until it is in range:
    practically forever; the sample is NaN either way), instead of one of 4 x N x C x P
    offsets made by a broadcast sum, with the flat indices made in the float dtype where that
    is exact: the same values, cheaper on the CPU."""
    n, c, h, w = x.shape
    wf = w + 4
    framed = xp.full((n, c, h + 4, wf), fill, dtype=x.dtype)
    framed[:, :, 2:-2, 2:-2] = x
    g0 = xp.floor(grid)
    frac = grid - g0                                                # (N, 2, P): fx, fy
    xp.clip(g0, -2, limits, out=g0)
    exact = 1 << (xp.finfo(g0.dtype).nmant + 1)
    if per_corner and n * c * (h + 4) * wf <= exact:
        # cheaper on the CPU: every flat index y0 (W + 4) + x0 + the plane's offset made in the
        # grid's float dtype (whole numbers below 2 ** (mantissa bits + 1), so exact in any order)
        # and converted by the last addition itself, instead of converting x0 and y0 and
        # combining them as integers: the same indices, two passes fewer
        flat = g0[:, 1] * wf
        flat += g0[:, 0]
        flat = xp.add(flat[:, None, :], offsets[0].astype(g0.dtype), casting="unsafe",
                      out=xp.empty((n, c, h * w), dtype=offsets.dtype))
    else:
        corner = g0.astype(offsets.dtype)                           # (x0, y0), clipped
        flat = corner[:, 1] * wf
        flat += corner[:, 0]
        if per_corner:
            flat = flat[:, None, :] + offsets[0]
    if per_corner:  # (4, N, C, P): c00, c10, c01, c11
        framed = framed.reshape(-1)
        corners = xp.empty((4,) + flat.shape, dtype=x.dtype)
        for k, step in enumerate((0, wf, 1, wf + 1)):
            framed[step:].take(flat, out=corners[k], mode="clip")
    else:
        # the indices clipped into the frame: they are there already, except a NaN coordinate's
        # (the most negative int64), which ``take`` (mode "raise" on NumPy, no mode on CuPy) would
        # refuse or wrap; that sample's fraction is NaN, so it comes back NaN as per_corner's
        index = flat[:, None, :] + offsets
        corners = xp.take(framed, xp.clip(index, 0, framed.size - 1, out=index))
    left, tb = corners[:2], corners[2:]
    tb -= left
    tb *= frac[:, 0:1]
    tb += left                                                      # (top, bottom)
    top, out = tb[0], tb[1]
    out -= top
    out *= frac[:, 1:2]
    out += top
    return out.astype(x.dtype, copy=False)


def _pair_of(xp, a, b, dtype):
    """The array [a, b] made on the device (no host-to-device copy); exact for the small whole
    and half-whole numbers used here."""
    return xp.arange(2, dtype=dtype) * (b - a) + a


def _gather_constants(xp, n, c, h, w, dtype):
    """``_bilinear``'s limits ((2, 1) [W, H] in ``dtype``, or W where H = W) and the flat
    offsets (4, N, C, 1), int64, in the framed batch (N, C, H + 4, W + 4), of the neighbours
    (x0, y0), (x0, y0 + 1), (x0 + 1, y0), (x0 + 1, y0 + 1) of a top-left neighbour (x0, y0) =
    (0, 0) of each plane."""
    wf = w + 4
    first = xp.arange(n * c, dtype=xp.int64).reshape(n, c, 1) * ((h + 4) * wf) + (2 * wf + 2)
    step = xp.arange(2, dtype=xp.int64)
    corner = (step[:, None] + step * wf).reshape(4, 1, 1, 1)
    limits = w if h == w else _pair_of(xp, w, h, dtype)[:, None]  # a scalar clips faster
    return limits, first + corner


def _grid_constants(xp, h, w, dtype):
    """(uv (2, H * W): each output pixel's centred column and row; centre (2,)
    [(W - 1) / 2, (H - 1) / 2]; nearest (2, 1) [W - 1, H - 1]), in ``dtype``."""
    centre = _pair_of(xp, (w - 1) / 2.0, (h - 1) / 2.0, dtype)
    u = xp.arange(w, dtype=dtype) - centre[0]
    v = xp.arange(h, dtype=dtype) - centre[1]
    uv = xp.stack([xp.tile(u, h), xp.repeat(v, w)])
    return uv, centre, _pair_of(xp, w - 1, h - 1, dtype)[:, None]


def warp_constants(xp, x, keep=None):
    """``affine_warp_xp``'s constants for batches shaped like ``x``: computed here, or taken from
    and added to the dict ``keep`` (the NumPy backend keeps them: computing them costs more than
    warping a few small images)."""
    n, c, h, w = x.shape
    key = (n, c, h, w, x.dtype.str)
    found = keep.get(key) if keep is not None else None  # one lookup: pool threads share ``keep``
    if found is not None:
        return found
    found = _grid_constants(xp, h, w, x.dtype) + _gather_constants(xp, n, c, h, w, x.dtype)
    if keep is not None:
        if len(keep) >= 64:
            keep.clear()
        keep[key] = found
    return found


def check_warp(x, matrices, mode):
    if mode not in ("constant", "nearest"):
        raise ConfigError(f"affine_warp: mode must be 'constant' or 'nearest', got {mode!r}")
    _check_images(x, "affine_warp")
    n = x.shape[0]
    if tuple(matrices.shape) != (n, 2, 3):
        raise ShapeError(f"affine_warp: matrices must have shape ({n}, 2, 3) for a batch of {n}, "
                         f"got {tuple(matrices.shape)}")


def affine_warp(xp, x, matrices, fill=0.0, mode="constant"):
    """Warp each image of ``x`` (N, C, H, W) by its inverse map ``matrices`` (N, 2, 3).

    Output pixel (x, y), in centred coordinates, samples the input at
    ``(m[0,0] x + m[0,1] y + m[0,2], m[1,0] x + m[1,1] y + m[1,2])``; [[1,0,0],[0,1,0]] is the
    identity. Out-of-range samples read as ``fill`` (mode "constant") or as the nearest edge
    pixel (mode "nearest", scipy's and Keras's "nearest"). The backend's ``affine_warp`` does it
    (one fused kernel on a GPU; ``affine_warp_xp`` below on the CPU backends).
    """
    from .backends import backend_of
    check_warp(x, matrices, mode)
    return backend_of(x).affine_warp(x, matrices, fill, mode)


def affine_warp_xp(xp, x, matrices, fill=0.0, mode="constant", keep=None):
    """The reference of ``affine_warp``, written against ``xp`` (``keep``: see warp_constants)."""
    check_warp(x, matrices, mode)
    return _warp(xp, x, matrices.astype(x.dtype), fill, mode, keep)  # astype: a copy


def _warp(xp, x, k, fill, mode, keep):
    """Warp x (N, C, H, W) by the maps ``k`` (N, 2, 3) in x's dtype, which it overwrites (with
    the image centre added to the shifts: the map from centred output to corner-based input
    coordinates, which ``_warp_centred`` takes)."""
    n, c, h, w = x.shape
    uv, centre, nearest, limits, offsets = warp_constants(xp, x, keep)
    k[:, :, 2] += centre
    return _warp_centred(xp, x, k, fill, mode, (uv, nearest, limits, offsets), keep is not None)


def _warp_centred(xp, x, k, fill, mode, constants, per_corner=False):
    """``_warp`` with the centre already added to k[:, :, 2]; ``per_corner`` (the CPU backends):
    the backend's compiled warp where it has one, else see _bilinear."""
    n, c, h, w = x.shape
    uv, nearest, limits, offsets = constants
    if per_corner:  # the CPU backends: one compiled pass where the backend has it (same bits)
        from .backends import backend_of
        out = backend_of(x).warp_compiled(x, k, uv, fill, mode == "nearest")
        if out is not None:
            return out
    # columns and rows of every output pixel together, (N, 2, H * W), in x's dtype:
    # m[0] u + m[1] v + (m[2] + centre) with (u, v) the pixel's centred column and row
    if per_corner:  # the same values without the (N, 2, 2, P) temporary: faster on the CPU
        # m[0] u depends on the column only and m[1] v on the row only: (N, 2, W) and (N, 2, H)
        # products, then one broadcast sum (a + b is b + a in floating point: the same bits)
        cols = k[:, :, 0:1] * uv[0, :w]
        rows = k[:, :, 1:2] * uv[1, ::w]
        grid = (rows[:, :, :, None] + cols[:, :, None, :]).reshape(n, 2, h * w)
    else:
        terms = k[:, :, :2, None] * uv                              # (N, 2, 2, P)
        grid = terms[:, :, 0] + terms[:, :, 1]
    grid += k[:, :, 2:]
    if mode == "nearest":
        xp.clip(grid, 0, nearest, out=grid)
    return _bilinear(xp, x, grid, fill, limits, offsets, per_corner).reshape(n, c, h, w)


def keras_matrices_xp(xp, u, angle, shift_x, shift_y, zoom):
    """KerasAffine's inverse maps (N, 2, 3) from uniforms ``u`` (5, N) in [0, 1): with r = 2u - 1,
    an angle of ``angle * r[0]`` radians, shifts of ``shift_x * r[1]``, ``shift_y * r[2]`` pixels
    and zoom factors 1 + zoom * r[3] (x), 1 + zoom * r[4] (y); input = R (Z out + t). The
    reference of the backends' ``keras_affine_matrices`` (one fused kernel on a GPU)."""
    r = u * 2.0 - 1.0
    theta = angle * r[0]
    tx, ty = shift_x * r[1], shift_y * r[2]
    zx, zy = 1.0 + zoom * r[3], 1.0 + zoom * r[4]
    cos, sin = xp.cos(theta), xp.sin(theta)
    # input = R (Z out + t):  A = R Z,  b = R t
    row0 = xp.stack([cos * zx, -sin * zy, cos * tx - sin * ty], axis=-1)
    row1 = xp.stack([sin * zx, cos * zy, sin * tx + cos * ty], axis=-1)
    return xp.stack([row0, row1], axis=-2)


def affine_matrices(xp, angle=0.0, scale_x=1.0, scale_y=1.0, shift_x=0.0, shift_y=0.0):
    """Inverse maps (N, 2, 3) for: scale by (scale_x, scale_y), rotate by ``angle`` degrees
    (counter-clockwise as displayed), then shift by (shift_x, shift_y) pixels.

    Each argument is an array of shape (N,) (at least one must be); scalars broadcast.
    """
    args = [angle, scale_x, scale_y, shift_x, shift_y]
    arrays = [a for a in args if getattr(a, "ndim", 0) == 1]
    if not arrays:
        raise ShapeError("affine_matrices: give at least one parameter as an (N,) array")
    n, dtype = arrays[0].shape[0], arrays[0].dtype
    angle, sx, sy, tx, ty = (a if getattr(a, "ndim", 0) == 1 else xp.full((n,), a, dtype=dtype)
                             for a in args)
    theta = angle * (math.pi / 180.0)
    cos, sin = xp.cos(theta), xp.sin(theta)
    a00, a01 = cos / sx, -sin / sx
    a10, a11 = sin / sy, cos / sy
    b0 = -(a00 * tx + a01 * ty)
    b1 = -(a10 * tx + a11 * ty)
    return xp.stack([a00, a01, b0, a10, a11, b1], axis=-1).reshape(n, 2, 3)


def _probability(p, who):
    return checks.number(p, who, "probability", low=0.0, high=1.0, want="in [0, 1]")


def _fraction(value, who, name):
    return checks.number(value, who, name, low=0.0, high=1.0, open_high=True,
                         want="a fraction in [0, 1)")


# the largest float32: a fill or a displacement beyond it is inf in float32 images
_FLOAT32_MAX = 3.4028234663852886e38


def _rotation(value, who):
    """The max |angle| in degrees: a finite number >= 0 (None: 0). A NaN or infinite angle made
    NaN sampling coordinates, and the NumPy gather then spun on their integer cast (a hang)."""
    return checks.number(0.0 if value is None else value, who, "rotation", low=0.0,
                         want="a finite max |angle| in degrees >= 0")


def _fill(value, who):
    """The value of pixels outside the image: finite, and within float32's range."""
    return _within_float32(checks.number(value, who, "fill",
                                         want="a finite number (the value outside the image)"),
                           who, "fill")


def _within_float32(value, who, name):
    if abs(value) > _FLOAT32_MAX:
        raise ConfigError(f"{who}: {name} must be within float32's range (|{name}| <= 3.4e38), "
                          f"got {value!r}")
    return value


def _pair(value, who, name):
    if value is None:
        return None
    if isinstance(value, numbers.Real):
        value = (value, value)
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise ConfigError(f"{who}: {name} must be a number or an (x, y) pair, got {value!r}")
    return tuple(_fraction(v, who, name) for v in value)


def _backend(x):
    from .backends import backend_of
    return backend_of(x)


def _blend(xp, rng, x, warped_fn, probability):
    """Apply ``warped_fn`` to the batch and keep it for a random ``probability`` share of images."""
    if probability <= 0.0:
        return x
    keep = rng.random((x.shape[0],), "float64") < probability
    return xp.where(keep[:, None, None, None], warped_fn(), x)


class Augmenter:
    """Shared by the augmenters: rebuild from get_config(), and print as the constructor call."""

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class RandomAffine(Augmenter):
    """Random rotation, per-axis scale, zoom and shift, each image with ``probability``.

    rotation: max |angle| in degrees. scale: (x, y) per-axis +-fraction, or None. zoom: isotropic
    +-fraction. shift: (x, y) +-fraction of the width and height. Images not picked are returned
    unchanged; the others are resampled bilinearly about the centre, with ``fill`` outside.
    """

    def __init__(self, rotation=25.0, scale=(0.2, 0.2), zoom=0.2, shift=(0.2, 0.2),
                 probability=0.5, fill=0.0):
        who = "RandomAffine"
        self.rotation = _rotation(rotation, who)
        self.scale = _pair(scale, who, "scale")
        self.zoom = _fraction(0.0 if zoom is None else zoom, who, "zoom")
        self.shift = _pair(shift, who, "shift") or (0.0, 0.0)
        if any(s > 0.5 for s in self.shift):
            raise ConfigError(f"{who}: shift fractions above 0.5 move the image out of view, "
                              f"got {shift}")
        self.probability = _probability(probability, who)
        self.fill = _fill(fill, who)

    def matrices(self, xp, rng, n, h, w):
        """The (N, 2, 3) inverse maps for a batch of n images of h x w pixels (draws 6 x n)."""
        return self._maps(xp, rng.random((6, n), "float64") * 2.0 - 1.0, h, w)

    def _maps(self, xp, r, h, w):
        """The inverse maps for uniforms r (6, k) in [-1, 1): column i gives image i's map."""
        zoom = 1.0 + self.zoom * r[3]
        if self.scale is None:  # (1 + 0 * r) * zoom is zoom, bit for bit (r is finite)
            scale_x = scale_y = zoom
        else:
            scale_x, scale_y = (1.0 + self.scale[0] * r[1]) * zoom, (1.0 + self.scale[1] * r[2]) * zoom
        return affine_matrices(xp, angle=self.rotation * r[0], scale_x=scale_x, scale_y=scale_y,
                               shift_x=self.shift[0] * w * r[4], shift_y=self.shift[1] * h * r[5])

    def __call__(self, x, rng):
        _check_images(x, "RandomAffine")
        backend = _backend(x)
        if self.probability > 0.0 and not backend.few_launches:
            return self._warp_picked(x, rng, backend.warp_constants)
        return self._warp_all(x, rng)

    def _warp_all(self, x, rng):
        """Warp every image and keep the warp for the picked ones: no host decision, a fixed
        amount of work (GPUs, and the strict backend that stands in for them)."""
        xp = rng.xp
        n, _, h, w = x.shape
        return _blend(xp, rng, x, lambda: affine_warp(xp, x, self.matrices(xp, rng, n, h, w),
                                                      self.fill), self.probability)

    def _warp_picked(self, x, rng, keep=None):
        """``_warp_all``'s batch, warping only the picked images (where array operations are
        cheap calls and the pick is on the host anyway: the CPU backends). The numbers are the
        same, drawn in the same order (n uniforms for the pick, then 6 x n for the maps, as
        ``_blend`` and ``matrices`` draw them), so the generator advances alike; each picked
        image's map and warp come from the same element-wise operations, so the batch is
        bit-identical. The picks and maps of the next batches are made together (``_Ahead``)."""
        xp = rng.xp
        n, c, h, w = x.shape
        ahead = self._ahead(rng, x, keep)
        if ahead is not None:
            picked, k = ahead.take(rng)
        else:  # a generator that cannot look ahead: this batch's draws alone
            pick = rng.random((n,), "float64")
            r = rng.random((6, n), "float64") * 2.0 - 1.0
            picked = xp.flatnonzero(pick < self.probability)
            k = self._maps(xp, r[:, picked], h, w).astype(x.dtype)
            k[:, :, 2] += warp_constants(xp, x[:1], keep)[1]
        out = x.copy()
        if picked.shape[0]:
            xk = x[picked]
            uv, _, nearest, limits, offsets = warp_constants(xp, xk, keep)
            out[picked] = _warp_centred(xp, xk, k, self.fill, "constant",
                                        (uv, nearest, limits, offsets), keep is not None)
        return out

    def fit_batch(self, x_all, order, start, stop, rng):
        """``self(x_all[order[start:stop]], rng)``: fit's call per batch (training.py). On the CPU
        backends the rows of this and the next batches (rows from ``order`` as fit takes them:
        batch after batch of stop - start) are gathered together and their picked images (about
        CHUNK) warped in one pass of array operations, instead of one per batch; each later call
        then returns its batch's rows of that block (a view) and advances the generator by the
        batch's draws, as before. Where the backend has a thread to spare (``backend.background``:
        NumPy on more than one thread) the block after this one is made on it while the steps
        train on this one. Same numbers, same bits."""
        n = stop - start
        rows = self._serve(self.__dict__.get("_chunk"), x_all, order, start, n, rng)
        if rows is None:
            made = self.__dict__.pop("_next", None)   # (its first row, the pending block)
            if made is not None and made[0] == start:
                self._chunk = made[1].result()
                rows = self._serve(self._chunk, x_all, order, start, n, rng)
                if rows is not None:
                    self.taken_ahead = self.__dict__.get("taken_ahead", 0) + 1
        if rows is not None:
            return rows
        xb = x_all[order[start:stop]]
        backend = _backend(xb)
        if self.probability <= 0.0 or backend.few_launches:
            return self(xb, rng)
        _check_images(xb, "RandomAffine")
        keep = backend.warp_constants
        plan = self._ahead(rng, xb, keep)
        if plan is None:
            return self._warp_picked(xb, rng, keep)
        chunk = self._chunk = self._warp_chunk(x_all, order, start, n, plan, plan.index(rng), keep, rng._key)
        self._make_next(x_all, order, chunk)
        rng.advance(plan.per)
        return chunk["rows"][:n]

    def _serve(self, chunk, x_all, order, start, n, rng):
        """This batch's rows from the block ``chunk`` (advancing the generator by its draws), or
        None when the block does not hold it as the generator stands; starts the next block in
        the background when this is the block's first batch."""
        if chunk is None or chunk["n"] != n or chunk["order"]() is not order or chunk["x"]() is not x_all:
            return None
        i, off = divmod(start - chunk["start"], n)
        if not (off == 0 and 0 <= i < chunk["count"] and getattr(rng, "_key", None) == chunk["key"]
                and rng._device is None and rng.counter == chunk["counter"] + i * chunk["per"]
                and chunk["config"] == self._config()):
            return None
        if i == 0:
            self._make_next(x_all, order, chunk)
        rng.advance(chunk["per"])  # the batch's draws, taken from the look-ahead
        return chunk["rows"][i * n:(i + 1) * n]

    def _make_next(self, x_all, order, chunk):
        """Start the block after ``chunk`` on the backend's background thread, when there is one
        and the block's picks and maps are in the same look-ahead plan."""
        plan, n = chunk["plan"], chunk["n"]
        j = (chunk["counter"] - plan.start) // plan.per + chunk["count"]
        start = chunk["start"] + chunk["count"] * n
        self.__dict__.pop("_next", None)
        if j >= len(plan.batches) or start + n > order.shape[0]:
            return
        backend, key = _backend(chunk["rows"]), chunk["key"]
        keep = backend.warp_constants
        pending = backend.background(
            lambda: self._warp_chunk(x_all, order, start, n, plan, j, keep, key, split=False))
        if pending is not None:
            self._next = (start, pending)
            self.made_ahead = self.__dict__.get("made_ahead", 0) + 1

    CHUNK = 64  # about as many picked images fit_batch warps together (more leave the caches)
    CHUNK_BYTES = 4 << 20  # at most as many bytes of rows gathered ahead (at least one batch)

    def _config(self):
        return (self.rotation, self.scale, self.zoom, self.shift, self.probability, self.fill)

    def _warp_chunk(self, x_all, order, start, n, plan, j0, keep, key, split=True):
        """Batches j0, j0 + 1, ... of ``plan``, the batch j0 + i being rows
        order[start + i n : start + (i + 1) n] (as many as the plan, ``order`` and CHUNK_BYTES
        allow), gathered as one block with their picked images warped (on the backend's threads
        when ``split``; the background thread warps them alone); ``key``: the generator's."""
        xp = plan.xp
        row_bytes = x_all.dtype.itemsize * math.prod(x_all.shape[1:])
        most = min((order.shape[0] - start) // n, max(1, self.CHUNK_BYTES // max(1, n * row_bytes)))
        batches, total = [], 0
        for picked, k in plan.batches[j0:j0 + most]:
            if batches and total + picked.shape[0] > self.CHUNK:
                break
            batches.append((picked, k))
            total += picked.shape[0]
        count = len(batches)
        rows = x_all[order[start:start + count * n]]
        if total:
            positions = xp.concatenate([picked + i * n for i, (picked, _) in enumerate(batches)])
            images = rows[positions]
            maps = xp.concatenate([k for _, k in batches])
            fill = self.fill

            backend = _backend(rows)
            halves = ([slice(0, total // 2), slice(total // 2, total)]
                      if split and total > 1 and backend.split_threads() > 1 else [slice(None)])

            def part(s):  # each image is warped on its own: pieces of images give the same bits
                for h in halves[s]:  # in two halves (more pieces of so few images cost more)
                    piece = images[h]
                    uv, _, nearest, limits, offsets = warp_constants(xp, piece, keep)
                    rows[positions[h]] = _warp_centred(xp, piece, maps[h], fill, "constant",
                                                       (uv, nearest, limits, offsets), keep is not None)
            backend.split(part, len(halves), images.size * 16)  # about 16 passes over the images
        # weak references: the augmenter does not keep fit's data alive after fit returns
        return {"order": weakref.ref(order), "x": weakref.ref(x_all), "start": start, "n": n,
                "count": count, "rows": rows, "key": key, "per": plan.per,
                "counter": plan.start + j0 * plan.per, "config": self._config(), "plan": plan}

    def _ahead(self, rng, x, keep):
        """The current ``_Ahead`` for this generator and batch shape (made anew when the
        generator is not where the last one expects it), or None where the generator cannot
        look ahead."""
        if getattr(rng, "peek", None) is None or getattr(rng, "_device", None) is not None:
            return None
        plans = self.__dict__.setdefault("_plans", {})
        key = (rng._key, x.shape, x.dtype.str, self.rotation, self.scale, self.zoom, self.shift,
               self.probability)
        plan = plans.get(key)
        if plan is None or not plan.covers(rng):
            if len(plans) >= 4:
                plans.clear()
            plan = plans[key] = _Ahead(self, rng, x, keep)
        return plan

    def get_config(self):
        return {"rotation": self.rotation, "scale": list(self.scale) if self.scale else None,
                "zoom": self.zoom, "shift": list(self.shift), "probability": self.probability,
                "fill": self.fill}


class _Ahead:
    """RandomAffine's picks and maps for the next BATCHES batches shaped like ``x``, made
    together from the generator's next numbers without drawing them (``CounterRandom.peek``):
    each batch then takes its own and advances the generator by what it would have drawn."""

    BATCHES = 128

    def __init__(self, aug, rng, x, keep):
        self.xp = xp = rng.xp
        n, _, h, w = x.shape
        b = self.BATCHES
        self.per = 7 * n  # a batch draws n uniforms (the pick), then 6 x n (the maps)
        self.start = rng.counter
        u = rng.peek(b * self.per).reshape(b, 7, n)
        pick = u[:, 0] < aug.probability                            # (B, n)
        r = u[:, 1:].transpose(1, 0, 2).reshape(6, b * n) * 2.0 - 1.0
        k = aug._maps(xp, r, h, w).astype(x.dtype)                  # (B * n, 2, 3)
        k[:, :, 2] += warp_constants(xp, x[:1], keep)[1]
        picked = pick.reshape(-1)
        counts = pick.sum(axis=1).tolist()  # on the host: the picked path runs on CPU backends only
        bounds = [0]
        for count in counts:
            bounds.append(bounds[-1] + count)
        index = xp.nonzero(pick)[1]
        k = k[picked]
        self.batches = [(index[a:z], k[a:z]) for a, z in zip(bounds[:-1], bounds[1:])]

    def covers(self, rng):
        at = rng.counter - self.start
        return 0 <= at < len(self.batches) * self.per and at % self.per == 0

    def index(self, rng):
        """The batch the generator is at."""
        return (rng.counter - self.start) // self.per

    def take(self, rng):
        """(picked image indices, their centred maps) of the batch the generator is at; advances
        the generator past that batch's draws."""
        batch = self.batches[self.index(rng)]
        rng.advance(self.per)
        return batch


class KerasAffine(Augmenter):
    """Keras's ``ImageDataGenerator`` affine augmentation, drawn the way Keras draws it.

    KerasAffine(rotation=25, zoom=0.2, shift=(0.2, 0.2)) is ImageDataGenerator(rotation_range=25,
    zoom_range=0.2, width_shift_range=0.2, height_shift_range=0.2). Per image: an angle uniform in
    [-rotation, rotation] degrees; shifts uniform in [-shift, shift] times the width and height
    (pixels, not rounded); and two zoom factors, x and y, drawn INDEPENDENTLY and uniformly in
    [1 - zoom, 1 + zoom]. As in Keras the zoom factors scale the inverse map (a factor above 1
    shows more of the picture, i.e. shrinks the digit), and the inverse map is
    ``rotate(zoom(out) + shift)`` about the image centre. Samples outside the image take the
    nearest edge pixel (Keras's default ``fill_mode="nearest"``) or ``fill`` with
    ``fill_mode="constant"``. Interpolation is bilinear (Keras's ``interpolation_order=1``).
    Each image is augmented with ``probability`` (1.0, every image, as Keras does).
    """

    def __init__(self, rotation=25.0, zoom=0.2, shift=(0.2, 0.2), fill_mode="nearest", fill=0.0,
                 probability=1.0):
        who = "KerasAffine"
        self.rotation = _rotation(rotation, who)
        self.zoom = _fraction(0.0 if zoom is None else zoom, who, "zoom")
        self.shift = _pair(shift, who, "shift") or (0.0, 0.0)
        if fill_mode not in ("nearest", "constant"):
            raise ConfigError(f"{who}: fill_mode must be 'nearest' or 'constant', got {fill_mode!r}")
        self.fill_mode = fill_mode
        self.fill = _fill(fill, who)
        self.probability = _probability(probability, who)

    def matrices(self, xp, rng, n, h, w):
        """The (N, 2, 3) inverse maps for a batch of n images of h x w pixels (draws 5 x n)."""
        from .backends import backend_of
        u = rng.random((5, n), "float64")  # each row uniform in [0, 1), used as 2u - 1
        return backend_of(u).keras_affine_matrices(u, self.rotation * math.pi / 180.0,
                                                   self.shift[0] * w, self.shift[1] * h, self.zoom)

    def __call__(self, x, rng):
        _check_images(x, "KerasAffine")
        xp = rng.xp
        n, _, h, w = x.shape

        def warped():
            return affine_warp(xp, x, self.matrices(xp, rng, n, h, w), self.fill, self.fill_mode)

        return warped() if self.probability >= 1.0 else _blend(xp, rng, x, warped, self.probability)

    def get_config(self):
        return {"rotation": self.rotation, "zoom": self.zoom, "shift": list(self.shift),
                "fill_mode": self.fill_mode, "fill": self.fill, "probability": self.probability}


def gaussian_matrix(xp, size, sigma, dtype="float64"):
    """(size, size) matrix that smooths a signal with a Gaussian of std ``sigma`` pixels.

    The kernel is cut at 4 sigma and normalised over its full width; samples beyond the border
    count as zero (scipy's mode="constant").
    """
    radius = int(math.ceil(4.0 * sigma))
    norm = sum(math.exp(-k * k / (2.0 * sigma * sigma)) for k in range(-radius, radius + 1))
    d = (xp.arange(size)[:, None] - xp.arange(size)[None, :]).astype(dtype)
    g = xp.exp(-(d * d) / (2.0 * sigma * sigma)) * (xp.abs(d) <= radius)
    return (g / norm).astype(dtype)


class ElasticDistortion(Augmenter):
    """Elastic distortion (Simard, Steinkraus and Platt, 2003), each image with ``probability``.

    A random displacement field, uniform in [-1, 1] per pixel and axis, is smoothed by a
    Gaussian of std ``sigma`` (separable: one matrix product per axis), scaled by ``alpha``
    pixels and used to resample the image bilinearly (``fill`` outside).
    """

    MAX_SIGMA = 1000.0

    def __init__(self, alpha=34.0, sigma=4.0, probability=0.5, fill=0.0):
        who = "ElasticDistortion"
        # alpha: the smoothed field is within [-1, 1], so alpha within float32's range keeps the
        # displacements finite (a NaN alpha made NaN coordinates and an IndexError in the gather)
        self.alpha = _within_float32(checks.number(alpha, who, "alpha", low=0.0,
                                                   want="a finite number of pixels >= 0"), who, "alpha")
        # sigma: the kernel is cut at 4 sigma and its norm summed term by term, so a huge sigma
        # took as long as it liked; beyond the size of any image the field is flat anyway
        self.sigma = checks.number(sigma, who, "sigma", low=0.0, high=self.MAX_SIGMA, open_low=True,
                                   want=f"> 0 pixels and at most {self.MAX_SIGMA:g}")
        self.probability = _probability(probability, who)
        self.fill = _fill(fill, who)

    def displacements(self, xp, rng, n, h, w, dtype):
        """Smoothed, scaled displacement fields (dx, dy), each (N, H, W)."""
        field = rng.random((n, 2, h, w), dtype) * 2.0 - 1.0
        rows = gaussian_matrix(xp, h, self.sigma, dtype)
        cols = gaussian_matrix(xp, w, self.sigma, dtype)
        smooth = (rows @ field @ cols.T) * self.alpha
        return smooth[:, 0], smooth[:, 1]

    def warp(self, x, rng):
        """Distort every image of the batch."""
        _check_images(x, "ElasticDistortion")
        xp = rng.xp
        n, _, h, w = x.shape
        dx, dy = self.displacements(xp, rng, n, h, w, x.dtype.name)
        cols = xp.arange(w, dtype=x.dtype)[None, None, :]
        rows = xp.arange(h, dtype=x.dtype)[None, :, None]
        return bilinear_sample(xp, x, cols + dx, rows + dy, self.fill)

    def __call__(self, x, rng):
        _check_images(x, "ElasticDistortion")
        return _blend(rng.xp, rng, x, lambda: self.warp(x, rng), self.probability)

    def get_config(self):
        return {"alpha": self.alpha, "sigma": self.sigma, "probability": self.probability,
                "fill": self.fill}



AUGMENTERS = {"RandomAffine": RandomAffine, "KerasAffine": KerasAffine,
              "ElasticDistortion": ElasticDistortion}


def to_config(augmenter):
    """{"type": class name, **constructor arguments}: a JSON-able description of an augmenter."""
    return {"type": type(augmenter).__name__, **augmenter.get_config()}


def from_config(spec):
    """An augmenter from ``to_config``'s dict; None and callables are returned unchanged."""
    if spec is None or callable(spec):
        return spec
    if not isinstance(spec, dict) or spec.get("type") not in AUGMENTERS:
        raise ConfigError(f"augmentation spec must be a dict with \"type\" one of "
                          f"{', '.join(AUGMENTERS)}, got {spec!r}")
    args = {k: v for k, v in spec.items() if k != "type"}
    try:
        return AUGMENTERS[spec["type"]](**args)
    except TypeError as exc:
        raise ConfigError(f"bad arguments for {spec['type']}: {exc}") from exc


__all__ = ["RandomAffine", "KerasAffine", "ElasticDistortion", "affine_warp", "affine_matrices", "bilinear_sample",
           "gaussian_matrix", "AUGMENTERS", "to_config", "from_config"]
