"""Small helpers that several modules share, one per chore.

- `write_json`: write a JSON file atomically (a reader never sees half of
  it, and a kill leaves the previous file whole).
- `versions`: the versions of the package, Keras, its backend and Python.
- `mean_and_std`: the spread of a metric over seeds.
- `format_failures`: the line listing the runs a command left out.
- `current_learning_rate`: an optimizer's learning rate at its current step.
- `comma_list`: the `argparse` type of every comma-separated flag.
- `iter_sublayers`: every layer a Keras layer or model holds, with its path.
- `LazyRegistry`, `lazy_attributes`: names resolved to objects on first
  use, so that the registries and the packages list their names without
  importing Keras (`keras-seqnorm --help` imports none).

Nothing here imports Keras, TensorFlow or NumPy at import time.
"""

import argparse
import collections.abc
import functools
import importlib
import json
import math
import os
import platform
import types


def write_json(path, value, indent=2):
    """Writes `value` to `path` as JSON, atomically.

    The text goes to `path + ".saving"`, is flushed to disk, and then
    replaces `path` in one step; a value that cannot be written leaves
    `path` as it was.

    Args:
        path: The file to write.
        value: A JSON-able value.
        indent: `json.dump`'s indent; `None` for one line. Defaults to `2`.
    """
    temporary = path + ".saving"
    try:
        with open(temporary, "w") as file:
            json.dump(value, file, indent=indent)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
    except BaseException:
        # Gone already if `open` itself failed (e.g. no such folder): the
        # error to see is that one.
        if os.path.exists(temporary):
            os.remove(temporary)
        raise
    os.replace(temporary, path)


def versions():
    """The versions this process runs: a dict with `keras_seqnorm`,
    `keras`, `backend` (its name), the backend's own version under its
    name (e.g. `tensorflow`) and `python`."""
    import keras

    from keras_seqnorm.version import __version__

    backend = keras.backend.backend()
    module = importlib.import_module(backend)
    return {
        "keras_seqnorm": __version__,
        "keras": keras.__version__,
        "backend": backend,
        backend: getattr(module, "__version__", "unknown"),
        "python": platform.python_version(),
    }


def mean_and_std(values):
    """`(mean, standard deviation)` of `values` over seeds, as floats.

    The standard deviation is the sample one (`ddof=1`, as the paper's
    error bars), and `0.0` for a single value.
    """
    values = [float(value) for value in values]
    mean = math.fsum(values) / len(values)
    if len(values) < 2:
        return mean, 0.0
    squares = math.fsum((value - mean) ** 2 for value in values)
    return mean, math.sqrt(squares / (len(values) - 1))


def format_failures(failed, outcome="not counted"):
    """One line naming each run that did not complete, for the end of a
    command: `failed runs, OUTCOME: WHO (STATUS[: ERROR], RUN_DIR); ...`.

    Args:
        failed: Dicts with `status` and `run_dir`, and as far as known the
            `trial_id`, `norm`, `seed` and `error`.
        outcome: What became of them, e.g. `"not scored"`. Defaults to
            `"not counted"`.
    """

    def who(entry):
        parts = [
            f"{label}{entry[key]}"
            for key, label in (("trial_id", "trial "), ("norm", ""),
                               ("seed", "seed "))
            if key in entry
        ]
        return " ".join(parts)

    return f"failed runs, {outcome}: " + "; ".join(
        f"{who(entry)} ({entry['status']}"
        + (f": {entry['error']}" if entry.get("error") else "")
        + f", {entry['run_dir']})"
        for entry in failed
    )


def current_learning_rate(optimizer):
    """The learning rate `optimizer` applies at its current step, as a
    float (a `LossScaleOptimizer` holds the schedule in its
    `inner_optimizer`)."""
    import keras

    optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    return float(keras.ops.convert_to_numpy(optimizer.learning_rate))


