"""The `"none"` norm: an identity that takes the core norm arguments."""

import keras


@keras.saving.register_keras_serializable(package="keras_seqnorm")
class IdentityNormalization(keras.layers.Identity):
    """No normalization: returns its inputs unchanged.

    The `"none"` norm, for baselines without normalization (the paper's
    SimpleNet baseline, Appendix B.1). It accepts the core norm arguments so
    builders create it like any other norm, and ignores them.

    Args:
        axis: Ignored. Defaults to `-1`.
        epsilon: Ignored. Defaults to `1e-3`.
        center: Ignored. Defaults to `True`.
        scale: Ignored. Defaults to `True`.
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Example:

    >>> IdentityNormalization(axis=-1)(keras.ops.ones((2, 3))).shape
    (2, 3)
    """

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True,
                 **kwargs):
        super().__init__(**kwargs)
        self.axis = axis
        self.epsilon = epsilon
        self.center = center
        self.scale = scale

    def get_config(self):
        return {
            **super().get_config(),
            "axis": self.axis,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
        }
