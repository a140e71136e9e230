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


def test_the_registry_knows_each_norms_group_arguments():
    from keras_seqnorm import norms

    assert norms.group_arguments("ghost") == {
        "groups_m": "groups_m", "ghost_batch_size": "ghost_batch_size"}
    assert norms.group_arguments("group") == {"groups_c": "groups"}
    assert norms.group_arguments("batch") == {}
    assert norms.group_kwargs("sequential", groups_m=8, groups_c=4) == {
        "groups_m": 8, "groups_c": 4}
    assert norms.group_kwargs("ghost", groups_m=8, groups_c=4) == {
        "groups_m": 8}
    assert norms.group_kwargs("ghost") == {}
    assert norms.group_kwargs("sequential", ghost_batch_size=16) == {
        "ghost_batch_size": 16}
    assert norms.group_kwargs("group", ghost_batch_size=16) == {}
    # Every group argument is one the norm's layer accepts.
    for name in NORM_LAYERS:
        arguments = set(norms.group_arguments(name).values())
        assert arguments <= norms.norm_layer_arguments(name), name
    assert norms.norms_taking("groups_m") == ["ghost", "sequential"]
    assert norms.norms_taking("ghost_batch_size") == ["ghost", "sequential"]
    assert norms.check_norm_names("norms", ["ghost", "none"]) == (
        "ghost", "none")
    with pytest.raises(ValueError, match=r"Received: norms=\['layer'\]"):
        norms.check_norm_names("norms", ["layer"])
    with pytest.raises(ValueError, match=r"Received: norms=\('a', 'a'\)"):
        norms.check_norm_names("norms", ("a", "a"))


@pytest.mark.parametrize(
    "norm, kwargs, devices, expected",
    [
        # G_M per device times the devices; the layer's default counts.
        ("ghost", {"groups_m": 4}, 2, {"groups_m": 8}),
        ("ghost", {}, 3, {"groups_m": 12}),
        ("sequential", {"groups_c": 2}, 2, {"groups_c": 2, "groups_m": 16}),
        ("sequential", {"groups_m": 2, "groups_c": 4}, 1,
         {"groups_m": 2, "groups_c": 4}),
        # A ghost batch size means the same on any number of devices.
        ("ghost", {"ghost_batch_size": 16}, 4, {"ghost_batch_size": 16}),
        # Norms without ghost batches keep their arguments.
        ("batch", {"momentum": 0.9}, 2, {"momentum": 0.9}),
        ("group", {"groups": 4}, 2, {"groups": 4}),
    ],
)
def test_global_batch_kwargs_keep_the_ghost_batches_per_device(
    norm, kwargs, devices, expected
):
    from keras_seqnorm import norms

    assert norms.global_batch_kwargs(norm, kwargs, devices) == expected
    if norm in ("ghost", "sequential") and not set(kwargs) & {
        "groups_m", "ghost_batch_size"
    }:
        # The layer's default G_M is the one multiplied: the default layer
        # normalizes as one given G_M per device explicitly.
        x = np.random.default_rng(0).normal(size=(48, 3, 8)).astype("float32")
        per_device = expected["groups_m"] // devices
        default = get_norm_layer(norm, **kwargs)(axis=-1)
        given = get_norm_layer(norm, **kwargs, groups_m=per_device)(axis=-1)
        np.testing.assert_allclose(
            to_numpy(default(x, training=True)),
            to_numpy(given(x, training=True)), rtol=1e-5, atol=1e-5,
        )
