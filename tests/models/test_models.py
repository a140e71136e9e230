"""`get_model`, the parameter counts, and every norm in every builder."""

import re

import keras
import numpy as np
import pytest

from keras_seqnorm import NORM_LAYERS
from keras_seqnorm import get_norm_layer
from keras_seqnorm import models
from keras_seqnorm.layers import SequentialNormalization
from tests.helpers import to_numpy

TENSORFLOW = keras.backend.backend() == "tensorflow"
# Small versions of every family, on small inputs.
TINY = {
    "wide_resnet": (models.WideResNet, dict(depth=10, width=1), (8, 8, 3)),
    "resnet_cifar": (models.ResNetCIFAR, dict(depth=8), (8, 8, 3)),
    "resnet18": (models.ResNet18, {}, (32, 32, 3)),
    "simple_net": (models.SimpleNet, dict(hidden=(16, 12)), (4, 4, 1)),
    "simple_cnn": (models.SimpleCNN, {}, (8, 8, 1)),
}
LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
# Counts do not depend on the backend. On JAX every new weight shape compiles
# its random initializer (about 0.5 s each): WRN-28-10's and ResNet-50's
# shapes, used nowhere else, would add a minute.
TENSORFLOW_ONLY = pytest.mark.skipif(
    not TENSORFLOW, reason="backend-independent; slow to build on JAX"
)


def _tiny(family, norm, **kwargs):
    builder, arguments, input_shape = TINY[family]
    return builder(
        num_classes=3, input_shape=input_shape, norm=norm, **arguments,
        **kwargs,
    )


def _data(model, batch=8, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(batch,) + model.input_shape[1:]).astype("float32")
    return x, rng.integers(0, 3, size=batch)


def _trainable_count(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def _norm_layers(model):
    return [
        layer for layer in model.layers
        if re.search(r"_norm\d?$", layer.name)
    ]


@pytest.mark.parametrize(
    "name, num_classes, expected",
    [
        # Zagoruyko and Komodakis: WRN-28-10 on CIFAR-100 has 36.5M; the
        # exact count is test_wide_resnet's closed form.
        pytest.param("wrn28_10", 100, 36_536_884, marks=TENSORFLOW_ONLY),
        ("wrn16_4", 10, 2_748_890),
        # He et al.'s CIFAR ResNets with option A shortcuts: 0.27M, 0.85M,
        # 1.7M (the exact counts of the usual PyTorch port).
        ("resnet20", 10, 269_722),
        ("resnet56", 10, 853_018),
        ("resnet110", 10, 1_727_962),
        # torchvision's resnet18/34/50 (BN gamma and beta count).
        ("resnet18", 1000, 11_689_512),
        ("resnet34", 1000, 21_797_672),
        pytest.param("resnet50", 1000, 25_557_032, marks=TENSORFLOW_ONLY),
        # 784*512 + 512 + 2*512 + 512*300 + 300 + 2*300 + 300*10 + 10.
        ("simplenet", 10, 560_454),
    ],
)
def test_parameter_counts(name, num_classes, expected):
    # Parameter counts do not depend on the spatial size: build small.
    shape = {"resnet18": (32, 32, 3), "resnet34": (32, 32, 3),
             "resnet50": (32, 32, 3)}.get(name)
    kwargs = {"input_shape": shape} if shape else {}
    model = models.get_model(name, num_classes=num_classes, **kwargs)
    assert model.name == name
    assert _trainable_count(model) == expected


def test_get_model_names():
    assert list(models.MODELS) == [
        "wrn28_10", "wrn16_4", "resnet20", "resnet56", "resnet110",
        "resnet18", "resnet34", "resnet50", "simplenet", "simplecnn",
    ]
    model = models.get_model(
        "SimpleCNN", num_classes=4, input_shape=(8, 8, 1), norm="ghost",
        norm_kwargs={"groups_m": 2}, dtype="float32", name="demo",
    )
    assert model.name == "demo"
    assert model.output_shape == (None, 4)
    assert model.get_layer("stage1_norm1").groups_m == 2


@pytest.mark.parametrize("name", ["resnet", "wrn28", None, 56])
def test_get_model_unknown_name(name):
    with pytest.raises(
        ValueError,
        match=r"Unknown model .*Valid names: wrn28_10, wrn16_4, resnet20, "
        r"resnet56, resnet110, resnet18, resnet34, resnet50, simplenet, "
        r"simplecnn\. Received: name=",
    ):
        models.get_model(name)


@pytest.mark.parametrize("family", list(TINY))
@pytest.mark.parametrize("norm", list(NORM_LAYERS))
def test_every_norm_in_every_builder(family, norm):
    if norm == "sync_batch" and not TENSORFLOW:
        with pytest.raises(ValueError, match="TensorFlow backend"):
            _tiny(family, norm)
        return
    # Built only: the fit-step tests below train every family (with
    # SeqNorm) and every norm (in SimpleCNN).
    model = _tiny(family, norm)
    expected = type(get_norm_layer(norm)(axis=-1))
    norms = _norm_layers(model)
    assert norms and all(type(layer) is expected for layer in norms)
    assert model.output_shape == (None, 3)




# ResNet18 trains in test_resnet18_training_forward_pass: compiling its
# train step would cost as much as all the others together.
@pytest.mark.parametrize("family", [f for f in TINY if f != "resnet18"])
def test_fit_step_with_sequential_norm(family):
    model = _tiny(family, "sequential", norm_kwargs={"groups_m": 2})
    model.compile("sgd", LOSS)
    x, y = _data(model)
    before = [to_numpy(w) for w in model.weights]
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    for value, weight in zip(before, model.weights):
        if weight.path.endswith(("kernel", "moving_mean")):
            assert not np.array_equal(value, to_numpy(weight)), weight.path


def test_resnet18_training_forward_pass():
    model = _tiny("resnet18", "sequential", norm_kwargs={"groups_m": 2})
    x, _ = _data(model)
    out = to_numpy(model(x, training=True))
    assert out.shape == (8, 3) and np.all(np.isfinite(out))
    moving = to_numpy(model.get_layer("stage4_block2_norm2").moving_mean)
    assert np.any(moving != 0)


@pytest.mark.parametrize(
    "norm", [name for name in NORM_LAYERS if name != "sync_batch"]
)
def test_fit_step_with_every_norm(norm):
    model = _tiny("simple_cnn", norm)
    model.compile("sgd", LOSS)
    x, y = _data(model)
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_sequential_norm_model_keras_file(tmp_path):
    model = _tiny(
        "resnet_cifar", "sequential", norm_kwargs={"groups_c": 2,
                                                   "groups_m": 2}
    )
    # Weights far from their initial values, as after training.
    rng = np.random.default_rng(4)
    model.set_weights([rng.uniform(0.5, 1.5, w.shape) for w in model.weights])
    x, _ = _data(model)
    path = tmp_path / "seqnorm.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    layer = loaded.get_layer("stage2_block1_norm1")
    assert isinstance(layer, SequentialNormalization)
    assert (layer.groups_c, layer.groups_m) == (2, 2)
    np.testing.assert_allclose(
        loaded.predict_on_batch(x), model.predict_on_batch(x), atol=1e-5
    )
