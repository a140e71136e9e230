"""ImageNet ResNets v1.5 (He et al., 2016): ResNet-18, -34 and -50.

ResNet-18 v1.5 is the network of the paper's ImageNet experiments.
"""

import keras

from keras_seqnorm.models.blocks import apply_basic_block
from keras_seqnorm.models.blocks import apply_bottleneck_block
from keras_seqnorm.models.blocks import apply_classifier
from keras_seqnorm.models.blocks import apply_conv_norm_relu
from keras_seqnorm.models.blocks import resolve_config
from keras_seqnorm.models.blocks import resolve_image_shape

_DOCSTRING = """Builds {title} v1.5 for ImageNet.

    The torchvision architecture: a 7x7 stride-2 stem convolution with 64
    filters (`stem_conv`, `stem_norm`, `stem_relu`) and a 3x3 stride-2 max
    pool (`stem_pool`), four stages of {blocks} {kind} blocks with 64, 128,
    256 and 512 {width} (strides 1, 2, 2, 2; the stride on the 3x3
    convolution, and a 1x1 convolution and norm as the shortcut where the
    shape changes), global average pooling and a Dense classifier.
    Convolutions have no bias and are padded like PyTorch's. With 1000
    classes it has {params} trainable parameters, the torchvision count.

    Args:
        num_classes: Number of classes. Defaults to `1000`.
        input_shape: Input shape without the batch axis. Defaults to `None`:
            `(224, 224, 3)`, or `(3, 224, 224)` for `channels_first`.
        norm: A name from `keras_seqnorm.NORM_LAYERS`, a layer class or a
            `functools.partial`. Defaults to `"batch"`.
        norm_kwargs: Dict of the norm's own arguments (e.g.
            `{{"groups_m": 8}}`). Defaults to `None`.
        classifier_activation: Activation of the classifier; `None` gives
            logits. Defaults to `None`.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `None`: `keras.config.image_data_format()`.
        dtype: Dtype or dtype policy of every layer. Defaults to `None`.
        name: Model name. Defaults to `None`: `"{name}"`.

    Returns:
        A functional `keras.Model` mapping images to class scores.

    Reference:
        - [He et al., 2016](https://arxiv.org/abs/1512.03385), "Deep
          Residual Learning for Image Recognition"; v1.5 as in torchvision
          and NVIDIA's DeepLearningExamples.

    Example:

    >>> model = {name_upper}(norm="sequential")
    """


def _resnet(
    block,
    blocks_per_stage,
    default_name,
    num_classes,
    input_shape,
    norm,
    norm_kwargs,
    classifier_activation,
    data_format,
    dtype,
    name,
):
    config = resolve_config(
        num_classes, classifier_activation, norm, norm_kwargs, data_format,
        dtype,
    )
    input_shape = resolve_image_shape(
        input_shape, (224, 224, 3), config.data_format
    )

    inputs = keras.Input(shape=input_shape, name="inputs")
    x = apply_conv_norm_relu(inputs, 64, 7, config, "stem", strides=2)
    x = keras.layers.ZeroPadding2D(
        1,
        data_format=config.data_format,
        name="stem_pool_pad",
        dtype=config.dtype,
    )(x)
    x = keras.layers.MaxPooling2D(
        3,
        2,
        data_format=config.data_format,
        name="stem_pool",
        dtype=config.dtype,
    )(x)
    for stage, (filters, blocks) in enumerate(
        zip((64, 128, 256, 512), blocks_per_stage), start=1
    ):
        for index in range(1, blocks + 1):
            x = block(
                x,
                filters,
                config,
                f"stage{stage}_block{index}",
                strides=2 if stage > 1 and index == 1 else 1,
            )
    outputs = apply_classifier(x, num_classes, config, classifier_activation)
    return keras.Model(inputs, outputs, name=name or default_name)


def ResNet18(
    num_classes=1000,
    input_shape=None,
    norm="batch",
    norm_kwargs=None,
    classifier_activation=None,
    data_format=None,
    dtype=None,
    name=None,
):
    return _resnet(
        apply_basic_block, (2, 2, 2, 2), "resnet18", num_classes,
        input_shape, norm, norm_kwargs, classifier_activation, data_format,
        dtype, name,
    )


def ResNet34(
    num_classes=1000,
    input_shape=None,
    norm="batch",
    norm_kwargs=None,
    classifier_activation=None,
    data_format=None,
    dtype=None,
    name=None,
):
    return _resnet(
        apply_basic_block, (3, 4, 6, 3), "resnet34", num_classes,
        input_shape, norm, norm_kwargs, classifier_activation, data_format,
        dtype, name,
    )


def ResNet50(
    num_classes=1000,
    input_shape=None,
    norm="batch",
    norm_kwargs=None,
    classifier_activation=None,
    data_format=None,
    dtype=None,
    name=None,
):
    return _resnet(
        apply_bottleneck_block, (3, 4, 6, 3), "resnet50", num_classes,
        input_shape, norm, norm_kwargs, classifier_activation, data_format,
        dtype, name,
    )


ResNet18.__doc__ = _DOCSTRING.format(
    title="ResNet-18", blocks="2-2-2-2", kind="basic", width="filters",
    params="11,689,512", name="resnet18", name_upper="ResNet18",
)
ResNet34.__doc__ = _DOCSTRING.format(
    title="ResNet-34", blocks="3-4-6-3", kind="basic", width="filters",
    params="21,797,672", name="resnet34", name_upper="ResNet34",
)
ResNet50.__doc__ = _DOCSTRING.format(
    title="ResNet-50", blocks="3-4-6-3", kind="bottleneck",
    width="bottleneck filters (outputs 4 times as wide)",
    params="25,557,032", name="resnet50", name_upper="ResNet50",
)
