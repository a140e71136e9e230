"""The normalization math of keras-seqnorm, written once over `keras.ops`.

Notation (the paper's Section 2.1): an input `x` has a batch axis 0 with `M`
samples, a channel axis with `C` channels, and `F` positions on every other
axis. All three normalizations used here (GroupNorm, GhostNorm, BatchNorm)
take their statistics over unions of per-(sample, channel) slices, so the
fused computation is:

1. `sample_channel_moments`: the count, mean and biased variance of every
   (sample, channel) slice, shape `(M, C)` (two passes over the input, as
   BatchNormalization's; the fused path below takes one).
2. `channel_group_moments` / `ghost_batch_moments`: those are pooled into
   the statistics of channel groups (GroupNorm) or ghost batches
   (GhostNorm), each stage by one reduction around a reference value, so
   the pooled variance is exact for inputs far from zero.
3. `apply_affine`: one elementwise `(x - centre) * scale + offset` with a
   per-(sample, channel) centre and scale.

`sequential_normalization` is the whole of GhostNorm or SeqNorm as one pure
function of `(x, gamma, beta)`. It reads the input twice and writes it once,
like BatchNormalization, whatever the number of channel groups and ghost
batches. In training on TensorFlow and JAX it has one custom gradient for
the whole layer: the backward pass is one reduction over the upstream
gradient and one elementwise pass, with every `(M, C)` term of each
direction computed by a handful of reductions (variadic ones under XLA,
each several sums in one loop). Under XLA those
terms are computed apart from the passes over the input (`fusion_barrier`)
instead of being redone at every position (except GhostNorm on JAX CPUs
with slices of 64 values or more, where redoing them is as fast:
`_FusedNormalization`). GhostNorm on JAX CPUs with ghost batches of one
size sums each ghost batch at once instead (`_WholeGhostBatches`).
"""

import collections
import contextlib
import contextvars

import keras
import numpy as np
from keras import ops

from keras_seqnorm import _keras_compat


def resolve_axis(axis, rank):
    """Returns the non-negative channel axis for an input of `rank`."""
    return axis % rank if -rank <= axis < rank else None


def reduction_axes(rank, channel_axis):
    """Axes other than the batch axis 0 and the channel axis."""
    return [a for a in range(1, rank) if a != channel_axis]


def broadcast_shape(rank, channel_axis, channels):
    """Shape that broadcasts an `(M, C)` tensor against the input."""
    return [-1] + [
        channels if a == channel_axis else 1 for a in range(1, rank)
    ]


def _as_matrix(t, channels):
    # (M, 1, ..., C, ..., 1) -> (M, C): every other axis has size one.
    return ops.reshape(t, (-1, channels))


def _mask_weights(mask, x):
    # A Keras mask covers every axis but the last (features), as
    # `keras.layers.Masking` makes it; it may also be broadcastable.
    mask = ops.expand_dims(ops.cast(mask, "bool"), axis=-1)
    return ops.broadcast_to(mask, ops.shape(x))


def under_xla():
    """Whether the computation being built will be compiled by XLA.

    Always on JAX; on TensorFlow inside a `tf.function(jit_compile=True)`
    or a function called from one; never on other backends.
    """
    backend = keras.backend.backend()
    return backend == "jax" or (
        backend == "tensorflow" and _keras_compat.in_xla_context()
    )


# The platform JAX compiles for, where it is not JAX's default backend's:
# set by `compiling_for`.
_TARGET_PLATFORM = contextvars.ContextVar("target_platform", default=None)

_PLATFORMS = ("cpu", "cuda", "rocm", "gpu", "tpu")


@contextlib.contextmanager
def compiling_for(platform):
    """Within it, JAX traces the programs fit for `platform`.

    The layers trace some programs by the platform they will be compiled
    for (JAX's default backend): those for CPUs differ from those for GPUs
    and TPUs in how XLA fuses them. To compile ahead of time for a device
    that is not the default backend's (for instance a GPU described by
    `jax.experimental.topologies` on a machine without one), trace inside
    this context; `benchmark.kernel_counts(sharding=...)` does.

    Args:
        platform: one of `"cpu"`, `"cuda"`, `"rocm"`, `"gpu"`, `"tpu"`, as
            a JAX device's `platform`.
    """
    if platform not in _PLATFORMS:
        raise ValueError(
            f"Argument `platform` must be one of {_PLATFORMS}. "
            f"Received: platform={platform!r}"
        )
    token = _TARGET_PLATFORM.set(platform)
    try:
        yield
    finally:
        _TARGET_PLATFORM.reset(token)


def _jax_platform():
    # The platform the JAX backend compiles for; None on other backends.
    if keras.backend.backend() != "jax":
        return None
    platform = _TARGET_PLATFORM.get()
    if platform is None:
        import jax

        platform = jax.default_backend()
    return platform


def _jax_on_cpu():
    # Whether the JAX backend compiles for CPUs.
    return _jax_platform() == "cpu"


def _jax_on_gpu():
    # Whether the JAX backend compiles for GPUs.
    return _jax_platform() in ("cuda", "rocm", "gpu")


def fusion_barrier(*tensors, xla=None):
    """The tensors themselves, computed apart from their consumers under XLA.

    An identity for values and gradients. Under XLA the tensors, which must
    share one shape, are stacked and gathered by constant indices, which
    XLA neither simplifies away nor fuses into a consumer that reads each
    value many times (nor fuses a reduction into its consumers through):
    so small `(M, C)` statistics are computed once, in one kernel, and
    stored, instead of being recomputed (with the index arithmetic of their
    broadcasts) at every position of the loops over the input that read
    them. (`jax.lax.optimization_barrier` does not do this on CPUs: XLA
    removes it before fusion there.) Elsewhere the tensors come back as
    they are.

    Args:
        *tensors: Tensors of one shape, batch first.
        xla: Whether XLA compiles the computation; `None` asks
            `under_xla()`. A custom gradient's backward function is traced
            apart from its forward function: pass what the forward saw.

    Returns:
        The tensor for one argument, else a tuple of them.
    """
    if xla is None:
        xla = under_xla()
    if xla:
        # Gathered along the stacking axis, never the batch axis: a batch
        # sharded over devices stays where it is.
        stacked = ops.stack(tensors, axis=1)
        stacked = ops.take(
            stacked, np.arange(len(tensors), dtype="int32"), axis=1
        )
        tensors = tuple(stacked[:, i] for i in range(len(tensors)))
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def _slice_size(x, axes):
    # Number of values in each (sample, channel) slice.
    size = 1
    for a in axes:
        size = size * ops.shape(x)[a]
    return ops.cast(size, x.dtype)


def _variance(square_mean, mean):
    # E[d^2] - E[d]^2, never negative; where E[d^2] overflows to inf the
    # variance is inf (as BatchNormalization's), never inf - inf = NaN.
    return ops.where(
        ops.isinf(square_mean),
        square_mean,
        ops.maximum(square_mean - ops.square(mean), 0.0),
    )


# XLA's CPU compilers split a reduction over an axis longer than 32 into a
# reduce-window and a reduce (TensorFlow's XLA: two kernels, and the
# stacked operands materialized before them), except a variadic one.
# `_sums` therefore reduces a longer axis as several axes of at most 32.
_SHORT_AXIS = 32


def _short(n):
    # `n` as factors of at most 32 where it has them, largest first: (40,)
    # -> (20, 2), (37,) -> (37,).
    factors = []
    while n > _SHORT_AXIS:
        f = next(
            (f for f in range(_SHORT_AXIS, 1, -1) if n % f == 0), None
        )
        if f is None:
            break
        factors.append(f)
        n //= f
    return tuple(factors) + (n,)


def _splittable(n):
    # The least m >= n that `_short` splits into axes of at most 32.
    while max(_short(n)) > _SHORT_AXIS:
        n += 1
    return n


def _short_layout(shape, axis):
    # (shape, axes) that split `axis` of `shape` into axes of at most 32,
    # or None where it is short, has no such factors or is not static.
    parts = (None,) if shape[axis] is None else _short(shape[axis])
    if len(parts) == 1 or shape.count(None) > 1:
        return None
    split = tuple(-1 if d is None else d for d in shape)
    split = split[:axis] + parts + split[axis + 1:]
    return split, tuple(range(axis, axis + len(parts)))


