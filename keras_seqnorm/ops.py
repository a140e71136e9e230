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
"""

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


def sample_channel_moments(x, channel_axis, mask=None):
    """Count, mean and biased variance of every (sample, channel) slice.

    Without a mask the statistics come from one pass over `x - s`, where the
    centre `s` is the slice's first element (a constant for autodiff). The
    shifted sums keep the variance accurate for inputs far from zero (mean
    1e4, std 1 in float32), which a plain `E[x^2] - E[x]^2` does not. With a
    mask, masked positions count in no statistic.

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
        first = tuple(
            slice(0, 1) if a in axes else slice(None) for a in range(rank)
        )
        shift = ops.stop_gradient(x[first])
        shifted = x - shift
        shifted_mean = ops.mean(shifted, axis=axes, keepdims=True)
        shifted_square = ops.mean(ops.square(shifted), axis=axes, keepdims=True)
        variance = ops.maximum(shifted_square - ops.square(shifted_mean), 0.0)
        mean = shift + shifted_mean
        size = 1
        for a in axes:
            size = size * ops.shape(x)[a]
        count = ops.ones_like(mean) * ops.cast(size, x.dtype)
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


def normalize(x, centre, scale, offset, channel_axis):
    """`(x - centre) * scale + offset` with per-(sample, channel) terms.

    Args:
        x: the input, rank >= 2.
        centre, scale: `(M, C)` or `(C,)` tensors.
        offset: `(C,)` tensor or `None`.
        channel_axis: non-negative channel axis of `x`.
    """
    rank = len(x.shape)
    channels = x.shape[channel_axis]
    shape = broadcast_shape(rank, channel_axis, channels)
    if len(centre.shape) == 1:
        shape[0] = 1
    outputs = (x - ops.reshape(centre, shape)) * ops.reshape(scale, shape)
    if offset is not None:
        shape[0] = 1
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
