"""What fit(..., distributed=comm) does differently: shards, one gradient all-reduce per step,
synchronised batch norm, sharded validation and metrics reduced once per epoch.

Every rank holds the whole dataset and draws the same permutation (same seed, counter-based RNG),
so no data is sent. Of each global batch of ``nb`` samples rank r takes rows
``nb * r // size : nb * (r + 1) // size``. The loss gradient is scaled by ``local / nb``, so after
the SUM all-reduce every rank holds the gradient of the global batch's mean loss, exactly what one
process with batch ``nb`` computes (up to rounding). Layers see the step through
``layer.distributed`` (a :class:`BatchShard`): Dropout draws its rows of the global batch's mask,
BatchNorm all-reduces its per-channel sums.
"""
import json

from ..errors import BatchSizeError, ConfigError, on_every_rank
from .base import DistributedError


def shard_bounds(n, rank, size):
    """Rows [lo, hi) of a batch of n that rank ``rank`` of ``size`` takes."""
    return n * rank // size, n * (rank + 1) // size


def check_batches(batch_size, n, size, steps_per_epoch=None):
    """BatchSizeError unless global batches of ``batch_size`` over ``n`` samples can be split among
    ``size`` ranks: every rank needs at least one sample of each batch, the epoch's last one too."""
    if batch_size < size:
        raise BatchSizeError(f"{{batch_size}} is the global batch over all {size} ranks and must be "
                             f"at least {size}, got {batch_size}")
    last = n % batch_size
    if steps_per_epoch is None and 0 < last < size:
        raise BatchSizeError(f"the last batch of each epoch would hold {last} of {n} samples, fewer "
                             f"than the {size} ranks; choose a {{batch_size}} that divides {n} or "
                             f"leaves at least {size} samples over", ", or pass steps_per_epoch")


def check_communicator(model, comm):
    """ConfigError unless ``comm`` is a communicator (xpnet.distributed.init()) on ``model``'s backend."""
    for attr in ("rank", "size", "allreduce", "broadcast", "backend"):
        if not hasattr(comm, attr):
            raise ConfigError(f"distributed must be a communicator from xpnet.distributed.init(), "
                              f"got {type(comm).__name__}")
    if comm.backend.name != model.backend.name:
        raise ConfigError(f"the communicator works on the {comm.backend.name} backend but the model "
                          f"on {model.backend.name}; build the model with device=comm.backend")


def gather_integers(comm, values):
    """Every rank's ``values`` (integers), with one all-reduce: a list per value, indexed by rank."""
    xp, size = comm.backend.xp, comm.size
    slots = xp.zeros((len(values) * size,), dtype=xp.float64)
    for i, value in enumerate(values):
        slots[i * size + comm.rank] = float(value)
    comm.allreduce(slots, "sum")
    seen = [int(v) for v in comm.backend.to_numpy(slots)]
    return [seen[i * size:(i + 1) * size] for i in range(len(values))]


def _disagreement(what, values):
    """The message's start when the ranks' ``values`` differ, else None."""
    if len(set(values)) > 1:
        return f"the ranks disagree on {what}: " + ", ".join(f"rank {r}: {v}" for r, v in enumerate(values))
    return None


def agree_sizes(comm, sizes):
    """Check, with one all-reduce, that every rank of ``comm`` has the same sizes (``sizes``: (what,
    integer) pairs: sample counts, steps per epoch, ...); ConfigError naming each rank's value
    otherwise. Ranks that read different data would issue different numbers of collectives, which
    pair up wrongly: a bogus epoch, then a timeout."""
    for (what, _), values in zip(sizes, gather_integers(comm, [value for _, value in sizes])):
        problem = _disagreement(what, values)
        if problem:
            raise on_every_rank(ConfigError(problem + "; every rank must train on the same data with "
                                            "the same settings"))


