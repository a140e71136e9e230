"""The normalization math of keras-seqnorm, written once over `keras.ops`.

Notation (the paper's Section 2.1): an input `x` has a batch axis 0 with `M`
samples, a channel axis with `C` channels, and `F` positions on every other
axis. All three normalizations used here (GroupNorm, GhostNorm, BatchNorm)
take their statistics over unions of per-(sample, channel) slices, so the
fused computation is:

1. `sample_channel_moments`: one reduction over the input gives the count,
   mean and biased variance of every (sample, channel) slice, shape `(M, C)`.
2. `channel_group_moments` / `ghost_batch_moments`: the exact parallel
   variance formula (Chan et al.) combines those into the statistics of
   channel groups (GroupNorm) or ghost batches (GhostNorm), still `(M, C)`.
3. `normalize`: one elementwise `(x - centre) * scale + offset` with a
   per-(sample, channel) centre and scale.

The input is read twice and written once, like BatchNormalization, whatever
the number of channel groups and ghost batches.

Both passes have a custom gradient (`shifted_moments`, `apply_affine`), so
the backward pass is two more passes too: one reduction of the upstream
gradient, one elementwise pass. Under XLA every `(M, C)` term between the
passes is materialized (`rows_apart`); otherwise XLA fuses the channel-group
and ghost-batch arithmetic into the passes over the input and redoes it at
every position of every sample.
"""

import keras
from keras import ops


def resolve_axis(axis, rank):
    """Returns the non-negative channel axis for an input of `rank`."""
    return axis % rank if -rank <= axis < rank else None


def reduction_axes(rank, channel_axis):
    """Axes other than the batch axis 0 and the channel axis."""
    return [a for a in range(1, rank) if a != channel_axis]


def _as_matrix(t, channels):
    # (M, 1, ..., C, ..., 1) -> (M, C): every other axis has size one.
    return ops.reshape(t, (-1, channels))


def broadcast_shape(rank, channel_axis, channels):
    """Shape that broadcasts an `(M, C)` tensor against the input."""
    return [-1] + [
        channels if a == channel_axis else 1 for a in range(1, rank)
    ]


def _mask_weights(mask, x):
    # A Keras mask covers every axis but the last (features), as
    # `keras.layers.Masking` makes it; it may also be broadcastable.
    mask = ops.expand_dims(ops.cast(mask, "bool"), axis=-1)
    return ops.broadcast_to(mask, ops.shape(x))


def rows_apart(t):
    """`t` itself, computed apart from the loops that read it.

    An identity for values and gradients: each row of `t` is added once into
    zeros by a scatter, which XLA never fuses into its consumers nor its
    producers. So the `(M, C)` statistics are computed once and stored
    instead of being recomputed inside every loop over the input, and a
    reduction over the input is never duplicated into its consumers. Without
    XLA (the torch backend) `t` is returned as it is.
    """
    if keras.backend.backend() not in ("tensorflow", "jax"):
        return t
    rows = ops.shape(t)[0]
    return ops.segment_sum(t, ops.arange(rows), num_segments=rows)


def _slice_size(x, axes):
    # Number of values in each (sample, channel) slice.
    size = 1
    for a in axes:
        size = size * ops.shape(x)[a]
    return ops.cast(size, x.dtype)


