"""Pins every private TensorFlow/Keras name of `keras_seqnorm._keras_compat`.

A release that moves or changes one of them fails here, naming it.
"""

import importlib

import numpy as np
import pytest

from keras_seqnorm import _keras_compat


def _resolve(dotted):
    # The longest importable module prefix, then attributes.
    parts = dotted.split(".")
    for cut in range(len(parts) - 1, 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            target = getattr(target, name)
        return target
    raise ImportError(dotted)


@pytest.mark.parametrize("dotted", _keras_compat.PRIVATE_NAMES)
def test_private_name_exists(dotted):
    if dotted.startswith("tensorflow."):
        pytest.importorskip("tensorflow")
    assert callable(_resolve(dotted)), dotted


def test_in_xla_context_tells_xla_graphs_apart():
    tf = pytest.importorskip("tensorflow")
    seen = {}

    def probe(key):
        def fn(x):
            seen[key] = _keras_compat.in_xla_context()
            return x

        return fn

    tf.function(probe("xla"), jit_compile=True)(tf.constant(1.0))
    tf.function(probe("graph"))(tf.constant(1.0))
    # A plain function called from an XLA-compiled one is compiled too.
    inner = tf.function(probe("nested"))
    tf.function(lambda x: inner(x), jit_compile=True)(tf.constant(1.0))
    probe("eager")(1.0)
    assert seen == {
        "xla": True, "graph": False, "nested": True, "eager": False
    }


@pytest.mark.parametrize("variadic", [True, False])
def test_xla_sums_equal_one_reduction_per_tensor(variadic, monkeypatch):
    # Without the op (a TensorFlow that moved it) the same sums, one
    # reduction each, rather than an ImportError inside a user's model.
    tf = pytest.importorskip("tensorflow")
    if not variadic:
        monkeypatch.setattr(_keras_compat, "_variadic_reduce", lambda: None)
    rng = np.random.default_rng(0)
    a = tf.constant(rng.normal(size=(3, 40, 5, 6)).astype("float32"))
    b = tf.square(a) + 1e4

    @tf.function(jit_compile=True)
    def sums(a, b):
        return _keras_compat.xla_sums((a, b, a * b), (1, 2))

    found = sums(a, b)
    assert len(found) == 3
    for got, t in zip(found, (a, b, a * b)):
        expected = np.sum(t.numpy().astype("float64"), axis=(1, 2))
        assert got.shape == (3, 6)
        np.testing.assert_allclose(got.numpy(), expected, rtol=1e-5)
