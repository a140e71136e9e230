import functools

import keras
import numpy as np
import pytest

from keras_seqnorm import NORM_LAYERS
from keras_seqnorm import convert_normalization
from keras_seqnorm import get_norm_layer
from keras_seqnorm import models
from keras_seqnorm.layers import FittedGroupNormalization
from keras_seqnorm.layers import GhostNormalization
from keras_seqnorm.layers import IdentityNormalization
from keras_seqnorm.layers import SequentialNormalization
from tests.helpers import to_numpy

BN = keras.layers.BatchNormalization
TENSORFLOW = keras.backend.backend() == "tensorflow"
# Targets whose inference is BatchNormalization's with the same weights.
SAME_INFERENCE = ("batch", "sync_batch", "ghost", "noisy_batch")


def _layers(model):
    """Every layer of `model` and of the models nested in it."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def _randomize_batch_norms(model, seed=0):
    """Moving statistics and affine far from their initial values, so a
    conversion that drops them changes the outputs."""
    rng = np.random.default_rng(seed)
    for layer in _layers(model):
        if isinstance(layer, BN):
            c = layer.gamma.shape[0]
            layer.set_weights([
                rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c),
                rng.normal(0, 0.2, c), rng.uniform(0.5, 1.5, c),
            ])


def _snapshot(model):
    return {w.path: to_numpy(w) for w in model.weights}


def _batch_norms(model):
    return [layer for layer in _layers(model) if isinstance(layer, BN)]


def _plain_batch_norms(model):
    # NoisyBatchNormalization is a BatchNormalization subclass.
    return [layer for layer in _layers(model) if type(layer) is BN]


def _target_class(norm):
    factory = NORM_LAYERS[norm]
    return getattr(factory, "func", factory)


def _sync_batch_refused(norm):
    """`sync_batch` is TensorFlow's: elsewhere the converter refuses it."""
    if norm != "sync_batch" or TENSORFLOW:
        return False
    with pytest.raises(ValueError, match="needs the TensorFlow backend"):
        convert_normalization(_small_sequential(), norm)
    return True


@pytest.fixture(scope="module")
def resnet50():
    model = keras.applications.ResNet50(
        weights=None, input_shape=(64, 64, 3), classes=10
    )
    _randomize_batch_norms(model)
    return model


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    return rng.normal(size=(4, 64, 64, 3)).astype("float32")


def test_resnet50_ghost_one_group_computes_the_same(resnet50, images):
    before = _snapshot(resnet50)
    converted = convert_normalization(resnet50, "ghost", groups_m=1)
    assert not _batch_norms(converted)
    ghosts = [layer for layer in converted.layers
              if isinstance(layer, GhostNormalization)]
    assert len(ghosts) == len(_batch_norms(resnet50)) == 53
    assert ghosts[0].name == "conv1_bn" and ghosts[0].epsilon == 1.001e-5
    np.testing.assert_allclose(
        converted.predict_on_batch(images),
        resnet50.predict_on_batch(images),
        rtol=1e-4, atol=1e-5,
    )
    # Every other weight is a copy, not a shared variable.
    assert len(converted.weights) == len(resnet50.weights)
    for old, new in zip(resnet50.weights, converted.weights):
        assert old.path == new.path and old is not new
        np.testing.assert_array_equal(to_numpy(old), to_numpy(new))
    # The original is unchanged, even after the copy changes.
    for weight in converted.weights:
        weight.assign(weight + 1.0)
    assert len(_batch_norms(resnet50)) == 53
    after = _snapshot(resnet50)
    assert after.keys() == before.keys()
    for path, value in before.items():
        np.testing.assert_array_equal(after[path], value)


def test_resnet50_sequential_has_no_batch_norm(resnet50, images):
    converted = convert_normalization(resnet50, groups_c=4, groups_m=2)
    assert not _batch_norms(converted)
    seqs = [layer for layer in converted.layers
            if isinstance(layer, SequentialNormalization)]
    assert len(seqs) == 53
    assert all((s.groups_c, s.groups_m) == (4, 2) for s in seqs)
    bn = resnet50.get_layer("conv2_block1_1_bn")
    seq = converted.get_layer("conv2_block1_1_bn")
    for name in ("gamma", "beta", "moving_mean", "moving_variance"):
        np.testing.assert_array_equal(
            to_numpy(getattr(seq, name)), to_numpy(getattr(bn, name))
        )
    out = converted.predict_on_batch(images)
    assert out.shape == (4, 10) and np.all(np.isfinite(out))