def shifted_moments(x, channel_axis):
    """Mean and biased variance of every (sample, channel) slice of `x`.

    The sums are shifted by the first element of each slice, so the variance
    stays accurate for inputs far from zero (mean 1e4, std 1 in float32),
    which a plain `E[x^2] - E[x]^2` does not. The custom gradient is the
    exact `dx = g_mean / n + 2 (x - mean) g_variance / n` (the clamp of a
    rounded negative variance to 0 is not differentiated), one elementwise
    pass with the `(M, C)` coefficients computed apart.

    Args:
        x: float tensor of rank >= 3, batch on axis 0.
        channel_axis: non-negative channel axis of `x`.

    Returns:
        `(mean, variance)`, two tensors of shape `(M, C)`.
    """
    x = ops.convert_to_tensor(x)
    rank = len(x.shape)
    axes = reduction_axes(rank, channel_axis)
    full = broadcast_shape(rank, channel_axis, x.shape[channel_axis])
    first = tuple(
        slice(0, 1) if a in axes else slice(None) for a in range(rank)
    )
    count = _slice_size(x, axes)

    @ops.custom_gradient
    def moments(x):
        shift = x[first]
        shifted = x - shift
        shifted_mean = rows_apart(ops.mean(shifted, axis=axes))
        shifted_square = rows_apart(ops.mean(ops.square(shifted), axis=axes))
        variance = ops.maximum(shifted_square - ops.square(shifted_mean), 0.0)
        shift = ops.reshape(shift, ops.shape(shifted_mean))
        mean = shift + shifted_mean

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            grad_mean, grad_variance = upstream[0], upstream[1]
            # 2 (x - mean) g / n, written around the shift: x - shift is
            # exact where x - mean would round mean to x's precision.
            slope = grad_variance * (2.0 / count)
            terms = ops.stack(
                [shift, slope, grad_mean / count - shifted_mean * slope],
                axis=1,
            )
            centre, slope, offset = (
                ops.reshape(t, full)
                for t in ops.unstack(rows_apart(terms), axis=1)
            )
            return (x - centre) * slope + offset

        # One output: the torch backend's custom gradient takes only one.
        return ops.stack([mean, variance]), grad

    both = moments(x)
    return both[0], both[1]


