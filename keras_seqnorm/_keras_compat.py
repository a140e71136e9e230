"""Every private TensorFlow or Keras name that keras-seqnorm uses, in one place.

Nothing else in the package imports `keras.src`, a private TensorFlow
module, or calls an underscored method of a Keras or TensorFlow object.
`tests/test_keras_compat.py` pins each name below against the installed
versions, so a release that moves one fails that test, not a user.

TensorFlow names (imported lazily: this module loads on every backend):
- `tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext`:
  whether the graph being built is compiled by XLA (a `tf.function` with
  `jit_compile=True`, or a function called from one). TensorFlow has no
  public way to ask.
- `tensorflow.compiler.tf2xla.python.xla.optimization_barrier`: XLA's
  `opt-barrier`, which no fusion crosses (public in JAX as
  `jax.lax.optimization_barrier`).
"""

PRIVATE_NAMES = (
    "tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext",
    "tensorflow.compiler.tf2xla.python.xla.optimization_barrier",
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


def xla_optimization_barrier(tensors):
    """XLA's optimization barrier over a tuple of TensorFlow tensors.

    Valid only where `in_xla_context()`: the op has no kernel outside XLA.
    It has no registered gradient either: use it inside custom gradients.
    """
    from tensorflow.compiler.tf2xla.python import xla

    return tuple(xla.optimization_barrier(*tensors))
