"""Channel groups and ghost batches longer than 32.

The fused layers sum such groups over several axes of at most 32 values
(`keras_seqnorm.ops._sums`; a longer axis costs XLA on CPUs two kernels),
and pad the gather table of uneven ghost batches to such a width; and
slices of 64 values or more, which GhostNorm on JAX CPUs normalizes without
fusion barriers. Outputs, moving statistics and gradients for x, gamma and
beta against the paper's definition written with plain Keras ops and
differentiated by the backend.
"""

import numpy as np
import pytest
from keras import ops

from keras_seqnorm import ops as norm_ops
from keras_seqnorm.layers import GhostNormalization
from keras_seqnorm.layers import SequentialNormalization
from tests.helpers import ghost_norm_reference
from tests.helpers import gradients
from tests.helpers import seq_norm_reference
from tests.helpers import to_numpy

EPSILON = 1e-3


def _plain(x, gamma, beta, groups_c, groups_m):
    # Channels last. GroupNorm over `groups_c` groups (if any), then each of
    # numpy.array_split's ghost batches standardized with its own moments.
    if groups_c is not None:
        shape = ops.shape(x)
        split = (shape[0], -1, groups_c, shape[-1] // groups_c)
        grouped = ops.reshape(x, split)
        mean, variance = ops.moments(grouped, axes=(1, 3), keepdims=True)
        x = ops.reshape(
            (grouped - mean) / ops.sqrt(variance + EPSILON), shape
        )
    parts = []
    for rows in np.array_split(np.arange(x.shape[0]), groups_m):
        batch = x[int(rows[0]):int(rows[-1]) + 1]
        axes = tuple(range(len(batch.shape) - 1))
        mean, variance = ops.moments(batch, axes=axes, keepdims=True)
        parts.append((batch - mean) / ops.sqrt(variance + EPSILON))
    return ops.concatenate(parts, axis=0) * gamma + beta


@pytest.mark.parametrize(
    "shape, groups_c, groups_m",
    [
        # Ghost batches of 35 (-> 7 x 5) and of 34 and 33 (table width
        # 34 -> 17 x 2), 37 and 36 (width 37, padded to 38 -> 19 x 2).
        ((70, 3, 8), None, 2),
        ((67, 3, 8), None, 2),
        ((73, 2, 8), None, 2),
        # Channel groups of 40 (-> 20 x 2), 37 (no shorter split) and 160
        # (-> 32 x 5), with long ghost batches too.
        ((70, 2, 80), 2, 2),
        ((12, 3, 74), 2, 3),
        ((67, 2, 160), 1, 2),
    ],
)
def test_long_sums_match_plain_keras(shape, groups_c, groups_m):
    rng = np.random.default_rng(3)
    channels = shape[-1]
    x = rng.normal(2.0, 1.5, size=shape).astype("float32")
    # A tensor: torch multiplies no tensor that needs a gradient by NumPy.
    w = ops.convert_to_tensor(rng.normal(size=shape).astype("float32"))
    gamma = rng.uniform(0.5, 1.5, size=channels).astype("float32")
    beta = rng.normal(size=channels).astype("float32")

    def fused(x, gamma, beta):
        return norm_ops.sequential_normalization(
            x, gamma, beta, channel_axis=len(shape) - 1, groups_c=groups_c,
            groups_m=groups_m, epsilon=EPSILON,
            moving_mean=ops.zeros((channels,)),
            moving_variance=ops.ones((channels,)), momentum=0.0,
        )

    result = fused(x, gamma, beta)
    want = _plain(ops.convert_to_tensor(x), gamma, beta, groups_c, groups_m)
    np.testing.assert_allclose(
        to_numpy(result.outputs), to_numpy(want), rtol=1e-4, atol=1e-4
    )
    got_grads = gradients(
        lambda *a: ops.sum(fused(*a).outputs * w), x, gamma, beta
    )
    want_grads = gradients(
        lambda *a: ops.sum(_plain(*a, groups_c, groups_m) * w),
        x, gamma, beta,
    )
    for got, want in zip(got_grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize("groups_m", [2, 3])
def test_long_ghost_batches_moving_statistics(groups_m):
    # 67 samples: ghost batches of 34 and 33 (G_M = 2), 23, 22, 22 (3);
    # SeqNorm's channel groups of 80 (-> 20 x 4).
    x = np.random.default_rng(4).normal(1.0, 2.0, (67, 4, 160))
    x = x.astype("float32")
    ghost = GhostNormalization(groups_m=groups_m, momentum=0.0)
    seq = SequentialNormalization(groups_c=2, groups_m=groups_m, momentum=0.0)
    references = (
        ghost_norm_reference(x, groups_m=groups_m),
        seq_norm_reference(x, groups_c=2, groups_m=groups_m),
    )
    for layer, (expected, mean, variance) in zip((ghost, seq), references):
        out = to_numpy(layer(x, training=True))
        np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(
            to_numpy(layer.moving_mean), mean, atol=1e-4
        )
        np.testing.assert_allclose(
            to_numpy(layer.moving_variance), variance, rtol=1e-4, atol=1e-4
        )


def test_short_axes():
    assert norm_ops._short(32) == (32,)
    assert norm_ops._short(40) == (20, 2)
    assert norm_ops._short(37) == (37,)
    assert norm_ops._short(160) == (32, 5)
    assert norm_ops._splittable(37) == 38
    assert norm_ops._splittable(74) == 75
    for n in range(1, 300):
        parts = norm_ops._short(n)
        assert int(np.prod(parts)) == n
        m = norm_ops._splittable(n)
        assert m >= n and max(norm_ops._short(m)) <= 32
        assert all(max(norm_ops._short(k)) > 32 for k in range(n, m))


@pytest.mark.parametrize("groups_m", [4, 5])
@pytest.mark.parametrize("channel_axis", [3, 1])
def test_ghost_norm_with_long_slices_matches_plain_keras(
    groups_m, channel_axis
):
    # Slices of 64 values or more, where on JAX CPUs GhostNorm computes its
    # (M, C) terms inside the loops over the input (no fusion barrier):
    # even (G_M = 4) and uneven (5) ghost batches of 12 samples, channels
    # last and first.
    shape = (12, 8, 8, 6) if channel_axis == 3 else (12, 6, 8, 8)
    rng = np.random.default_rng(5)
    x = rng.normal(2.0, 1.5, size=shape).astype("float32")
    # A tensor: torch multiplies no tensor that needs a gradient by NumPy.
    w = ops.convert_to_tensor(rng.normal(size=shape).astype("float32"))
    gamma = rng.uniform(0.5, 1.5, size=6).astype("float32")
    beta = rng.normal(size=6).astype("float32")
    full = [1, 1, 1, 1]
    full[channel_axis] = 6

    def fused(x, gamma, beta):
        return norm_ops.sequential_normalization(
            x, gamma, beta, channel_axis=channel_axis, groups_m=groups_m,
            epsilon=EPSILON, moving_mean=ops.zeros((6,)),
            moving_variance=ops.ones((6,)), momentum=0.0,
        ).outputs

    def plain(x, gamma, beta):
        axes = tuple(a for a in range(4) if a != channel_axis)
        parts = []
        for rows in np.array_split(np.arange(12), groups_m):
            batch = x[int(rows[0]):int(rows[-1]) + 1]
            mean, variance = ops.moments(batch, axes=axes, keepdims=True)
            parts.append((batch - mean) / ops.sqrt(variance + EPSILON))
        return (
            ops.concatenate(parts, axis=0) * ops.reshape(gamma, full)
            + ops.reshape(beta, full)
        )

    np.testing.assert_allclose(
        to_numpy(fused(x, gamma, beta)),
        to_numpy(plain(ops.convert_to_tensor(x), gamma, beta)),
        rtol=1e-4, atol=1e-4,
    )
    got_grads = gradients(
        lambda *a: ops.sum(fused(*a) * w), x, gamma, beta
    )
    want_grads = gradients(
        lambda *a: ops.sum(plain(*a) * w), x, gamma, beta
    )
    for got, want in zip(got_grads, want_grads):
        np.testing.assert_allclose(got, want, rtol=2e-4, atol=2e-4)