def _sums(tensors, axis, outputs=False, differentiable=True, xla=False):
    # The sums of same-shaped tensors over `axis`, as one reduction. On JAX,
    # and on TensorFlow where XLA compiles the computation (`xla`, which
    # the caller knows: TensorFlow traces a backward function apart), a
    # variadic reduce, which XLA fuses with the tensors' producers (a
    # reduction of a stacked tensor would be materialized first on CPUs),
    # where no gradient is needed (inside custom gradients): neither
    # differentiates it. Elsewhere one reduction of the stacked tensors, or,
    # for sums that are `outputs` of the computation, one each (slices of
    # one stacked sum would each be copied out; not on JAX GPUs, where the
    # stacked sum is taken, see below). An axis longer than 32 is
    # reduced as several shorter ones (`_short_layout`), except by
    # TensorFlow's variadic reduce, which XLA does not split.
    tensors = tuple(tensors)
    shape = tuple(tensors[0].shape)
    axis = (axis % len(shape),)
    backend = keras.backend.backend()
    if backend == "tensorflow" and xla and not differentiable:
        return _keras_compat.xla_sums(tensors, axis)
    split = _short_layout(shape, axis[0])
    if split is not None:
        tensors = tuple(ops.reshape(t, split[0]) for t in tensors)
        axis = split[1]
    if outputs and _jax_on_gpu():
        # Sums that are outputs, on GPUs (of the weighted ghost statistics
        # for the moving ones, the gradients of gamma and beta): slices of
        # one reduction, which XLA's GPU compiler computes in one kernel
        # with the other outputs' sums; a variadic reduce it keeps apart
        # (`IsNestableVariadicReduction`). GhostNorm and SeqNorm: one
        # kernel fewer in 108 of the GPU grid's 112 rows, none more (on
        # JAX CPUs 4-6 more).
        sums = ops.sum(ops.stack(tensors), axis=tuple(a + 1 for a in axis))
        return tuple(sums[i] for i in range(len(tensors)))
    if backend == "jax" and not differentiable:
        from jax import lax

        zeros = tuple(ops.zeros((), t.dtype) for t in tensors)
        return tuple(lax.reduce(
            tensors,
            zeros,
            lambda a, b: tuple(u + v for u, v in zip(a, b)),
            axis,
        ))
    if outputs:
        return tuple(ops.sum(t, axis=axis) for t in tensors)
    sums = ops.sum(ops.stack(tensors), axis=tuple(a + 1 for a in axis))
    return tuple(sums[i] for i in range(len(tensors)))


def _upstream(args, upstream):
    # Keras passes upstream gradients positionally (TensorFlow: one per
    # output; JAX: one tuple) or by keyword (torch).
    if upstream is not None:
        return upstream
    if len(args) == 1:
        return args[0]
    return args


def _first_along(x, axes):
    # The first element along `axes` (kept, of size 1) of every slice.
    return x[tuple(
        slice(0, 1) if a in axes else slice(None) for a in range(len(x.shape))
    )]


def _shifted_sums(x, channel_axis, groups=None, square_sums=False,
                  variadic=False):
    # (shift, shifted, d, q): the shift s of every slice, x - s, and the
    # (M, C) means of x - s and (x - s)^2 (with `square_sums`, their sums).
    # The shift is the slice's first element, or with channel `groups`
    # that of the group's first channel (for all channels of the group).
    # With `variadic` (TensorFlow under XLA, no gradient) both sums are one
    # reduction.
    rank = len(x.shape)
    channels = x.shape[channel_axis]
    axes = reduction_axes(rank, channel_axis)
    shift = _as_matrix(_first_along(x, axes), channels)
    if groups is not None:
        shift = groups.spread(groups.first(shift))
    full = broadcast_shape(rank, channel_axis, channels)
    shifted = x - ops.reshape(shift, full)
    if variadic:
        d, q = _keras_compat.xla_sums((shifted, ops.square(shifted)), axes)
        size = _slice_size(x, axes)
        d, q = d / size, (q if square_sums else q / size)
    else:
        reduce = ops.sum if square_sums else ops.mean
        d = _as_matrix(
            reduce(shifted, axis=axes, keepdims=True), channels
        )
        q = _as_matrix(
            reduce(ops.square(shifted), axis=axes, keepdims=True), channels
        )
    return shift, shifted, d, q


def shifted_moments(x, channel_axis):
    """Mean and biased variance of every (sample, channel) slice of `x`.

    Two passes, as BatchNormalization takes them: the mean of `x - s`, `s`
    the slice's first element, then around that mean the mean square (the
    variance) and the mean (a correction to the first, which rounds to the
    size of `x - s`). The variance is accurate for inputs far from zero
    (mean 1e4, std 1 in float32), which a plain `E[x^2] - E[x]^2` is not,
    and where the first element is far from the others, which a shifted
    `E[(x - s)^2] - E[x - s]^2` is not. The custom gradient is the exact
    `dx = g_mean / n + 2 (x - mean) g_variance / n`, one elementwise pass
    with the `(M, C)` coefficients computed apart.

    Args:
        x: float tensor of rank >= 3, batch on axis 0.
        channel_axis: non-negative channel axis of `x`.

    Returns:
        `(mean, variance)`, two tensors of shape `(M, C)`.
    """
    x = ops.convert_to_tensor(x)
    rank = len(x.shape)
    channels = x.shape[channel_axis]
    full = broadcast_shape(rank, channel_axis, channels)
    axes = reduction_axes(rank, channel_axis)
    count = _slice_size(x, axes)

    xla = under_xla()

    def means(t):
        return ops.mean(t, axis=axes, keepdims=True)

    @ops.custom_gradient
    def moments(x):
        shift = _first_along(x, axes)
        shifted = x - shift
        first = means(shifted)
        residual = shifted - first
        correction, variance = means(residual), means(ops.square(residual))
        # mean - s, and the mean from s + (mean - s) + correction: exact
        # where the first element is far from the mean.
        centre = _as_matrix(first + correction, channels)
        mean = (shift + first) + correction

        def grad(*args, upstream=None):
            upstream = _upstream(args, upstream)
            grad_mean, grad_variance = upstream[0], upstream[1]
            # 2 (x - mean) g / n, written around the shift: x - shift is
            # exact where x - mean would round mean to x's precision.
            slope = grad_variance * (2.0 / count)
            offset = grad_mean / count - centre * slope
            slope, offset = fusion_barrier(slope, offset, xla=xla)
            return shifted * ops.reshape(slope, full) + ops.reshape(
                offset, full
            )

        # One output: the torch backend's custom gradient takes only one.
        return ops.stack([
            _as_matrix(mean, channels), _as_matrix(variance, channels)
        ]), grad

    both = moments(x)
    return both[0], both[1]


def sample_channel_moments(x, channel_axis, mask=None):
    """Count, mean and biased variance of every (sample, channel) slice.

    Without a mask the statistics come from `shifted_moments`: two passes
    over `x - s`, where `s` is the slice's first element, with a custom
    gradient.
    With a mask, masked positions count in no statistic (plain autodiff).

    Args:
        x: float tensor of rank >= 2, batch on axis 0.
        channel_axis: non-negative channel axis of `x`.
        mask: optional boolean tensor broadcastable to `x.shape[:-1]`.

    Returns:
        `(count, mean, variance)`, three float tensors of shape `(M, C)`.
    """
    x = ops.convert_to_tensor(x)
    rank = len(x.shape)
    channels = x.shape[channel_axis]
    axes = reduction_axes(rank, channel_axis)
    if mask is not None:
        keep = _mask_weights(mask, x)
        count = ops.cast(keep, x.dtype)
        if axes:
            count = ops.sum(count, axis=axes, keepdims=True)
        safe = ops.maximum(count, 1.0)
        mean = ops.where(keep, x, 0.0)
        if axes:
            mean = ops.sum(mean, axis=axes, keepdims=True) / safe
            variance = ops.where(keep, ops.square(x - mean), 0.0)
            variance = ops.sum(variance, axis=axes, keepdims=True) / safe
        else:
            variance = ops.zeros_like(x)
    elif not axes:
        count = ops.ones_like(x)
        mean = x
        variance = ops.zeros_like(x)
    else:
        mean, variance = shifted_moments(x, channel_axis)
        count = ops.ones_like(mean) * _slice_size(x, axes)
    return (
        _as_matrix(count, channels),
        _as_matrix(mean, channels),
        _as_matrix(variance, channels),
    )


def _vector_lanes(width):
    # The partial sums per channel group that `_ChannelGroups.sum` takes
    # first: 16 or 8 (float32 lanes of AVX-512 or AVX2) where the group's
    # width is a multiple of more than one of them, else none.
    return next((n for n in (16, 8) if width % n == 0 and width > n), None)


