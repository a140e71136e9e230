"""Learning-rate schedules of the paper's recipes, as serializable Keras
`LearningRateSchedule`s over optimizer steps (batches).

- `WarmupCosine`: linear warmup from `warmup_start * learning_rate` to
  `learning_rate`, then half a cosine down to 0 (Appendix C: "increases the
  initial learning rate by four times in 5 epochs; thereafter, we use the
  cosine learning schedule").
- `PiecewiseLinear`: straight lines through `(step, rate)` knots, constant
  after the last (Appendix B.1's one cycle: 0.1 -> 3.0 in 15 epochs, -> 0.1
  in the next 15, -> 0.003 over the last 10).

`build_schedule(config, steps_per_epoch)` turns a `Config` into one of
these, or a float for the constant schedule.
"""

import math

import keras
from keras import ops

from keras_seqnorm import validation


@keras.saving.register_keras_serializable(package="keras_seqnorm")
class WarmupCosine(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup, then cosine decay to `final_learning_rate`.

    For `step < warmup_steps` the rate is
    `start + (learning_rate - start) * step / warmup_steps` with
    `start = warmup_start * learning_rate`; after it,
    `final + (learning_rate - final) * (1 + cos(pi * p)) / 2` where
    `p = (step - warmup_steps) / (total_steps - warmup_steps)`, clipped to
    `[0, 1]`.

    Args:
        learning_rate: Peak rate, reached at the end of the warmup.
        total_steps: Step at which the cosine reaches `final_learning_rate`.
        warmup_steps: Steps of linear warmup. Defaults to `0`.
        warmup_start: Rate at step 0 as a fraction of `learning_rate`.
            Defaults to `0.0`.
        final_learning_rate: Rate at `total_steps` and after. Defaults to
            `0.0`.
        name: Optional name. Defaults to `None`.

    Example:

    >>> schedule = WarmupCosine(0.4, total_steps=200, warmup_steps=5,
    ...                         warmup_start=0.25)
    >>> float(schedule(0)), float(schedule(5))
    (0.1, 0.4)
    """

    def __init__(self, learning_rate, total_steps, warmup_steps=0,
                 warmup_start=0.0, final_learning_rate=0.0, name=None):
        validation.number("learning_rate", learning_rate, low=0.0,
                          low_open=True)
        validation.number("warmup_steps", warmup_steps, low=0,
                          high=total_steps, high_open=True)
        self.learning_rate = learning_rate
        self.total_steps = total_steps
        self.warmup_steps = warmup_steps
        self.warmup_start = warmup_start
        self.final_learning_rate = final_learning_rate
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = self.learning_rate
        start = self.warmup_start * peak
        warmup = max(self.warmup_steps, 1)
        warm = start + (peak - start) * step / warmup
        progress = ops.clip(
            (step - self.warmup_steps) / (self.total_steps - self.warmup_steps),
            0.0,
            1.0,
        )
        final = self.final_learning_rate
        decayed = final + (peak - final) * 0.5 * (
            1.0 + ops.cos(math.pi * progress)
        )
        return ops.where(step < self.warmup_steps, warm, decayed)

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "total_steps": self.total_steps,
            "warmup_steps": self.warmup_steps,
            "warmup_start": self.warmup_start,
            "final_learning_rate": self.final_learning_rate,
            "name": self.name,
        }


@keras.saving.register_keras_serializable(package="keras_seqnorm")
class PiecewiseLinear(keras.optimizers.schedules.LearningRateSchedule):
    """Linear interpolation through `(boundaries[i], values[i])`.

    The rate is `values[0]` at `boundaries[0] = 0`, linear between
    consecutive knots and `values[-1]` from `boundaries[-1]` on, computed as
    `values[0] + sum_i slope_i * clip(step - b_i, 0, b_{i+1} - b_i)`.

    Args:
        boundaries: Increasing steps of the knots, starting at 0.
        values: The rate at each knot.
        name: Optional name. Defaults to `None`.

    Example:

    >>> schedule = PiecewiseLinear([0, 15, 30, 40], [0.1, 3.0, 0.1, 0.003])
    >>> round(float(schedule(15)), 4), round(float(schedule(35)), 4)
    (3.0, 0.0515)
    """

    def __init__(self, boundaries, values, name=None):
        boundaries = [float(b) for b in boundaries]
        values = [float(v) for v in values]
        if (
            not boundaries
            or len(boundaries) != len(values)
            or boundaries[0] != 0
            or any(b <= a for a, b in zip(boundaries, boundaries[1:]))
        ):
            raise ValueError(
                "Arguments `boundaries` and `values` must have the same "
                "length, with increasing boundaries from 0. Received: "
                f"boundaries={boundaries}, values={values}"
            )
        self.boundaries = boundaries
        self.values = values
        self.name = name

    def __call__(self, step):
        step = ops.cast(step, "float32")
        rate = ops.convert_to_tensor(self.values[0], "float32")
        knots = list(zip(self.boundaries, self.values))
        for (b0, v0), (b1, v1) in zip(knots, knots[1:]):
            rate = rate + (v1 - v0) / (b1 - b0) * ops.clip(
                step - b0, 0.0, b1 - b0
            )
        return rate

    def get_config(self):
        return {
            "boundaries": self.boundaries,
            "values": self.values,
            "name": self.name,
        }


def peak_learning_rate(config):
    """`config.learning_rate`, linearly scaled by the optimizer batch
    (`batch_size * grad_accum`) when `config.lr_reference_batch` is set."""
    if not config.lr_reference_batch:
        return config.learning_rate
    batch = config.batch_size * config.grad_accum
    return config.learning_rate * batch / config.lr_reference_batch


def build_schedule(config, steps_per_epoch):
    """The learning rate of `config`: a float or a `LearningRateSchedule`.

    Epochs in the config become steps through `steps_per_epoch` (batches of
    one forward pass; the optimizer calls the schedule with this count also
    under gradient accumulation).

    Args:
        config: A `Config`.
        steps_per_epoch: Training batches per epoch.

    Returns:
        A float (`constant`), `WarmupCosine` (`cosine`) or
        `PiecewiseLinear` (`piecewise_linear`).
    """
    if config.schedule == "constant":
        return peak_learning_rate(config)
    if config.schedule == "cosine":
        return WarmupCosine(
            peak_learning_rate(config),
            total_steps=config.epochs * steps_per_epoch,
            warmup_steps=round(config.warmup_epochs * steps_per_epoch),
            warmup_start=config.warmup_start,
        )
    epochs, rates = zip(*config.lr_knots)
    return PiecewiseLinear(
        [epoch * steps_per_epoch for epoch in epochs], rates
    )
