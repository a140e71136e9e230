"""keras-hub ResNet classifiers converted to every norm of the registry.

Each backbone is built from its config (no download), converted with
`convert_normalization`, wrapped in `keras_hub.models.ImageClassifier`,
trained one step, saved to `.keras` and loaded in a fresh process, which
must predict the same.
"""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_seqnorm
from keras_seqnorm import NORM_LAYERS
from tests.helpers import to_numpy

keras_hub = pytest.importorskip("keras_hub")

BACKEND = keras.backend.backend()
NUM_CLASSES = 4
NORM_KWARGS = {
    "ghost": {"groups_m": 2},
    "sequential": {"groups_c": 4, "groups_m": 2},
    "noisy_batch": {"seed": 3},
}
LOADER = textwrap.dedent(
    """
    import json
    import sys

    import numpy as np
    import keras
    import keras_hub  # noqa: F401  (registers ImageClassifier)

    import keras_seqnorm  # noqa: F401  (registers the norm layers)

    folder, names = sys.argv[1], sys.argv[2:]
    x = np.load(f"{folder}/x.npy")
    report = {}
    for name in names:
        model = keras.saving.load_model(f"{folder}/{name}.keras")
        model.jit_compile = False
        np.save(f"{folder}/{name}.loaded.npy", model.predict(x, verbose=0))
        report[name] = {
            "task": type(model).__name__,
            "norms": sorted(
                type(layer).__name__
                for layer in model.backbone._flatten_layers()
                if "bn" in layer.name
            ),
        }
    print(json.dumps(report))
    """
)


def _backbone():
    # The smallest ResNet keras-hub builds: a 64-filter stem and two basic
    # blocks, 6 BatchNormalization layers.
    return keras_hub.models.ResNetBackbone(
        input_conv_filters=[64],
        input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 32],
        stackwise_num_blocks=[1, 1],
        stackwise_num_strides=[1, 2],
        block_type="basic_block",
        image_shape=(16, 16, 3),
    )


def _norm_cases():
    return [
        n for n in NORM_LAYERS if n != "sync_batch" or BACKEND == "tensorflow"
    ]


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 16, 16, 3)).astype("float32")
    return x, np.arange(8) % NUM_CLASSES


def _classifier(norm):
    keras.utils.set_random_seed(0)
    converted = keras_seqnorm.convert_normalization(
        _backbone(), norm, **NORM_KWARGS.get(norm, {})
    )
    classifier = keras_hub.models.ImageClassifier(
        backbone=converted, num_classes=NUM_CLASSES
    )
    classifier.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,  # XLA compiles for seconds on a small CPU
    )
    return classifier


