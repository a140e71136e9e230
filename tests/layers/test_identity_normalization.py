import numpy as np
import pytest

from keras_seqnorm.layers import IdentityNormalization
from tests.helpers import to_numpy


@pytest.mark.parametrize("shape, axis", [((3, 5), -1), ((2, 4, 3, 5), 1)])
def test_returns_its_inputs_whatever_the_core_arguments(shape, axis):
    x = np.random.default_rng(0).normal(size=shape).astype("float32")
    layer = IdentityNormalization(
        axis=axis, epsilon=0.5, center=False, scale=False
    )
    for training in (True, False):
        np.testing.assert_array_equal(to_numpy(layer(x, training=training)), x)
    assert layer.weights == []
    config = layer.get_config()
    assert (config["axis"], config["epsilon"]) == (axis, 0.5)
    assert (config["center"], config["scale"]) == (False, False)
