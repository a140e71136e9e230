import keras
import numpy as np
import pytest

from keras_seqnorm.layers import NoisyBatchNormalization
from tests.helpers import to_numpy


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def _batch_norm_twin(layer, input_shape):
    twin = keras.layers.BatchNormalization(
        axis=layer.axis, momentum=layer.momentum, epsilon=layer.epsilon
    )
    twin.build(input_shape)
    twin.set_weights(layer.get_weights())
    return twin


def test_weights_match_batch_normalization():
    layer = NoisyBatchNormalization()
    layer.build((None, 4, 4, 6))
    assert [w.path.split("/")[-1] for w in layer.weights] == [
        "gamma", "beta", "moving_mean", "moving_variance"
    ]
    assert len(layer.trainable_weights) == 2


def test_inference_is_batch_normalization_without_noise():
    x = _random((8, 3, 3, 4))
    layer = NoisyBatchNormalization(stddev=0.5, seed=1)
    layer.build(x.shape)
    rng = np.random.default_rng(1)
    layer.set_weights([rng.uniform(0.5, 2, 4), rng.normal(size=4),
                       rng.normal(size=4), rng.uniform(0.5, 2, 4)])
    twin = _batch_norm_twin(layer, x.shape)
    expected = to_numpy(twin(x, training=False))
    np.testing.assert_allclose(
        to_numpy(layer(x, training=False)), expected, atol=1e-6
    )
    # Frozen: training=True still means inference, without noise.
    layer.trainable = False
    np.testing.assert_allclose(
        to_numpy(layer(x, training=True)), expected, atol=1e-6
    )


def test_zero_stddev_is_batch_normalization():
    x = _random((8, 5))
    layer = NoisyBatchNormalization(stddev=0.0)
    layer.build(x.shape)
    twin = _batch_norm_twin(layer, x.shape)
    np.testing.assert_allclose(
        to_numpy(layer(x, training=True)),
        to_numpy(twin(x, training=True)),
        atol=1e-6,
    )


def test_training_normalizes_noisy_inputs():
    # Constant inputs: without noise the batch variance is 0 and the moving
    # variance decays to 0.99; with noise of std 0.5 it is
    # 0.99 + 0.01 * 0.25, and the output is the standardized noise.
    x = np.full((8192, 2), 3.0, "float32")
    layer = NoisyBatchNormalization(stddev=0.5, momentum=0.99, seed=7)
    out = to_numpy(layer(x, training=True))
    np.testing.assert_allclose(out.std(axis=0), 1.0, atol=0.01)
    assert np.abs(out.mean(axis=0)).max() < 0.05
    np.testing.assert_allclose(
        to_numpy(layer.moving_variance), 0.9925, atol=2e-4
    )
    np.testing.assert_allclose(to_numpy(layer.moving_mean), 0.03, atol=2e-4)


def test_noise_is_seeded_and_fresh_each_call():
    x = _random((16, 4))
    first = NoisyBatchNormalization(stddev=0.1, seed=3)
    second = NoisyBatchNormalization(stddev=0.1, seed=3)
    a = to_numpy(first(x, training=True))
    np.testing.assert_allclose(a, to_numpy(second(x, training=True)))
    assert not np.allclose(a, to_numpy(first(x, training=True)))


def _keras_moments_lose_small_variances():
    # Keras 3.15's torch backend computes `ops.moments`' variance as
    # E[x^2] - E[x]^2 in float32 (keras/src/backend/torch/nn.py; TensorFlow
    # and JAX moved to E[(x - E[x])^2] in keras-team/keras#18795). At a mean
    # of 8 and a std of 3e-4 the two terms agree in every float32 bit that
    # holds the variance, which comes out as rounding noise (or negative:
    # NaN with a tiny epsilon). Keras' BatchNormalization, and so
    # NoisyBatchNormalization, take their batch statistics from it.
    x = 8.0 + 3e-4 * np.random.default_rng(0).normal(size=(256, 1))
    variance = to_numpy(keras.ops.moments(x.astype("float32"), axes=[0])[1])
    return not np.allclose(variance, x.var(axis=0), rtol=0.1)


@pytest.mark.skipif(
    _keras_moments_lose_small_variances(),
    reason="Keras' ops.moments on this backend (torch) computes the "
    "variance as E[x^2] - E[x]^2 in float32: the noise this test looks "
    "for (std 3e-4 on a mean of 8) is lost there even in float32",
)
def test_mixed_float16_keeps_small_noise():
    # Around 8, float16's spacing is 2 ** -7: noise of std 3e-4 added in
    # float16 would vanish and leave a constant input, normalized to 0. In
    # float32 it survives and is normalized to unit variance.
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = NoisyBatchNormalization(stddev=3e-4, epsilon=1e-12, seed=0)
        out = layer(np.full((256, 1), 8.0, "float32"), training=True)
    finally:
        keras.config.set_dtype_policy("float32")
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_allclose(
        to_numpy(out).astype("float32").std(), 1.0, atol=0.05
    )


def test_fit_step_and_keras_file(tmp_path):
    inputs = keras.Input((6,))
    x = keras.layers.Dense(4)(inputs)
    outputs = NoisyBatchNormalization(stddev=0.01, seed=2, name="noisy")(x)
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse")
    data = _random((16, 6))
    model.fit(data, data[:, :4], batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "noisy.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("noisy"), NoisyBatchNormalization)
    np.testing.assert_allclose(
        to_numpy(loaded(data, training=False)),
        to_numpy(model(data, training=False)),
        atol=1e-6,
    )


def test_config_round_trip():
    layer = NoisyBatchNormalization(
        stddev=1e-3, axis=1, momentum=0.9, seed=5, name="noisy"
    )
    config = layer.get_config()
    assert config["stddev"] == 1e-3
    assert config["seed"] == 5
    assert config["axis"] == 1
    assert NoisyBatchNormalization.from_config(config).get_config() == config


@pytest.mark.parametrize("stddev", [-0.1, "0.1", None, True])
def test_bad_stddev(stddev):
    with pytest.raises(ValueError, match=r"`stddev`.*Received: stddev="):
        NoisyBatchNormalization(stddev=stddev)
