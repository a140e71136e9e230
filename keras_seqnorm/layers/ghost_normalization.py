"""Ghost Normalization: BatchNorm over contiguous ghost batches."""

import keras
from keras import constraints
from keras import initializers
from keras import ops
from keras import regularizers

from keras_seqnorm import _keras_compat
from keras_seqnorm import ops as norm_ops
from keras_seqnorm import validation

# Backends with an XLA-compiled path: on TensorFlow the layer's own
# compiled call, on JAX the jit-compiled step that Keras builds.
_XLA_BACKENDS = ("tensorflow", "jax")


def _compile(function):
    """`function` as a `tf.function(jit_compile=True)`.

    Forward and backward both run compiled (TensorFlow compiles the backward
    function of a jit-compiled function too); new input shapes retrace with
    the batch size relaxed to unknown.
    """
    import tensorflow as tf

    return tf.function(
        function, jit_compile=True, reduce_retracing=True, autograph=False
    )


@keras.saving.register_keras_serializable(package="keras_seqnorm")
class GhostNormalization(keras.layers.Layer):
    """Ghost Normalization: BatchNorm within contiguous ghost batches.

    The batch of `M` samples is split into `G_M` contiguous ghost batches
    (the paper's Figure A1, `X.reshape(groupsM, -1, C, F)`), and each ghost
    batch is normalized with its own statistics, per channel:
    `gamma * (x - mean_g) / sqrt(var_g + epsilon) + beta`, where `mean_g` and
    `var_g` (biased) run over the ghost batch's samples and every axis but
    the channel axis. With `groups_m=1` this is `BatchNormalization`.

    When `M` is not a multiple of `G_M` the ghost batches follow
    `numpy.array_split`: the first `M % G_M` hold one sample more. When
    `M < G_M` there are `M` ghost batches of one sample. Any batch size
    works, so the last partial batch of an epoch trains too.

    **During training** (`training=True` and `layer.trainable`), the layer
    normalizes with the ghost batch statistics and updates, once per call,
    `moving_mean = moving_mean * momentum + mean * (1 - momentum)` (and the
    same for `moving_variance`), where `mean` and `var` are the
    size-weighted averages of the ghost batches' means and biased
    variances.

    **During inference** (`training=False` or `layer.trainable = False`),
    the layer normalizes with `moving_mean` and `moving_variance`, like
    `BatchNormalization`.

    What `groups_m` counts depends on the batch the layer sees. Under a
    `tf.distribute` strategy the layer sees each replica's share of the
    batch, so `groups_m` counts ghost batches per replica: `groups_m=G` on
    `n` replicas is `groups_m=n*G` on one device. Under JAX's
    `keras.distribution.DataParallel` the layer sees the global batch
    (sharded over the devices), so `groups_m` counts the ghost batches of
    the global batch: `groups_m=n*G` on `n` devices forms the same ghost
    batches as `groups_m=G` per replica under `MirroredStrategy`, and when
    `n` divides `groups_m` (and each device's share splits evenly) every
    ghost batch lies on one device. `ghost_batch_size` means the same under
    both. The moving statistics are averaged across replicas at each
    update, so every replica holds the same values.

    **Speed.** The layer reads the input twice and writes it once, like
    `BatchNormalization`, with one custom gradient for the whole layer.
    On TensorFlow, outside an XLA-compiled function (eager, or a model
    compiled with `jit_compile=False`), it runs as its own XLA-compiled
    function, forward and backward (`fused=None`); inside one it is part
    of the enclosing computation. On JAX the step Keras compiles holds it.

    Args:
        groups_m: Number of ghost batches G_M of the batch the layer sees
            (see above). Defaults to `None`: 4 unless `ghost_batch_size` is
            given.
        ghost_batch_size: Samples per ghost batch; then
            `G_M = ceil(M / ghost_batch_size)`. Give at most one of
            `groups_m` and `ghost_batch_size`. Defaults to `None`.
        axis: The channel axis. Defaults to `-1`.
        momentum: Momentum of the moving statistics. Defaults to `0.99`.
        epsilon: Small float added to the variance. Defaults to `1e-3`.
        center: If `True`, add the offset `beta`. Defaults to `True`.
        scale: If `True`, multiply by `gamma`. Defaults to `True`.
        beta_initializer: Initializer for `beta`. Defaults to `"zeros"`.
        gamma_initializer: Initializer for `gamma`. Defaults to `"ones"`.
        moving_mean_initializer: Initializer for `moving_mean`. Defaults to
            `"zeros"`.
        moving_variance_initializer: Initializer for `moving_variance`.
            Defaults to `"ones"`.
        beta_regularizer: Regularizer for `beta`. Defaults to `None`.
        gamma_regularizer: Regularizer for `gamma`. Defaults to `None`.
        beta_constraint: Constraint for `beta`. Defaults to `None`.
        gamma_constraint: Constraint for `gamma`. Defaults to `None`.
        fused: Whether the layer runs as its own XLA-compiled function when
            it is not inside one, as tf.keras' `fused` did: `None` where
            supported (TensorFlow), `True` to require an XLA backend
            (TensorFlow or JAX; a `ValueError` on others), `False` for plain
            backend ops. The results are the same. Defaults to `None`.
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Call arguments:
        inputs: Input tensor of rank >= 2, batch on axis 0.
        training: Python boolean: normalize with ghost batch statistics
            (`True`) or the moving statistics (`False`).
        mask: Optional boolean tensor with one dimension less than the input
            (the input's shape without its last axis, or broadcastable to
            it), as made by `keras.layers.Masking`. Masked positions count in
            no statistic; a ghost batch without any unmasked value outputs
            `beta`.

    Reference:
        - [Dimitriou and Arandjelovic, 2022](https://arxiv.org/abs/2007.01577),
          "Sequential Normalization: Embracing Smaller Sample Sizes for
          Normalization".

    Example:

    >>> x = keras.random.normal((32, 8, 8, 16))
    >>> layer = GhostNormalization(groups_m=4)
    >>> y = layer(x, training=True)
    >>> tuple(y.shape)
    (32, 8, 8, 16)
    """

    _default_groups_m = 4

    def __init__(
        self,
        groups_m=None,
        ghost_batch_size=None,
        axis=-1,
        momentum=0.99,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        moving_mean_initializer="zeros",
        moving_variance_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        fused=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        groups_m = validation.positive_int(
            "groups_m", groups_m, allow_none=True
        )
        ghost_batch_size = validation.positive_int(
            "ghost_batch_size", ghost_batch_size, allow_none=True
        )
        validation.at_most_one(
            groups_m=groups_m, ghost_batch_size=ghost_batch_size
        )
        axis = validation.integer("axis", axis)
        momentum = validation.number("momentum", momentum, 0.0, 1.0)
        epsilon = validation.number("epsilon", epsilon, 0.0, low_open=True)
        center = validation.boolean("center", center)
        scale = validation.boolean("scale", scale)
        fused = validation.boolean("fused", fused, allow_none=True)
        if fused and keras.backend.backend() not in _XLA_BACKENDS:
            raise ValueError(
                "Argument `fused=True` needs the TensorFlow or JAX backend "
                "(an XLA-compiled call); use None or False on "
                f"{keras.backend.backend()}. Received: fused={fused}"
            )
        self.groups_m = groups_m
        self.ghost_batch_size = ghost_batch_size
        self.axis = axis
        self.momentum = momentum
        self.epsilon = epsilon
        self.center = center
        self.scale = scale
        self.beta_initializer = initializers.get(beta_initializer)
        self.gamma_initializer = initializers.get(gamma_initializer)
        self.moving_mean_initializer = initializers.get(moving_mean_initializer)
        self.moving_variance_initializer = initializers.get(
            moving_variance_initializer
        )
        self.beta_regularizer = regularizers.get(beta_regularizer)
        self.gamma_regularizer = regularizers.get(gamma_regularizer)
        self.beta_constraint = constraints.get(beta_constraint)
        self.gamma_constraint = constraints.get(gamma_constraint)
        self.fused = fused
        self.supports_masking = True
        # Inputs above float16's range must reach `call` uncast.
        self.autocast = False
        if groups_m is None and ghost_batch_size is None:
            self._groups_m = self._default_groups_m
        else:
            self._groups_m = groups_m
        self._channel_axis = None
        self._compiled_normalize = None
        self.gamma = None
        self.beta = None
        self.moving_mean = None
        self.moving_variance = None

    def build(self, input_shape):
        channel_axis, channels = validation.channel_axis_and_size(
            type(self).__name__, self.axis, input_shape
        )
        self._channel_axis = channel_axis
        shape = (channels,)
        if self.scale:
            self.gamma = self.add_weight(
                shape=shape,
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                trainable=True,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=shape,
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                trainable=True,
                autocast=False,
            )
        self.moving_mean = self.add_weight(
            shape=shape,
            name="moving_mean",
            initializer=self.moving_mean_initializer,
            trainable=False,
            autocast=False,
            aggregation="mean",
        )
        self.moving_variance = self.add_weight(
            shape=shape,
            name="moving_variance",
            initializer=self.moving_variance_initializer,
            trainable=False,
            autocast=False,
            aggregation="mean",
        )
        self.input_spec = keras.layers.InputSpec(
            ndim=len(input_shape), axes={channel_axis: channels}
        )

    def compute_output_shape(self, input_shape):
        return input_shape

    def _groups_c(self):
        return None

    def call(self, inputs, training=None, mask=None):
        if mask is not None and len(mask.shape) != len(inputs.shape) - 1:
            raise ValueError(
                "The mask must have one dimension less than the inputs. "
                f"Received: mask.shape={mask.shape}, "
                f"inputs.shape={inputs.shape}"
            )
        # Statistics in float32 whatever the input dtype.
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        gamma = ops.cast(self.gamma, dtype) if self.scale else None
        beta = ops.cast(self.beta, dtype) if self.center else None
        training = bool(training) and self.trainable
        normalize = self._normalize
        if self._compiled_path():
            if self._compiled_normalize is None:
                self._compiled_normalize = _compile(self._normalize)
            normalize = self._compiled_normalize
        outputs, moving_mean, moving_variance = normalize(
            inputs,
            gamma,
            beta,
            ops.cast(self.moving_mean, dtype),
            ops.cast(self.moving_variance, dtype),
            mask,
            training=training,
        )
        if training:
            for variable, value in (
                (self.moving_mean, moving_mean),
                (self.moving_variance, moving_variance),
            ):
                variable.assign(ops.cast(value, variable.dtype))
        return outputs

    def _compiled_path(self):
        # The layer's own XLA-compiled call (TensorFlow), unless
        # `fused=False` or the call is already inside an XLA cluster.
        return (
            self.fused is not False
            and keras.backend.backend() == "tensorflow"
            and not _keras_compat.in_xla_context()
        )

    def _normalize(self, inputs, gamma, beta, moving_mean, moving_variance,
                   mask, training):
        # The whole layer as a pure function: the outputs and, in
        # training, the updated moving statistics. The casts happen inside,
        # so a compiled call fuses them into its passes over the input.
        result = norm_ops.sequential_normalization(
            inputs,
            gamma,
            beta,
            channel_axis=self._channel_axis,
            groups_c=self._groups_c(),
            groups_m=self._groups_m,
            ghost_batch_size=self.ghost_batch_size,
            epsilon=self.epsilon,
            training=training,
            moving_mean=moving_mean,
            moving_variance=moving_variance,
            momentum=self.momentum if training else None,
            mask=mask,
            compute_dtype=keras.backend.result_type(inputs.dtype, "float32"),
        )
        outputs = ops.cast(result.outputs, self.compute_dtype)
        return outputs, result.moving_mean, result.moving_variance

    def get_config(self):
        config = {
            "groups_m": self.groups_m,
            "ghost_batch_size": self.ghost_batch_size,
            "axis": self.axis,
            "momentum": self.momentum,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
            "beta_initializer": initializers.serialize(self.beta_initializer),
            "gamma_initializer": initializers.serialize(self.gamma_initializer),
            "moving_mean_initializer": initializers.serialize(
                self.moving_mean_initializer
            ),
            "moving_variance_initializer": initializers.serialize(
                self.moving_variance_initializer
            ),
            "beta_regularizer": regularizers.serialize(self.beta_regularizer),
            "gamma_regularizer": regularizers.serialize(self.gamma_regularizer),
            "beta_constraint": constraints.serialize(self.beta_constraint),
            "gamma_constraint": constraints.serialize(self.gamma_constraint),
            "fused": self.fused,
        }
        return {**super().get_config(), **config}
