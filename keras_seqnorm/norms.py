"""The norm registry: one mapping from names to norm layer factories.

`get_norm_layer(norm, **norm_kwargs)` resolves a name, a layer class or a
`functools.partial` of one into a factory. Every factory accepts the core
arguments `axis`, `epsilon`, `center`, `scale`, `name` and `dtype`, so model
builders and the converter create any norm the same way:

```python
make_norm = get_norm_layer("sequential", groups_c=4, groups_m=8)
layer = make_norm(axis=-1, name="stage1_block1_norm1")
```

The arguments particular to one norm (`groups_m`, `groups_c`, `stddev`,
`groups`, ...) travel as `norm_kwargs`. They are checked against the
arguments the chosen norm accepts: a keyword argument it does not accept is
a `ValueError` naming the norm and the arguments it takes, never silently
dropped, so `norm="batch", norm_kwargs={"groups_m": 8}` fails loudly
instead of training a plain BatchNorm baseline by mistake.
"""

import functools
import inspect

import keras
from keras import ops

from keras_seqnorm import ops as norm_ops
from keras_seqnorm.layers import GhostNormalization
from keras_seqnorm.layers import NoisyBatchNormalization
from keras_seqnorm.layers import SequentialNormalization


@keras.saving.register_keras_serializable(package="keras_seqnorm")
class FittedGroupNormalization(keras.layers.GroupNormalization):
    """GroupNormalization with as many groups as fit the channels.

    `keras.layers.GroupNormalization(groups=32)` fails on a 16-channel stage;
    this layer instead uses the largest divisor of the number of channels `C`
    that is at most `groups`: 32 groups on 64 channels, 16 on 16, 30 on 300.
    Each sample's channels are split into that many contiguous groups and
    `gamma * (x - mean_g) / sqrt(var_g + epsilon) + beta` is computed with
    the mean and biased variance of each group, over the group's channels
    and every non-batch axis. It has no moving statistics: training and
    inference are the same.

    Args:
        groups: Largest number of groups; `-1` means one group per channel
            (InstanceNorm). Defaults to `32`.
        axis: The channel axis. Defaults to `-1`.
        epsilon: Small float added to the variance. Defaults to `1e-3`.
        center: If `True`, add the offset `beta`. Defaults to `True`.
        scale: If `True`, multiply by `gamma`. Defaults to `True`.
        beta_initializer: Initializer for `beta`. Defaults to `"zeros"`.
        gamma_initializer: Initializer for `gamma`. Defaults to `"ones"`.
        beta_regularizer: Regularizer for `beta`. Defaults to `None`.
        gamma_regularizer: Regularizer for `gamma`. Defaults to `None`.
        beta_constraint: Constraint for `beta`. Defaults to `None`.
        gamma_constraint: Constraint for `gamma`. Defaults to `None`.
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Call arguments:
        inputs: Input tensor of rank >= 2, batch on axis 0.

    Reference:
        - [Wu and He, 2018](https://arxiv.org/abs/1803.08494), "Group
          Normalization".

    Example:

    >>> layer = FittedGroupNormalization(groups=32)
    >>> y = layer(keras.random.normal((2, 8, 8, 16)))
    >>> layer.fitted_groups
    16
    """

    def __init__(
        self,
        groups=32,
        axis=-1,
        epsilon=1e-3,
        center=True,
        scale=True,
        beta_initializer="zeros",
        gamma_initializer="ones",
        beta_regularizer=None,
        gamma_regularizer=None,
        beta_constraint=None,
        gamma_constraint=None,
        **kwargs,
    ):
        if isinstance(groups, bool):
            raise ValueError(
                "Argument `groups` must be a positive integer or -1. "
                f"Received: groups={groups}"
            )
        if isinstance(axis, bool) or not isinstance(axis, int):
            raise ValueError(
                f"Argument `axis` must be an integer. Received: axis={axis!r}"
            )
        super().__init__(
            groups=groups,
            axis=axis,
            epsilon=epsilon,
            center=center,
            scale=scale,
            beta_initializer=beta_initializer,
            gamma_initializer=gamma_initializer,
            beta_regularizer=beta_regularizer,
            gamma_regularizer=gamma_regularizer,
            beta_constraint=beta_constraint,
            gamma_constraint=gamma_constraint,
            **kwargs,
        )
        self._fitted_groups = None
        self._channel_axis = None

    @property
    def fitted_groups(self):
        """The number of groups used, known once the layer is built."""
        return self._fitted_groups

    def build(self, input_shape):
        rank = len(input_shape)
        channel_axis = norm_ops.resolve_axis(self.axis, rank)
        if rank < 2 or channel_axis is None or channel_axis == 0:
            raise ValueError(
                f"Argument `axis` must name a non-batch axis of the {rank}-D "
                f"input. Received: axis={self.axis}"
            )
        channels = input_shape[channel_axis]
        if channels is None:
            raise ValueError(
                f"The channel axis {self.axis} of the input must have a known "
                f"size. Received: input_shape={input_shape}"
            )
        limit = channels if self.groups == -1 else min(self.groups, channels)
        self._fitted_groups = max(
            g for g in range(1, limit + 1) if channels % g == 0
        )
        self._channel_axis = channel_axis
        shape = (channels,)
        self.gamma = None
        self.beta = None
        if self.scale:
            self.gamma = self.add_weight(
                shape=shape,
                name="gamma",
                initializer=self.gamma_initializer,
                regularizer=self.gamma_regularizer,
                constraint=self.gamma_constraint,
                autocast=False,
            )
        if self.center:
            self.beta = self.add_weight(
                shape=shape,
                name="beta",
                initializer=self.beta_initializer,
                regularizer=self.beta_regularizer,
                constraint=self.beta_constraint,
                autocast=False,
            )
        self.input_spec = keras.layers.InputSpec(
            ndim=rank, axes={channel_axis: channels}
        )

    def call(self, inputs):
        dtype = keras.backend.result_type(inputs.dtype, "float32")
        inputs = ops.cast(inputs, dtype)
        count, mean, variance = norm_ops.sample_channel_moments(
            inputs, self._channel_axis
        )
        _, mean, variance = norm_ops.channel_group_moments(
            count, mean, variance, self._fitted_groups
        )
        scale = ops.rsqrt(variance + self.epsilon)
        if self.scale:
            scale = scale * ops.cast(self.gamma, dtype)
        beta = ops.cast(self.beta, dtype) if self.center else None
        outputs = norm_ops.normalize(
            inputs, mean, scale, beta, self._channel_axis
        )
        return ops.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="keras_seqnorm")
