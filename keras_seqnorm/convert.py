"""Swapping the BatchNormalization layers of an existing model."""

import keras
from keras import ops

# Keras exports no public name for the class of `keras.Model(inputs, outputs)`.
from keras.src.models.functional import Functional

from keras_seqnorm.norms import bound_keywords
from keras_seqnorm.norms import get_norm_layer
from keras_seqnorm.norms import norm_layer_arguments

# BatchNormalization arguments handed to the new norm where it takes them.
# `synchronized` and the `renorm*` arguments are BatchNorm's own.
_CARRIED_ARGUMENTS = (
    "axis",
    "momentum",
    "epsilon",
    "center",
    "scale",
    "beta_initializer",
    "gamma_initializer",
    "moving_mean_initializer",
    "moving_variance_initializer",
    "beta_regularizer",
    "gamma_regularizer",
    "beta_constraint",
    "gamma_constraint",
    "name",
    "trainable",
    "dtype",
)
# Weights copied from a BatchNormalization to the new norm where it has them.
_CARRIED_WEIGHTS = ("gamma", "beta", "moving_mean", "moving_variance")
_GRAPH_MODELS = (keras.Sequential, Functional)
_ADVICE = (
    "Build it with the norm you want instead, creating its norm layers "
    "with `keras_seqnorm.get_norm_layer(norm, **norm_kwargs)(axis=...)`, "
    "or rewrite it as a Functional model and convert that."
)


def _holds_batch_norm(layer):
    return any(
        isinstance(sub, keras.layers.BatchNormalization)
        for sub in layer._flatten_layers(include_self=False, recursive=True)
    )


class _Converter:
    """One conversion: the new norm and the (original, clone) pairs."""

    def __init__(self, norm, norm_kwargs):
        self.make_norm = get_norm_layer(norm, **norm_kwargs)
        accepted = norm_layer_arguments(self.make_norm)
        fixed = bound_keywords(self.make_norm)
        self.carried = [
            key
            for key in _CARRIED_ARGUMENTS
            if key in accepted and key not in fixed
        ]
        self.clones = {}
        self.pairs = []

    def convert_model(self, model, path):
        clone = keras.models.clone_model(
            model,
            clone_function=lambda layer: self.clone_layer(
                layer, f"{path}/{layer.name}"
            ),
        )
        if model.built and not clone.built:
            # A Sequential model without an `Input`, built by a call.
            clone.build(model.input_shape)
        if not model.trainable:
            clone.trainable = False
        return clone

    def clone_layer(self, layer, path):
        # A layer shared between (nested) models is cloned once.
        if id(layer) in self.clones:
            return self.clones[id(layer)]
        if isinstance(layer, _GRAPH_MODELS):
            clone = self.convert_model(layer, path)
        elif isinstance(layer, keras.layers.BatchNormalization):
            config = layer.get_config()
            clone = self.make_norm(
                **{key: config[key] for key in self.carried if key in config}
            )
            self.pairs.append((layer, clone))
        else:
            if _holds_batch_norm(layer):
                raise ValueError(
                    f"The layer {path} is a subclassed model or custom layer "
                    f"({type(layer).__name__}) that creates "
                    "BatchNormalization layers in its own code, which "
                    "convert_normalization cannot clone or reach. "
                    f"{_ADVICE} Received: layer={layer.name!r}"
                )
            clone = type(layer).from_config(layer.get_config())
            self.pairs.append((layer, clone))
        self.clones[id(layer)] = clone
        return clone

    def copy_weights(self):
        for layer, clone in self.pairs:
            if isinstance(layer, keras.layers.BatchNormalization):
                for attribute in _CARRIED_WEIGHTS:
                    source = getattr(layer, attribute, None)
                    target = getattr(clone, attribute, None)
                    if source is not None and target is not None:
                        # A copy: JAX may donate (delete) a shared buffer.
                        target.assign(ops.convert_to_numpy(source))
            elif layer.weights:
                clone.set_weights(layer.get_weights())


def convert_normalization(model, norm="sequential", **norm_kwargs):
    """Returns a copy of `model` with every BatchNormalization replaced.

    Every `keras.layers.BatchNormalization` (subclasses included) of a
    Functional or Sequential model, and of the Functional or Sequential
    models nested in it (e.g. a `keras.applications` backbone inside a
    classifier), becomes the norm `norm`. The new norm keeps the layer's
    name and takes its `axis`, `epsilon`, `center`, `scale`, `trainable` and
    `dtype`, and its `momentum`, initializers, regularizers and constraints
    where it accepts them; `norm_kwargs` (and the arguments a
    `functools.partial` binds) take precedence. The new norm starts from
    the layer's `gamma`, `beta`, `moving_mean` and `moving_variance` where it
    has such weights (`"group"` keeps `gamma` and `beta`; `"none"` keeps
    none). Every other layer is a copy with the same weights, and a model
    compiled before keeps its compile configuration. `model` itself is not
    changed and shares no variable with the result.

    With `norm="ghost", groups_m=1` the result computes what `model`
    computes (up to float rounding), in training and in inference.

    Args:
        model: A Functional or Sequential `keras.Model` that has been built.
        norm: A name from `keras_seqnorm.NORM_LAYERS`, a layer class or a
            `functools.partial`, as for `get_norm_layer`. Defaults to
            `"sequential"`.
        **norm_kwargs: Arguments of the new norm (e.g. `groups_c=4,
            groups_m=8`); each must be accepted by it.

    Returns:
        A new `keras.Model` of the same kind as `model`.

    Raises:
        ValueError: for a subclassed model (its layer graph cannot be
            cloned: build it with the new norm instead), a custom layer
            holding BatchNormalization layers, an unknown norm, or a norm
            argument the norm does not accept. The new norm's own checks
            also apply, e.g. `groups_c` must divide every normalized
            layer's channels.

    Example:

    >>> backbone = keras.applications.ResNet50(weights=None)
    >>> converted = convert_normalization(backbone, "sequential", groups_m=8)
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Argument `model` must be a `keras.Model`. "
            f"Received: model={model!r}"
        )
    if not isinstance(model, _GRAPH_MODELS):
        raise ValueError(
            "convert_normalization can only convert Functional and "
            "Sequential models, whose layer graph it can clone; "
            f"{type(model).__name__} is a subclassed model. {_ADVICE} "
            f"Received: model={model.name!r}"
        )
    converter = _Converter(norm, norm_kwargs)
    converted = converter.convert_model(model, model.name)
    converter.copy_weights()
    return converted
