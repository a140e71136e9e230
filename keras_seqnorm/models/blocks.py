"""Building blocks shared by the model builders: `apply_*` functions.

Every builder validates its arguments into one `BlockConfig` (the norm
factory, the data format, the dtype) before it creates any layer; each
`apply_*` function then takes a tensor, the config and a name prefix, and
names its layers `{name}_conv1`, `{name}_norm1`, `{name}_relu1`, ...
"""

import dataclasses
import functools
from typing import Any
from typing import Callable

import keras

from keras_seqnorm import validation
from keras_seqnorm.norms import get_norm_layer

# The builder passes these to the norm factory itself.
_BUILDER_NORM_ARGUMENTS = ("axis", "name", "dtype")


@dataclasses.dataclass(frozen=True)
class BlockConfig:
    """What every block needs, resolved once per model.

    Attributes:
        norm: Norm factory from `get_norm_layer`, `norm_kwargs` bound.
        data_format: `"channels_last"` or `"channels_first"`.
        dtype: Dtype or dtype policy of every layer, or `None`.
    """

    norm: Callable[..., keras.layers.Layer]
    data_format: str
    dtype: Any = None

    @property
    def channel_axis(self):
        return -1 if self.data_format == "channels_last" else 1


@functools.cache
def _tensorflow_runs_channels_first():
    import tensorflow as tf

    # Eagerly, even inside a `tf.function`, on the default device.
    with tf.init_scope():
        try:
            tf.nn.conv2d(
                tf.zeros((1, 1, 1, 1)),
                tf.zeros((1, 1, 1, 1)),
                strides=1,
                padding="VALID",
                data_format="NCHW",
            )
        except tf.errors.UnimplementedError:
            return False
    return True


def channels_first_convolutions_run():
    """Whether the backend can run a `channels_first` `Conv2D` here.

    JAX and PyTorch always can. TensorFlow's CPU convolutions take
    channels first only through oneDNN, which TensorFlow turns on by default
    only on CPUs with AVX-512 (`TF_ENABLE_ONEDNN_OPTS=0` turns it off,
    `TF_ENABLE_ONEDNN_OPTS=1` on); elsewhere, without a GPU, the first call
    fails with "The Conv2D op currently only supports the NHWC tensor format
    on the CPU". TensorFlow is asked once, with a 1x1 convolution.
    """
    if keras.backend.backend() != "tensorflow":
        return True
    return _tensorflow_runs_channels_first()


def resolve_config(num_classes, classifier_activation, norm, norm_kwargs,
                   data_format, dtype, convolutional=True):
    """Validates the arguments every builder shares into a `BlockConfig`.

    Args:
        num_classes: Number of classes, a positive integer.
        classifier_activation: `None` or a Keras activation (name).
        norm: A norm name, class or partial, for `get_norm_layer`.
        norm_kwargs: `None` or a dict of the norm's own arguments; `axis`,
            `name` and `dtype` are set by the builder and not allowed here.
        data_format: `None` (the Keras config's `image_data_format()`),
            `"channels_last"` or `"channels_first"`.
        dtype: `None`, a dtype name or a dtype policy (name).
        convolutional: Whether the model convolves in `data_format` (not
            the case of an MLP, which only flattens its input), so that
            `"channels_first"` is refused where the backend cannot run it
            (`channels_first_convolutions_run`).

    Returns:
        A `BlockConfig`.
    """
    validation.positive_int("num_classes", num_classes)
    # Raises a ValueError for an unknown activation.
    keras.activations.get(classifier_activation)
    if norm_kwargs is None:
        norm_kwargs = {}
    if not isinstance(norm_kwargs, dict):
        raise ValueError(
            "Argument `norm_kwargs` must be a dict or None. "
            f"Received: norm_kwargs={norm_kwargs!r}"
        )
    reserved = sorted(set(norm_kwargs) & set(_BUILDER_NORM_ARGUMENTS))
    if reserved:
        raise ValueError(
            f"Argument `norm_kwargs` must not set {', '.join(reserved)}: the "
            "builder sets the axis from `data_format`, the dtype from "
            "`dtype` and a name per layer. "
            f"Received: norm_kwargs={norm_kwargs!r}"
        )
    if data_format is None:
        data_format = keras.config.image_data_format()
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            "Argument `data_format` must be 'channels_last', "
            f"'channels_first' or None. Received: data_format={data_format!r}"
        )
    if (
        convolutional
        and data_format == "channels_first"
        and not channels_first_convolutions_run()
    ):
        raise ValueError(
            "TensorFlow cannot run channels_first convolutions on this "
            "machine's CPU: they need oneDNN, which TensorFlow enables by "
            "default only on CPUs with AVX-512 (TF_ENABLE_ONEDNN_OPTS=1, set "
            "before TensorFlow is imported, forces it), and no GPU is "
            "visible. Use data_format='channels_last', a GPU, or "
            "KERAS_BACKEND=jax. "
            f"Received: data_format={data_format!r}"
        )
    # Raises a ValueError for an unknown dtype or policy.
    keras.dtype_policies.get(dtype)
    return BlockConfig(
        norm=get_norm_layer(norm, **norm_kwargs),
        data_format=data_format,
        dtype=dtype,
    )


