"""The CIFAR ResNets of He et al. (2016): depth 6n+2, 16-32-64 filters."""

import keras

from keras_seqnorm import validation
from keras_seqnorm.models.blocks import apply_basic_block
from keras_seqnorm.models.blocks import apply_classifier
from keras_seqnorm.models.blocks import apply_conv_norm_relu
from keras_seqnorm.models.blocks import resolve_config
from keras_seqnorm.models.blocks import resolve_image_shape


def ResNetCIFAR(
    depth=56,
    num_classes=10,
    input_shape=None,
    norm="batch",
    norm_kwargs=None,
    classifier_activation=None,
    data_format=None,
    dtype=None,
    name=None,
):
    """Builds a CIFAR ResNet of `depth = 6 * n + 2` layers (20, 32, 44, 56,
    110, ...).

    A 3x3 stem convolution with 16 filters (`stem_conv`, `stem_norm`,
    `stem_relu`), three stages of `n` basic blocks with 16, 32 and 64
    filters (strides 1, 2, 2), global average pooling and a Dense
    classifier. As in the paper's CIFAR experiments, every shortcut is
    parameter-free (option A: subsampling and zero channels), so ResNet-56
    for CIFAR-10 has 0.85M trainable parameters. ResNet-56 is the network of
    the paper's CIFAR-10 experiments.

    Args:
        depth: Number of layers, `6 * n + 2`. Defaults to `56`.
        num_classes: Number of classes. Defaults to `10`.
        input_shape: Input shape without the batch axis. Defaults to `None`:
            `(32, 32, 3)`, or `(3, 32, 32)` for `channels_first`.
        norm: A name from `keras_seqnorm.NORM_LAYERS`, a layer class or a
            `functools.partial`. Defaults to `"batch"`.
        norm_kwargs: Dict of the norm's own arguments (e.g.
            `{"groups_m": 8}`). Defaults to `None`.
        classifier_activation: Activation of the classifier; `None` gives
            logits. Defaults to `None`.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `None`: `keras.config.image_data_format()`.
        dtype: Dtype or dtype policy of every layer. Defaults to `None`.
        name: Model name. Defaults to `None`: `"resnet{depth}"`.

    Returns:
        A functional `keras.Model` mapping images to class scores.

    Reference:
        - [He et al., 2016](https://arxiv.org/abs/1512.03385), "Deep
          Residual Learning for Image Recognition", Section 4.2.

    Example:

    >>> model = ResNetCIFAR(56, norm="ghost", norm_kwargs={"groups_m": 4})
    """
    validation.positive_int("depth", depth)
    if (depth - 2) % 6 or depth < 8:
        raise ValueError(
            "Argument `depth` must be 6 * n + 2 with n >= 1 (8, 20, 32, 44, "
            f"56, 110, ...). Received: depth={depth}"
        )
    config = resolve_config(
        num_classes, classifier_activation, norm, norm_kwargs, data_format,
        dtype,
    )
    input_shape = resolve_image_shape(
        input_shape, (32, 32, 3), config.data_format
    )
    blocks = (depth - 2) // 6

    inputs = keras.Input(shape=input_shape, name="inputs")
    x = apply_conv_norm_relu(inputs, 16, 3, config, "stem")
    for stage, (filters, strides) in enumerate(
        ((16, 1), (32, 2), (64, 2)), start=1
    ):
        for block in range(1, blocks + 1):
            x = apply_basic_block(
                x,
                filters,
                config,
                f"stage{stage}_block{block}",
                strides=strides if block == 1 else 1,
                shortcut="zero_pad",
            )
    outputs = apply_classifier(x, num_classes, config, classifier_activation)
    return keras.Model(inputs, outputs, name=name or f"resnet{depth}")
