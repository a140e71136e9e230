import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_seqnorm.layers import GhostNormalization
from tests.helpers import ghost_norm_reference
from tests.helpers import input_gradient
from tests.helpers import to_numpy
from tests.helpers import trainable_gradients

BACKEND = keras.backend.backend()


def _random(shape, seed=0, loc=0.0, scale=1.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(loc, scale, size=shape)).astype("float32")


def test_weights_after_build():
    layer = GhostNormalization()
    layer.build((None, 4, 4, 6))
    assert len(layer.weights) == 4
    assert len(layer.trainable_weights) == 2
    assert [w.shape for w in layer.weights] == [(6,)] * 4
    assert all(w.dtype == "float32" for w in layer.weights)
    bare = GhostNormalization(center=False, scale=False)
    bare.build((None, 6))
    assert len(bare.trainable_weights) == 0
    assert len(bare.non_trainable_weights) == 2


def test_paper_section_2_2_example():
    # The paper's Section 2.2: eight values as an (8, 1, 1) tensor.
    x = np.array([35, 39, 30, 4, 38, 26, 27, 19], "float32").reshape(8, 1, 1)
    ghost = GhostNormalization(groups_m=2, epsilon=1e-8)(x, training=True)
    batch = GhostNormalization(groups_m=1, epsilon=1e-8)(x, training=True)
    np.testing.assert_allclose(
        np.round(to_numpy(ghost).ravel(), 1),
        [0.6, 0.9, 0.2, -1.7, 1.5, -0.2, -0.1, -1.2],
    )
    assert round(float(to_numpy(ghost).ravel()[6]), 2) == -0.07
    np.testing.assert_allclose(
        np.round(to_numpy(batch).ravel(), 1),
        [0.7, 1.1, 0.3, -2.2, 1.0, -0.1, -0.0, -0.8],
    )
    assert round(float(to_numpy(batch).ravel()[6]), 2) == -0.02


@pytest.mark.parametrize(
    "shape, axis",
    [
        ((12, 5), -1),
        ((12, 5), 1),
        ((10, 7, 3), -1),
        ((10, 3, 7), 1),
        ((9, 4, 5, 6), -1),
        ((9, 6, 4, 5), 1),
        ((8, 3, 2, 4, 5), -1),
        ((8, 5, 3, 2, 4), 1),
    ],
)
@pytest.mark.parametrize("groups_m", [1, 2, 4, 16])
def test_matches_numpy_reference(shape, axis, groups_m):
    x = _random(shape, seed=groups_m, loc=2.0, scale=3.0)
    layer = GhostNormalization(groups_m=groups_m, axis=axis, momentum=0.0)
    out = layer(x, training=True)
    expected, mean, variance = ghost_norm_reference(x, axis, groups_m)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), mean, atol=1e-4)
    np.testing.assert_allclose(
        to_numpy(layer.moving_variance), variance, rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("batch, size", [(10, 4), (10, 3), (3, 8), (1, 2)])
def test_ghost_batch_size(batch, size):
    x = _random((batch, 3, 4), seed=batch)
    out = GhostNormalization(ghost_batch_size=size)(x, training=True)
    expected, _, _ = ghost_norm_reference(x, ghost_batch_size=size)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-4, atol=1e-4)


def test_default_groups():
    x = _random((16, 3))
    out = GhostNormalization()(x, training=True)
    expected, _, _ = ghost_norm_reference(x, groups_m=4)
    np.testing.assert_allclose(to_numpy(out), expected, rtol=1e-4, atol=1e-4)


