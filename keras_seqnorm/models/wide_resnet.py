"""Wide Residual Networks (Zagoruyko and Komodakis, 2016) for CIFAR."""

import keras

from keras_seqnorm import validation
from keras_seqnorm.models.blocks import apply_classifier
from keras_seqnorm.models.blocks import apply_conv
from keras_seqnorm.models.blocks import apply_norm
from keras_seqnorm.models.blocks import apply_relu
from keras_seqnorm.models.blocks import apply_wide_block
from keras_seqnorm.models.blocks import resolve_config
from keras_seqnorm.models.blocks import resolve_image_shape


def WideResNet(
    depth=28,
    width=10,
    dropout_rate=0.0,
    num_classes=10,
    input_shape=None,
    norm="batch",
    norm_kwargs=None,
    classifier_activation=None,
    data_format=None,
    dtype=None,
    name=None,
):
    """Builds a pre-activation Wide ResNet, WRN-`depth`-`width`.

    A 3x3 stem convolution with 16 filters, then three stages of
    `(depth - 4) / 6` wide blocks with `16 * width`, `32 * width` and
    `64 * width` filters (strides 1, 2, 2), each block
    `norm - relu - conv3x3 - norm - relu - dropout - conv3x3` plus a shortcut
    (a 1x1 convolution of the pre-activated input where the shape changes),
    then `final_norm`, `final_relu`, global average pooling and a Dense
    classifier. WRN-28-10 with 100 classes has 36.5M trainable parameters,
    the model of the paper's CIFAR-100 experiments. Layers are named
    `stem_conv`, `stage{s}_block{b}_{conv1,norm1,...}`, `final_norm`,
    `predictions`.

    Args:
        depth: Total depth, `6 * n + 4`. Defaults to `28`.
        width: Widening factor `k`. Defaults to `10`.
        dropout_rate: Dropout between the two convolutions of each block,
            in `[0, 1)`. Defaults to `0.0`.
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
        name: Model name. Defaults to `None`: `"wide_resnet{depth}_{width}"`.

    Returns:
        A functional `keras.Model` mapping images to class scores.

    Reference:
        - [Zagoruyko and Komodakis, 2016](https://arxiv.org/abs/1605.07146),
          "Wide Residual Networks".

    Example:

    >>> model = WideResNet(28, 10, num_classes=100, norm="sequential")
    """
    validation.positive_int("depth", depth)
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(
            "Argument `depth` must be 6 * n + 4 with n >= 1 (10, 16, 22, "
            f"28, ...). Received: depth={depth}"
        )
    validation.positive_int("width", width)
    validation.number("dropout_rate", dropout_rate, low=0.0, high=1.0,
                      high_open=True)
    config = resolve_config(
        num_classes, classifier_activation, norm, norm_kwargs, data_format,
        dtype,
    )
    input_shape = resolve_image_shape(
        input_shape, (32, 32, 3), config.data_format
    )
    blocks = (depth - 4) // 6

    inputs = keras.Input(shape=input_shape, name="inputs")
    x = apply_conv(inputs, 16, 3, config, "stem_conv")
    for stage, (filters, strides) in enumerate(
        ((16 * width, 1), (32 * width, 2), (64 * width, 2)), start=1
    ):
        for block in range(1, blocks + 1):
            x = apply_wide_block(
                x,
                filters,
                config,
                f"stage{stage}_block{block}",
                strides=strides if block == 1 else 1,
                dropout_rate=dropout_rate,
            )
    x = apply_norm(x, config, "final_norm")
    x = apply_relu(x, config, "final_relu")
    outputs = apply_classifier(x, num_classes, config, classifier_activation)
    return keras.Model(
        inputs, outputs, name=name or f"wide_resnet{depth}_{width}"
    )