@pytest.fixture(scope="module")
def round_trips(tmp_path_factory):
    """norm -> (predictions, predictions after loading, loaded report), or
    the exception building the classifier raised."""
    folder = tmp_path_factory.mktemp("keras_hub")
    x, y = _data()
    np.save(folder / "x.npy", x)
    outcomes, saved = {}, {}
    for case in _norm_cases():
        norm = case
        try:
            classifier = _classifier(norm)
        except Exception as error:  # re-raised by the norm's own test
            outcomes[norm] = error
            continue
        before = to_numpy(classifier.predict(x, verbose=0))
        classifier.fit(x, y, batch_size=8, shuffle=False, verbose=0)
        predictions = to_numpy(classifier.predict(x, verbose=0))
        assert not np.allclose(predictions, before)  # the step trained
        classifier.save(folder / f"{norm}.keras")
        saved[norm] = predictions
    result = subprocess.run(
        [sys.executable, "-c", LOADER, str(folder), *saved],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": BACKEND},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    for norm, predictions in saved.items():
        loaded = np.load(folder / f"{norm}.loaded.npy")
        outcomes[norm] = (predictions, loaded, report[norm])
    return outcomes


@pytest.mark.parametrize("norm", _norm_cases())
def test_converted_resnet_classifier_round_trips(norm, round_trips):
    outcome = round_trips[norm]
    if isinstance(outcome, Exception):
        raise outcome
    predictions, loaded, report = outcome
    np.testing.assert_allclose(loaded, predictions, rtol=1e-5, atol=1e-5)
    assert report["task"] == "ImageClassifier"
    layer_class = NORM_LAYERS[norm]
    while hasattr(layer_class, "func"):  # functools.partial
        layer_class = layer_class.func
    assert report["norms"] == [layer_class.__name__] * 6


def test_resnet_backbone_converts_every_batch_norm():
    backbone = _backbone()
    converted = keras_seqnorm.convert_normalization(
        backbone, "ghost", groups_m=1
    )
    layers = converted.layers
    assert not any(
        isinstance(layer, keras.layers.BatchNormalization) for layer in layers
    )
    assert sum(
        isinstance(layer, keras_seqnorm.GhostNormalization) for layer in layers
    ) == 6
    # One ghost batch is BatchNormalization: the same model.
    x, _ = _data()
    for training in (False, True):
        with keras.StatelessScope():
            np.testing.assert_allclose(
                to_numpy(converted(x, training=training)),
                to_numpy(backbone(x, training=training)),
                rtol=1e-4,
                atol=1e-4,
            )


def test_converting_a_task_says_to_convert_its_backbone():
    classifier = keras_hub.models.ImageClassifier(
        backbone=_backbone(), num_classes=NUM_CLASSES
    )
    with pytest.raises(ValueError, match="convert its backbone"):
        keras_seqnorm.convert_normalization(classifier, "sequential")


def test_preset_recipe_with_recalibration(tmp_path):
    # The recipe of docs/keras_hub.md, from a local preset instead of a
    # download: load, convert the backbone, wrap it with the preprocessor,
    # train, recalibrate.
    x, y = _data()
    converter = keras_hub.layers.ResNetImageConverter(
        image_size=(16, 16), scale=1.0
    )
    _backbone().save_to_preset(str(tmp_path))
    keras_hub.models.ResNetImageClassifierPreprocessor(
        image_converter=converter
    ).save_to_preset(str(tmp_path))
    backbone = keras_hub.models.ResNetBackbone.from_preset(str(tmp_path))
    preprocessor_class = keras_hub.models.ResNetImageClassifierPreprocessor
    preprocessor = preprocessor_class.from_preset(str(tmp_path))
    converted = keras_seqnorm.convert_normalization(
        backbone, "sequential", groups_c=4, groups_m=2
    )
    # A plain Functional model: the backbone's extras are gone.
    assert hasattr(backbone, "pyramid_outputs")
    assert not hasattr(converted, "pyramid_outputs")
    classifier = keras_hub.models.ResNetImageClassifier(
        backbone=converted, num_classes=NUM_CLASSES, preprocessor=preprocessor
    )
    classifier.compile(
        optimizer=keras.optimizers.SGD(0.1),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=False,
    )
    classifier.fit(x, y, batch_size=8, shuffle=False, verbose=0)
    images = to_numpy(preprocessor(x))
    summary = keras_seqnorm.recalibrate_statistics(
        classifier, images, batch_size=4, statistics="population"
    )
    assert len(summary) == 6
    path = f"{converted.name}/conv1_bn"
    norm = converted.get_layer("conv1_bn")
    assert isinstance(norm, keras_seqnorm.SequentialNormalization)
    # Population statistics of the group-normalized input of the stem's
    # norm over the 8 images (NumPy; the input from a training-mode pass).
    head = keras.Model(converted.input, norm.input)
    with keras.StatelessScope():
        values = to_numpy(head(images, training=True)).astype(np.float64)
    samples = values.reshape(8, -1, 4, 16)  # 4 channel groups of 16
    normalized = (
        samples - samples.mean(axis=(1, 3), keepdims=True)
    ) / np.sqrt(samples.var(axis=(1, 3), keepdims=True) + norm.epsilon)
    normalized = normalized.reshape(-1, 64)
    assert summary[path].count == len(normalized)
    np.testing.assert_allclose(
        to_numpy(norm.moving_mean), normalized.mean(0), atol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(norm.moving_variance), normalized.var(0), rtol=1e-4
    )