def agree_then_check_batches(comm, sizes, batch_size, n, steps_per_epoch=None):
    """agree_sizes on ``sizes``, then check_batches: on sizes every rank shares, a batch the ranks
    cannot share fails on every rank alike (marked on_every_rank: rank 0 alone prints it). The
    other way round, a rank whose own count failed the batch check stopped alone while the others
    waited for it in the agreement until the collectives' deadline."""
    agree_sizes(comm, sizes)
    try:
        check_batches(batch_size, n, comm.size, steps_per_epoch)
    except BatchSizeError as exc:
        raise on_every_rank(exc)


class FlatBuffer:
    """Arrays of several shapes packed into one flat device array (allocated once)."""

    def __init__(self, xp, arrays, dtype):
        self.shapes = [(tuple(a.shape), int(a.size)) for a in arrays]
        self.flat = xp.empty((sum(size for _, size in self.shapes),), dtype=dtype)

    def pack(self, arrays):
        offset = 0
        for a, (_, size) in zip(arrays, self.shapes):
            self.flat[offset:offset + size] = a.reshape(-1)
            offset += size
        return self.flat

    def views(self):
        """The packed arrays as views of the flat buffer, in their shapes."""
        out, offset = [], 0
        for shape, size in self.shapes:
            out.append(self.flat[offset:offset + size].reshape(shape))
            offset += size
        return out


