"""Test helpers on the public Keras API: NumPy references and gradients."""

import keras
import numpy as np
from keras import ops


def to_numpy(x):
    return np.asarray(ops.convert_to_numpy(x))


def _channels_last(x, axis):
    return np.moveaxis(x, axis, -1)


def ghost_norm_reference(x, axis=-1, groups_m=1, epsilon=1e-3, mask=None,
                         ghost_batch_size=None):
    """GhostNorm in float64 NumPy: `numpy.array_split` over the batch.

    Returns the normalized array and the size-weighted averages of the ghost
    batches' means and biased variances (the moving-statistics update).
    """
    x = _channels_last(np.asarray(x, np.float64), axis)
    batch = x.shape[0]
    if ghost_batch_size is not None:
        groups_m = -(-batch // ghost_batch_size)
    keep = np.ones(x.shape[:-1], bool) if mask is None else np.broadcast_to(
        np.asarray(mask, bool), x.shape[:-1]
    )
    out = np.zeros_like(x)
    means, variances, counts = [], [], []
    for index in np.array_split(np.arange(batch), groups_m):
        if index.size == 0:
            continue
        values = x[index][keep[index]]  # (n, C)
        if values.shape[0] == 0:
            continue
        mean, variance = values.mean(0), values.var(0)
        out[index] = (x[index] - mean) / np.sqrt(variance + epsilon)
        means.append(mean)
        variances.append(variance)
        counts.append(values.shape[0])
    weights = np.asarray(counts, np.float64)[:, None]
    average_mean = (weights * means).sum(0) / weights.sum()
    average_variance = (weights * variances).sum(0) / weights.sum()
    return np.moveaxis(out, -1, axis), average_mean, average_variance


def group_norm_reference(x, axis=-1, groups_c=1, epsilon=1e-3, mask=None):
    """GroupNorm without affine in float64 NumPy.

    With a `mask` (over every axis but the channels), the statistics of each
    sample's groups cover its unmasked positions only.
    """
    x = _channels_last(np.asarray(x, np.float64), axis)
    shape = x.shape
    grouped = x.reshape(shape[0], -1, groups_c, shape[-1] // groups_c)
    keep = np.ones(shape[:-1]) if mask is None else np.broadcast_to(
        np.asarray(mask, np.float64), shape[:-1]
    )
    keep = np.broadcast_to(keep.reshape(shape[0], -1, 1, 1), grouped.shape)
    count = np.maximum(keep.sum(axis=(1, 3), keepdims=True), 1)
    mean = (grouped * keep).sum(axis=(1, 3), keepdims=True) / count
    variance = ((grouped - mean) ** 2 * keep).sum(
        axis=(1, 3), keepdims=True
    ) / count
    out = ((grouped - mean) / np.sqrt(variance + epsilon)).reshape(shape)
    return np.moveaxis(out, -1, axis)


def seq_norm_reference(x, axis=-1, groups_c=4, groups_m=1, epsilon=1e-3,
                       mask=None):
    """SeqNorm as the paper writes it: GroupNorm, then GhostNorm."""
    grouped = group_norm_reference(x, axis, groups_c, epsilon, mask)
    return ghost_norm_reference(grouped, axis, groups_m, epsilon, mask)


def input_gradient(fn, x):
    """Gradient of `sum(fn(x))` with respect to `x`, on the active backend."""
    return gradients(lambda v: ops.sum(fn(v)), x)[0]


def gradients(fn, *args):
    """Gradients of the scalar `fn(*args)` with respect to every argument,
    as NumPy arrays, on the active backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        args = [tf.convert_to_tensor(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(args)
            total = fn(*args)
        return [to_numpy(g) for g in tape.gradient(total, args)]
    if backend == "jax":
        import jax

        def total(*values):
            # Layers may assign state (moving statistics) in `fn`.
            with keras.StatelessScope():
                return fn(*values)

        argnums = tuple(range(len(args)))
        args = [ops.convert_to_tensor(a) for a in args]
        return [to_numpy(g) for g in jax.grad(total, argnums)(*args)]
    import torch

    args = [torch.tensor(np.asarray(a), requires_grad=True) for a in args]
    fn(*args).backward()
    return [to_numpy(a.grad) for a in args]


def trainable_gradients(model, loss_fn, x, y):
    """Gradients of `loss_fn(y, model(x, training=True))` for every trainable
    weight of `model`, as NumPy arrays, on the active backend."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        return [to_numpy(g) for g in grads]
    if backend == "jax":
        import jax

        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]

        def loss_of(values):
            out, _ = model.stateless_call(
                values, non_trainable, x, training=True
            )
            return loss_fn(y, out)

        return [to_numpy(g) for g in jax.grad(loss_of)(trainable)]
    model.zero_grad()
    loss = loss_fn(y, model(x, training=True))
    loss.backward()
    return [to_numpy(v.value.grad) for v in model.trainable_variables]
