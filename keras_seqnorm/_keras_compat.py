"""Every private TensorFlow or Keras name that keras-seqnorm uses, in one place.

Nothing else in the package imports `keras.src`, a private TensorFlow
module, or calls an underscored method of a Keras or TensorFlow object.
`tests/test_keras_compat.py` pins each name in `PRIVATE_NAMES` against the
installed versions, so a release that moves one fails that test, not a
user. Add a name here (and to `PRIVATE_NAMES`) rather than importing it
elsewhere.

TensorFlow names (imported lazily: this module loads on every backend):
- `tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext`:
  whether the graph being built will be compiled by XLA (a `tf.function`
  with `jit_compile=True`, or a function called from one). TensorFlow has
  no public way to ask.
"""

PRIVATE_NAMES = (
    "tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext",
)


def in_xla_context():
    """Whether TensorFlow is tracing a graph that XLA will compile.

    `False` when eager, or in a `tf.function` without `jit_compile=True`
    (TensorFlow runs its ops one by one there).
    """
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util

    if tf.executing_eagerly():
        return False
    graph = tf.compat.v1.get_default_graph()
    return bool(control_flow_util.GraphOrParentsInXlaContext(graph))
