"""Swapping the BatchNormalization layers of an existing model."""

import inspect

import keras
from keras import ops

from keras_seqnorm.norms import bound_keywords
from keras_seqnorm.norms import get_norm_layer
from keras_seqnorm.norms import norm_layer_arguments
from keras_seqnorm.utils import iter_sublayers

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
# `keras.Model(inputs, outputs)` builds a `Functional` model, which Keras
# exports only as its public base class `keras.Function`; a subclassed model
# is neither.
_GRAPH_MODELS = (keras.Sequential, keras.Function)
_ADVICE = (
    "Build it with the norm you want instead, creating its norm layers "
    "with `keras_seqnorm.get_norm_layer(norm, **norm_kwargs)(axis=...)`, "
    "or rewrite it as a Functional model and convert that."
)


def _holds_batch_norm(layer):
    return any(
        isinstance(sub, keras.layers.BatchNormalization)
        for _, sub in iter_sublayers(layer)
    )


def _call_keywords(layer):
    """The keyword arguments `layer.call` accepts; `None` if any."""
    parameters = inspect.signature(layer.call).parameters.values()
    if any(p.kind is p.VAR_KEYWORD for p in parameters):
        return None
    return {
        p.name
        for p in parameters
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }


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
        self.norms = set()

    def convert_model(self, model, path):
        clone = keras.models.clone_model(
            model,
            clone_function=lambda layer: self.clone_layer(
                layer, f"{path}/{layer.name}"
            ),
            # Sequential models call their layers without keywords.
            call_function=(
                None if isinstance(model, keras.Sequential)
                else self.call_layer
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
            self.norms.add(id(clone))
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

    def call_layer(self, layer, *args, **kwargs):
        # A Functional model replays the keywords of each recorded call:
        # BatchNormalization's `mask`, even when None. A new norm that takes
        # no mask gets none, as when a model is built with it (Keras then
        # passes the mask on, or drops it, by `supports_masking`).
        if id(layer) in self.norms:
            accepted = _call_keywords(layer)
            if accepted is not None:
                kwargs = {
                    key: value
                    for key, value in kwargs.items()
                    if key in accepted
                }
        return layer(*args, **kwargs)

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
            cloned: build it with the new norm instead), a keras-hub task
            (convert its `backbone` instead), a custom layer
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
    if type(model).__module__.startswith("keras_hub") and hasattr(
        model, "backbone"
    ):
        raise ValueError(
            f"convert_normalization would turn the keras-hub task "
            f"{type(model).__name__} into a plain Functional model without "
            "its preprocessor; convert its backbone and wrap that in a task "
            "again: `keras_hub.models.ImageClassifier(backbone="
            "convert_normalization(task.backbone, ...), num_classes=...)`. "
            f"Received: model={model.name!r}"
        )
    converter = _Converter(norm, norm_kwargs)
    converted = converter.convert_model(model, model.name)
    converter.copy_weights()
    return converted