def test_equals_batch_normalization_with_one_group():
    x = _random((16, 5, 5, 8), loc=1.0, scale=2.0)
    inputs = keras.Input((5, 5, 8))
    ghost = GhostNormalization(groups_m=1, momentum=0.9)
    batch = keras.layers.BatchNormalization(momentum=0.9)
    for layer in (ghost, batch):
        layer.build((None, 5, 5, 8))
        layer.gamma.assign(np.linspace(0.5, 2.0, 8))
        layer.beta.assign(np.linspace(-1.0, 1.0, 8))
    np.testing.assert_allclose(
        to_numpy(ghost(x, training=True)),
        to_numpy(batch(x, training=True)),
        atol=2e-5,
    )
    for name in ("moving_mean", "moving_variance"):
        np.testing.assert_allclose(
            to_numpy(getattr(ghost, name)),
            to_numpy(getattr(batch, name)),
            rtol=1e-5,
            atol=1e-6,
        )
    weights = _random((16, 5, 5, 8), seed=3)

    def loss_of(layer):
        return lambda v: keras.ops.multiply(
            layer(v, training=True), weights
        )

    np.testing.assert_allclose(
        input_gradient(loss_of(ghost), x),
        input_gradient(loss_of(batch), x),
        atol=1e-4,
    )
    models = [
        keras.Model(inputs, keras.layers.Dense(2)(layer(inputs)))
        for layer in (ghost, batch)
    ]
    models[1].set_weights(models[0].get_weights())
    target = _random((16, 5, 5, 2), seed=4)
    loss = keras.losses.MeanSquaredError()
    for a, b in zip(*(trainable_gradients(m, loss, x, target) for m in models)):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_gradient_accumulation_is_ghost_normalization():
    # Section 2.3.1: BatchNorm with gradients accumulated over n equal
    # micro-batches is GhostNorm with G_M = n over the whole batch.
    n, batch = 4, 32
    x, target = _random((batch, 6), seed=1), _random((batch, 3), seed=2)

    def build(norm):
        inputs = keras.Input((6,))
        hidden = keras.layers.Dense(8, name="dense1")(inputs)
        outputs = keras.layers.Dense(3, name="dense2")(norm(hidden))
        return keras.Model(inputs, outputs)

    keras.utils.set_random_seed(0)
    ghost = build(GhostNormalization(groups_m=n))
    batch_norm = build(keras.layers.BatchNormalization())
    batch_norm.set_weights(ghost.get_weights())
    loss = keras.losses.MeanSquaredError()
    expected = trainable_gradients(ghost, loss, x, target)
    accumulated = None
    for part_x, part_y in zip(np.split(x, n), np.split(target, n)):
        grads = trainable_gradients(batch_norm, loss, part_x, part_y)
        grads = [g / n for g in grads]
        accumulated = grads if accumulated is None else [
            a + g for a, g in zip(accumulated, grads)
        ]
    for got, want in zip(accumulated, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_inference_uses_moving_statistics():
    x = _random((8, 3, 4), loc=3.0)
    layer = GhostNormalization(groups_m=2, epsilon=1e-3)
    layer.build(x.shape)
    mean, variance = np.array([1.0, 2.0, 3.0, 4.0]), np.array([4, 1, 9, 2.0])
    layer.moving_mean.assign(mean)
    layer.moving_variance.assign(variance)
    layer.gamma.assign([1.0, 2.0, 0.5, 1.0])
    layer.beta.assign([0.0, 1.0, 0.0, -1.0])
    expected = (x - mean) / np.sqrt(variance + 1e-3) * [1, 2, 0.5, 1] + [
        0,
        1,
        0,
        -1,
    ]
    np.testing.assert_allclose(
        to_numpy(layer(x, training=False)), expected, rtol=1e-5, atol=1e-5
    )
    # trainable=False means inference, and the statistics do not move.
    layer.trainable = False
    np.testing.assert_allclose(
        to_numpy(layer(x, training=True)), expected, rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(to_numpy(layer.moving_mean), mean)
    layer.trainable = True
    layer(x, training=True)
    assert not np.allclose(to_numpy(layer.moving_mean), mean)


def test_large_offset_inputs_stay_accurate():
    x = _random((16, 8, 8, 4), loc=1e4, scale=1.0)
    out = GhostNormalization(groups_m=4)(x, training=True)
    expected, _, _ = ghost_norm_reference(x.astype(np.float64), groups_m=4)
    np.testing.assert_allclose(to_numpy(out), expected, atol=1e-2)


def test_mixed_float16_large_inputs():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = GhostNormalization(groups_m=2)
        x = np.full((4, 3, 3, 2), 70000.0, "float32")
        x[:, 0] = 69000.0
        out = layer(x, training=True)
        assert all(w.dtype == "float32" for w in layer.weights)
    finally:
        keras.config.set_dtype_policy("float32")
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    out = to_numpy(out).astype(np.float32)
    assert np.all(np.isfinite(out))
    expected, _, _ = ghost_norm_reference(x, groups_m=2)
    np.testing.assert_allclose(out, expected, atol=1e-2)
    assert np.all(np.isfinite(to_numpy(layer.moving_mean)))


def test_masked_positions_count_in_no_statistic():
    x = _random((8, 5, 3), loc=1.0)
    mask = np.ones((8, 5), bool)
    mask[:, 3:] = False
    mask[5] = False
    x_masked = np.where(mask[..., None], x, 1e6).astype("float32")
    layer = GhostNormalization(groups_m=2, momentum=0.0)
    out = to_numpy(layer(x_masked, training=True, mask=mask))
    expected, mean, variance = ghost_norm_reference(
        x_masked, groups_m=2, mask=mask
    )
    np.testing.assert_allclose(out[mask], expected[mask], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_numpy(layer.moving_mean), mean, atol=1e-4)
    np.testing.assert_allclose(
        to_numpy(layer.moving_variance), variance, rtol=1e-4
    )


def test_masked_gradients_equal_masked_batch_normalization():
    # With one ghost batch, masked GhostNorm is Keras' masked BatchNorm:
    # the custom gradients of the shared passes against Keras' autodiff.
    x = _random((6, 7, 4), loc=2.0)
    mask = np.ones((6, 7), bool)
    mask[:, 5:] = False
    mask[2, 2:] = False
    weights = _random((6, 7, 4), seed=5) * mask[..., None]
    ghost = GhostNormalization(groups_m=1)
    batch = keras.layers.BatchNormalization()

    def loss_of(layer):
        return lambda v: keras.ops.multiply(
            layer(v, training=True, mask=mask), weights
        )

    for layer in (ghost, batch):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 2.0, 4))
    got = to_numpy(ghost(x, training=True, mask=mask))
    want = to_numpy(batch(x, training=True, mask=mask))
    np.testing.assert_allclose(got[mask], want[mask], atol=1e-4)
    np.testing.assert_allclose(
        input_gradient(loss_of(ghost), x),
        input_gradient(loss_of(batch), x),
        atol=1e-4,
    )