def resolve_image_shape(input_shape, default, data_format):
    """Validates an image `input_shape`; `None` gives `default` (channels
    last), transposed for `channels_first`."""
    if input_shape is None:
        if data_format == "channels_first":
            return (default[-1],) + tuple(default[:-1])
        return tuple(default)
    channel = -1 if data_format == "channels_last" else 0
    if (
        not isinstance(input_shape, (list, tuple))
        or len(input_shape) != 3
        or any(
            d is not None
            and (isinstance(d, bool) or not isinstance(d, int) or d < 1)
            for d in input_shape
        )
        or input_shape[channel] is None
    ):
        raise ValueError(
            "Argument `input_shape` must be a tuple of 3 positive integers "
            "(spatial sizes may be None; the channels, known, come "
            f"{'last' if channel else 'first'} for {data_format}). "
            f"Received: input_shape={input_shape!r}"
        )
    return tuple(input_shape)


def apply_norm(x, config, name):
    """The configured norm on the channel axis, named `name`."""
    return config.norm(
        axis=config.channel_axis, name=name, dtype=config.dtype
    )(x)


def apply_relu(x, config, name):
    return keras.layers.ReLU(name=name, dtype=config.dtype)(x)


def apply_conv(x, filters, kernel_size, config, name, strides=1):
    """A bias-free convolution, padded like PyTorch's `padding=k // 2`.

    Strided convolutions get an explicit symmetric `ZeroPadding2D`
    (`{name}_pad`): Keras's `"same"` pads asymmetrically for even inputs.
    """
    padding = "same"
    if strides > 1 and kernel_size > 1:
        x = keras.layers.ZeroPadding2D(
            kernel_size // 2,
            data_format=config.data_format,
            name=f"{name}_pad",
            dtype=config.dtype,
        )(x)
        padding = "valid"
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding=padding,
        use_bias=False,
        kernel_initializer="he_normal",
        data_format=config.data_format,
        name=name,
        dtype=config.dtype,
    )(x)


def apply_conv_norm_relu(x, filters, kernel_size, config, name, suffix="",
                         strides=1):
    """`{name}_conv{suffix}`, `{name}_norm{suffix}`, `{name}_relu{suffix}`."""
    x = apply_conv(
        x, filters, kernel_size, config, f"{name}_conv{suffix}", strides
    )
    x = apply_norm(x, config, f"{name}_norm{suffix}")
    return apply_relu(x, config, f"{name}_relu{suffix}")


def apply_projection_shortcut(x, filters, config, name, strides=1):
    """A 1x1 convolution and a norm (`{name}_shortcut_conv`/`_norm`)."""
    x = apply_conv(x, filters, 1, config, f"{name}_shortcut_conv", strides)
    return apply_norm(x, config, f"{name}_shortcut_norm")


def apply_zero_pad_shortcut(x, filters, config, name, strides=1):
    """He et al.'s parameter-free option A: subsample, zero-pad channels.

    `x[:, ::s, ::s]`, then `(filters - C) / 2` zero channels on each side,
    as the CIFAR ResNets (and their usual PyTorch ports) do.
    """
    channels = x.shape[config.channel_axis]
    if strides > 1:
        x = keras.layers.MaxPooling2D(
            1,
            strides,
            data_format=config.data_format,
            name=f"{name}_shortcut_pool",
            dtype=config.dtype,
        )(x)
    if filters == channels:
        return x
    before = (filters - channels) // 2
    after = filters - channels - before
    channels_last = config.data_format == "channels_last"
    if channels_last:
        x = keras.layers.Permute(
            (3, 1, 2), name=f"{name}_shortcut_to_cf", dtype=config.dtype
        )(x)
    # On (batch, C, H, W), channels-last ZeroPadding2D pads C and H.
    x = keras.layers.ZeroPadding2D(
        ((before, after), (0, 0)),
        data_format="channels_last",
        name=f"{name}_shortcut_pad",
        dtype=config.dtype,
    )(x)
    if channels_last:
        x = keras.layers.Permute(
            (2, 3, 1), name=f"{name}_shortcut_to_cl", dtype=config.dtype
        )(x)
    return x


