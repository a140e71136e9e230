"""GroupNormalization with a group count that fits the channels."""

import keras
from keras import ops

from keras_seqnorm import ops as norm_ops
from keras_seqnorm import validation


@keras.saving.register_keras_serializable(package="keras_seqnorm")
class FittedGroupNormalization(keras.layers.GroupNormalization):
    """GroupNormalization with as many groups as fit the channels.

    `keras.layers.GroupNormalization(groups=32)` fails on a 16-channel stage;
    this layer instead uses the largest divisor of the number of channels `C`
    that is at most `groups`: 32 groups on 64 channels, 16 on 16, 30 on 300.
    Each sample's channels are split into that many contiguous groups and
    `gamma * (x - mean_g) / sqrt(var_g + epsilon) + beta` is computed with
    the mean and biased variance of each group, over the group's channels
    and every non-batch axis. It has no moving statistics: training and
    inference are the same.

    Args:
        groups: Largest number of groups; `-1` means one group per channel
            (InstanceNorm). Defaults to `32`.
        axis: The channel axis. Defaults to `-1`.
        epsilon: Small float added to the variance. Defaults to `1e-3`.
        center: If `True`, add the offset `beta`. Defaults to `True`.
        scale: If `True`, multiply by `gamma`. Defaults to `True`.
        beta_initializer: Initializer for `beta`. Defaults to `"zeros"`.
        gamma_initializer: Initializer for `gamma`. Defaults to `"ones"`.
        beta_regularizer: Regularizer for `beta`. Defaults to `None`.
        gamma_regularizer: Regularizer for `gamma`. Defaults to `None`.
        beta_constraint: Constraint for `beta`. Defaults to `None`.
        gamma_constraint: Constraint for `gamma`. Defaults to `None`.
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Call arguments:
        inputs: Input tensor of rank >= 2, batch on axis 0.

    Reference:
        - [Wu and He, 2018](https://arxiv.org/abs/1803.08494), "Group
          Normalization".

    Example:

    >>> layer = FittedGroupNormalization(groups=32)
    >>> y = layer(keras.random.normal((2, 8, 8, 16)))
    >>> layer.fitted_groups
    16
    """

    def __init__(
        self,
        groups=32,
        axis=-1,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        if not validation.is_integer(groups) or not (
            groups == -1 or groups >= 1
        ):
            validation.fail("groups", "a positive integer or -1", groups)
        groups = int(groups)
        axis = validation.integer("axis", axis)
        epsilon = validation.number("epsilon", epsilon, 0.0, low_open=True)
        center = validation.boolean("center", center)
        scale = validation.boolean("scale", scale)
        super().__init__(
            groups=groups,
            axis=axis,
            epsilon=epsilon,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            **kwargs,
        )
        self._fitted_groups = None
        self._channel_axis = None

    @property
    def fitted_groups(self):
        """The number of groups used, known once the layer is built."""
        return self._fitted_groups

    def build(self, input_shape):
        channel_axis, channels = validation.channel_axis_and_size(
            type(self).__name__, self.axis, input_shape
        )
        limit = channels if self.groups == -1 else min(self.groups, channels)
        self._fitted_groups = max(
            g for g in range(1, limit + 1) if channels % g == 0
        )
        self._channel_axis = channel_axis
        shape = (channels,)
        self.gamma = None
        self.beta = None
        if self.scale:
            self.gamma = self.add_weight(
                shape=shape,
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=shape,
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                autocast=False,
            )
        self.input_spec = keras.layers.InputSpec(
            ndim=len(input_shape), axes={channel_axis: channels}
        )

    def call(self, inputs):
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = ops.cast(inputs, dtype)
        count, mean, variance = norm_ops.sample_channel_moments(
            inputs, self._channel_axis
        )
        _, mean, variance = norm_ops.channel_group_moments(
            count, mean, variance, self._fitted_groups
        )
        scale = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            scale = scale * ops.cast(self.gamma, dtype)
        beta = ops.cast(self.beta, dtype) if self.center else None
        outputs = norm_ops.apply_affine(
            inputs, mean, scale, beta, self._channel_axis
        )
        return ops.cast(outputs, self.compute_dtype)
