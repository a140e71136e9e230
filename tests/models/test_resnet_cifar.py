import keras
import numpy as np
import pytest

from keras_seqnorm.models import ResNetCIFAR
from tests.helpers import to_numpy
from tests.models import needs_channels_first


def cifar_resnet_parameters(depth, num_classes):
    """Closed-form trainable count: bias-free 3x3 convolutions, two weights
    per normalized channel, parameter-free shortcuts, a Dense classifier."""
    n = (depth - 2) // 6
    total = 3 * 16 * 9 + 2 * 16
    c_in = 16
    for c_out in (16, 32, 64):
        total += 9 * c_in * c_out + 9 * c_out**2 + 4 * c_out
        total += (n - 1) * (2 * 9 * c_out**2 + 4 * c_out)
        c_in = c_out
    return total + 64 * num_classes + num_classes


def _model_between(model, start, end):
    return keras.Model(
        model.input,
        [model.get_layer(start).output, model.get_layer(end).output],
    )


@pytest.mark.parametrize("depth", [8, 14, 20, 56])
def test_parameter_count(depth):
    model = ResNetCIFAR(depth, input_shape=(8, 8, 3))
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert count == cifar_resnet_parameters(depth, 10)
    assert model.name == f"resnet{depth}"
    assert not [layer for layer in model.layers if "shortcut_conv" in
                layer.name]


@pytest.mark.parametrize(
    "data_format, input_shape, shortcut",
    [("channels_last", (8, 8, 3), "stage2_block1_shortcut_to_cl"),
     pytest.param("channels_first", (3, 8, 8), "stage2_block1_shortcut_pad",
                  marks=needs_channels_first)],
)
def test_option_a_shortcut(data_format, input_shape, shortcut):
    # He et al.'s option A: x[:, ::2, ::2] with 8 zero channels either side.
    model = ResNetCIFAR(8, input_shape=input_shape, data_format=data_format)
    probe = _model_between(model, "stage1_block1_out", shortcut)
    x = np.random.default_rng(0).normal(size=(2,) + input_shape)
    stage1, result = (to_numpy(t) for t in probe(x.astype("float32")))
    if data_format == "channels_last":
        expected = np.pad(stage1[:, ::2, ::2, :],
                          ((0, 0), (0, 0), (0, 0), (8, 8)))
    else:
        expected = np.pad(stage1[:, :, ::2, ::2],
                          ((0, 0), (8, 8), (0, 0), (0, 0)))
    np.testing.assert_array_equal(result, expected)


@needs_channels_first
def test_channels_first_equals_channels_last():
    last = ResNetCIFAR(8, num_classes=3, input_shape=(8, 8, 3),
                       norm="group", data_format="channels_last")
    first = ResNetCIFAR(8, num_classes=3, input_shape=(3, 8, 8),
                        norm="group", data_format="channels_first")
    first.set_weights(last.get_weights())
    x = np.random.default_rng(0).normal(size=(4, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(
        first.predict_on_batch(np.transpose(x, (0, 3, 1, 2))),
        last.predict_on_batch(x),
        atol=1e-4,
    )


def test_structure():
    model = ResNetCIFAR(20, input_shape=(32, 32, 3))
    names = {layer.name for layer in model.layers}
    assert {"stem_conv", "stem_norm", "stem_relu"} <= names
    assert "stage3_block3_out" in names and "stage3_block4_out" not in names
    assert model.get_layer("stage3_block3_out").output.shape == (
        None, 8, 8, 64
    )
    assert model.get_layer("stage2_block1_conv1").strides == (2, 2)


@pytest.mark.parametrize("depth", [21, 2, 0, "56", None])
def test_bad_depth(depth):
    with pytest.raises(ValueError, match=f"Received: depth={depth!r}"):
        ResNetCIFAR(depth)
