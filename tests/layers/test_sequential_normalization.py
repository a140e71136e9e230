import keras
import numpy as np
import pytest

from keras_seqnorm.layers import GhostNormalization
from keras_seqnorm.layers import SequentialNormalization
from tests.helpers import ghost_norm_reference
from tests.helpers import group_norm_reference
from tests.helpers import input_gradient
from tests.helpers import seq_norm_reference
from tests.helpers import to_numpy


def _random(shape, seed=0, loc=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(loc, scale, size=shape)).astype("float32")


def test_weights_after_build():
    layer = SequentialNormalization(groups_c=2)
    layer.build((None, 4, 4, 6))
    assert len(layer.weights) == 4
    assert len(layer.trainable_weights) == 2
    assert [w.shape for w in layer.weights] == [(6,)] * 4


@pytest.mark.parametrize(
    "shape, axis",
    [
        ((12, 8), -1),
        ((12, 8), 1),
        ((10, 5, 8), -1),
        ((10, 8, 5), 1),
        ((9, 3, 4, 8), -1),
        ((9, 8, 3, 4), 1),
        ((8, 2, 3, 2, 8), -1),
        ((8, 8, 2, 3, 2), 1),
    ],
)
@pytest.mark.parametrize(
    "groups_c, groups_m", [(1, 1), (2, 4), (4, 3), (8, 16)]
)
def test_matches_numpy_reference(shape, axis, groups_c, groups_m):
    x = _random(shape, seed=groups_c, loc=1.0, scale=2.0)
    layer = SequentialNormalization(
        groups_c=groups_c, groups_m=groups_m, axis=axis, momentum=0.0
    )
    out = layer(x, training=True)
    expected, mean, variance = seq_norm_reference(
        x, axis, groups_c, groups_m
    )
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), mean, atol=1e-4)
    np.testing.assert_allclose(
        to_numpy(layer.moving_variance), variance, rtol=1e-4, atol=1e-4
    )


def test_default_is_four_channel_groups_and_eight_ghost_batches():
    layer = SequentialNormalization()
    assert layer.get_config()["groups_c"] == 4
    x = _random((32, 3, 8))
    expected, _, _ = seq_norm_reference(x, groups_c=4, groups_m=8)
    np.testing.assert_allclose(
        to_numpy(layer(x, training=True)), expected, rtol=1e-4, atol=1e-4
    )


def _two_stage(groups_c, groups_m, x_shape):
    group = keras.layers.GroupNormalization(
        groups=groups_c, center=False, scale=False, epsilon=1e-3
    )
    ghost = GhostNormalization(groups_m=groups_m)
    group.build(x_shape)
    ghost.build(x_shape)
    return group, ghost


def test_equals_group_normalization_then_ghost_normalization():
    x = _random((16, 4, 4, 8), loc=2.0, scale=3.0)
    seq = SequentialNormalization(groups_c=2, groups_m=4)
    seq.build(x.shape)
    seq.gamma.assign(np.linspace(0.5, 1.5, 8))
    seq.beta.assign(np.linspace(-1, 1, 8))
    group, ghost = _two_stage(2, 4, x.shape)
    ghost.gamma.assign(np.linspace(0.5, 1.5, 8))
    ghost.beta.assign(np.linspace(-1, 1, 8))

    def two_stage(v):
        return ghost(group(v), training=True)

    np.testing.assert_allclose(
        to_numpy(seq(x, training=True)),
        to_numpy(two_stage(x)),
        atol=1e-4,
    )
    np.testing.assert_allclose(
        to_numpy(seq.moving_variance), to_numpy(ghost.moving_variance),
        atol=1e-5,
    )
    weights = _random(x.shape, seed=9)

    def weighted(fn):
        return lambda v: keras.ops.multiply(fn(v), weights)

    np.testing.assert_allclose(
        input_gradient(weighted(lambda v: seq(v, training=True)), x),
        input_gradient(weighted(two_stage), x),
        atol=1e-4,
    )
    # Inference: the GroupNorm stage still uses the sample's statistics.
    np.testing.assert_allclose(
        to_numpy(seq(x, training=False)),
        to_numpy(ghost(group(x), training=False)),
        atol=1e-4,
    )


