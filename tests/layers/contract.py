"""The contract of a normalization layer, checked on the public Keras API.

In the spirit of Keras' `testing.TestCase.run_layer_test` (which lives in
the private `keras.src.testing`). Each `check_*` function takes
`make_layer`, a callable returning a new layer from keyword arguments
(`dtype`, ...), and asserts one promise; `test_layer_contract.py` runs them
over every layer of the norm registry. The layer's channel axis is the last.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
from keras import ops

from tests.helpers import to_numpy


def random_inputs(shape, seed=0, loc=1.0, scale=2.0):
    rng = np.random.default_rng(seed)
    return rng.normal(loc, scale, size=shape).astype("float32")


def json_round_trip(value):
    """`value` as it comes back from JSON (tuples become lists, ...)."""
    return json.loads(json.dumps(value))


def randomize_weights(layer, seed=0):
    """Sets every weight to values in [0.5, 2]: valid as gammas, betas,
    means and variances, and away from the initial ones and zeros."""
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [rng.uniform(0.5, 2.0, size=w.shape) for w in layer.weights]
    )


def check_weights_after_build(make_layer, input_shape, trainable,
                              non_trainable):
    layer = make_layer()
    layer.build(input_shape)
    assert len(layer.trainable_weights) == trainable
    assert len(layer.non_trainable_weights) == non_trainable
    assert [tuple(w.shape) for w in layer.weights] == [
        (input_shape[-1],)
    ] * (trainable + non_trainable)


def check_symbolic_call(make_layer, input_shape):
    """A call on `keras.Input` (batch size unknown) gives a symbolic output
    of the input's shape, in the layer's compute dtype."""
    layer = make_layer()
    inputs = keras.Input(input_shape[1:])
    outputs = layer(inputs)
    assert tuple(outputs.shape) == (None, *input_shape[1:])
    assert tuple(layer.compute_output_shape(inputs.shape)) == tuple(
        outputs.shape
    )
    assert outputs.dtype == layer.compute_dtype


def fit_and_predict(make_layer, x, y, jit_compile, batch_size=7):
    """One epoch of SGD on Dense -> layer -> Dense, then `predict`. Returns
    (losses, weights, predictions). Batches of 7 split unevenly into ghost
    batches; every batch has one size, so each run compiles one step."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input(x.shape[1:])
    hidden = make_layer()(keras.layers.Dense(x.shape[-1])(inputs))
    model = keras.Model(inputs, keras.layers.Dense(y.shape[-1])(hidden))
    model.compile(
        keras.optimizers.SGD(0.1),
        "mse",
        jit_compile=jit_compile,
        run_eagerly=not jit_compile,
    )
    history = model.fit(
        x, y, batch_size=batch_size, epochs=1, shuffle=False, verbose=0
    )
    predictions = model.predict(x, batch_size=batch_size, verbose=0)
    return history.history["loss"], model.get_weights(), predictions


def check_jit_compile_equals_eager(make_layer, x, y, tolerance=1e-5):
    """`fit` and `predict` compiled with XLA (`jit_compile=True`) give the
    weights and predictions of the eager run."""
    compiled = fit_and_predict(make_layer, x, y, jit_compile=True)
    eager = fit_and_predict(make_layer, x, y, jit_compile=False)
    assert np.all(np.isfinite(compiled[0]))
    np.testing.assert_allclose(compiled[0], eager[0], rtol=tolerance)
    for got, want in zip(compiled[1], eager[1]):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(
        compiled[2], eager[2], rtol=tolerance, atol=tolerance
    )


