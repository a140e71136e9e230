"""The norm registry: what the package knows about each norm.

- `NORM_LAYERS`: the names and their layer factories.
- `norm_layer_arguments(norm)`: the arguments a norm's layer accepts.
- `group_arguments(norm)`, `group_kwargs`, `norms_taking`: which of the
  paper's group counts (G_M, G_C) and the ghost batch size a norm takes,
  and as which argument.
- `global_batch_kwargs`: the same ghost batches for a layer that sees the
  global batch of several devices (`keras.distribution.DataParallel`).

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

Importing this module imports no Keras: the names, the group arguments and
`canonical_name` are plain data, and a layer is imported when it is first
looked up.
"""

import functools
import inspect

from keras_seqnorm import validation
from keras_seqnorm.utils import LazyRegistry

NORM_LAYERS = LazyRegistry(
    {
        "batch": "keras.layers:BatchNormalization",
        "sync_batch": (
            "keras.layers:BatchNormalization",
            {"synchronized": True},
        ),
        "ghost": "keras_seqnorm.layers:GhostNormalization",
        "sequential": "keras_seqnorm.layers:SequentialNormalization",
        "group": "keras_seqnorm.layers:FittedGroupNormalization",
        "noisy_batch": "keras_seqnorm.layers:NoisyBatchNormalization",
        "none": "keras_seqnorm.layers:IdentityNormalization",
    }
)
"""Norm names -> layer factories (classes or `functools.partial`s), a
read-only mapping whose layers are imported on first lookup.

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

GROUP_COUNTS = ("groups_m", "groups_c", "ghost_batch_size")
"""The group arguments of a training run: the paper's two group counts,
`groups_m` (G_M, ghost batches per device: per replica of a
`tf.distribute` strategy, per device of `keras.distribution.DataParallel`)
and `groups_c` (G_C, channel groups), and `ghost_batch_size` (samples per
ghost batch, the other way to give G_M)."""

_GROUP_ARGUMENTS = {
    "ghost": {"groups_m": "groups_m", "ghost_batch_size": "ghost_batch_size"},
    "sequential": {
        "groups_m": "groups_m",
        "groups_c": "groups_c",
        "ghost_batch_size": "ghost_batch_size",
    },
    "group": {"groups_c": "groups"},
}


def canonical_name(name):
    """Lower case, without underscores and hyphens: `"Sync-Batch"` ->
    `"syncbatch"`. Registry names are compared in this form."""
    return name.lower().replace("_", "").replace("-", "")


def group_arguments(norm):
    """The paper's group counts the registry norm `norm` takes.

    Args:
        norm: A name from `NORM_LAYERS`, as spelled there.

    Returns:
        A dict from each of `GROUP_COUNTS` the norm takes to the layer
        argument that receives it, e.g. `{"groups_c": "groups"}` for
        `group`; `{}` for a norm without groups (`batch`, `none`, ...).
    """
    return dict(_GROUP_ARGUMENTS.get(norm, {}))


def norms_taking(count):
    """The registry norms that take the group count `count` (one of
    `GROUP_COUNTS`), in registry order."""
    return [name for name in NORM_LAYERS if count in group_arguments(name)]


def group_kwargs(norm, groups_m=None, groups_c=None, ghost_batch_size=None):
    """The layer arguments of `norm` for the group arguments given.

    Arguments the norm does not take, and those left at `None` (the
    layer's default), are left out.

    Example:

    >>> group_kwargs("group", groups_m=8, groups_c=4)
    {'groups': 4}
    """
    counts = {"groups_m": groups_m, "groups_c": groups_c,
              "ghost_batch_size": ghost_batch_size}
    return {
        argument: counts[count]
        for count, argument in group_arguments(norm).items()
        if counts[count] is not None
    }


def global_batch_kwargs(norm, norm_kwargs, devices):
    """The layer arguments of `norm` that split the global batch of
    `devices` devices into the ghost batches `norm_kwargs` form on each
    device's share.

    Under `keras.distribution.DataParallel` (JAX) a layer sees the global
    batch, where under a `tf.distribute` strategy it sees each replica's
    share. G_M ghost batches per device are `G_M * devices` ghost batches of
    the global batch, the same contiguous ones: `groups_m` (or the layer's
    default, when neither it nor `ghost_batch_size` is given) is multiplied
    by `devices`. A `ghost_batch_size` means the same on any number of
    devices and is kept (the ghost batches are the same when it divides
    each device's share). Other arguments and norms without ghost batches
    are kept: `batch` then normalizes over the global batch, as
    `sync_batch` does under `tf.distribute`.

    Args:
        norm: A name from `NORM_LAYERS`.
        norm_kwargs: The layer arguments for one device, e.g.
            `{"groups_m": 4, "groups_c": 2}`.
        devices: Devices the global batch is split over.

    Returns:
        A new dict of layer arguments.

    Example:

    >>> global_batch_kwargs("ghost", {"groups_m": 4}, devices=2)
    {'groups_m': 8}
    """
    kwargs = dict(norm_kwargs)
    if (
        "groups_m" not in group_arguments(norm)
        or kwargs.get("ghost_batch_size") is not None
    ):
        return kwargs
    groups_m = kwargs.get("groups_m")
    if groups_m is None:
        # The layer's own default G_M (GhostNorm 4, SeqNorm 8).
        groups_m = layer_class(_resolve(norm))._default_groups_m
    kwargs["groups_m"] = groups_m * devices
    return kwargs


def check_norm_names(name, norms, error=ValueError):
    """Checks that `norms` is a non-empty list or tuple of distinct names
    from `NORM_LAYERS` (as spelled there); returns it as a tuple.

    Raises:
        error: (a `ValueError`) naming the argument `name`.
    """
    if (
        not isinstance(norms, (list, tuple)) or not norms
        or len(set(norms)) != len(norms)
        or not all(norm in NORM_LAYERS for norm in norms)
    ):
        validation.fail(
            name, f"distinct names from {', '.join(NORM_LAYERS)}", norms,
            error,
        )
    return tuple(norms)


def layer_class(factory):
    """The layer class a norm factory creates: the class itself, or the
    function of a (nested) `functools.partial`."""
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

    Args:
        factory: A layer class or `functools.partial` of one, or a name
            from `NORM_LAYERS`.
    """
    import keras

    if isinstance(factory, str):
        factory = _resolve(factory)
    names = set()
    for klass in layer_class(factory).__mro__:
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
    import keras

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
    klass = layer_class(norm)
    if not (
        inspect.isclass(klass) and issubclass(klass, keras.layers.Layer)
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
    import keras

    factory = _resolve(norm)
    accepted = norm_layer_arguments(factory)
    if "axis" not in accepted:
        raise ValueError(
            f"A norm layer must accept an `axis` argument; "
            f"{layer_class(factory).__name__} does not. Received: "
            f"norm={norm!r}"
        )
    unknown = sorted(set(norm_kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"The norm {norm!r} ({layer_class(factory).__name__}) does not "
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
