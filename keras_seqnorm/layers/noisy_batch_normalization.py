"""Noisy BatchNorm: Gaussian noise on the inputs of BatchNormalization."""

import keras
from keras import ops

from keras_seqnorm import validation


@keras.saving.register_keras_serializable(package="keras_seqnorm")
class NoisyBatchNormalization(keras.layers.BatchNormalization):
    """BatchNormalization of inputs perturbed by zero-mean Gaussian noise.

    The ablation of the paper's Section 3.2.1: "a noisy version of BatchNorm,
    wherein we inject Gaussian noise on the activations just before
    normalization", to test whether GhostNorm and SeqNorm act as mere
    unstructured noise. The layer computes
    `BatchNormalization(x + n)` with `n ~ N(0, stddev^2)` drawn elementwise
    in float32, whatever the input dtype.

    **During training** (`training=True` and `layer.trainable`), the noise is
    added, and the batch statistics and moving statistics are those of the
    noisy inputs.

    **During inference** (`training=False` or `layer.trainable = False`), no
    noise is added: the layer is `BatchNormalization` with its moving
    statistics.

    Args:
        stddev: Standard deviation of the noise, a float >= 0; the paper's
            best value on CIFAR-100 (Appendix C). Defaults to `3e-4`.
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
        seed: Integer seed of the noise. Defaults to `None`.
        **kwargs: Other `BatchNormalization` arguments and base layer
            keyword arguments (e.g. `name`, `dtype`).

    Call arguments:
        inputs: Input tensor of any rank.
        training: Python boolean: add noise and use the batch statistics
            (`True`), or use the moving statistics without noise (`False`).
        mask: Optional mask, as for `BatchNormalization`.

    Reference:
        - [Dimitriou and Arandjelovic, 2022](https://arxiv.org/abs/2007.01577),
          "Sequential Normalization: Embracing Smaller Sample Sizes for
          Normalization".

    Example:

    >>> x = keras.random.normal((32, 8, 8, 16))
    >>> layer = NoisyBatchNormalization(stddev=3e-4, seed=1)
    >>> y = layer(x, training=True)
    >>> tuple(y.shape)
    (32, 8, 8, 16)
    """

    def __init__(
        self,
        stddev=3e-4,
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
        seed=None,
        **kwargs,
    ):
        stddev = validation.number("stddev", stddev, 0.0)
        super().__init__(
            axis=axis,
            momentum=momentum,
            epsilon=epsilon,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            moving_mean_initializer=moving_mean_initializer,
            moving_variance_initializer=moving_variance_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            **kwargs,
        )
        self.stddev = stddev
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None, mask=None):
        if training and self.trainable and self.stddev > 0:
            # Noise of std 3e-4 vanishes in float16: add it in float32.
            dtype = keras.backend.result_type(inputs.dtype, "float32")
            inputs = ops.cast(inputs, dtype)
            inputs = inputs + keras.random.normal(
                ops.shape(inputs),
                stddev=self.stddev,
                dtype=dtype,
                seed=self.seed_generator,
            )
        return super().call(inputs, training=training, mask=mask)

    def get_config(self):
        return {
            **super().get_config(),
            "stddev": self.stddev,
            "seed": self.seed,
        }
