"""SimpleCNN: a small convolutional network for small images."""

import keras

from keras_seqnorm import validation
from keras_seqnorm.models.blocks import apply_classifier
from keras_seqnorm.models.blocks import apply_conv_norm_relu
from keras_seqnorm.models.blocks import resolve_config
from keras_seqnorm.models.blocks import resolve_image_shape


def SimpleCNN(
    filters=(16, 32),
    num_classes=10,
    input_shape=None,
    norm="batch",
    norm_kwargs=None,
    classifier_activation=None,
    data_format=None,
    dtype=None,
    name="simplecnn",
):
    """Builds a small CNN for 8x8 to 32x32 images (the offline digits demo).

    Stage `s` holds two `conv3x3 - norm - relu` units
    (`stage{s}_{conv,norm,relu}{1,2}`) with `filters[s - 1]` filters; a 2x2
    max pool (`stage{s}_pool`) separates the stages; global average pooling
    and a Dense classifier follow. The default widths are multiples of 8, so
    `SequentialNormalization(groups_c=4)` fits every norm layer. The input's
    height and width must be at least `2 ** (len(filters) - 1)`.

    Args:
        filters: Filters of each stage. Defaults to `(16, 32)`.
        num_classes: Number of classes. Defaults to `10`.
        input_shape: Input shape without the batch axis. Defaults to `None`:
            `(16, 16, 1)`, or `(1, 16, 16)` for `channels_first`.
        norm: A name from `keras_seqnorm.NORM_LAYERS`, a layer class or a
            `functools.partial`. Defaults to `"batch"`.
        norm_kwargs: Dict of the norm's own arguments (e.g.
            `{"groups_m": 4}`). Defaults to `None`.
        classifier_activation: Activation of the classifier; `None` gives
            logits. Defaults to `None`.
        data_format: `"channels_last"` or `"channels_first"`. Defaults to
            `None`: `keras.config.image_data_format()`.
        dtype: Dtype or dtype policy of every layer. Defaults to `None`.
        name: Model name. Defaults to `"simplecnn"`.

    Returns:
        A functional `keras.Model` mapping images to class scores.

    Example:

    >>> model = SimpleCNN(input_shape=(8, 8, 1), norm="sequential")
    """
    validation.positive_ints("filters", filters)
    config = resolve_config(
        num_classes, classifier_activation, norm, norm_kwargs, data_format,
        dtype,
    )
    input_shape = resolve_image_shape(
        input_shape, (16, 16, 1), config.data_format
    )
    spatial = input_shape[:-1] if config.channel_axis == -1 else input_shape[1:]
    smallest = 2 ** (len(filters) - 1)
    if any(size is not None and size < smallest for size in spatial):
        raise ValueError(
            f"Argument `input_shape` must have a height and width of at least "
            f"{smallest} for {len(filters)} stages. "
            f"Received: input_shape={input_shape}"
        )

    inputs = keras.Input(shape=input_shape, name="inputs")
    x = inputs
    for stage, width in enumerate(filters, start=1):
        if stage > 1:
            x = keras.layers.MaxPooling2D(
                2,
                data_format=config.data_format,
                name=f"stage{stage - 1}_pool",
                dtype=config.dtype,
            )(x)
        for unit in ("1", "2"):
            x = apply_conv_norm_relu(
                x, width, 3, config, f"stage{stage}", unit
            )
    outputs = apply_classifier(x, num_classes, config, classifier_activation)
    return keras.Model(inputs, outputs, name=name)
