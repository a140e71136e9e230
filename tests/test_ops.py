import keras
import numpy as np
import pytest

from keras_seqnorm import ops as norm_ops
from tests.helpers import to_numpy


@pytest.mark.parametrize("batch, groups", [(8, 4), (10, 4), (3, 8), (7, 7)])
def test_ghost_batch_ids_follow_array_split(batch, groups):
    count = norm_ops.num_ghost_batches(batch, groups_m=groups)
    ids = to_numpy(norm_ops.ghost_batch_ids(batch, count))
    expected = np.concatenate(
        [np.full(len(part), i) for i, part in enumerate(
            np.array_split(np.arange(batch), groups)) if len(part)]
    )
    np.testing.assert_array_equal(ids, expected)


def test_num_ghost_batches_from_ghost_batch_size():
    assert norm_ops.num_ghost_batches(10, ghost_batch_size=4) == 3
    assert norm_ops.num_ghost_batches(8, ghost_batch_size=4) == 2
    assert norm_ops.num_ghost_batches(3, groups_m=8) == 3


@pytest.mark.parametrize("axis", [-1, 1])
def test_sample_channel_moments(axis):
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 2.0, size=(4, 3, 5, 6)).astype("float32")
    channel_axis = norm_ops.resolve_axis(axis, 4)
    count, mean, variance = norm_ops.sample_channel_moments(x, channel_axis)
    moved = np.moveaxis(x.astype(np.float64), channel_axis, -1)
    flat = moved.reshape(4, -1, moved.shape[-1])
    np.testing.assert_allclose(to_numpy(mean), flat.mean(1), rtol=1e-5)
    np.testing.assert_allclose(to_numpy(variance), flat.var(1), rtol=1e-4)
    np.testing.assert_array_equal(
        to_numpy(count), np.full(mean.shape, flat.shape[1])
    )


def test_shifted_moments_are_accurate_far_from_zero():
    rng = np.random.default_rng(1)
    x = rng.normal(1e4, 1.0, size=(2, 64, 3)).astype("float32")
    _, _, variance = norm_ops.sample_channel_moments(x, 2)
    np.testing.assert_allclose(
        to_numpy(variance), x.astype(np.float64).var(1), rtol=1e-3
    )


def test_combination_is_exact():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 7, 4))
    count, mean, variance = norm_ops.sample_channel_moments(
        x.astype("float32"), 2
    )
    total, ghost_mean, ghost_variance = norm_ops.ghost_batch_moments(
        count, mean, variance, groups_m=3
    )
    for i, index in enumerate(np.array_split(np.arange(10), 3)):
        values = x[index].reshape(-1, 4)
        for row in index:
            np.testing.assert_allclose(
                to_numpy(ghost_mean)[row], values.mean(0), atol=1e-5
            )
            np.testing.assert_allclose(
                to_numpy(ghost_variance)[row], values.var(0), atol=1e-5
            )
            np.testing.assert_array_equal(to_numpy(total)[row], len(values))


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="unknown batch sizes only exist in TensorFlow graphs",
)
def test_unknown_batch_size_in_a_graph():
    import tensorflow as tf

    from keras_seqnorm.layers import SequentialNormalization
    from tests.helpers import seq_norm_reference

    layer = SequentialNormalization(groups_c=2, groups_m=4)
    layer.build((None, 3, 4))
    call = tf.function(
        lambda x: layer(x, training=True),
        input_signature=[tf.TensorSpec((None, 3, 4), tf.float32)],
    )
    rng = np.random.default_rng(3)
    for batch in (10, 3):
        x = rng.normal(size=(batch, 3, 4)).astype("float32")
        expected, _, _ = seq_norm_reference(x, -1, 2, 4)
        np.testing.assert_allclose(
            call(x).numpy(), expected, rtol=1e-4, atol=1e-4
        )
