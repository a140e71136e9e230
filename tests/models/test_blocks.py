import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_seqnorm import models
from keras_seqnorm.models import blocks
from keras_seqnorm.models.blocks import apply_conv
from keras_seqnorm.models.blocks import channels_first_convolutions_run
from keras_seqnorm.models.blocks import resolve_config
from keras_seqnorm.models.blocks import resolve_image_shape
from tests.helpers import to_numpy

BUILDERS = [
    models.WideResNet,
    models.ResNetCIFAR,
    models.ResNet18,
    models.ResNet34,
    models.ResNet50,
    models.SimpleNet,
    models.SimpleCNN,
]


def _config(**kwargs):
    arguments = dict(
        num_classes=10, classifier_activation=None, norm="batch",
        norm_kwargs=None, data_format=None, dtype=None,
    )
    return resolve_config(**{**arguments, **kwargs})


def test_resolve_config():
    # Not convolutional: channels_first is allowed on every machine.
    config = _config(norm="ghost", norm_kwargs={"groups_m": 2},
                     data_format="channels_first", dtype="mixed_float16",
                     convolutional=False)
    assert config.channel_axis == 1
    layer = config.norm(axis=config.channel_axis)
    assert (layer.groups_m, layer.axis) == (2, 1)
    config = _config()
    assert config.data_format == keras.config.image_data_format()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"num_classes": 0}, "Received: num_classes=0"),
        ({"num_classes": True}, "Received: num_classes=True"),
        ({"classifier_activation": "nope"}, "nope"),
        ({"norm": "batchnorm"}, "Unknown norm 'batchnorm'"),
        ({"norm": "batch", "norm_kwargs": {"groups_m": 2}},
         "does not accept the argument.*groups_m"),
        ({"norm_kwargs": {"axis": 1}},
         r"must not set axis.*Received: norm_kwargs=\{'axis': 1\}"),
        ({"norm_kwargs": {"name": "x", "dtype": "float16"}},
         "must not set dtype, name"),
        ({"norm_kwargs": [("groups_m", 2)]}, "must be a dict or None"),
        ({"data_format": "NHWC"}, "Received: data_format='NHWC'"),
        ({"dtype": "float17"}, "float17"),
    ],
)
def test_resolve_config_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _config(**kwargs)


def test_resolve_image_shape():
    assert resolve_image_shape(None, (32, 32, 3), "channels_last") == (
        32, 32, 3
    )
    assert resolve_image_shape(None, (32, 32, 3), "channels_first") == (
        3, 32, 32
    )
    assert resolve_image_shape([None, None, 3], (32, 32, 3),
                               "channels_last") == (None, None, 3)


@pytest.mark.parametrize(
    "shape, data_format",
    [((32, 32), "channels_last"), ((32, 32, None), "channels_last"),
     ((None, 32, 32), "channels_first"), ((32, 0, 3), "channels_last"),
     ("32x32x3", "channels_last")],
)
def test_resolve_image_shape_errors(shape, data_format):
    with pytest.raises(ValueError, match="Received: input_shape="):
        resolve_image_shape(shape, (32, 32, 3), data_format)


def test_channels_first_probe_matches_a_real_convolution():
    layer = keras.layers.Conv2D(2, 3, data_format="channels_first")
    x = np.ones((1, 3, 5, 5), "float32")
    try:
        ran = to_numpy(layer(x)).shape == (1, 2, 3, 3)
    except Exception as error:  # TensorFlow's UnimplementedError.
        if "only supports the NHWC tensor format" not in str(error):
            raise
        ran = False
    assert channels_first_convolutions_run() is ran


CHANNELS_FIRST_REFUSED = (
    r"^TensorFlow cannot run channels_first convolutions on this machine's "
    r"CPU: .*AVX-512.*TF_ENABLE_ONEDNN_OPTS=1.*Use "
    r"data_format='channels_last', a GPU, or KERAS_BACKEND=jax\. Received: "
    r"data_format='channels_first'$"
)