class IdentityNormalization(keras.layers.Identity):
    """No normalization: returns its inputs unchanged.

    The `"none"` norm, for baselines without normalization (the paper's
    SimpleNet baseline, Appendix B.1). It accepts the core norm arguments so
    builders create it like any other norm, and ignores them.

    Args:
        axis: Ignored. Defaults to `-1`.
        epsilon: Ignored. Defaults to `1e-3`.
        center: Ignored. Defaults to `True`.
        scale: Ignored. Defaults to `True`.
        **kwargs: Base layer keyword arguments (e.g. `name`, `dtype`).

    Example:

    >>> IdentityNormalization(axis=-1)(keras.ops.ones((2, 3))).shape
    (2, 3)
    """

    def __init__(self, axis=-1, epsilon=1e-3, center=True, scale=True,
                 **kwargs):
        super().__init__(**kwargs)
        self.axis = axis
        self.epsilon = epsilon
        self.center = center
        self.scale = scale

    def get_config(self):
        return {
            **super().get_config(),
            "axis": self.axis,
            "epsilon": self.epsilon,
            "center": self.center,
            "scale": self.scale,
        }


NORM_LAYERS = {
    "batch": keras.layers.BatchNormalization,
    "sync_batch": functools.partial(
        keras.layers.BatchNormalization, synchronized=True
    ),
    "ghost": GhostNormalization,
    "sequential": SequentialNormalization,
    "group": FittedGroupNormalization,
    "noisy_batch": NoisyBatchNormalization,
    "none": IdentityNormalization,
}
"""Norm names -> layer factories (classes or `functools.partial`s).

- `batch`: `keras.layers.BatchNormalization`, per replica: the paper's
  baseline.
- `sync_batch`: `BatchNormalization(synchronized=True)`, statistics over the
  global batch of a `tf.distribute` strategy (TensorFlow backend only).
- `ghost`: `GhostNormalization` (`groups_m`, `ghost_batch_size`).
- `sequential`: `SequentialNormalization` (`groups_c`, `groups_m`,
  `ghost_batch_size`).
- `group`: `FittedGroupNormalization` (`groups`, default 32, reduced to fit
  the channels).
- `noisy_batch`: `NoisyBatchNormalization` (`stddev`, `seed`), the paper's
  noise ablation.
- `none`: `IdentityNormalization`, no normalization.
"""


