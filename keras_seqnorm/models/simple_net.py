"""SimpleNet: the paper's fully connected network for MNIST."""

import dataclasses

import keras

from keras_seqnorm import validation
from keras_seqnorm.models.blocks import apply_norm
from keras_seqnorm.models.blocks import apply_predictions
from keras_seqnorm.models.blocks import apply_relu
from keras_seqnorm.models.blocks import resolve_config


def SimpleNet(
    hidden=(512, 300),
    num_classes=10,
    input_shape=(784,),
    norm="batch",
    norm_kwargs=None,
    classifier_activation=None,
    data_format=None,
    dtype=None,
    name="simplenet",
):
    """Builds SimpleNet, the MLP of the paper's Appendix B.1.

    The input is flattened (`flatten`), so any input shape works, then each
    hidden layer `i` is `hidden{i}_dense - hidden{i}_norm - hidden{i}_relu`,
    and a Dense classifier (`predictions`) follows. The norm normalizes the
    features (the last axis) whatever the data format; with `norm="none"`
    this is the paper's SimpleNet baseline without normalization.

    Args:
        hidden: Units of the hidden layers. Defaults to `(512, 300)`.
        num_classes: Number of classes. Defaults to `10`.
        input_shape: Input shape without the batch axis; every dimension
            known. Defaults to `(784,)`.
        norm: A name from `keras_seqnorm.NORM_LAYERS`, a layer class or a
            `functools.partial`. Defaults to `"batch"`.
        norm_kwargs: Dict of the norm's own arguments (e.g.
            `{"groups_m": 64}`). Defaults to `None`.
        classifier_activation: Activation of the classifier; `None` gives
            logits. Defaults to `None`.
        data_format: Order of image inputs for `Flatten`. Defaults to
            `None`: `keras.config.image_data_format()`.
        dtype: Dtype or dtype policy of every layer. Defaults to `None`.
        name: Model name. Defaults to `"simplenet"`.

    Returns:
        A functional `keras.Model` mapping inputs to class scores.

    Reference:
        - [Dimitriou and Arandjelovic, 2022](https://arxiv.org/abs/2007.01577),
          "Sequential Normalization: Embracing Smaller Sample Sizes for
          Normalization", Appendix B.1.

    Example:

    >>> model = SimpleNet(norm="ghost", norm_kwargs={"groups_m": 64})
    """
    validation.positive_ints("hidden", hidden)
    # `data_format` only orders the flattened features: no convolution.
    config = resolve_config(
        num_classes, classifier_activation, norm, norm_kwargs, data_format,
        dtype, convolutional=False,
    )
    validation.positive_ints("input_shape", input_shape)
    inputs = keras.Input(shape=tuple(input_shape), name="inputs")
    x = keras.layers.Flatten(
        data_format=config.data_format, name="flatten", dtype=config.dtype
    )(inputs)
    # Dense features are on the last axis whatever the image data format.
    dense_config = dataclasses.replace(config, data_format="channels_last")
    for index, units in enumerate(hidden, start=1):
        x = keras.layers.Dense(
            units, name=f"hidden{index}_dense", dtype=config.dtype
        )(x)
        x = apply_norm(x, dense_config, f"hidden{index}_norm")
        x = apply_relu(x, dense_config, f"hidden{index}_relu")
    outputs = apply_predictions(x, num_classes, config, classifier_activation)
    return keras.Model(inputs, outputs, name=name)
