import keras
import numpy as np
import pytest

from keras_seqnorm.layers import IdentityNormalization
from keras_seqnorm.models import SimpleNet
from tests.helpers import to_numpy


def simplenet_parameters(inputs, hidden, num_classes, norm=True):
    total, width = 0, inputs
    for units in hidden:
        total += width * units + units + (2 * units if norm else 0)
        width = units
    return total + width * num_classes + num_classes


@pytest.mark.parametrize("input_shape", [(784,), (28, 28, 1), (1, 28, 28)])
def test_flattens_any_input(input_shape):
    model = SimpleNet(input_shape=input_shape)
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert count == simplenet_parameters(784, (512, 300), 10) == 560_454
    assert model.name == "simplenet"


def test_layers():
    model = SimpleNet(hidden=(8, 6, 4), num_classes=3, input_shape=(5,),
                      norm="ghost", data_format="channels_first")
    names = [layer.name for layer in model.layers]
    assert names == [
        "inputs", "flatten",
        "hidden1_dense", "hidden1_norm", "hidden1_relu",
        "hidden2_dense", "hidden2_norm", "hidden2_relu",
        "hidden3_dense", "hidden3_norm", "hidden3_relu",
        "predictions",
    ]
    # Dense features sit on the last axis whatever the image data format.
    assert model.get_layer("hidden2_norm").axis == -1
    assert model.output_shape == (None, 3)


def test_no_normalization_baseline():
    model = SimpleNet(norm="none")
    assert isinstance(model.get_layer("hidden1_norm"), IdentityNormalization)
    count = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert count == simplenet_parameters(784, (512, 300), 10, norm=False)


def test_softmax_classifier():
    model = SimpleNet(hidden=(4,), input_shape=(3,),
                      classifier_activation="softmax")
    x = np.ones((2, 3), "float32")
    np.testing.assert_allclose(to_numpy(model(x)).sum(-1), 1.0, rtol=1e-5)
    assert model.get_layer("predictions").activation is (
        keras.activations.softmax
    )


@pytest.mark.parametrize(
    "kwargs, match",
    [({"hidden": ()}, r"Received: hidden=\(\)"),
     ({"hidden": (512, 0)}, r"Received: hidden=\(512, 0\)"),
     ({"hidden": 512}, "Received: hidden=512"),
     ({"input_shape": (None,)}, r"Received: input_shape=\(None,\)"),
     ({"input_shape": (28, 0)}, r"Received: input_shape=\(28, 0\)")],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimpleNet(**kwargs)
