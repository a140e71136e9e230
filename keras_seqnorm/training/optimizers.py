"""The optimizer of the recipes: SGD with coupled (L2) weight decay.

Keras optimizers' `weight_decay` is decoupled (`w -= lr * wd * w`, as in
AdamW). The paper's recipes use PyTorch's `SGD(weight_decay=wd)` and the
TensorFlow RandAugment code's L2 loss, where `wd * w` is added to the
gradient and so passes through the momentum: with momentum 0.9 the two
differ tenfold in effect. `L2SGD` implements the coupled form.
"""

import keras
from keras import ops

from keras_seqnorm import validation
from keras_seqnorm.training.schedules import build_schedule


@keras.saving.register_keras_serializable(package="keras_seqnorm")
class L2SGD(keras.optimizers.SGD):
    """SGD (with optional Nesterov momentum) and L2 weight decay.

    Each update uses the gradient `g + l2 * w` in place of `g`, for every
    trainable variable or, with `kernels_only=True`, only the variables of
    rank >= 2 (convolution and dense kernels, not biases nor the norm
    layers' `gamma`/`beta`). The decay is applied after gradient clipping,
    as in PyTorch.

    Args:
        learning_rate: Float or `LearningRateSchedule`. Defaults to `0.01`.
        momentum: Momentum in `[0, 1)`. Defaults to `0.0`.
        nesterov: Whether to use Nesterov momentum. Defaults to `False`.
        l2: The L2 coefficient. Defaults to `0.0`.
        kernels_only: Decay only variables of rank >= 2. Defaults to
            `False`.
        **kwargs: Base optimizer arguments (`global_clipnorm`,
            `gradient_accumulation_steps`, `name`, ...); not
            `weight_decay`.

    Example:

    >>> optimizer = L2SGD(0.1, momentum=0.9, nesterov=True, l2=5e-4)
    """

    def __init__(self, learning_rate=0.01, momentum=0.0, nesterov=False,
                 l2=0.0, kernels_only=False, **kwargs):
        if kwargs.get("weight_decay"):
            raise ValueError(
                "L2SGD takes its weight decay as `l2`; `weight_decay` "
                f"(decoupled) is not supported. Received: "
                f"weight_decay={kwargs['weight_decay']}"
            )
        validation.number("l2", l2, low=0.0)
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=nesterov,
            **kwargs,
        )
        self.l2 = l2
        self.kernels_only = kernels_only

    def _decays(self, variable):
        return self.l2 > 0 and (
            not self.kernels_only or len(variable.shape) >= 2
        )

    def update_step(self, gradient, variable, learning_rate):
        if self._decays(variable):
            gradient = ops.add(
                gradient, ops.multiply(ops.cast(self.l2, variable.dtype),
                                       variable)
            )
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {
            **super().get_config(),
            "l2": self.l2,
            "kernels_only": self.kernels_only,
        }


def build_optimizer(config, steps_per_epoch, num_replicas=1):
    """The `L2SGD` of `config`.

    `config.clip_norm` bounds the global norm of the mean gradient. Keras
    clips on each replica before the gradients are summed, and each
    replica holds `1 / num_replicas` of the mean, so the threshold passed
    to Keras is `clip_norm / num_replicas`: every replica's own mean
    gradient is clipped at `clip_norm` (on one device, exactly the global
    norm of the gradient).

    Args:
        config: A `Config`.
        steps_per_epoch: Training batches per epoch.
        num_replicas: Replicas in sync of the strategy. Defaults to `1`.

    Returns:
        An `L2SGD`.
    """
    clip = None
    if config.clip_norm is not None:
        clip = config.clip_norm / num_replicas
    return L2SGD(
        learning_rate=build_schedule(config, steps_per_epoch),
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        l2=config.weight_decay,
        kernels_only=config.weight_decay_on == "kernels",
        global_clipnorm=clip,
        gradient_accumulation_steps=(
            config.grad_accum if config.grad_accum > 1 else None
        ),
    )
