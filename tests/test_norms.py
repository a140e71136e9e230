import functools

import keras
import numpy as np
import pytest

from keras_seqnorm import NORM_LAYERS
from keras_seqnorm import get_norm_layer
from keras_seqnorm.layers import FittedGroupNormalization
from keras_seqnorm.layers import GhostNormalization
from keras_seqnorm.layers import IdentityNormalization
from keras_seqnorm.layers import NoisyBatchNormalization
from keras_seqnorm.layers import SequentialNormalization
from tests.helpers import group_norm_reference
from tests.helpers import to_numpy

TENSORFLOW = keras.backend.backend() == "tensorflow"
EXPECTED_CLASSES = {
    "batch": keras.layers.BatchNormalization,
    "sync_batch": keras.layers.BatchNormalization,
    "ghost": GhostNormalization,
    "sequential": SequentialNormalization,
    "group": FittedGroupNormalization,
    "noisy_batch": NoisyBatchNormalization,
    "none": IdentityNormalization,
}
CORE = dict(axis=-1, epsilon=1e-4, center=True, scale=False, name="norm",
            dtype="float32")


def _random(shape, seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


def test_registry_names():
    assert list(NORM_LAYERS) == list(EXPECTED_CLASSES)


@pytest.mark.parametrize("name", list(EXPECTED_CLASSES))
def test_every_norm_takes_the_core_arguments(name):
    if name == "sync_batch" and not TENSORFLOW:
        pytest.skip("sync_batch needs TensorFlow (see test_sync_batch)")
    layer = get_norm_layer(name)(**CORE)
    assert type(layer) is EXPECTED_CLASSES[name]
    assert layer.name == "norm"
    x = _random((8, 4, 4, 16))
    for training in (True, False):
        out = to_numpy(layer(x, training=training))
        assert out.shape == x.shape and np.all(np.isfinite(out))
    if name == "none":
        np.testing.assert_array_equal(out, x)
    else:
        assert layer.epsilon == 1e-4
        assert layer.gamma is None and layer.beta is not None


@pytest.mark.parametrize(
    "spelling", ["noisy_batch", "NoisyBatch", "noisy-batch", "NOISYBATCH"]
)
def test_names_ignore_case_underscores_and_hyphens(spelling):
    assert get_norm_layer(spelling) is NoisyBatchNormalization


def test_sync_batch():
    if TENSORFLOW:
        layer = get_norm_layer("sync_batch")(axis=-1)
        assert isinstance(layer, keras.layers.BatchNormalization)
        assert layer.synchronized
    else:
        with pytest.raises(ValueError, match="needs the TensorFlow backend"):
            get_norm_layer("Sync-Batch")


def test_class_and_partial_identifiers():
    assert get_norm_layer(GhostNormalization) is GhostNormalization
    layer = get_norm_layer(keras.layers.LayerNormalization)(axis=-1)
    assert isinstance(layer, keras.layers.LayerNormalization)
    factory = get_norm_layer(
        functools.partial(SequentialNormalization, groups_c=2), groups_m=3
    )
    layer = factory(axis=1, name="seq")
    assert (layer.groups_c, layer.groups_m, layer.axis) == (2, 3, 1)


def test_norm_kwargs_are_bound():
    layer = get_norm_layer("ghost", groups_m=2, momentum=0.9)(axis=-1)
    assert (layer.groups_m, layer.momentum) == (2, 0.9)
    layer = get_norm_layer("noisy_batch", stddev=0.1, seed=4)(axis=-1)
    assert (layer.stddev, layer.seed) == (0.1, 4)
    layer = get_norm_layer("group", groups=8)(axis=-1)
    assert layer.groups == 8


def test_unknown_name_lists_the_valid_names():
    with pytest.raises(
        ValueError,
        match=r"Unknown norm 'batchnorm2d'\. Valid names: batch, sync_batch, "
        r"ghost, sequential, group, noisy_batch, none.*"
        r"Received: norm='batchnorm2d'",
    ):
        get_norm_layer("batchnorm2d")


@pytest.mark.parametrize(
    "name, kwargs, match",
    [
        ("batch", {"groups_m": 8}, r"'batch' \(BatchNormalization\) does not "
         r"accept the argument\(s\) groups_m\. It accepts: .*momentum"),
        ("group", {"momentum": 0.9}, "does not accept the argument.*momentum"),
        ("none", {"groups_c": 4}, "does not accept the argument.*groups_c"),
        ("ghost", {"groups_c": 4, "stddev": 1.0},
         r"argument\(s\) groups_c, stddev.*Received: norm_kwargs="),
    ],
)
def test_arguments_the_norm_does_not_take(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        get_norm_layer(name, **kwargs)


@pytest.mark.parametrize(
    "norm, match",
    [
        (None, "must be a name from NORM_LAYERS.*Received: norm=None"),
        (3, "must be a name from NORM_LAYERS.*Received: norm=3"),
        (np.mean, "must be a name from NORM_LAYERS"),
        (keras.layers.Dense, "must accept an `axis` argument; Dense does not"),
        (functools.partial(GhostNormalization, 4), "keyword arguments only"),
    ],
)
def test_bad_identifiers(norm, match):
    with pytest.raises(ValueError, match=match):
        get_norm_layer(norm)


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


@pytest.mark.parametrize("norm", ["group", "none"])
def test_config_round_trip_and_keras_file(norm, tmp_path):
    layer = get_norm_layer(norm)(axis=1, epsilon=1e-5, name="norm")
    config = layer.get_config()
    assert config["axis"] == 1 and config["epsilon"] == 1e-5
    assert type(layer).from_config(config).get_config() == config
    inputs = keras.Input((8, 3))
    model = keras.Model(inputs, layer(keras.layers.Dense(3)(inputs)))
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("norm")) is type(layer)
    x = _random((2, 8, 3))
    np.testing.assert_allclose(
        to_numpy(loaded(x)), to_numpy(model(x)), atol=1e-6
    )