def test_nested_backbone(resnet50, images):
    inputs = keras.Input((64, 64, 3))
    features = resnet50(inputs)
    outputs = keras.layers.Dense(3, name="head")(features)
    classifier = keras.Model(inputs, outputs, name="classifier")
    converted = convert_normalization(classifier, "ghost", groups_m=1)
    backbone = converted.get_layer("resnet50")
    assert isinstance(backbone, keras.Model) and backbone is not resnet50
    assert not _batch_norms(converted)
    assert isinstance(backbone.get_layer("conv1_bn"), GhostNormalization)
    np.testing.assert_allclose(
        converted.predict_on_batch(images),
        classifier.predict_on_batch(images),
        rtol=1e-4, atol=1e-5,
    )
    assert len(_batch_norms(resnet50)) == 53


@pytest.fixture(scope="module")
def mobilenet_classifier():
    backbone = keras.applications.MobileNetV2(
        weights=None, input_shape=(32, 32, 3), alpha=0.35,
        include_top=False, pooling="avg",
    )
    inputs = keras.Input((32, 32, 3))
    outputs = keras.layers.Dense(3, name="head")(backbone(inputs))
    model = keras.Model(inputs, outputs, name="classifier")
    _randomize_batch_norms(model, seed=4)
    return model


@pytest.fixture(scope="module")
def resnet20():
    model = models.get_model("resnet20", num_classes=3, input_shape=(8, 8, 3))
    _randomize_batch_norms(model, seed=5)
    return model


def _norm_model(kind, make_norm):
    """A small model whose norms are `make_norm(name)`: `"functional"`
    (with a residual branch), `"sequential"`, or `"nested"` (a Sequential
    backbone in a Functional classifier that adds a norm of its own)."""

    def chain():
        return [
            keras.layers.Conv2D(8, 3, name="conv1"),
            make_norm("bn1"),
            keras.layers.ReLU(name="relu"),
            keras.layers.Conv2D(8, 1, name="conv2"),
            make_norm("bn2"),
        ]

    head = [keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(2, name="dense")]
    if kind == "sequential":
        return keras.Sequential(
            [keras.Input((6, 6, 3)), *chain(), *head], name="model"
        )
    inputs = keras.Input((6, 6, 3))
    if kind == "functional":
        conv1, bn1, relu, conv2, bn2 = chain()
        x = relu(bn1(conv1(inputs)))
        x = keras.layers.Add(name="add")([x, bn2(conv2(x))])
    else:
        x = keras.Sequential(chain(), name="backbone")(inputs)
        x = make_norm("bn3")(x)
    for layer in head:
        x = layer(x)
    return keras.Model(inputs, x, name="model")


