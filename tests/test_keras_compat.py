"""Pins every private TensorFlow/Keras name of `keras_seqnorm._keras_compat`.

A release that moves or changes one of them fails here, naming it.
"""

import importlib

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
