"""Issue 10, item 7: argument checks and inputs far beyond float32's range of
squares, for GhostNormalization and SequentialNormalization alike."""

import keras
import numpy as np
import pytest

from keras_seqnorm.layers import GhostNormalization
from keras_seqnorm.layers import SequentialNormalization
from tests.helpers import input_gradient
from tests.helpers import to_numpy

BACKEND = keras.backend.backend()
LAYERS = [
    pytest.param(GhostNormalization, {}, id="ghost"),
    pytest.param(SequentialNormalization, {"groups_c": 2}, id="sequential"),
]


@pytest.mark.parametrize("cls, kwargs", LAYERS)
@pytest.mark.parametrize(
    "bad, match",
    [
        ({"momentum": "0.9"}, r"`momentum` must be a finite number in "
                              r"\[0, 1\]\. Received: momentum='0.9'$"),
        ({"momentum": float("nan")}, r"Received: momentum=nan$"),
        ({"momentum": None}, r"Received: momentum=None$"),
        ({"epsilon": None}, r"`epsilon` must be a finite number > 0\. "
                            r"Received: epsilon=None$"),
        ({"epsilon": float("inf")}, r"Received: epsilon=inf$"),
        ({"epsilon": "1e-3"}, r"Received: epsilon='1e-3'$"),
        ({"groups_m": "4"}, r"Received: groups_m='4'$"),
        ({"groups_m": np.float64(4.0)}, r"Received: groups_m=4\.0$"),
        ({"ghost_batch_size": 2.0}, r"Received: ghost_batch_size=2\.0$"),
        ({"axis": 1.0}, r"`axis` must be an integer\. Received: axis=1\.0$"),
        ({"center": "yes"}, r"`center` must be True or False\. "
                            r"Received: center='yes'$"),
        ({"scale": 1}, r"Received: scale=1$"),
        ({"fused": "auto"}, r"`fused` must be True or False or None\. "
                            r"Received: fused='auto'$"),
    ],
)
def test_every_wrong_argument_is_a_value_error_naming_it(cls, kwargs, bad,
                                                         match):
    with pytest.raises(ValueError, match=match):
        cls(**kwargs, **bad)


def test_groups_c_wrong_types():
    for value, shown in (("4", "'4'"), (4.0, "4.0"), (True, "True")):
        with pytest.raises(ValueError, match=f"Received: groups_c={shown}$"):
            SequentialNormalization(groups_c=value)


@pytest.mark.parametrize("cls, kwargs", LAYERS)
def test_numpy_scalars_are_accepted(cls, kwargs):
    numpy_kwargs = {
        key: np.int64(value) for key, value in kwargs.items()
    }
    layer = cls(
        groups_m=np.int64(4), axis=np.int32(-1), momentum=np.float32(0.5),
        epsilon=np.float64(1e-3), center=np.bool_(True), **numpy_kwargs,
    )
    plain = cls(groups_m=4, axis=-1, momentum=0.5, epsilon=1e-3, **kwargs)
    config = layer.get_config()
    # Stored as the plain Python values they equal: the config is JSON.
    for key in ("groups_m", "axis", "momentum", "epsilon", "center"):
        assert type(config[key]) in (int, float, bool), key
    assert config["groups_m"] == 4 and config["momentum"] == 0.5
    x = np.random.default_rng(0).normal(size=(8, 3, 4)).astype("float32")
    np.testing.assert_allclose(
        to_numpy(layer(x, training=True)), to_numpy(plain(x, training=True)),
        rtol=1e-6, atol=1e-6,
    )


def _compiled_call(layer, x, mask=None):
    # One training call inside an XLA-compiled function.
    if BACKEND == "tensorflow":
        import tensorflow as tf

        return tf.function(
            lambda x: layer(x, training=True, mask=mask), jit_compile=True
        )(x)
    import jax

    def step(trainable, non_trainable, x):
        return layer.stateless_call(
            trainable, non_trainable, x, training=True, mask=mask
        )

    outputs, non_trainable = jax.jit(step)(
        [v.value for v in layer.trainable_variables],
        [v.value for v in layer.non_trainable_variables],
        x,
    )
    for variable, value in zip(layer.non_trainable_variables, non_trainable):
        variable.assign(value)
    return outputs


def _modes():
    # "compiled": inside an XLA-compiled function (TensorFlow and JAX).
    modes = ["eager"]
    if BACKEND in ("tensorflow", "jax"):
        modes.append("compiled")
    if BACKEND == "tensorflow":
        modes.append("eager_plain")  # fused=False: TensorFlow ops one by one
    return modes


@pytest.mark.parametrize("cls, kwargs", LAYERS)
@pytest.mark.parametrize("mode", _modes())
@pytest.mark.parametrize("scale", [3e19, 1e30])
@pytest.mark.parametrize("masked", [False, True])
def test_huge_inputs_stay_finite_like_batch_normalization(cls, kwargs, mode,
                                                          scale, masked):
    # Above about 2e19 the squares overflow float32: BatchNormalization's
    # variance is inf and its outputs are beta. Ours were NaN (inf - inf),
    # and the NaN stuck in moving_variance.
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(8, 5, 4)) * scale).astype("float32")
    mask = None
    if masked:
        mask = np.ones((8, 5), bool)
        mask[:, 3:] = False
    fused = False if mode == "eager_plain" else None
    layer = cls(groups_m=1, momentum=0.5, fused=fused, **kwargs)
    batch = keras.layers.BatchNormalization(momentum=0.5)
    for norm in (layer, batch):
        norm.build(x.shape)
        norm.beta.assign(np.linspace(-1.0, 1.0, 4))
    if mode == "compiled":
        out = to_numpy(_compiled_call(layer, x, mask))
    else:
        out = to_numpy(layer(x, training=True, mask=mask))
    expected = to_numpy(batch(x, training=True, mask=mask))
    keep = np.ones(x.shape[:-1], bool) if mask is None else mask
    # The variance overflows to inf: BatchNormalization gives beta. (On
    # torch, Keras' own moments give NaN here: E[x^2] - E[x]^2.)
    beta = np.broadcast_to(np.linspace(-1.0, 1.0, 4), x.shape)
    reference = BACKEND != "torch"
    assert np.all(np.isfinite(out))
    if cls is GhostNormalization:
        np.testing.assert_allclose(out[keep], beta[keep], atol=1e-6)
        if reference:
            np.testing.assert_allclose(out[keep], expected[keep], atol=1e-6)
    for name in ("moving_mean", "moving_variance"):
        value = to_numpy(getattr(layer, name))
        assert not np.any(np.isnan(value)), (name, value)
        if cls is GhostNormalization:
            # One ghost batch is BatchNormalization, statistics included
            # (its moving variance overflows to inf too).
            if reference:
                np.testing.assert_allclose(
                    value, to_numpy(getattr(batch, name)), rtol=1e-5
                )
        else:
            # The GroupNorm stage gives zeros: finite ghost statistics.
            assert np.all(np.isfinite(value)), (name, value)
    weights = rng.normal(size=x.shape).astype("float32")
    grad = input_gradient(
        lambda v: keras.ops.multiply(
            layer(v, training=True, mask=mask), weights
        ),
        x,
    )
    assert np.all(np.isfinite(grad))