def _pairwise_sum(t):
    # The sum over the last axis by halving it: elementwise adds of slices
    # (the odd ones out added at the end).
    rest = None
    while t.shape[-1] > 1:
        width = t.shape[-1]
        if width % 2:
            last = t[..., width - 1]
            rest = last if rest is None else rest + last
        half = width // 2
        t = t[..., :half] + t[..., half:2 * half]
    return t[..., 0] if rest is None else t[..., 0] + rest


class _ChannelGroups:
    """`groups` contiguous groups of the channels of `(M, C)` rows.

    With `by_group`, `split`, `per_group` and `merge` lay out arithmetic
    that mixes `(M, C)` and per-group `(M, G)` tensors as `(M, G, W)` and
    `(M, G, 1)`; without, as `(M, C)` with the group terms spread. With
    `vectorize`, `sum` without a gradient takes `lanes` partial sums per
    group first where the width allows (`_vector_lanes`).
    """

    def __init__(self, channels, groups, xla=False, by_group=False,
                 vectorize=False):
        self.channels = channels
        self.groups = groups
        self.width = channels // groups
        self.xla = xla
        self.by_group = by_group
        self.lanes = _vector_lanes(self.width) if vectorize else None

    def _grouped(self, t):
        # (M, C) -> (M, G, W).
        return ops.reshape(t, (-1, self.groups, self.width))

    def sum(self, *tensors, differentiable=True):
        """Sum over each group, `(M, C)` -> `(M, G)`, for each tensor."""
        if self.width <= 32 and _jax_on_gpu():
            # On GPUs, groups of up to 32 channels as elementwise adds,
            # which XLA's GPU compiler fuses with what follows: the
            # forward's group sums and their inverse standard deviations
            # in one kernel, not two (SeqNorm G_C = 4 at 64x8x8x32 and
            # 64x16x16x16: 11 -> 9-10 kernels; groups of 6, 16 and 32
            # channels: as many or one fewer). Wider groups: a reduce
            # (groups of 40: with adds one kernel more).
            return tuple(_pairwise_sum(self._grouped(t)) for t in tensors)
        if self.lanes and not differentiable:
            # Over a major axis to `lanes` partial sums, then over those:
            # XLA's CPU compiler vectorizes the first reduction along the
            # lanes (one over the minor axis it emits as a scalar loop).
            split = (-1, self.groups, self.width // self.lanes, self.lanes)
            partial = _sums(
                (ops.reshape(t, split) for t in tensors), 2,
                differentiable=False, xla=self.xla,
            )
            return _sums(partial, -1, differentiable=False, xla=self.xla)
        return _sums(
            (self._grouped(t) for t in tensors), -1,
            differentiable=differentiable, xla=self.xla,
        )

    def first(self, t):
        """The first channel of each group, `(M, G)`."""
        return self._grouped(t)[:, :, 0]

    def spread(self, *tensors):
        """`(M, G)` -> `(M, C)`: every channel gets its group's value."""
        if len(tensors) > 1:
            return tuple(self.spread(t) for t in tensors)
        t = ops.expand_dims(tensors[0], -1)
        full = ops.broadcast_to(
            t, (ops.shape(t)[0], self.groups, self.width)
        )
        return ops.reshape(full, (-1, self.channels))

    def split(self, *tensors):
        """`(M, C)` -> `(M, G, W)` with `by_group` (else as they are).

        `(M, G)` terms meet them as `(M, G, 1)` (`per_group`): arithmetic
        in this layout broadcasts each group's value over its channels.
        Under XLA that is a broadcast, which its fusion recomputes freely
        in every consumer, where a spread `(M, C)` tensor (a reshaped
        broadcast) counts as one more full-size operand: XLA then stores
        what is computed from it, a kernel of its own (TensorFlow, SeqNorm
        at 32x4x4x512: 16 -> 15 kernels).
        """
        if self.by_group:
            tensors = tuple(self._grouped(t) for t in tensors)
        return tensors[0] if len(tensors) == 1 else tuple(tensors)

    def per_group(self, *tensors):
        """`(M, G)` -> `(M, G, 1)` with `by_group`, else spread to `(M, C)`:
        to meet `split` tensors."""
        if not self.by_group:
            return self.spread(*tensors)
        expanded = tuple(ops.expand_dims(t, -1) for t in tensors)
        return expanded[0] if len(tensors) == 1 else expanded

    def merge(self, t):
        """A `split` layout's tensor as `(M, C)`."""
        return ops.reshape(t, (-1, self.channels)) if self.by_group else t

    def sizes(self, dtype):
        return ops.cast(self.width, dtype)


class _GhostBatches:
    """Contiguous ghost batches of the samples of `(M, C)` rows.

    Ghost batches follow `numpy.array_split`: the first `M % G` hold one
    sample more. Sums over ghost batches lay the rows out as `(G, W, C)`,
    W the largest ghost batch (the shorter ones padded with zeros, and W
    rounded up to a product of factors of at most 32, see `_short`): a
    reshape when G divides M, else a gather of rows by a `(G, W)` table.
    Every step is a reshape, broadcast or gather, no scatter, so under XLA
    each fuses with its neighbours. The batch size may be a Python int or,
    in a TensorFlow graph, a scalar tensor (the tables are then computed;
    XLA folds them into constants).
    """

    def __init__(self, batch_size, groups, xla=False):
        self.groups = groups
        self.xla = xla
        self.size, self.extra = batch_size // groups, batch_size % groups
        # Known to divide evenly: reshapes and broadcasts only.
        self.even = isinstance(batch_size, int) and not self.extra
        if self.even:
            return
        static = isinstance(batch_size, int)
        xp = np if static else ops
        self.width = self.size + xp.minimum(self.extra, 1)
        if static:
            # Padded (masked) up to a width of short axes.
            self.width = _splittable(int(self.width))
        index = xp.arange(groups)
        sizes = xp.where(index < self.extra, self.size + 1, self.size)
        self.starts = xp.where(
            index < self.extra,
            index * (self.size + 1),
            self.extra * (self.size + 1) + (index - self.extra) * self.size,
        )
        offsets = xp.arange(self.width)
        # The samples of every ghost batch as a (G, W) table, with a mask
        # of the real ones, and the ghost batch of every sample.
        self.valid = offsets[None, :] < sizes[:, None]
        self.layout = xp.where(
            self.valid, self.starts[:, None] + offsets[None, :], 0
        )
        self._sizes = sizes
        if static:
            self.ids = np.repeat(np.arange(groups), sizes).astype("int32")
            self.layout = self.layout.astype("int32")
        else:
            self.ids = ghost_batch_ids(batch_size, groups)

    def _split(self, t):
        # (M, C) -> (G, W, C).
        channels = t.shape[-1]
        if self.even:
            return ops.reshape(t, (self.groups, self.size, channels))
        rows = ops.take(t, ops.reshape(self.layout, (-1,)), axis=0)
        rows = ops.reshape(rows, (self.groups, self.width, channels))
        return ops.where(self.valid[:, :, None], rows, 0.0)

    def sum(self, *tensors, differentiable=True):
        """Sum over each ghost batch, `(M, C)` -> `(G, C)`, for each."""
        return _sums(
            (self._split(t) for t in tensors), 1,
            differentiable=differentiable, xla=self.xla,
        )

    def sum_around(self, weights, values, shift, centre,
                   differentiable=True):
        """Sums over each ghost batch of `weights` and of `values - (centre
        - shift) * weights`, `centre` a `(G, C)` row per ghost batch.

        Unless G divides M, `centre` meets the rows in the `(G, W, C)`
        layout of the sums rather than being spread to `(M, C)`: a spread
        is then a gather, a kernel of its own.
        """
        if self.even:
            centred = values - (self.spread(centre) - shift) * weights
            return self.sum(weights, centred, differentiable=differentiable)
        weights, values, shift = (
            self._split(t) for t in (weights, values, shift)
        )
        centred = values - (ops.expand_dims(centre, 1) - shift) * weights
        return _sums(
            (weights, centred), 1, differentiable=differentiable,
            xla=self.xla,
        )

    def first(self, t):
        """The first sample of each ghost batch, `(G, C)`."""
        if self.even:
            return t[:: self.size]
        return ops.take(t, self.starts, axis=0)

    def spread(self, *tensors):
        """`(G, C)` -> `(M, C)`: every sample gets its ghost batch's row.

        Unless G divides M a spread is a gather, which XLA computes apart:
        three or more tensors are then stacked and gathered once (for two,
        stacking costs a kernel of its own and saves none).
        """
        if not self.even and len(tensors) > 2:
            stacked = self._spread(ops.stack(tensors, axis=1))
            return tuple(stacked[:, i] for i in range(len(tensors)))
        spread = tuple(self._spread(t) for t in tensors)
        return spread[0] if len(tensors) == 1 else spread

    def _spread(self, t):
        # (G, ...) -> (M, ...).
        rest = tuple(t.shape[1:])
        if self.even:
            full = ops.broadcast_to(
                ops.expand_dims(t, 1), (self.groups, self.size) + rest
            )
            return ops.reshape(full, (-1,) + rest)
        return ops.take(t, self.ids, axis=0)

    def sizes(self, dtype):
        """Samples per ghost batch, `(G, 1)`."""
        if self.even:
            sizes = np.full((self.groups, 1), self.size, "float32")
            return ops.convert_to_tensor(sizes, dtype)
        return ops.cast(ops.reshape(self._sizes, (-1, 1)), dtype)


def _ghost_batches(batch_size, groups_m, ghost_batch_size, xla=False):
    groups = num_ghost_batches(batch_size, groups_m, ghost_batch_size)
    return _GhostBatches(batch_size, groups, xla)


def _batch_size(t):
    batch_size = t.shape[0]
    return ops.shape(t)[0] if batch_size is None else batch_size


def _pool(grouping, mean, variance, count=None, standardized=False,
          differentiable=True):
    """Mean and biased variance of each group's union of slices.

    Around a reference `r` per group, with `e = mean - r`, the union has
    mean `r + E[e]` and variance `E[variance + e^2] - E[e]^2`: one stacked
    reduction, exact for any `r`, and accurate when `r` is near the means.
    Without counts (every slice holds as many values) `r` is the group's
    first mean, or 0 for `standardized` values (GroupNorm-ed ones: their
    means and variances are at most 1, so no reference is needed); with
    counts it is the exact count-weighted mean (Chan et al.'s parallel
    formula), and slices of count 0 count in nothing.

    Returns:
        `(mean, variance, total_count)` per group (`total_count` is `None`
        without counts).
    """
    total = None
    if count is not None:
        total, weighted = grouping.sum(
            count, count * mean, differentiable=differentiable
        )
        size = ops.where(total > 0, total, 1.0)
        reference = weighted / size
    else:
        size = grouping.sizes(mean.dtype)
        reference = None if standardized else grouping.first(mean)
    if reference is None:
        deviation = mean
    else:
        reference = ops.stop_gradient(reference)
        deviation = mean - grouping.spread(reference)
    terms = (deviation, variance + ops.square(deviation))
    if count is not None:
        terms = tuple(ops.where(count > 0, count * t, 0.0) for t in terms)
    shift, square = (
        s / size
        for s in grouping.sum(*terms, differentiable=differentiable)
    )
    pooled_variance = _variance(square, shift)
    if reference is not None:
        shift = reference + shift
    return shift, pooled_variance, total


def channel_group_moments(count, mean, variance, groups):
    """GroupNorm statistics of each sample's `groups` contiguous channel groups.

    Args:
        count, mean, variance: `(M, C)` per-(sample, channel) moments.
        groups: number of channel groups; divides `C`.

    Returns:
        `(count, mean, variance)` of each channel's group, shape `(M, C)`.
    """
    grouping = _ChannelGroups(mean.shape[-1], groups)
    group_mean, group_variance, total = _pool(
        grouping, mean, variance, count
    )
    return tuple(
        grouping.spread(t) for t in (total, group_mean, group_variance)
    )


def num_ghost_batches(batch_size, groups_m=None, ghost_batch_size=None):
    """G_M for a batch of `batch_size` samples: never more than the samples.

    `batch_size` is a Python int or, for an unknown batch dimension under
    TensorFlow graphs, a scalar tensor; the result has the same kind.
    """
    if isinstance(batch_size, int):
        if ghost_batch_size is not None:
            groups_m = -(-batch_size // ghost_batch_size)
        return max(min(groups_m, batch_size), 1)
    if ghost_batch_size is not None:
        groups_m = (batch_size + ghost_batch_size - 1) // ghost_batch_size
    return ops.maximum(ops.minimum(groups_m, batch_size), 1)


def ghost_batch_ids(batch_size, groups):
    """Ghost batch of every sample, split like `numpy.array_split`.

    The first `batch_size % groups` ghost batches hold one sample more.
    """
    size, extra = batch_size // groups, batch_size % groups
    index = ops.arange(batch_size)
    boundary = extra * (size + 1)
    return ops.where(
        index < boundary,
        index // (size + 1),
        extra + (index - boundary) // ops.maximum(size, 1),
    )


def ghost_batch_moments(count, mean, variance, groups_m=None,
                        ghost_batch_size=None):
    """GhostNorm statistics: contiguous ghost batches of samples, per channel.

    Args:
        count, mean, variance: `(M, C)` per-(sample, channel) moments.
        groups_m: number of ghost batches G_M (capped at M).
        ghost_batch_size: alternatively, samples per ghost batch; then
            G_M = ceil(M / ghost_batch_size).

    Returns:
        `(count, mean, variance)` of each sample's ghost batch, `(M, C)`.
    """
    grouping = _ghost_batches(_batch_size(mean), groups_m, ghost_batch_size)
    ghost_mean, ghost_variance, total = _pool(
        grouping, mean, variance, count
    )
    return tuple(
        grouping.spread(t) for t in (total, ghost_mean, ghost_variance)
    )


def weighted_average(count, values):
    """Count-weighted average over the batch axis of `(M, C)` values -> (C,).

    Returns `(average, total_count)`; where the total count is zero the
    average is zero.
    """
    total = ops.sum(count, axis=0)
    safe = ops.where(total > 0, total, 1.0)
    return ops.sum(count * values, axis=0) / safe, total


def _per_sample_affine(x, centre, scale, offset, channel_axis):
    x, centre, scale = (ops.convert_to_tensor(t) for t in (x, centre, scale))
    rank = len(x.shape)
    channels = x.shape[channel_axis]
    axes = reduction_axes(rank, channel_axis)
    shape = broadcast_shape(rank, channel_axis, channels)
    offset_shape = [1] + shape[1:]
    if offset is None:
        offset = ops.zeros((channels,), x.dtype)
    offset = ops.convert_to_tensor(offset)

    def per_slice(t):
        # Sums over each (sample, channel) slice, as (M, C).
        if axes:
            t = ops.sum(t, axis=axes)
        return ops.reshape(t, (-1, channels))

    @ops.custom_gradient
    def affine(x, centre, scale, offset):
        centre, scale = fusion_barrier(centre, scale)
        full_centre = ops.reshape(centre, shape)
        full_scale = ops.reshape(scale, shape)
        outputs = (x - full_centre) * full_scale
        outputs = outputs + ops.reshape(offset, offset_shape)

        def grad(*args, upstream=None):
            upstream = _upstream(args, upstream)
            grad_sum = per_slice(upstream)
            grad_scale = per_slice(upstream * (x - full_centre))
            return (
                upstream * full_scale,
                -grad_sum * scale,
                grad_scale,
                ops.sum(grad_sum, axis=0),
            )

        return outputs, grad

    return affine(x, centre, scale, offset)


def apply_affine(x, centre, scale, offset, channel_axis):
    """`(x - centre) * scale + offset`, per (sample, channel) or per channel.

    With `(M, C)` terms the affine has a custom gradient: the backward pass
    is one reduction of `dy` and `dy * (x - centre)` over each (sample,
    channel) slice and one elementwise `dx = dy * scale`; the gradients of
    `centre`, `scale` and `offset` come from those sums. `(C,)` terms use
    plain autodiff.

    Args:
        x: the input, rank >= 2.
        centre, scale: `(M, C)` or `(C,)` tensors.
        offset: `(C,)` tensor or `None`.
        channel_axis: non-negative channel axis of `x`.
    """
    if len(centre.shape) == 2:
        return _per_sample_affine(x, centre, scale, offset, channel_axis)
    rank = len(x.shape)
    shape = broadcast_shape(rank, channel_axis, x.shape[channel_axis])
    shape[0] = 1
    outputs = (x - ops.reshape(centre, shape)) * ops.reshape(scale, shape)
    if offset is not None:
        outputs = outputs + ops.reshape(offset, shape)
    return outputs


def _group_stage(grouping, mean, variance, count, epsilon):
    # SeqNorm's GroupNorm stage on (M, C) moments: the mean and inverse std
    # 1 / sqrt(variance + eps) of every (sample, group), (M, G), and the
    # moments of the GroupNorm-ed values, (M, C). An infinite group
    # variance gives inv_std 0 and GroupNorm-ed values 0, never inf * 0.
    group_mean, group_variance, _ = _pool(grouping, mean, variance, count)
    # Where the variance is infinite, inv_std is 0 without differentiating
    # rsqrt there (0 * inf would be NaN).
    infinite = ops.isinf(group_variance)
    inv_std = ops.where(
        infinite, 0.0,
        ops.rsqrt(ops.where(infinite, 0.0, group_variance) + epsilon),
    )
    spread_inv_std = grouping.spread(inv_std)
    finite = spread_inv_std > 0
    normed = ops.where(
        finite, (mean - grouping.spread(group_mean)) * spread_inv_std, 0.0
    )
    normed_variance = ops.where(
        finite, ops.where(finite, variance, 0.0) * ops.square(spread_inv_std),
        0.0,
    )
    return group_mean, inv_std, normed, normed_variance


def _inverse_std(variance, epsilon):
    # 1 / sqrt(variance + eps) and sqrt(variance + eps) (1 where that is
    # infinite).
    shifted = variance + epsilon
    inv_std = ops.rsqrt(shifted)
    # sqrt(v) as v / sqrt(v): one expensive operation, not two.
    return inv_std, ops.where(inv_std > 0, shifted * inv_std, 1.0)


def _finite(t):
    # inf clipped to the largest float, so that inf * 0 is 0, not NaN.
    return ops.minimum(t, np.finfo(keras.backend.standardize_dtype(
        t.dtype)).max)


SequentialMoments = collections.namedtuple(
    "SequentialMoments",
    ["group_mean", "group_inv_std", "count", "mean", "variance",
     "sample_count"],
)
SequentialMoments.__doc__ = """The statistics of GhostNorm or SeqNorm.

Fields (all `(M, C)`):
    group_mean, group_inv_std: the GroupNorm stage (SeqNorm), the mean and
        `1 / sqrt(variance + epsilon)` of each sample's channel group;
        `None` for GhostNorm.
    count, mean, variance: the ghost batch of every sample (of the
        GroupNorm-ed values for SeqNorm); `None` in inference. `count` is
        the number of values in the ghost batch.
    sample_count: the number of values in each (sample, channel) slice.
"""


def sequential_moments(x, channel_axis, groups_c=None, groups_m=None,
                       ghost_batch_size=None, epsilon=1e-3, mask=None,
                       training=True):
    """The statistics of GhostNorm (`groups_c=None`) or SeqNorm.

    SeqNorm is GroupNorm over `groups_c` channel groups of every sample,
    then GhostNorm over `groups_m` ghost batches; both stages come from the
    per-(sample, channel) moments of `x`, never from a normalized copy of it.

    Returns:
        A `SequentialMoments` named tuple.
    """
    count, mean, variance = sample_channel_moments(x, channel_axis, mask)
    group_mean = inv_std = None
    if groups_c is not None:
        grouping = _ChannelGroups(mean.shape[-1], groups_c)
        group_mean, inv_std, mean, variance = _group_stage(
            grouping, mean, variance, count, epsilon
        )
        group_mean, inv_std = grouping.spread(group_mean, inv_std)
    if not training:
        return SequentialMoments(
            group_mean, inv_std, None, None, None, count
        )
    ghost_count, ghost_mean, ghost_variance = ghost_batch_moments(
        count, mean, variance, groups_m, ghost_batch_size
    )
    return SequentialMoments(
        group_mean, inv_std, ghost_count, ghost_mean, ghost_variance, count
    )


def _safe_divide(a, b):
    # a / b where b > 0, else a (b is an inv_std, 0 only when infinite).
    return a / ops.where(b > 0, b, 1.0)


def sequential_normalize(x, moments, mean, variance, gamma, beta, epsilon,
                         channel_axis, ghost_count=None):
    """Applies the normalization described by `moments` in one pass.

    `moments` is a `SequentialMoments`; `mean` and `variance` are the ghost
    stage's statistics: per sample `(M, C)` in training, the moving
    statistics `(C,)` in inference. The output is
    `((x - mu_gc) * r_gc - mean) / sqrt(variance + eps) * gamma + beta`,
    folded into one `(x - centre) * scale + beta`. Where a ghost batch holds
    no unmasked value (`ghost_count == 0`) the output is `beta`.
    """
    scale = ops.rsqrt(variance + epsilon)
    if gamma is not None:
        scale = scale * gamma
    if ghost_count is not None:
        scale = ops.where(ghost_count > 0, scale, 0.0)
    if moments.group_mean is None:
        return apply_affine(x, mean, scale, beta, channel_axis)
    inv_std = moments.group_inv_std
    centre = moments.group_mean + _safe_divide(mean, inv_std)
    return apply_affine(x, centre, scale * inv_std, beta, channel_axis)


Normalization = collections.namedtuple(
    "Normalization",
    ["outputs", "mean", "variance", "count", "moving_mean",
     "moving_variance"],
)
Normalization.__doc__ = """The result of `sequential_normalization`.

Fields:
    outputs: the normalized input.
    mean, variance: in training, the batch statistics that the moving
        averages track, `(C,)`: the count-weighted averages of the ghost
        batches' means and biased variances; `None` in inference.
    count: in training, the number of values behind them, `(C,)` (0 where
        every value of a channel is masked); `None` in inference.
    moving_mean, moving_variance: in training with a `momentum`, the
        updated moving statistics, `moving * momentum + batch * (1 -
        momentum)` (unchanged where `count` is 0); else `None`.

The statistics carry no gradient.
"""


def sequential_normalization(x, gamma=None, beta=None, *, channel_axis,
                             groups_c=None, groups_m=None,
                             ghost_batch_size=None, epsilon=1e-3,
                             training=True, moving_mean=None,
                             moving_variance=None, momentum=None, mask=None,
                             compute_dtype=None):
    """GhostNorm (`groups_c=None`) or SeqNorm, as one pure function.

    What `GhostNormalization` and `SequentialNormalization` compute, without
    the layer's state: the statistics and the affine, and in training the
    batch statistics and the updated moving statistics. Unmasked training
    on TensorFlow and JAX takes one custom gradient for the whole function,
    and updates the moving statistics within the reduction that computes
    the batch statistics; otherwise the statistics (`sequential_moments`)
    and the affine (`sequential_normalize`) are differentiated step by
    step.

    Args:
        x: float tensor of rank >= 2, batch on axis 0.
        gamma, beta: `(C,)` tensors or `None`.
        channel_axis: non-negative channel axis of `x`.
        groups_c: channel groups of the GroupNorm stage, or `None`
            (GhostNorm).
        groups_m, ghost_batch_size: the ghost batches (give one).
        epsilon: added to every variance.
        training: ghost-batch statistics (`True`) or the moving ones.
        moving_mean, moving_variance: `(C,)`: normalize with them in
            inference, update them in training.
        momentum: momentum of the moving statistics, or `None` to leave
            them alone.
        mask: optional boolean mask, `x.shape[:-1]` or broadcastable.
        compute_dtype: the dtype to compute in, `x` cast to it first
            (inside the function, so a compiled call fuses the cast into
            its passes over the input); `None` computes in `x`'s dtype.

    Returns:
        A `Normalization` named tuple.
    """
    x = ops.convert_to_tensor(x)
    input_dtype = keras.backend.standardize_dtype(x.dtype)
    if compute_dtype is not None:
        x = ops.cast(x, compute_dtype)
    # NumPy arrays become tensors (variables stay as they are).
    gamma, beta, moving_mean, moving_variance = (
        ops.convert_to_tensor(t) if isinstance(t, np.ndarray) else t
        for t in (gamma, beta, moving_mean, moving_variance)
    )
    if training and mask is None and keras.backend.backend() in (
        "tensorflow", "jax"
    ):
        return _fused_training(
            x, gamma, beta, channel_axis, groups_c, groups_m,
            ghost_batch_size, epsilon, moving_mean, moving_variance,
            momentum, input_dtype,
        )
    moments = sequential_moments(
        x, channel_axis, groups_c=groups_c, groups_m=groups_m,
        ghost_batch_size=ghost_batch_size, epsilon=epsilon, mask=mask,
        training=training,
    )
    if not training:
        outputs = sequential_normalize(
            x, moments, moving_mean, moving_variance, gamma, beta, epsilon,
            channel_axis,
        )
        return Normalization(outputs, None, None, None, None, None)
    outputs = sequential_normalize(
        x, moments, moments.mean, moments.variance, gamma, beta, epsilon,
        channel_axis,
        ghost_count=moments.count if mask is not None else None,
    )
    count = moments.sample_count
    batch_mean, total = weighted_average(count, moments.mean)
    batch_variance, _ = weighted_average(count, moments.variance)
    batch_mean, batch_variance = (
        ops.stop_gradient(t) for t in (batch_mean, batch_variance)
    )
    new_mean = new_variance = None
    if momentum is not None:
        new_mean, new_variance = (
            ops.where(total > 0, old * momentum + new * (1.0 - momentum), old)
            for old, new in (
                (moving_mean, batch_mean), (moving_variance, batch_variance)
            )
        )
    return Normalization(
        outputs, batch_mean, batch_variance, total, new_mean, new_variance
    )


def _fused_training(x, gamma, beta, channel_axis, groups_c, groups_m,
                    ghost_batch_size, epsilon, moving_mean, moving_variance,
                    momentum, input_dtype):
    # Training without a mask, with one custom gradient for the whole layer
    # (`_FusedNormalization` and `_WholeGhostBatches` say how it is
    # computed).
    fused = _fused_normalization(
        x, channel_axis, groups_c, groups_m, ghost_batch_size, epsilon,
        input_dtype,
    )
    has_gamma, has_beta = gamma is not None, beta is not None
    if gamma is None:
        gamma = ops.ones((fused.channels,), x.dtype)
    if beta is None:
        beta = ops.zeros((fused.channels,), x.dtype)

    @ops.custom_gradient
    def normalize(x, gamma, beta):
        outputs, weighted, saved = fused.forward(x, gamma, beta)

        def grad(*args, upstream=None):
            dy = _upstream(args, upstream)[0]
            grad_x, grad_gamma, grad_beta = fused.backward(x, dy, saved)
            return (
                grad_x,
                grad_gamma if has_gamma else ops.zeros_like(grad_gamma),
                grad_beta if has_beta else ops.zeros_like(grad_beta),
            )

        return (outputs,) + weighted, grad

    outputs, weighted_mean, weighted_variance = normalize(x, gamma, beta)
    weighted_mean, weighted_variance = (
        ops.stop_gradient(t) for t in (weighted_mean, weighted_variance)
    )
    batch_mean, batch_variance = _sums(
        (weighted_mean, weighted_variance), 0, differentiable=False,
        xla=fused.xla,
    )
    count = ops.ones_like(batch_mean) * (
        ops.cast(fused.batch_size, x.dtype) * fused.size
    )
    new_mean = new_variance = None
    if momentum is not None:
        new_mean, new_variance = _moving_update(
            weighted_mean, weighted_variance, moving_mean, moving_variance,
            momentum,
        )
    return Normalization(
        outputs, batch_mean, batch_variance, count, new_mean, new_variance
    )


def _moving_update(weighted_mean, weighted_variance, moving_mean,
                   moving_variance, momentum):
    # moving * momentum + batch * (1 - momentum) as one more row of the
    # reduction of the weighted ghost statistics: no kernel of its own.
    # (Not a variadic reduce on TensorFlow: its outputs, the variables'
    # new values, would each be copied out of it, a kernel each.)
    return _sums(
        (
            ops.concatenate([
                weighted * (1.0 - momentum),
                ops.expand_dims(moving, 0) * momentum,
            ])
            for weighted, moving in (
                (weighted_mean, moving_mean),
                (weighted_variance, moving_variance),
            )
        ),
        0,
        outputs=True,
        differentiable=False,
    )


def _fused_normalization(x, channel_axis, groups_c, groups_m,
                         ghost_batch_size, epsilon, input_dtype=None):
    # GhostNorm whose ghost batches all hold as many samples, on JAX CPUs:
    # `_WholeGhostBatches`. Everything else: `_FusedNormalization`.
    batch_size = _batch_size(x)
    if groups_c is None and _jax_on_cpu() and isinstance(batch_size, int):
        groups = num_ghost_batches(batch_size, groups_m, ghost_batch_size)
        if batch_size % groups == 0:
            return _WholeGhostBatches(x, channel_axis, groups, epsilon)
    return _FusedNormalization(
        x, channel_axis, groups_c, groups_m, ghost_batch_size, epsilon,
        input_dtype,
    )


def _seqnorm_inline(x, channel_axis, groups_c, input_dtype):
    # SeqNorm on JAX CPUs, float32 images with 8 or 16 channels last (the
    # first stage of CIFAR ResNets, the digits demo): no fusion barrier at
    # all, XLA computing the `(M, C)` terms inside the loops over the input,
    # 16 kernels against 20. SeqNorm (G_C = 4) against BatchNormalization,
    # two runs each, barriers / none: 64x16x16x16 1.27-1.35x / 0.87-0.95x,
    # 128x32x32x16 1.27-1.36x / 0.96-1.00x, 64x8x8x16 1.12-1.27x /
    # 0.85-0.91x, G_M = 7 1.24-1.26x / 0.87-0.89x, 8 channels 0.78-0.86x
    # either way. Not elsewhere, where it was slower: 12, 24 and 32
    # channels (64x16x16x32 0.96-0.98x / 1.92-1.99x, 64x8x8x32 1.5-2.0x
    # without), 16 channels in groups of 2 (1.39-1.40x / 1.59-1.63x),
    # bfloat16 inputs (64x16x16x16 0.88-1.00x / 2.35-2.72x), and channels
    # first, where the two are as fast.
    channels = x.shape[channel_axis]
    return (
        groups_c is not None and _jax_on_cpu() and under_xla()
        and len(x.shape) == 4 and channel_axis == 3
        and input_dtype == "float32"
        and (channels == 8 or (channels == 16 and channels // groups_c != 2))
    )


class _Saved:
    """What the forward pass keeps for the backward pass: small terms."""


class _WholeGhostBatches:
    """GhostNorm in training, G_M dividing M: each ghost batch summed at once.

    The input is seen as `(G, W, ...)`, W samples per ghost batch, and each
    statistic is one sum over a ghost batch, straight to `(G, C)`, around
    a shift s, the ghost batch's first value of each channel (so the
    statistics stay exact for inputs far from zero). Pass 1 sums x - s
    into mu, then ((x - s) - (mu - s))^2 into r = 1 / sqrt(var + eps)
    (around the mean, as BatchNormalization: no cancellation where s is
    far from mu; both read one stored x - s); pass 2 writes
    y = (x - mu) * r gamma + beta; pass 3 sums dy and dy * (x - s) into
    BatchNorm's alpha and beta (the ghost means of dy and dy * x_hat);
    pass 4 writes dx = dy * r gamma + (x - s) * slope + offset. Every
    `(G, C)` term meets the passes as a broadcast.

    `_FusedNormalization` sums per (sample, channel) and pools those over
    ghost batches, as SeqNorm needs; for GhostNorm on JAX CPUs (whose XLA
    hands each sum, with the arithmetic right after it, to YNNPACK) the
    direct sums compile to 11-14 kernels instead of 13-18 (BatchNorm
    14-16) and run in 0.8-1.05x the time (64x16x16x16 to 128x32x32x160,
    `docs/performance.md`); on TensorFlow's XLA
    they ran 1.05-1.8x slower, and GPUs are unmeasured, so those compile
    `_FusedNormalization`.
    """

    def __init__(self, x, channel_axis, groups, epsilon):
        rank = len(x.shape)
        self.channels = x.shape[channel_axis]
        self.batch_size = x.shape[0]
        self.groups = groups
        self.epsilon = epsilon
        self.xla = under_xla()
        axes = reduction_axes(rank, channel_axis)
        self.size = _slice_size(x, axes)
        # In the (G, W, ...) view: the axes of each ghost batch's sums; a
        # (C,) weight broadcasts against it as it does against the input.
        self.axes = (1,) + tuple(a + 1 for a in axes)
        self.weight_shape = [1] + broadcast_shape(
            rank, channel_axis, self.channels
        )[1:]
        self.count = self.size * (self.batch_size // groups)

    def _view(self, t):
        # (M, ...) -> (G, W, ...).
        return ops.reshape(t, (self.groups, -1) + tuple(t.shape[1:]))

    def _sums(self, *tensors):
        return tuple(
            ops.sum(t, axis=self.axes, keepdims=True) for t in tensors
        )

    def _rows(self, t):
        # A (G, C) term as (G, C).
        return ops.reshape(t, (self.groups, self.channels))

    def forward(self, x, gamma, beta):
        """Returns the outputs, the weighted ghost statistics and `_Saved`."""
        s = _Saved()
        grouped = self._view(x)
        s.shift = _first_along(grouped, self.axes)
        shifted = grouped - s.shift
        (d,) = self._sums(shifted)
        s.d = d / self.count
        s.mean = s.shift + s.d
        # Two passes, as BatchNormalization: the sum of squares around the
        # mean, (x - s) - d exactly, never E[(x - s)^2] - d^2, which
        # cancels where the shift is far from the mean.
        (square,) = self._sums(ops.square(shifted - s.d))
        variance = square / self.count
        s.inv_std = ops.rsqrt(variance + self.epsilon)
        s.scale = s.inv_std * ops.reshape(gamma, self.weight_shape)
        outputs = (grouped - s.mean) * s.scale + ops.reshape(
            beta, self.weight_shape
        )
        # The batch statistics are the means of these over ghost batches.
        weighted = tuple(
            self._rows(t) / self.groups for t in (s.mean, variance)
        )
        return ops.reshape(outputs, ops.shape(x)), weighted, s

    def backward(self, x, dy, s):
        """Returns the gradients of `x`, gamma and beta."""
        shifted = self._view(x) - s.shift
        dy = self._view(dy)
        sum_dy, sum_dy_shifted = self._sums(dy, dy * shifted)
        # sum(dy * (x - mu)) = sum(dy * (x - s)) - (mu - s) sum(dy).
        sum_dy_centred = sum_dy_shifted - s.d * sum_dy
        grad_beta, grad_gamma = _sums(
            (self._rows(sum_dy), self._rows(sum_dy_centred * s.inv_std)),
            0, outputs=True, differentiable=False, xla=self.xla,
        )
        # dx = r gamma (dy - alpha - x_hat beta), x_hat = (x - mu) r.
        alpha = sum_dy / self.count
        beta_ = s.inv_std * sum_dy_centred / self.count
        slope = -s.scale * s.inv_std * beta_
        offset = -s.scale * alpha - slope * s.d
        grad_x = dy * s.scale + shifted * slope + offset
        return ops.reshape(grad_x, ops.shape(x)), grad_gamma, grad_beta


def _channel_groups(channels, groups_c, xla, variadic, apart):
    # The GroupNorm stage's `_ChannelGroups` for `_FusedNormalization`:
    # None for GhostNorm. By group (`_ChannelGroups.split`) on TensorFlow
    # under XLA (`variadic`: SeqNorm 16 -> 15 kernels) and where the
    # ghost-batch terms are `apart` (SeqNorm on JAX CPUs), where the
    # group sums also take vectorized partial sums first (`lanes`). There
    # a select keeps YNNPACK, which takes the `(M, C)` arithmetic right
    # after a sum, from the backward's `sum(dy * z)`; by group, XLA then
    # recomputes it (and the forward's z) in each kernel that reads it
    # instead of storing it, and stores no spread group terms for YNNPACK.
    # At 32x4x4x512 float32: 21 -> 20 kernels, fwd+bwd 1.13-1.24x ->
    # 1.05-1.12x BatchNormalization in one process (each part alone
    # gained less); no shape of the grid slower. GPUs: as it did.
    if groups_c is None:
        return None
    return _ChannelGroups(
        channels, groups_c, xla, by_group=variadic or apart, vectorize=apart
    )


class _FusedNormalization:
    """GhostNorm or SeqNorm in training: forward and backward by hand.

    Forward: pass 1 reduces x - s and (x - s)^2 per (sample, channel), s a
    shift (the slice's first element; for SeqNorm that of its group's first
    channel). SeqNorm's GroupNorm stage pools those over each sample's
    channel groups into z = (x - group mean) * rho; the ghost stage pools
    the per-slice moments of z (GhostNorm: of x) over ghost batches into mu
    and r = 1 / sqrt(var + eps); pass 2 writes
    y = gamma * r * (z - mu) + beta as (x - centre) * scale + beta.

    Backward, BatchNorm's own formula twice: the ghost stage gives
    dz = gamma r (dy - alpha - z_hat beta), alpha and beta the ghost means
    of dy and dy * z_hat (z_hat = (z - mu) r); the GroupNorm stage gives
    dx = rho (dz - E[dz] - z E[dz z]) over each (sample, group). Every mean
    comes from pass 3's sums of dy and dy * (x - s) per (sample, channel),
    so dx = dy * scale + (x - s) * slope + offset is pass 4, with `(M, C)`
    terms.
    """

    def __init__(self, x, channel_axis, groups_c, groups_m,
                 ghost_batch_size, epsilon, input_dtype=None):
        rank = len(x.shape)
        self.channel_axis = channel_axis
        self.channels = x.shape[channel_axis]
        self.axes = reduction_axes(rank, channel_axis)
        self.full = broadcast_shape(rank, channel_axis, self.channels)
        self.size = _slice_size(x, self.axes)
        self.batch_size = _batch_size(x)
        # Decided once: TensorFlow traces the backward function apart.
        self.xla = under_xla()
        self.ghosts = _ghost_batches(
            self.batch_size, groups_m, ghost_batch_size, self.xla
        )
        self.epsilon = epsilon
        # TensorFlow under XLA: each pass's two per-slice sums in one
        # variadic reduction, one loop over the input that XLA's CPU
        # compiler does not split (with one reduction each, it split those
        # over more than 32 values, 64x56x56x256, into a reduce-window and
        # a reduce, and materialized x - s, (x - s)^2 or dy * (x - s) for
        # them: GhostNorm 23 kernels there, 17 elsewhere; now 13).
        self.variadic = (
            self.xla and keras.backend.backend() == "tensorflow"
        )
        # SeqNorm on CPUs under JAX, whose XLA hands each plain sum to
        # YNNPACK: YNNPACK also takes the `(M, C)` arithmetic right after a
        # sum, its broadcasts materialized as kernels of their own, and
        # XLA recomputes the backward's `(G_M, C)` ghost-batch terms at
        # every `(M, C)` element of the GroupNorm stage's kernels that read
        # them. There those terms pass a fusion barrier, and the sums of
        # x - s and (x - s)^2 stay sums (YNNPACK took a division after the
        # first, its divisor stored), read first by the GroupNorm stage's sum
        # (32x4x4x512: 21 kernels either way, fwd+bwd about 1.65x -> 1.35x
        # BatchNormalization; uneven ghost batches 22 -> 21); no barrier
        # where `_seqnorm_inline`. GPUs and TensorFlow: as it did.
        inline = _seqnorm_inline(x, channel_axis, groups_c, input_dtype)
        seqnorm_on_cpu = groups_c is not None and _jax_on_cpu()
        self.ghost_terms_apart = seqnorm_on_cpu and not inline
        self.square_sums = seqnorm_on_cpu and bool(self.axes)
        self.groups = _channel_groups(
            self.channels, groups_c, self.xla, self.variadic,
            self.ghost_terms_apart,
        )
        # GhostNorm on JAX CPUs (uneven ghost batches), slices of 64 values
        # or more, and SeqNorm where `_seqnorm_inline`: the `(M, C)` terms
        # inside the loops over the input, as fast or faster (GhostNorm
        # 64x16x16x16 1.16x -> 1.07x BatchNorm); elsewhere apart is faster.
        slice_values = [x.shape[a] for a in self.axes]
        self.barriers = self.xla and not inline and not (
            self.groups is None and _jax_on_cpu()
            and None not in slice_values
            and int(np.prod(slice_values)) >= 64
        )

    def _broadcast(self, t):
        return ops.reshape(t, self.full)

    def forward(self, x, gamma, beta):
        """Returns the outputs, the weighted ghost statistics and `_Saved`."""
        s = _Saved()
        if self.axes:
            s.shift, _, s.d, s.q = _shifted_sums(
                x, self.channel_axis, self.groups,
                square_sums=self.square_sums, variadic=self.variadic,
            )
            if self.square_sums:
                s.shift_sum, s.d = s.d, s.d / self.size
                s.square_sum, s.q = s.q, s.q / self.size
        else:
            s.shift = x if self.groups is None else self.groups.spread(
                self.groups.first(x)
            )
            s.d = x - s.shift
            s.q = ops.square(s.d)
        if self.groups is not None:
            s.normed, normed_variance = self._group_forward(s, x.dtype)
        else:
            s.normed, normed_variance = s.shift + s.d, _variance(s.q, s.d)
        s.ghost_mean, ghost_variance, _ = _pool(
            self.ghosts, s.normed, normed_variance,
            standardized=self.groups is not None, differentiable=False,
        )
        s.sizes = self.ghosts.sizes(x.dtype)
        # The batch statistics are the sums of these over ghost batches.
        weights = s.sizes / ops.cast(self.batch_size, x.dtype)
        weighted = (weights * s.ghost_mean, weights * ghost_variance)
        s.inv_ghost = ops.rsqrt(ghost_variance + self.epsilon)
        s.ghost_scale = s.inv_ghost * gamma
        spread_mean, spread_scale = self.ghosts.spread(
            s.ghost_mean, s.ghost_scale
        )
        if self.groups is not None:
            g = self.groups
            shift, mean, ghost_scale = g.split(
                s.shift, spread_mean, spread_scale
            )
            group_shift, std, inv_std = g.per_group(
                s.group_shift, s.std, s.inv_std
            )
            centre = g.merge(shift + group_shift + mean * std)
            scale = g.merge(inv_std * ghost_scale)
        else:
            centre, scale = spread_mean, spread_scale
        centre, scale = fusion_barrier(centre, scale, xla=self.barriers)
        outputs = (x - self._broadcast(centre)) * self._broadcast(scale)
        outputs = outputs + ops.reshape(beta, [1] + self.full[1:])
        return outputs, weighted, s

    def _group_forward(self, s, dtype):
        # Every slice of a group is shifted by the same value, a value of
        # the group, so the group's moments are the means of d and q: one
        # reduction of what pass 1 gave. Each slice's variance q - d^2
        # keeps the accuracy that matters here, relative to the group's
        # variance. Returns the per-slice mean and mean square of
        # z = (x - s - e) * rho; keeps e, rho and 1 / rho as `(M, G)`.
        g = self.groups
        width = g.sizes(dtype)
        (shift, square), count = (
            ((s.shift_sum, s.square_sum), width * self.size)
            if self.square_sums else ((s.d, s.q), width)
        )
        group_shift, group_square = g.sum(shift, square, differentiable=False)
        s.group_shift, group_square = group_shift / count, group_square / count
        s.inv_std, s.std = _inverse_std(
            _variance(group_square, s.group_shift), self.epsilon
        )
        group_shift, inv_std = g.per_group(s.group_shift, s.inv_std)
        d, variance = g.split(s.d, _finite(_variance(s.q, s.d)))
        normed = g.merge((d - group_shift) * inv_std)
        normed_variance = g.merge(variance * ops.square(inv_std))
        return normed, normed_variance

    def backward(self, x, dy, s):
        """Returns the gradients of `x`, gamma and beta."""
        sum_dy, sum_dy_z, ghost_dy, ghost_dy_centred = self._upstream_sums(
            x, dy, s
        )
        grad_beta, grad_gamma = _sums(
            (ghost_dy, ghost_dy_centred * s.inv_ghost), 0, outputs=True,
            differentiable=False, xla=self.xla,
        )
        # alpha = mean(dy), beta_ = mean(dy * z_hat) over ghost batches;
        # dz = gamma r dy + z * z_slope + z_offset.
        count = s.sizes * self.size
        alpha = ghost_dy / count
        beta_ = s.inv_ghost * ghost_dy_centred / count
        z_slope = -s.ghost_scale * s.inv_ghost * beta_
        z_offset = -s.ghost_scale * alpha - z_slope * s.ghost_mean
        ghost_terms = (z_slope, z_offset, s.ghost_scale)
        if self.ghost_terms_apart:
            ghost_terms = fusion_barrier(*ghost_terms, xla=True)
        spread_slope, spread_offset, spread_scale = self.ghosts.spread(
            *ghost_terms
        )
        if self.groups is not None:
            scale_x, slope, offset = self._group_backward(
                s, sum_dy, sum_dy_z, spread_slope, spread_offset,
                spread_scale, x.dtype,
            )
        else:
            # z = x = s + (x - s).
            slope = spread_slope
            offset = spread_offset + spread_slope * s.shift
            scale_x = spread_scale
        # SeqNorm with uneven ghost batches on TensorFlow (or a batch size
        # unknown when traced): the ghost terms are gathered, stored, so
        # the loop over the input computes the rest as fast as a barrier
        # would, in one kernel fewer (16 -> 15; in interleaved A/B runs
        # 0.87-1.02x the time before). On JAX CPUs that was faster at the
        # small shapes (0.84-0.98x) but slower at 128x8x8x640
        # (1.07-1.13x): JAX keeps the barrier. With even ghost batches the
        # terms are faster apart everywhere (JAX CPUs: 1.2-1.5x slower
        # without the barrier).
        scale_x, slope, offset, shift_x = fusion_barrier(
            scale_x, slope, offset, s.shift,
            xla=self.barriers and (
                self.ghosts.even or self.groups is None or not self.variadic
            ),
        )
        grad_x = (
            dy * self._broadcast(scale_x)
            + (x - self._broadcast(shift_x)) * self._broadcast(slope)
            + self._broadcast(offset)
        )
        return grad_x, grad_gamma, grad_beta

    def _upstream_sums(self, x, dy, s):
        # x - s again rather than kept from the forward pass: a separately
        # compiled backward function then reads x, not a stored copy.
        shifted = x - self._broadcast(s.shift)
        if not self.axes:
            sum_dy, sum_dy_shifted = dy, dy * shifted
        elif self.variadic:
            sum_dy, sum_dy_shifted = _keras_compat.xla_sums(
                (dy, dy * shifted), self.axes
            )
        else:
            sum_dy, sum_dy_shifted = (
                _as_matrix(
                    ops.sum(t, axis=self.axes, keepdims=True), self.channels
                )
                for t in (dy, dy * shifted)
            )
        # sum(dy * (z - mu)) over each ghost batch: for SeqNorm from
        # sum(dy * z) (standardized values: no shift needed), for GhostNorm
        # exact around the shift.
        if self.groups is not None:
            g = self.groups
            group_shift, inv_std = g.per_group(s.group_shift, s.inv_std)
            dy_shifted, dy = g.split(sum_dy_shifted, sum_dy)
            if self.ghost_terms_apart:
                # A select, which YNNPACK does not take: the arithmetic
                # after this sum stays in XLA's loops (`_channel_groups`).
                dy_shifted = ops.where(inv_std > 0, dy_shifted, 0.0)
            sum_dy_z = g.merge(inv_std * (dy_shifted - group_shift * dy))
            ghost_dy, ghost_dy_z = self.ghosts.sum(
                sum_dy, sum_dy_z, differentiable=False
            )
            return (sum_dy, sum_dy_z, ghost_dy,
                    ghost_dy_z - s.ghost_mean * ghost_dy)
        ghost_dy, ghost_dy_centred = self.ghosts.sum_around(
            sum_dy, sum_dy_shifted, s.shift, s.ghost_mean,
            differentiable=False,
        )
        return sum_dy, None, ghost_dy, ghost_dy_centred

    def _group_backward(self, s, sum_dy, sum_dy_z, spread_slope,
                        spread_offset, spread_scale, dtype):
        # sum(dz) and sum(dz * z) per slice, then their means over each
        # (sample, group). The slice's mean of z^2 comes from q and d
        # directly (so the normed variance feeds the forward reduction
        # alone).
        size = self.size
        g = self.groups
        group_shift, inv_std = g.per_group(s.group_shift, s.inv_std)
        q, d = g.split(s.q, s.d)
        square = g.merge(ops.where(
            inv_std > 0,
            ops.square(inv_std) * (
                q - 2.0 * d * group_shift + ops.square(group_shift)
            ),
            0.0,
        ))
        sum_dz = (
            spread_scale * sum_dy
            + size * (spread_slope * s.normed + spread_offset)
        )
        sum_dz_z = spread_scale * sum_dy_z + size * (
            spread_slope * square + spread_offset * s.normed
        )
        mean_dz, mean_dz_z = g.per_group(*(
            t / (g.sizes(dtype) * size)
            for t in g.sum(sum_dz, sum_dz_z, differentiable=False)
        ))
        # dx = rho (dz - mean_dz - z mean_dz_z), z = rho (x - s - e).
        slope, offset, scale = g.split(
            spread_slope, spread_offset, spread_scale
        )
        z_slope = slope - mean_dz_z
        return (
            g.merge(inv_std * scale),
            g.merge(ops.square(inv_std) * z_slope),
            g.merge(inv_std * (
                offset - mean_dz - inv_std * group_shift * z_slope
            )),
        )
