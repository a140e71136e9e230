import numpy as np
import pytest

from keras_seqnorm.models import SimpleCNN


def simplecnn_parameters(channels, filters, num_classes):
    total, width = 0, channels
    for units in filters:
        total += 9 * width * units + 9 * units * units + 4 * units
        width = units
    return total + width * num_classes + num_classes


def test_defaults():
    model = SimpleCNN()
    assert model.input_shape == (None, 16, 16, 1)
    assert model.name == "simplecnn"
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert count == simplecnn_parameters(1, (16, 32), 10)
    convs = [layer.name for layer in model.layers if "conv" in layer.name]
    assert convs == ["stage1_conv1", "stage1_conv2", "stage2_conv1",
                     "stage2_conv2"]
    assert model.get_layer("stage2_relu2").output.shape == (None, 8, 8, 32)


def test_three_stages_on_digits():
    model = SimpleCNN(filters=(16, 32, 32), num_classes=10,
                      input_shape=(8, 8, 1), norm="sequential")
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert count == simplecnn_parameters(1, (16, 32, 32), 10)
    assert model.get_layer("stage3_relu2").output.shape == (None, 2, 2, 32)
    assert model.output_shape == (None, 10)


@pytest.mark.parametrize(
    "kwargs, match",
    [({"filters": ()}, r"Received: filters=\(\)"),
     ({"filters": (16, -32)}, r"Received: filters=\(16, -32\)"),
     ({"filters": (8, 16, 32, 64), "input_shape": (4, 4, 1)},
      r"at least 8 for 4 stages. Received: input_shape=\(4, 4, 1\)"),
     ({"input_shape": (16, 1, 16)},
      "must have a height and width of at least 2")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimpleCNN(**kwargs)