def canonical_name(name):
    """Lower case, without underscores and hyphens: `"Sync-Batch"` ->
    `"syncbatch"`. Registry names are compared in this form."""
    return name.lower().replace("_", "").replace("-", "")


def _layer_class(factory):
    while isinstance(factory, functools.partial):
        factory = factory.func
    return factory


def bound_keywords(factory):
    """Keyword arguments bound by a (nested) `functools.partial` factory."""
    keywords = {}
    while isinstance(factory, functools.partial):
        keywords = {**factory.keywords, **keywords}
        factory = factory.func
    return keywords


def norm_layer_arguments(factory):
    """Names of the keyword arguments a norm factory accepts.

    The named parameters of every `__init__` up the class's MRO, as far as
    each passes `**kwargs` on, down to the base `keras.layers.Layer`
    (`name`, `dtype`, `trainable`, ...).
    """
    names = set()
    for klass in _layer_class(factory).__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        parameters = inspect.signature(init).parameters.values()
        names.update(
            p.name
            for p in parameters
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        )
        forwards = any(p.kind is p.VAR_KEYWORD for p in parameters)
        if klass is keras.layers.Layer or not forwards:
            break
    names.discard("self")
    return frozenset(names)


def _resolve(norm):
    if isinstance(norm, str):
        table = {canonical_name(key): key for key in NORM_LAYERS}
        key = table.get(canonical_name(norm))
        if key is None:
            raise ValueError(
                f"Unknown norm {norm!r}. Valid names: "
                f"{', '.join(NORM_LAYERS)} (case, underscores and hyphens "
                f"are ignored). Received: norm={norm!r}"
            )
        return NORM_LAYERS[key]
    layer_class = _layer_class(norm)
    if not (
        inspect.isclass(layer_class)
        and issubclass(layer_class, keras.layers.Layer)
    ):
        raise ValueError(
            "Argument `norm` must be a name from NORM_LAYERS "
            f"({', '.join(NORM_LAYERS)}), a `keras.layers.Layer` subclass or "
            f"a `functools.partial` of one. Received: norm={norm!r}"
        )
    partial = norm
    while isinstance(partial, functools.partial):
        if partial.args:
            raise ValueError(
                "A `functools.partial` norm must bind keyword arguments "
                f"only. Received: norm={norm!r}"
            )
        partial = partial.func
    return norm


def get_norm_layer(norm, **norm_kwargs):
    """Returns the norm layer factory for `norm`, with `norm_kwargs` bound.

    Args:
        norm: A name from `NORM_LAYERS` (case, underscores and hyphens are
            ignored: `"SyncBatch"`, `"sync-batch"`), a `keras.layers.Layer`
            subclass, or a `functools.partial` of one that binds keyword
            arguments. The layer must accept an `axis` argument.
        **norm_kwargs: Arguments of the chosen norm (e.g. `groups_m=8`),
            bound into the returned factory. Each must be accepted by the
            norm's constructor.

    Returns:
        A callable that takes the core arguments (`axis`, `epsilon`,
        `center`, `scale`, `name`, `dtype`) and returns a new layer: the
        class itself, or a `functools.partial` binding `norm_kwargs`.

    Raises:
        ValueError: for an unknown name, something that is not a layer
            class, a norm argument the norm does not accept, or `sync_batch`
            on a backend other than TensorFlow.

    Example:

    >>> make_norm = get_norm_layer("ghost", groups_m=8)
    >>> make_norm(axis=-1, name="norm").groups_m
    8
    """
    factory = _resolve(norm)
    accepted = norm_layer_arguments(factory)
    if "axis" not in accepted:
        raise ValueError(
            f"A norm layer must accept an `axis` argument; "
            f"{_layer_class(factory).__name__} does not. Received: "
            f"norm={norm!r}"
        )
    unknown = sorted(set(norm_kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"The norm {norm!r} ({_layer_class(factory).__name__}) does not "
            f"accept the argument(s) {', '.join(unknown)}. It accepts: "
            f"{', '.join(sorted(accepted))}. Received: "
            f"norm_kwargs={norm_kwargs}"
        )
    keywords = {**bound_keywords(factory), **norm_kwargs}
    if (
        keywords.get("synchronized")
        and keras.backend.backend() != "tensorflow"
    ):
        raise ValueError(
            "Synchronized BatchNormalization (norm='sync_batch') needs the "
            "TensorFlow backend; the active backend is "
            f"{keras.backend.backend()!r}. Use norm='batch' instead. "
            f"Received: norm={norm!r}"
        )
    if norm_kwargs:
        return functools.partial(factory, **norm_kwargs)
    return factory