@pytest.mark.parametrize("kind", ["functional", "sequential", "nested"])
@pytest.mark.parametrize("norm", list(NORM_LAYERS))
def test_every_target_computes_what_a_model_built_with_it_does(norm, kind):
    if _sync_batch_refused(norm):
        return
    model = _norm_model(
        kind, lambda name: BN(momentum=0.9, epsilon=1e-4, name=name)
    )
    _randomize_batch_norms(model)
    converted = convert_normalization(model, norm)
    # The reference: the same model built with the target norm, given the
    # weights the converter promises to carry over.
    make_norm = get_norm_layer(norm)
    reference = _norm_model(
        kind, lambda name: make_norm(axis=-1, epsilon=1e-4, name=name)
    )
    originals = {layer.name: layer for layer in _layers(model)}
    for layer in _layers(reference):
        if not layer.weights or isinstance(layer, keras.Model):
            continue
        source = originals[layer.name]
        if isinstance(source, BN):
            for name in ("gamma", "beta", "moving_mean", "moving_variance"):
                if getattr(layer, name, None) is not None:
                    getattr(layer, name).assign(getattr(source, name))
        else:
            layer.set_weights(source.get_weights())

    assert type(converted) is type(model)
    norms = [layer for layer in _layers(converted)
             if layer.name.startswith("bn")]
    assert len(norms) == (3 if kind == "nested" else 2)
    assert all(type(layer) is _target_class(norm) for layer in norms)
    assert all(layer.epsilon == 1e-4 for layer in norms)
    if _target_class(norm) is not BN:
        assert not _plain_batch_norms(converted)
    x = np.random.default_rng(6).normal(size=(4, 6, 6, 3)).astype("float32")
    if norm in SAME_INFERENCE:
        np.testing.assert_allclose(
            to_numpy(converted(x, training=False)),
            to_numpy(model(x, training=False)),
            rtol=1e-4, atol=1e-5,
        )
    # noisy_batch draws its noise at random in training.
    for training in (False,) if norm == "noisy_batch" else (False, True):
        np.testing.assert_allclose(
            to_numpy(converted(x, training=training)),
            to_numpy(reference(x, training=training)),
            rtol=1e-5, atol=1e-5,
        )


@pytest.mark.parametrize("norm", list(NORM_LAYERS))
def test_every_target_on_applications_and_builders(
    norm, resnet50, mobilenet_classifier, resnet20
):
    if _sync_batch_refused(norm):
        return
    rng = np.random.default_rng(7)
    for model in (resnet50, mobilenet_classifier, resnet20):
        names = {layer.name for layer in _batch_norms(model)}
        converted = convert_normalization(model, norm)
        new = [layer for layer in _layers(converted) if layer.name in names]
        assert len(new) == len(names)
        assert all(type(layer) is _target_class(norm) for layer in new)
        if _target_class(norm) is not BN:
            assert not _plain_batch_norms(converted)
        x = rng.normal(size=(2,) + model.input_shape[1:]).astype("float32")
        out = to_numpy(converted(x, training=False))
        assert out.shape == (2,) + model.output_shape[1:]
        assert np.all(np.isfinite(out))
        if norm in SAME_INFERENCE:
            np.testing.assert_allclose(
                out, to_numpy(model(x, training=False)), rtol=1e-4,
                atol=1e-5,
            )


def _small_sequential(with_input=True):
    layers = [
        keras.layers.Conv2D(8, 3, name="conv"),
        BN(momentum=0.9, epsilon=1e-4, name="bn"),
        keras.layers.ReLU(),
        keras.layers.Flatten(),
        keras.layers.Dense(2, name="dense"),
    ]
    if with_input:
        layers.insert(0, keras.Input((6, 6, 3)))
    return keras.Sequential(layers, name="small")


@pytest.mark.parametrize("with_input", [True, False])
def test_sequential_model(with_input):
    model = _small_sequential(with_input)
    x = np.random.default_rng(2).normal(size=(4, 6, 6, 3)).astype("float32")
    if not with_input:
        model(x)  # Built by a call.
    _randomize_batch_norms(model)
    converted = convert_normalization(model, "ghost", groups_m=1)
    assert isinstance(converted, keras.Sequential)
    layer = converted.get_layer("bn")
    assert isinstance(layer, GhostNormalization)
    # BatchNorm's own settings carry over.
    assert (layer.momentum, layer.epsilon, layer.groups_m) == (0.9, 1e-4, 1)
    for training in (False, True):
        np.testing.assert_allclose(
            to_numpy(converted(x, training=training)),
            to_numpy(model(x, training=training)),
            rtol=1e-4, atol=1e-5,
        )


def test_norm_kwargs_and_partials_take_precedence():
    model = _small_sequential()
    converted = convert_normalization(model, "ghost", momentum=0.5)
    assert converted.get_layer("bn").momentum == 0.5
    converted = convert_normalization(
        model, functools.partial(GhostNormalization, epsilon=0.1)
    )
    assert converted.get_layer("bn").epsilon == 0.1
    assert converted.get_layer("bn").momentum == 0.9


