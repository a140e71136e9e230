import math

import keras
import numpy as np
import pytest

from keras_seqnorm.training.config import parse_config
from keras_seqnorm.training.schedules import PiecewiseLinear
from keras_seqnorm.training.schedules import WarmupCosine
from keras_seqnorm.training.schedules import build_schedule
from keras_seqnorm.training.schedules import peak_learning_rate

# CIFAR: 45,000 training images in batches of 512.
CIFAR_STEPS = 45_000 // 512
# ImageNet: 1,281,167 training images in batches of 2048.
IMAGENET_STEPS = 1_281_167 // 2048


def _rates(schedule, epochs, steps_per_epoch):
    return [
        float(keras.ops.convert_to_numpy(schedule(round(e * steps_per_epoch))))
        for e in epochs
    ]


def test_cifar_wrn_warmup_four_times_over_five_epochs_then_cosine():
    config = parse_config(["--preset", "cifar100-wrn28-10"])
    schedule = build_schedule(config, CIFAR_STEPS)
    epochs = [0, 2.5, 5, 102.5, 200, 210]
    # By hand: 0.1 per 128 images is 0.4 at 512; warmup from 0.1 to 0.4,
    # then 0.4 * (1 + cos(pi * (e - 5) / 195)) / 2.
    expected = [0.1, 0.25, 0.4, 0.2, 0.0, 0.0]
    np.testing.assert_allclose(
        _rates(schedule, epochs, CIFAR_STEPS), expected, atol=2e-3
    )
    middle = 5 + 195 / 3
    np.testing.assert_allclose(
        _rates(schedule, [middle], CIFAR_STEPS),
        [0.4 * (1 + math.cos(math.pi / 3)) / 2],
        atol=2e-3,
    )


def test_superconvergence_one_cycle():
    config = parse_config(["--preset", "cifar10-resnet56-superconvergence"])
    steps = 50_000 // 512
    schedule = build_schedule(config, steps)
    knots = [0, 15, 30, 35, 40, 45]
    expected = [0.1, 3.0, 0.1, 0.0515, 0.003, 0.003]
    np.testing.assert_allclose(
        _rates(schedule, knots, steps), expected, rtol=1e-4
    )
    # Half way up and half way down (7.5 epochs are 727.5 steps).
    np.testing.assert_allclose(
        _rates(schedule, [7.5, 22.5], steps), [1.55, 1.55], atol=2e-3
    )


def test_imagenet_linear_scaling_warmup_and_cosine():
    config = parse_config(["--preset", "imagenet-resnet18"])
    assert peak_learning_rate(config) == pytest.approx(0.256 * 2048 / 256)
    schedule = build_schedule(config, IMAGENET_STEPS)
    epochs = [0, 4, 8, 129, 250]
    expected = [0.0, 1.024, 2.048, 1.024, 0.0]
    np.testing.assert_allclose(
        _rates(schedule, epochs, IMAGENET_STEPS), expected, atol=1e-3
    )


def test_mnist_simplenet_constant_rate():
    config = parse_config(["--preset", "mnist-simplenet"])
    assert build_schedule(config, 117) == 0.4


def test_learning_rate_scales_with_the_optimizer_batch():
    config = parse_config(["--preset", "cifar10-wrn28-10", "--batch-size",
                           "128", "--grad-accum", "2"])
    assert peak_learning_rate(config) == pytest.approx(0.2)


@pytest.mark.parametrize(
    "schedule",
    [
        WarmupCosine(0.4, total_steps=100, warmup_steps=5, warmup_start=0.25),
        PiecewiseLinear([0, 15, 30, 40], [0.1, 3.0, 0.1, 0.003]),
    ],
)
def test_schedules_serialize(schedule):
    restored = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(schedule)
    )
    assert type(restored) is type(schedule)
    steps = [0, 3, 5, 17, 35, 99, 120]
    np.testing.assert_allclose(
        _rates(restored, steps, 1), _rates(schedule, steps, 1)
    )


def test_schedule_arguments_are_checked():
    with pytest.raises(ValueError, match="Received: warmup_steps=10"):
        WarmupCosine(0.1, total_steps=10, warmup_steps=10)
    with pytest.raises(ValueError, match="Received: learning_rate=0"):
        WarmupCosine(0, total_steps=10)
    with pytest.raises(ValueError, match="increasing boundaries from 0"):
        PiecewiseLinear([0, 5, 5], [0.1, 0.2, 0.3])
