"""Issue 15: on TensorFlow, outside XLA, the layers run as their own
XLA-compiled function (`fused=None`), equal to their plain ops
(`fused=False`)."""

import keras
import numpy as np
import pytest

from keras_seqnorm.layers import GhostNormalization
from keras_seqnorm.layers import SequentialNormalization
from tests.helpers import to_numpy

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the layer-level compiled call is TensorFlow's",
)

LAYERS = [
    pytest.param(GhostNormalization, {"groups_m": 3}, id="ghost"),
    pytest.param(
        SequentialNormalization, {"groups_c": 2, "groups_m": 3},
        id="sequential",
    ),
]


def _layers(cls, kwargs, shape, **extra):
    # The same layer twice, with equal weights: compiled call and plain ops.
    layers = []
    for fused in (None, False):
        layer = cls(momentum=0.5, fused=fused, **kwargs, **extra)
        layer.build(shape)
        channels = shape[-1]
        layer.gamma.assign(np.linspace(0.5, 1.5, channels))
        layer.beta.assign(np.linspace(-1.0, 1.0, channels))
        layers.append(layer)
    return layers


def _step(layer, training, mask, signature=None):
    import tensorflow as tf

    def step(x, weights):
        with tf.GradientTape() as tape:
            tape.watch(x)
            out = layer(x, training=training, mask=mask)
            loss = tf.reduce_sum(tf.cast(out, "float32") * weights)
        grads = tape.gradient(loss, [x] + layer.trainable_variables)
        return [out] + [g for g in grads if g is not None]

    # A graph without XLA: where the compiled call matters.
    return tf.function(step, input_signature=signature)


@pytest.mark.parametrize("cls, kwargs", LAYERS)
@pytest.mark.parametrize(
    "case",
    ["plain", "masked", "unknown_batch", "mixed_float16", "mixed_bfloat16",
     "inference", "not_trainable"],
)
def test_compiled_call_equals_plain_ops(cls, kwargs, case):
    import tensorflow as tf

    shape = (10, 5, 4)
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=shape).astype("float32")
    weights = rng.normal(size=shape).astype("float32")
    mask = None
    if case == "masked":
        mask = tf.constant(np.arange(5) < 3)[None, :] & tf.ones(
            (10, 1), bool
        )
    dtype = case if case.startswith("mixed") else None
    layers = _layers(cls, kwargs, shape, dtype=dtype)
    if case == "not_trainable":
        for layer in layers:
            layer.trainable = False
    training = case != "inference"
    signature = None
    batches = [x]
    if case == "unknown_batch":
        signature = [tf.TensorSpec((None, 5, 4), tf.float32)] * 2
        batches = [x, x[:7]]  # a last partial batch
    results = []
    for layer in layers:
        step = _step(layer, training, mask, signature)
        values = []
        for batch in batches:
            values += step(batch, weights[: len(batch)])
        values += [layer.moving_mean, layer.moving_variance]
        results.append([to_numpy(v).astype("float32") for v in values])
    tolerance = 2e-2 if dtype else 2e-5
    assert len(results[0]) == len(results[1])
    for compiled, plain in zip(*results):
        np.testing.assert_allclose(
            compiled, plain, rtol=tolerance, atol=tolerance
        )
    moving = results[0][-2:]
    if training and case != "not_trainable":
        assert not np.allclose(moving[0], 0.0)  # the statistics moved
    else:
        np.testing.assert_array_equal(moving[0], np.zeros(4))


def _xla_functions(concrete):
    # Functions in a traced graph's library that XLA must compile.
    library = concrete.graph.as_graph_def().library.function
    return [
        f.signature.name for f in library
        if f.attr["_XlaMustCompile"].b
    ]


def _model(cls, kwargs, fused, jit_compile):
    inputs = keras.Input((6, 6, 8))
    hidden = keras.layers.Conv2D(8, 3, padding="same")(inputs)
    hidden = cls(fused=fused, **kwargs)(hidden)
    outputs = keras.layers.Dense(2)(
        keras.layers.GlobalAveragePooling2D()(hidden)
    )
    model = keras.Model(inputs, outputs)
    model.compile("sgd", "mse", jit_compile=jit_compile)
    return model


@pytest.mark.parametrize("cls, kwargs", LAYERS)
def test_model_without_xla_runs_the_layers_compiled_call(cls, kwargs):
    import tensorflow as tf

    rng = np.random.default_rng(1)
    x = rng.normal(size=(12, 6, 6, 8)).astype("float32")
    y = rng.normal(size=(12, 2)).astype("float32")
    found = {}
    for fused, jit_compile in ((None, False), (False, False), (None, True)):
        model = _model(cls, kwargs, fused, jit_compile)
        model.fit(x, y, batch_size=12, epochs=1, verbose=0)
        # The training step as Keras traces it (jit_compile decides XLA).
        step = tf.function(model.train_step, jit_compile=jit_compile)
        concrete = step.get_concrete_function((x, y))
        found[(fused, jit_compile)] = _xla_functions(concrete)
    # jit_compile=False: the layer's own XLA-compiled forward and backward.
    assert len(found[(None, False)]) >= 2, found
    # fused=False: plain ops; jit_compile=True: the whole step is XLA's,
    # the layer nests no compiled call of its own.
    assert found[(False, False)] == [], found
    assert found[(None, True)] == [], found


@pytest.mark.parametrize("cls, kwargs", LAYERS)
def test_fit_with_and_without_the_compiled_call(cls, kwargs):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(23, 6, 6, 8)).astype("float32")
    y = rng.normal(size=(23, 2)).astype("float32")
    weights = []
    for fused in (None, False):
        keras.utils.set_random_seed(0)
        model = _model(cls, kwargs, fused, jit_compile=False)
        # 23 samples in batches of 8: the last batch holds 7.
        model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_fused_round_trips_through_the_config():
    for fused in (None, True, False):
        layer = SequentialNormalization(fused=fused)
        config = layer.get_config()
        assert config["fused"] is fused
        assert SequentialNormalization.from_config(config).fused is fused