@pytest.mark.parametrize(
    "norm, kept", [("group", ("gamma", "beta")), ("none", ())]
)
def test_norms_without_moving_statistics(norm, kept):
    model = _small_sequential()
    _randomize_batch_norms(model)
    converted = convert_normalization(model, norm)
    layer = converted.get_layer("bn")
    assert isinstance(layer, (FittedGroupNormalization,
                              IdentityNormalization))
    assert [w.path.split("/")[-1] for w in layer.weights] == list(kept)
    for name in kept:
        np.testing.assert_array_equal(
            to_numpy(getattr(layer, name)),
            to_numpy(getattr(model.get_layer("bn"), name)),
        )


def test_frozen_layers_stay_frozen():
    model = _small_sequential()
    model.get_layer("bn").trainable = False
    converted = convert_normalization(model, "sequential", groups_c=2)
    assert not converted.get_layer("bn").trainable
    assert converted.get_layer("conv").trainable
    inputs = keras.Input((6, 6, 3))
    frozen = _small_sequential()
    frozen.trainable = False
    outer = keras.Model(inputs, keras.layers.Dense(1)(frozen(inputs)))
    converted = convert_normalization(outer, "ghost")
    assert not converted.get_layer("small").trainable
    assert len(converted.trainable_weights) == 2


def test_converted_model_saves_and_loads(tmp_path):
    model = _small_sequential()
    model.compile("sgd", "mse")
    converted = convert_normalization(model, "sequential", groups_c=2)
    assert converted.compiled
    x = np.random.default_rng(3).normal(size=(4, 6, 6, 3)).astype("float32")
    converted.fit(x, np.zeros((4, 2)), batch_size=4, verbose=0)
    path = tmp_path / "converted.keras"
    converted.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded.get_layer("bn"), SequentialNormalization)
    np.testing.assert_allclose(
        to_numpy(loaded(x)), to_numpy(converted(x)), atol=1e-6
    )


class _Subclassed(keras.Model):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bn = BN()
        self.dense = keras.layers.Dense(2)

    def call(self, x, training=None):
        return self.dense(self.bn(x, training=training))


class _Block(keras.layers.Layer):
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.bn = BN()

    def call(self, x, training=None):
        return self.bn(x, training=training)


class _Stack(keras.layers.Layer):
    """Its BatchNormalization two levels down, in a list of blocks."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.blocks = [keras.layers.Dense(3, name="dense"),
                       _Block(name="block")]

    def call(self, x, training=None):
        for block in self.blocks:
            x = block(x, training=training)
        return x


def test_subclassed_model_is_refused():
    model = _Subclassed(name="custom")
    model(np.ones((2, 3), "float32"))
    with pytest.raises(
        ValueError,
        match=r"only convert Functional and Sequential models.*_Subclassed "
        r"is a subclassed model\. Build it with the norm you want instead.*"
        r"Received: model='custom'",
    ):
        convert_normalization(model)


@pytest.mark.parametrize("inner", [_Subclassed, _Block, _Stack])
def test_batch_norm_inside_custom_code_is_refused(inner):
    inputs = keras.Input((3,))
    model = keras.Model(inputs, inner(name="inner")(inputs))
    with pytest.raises(
        ValueError,
        match=r"inner is a subclassed model or custom layer .* creates "
        r"BatchNormalization layers in its own code.*Received: "
        r"layer='inner'",
    ):
        convert_normalization(model, "ghost")


@pytest.mark.parametrize(
    "model, norm, kwargs, match",
    [
        ("sequential", "seqnorm", {}, "Unknown norm 'seqnorm'"),
        ("sequential", "ghost", {"groups_c": 4},
         "does not accept the argument.*groups_c"),
        ("sequential", "sequential", {"groups_c": 3},
         r"must divide the number of channels \(8\)"),
        (None, "ghost", {}, "must be a `keras.Model`. Received: model=None"),
    ],
)
def test_bad_arguments(model, norm, kwargs, match):
    if model == "sequential":
        model = _small_sequential()
    with pytest.raises(ValueError, match=match):
        convert_normalization(model, norm, **kwargs)
