"""Model builders: factory functions returning functional `keras.Model`s.

Every builder takes `norm="batch"` (a name from
`keras_seqnorm.NORM_LAYERS`, a layer class or a `functools.partial`),
`norm_kwargs`, `num_classes`, `input_shape`, `classifier_activation`
(`None`: logits), `data_format`, `dtype` and `name`. Where TensorFlow
cannot run a `channels_first` convolution (a CPU without oneDNN, i.e. without
AVX-512 or with `TF_ENABLE_ONEDNN_OPTS=0`, and no GPU), the convolutional
builders refuse `data_format="channels_first"` with a `ValueError` before
building any layer.

```python
model = keras_seqnorm.models.WideResNet(
    28, 10, num_classes=100, norm="sequential",
    norm_kwargs={"groups_c": 4, "groups_m": 8},
)
model = keras_seqnorm.models.get_model("resnet56", norm="ghost")
```

The builders are imported on first use: the names of `MODELS` need no
Keras.
"""

from keras_seqnorm.norms import canonical_name
from keras_seqnorm.utils import LazyRegistry
from keras_seqnorm.utils import lazy_attributes

_BUILDERS = {
    "ResNet18": "keras_seqnorm.models.resnet:ResNet18",
    "ResNet34": "keras_seqnorm.models.resnet:ResNet34",
    "ResNet50": "keras_seqnorm.models.resnet:ResNet50",
    "ResNetCIFAR": "keras_seqnorm.models.resnet_cifar:ResNetCIFAR",
    "SimpleCNN": "keras_seqnorm.models.simple_cnn:SimpleCNN",
    "SimpleNet": "keras_seqnorm.models.simple_net:SimpleNet",
    "WideResNet": "keras_seqnorm.models.wide_resnet:WideResNet",
}
__getattr__, __dir__ = lazy_attributes(__name__, _BUILDERS)

MODELS = LazyRegistry(
    {
        "wrn28_10": (_BUILDERS["WideResNet"], {"depth": 28, "width": 10}),
        "wrn16_4": (_BUILDERS["WideResNet"], {"depth": 16, "width": 4}),
        "resnet20": (_BUILDERS["ResNetCIFAR"], {"depth": 20}),
        "resnet56": (_BUILDERS["ResNetCIFAR"], {"depth": 56}),
        "resnet110": (_BUILDERS["ResNetCIFAR"], {"depth": 110}),
        "resnet18": _BUILDERS["ResNet18"],
        "resnet34": _BUILDERS["ResNet34"],
        "resnet50": _BUILDERS["ResNet50"],
        "simplenet": _BUILDERS["SimpleNet"],
        "simplecnn": _BUILDERS["SimpleCNN"],
    }
)
"""Model names for `get_model` -> builders (a read-only mapping whose
builders are imported on first lookup). `resnet20/56/110` are the CIFAR
ResNets, `resnet18/34/50` the ImageNet ones."""


def get_model(name, /, **kwargs):
    """Builds the model called `name` from `MODELS`.

    Args:
        name: A name from `MODELS` (case, underscores and hyphens are
            ignored): wrn28_10, wrn16_4, resnet20, resnet56, resnet110,
            resnet18, resnet34, resnet50, simplenet, simplecnn.
        **kwargs: Arguments of the builder (`num_classes`, `input_shape`,
            `norm`, `norm_kwargs`, `dtype`, ..., and `name`, the model's
            name).

    Returns:
        A functional `keras.Model`, named `name` unless `kwargs` names it.

    Example:

    >>> model = get_model("resnet20", num_classes=10, norm="sequential")
    """
    table = {canonical_name(key): key for key in MODELS}
    key = table.get(canonical_name(name)) if isinstance(name, str) else None
    if key is None:
        raise ValueError(
            f"Unknown model {name!r}. Valid names: {', '.join(MODELS)}. "
            f"Received: name={name!r}"
        )
    kwargs.setdefault("name", key)
    return MODELS[key](**kwargs)


__all__ = [
    "MODELS",
    "ResNet18",
    "ResNet34",
    "ResNet50",
    "ResNetCIFAR",
    "SimpleCNN",
    "SimpleNet",
    "WideResNet",
    "get_model",
]
