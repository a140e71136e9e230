import keras
import numpy as np
import pytest

from keras_seqnorm.models import WideResNet
from tests.helpers import to_numpy
from tests.models import needs_channels_first


def wrn_parameters(depth, width, num_classes):
    """Closed-form trainable count of WRN-depth-width (bias-free convs, two
    trainable weights per normalized channel, a Dense classifier)."""
    n = (depth - 4) // 6
    widths = [16, 16 * width, 32 * width, 64 * width]
    total = 3 * 16 * 9
    for stage in range(1, 4):
        c_in, c_out = widths[stage - 1], widths[stage]
        # First block: norm1 on c_in, conv c_in->c_out, norm2, conv, and a
        # 1x1 shortcut when the width changes.
        total += 2 * c_in + 9 * c_in * c_out + 2 * c_out + 9 * c_out**2
        total += c_in * c_out if c_in != c_out else 0
        total += (n - 1) * (2 * (2 * c_out) + 2 * 9 * c_out**2)
    return total + 2 * widths[3] + widths[3] * num_classes + num_classes


def _count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def test_closed_form_gives_the_papers_36_5m():
    # test_models checks the built WRN-28-10 against this exact count.
    assert wrn_parameters(28, 10, 100) == 36_536_884
    assert round(wrn_parameters(28, 10, 100) / 1e6, 1) == 36.5


@pytest.mark.parametrize("depth, width", [(10, 1), (10, 2), (16, 1)])
def test_parameter_count(depth, width):
    model = WideResNet(depth, width, num_classes=7, input_shape=(8, 8, 3))
    assert _count(model) == wrn_parameters(depth, width, 7)
    assert model.name == f"wide_resnet{depth}_{width}"


def test_structure():
    model = WideResNet(16, 2, dropout_rate=0.3, input_shape=(16, 16, 3))
    names = {layer.name for layer in model.layers}
    # Pre-activation: the shortcut convolves the activated input.
    shortcut = model.get_layer("stage1_block1_shortcut_conv")
    assert shortcut.input is model.get_layer("stage1_block1_relu1").output
    assert "stage1_block2_shortcut_conv" not in names
    assert model.get_layer("stage1_block1_dropout").rate == 0.3
    assert model.get_layer("stage2_block1_conv1").strides == (2, 2)
    assert model.get_layer("stage2_block1_conv2").strides == (1, 1)
    assert model.get_layer("stage3_block2_add").output.shape == (
        None, 4, 4, 128
    )
    assert model.get_layer("final_norm").axis in (-1, 3)
    assert "dropout" not in " ".join(
        layer.name for layer in WideResNet(10, 1).layers
    )


@needs_channels_first
def test_channels_first_equals_channels_last():
    last = WideResNet(10, 1, num_classes=3, input_shape=(8, 8, 3),
                      norm="group", data_format="channels_last")
    first = WideResNet(10, 1, num_classes=3, data_format="channels_first",
                       input_shape=(3, 8, 8), norm="group")
    assert first.get_layer("stage1_block1_norm1").axis == 1
    first.set_weights(last.get_weights())
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        first.predict_on_batch(np.transpose(x, (0, 3, 1, 2))),
        last.predict_on_batch(x),
        atol=1e-4,
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"depth": 12}, r"6 \* n \+ 4.*Received: depth=12"),
        ({"depth": 4}, "Received: depth=4"),
        ({"depth": 28.0}, "Received: depth=28.0"),
        ({"width": 0}, "Received: width=0"),
        ({"dropout_rate": 1.0}, r"\[0, 1\).*Received: dropout_rate=1.0"),
        ({"dropout_rate": -0.1}, "Received: dropout_rate=-0.1"),
        ({"dropout_rate": "0.1"}, "Received: dropout_rate='0.1'"),
        ({"input_shape": (32, 32)}, r"Received: input_shape=\(32, 32\)"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        WideResNet(**kwargs)


def test_logits_or_softmax():
    model = WideResNet(10, 1, input_shape=(8, 8, 3),
                       classifier_activation="softmax")
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(to_numpy(model(x)).sum(axis=-1), 1.0,
                               rtol=1e-5)
    assert keras.activations.get(
        WideResNet(10, 1).get_layer("predictions").activation
    ) is keras.activations.linear
