"""Sequential Normalization: GroupNorm, then GhostNorm, then one affine."""

import keras

from keras_seqnorm import validation
from keras_seqnorm.layers.ghost_normalization import GhostNormalization


@keras.saving.register_keras_serializable(package="keras_seqnorm")
class SequentialNormalization(GhostNormalization):
    """Sequential Normalization (SeqNorm): GroupNorm, then GhostNorm.

    Each sample's channels are split into `groups_c` contiguous groups and
    normalized per group, as `GroupNormalization` without affine:
    `y = (x - mu_gc) / sqrt(var_gc + epsilon)`, over the group's channels
    and every non-batch axis. Then `y` is normalized per channel within
    each of `G_M` contiguous ghost batches, as `GhostNormalization`, and one
    affine follows: `gamma * (y - mean_g) / sqrt(var_g + epsilon) + beta`.

    The layer never materializes `y`: the statistics of both stages come from
    one reduction over the input (per sample and channel), so it reads the
    input twice and writes it once, like `BatchNormalization`.

    **During training** (`training=True` and `layer.trainable`), both stages
    use the current batch; `moving_mean` and `moving_variance` track the
    size-weighted averages of the ghost batches' means and biased variances
    of `y`, with `momentum`, as in `GhostNormalization`.

    **During inference** (`training=False` or `layer.trainable = False`),
    the GroupNorm stage still uses each sample's own statistics (it has no
    moving statistics); the ghost stage uses `moving_mean` and
    `moving_variance`.

    `groups_m` counts ghost batches of the batch the layer sees: per replica
    under a `tf.distribute` strategy, of the global batch under JAX's
    `keras.distribution.DataParallel` (see `GhostNormalization`).

    Args:
        groups_c: Number of channel groups G_C for the GroupNorm stage; must
            divide the number of channels. Defaults to `4`.
        groups_m: Number of ghost batches G_M of the batch the layer sees:
            per replica under `tf.distribute`, of the global batch under
            `keras.distribution.DataParallel` on JAX (see
            `GhostNormalization`). Defaults to `None`: 8 unless
            `ghost_batch_size` is given.
        ghost_batch_size: Samples per ghost batch; then
            `G_M = ceil(M / ghost_batch_size)`. Give at most one of
            `groups_m` and `ghost_batch_size`. Defaults to `None`.
        axis: The channel axis. Defaults to `-1`.
        **kwargs: `momentum`, `epsilon`, `center`, `scale`, the initializers,
            regularizers and constraints, and `fused` of
            `GhostNormalization` (same defaults), and base layer keyword
            arguments.

    Call arguments:
        inputs: Input tensor of rank >= 2, batch on axis 0.
        training: Python boolean: normalize the ghost stage with ghost batch
            statistics (`True`) or the moving statistics (`False`).
        mask: Optional boolean mask with one dimension less than the input,
            as for `GhostNormalization`.

    Reference:
        - [Dimitriou and Arandjelovic, 2022](https://arxiv.org/abs/2007.01577),
          "Sequential Normalization: Embracing Smaller Sample Sizes for
          Normalization".

    Example:

    >>> x = keras.random.normal((64, 8, 8, 32))
    >>> layer = SequentialNormalization(groups_c=4, groups_m=8)
    >>> y = layer(x, training=True)
    >>> tuple(y.shape)
    (64, 8, 8, 32)
    """

    _default_groups_m = 8

    def __init__(
        self,
        groups_c=4,
        groups_m=None,
        ghost_batch_size=None,
        axis=-1,
        **kwargs,
    ):
        groups_c = validation.positive_int("groups_c", groups_c)
        super().__init__(
            groups_m=groups_m,
            ghost_batch_size=ghost_batch_size,
            axis=axis,
            **kwargs,
        )
        self.groups_c = groups_c

    def build(self, input_shape):
        _, channels = validation.channel_axis_and_size(
            type(self).__name__, self.axis, input_shape
        )
        if channels % self.groups_c:
            raise ValueError(
                "Argument `groups_c` must divide the number of channels "
                f"({channels}). Received: groups_c={self.groups_c}"
            )
        super().build(input_shape)

    def _groups_c(self):
        return self.groups_c

    def get_config(self):
        return {"groups_c": self.groups_c, **super().get_config()}