class BatchShard:
    """This rank's part of the current global batch, as the layers see it during a step."""

    def __init__(self, comm, sync_batchnorm=True):
        self.comm = comm
        self.sync_batchnorm = bool(sync_batchnorm)
        self.lo = self.hi = self.total = 0

    def set(self, total):
        self.total = int(total)
        self.lo, self.hi = shard_bounds(self.total, self.comm.rank, self.comm.size)
        return self.lo, self.hi

    def rows(self, rng):
        """``rng`` drawing this rank's rows of the global batch (Dropout masks)."""
        return rng.rows(self.lo, self.hi, self.total)

    # -- synchronised batch norm (one all-reduce forward, one backward) ------------------------
    def global_count(self, x):
        """Values per channel in the global batch (samples times positions)."""
        return self.total * (x.size // max(1, x.shape[0] * x.shape[1]))

    def batch_moments(self, x, axes, shift):
        """Mean and biased variance per channel over the GLOBAL batch: one all-reduce of the sums
        of (x - shift) and (x - shift)**2, ``shift`` being the running mean (the same on every
        rank), which keeps the subtraction in the variance well conditioned."""
        xp = self.comm.backend.xp
        channels = x.shape[1]
        stat_shape = (1, channels) + (1,) * (x.ndim - 2)
        d = x - shift.reshape(stat_shape)
        sums = xp.concatenate([d.sum(axis=axes), (d * d).sum(axis=axes)])
        self.comm.allreduce(sums, "sum")
        count = self.global_count(x)
        m = sums[:channels] / count
        var = xp.maximum(sums[channels:] / count - m * m, 0.0)
        return (shift + m).astype(x.dtype, copy=False), var.astype(x.dtype, copy=False)

    def sum_pair(self, a, b):
        """(sum over ranks of a, of b) with one all-reduce (BatchNorm's backward sums)."""
        xp = self.comm.backend.xp
        buf = xp.concatenate([a, b])
        self.comm.allreduce(buf, "sum")
        return buf[:a.shape[0]], buf[a.shape[0]:]


class DataParallel:
    """fit()'s helper for one data-parallel run of ``model`` over ``comm``."""

    def __init__(self, model, comm, batch_size, n, steps_per_epoch, sync_batchnorm=True):
        check_communicator(model, comm)
        check_batches(batch_size, n, comm.size, steps_per_epoch)
        self.model, self.comm = model, comm
        self.xp = model.xp
        self.is_root = comm.rank == 0
        self.shard = BatchShard(comm, sync_batchnorm)
        self.scale = 1.0
        self._grads = None

    # -- around the run ------------------------------------------------------------------------
    def attach(self):
        for layer in self.model.layers:
            layer.distributed = self.shard

    def detach(self):
        for layer in self.model.layers:
            layer.distributed = None

    def broadcast_weights(self):
        """Every rank takes rank 0's parameters and buffers (one broadcast)."""
        arrays = list(self.model.parameters.values()) + list(self.model.buffers.values())
        if not arrays:
            return
        packed = FlatBuffer(self.xp, arrays, self.model.dtype)
        packed.pack(arrays)
        self.comm.broadcast(packed.flat, root=0)
        for target, value in zip(arrays, packed.views()):
            target[...] = value

    def broadcast_rngs(self, rngs):
        """Every rank takes rank 0's generator states (shuffle, augmentation, Dropout masks), so
        the ranks draw the same permutation and masks even if they were seeded differently."""
        from ..checkpoint import layer_rngs
        gens = dict(rngs, **{"layer/" + k: v for k, v in layer_rngs(self.model).items()})
        text = json.dumps({k: g.get_state() for k, g in gens.items()}) if self.is_root else ""
        states = json.loads(self.comm.broadcast_text(text))
        if sorted(states) != sorted(gens):
            raise DistributedError(f"rank {self.comm.rank} has the random generators {sorted(gens)} but "
                                   f"rank 0 has {sorted(states)}: every rank must build the same model")
        for k, g in gens.items():
            g.set_state(states[k])

    def agree(self, value, what):
        """Check that every rank holds the same integer ``value``; DistributedError otherwise."""
        problem = _disagreement(what, gather_integers(self.comm, [value])[0])
        if problem:
            raise on_every_rank(DistributedError(problem + "; every rank must read the same checkpoint "
                                                 "file (a folder on a file system shared by all machines)"))

    # -- per step -------------------------------------------------------------------------------
    def begin_batch(self, nb):
        """Rows [lo, hi) of a global batch of nb for this rank; sets the loss-gradient scale."""
        lo, hi = self.shard.set(nb)
        self.scale = (hi - lo) / nb
        return lo, hi

    def reduce_gradients(self):
        """Sum every layer's gradients over the ranks with ONE all-reduce of one flat buffer;
        the layers' grads become views of it."""
        owners = [(layer.grads, k) for layer in self.model.layers for k in layer.grads]
        arrays = [grads[k] for grads, k in owners]
        if not arrays:
            return
        if self._grads is None or [tuple(a.shape) for a in arrays] != [s for s, _ in self._grads.shapes]:
            self._grads = FlatBuffer(self.xp, arrays, self.model.dtype)
        self.comm.allreduce(self._grads.pack(arrays), "sum")
        for (grads, k), view in zip(owners, self._grads.views()):
            grads[k] = view

    # -- per epoch ------------------------------------------------------------------------------
    def rows(self, a):
        """This rank's contiguous share of a whole array (validation data)."""
        lo, hi = shard_bounds(int(a.shape[0]), self.comm.rank, self.comm.size)
        return a[lo:hi]

    def average_buffers(self):
        """Per-rank batch statistics: average the running statistics before validation."""
        arrays = list(self.model.buffers.values())
        if self.shard.sync_batchnorm or not arrays:
            return
        packed = FlatBuffer(self.xp, arrays, self.model.dtype)
        self.comm.allreduce(packed.pack(arrays), "mean")
        for target, value in zip(arrays, packed.views()):
            target[...] = value

    def reduce_epoch(self, sums, bad_index):
        """All-reduce the epoch's device sums once; entry ``bad_index`` (first non-finite batch of
        this rank, -1 for none) becomes the first over all ranks. Returns a host array."""
        xp, size, k = self.xp, self.comm.size, int(sums.shape[0])
        buf = xp.zeros((k + size,), dtype=xp.float64)
        buf[:k] = sums
        buf[k + self.comm.rank] = sums[bad_index] + 1.0  # 0 = none, else batch + 1
        buf[bad_index] = 0.0
        self.comm.allreduce(buf, "sum")
        host = self.model.backend.to_numpy(buf)
        bad = [v - 1.0 for v in host[k:] if v > 0]
        out = host[:k].copy()
        out[bad_index] = min(bad) if bad else -1.0
        return out