def comma_list(name, item, expected, example, length=None, distinct=False,
               check=None):
    """An `argparse` `type` for a flag of comma-separated values.

    The parsed value is a tuple. A bad value stops `argparse` with one
    message: `expected EXPECTED (e.g. EXAMPLE). Received: NAME='TEXT'`.

    Args:
        name: The value's name in the message (the flag without `--`).
        item: Parses one item (`int`, `float`, `str`, ...); a `ValueError`
            marks it bad.
        expected: What the value must be, e.g. `"positive numbers
            separated by commas"`.
        example: A valid value, e.g. `"0.1,0.2,0.4"`.
        length: The number of items required, or `None`. Defaults to
            `None`.
        distinct: Whether repeated items are refused. Defaults to `False`.
        check: A predicate every parsed item must meet, or `None`.
            Defaults to `None`.

    Returns:
        A function of the flag's text.

    Example:

    >>> etas = comma_list("etas", float, "positive numbers separated by "
    ...                   "commas", "0.1,0.2", check=lambda eta: eta > 0)
    >>> etas("0.1,0.4")
    (0.1, 0.4)
    """

    def parse(text):
        try:
            values = tuple(item(part.strip()) for part in text.split(","))
        except ValueError:
            values = None
        if (
            not values
            or (length is not None and len(values) != length)
            or (distinct and len(set(values)) != len(values))
            or (check is not None and not all(map(check, values)))
        ):
            raise argparse.ArgumentTypeError(
                f"expected {expected} (e.g. {example}). "
                f"Received: {name}={text!r}"
            )
        return values

    return parse


def iter_sublayers(layer):
    """Every layer that `layer` holds, at any depth, each once.

    Keras tracks a layer's sublayers by the attributes they are set as
    (directly, or in lists, tuples and dicts); this walks those attributes,
    depth first, in the order they were set.

    Args:
        layer: A `keras.layers.Layer` (a model too).

    Yields:
        `(path, sublayer)`: `path` is the sublayer's name, prefixed with
        the names of the layers it is nested in below `layer`
        (`"backbone/conv1_bn"`).
    """
    import keras

    seen = {id(layer)}

    def children(parent):
        pending = collections.deque(vars(parent).values())
        while pending:
            value = pending.popleft()
            if isinstance(value, (list, tuple)):
                pending.extendleft(reversed(value))
            elif isinstance(value, dict):
                pending.extendleft(reversed(list(value.values())))
            elif isinstance(value, keras.layers.Layer) and (
                id(value) not in seen
            ):
                seen.add(id(value))
                yield value

    def walk(parent, prefix):
        for child in list(children(parent)):
            path = f"{prefix}/{child.name}" if prefix else child.name
            yield path, child
            yield from walk(child, path)

    yield from walk(layer, "")


def _resolve(target):
    """The object named by `"module:attribute"`, imported now."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


class LazyRegistry(collections.abc.Mapping):
    """A read-only mapping from names to objects imported on first use.

    Its names, order and membership need no import; looking a name up
    imports the object. A value may bind keyword arguments, and is then a
    `functools.partial` of the object.

    Args:
        targets: A dict from names to `"module:attribute"`, or to
            `("module:attribute", {keyword: value})`.

    Example:

    >>> models = LazyRegistry({"wrn16_4": (
    ...     "keras_seqnorm.models.wide_resnet:WideResNet",
    ...     {"depth": 16, "width": 4})})
    >>> list(models)  # imports nothing
    ['wrn16_4']
    """

    def __init__(self, targets):
        self._targets = types.MappingProxyType(dict(targets))
        self._objects = {}

    def __getitem__(self, name):
        if name not in self._objects:
            target = self._targets[name]
            if isinstance(target, str):
                self._objects[name] = _resolve(target)
            else:
                target, keywords = target
                self._objects[name] = functools.partial(
                    _resolve(target), **keywords
                )
        return self._objects[name]

    def __contains__(self, name):
        return name in self._targets

    def __iter__(self):
        return iter(self._targets)

    def __len__(self):
        return len(self._targets)

    def __repr__(self):
        return f"LazyRegistry({list(self._targets)})"


def lazy_attributes(module_name, targets):
    """PEP 562 `__getattr__` and `__dir__` for a package whose public names
    are imported on first use.

    Args:
        module_name: The package's `__name__`.
        targets: A dict from attribute names to `"module:attribute"`, or to
            `"module"` for a submodule.

    Returns:
        `(__getattr__, __dir__)`, to assign in the package's namespace.
    """
    module = importlib.import_module(module_name)

    def __getattr__(name):
        target = targets.get(name)
        if target is None:
            raise AttributeError(
                f"module {module_name!r} has no attribute {name!r}"
            )
        value = (
            _resolve(target) if ":" in target
            else importlib.import_module(target)
        )
        setattr(module, name, value)
        return value

    def __dir__():
        return sorted(set(vars(module)) | set(targets))

    return __getattr__, __dir__