def test_masking_layer_in_a_model():
    data = np.array([[[1, 5], [2, 5], [0, 0], [0, 0]]] * 8, "float32")
    inputs = keras.Input((None, 2))
    normed = GhostNormalization(groups_m=2, momentum=0.0)(
        keras.layers.Masking()(inputs)
    )
    model = keras.Model(inputs, normed)
    model.compile("sgd", "mse")
    model.fit(data, data, batch_size=8, epochs=1, verbose=0)
    np.testing.assert_allclose(
        to_numpy(model.layers[-1].moving_mean), [1.5, 5.0], atol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(model.layers[-1].moving_variance), [0.25, 0.0], atol=1e-5
    )


def test_fully_masked_input_gives_zeros():
    layer = GhostNormalization(groups_m=2)
    x = _random((4, 3, 5))
    out = to_numpy(layer(x, training=True, mask=np.zeros((4, 3), bool)))
    np.testing.assert_array_equal(out, np.zeros_like(x))
    np.testing.assert_array_equal(to_numpy(layer.moving_mean), np.zeros(5))
    np.testing.assert_array_equal(to_numpy(layer.moving_variance), np.ones(5))


def test_symbolic_call_unknown_batch_and_uneven_fit():
    inputs = keras.Input((4, 4, 3))
    outputs = GhostNormalization(groups_m=4)(inputs)
    assert tuple(outputs.shape) == (None, 4, 4, 3)
    hidden = keras.layers.GlobalAveragePooling2D()(outputs)
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    model.compile("sgd", "mse")
    x, y = _random((23, 4, 4, 3)), _random((23, 2))
    # 23 samples in batches of 8: the last batch holds 7.
    history = model.fit(x, y, batch_size=8, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert model.predict(x[:3], verbose=0).shape == (3, 2)


def _train_once(jit_compile, x, y):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((6,))
    hidden = GhostNormalization(groups_m=4, momentum=0.5)(
        keras.layers.Dense(8)(inputs)
    )
    model = keras.Model(inputs, keras.layers.Dense(2)(hidden))
    model.compile(
        keras.optimizers.SGD(0.1),
        "mse",
        jit_compile=jit_compile,
        run_eagerly=not jit_compile,
    )
    model.fit(x, y, batch_size=10, epochs=1, shuffle=False, verbose=0)
    return model.get_weights(), model.predict(x, verbose=0)


def test_jit_compile_equals_eager():
    x, y = _random((26, 6), seed=5), _random((26, 2), seed=6)
    compiled, eager = _train_once(True, x, y), _train_once(False, x, y)
    for a, b in zip(compiled[0], eager[0]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(compiled[1], eager[1], rtol=1e-5, atol=1e-5)


def test_config_round_trip():
    layer = GhostNormalization(
        ghost_batch_size=16,
        axis=1,
        momentum=0.9,
        epsilon=1e-5,
        gamma_regularizer="l2",
        beta_constraint="non_neg",
        name="ghost",
    )
    config = layer.get_config()
    assert config["groups_m"] is None
    assert config["ghost_batch_size"] == 16
    clone = GhostNormalization.from_config(config)
    assert clone.get_config() == config


def test_keras_file_loads_in_fresh_process(tmp_path):
    inputs = keras.Input((4, 4, 2))
    outputs = GhostNormalization(groups_m=2, name="ghost")(inputs)
    model = keras.Model(inputs, outputs)
    x = _random((8, 4, 4, 2))
    model.compile("sgd", "mse")
    model.fit(x, x, batch_size=8, epochs=1, verbose=0)
    path = tmp_path / "ghost.keras"
    model.save(path)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", to_numpy(model(x, training=False)))
    script = textwrap.dedent(
        f"""
        import numpy as np
        import keras
        import keras_seqnorm  # registers the layers
        model = keras.saving.load_model({str(path)!r})
        x = np.load({str(tmp_path / "x.npy")!r})
        y = keras.ops.convert_to_numpy(model(x, training=False))
        np.testing.assert_allclose(y, np.load({str(tmp_path / "y.npy")!r}),
                                   atol=1e-6)
        print(type(model.get_layer("ghost")).__name__)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": BACKEND},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().endswith("GhostNormalization")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"groups_m": 0}, "Received: groups_m=0"),
        ({"groups_m": 2.5}, "Received: groups_m=2.5"),
        ({"groups_m": True}, "Received: groups_m=True"),
        ({"ghost_batch_size": -1}, "Received: ghost_batch_size=-1"),
        (
            {"groups_m": 2, "ghost_batch_size": 8},
            "Received: groups_m=2, ghost_batch_size=8",
        ),
        ({"axis": "channels"}, "Received: axis='channels'"),
        ({"momentum": 1.5}, "Received: momentum=1.5"),
        ({"epsilon": 0.0}, "Received: epsilon=0.0"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GhostNormalization(**kwargs)


@pytest.mark.parametrize(
    "axis, shape, match",
    [
        (-1, (None,), "Received: input_shape"),
        (0, (None, 3), "Received: axis=0"),
        (3, (None, 4, 3), "Received: axis=3"),
        (-1, (None, 4, None), "Received: input_shape"),
    ],
)
def test_bad_input_shapes(axis, shape, match):
    with pytest.raises(ValueError, match=match):
        GhostNormalization(axis=axis).build(shape)


def test_bad_mask_rank():
    with pytest.raises(ValueError, match="Received: mask.shape"):
        GhostNormalization()(_random((4, 3, 2)), mask=np.ones((4,), bool))
