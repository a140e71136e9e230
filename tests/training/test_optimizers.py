import keras
import numpy as np
import pytest

from keras_seqnorm.training.config import Config
from keras_seqnorm.training.optimizers import L2SGD
from keras_seqnorm.training.optimizers import build_optimizer
from keras_seqnorm.training.schedules import WarmupCosine


def _steps(optimizer, variables, gradients):
    for gradient in gradients:
        optimizer.apply(
            [keras.ops.convert_to_tensor(g) for g in gradient], variables
        )
    return [keras.ops.convert_to_numpy(v) for v in variables]


def test_l2_passes_through_nesterov_momentum_like_pytorch():
    kernel = keras.Variable(np.array([[1.0, -2.0]], "float32"))
    bias = keras.Variable(np.array([0.5], "float32"))
    lr, mu, l2 = 0.1, 0.9, 0.01
    optimizer = L2SGD(lr, momentum=mu, nesterov=True, l2=l2)
    gradients = [
        [np.array([[0.3, 0.1]], "float32"), np.array([0.2], "float32")],
        [np.array([[-0.1, 0.4]], "float32"), np.array([0.1], "float32")],
    ]
    result = _steps(optimizer, [kernel, bias], gradients)
    # torch.optim.SGD(lr, momentum=mu, nesterov=True, weight_decay=l2):
    # d = g + l2 w; b = mu b + d; w -= lr (d + mu b).
    for index, start in enumerate(([[1.0, -2.0]], [0.5])):
        w, b = np.array(start, np.float64), 0.0
        for gradient in gradients:
            d = gradient[index] + l2 * w
            b = mu * b + d
            w = w - lr * (d + mu * b)
        np.testing.assert_allclose(result[index], w, rtol=1e-5)


def test_kernels_only_leaves_rank_one_variables_undecayed():
    kernel = keras.Variable(np.ones((2, 2), "float32"))
    gamma = keras.Variable(np.ones((2,), "float32"))
    optimizer = L2SGD(0.5, l2=0.1, kernels_only=True)
    zero = [np.zeros((2, 2), "float32"), np.zeros((2,), "float32")]
    new_kernel, new_gamma = _steps(optimizer, [kernel, gamma], [zero])
    np.testing.assert_allclose(new_kernel, np.full((2, 2), 1 - 0.5 * 0.1))
    np.testing.assert_allclose(new_gamma, np.ones(2))


def test_l2sgd_serializes():
    optimizer = L2SGD(WarmupCosine(0.4, 100, 5, 0.25), momentum=0.9,
                      nesterov=True, l2=5e-4, kernels_only=True,
                      global_clipnorm=2.0)
    restored = L2SGD.from_config(optimizer.get_config())
    assert (restored.l2, restored.kernels_only) == (5e-4, True)
    assert restored.global_clipnorm == 2.0
    assert restored.get_config()["learning_rate"]["class_name"] == (
        "WarmupCosine")
    # The warmup starts at a quarter of the peak.
    assert float(keras.ops.convert_to_numpy(restored.learning_rate)) == (
        pytest.approx(0.1))


def test_l2sgd_rejects_decoupled_weight_decay():
    with pytest.raises(ValueError, match="Received: weight_decay=0.01"):
        L2SGD(0.1, weight_decay=0.01)


def test_build_optimizer_from_config():
    config = Config(momentum=0.875, nesterov=False, weight_decay=1e-4,
                    weight_decay_on="kernels", clip_norm=2.0, grad_accum=4)
    optimizer = build_optimizer(config, steps_per_epoch=10, num_replicas=4)
    assert optimizer.momentum == 0.875 and not optimizer.nesterov
    assert optimizer.l2 == 1e-4 and optimizer.kernels_only
    # Each replica holds 1/4 of the mean gradient.
    assert optimizer.global_clipnorm == 0.5
    assert optimizer.gradient_accumulation_steps == 4
    plain = build_optimizer(Config(momentum=0.0), steps_per_epoch=10)
    assert not plain.nesterov and plain.global_clipnorm is None
    assert plain.gradient_accumulation_steps is None