def test_inference_uses_moving_statistics():
    x = _random((6, 5, 4), loc=1.0)
    layer = SequentialNormalization(groups_c=2, groups_m=2)
    layer.build(x.shape)
    layer.moving_mean.assign([0.1, -0.2, 0.3, 0.0])
    layer.moving_variance.assign([0.5, 2.0, 1.0, 0.8])
    grouped = group_norm_reference(x, groups_c=2)
    expected = (grouped - [0.1, -0.2, 0.3, 0.0]) / np.sqrt(
        np.array([0.5, 2.0, 1.0, 0.8]) + 1e-3
    )
    np.testing.assert_allclose(
        to_numpy(layer(x, training=False)), expected, atol=1e-4
    )
    layer.trainable = False
    np.testing.assert_allclose(
        to_numpy(layer(x, training=True)), expected, atol=1e-4
    )


def test_large_offset_inputs_stay_accurate():
    x = _random((16, 8, 8, 8), loc=1e4, scale=1.0)
    out = SequentialNormalization(groups_c=4, groups_m=4)(x, training=True)
    expected, _, _ = seq_norm_reference(x.astype(np.float64), -1, 4, 4)
    np.testing.assert_allclose(to_numpy(out), expected, atol=1e-2)


def test_mixed_float16_large_inputs():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = SequentialNormalization(groups_c=2, groups_m=2)
        x = _random((4, 3, 3, 4), loc=70000.0, scale=500.0)
        out = layer(x, training=True)
        assert all(w.dtype == "float32" for w in layer.weights)
    finally:
        keras.config.set_dtype_policy("float32")
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    out = to_numpy(out).astype(np.float32)
    assert np.all(np.isfinite(out))
    expected, _, _ = seq_norm_reference(x, -1, 2, 2)
    np.testing.assert_allclose(out, expected, atol=1e-2)


def test_masked_positions_count_in_no_statistic():
    x = _random((8, 6, 4), loc=1.0)
    mask = np.ones((8, 6), bool)
    mask[:, 4:] = False
    x_masked = np.where(mask[..., None], x, -1e5).astype("float32")
    out = SequentialNormalization(groups_c=2, groups_m=2)(
        x_masked, training=True, mask=mask
    )
    grouped = group_norm_reference(x[:, :4], groups_c=2)
    expected, _, _ = ghost_norm_reference(grouped, groups_m=2)
    np.testing.assert_allclose(
        to_numpy(out)[:, :4], expected, rtol=1e-4, atol=1e-4
    )


def test_save_and_load(tmp_path):
    inputs = keras.Input((4, 4, 8))
    outputs = SequentialNormalization(groups_c=2, groups_m=2)(inputs)
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse")
    x = _random((8, 4, 4, 8))
    model.fit(x, x, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "seq.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.layers[-1], SequentialNormalization)
    np.testing.assert_allclose(
        to_numpy(loaded(x, training=False)),
        to_numpy(model(x, training=False)),
        atol=1e-6,
    )
    config = model.layers[-1].get_config()
    assert SequentialNormalization.from_config(config).get_config() == config


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"groups_c": 0}, "Received: groups_c=0"),
        ({"groups_c": None}, "Received: groups_c=None"),
        ({"groups_m": -2}, "Received: groups_m=-2"),
        (
            {"groups_m": 2, "ghost_batch_size": 4},
            "Received: groups_m=2, ghost_batch_size=4",
        ),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SequentialNormalization(**kwargs)


def test_groups_c_must_divide_channels():
    with pytest.raises(ValueError, match=r"\(6\). Received: groups_c=4"):
        SequentialNormalization(groups_c=4).build((None, 5, 6))