def sample_channel_moments(x, channel_axis, mask=None):
    """Count, mean and biased variance of every (sample, channel) slice.

    Without a mask the statistics come from `shifted_moments`: sums of
    `x - s`, where `s` is the slice's first element, with a custom gradient.
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


def _combine(count, mean, variance, axis):
    # Chan et al.'s parallel formula: exact, and every term is non-negative.
    total = ops.sum(count, axis=axis, keepdims=True)
    safe = ops.where(total > 0, total, 1.0)
    combined_mean = ops.sum(count * mean, axis=axis, keepdims=True) / safe
    spread = variance + ops.square(mean - combined_mean)
    combined_variance = ops.sum(count * spread, axis=axis, keepdims=True) / safe
    return total, combined_mean, combined_variance


def channel_group_moments(count, mean, variance, groups):
    """GroupNorm statistics of each sample's `groups` contiguous channel groups.

    Args:
        count, mean, variance: `(M, C)` per-(sample, channel) moments.
        groups: number of channel groups; divides `C`.

    Returns:
        `(count, mean, variance)` of each channel's group, shape `(M, C)`.
    """
    channels = mean.shape[-1]
    split = (-1, groups, channels // groups)
    grouped = [ops.reshape(t, split) for t in (count, mean, variance)]
    full = ops.shape(grouped[1])
    return tuple(
        ops.reshape(ops.broadcast_to(t, full), (-1, channels))
        for t in _combine(*grouped, axis=-1)
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
    batch_size = mean.shape[0]
    if batch_size is None:
        batch_size = ops.shape(mean)[0]
    groups = num_ghost_batches(batch_size, groups_m, ghost_batch_size)
    channels = mean.shape[-1]
    if isinstance(batch_size, int) and batch_size % groups == 0:
        split = (groups, batch_size // groups, channels)
        stats = _combine(
            ops.reshape(count, split),
            ops.reshape(mean, split),
            ops.reshape(variance, split),
            axis=1,
        )
        return tuple(
            ops.reshape(ops.broadcast_to(t, split), (batch_size, channels))
            for t in stats
        )
    ids = ghost_batch_ids(batch_size, groups)
    total = ops.segment_sum(count, ids, num_segments=groups)
    safe = ops.where(total > 0, total, 1.0)
    group_mean = ops.segment_sum(count * mean, ids, num_segments=groups) / safe
    spread = variance + ops.square(mean - ops.take(group_mean, ids, axis=0))
    group_variance = (
        ops.segment_sum(count * spread, ids, num_segments=groups) / safe
    )
    return tuple(
        ops.take(t, ids, axis=0) for t in (total, group_mean, group_variance)
    )


def weighted_average(count, values):
    """Count-weighted average over the batch axis of `(M, C)` values -> (C,).

    Returns `(average, total_count)`; where the total count is zero the
    average is zero.
    """
    total = ops.sum(count, axis=0)
    safe = ops.where(total > 0, total, 1.0)
    return ops.sum(count * values, axis=0) / safe, total


def apply_affine(x, centre, scale, offset, channel_axis):
    """`(x - centre) * scale + offset`, per (sample, channel), custom gradient.

    The backward pass is one reduction of `dy` and `dy * (x - centre)` over
    each (sample, channel) slice and one elementwise `dx = dy * scale`; the
    gradients of `centre`, `scale` and `offset` come from those sums.

    Args:
        x: the input, rank >= 2.
        centre, scale: `(M, C)` tensors.
        offset: `(C,)` tensor or `None`.
        channel_axis: non-negative channel axis of `x`.
    """
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
        # Sums over each (sample, channel) slice, as (M, C), computed apart.
        if axes:
            t = ops.sum(t, axis=axes)
        return rows_apart(ops.reshape(t, (-1, channels)))

    @ops.custom_gradient
    def affine(x, centre, scale, offset):
        both = rows_apart(ops.stack([centre, scale], axis=1))
        full_centre = ops.reshape(both[:, 0], shape)
        full_scale = ops.reshape(both[:, 1], shape)
        outputs = (x - full_centre) * full_scale
        outputs = outputs + ops.reshape(offset, offset_shape)

        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
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


def normalize(x, centre, scale, offset, channel_axis):
    """`(x - centre) * scale + offset` with per-(sample, channel) terms.

    Args:
        x: the input, rank >= 2.
        centre, scale: `(M, C)` or `(C,)` tensors.
        offset: `(C,)` tensor or `None`.
        channel_axis: non-negative channel axis of `x`.
    """
    if len(centre.shape) == 2:
        return apply_affine(x, centre, scale, offset, channel_axis)
    rank = len(x.shape)
    shape = broadcast_shape(rank, channel_axis, x.shape[channel_axis])
    shape[0] = 1
    outputs = (x - ops.reshape(centre, shape)) * ops.reshape(scale, shape)
    if offset is not None:
        outputs = outputs + ops.reshape(offset, shape)
    return outputs


def sequential_moments(x, channel_axis, groups_c=None, groups_m=None,
                       ghost_batch_size=None, epsilon=1e-3, mask=None,
                       training=True):
    """The statistics of GhostNorm (`groups_c=None`) or SeqNorm.

    SeqNorm is GroupNorm over `groups_c` channel groups of every sample,
    then GhostNorm over `groups_m` ghost batches; both stages come from the
    per-(sample, channel) moments of `x`, never from a normalized copy of it.

    Returns a dict with:
        `group_mean`, `group_inv_std`: the GroupNorm stage as `(M, C)`, or
            `None` for GhostNorm;
        and, when `training`:
        `count`, `mean`, `variance`: the ghost batch of every sample, as
            `(M, C)`, of the GroupNorm-ed values for SeqNorm;
        `sample_count`: the per-(sample, channel) counts.
    """
    count, mean, variance = sample_channel_moments(x, channel_axis, mask)
    result = {"group_mean": None, "group_inv_std": None}
    if groups_c is not None:
        _, group_mean, group_variance = channel_group_moments(
            count, mean, variance, groups_c
        )
        inv_std = ops.rsqrt(group_variance + epsilon)
        result["group_mean"] = group_mean
        result["group_inv_std"] = inv_std
        mean = (mean - group_mean) * inv_std
        variance = variance * ops.square(inv_std)
    if training:
        ghost = ghost_batch_moments(
            count, mean, variance, groups_m, ghost_batch_size
        )
        result["count"], result["mean"], result["variance"] = ghost
        result["sample_count"] = count
    return result


def sequential_normalize(x, stats, mean, variance, gamma, beta, epsilon,
                         channel_axis, ghost_count=None):
    """Applies the normalization described by `stats` in one pass.

    `mean` and `variance` are the ghost stage's statistics: per sample
    `(M, C)` in training, the moving statistics `(C,)` in inference. The
    output is `((x - mu_gc) * r_gc - mean) / sqrt(variance + eps) * gamma +
    beta`, folded into one `(x - centre) * scale + beta`. Where a ghost batch
    holds no unmasked value (`ghost_count == 0`) the output is `beta`.
    """
    scale = ops.rsqrt(variance + epsilon)
    if gamma is not None:
        scale = scale * gamma
    if ghost_count is not None:
        scale = ops.where(ghost_count > 0, scale, 0.0)
    if stats["group_mean"] is None:
        return normalize(x, mean, scale, beta, channel_axis)
    inv_std = stats["group_inv_std"]
    centre = stats["group_mean"] + mean / inv_std
    return normalize(x, centre, scale * inv_std, beta, channel_axis)