@pytest.mark.parametrize("builder", BUILDERS)
def test_channels_first_refused_where_it_cannot_run(builder, monkeypatch):
    def no_layers(*args, **kwargs):
        raise AssertionError("a layer was built before validation")

    monkeypatch.setattr(blocks, "channels_first_convolutions_run",
                        lambda: False)
    if builder is models.SimpleNet:
        # No convolution: channels_first only orders the flattened input.
        model = builder(input_shape=(1, 4, 4), data_format="channels_first")
        assert model.get_layer("flatten").data_format == "channels_first"
        return
    monkeypatch.setattr(keras, "Input", no_layers)
    with pytest.raises(ValueError, match=CHANNELS_FIRST_REFUSED):
        builder(data_format="channels_first")
    # The default data format counts too.
    monkeypatch.setattr(keras.config, "image_data_format",
                        lambda: "channels_first")
    with pytest.raises(ValueError, match=CHANNELS_FIRST_REFUSED):
        builder()


@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="TensorFlow's oneDNN switch; other backends always run "
    "channels_first",
)
def test_without_onednn_tensorflow_builders_refuse_channels_first():
    # What a CPU without AVX-512 does by default: TensorFlow's own Conv2D
    # takes channels first only through oneDNN.
    script = """
        import keras
        from keras_seqnorm.models import get_model
        from keras_seqnorm.models.blocks import channels_first_convolutions_run
        layer = keras.layers.Conv2D(1, 1, data_format="channels_first")
        try:
            layer(keras.ops.ones((1, 1, 2, 2)))
        except Exception as error:
            print("Conv2D:", type(error).__name__)
        print("probe:", channels_first_convolutions_run())
        try:
            get_model("resnet20", data_format="channels_first")
        except ValueError as error:
            print("get_model:", error)
    """
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "tensorflow",
             "TF_ENABLE_ONEDNN_OPTS": "0", "CUDA_VISIBLE_DEVICES": "-1",
             "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[:2] == ["Conv2D: UnimplementedError", "probe: False"]
    assert len(lines) == 3
    assert re.match(CHANNELS_FIRST_REFUSED, lines[2].removeprefix(
        "get_model: "))


def test_strided_conv_pads_like_pytorch():
    # PyTorch's Conv2d(k=3, stride=2, padding=1) pads one row and column on
    # every side: a valid convolution of the padded input.
    x = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    inputs = keras.Input((8, 8, 3))
    conv = apply_conv(inputs, 4, 3, _config(data_format="channels_last"),
                      "conv", strides=2)
    model = keras.Model(inputs, conv)
    reference = keras.layers.Conv2D(4, 3, strides=2, use_bias=False)
    reference.build((None, 10, 10, 3))
    reference.set_weights(model.get_layer("conv").get_weights())
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    np.testing.assert_allclose(
        to_numpy(model(x)), to_numpy(reference(padded)), atol=1e-5
    )


@pytest.mark.parametrize("builder", BUILDERS)
def test_arguments_are_checked_before_any_layer(builder, monkeypatch):
    def no_layers(*args, **kwargs):
        raise AssertionError("a layer was built before validation")

    monkeypatch.setattr(keras, "Input", no_layers)
    with pytest.raises(ValueError, match="groups_x"):
        builder(norm="sequential", norm_kwargs={"groups_x": 1})


SMALL = {
    models.WideResNet: dict(depth=10, width=1),
    models.ResNetCIFAR: dict(depth=8),
    models.SimpleNet: dict(hidden=(8,), input_shape=(4, 4, 1)),
}


# ResNet34 and ResNet50 share ResNet18's code; they are slow to build.
@pytest.mark.parametrize("builder", BUILDERS[:3] + BUILDERS[5:])
def test_dtype_reaches_every_layer(builder):
    kwargs = {"input_shape": (32, 32, 3), **SMALL.get(builder, {})}
    model = builder(
        norm="sequential", dtype="mixed_float16", num_classes=3, **kwargs
    )
    policies = {
        layer.dtype_policy.name for layer in model.layers
        if not isinstance(layer, keras.layers.InputLayer)
    }
    assert policies == {"mixed_float16"}
    assert all(w.dtype == "float32" for w in model.weights)