def check_mixed_precision(make_layer, x, policy, rtol, atol):
    """Under the `policy` the weights stay float32, the outputs are in the
    compute dtype, finite and close to the float32 layer's, in training
    (first, so the moving statistics move) and in inference."""
    reference = make_layer(dtype="float32")
    layer = make_layer(dtype=policy)
    reference.build(x.shape)
    layer.build(x.shape)
    randomize_weights(reference)
    layer.set_weights(reference.get_weights())
    compute_dtype = keras.DTypePolicy(policy).compute_dtype
    assert all(w.dtype == "float32" for w in layer.weights)
    for training in (True, False):
        out = layer(x, training=training)
        assert keras.backend.standardize_dtype(out.dtype) == compute_dtype
        out = to_numpy(out).astype("float32")
        assert np.all(np.isfinite(out))
        np.testing.assert_allclose(
            out, to_numpy(reference(x, training=training)), rtol, atol
        )
    for got, want in zip(layer.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(got, want, rtol=rtol)


def check_config_round_trip(make_layer, x, expected_config):
    """`get_config` holds `expected_config` (the constructor arguments,
    unchanged); `keras.layers.serialize` -> JSON -> `deserialize` gives a
    layer of the same class and config, with the same outputs."""
    layer = make_layer()
    config = layer.get_config()
    assert {key: config[key] for key in expected_config} == expected_config
    clone = keras.layers.deserialize(
        json_round_trip(keras.layers.serialize(layer))
    )
    assert type(clone) is type(layer)
    assert clone.get_config() == config
    layer.build(x.shape)
    clone.build(x.shape)
    randomize_weights(layer)
    clone.set_weights(layer.get_weights())
    for training in (False, True):
        np.testing.assert_allclose(
            to_numpy(clone(x, training=training)),
            to_numpy(layer(x, training=training)),
            rtol=1e-6,
            atol=1e-6,
        )


def check_frozen_layer_is_inference(make_layer, x, has_moving_statistics):
    """With `trainable = False`, `training=True` gives the inference outputs
    and moves no weight."""
    layer = make_layer()
    layer.build(x.shape)
    randomize_weights(layer)
    weights = layer.get_weights()
    inference = to_numpy(layer(x, training=False))
    layer.trainable = False
    np.testing.assert_allclose(
        to_numpy(layer(x, training=True)), inference, rtol=1e-6, atol=1e-6
    )
    for got, want in zip(layer.get_weights(), weights):
        np.testing.assert_array_equal(got, want)
    layer.trainable = True
    training = to_numpy(layer(x, training=True))
    # Only a layer with moving statistics trains differently.
    assert np.allclose(training, inference) != has_moving_statistics


class MaskProbe(keras.layers.Layer):
    """Outputs the mask it receives as floats (-1 where it gets none)."""

    def call(self, inputs, mask=None):
        shape = ops.shape(inputs)[:-1]
        if mask is None:
            return -ops.ones(shape)
        return ops.cast(ops.broadcast_to(mask, shape), "float32")

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        return input_shape[:-1]


def check_masking(make_layer, x, mask, reference=None, tolerance=1e-4):
    """In a model `Masking -> layer -> next layer`, the next layer receives
    the mask. In training, the outputs at unmasked positions are
    `reference(inputs, mask)[0]`, where `inputs` is `x` zeroed at the masked
    positions (what `Masking` passes on); a layer with moving statistics
    (initially 0 and 1) moves them towards the reference's batch mean and
    variance, `reference(inputs, mask)[1:]`, by `1 - momentum`."""
    inputs = keras.Input((None, x.shape[-1]))
    layer = make_layer()
    normalized = layer(keras.layers.Masking(0.0)(inputs))
    model = keras.Model(inputs, [normalized, MaskProbe()(normalized)])
    masked = np.where(mask[..., None], x, 0.0).astype("float32")
    out, received = model(masked, training=True)
    np.testing.assert_array_equal(to_numpy(received), mask)
    if reference is None:
        return
    expected = reference(masked, mask=mask)
    np.testing.assert_allclose(
        to_numpy(out)[mask], expected[0][mask], rtol=tolerance,
        atol=tolerance
    )
    if hasattr(layer, "moving_mean"):
        rate = 1.0 - layer.momentum
        np.testing.assert_allclose(
            to_numpy(layer.moving_mean), rate * expected[1],
            rtol=tolerance, atol=tolerance,
        )
        np.testing.assert_allclose(
            to_numpy(layer.moving_variance),
            1.0 - rate + rate * expected[2],
            rtol=tolerance, atol=tolerance,
        )


_LOAD_SCRIPT = textwrap.dedent(
    """
    import json
    import pathlib
    import sys

    import keras
    import numpy as np

    import keras_seqnorm  # noqa: F401 (registers the layers)

    directory = pathlib.Path(sys.argv[1])
    x = np.load(directory / "x.npy")
    results = {}
    for path in sorted(directory.glob("*.keras")):
        model = keras.saving.load_model(path)
        layer = model.get_layer(sys.argv[2])
        results[path.stem] = {
            "class": type(layer).__name__,
            "config": layer.get_config(),
            "outputs": keras.ops.convert_to_numpy(
                model(x, training=False)
            ).tolist(),
        }
    print(json.dumps(results))
    """
)


def load_in_fresh_process(models, x, directory, layer_name):
    """Saves each model of the dict `models` to `<directory>/<key>.keras`,
    loads them all in one new Python process on the active backend, and
    returns for each key the layer named `layer_name` as that process saw
    it (`class`, `config`) and the model's inference `outputs` on `x`."""
    np.save(directory / "x.npy", x)
    for key, model in models.items():
        model.save(directory / f"{key}.keras")
    result = subprocess.run(
        [sys.executable, "-c", _LOAD_SCRIPT, str(directory), layer_name],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": keras.backend.backend()},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])
