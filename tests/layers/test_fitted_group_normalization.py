import keras
import numpy as np
import pytest

from keras_seqnorm.layers import FittedGroupNormalization
from tests.helpers import group_norm_reference
from tests.helpers import to_numpy


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


@pytest.mark.parametrize(
    "channels, groups, expected",
    [(64, 32, 32), (16, 32, 16), (300, 32, 30), (48, 32, 24), (7, 32, 7),
     (12, 5, 4), (12, 1, 1), (12, -1, 12)],
)
def test_fitted_groups(channels, groups, expected):
    layer = FittedGroupNormalization(groups=groups)
    layer.build((None, 2, channels))
    assert layer.fitted_groups == expected
    assert layer.groups == groups


@pytest.mark.parametrize(
    "shape, axis", [((4, 6, 6, 48), -1), ((4, 48, 6), 1), ((4, 300), -1)]
)
def test_fitted_group_norm_matches_references(shape, axis):
    x = _random(shape) * 3 + 1
    layer = FittedGroupNormalization(groups=32, axis=axis, epsilon=1e-5)
    out = to_numpy(layer(x))
    groups = layer.fitted_groups
    np.testing.assert_allclose(
        out,
        group_norm_reference(x, axis=axis, groups_c=groups, epsilon=1e-5),
        atol=1e-4,
    )
    # Keras's own GroupNormalization with the fitted count and weights.
    reference = keras.layers.GroupNormalization(groups, axis=axis,
                                                epsilon=1e-5)
    reference.build(x.shape)
    rng = np.random.default_rng(2)
    weights = [rng.normal(size=shape[axis]) for _ in range(2)]
    layer.set_weights(weights)
    reference.set_weights(weights)
    np.testing.assert_allclose(
        to_numpy(layer(x)), to_numpy(reference(x)), atol=1e-4
    )


def test_fitted_group_norm_mixed_float16_large_inputs():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        layer = FittedGroupNormalization(groups=2)
        x = np.full((2, 3, 4), 70000.0, "float32")
        x[:, 0] = 69000.0
        out = layer(x)
        assert all(w.dtype == "float32" for w in layer.weights)
    finally:
        keras.config.set_dtype_policy("float32")
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_allclose(
        to_numpy(out).astype("float32"),
        group_norm_reference(x, groups_c=2),
        atol=1e-2,
    )


@pytest.mark.parametrize(
    "kwargs, shape, match",
    [
        ({"groups": 0}, None, "Received: groups=0"),
        ({"groups": True}, None, "Received: groups=True"),
        ({"axis": "last"}, None, "Received: axis='last'"),
        ({"axis": 0}, (None, 4), "non-batch axis.*Received: axis=0"),
        ({"axis": -1}, (None, 4, None), "known size"),
    ],
)
def test_fitted_group_norm_bad_arguments(kwargs, shape, match):
    with pytest.raises(ValueError, match=match):
        FittedGroupNormalization(**kwargs).build(shape)
