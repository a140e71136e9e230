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
- `tensorflow.compiler.tf2xla.python.xla.variadic_reduce`: XLA's variadic
  reduce (`XlaVariadicReduceV2`), several sums over the same axes in one
  reduction. TensorFlow's public reductions take one tensor each.
"""

import functools

PRIVATE_NAMES = (
    "tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext",
    "tensorflow.compiler.tf2xla.python.xla.variadic_reduce",
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


@functools.lru_cache(maxsize=None)
def _sum_reducer(count, dtype):
    # The reducer of `count` running sums: (a_1..a_n, b_1..b_n) -> a + b.
    import tensorflow as tf

    def add(*args):
        return tuple(a + b for a, b in zip(args[:count], args[count:]))

    scalar = tf.TensorSpec((), dtype)
    return tf.function(add).get_concrete_function(*[scalar] * (2 * count))


def xla_sums(tensors, axes):
    """The sums of same-shaped tensors over `axes`, as one XLA reduction.

    Only in a computation that XLA compiles (the op has no TensorFlow
    kernel of its own), and without a gradient: TensorFlow has none for
    it. Unlike one reduction per tensor, XLA computes them in one loop
    over the inputs (fused with the tensors' producers), and its CPU
    compiler does not split it into a reduce-window and a reduce.
    """
    import tensorflow as tf

    reduce = _variadic_reduce()
    if reduce is None:
        # A TensorFlow that moved the op: the same sums, one reduction each.
        return tuple(tf.reduce_sum(t, axis=list(axes)) for t in tensors)
    tensors = list(tensors)
    dtype = tensors[0].dtype
    zeros = [tf.zeros((), dtype)] * len(tensors)
    return tuple(reduce(
        tensors, zeros, dimensions_to_reduce=list(axes),
        reducer=_sum_reducer(len(tensors), dtype),
    ))


def _variadic_reduce():
    # XLA's variadic reduce, or None where this TensorFlow has no such op.
    try:
        from tensorflow.compiler.tf2xla.python import xla
    except ImportError:
        return None
    return getattr(xla, "variadic_reduce", None)