def apply_basic_block(x, filters, config, name, strides=1,
                      shortcut="projection"):
    """ResNet v1 basic block: two 3x3 convolutions, each normalized.

    `conv1 (strides) - norm1 - relu1 - conv2 - norm2`, plus the shortcut,
    then `{name}_out` (ReLU). The shortcut is the input when its shape
    matches, else a projection (`"projection"`, ImageNet ResNets) or He et
    al.'s zero padding (`"zero_pad"`, CIFAR ResNets).
    """
    channels = x.shape[config.channel_axis]
    residual = apply_conv_norm_relu(x, filters, 3, config, name, "1", strides)
    residual = apply_conv(residual, filters, 3, config, f"{name}_conv2")
    residual = apply_norm(residual, config, f"{name}_norm2")
    if strides > 1 or channels != filters:
        if shortcut == "zero_pad":
            x = apply_zero_pad_shortcut(x, filters, config, name, strides)
        else:
            x = apply_projection_shortcut(x, filters, config, name, strides)
    x = keras.layers.Add(name=f"{name}_add", dtype=config.dtype)([x, residual])
    return apply_relu(x, config, f"{name}_out")


def apply_bottleneck_block(x, filters, config, name, strides=1,
                           expansion=4):
    """ResNet v1.5 bottleneck: the stride is on the 3x3 convolution.

    `conv1 (1x1) - norm1 - relu1 - conv2 (3x3, strides) - norm2 - relu2 -
    conv3 (1x1, expansion * filters) - norm3`, plus the input or a
    projection, then `{name}_out` (ReLU).
    """
    channels = x.shape[config.channel_axis]
    residual = apply_conv_norm_relu(x, filters, 1, config, name, "1")
    residual = apply_conv_norm_relu(
        residual, filters, 3, config, name, "2", strides
    )
    residual = apply_conv(
        residual, expansion * filters, 1, config, f"{name}_conv3"
    )
    residual = apply_norm(residual, config, f"{name}_norm3")
    if strides > 1 or channels != expansion * filters:
        x = apply_projection_shortcut(
            x, expansion * filters, config, name, strides
        )
    x = keras.layers.Add(name=f"{name}_add", dtype=config.dtype)([x, residual])
    return apply_relu(x, config, f"{name}_out")


def apply_wide_block(x, filters, config, name, strides=1, dropout_rate=0.0):
    """Pre-activation wide residual block (Zagoruyko and Komodakis).

    `norm1 - relu1 - conv1 (strides) - norm2 - relu2 - dropout - conv2`,
    added to the input, or, when the shape changes, to a 1x1 convolution
    (`{name}_shortcut_conv`) of the pre-activated input `relu1`.
    """
    channels = x.shape[config.channel_axis]
    activated = apply_norm(x, config, f"{name}_norm1")
    activated = apply_relu(activated, config, f"{name}_relu1")
    residual = apply_conv(
        activated, filters, 3, config, f"{name}_conv1", strides
    )
    residual = apply_norm(residual, config, f"{name}_norm2")
    residual = apply_relu(residual, config, f"{name}_relu2")
    if dropout_rate > 0:
        residual = keras.layers.Dropout(
            dropout_rate, name=f"{name}_dropout", dtype=config.dtype
        )(residual)
    residual = apply_conv(residual, filters, 3, config, f"{name}_conv2")
    if strides > 1 or channels != filters:
        x = apply_conv(
            activated, filters, 1, config, f"{name}_shortcut_conv", strides
        )
    return keras.layers.Add(name=f"{name}_add", dtype=config.dtype)(
        [x, residual]
    )


def apply_classifier(x, num_classes, config, activation=None):
    """`avg_pool` (global average) and the `predictions` Dense layer."""
    x = keras.layers.GlobalAveragePooling2D(
        data_format=config.data_format, name="avg_pool", dtype=config.dtype
    )(x)
    return apply_predictions(x, num_classes, config, activation)


def apply_predictions(x, num_classes, config, activation=None):
    """The `predictions` Dense layer: logits unless `activation` is set."""
    return keras.layers.Dense(
        num_classes,
        activation=activation,
        name="predictions",
        dtype=config.dtype,
    )(x)
