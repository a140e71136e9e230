"""Argument validation: one helper per kind of check, one message style.

Every check raises a `ValueError` that names the argument, says what was
expected and ends with the value received, e.g.

    Argument `momentum` must be a number in [0, 1]. Received: momentum='0.9'

and returns the value as a plain Python object (a NumPy integer or float
comes back as `int` or `float`), so callers may store what they get back.
The helpers take the argument's name first, as it is spelled where the
user wrote it (`"groups_m"` for a layer, `"--groups-m"` for a flag).

Checks:
- `is_integer`, `is_number`: predicates, for checks of their own.
- `positive_int`: an integer >= 1 (optionally `None`).
- `integer`: an integer, optionally with a lower bound (e.g. an axis).
- `number`: a finite real number, optionally within bounds.
- `boolean`: `True` or `False`.
- `choice`: one of a fixed set of values.
- `positive_ints`: a non-empty sequence of integers >= 1.
- `at_most_one`: at most one of several arguments is given.
- `channel_axis_and_size`: the channel axis of a norm layer's input shape.

`fail` raises the same message for checks these helpers do not cover.
"""

import math
import numbers

import numpy as np

# Input dtypes `keras-seqnorm bench` and `keras_seqnorm.benchmark` take
# (half precision runs under the matching mixed policy). Here, not in the
# benchmark module, so that the command's parser needs no Keras import.
BENCHMARK_DTYPES = ("float32", "bfloat16", "float16")


def format_value(value):
    """How a received value is shown: `repr`, NumPy scalars as Python ones."""
    if isinstance(value, np.generic):
        value = value.item()
    return repr(value)


def fail(name, expected, value, error=ValueError):
    """Raises `error` (a `ValueError` subclass) in the common style.

    Args:
        name: The argument's name.
        expected: What it must be, completing "Argument `name` must be ...",
            e.g. `"a positive integer"`.
        value: The value received.
        error: The exception class. Defaults to `ValueError`.
    """
    raise error(
        f"Argument `{name}` must be {expected}. "
        f"Received: {name}={format_value(value)}"
    )


def is_integer(value):
    """Whether `value` is an `int` or NumPy integer (never a bool)."""
    # NumPy's bool is no `numbers.Integral`; Python's bool is.
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    """Whether `value` is an `int`, `float` or NumPy number (never a bool)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def positive_int(name, value, allow_none=False, error=ValueError):
    """Checks that `value` is an integer >= 1 (or `None` if allowed).

    Args:
        name: The argument's name.
        value: The value received.
        allow_none: Whether `None` is accepted. Defaults to `False`.
        error: The exception class raised. Defaults to `ValueError`.

    Returns:
        `value` as an `int`, or `None`.
    """
    if value is None and allow_none:
        return None
    if not is_integer(value) or value < 1:
        expected = "a positive integer" + (" or None" if allow_none else "")
        fail(name, expected, value, error)
    return int(value)


def integer(name, value, low=None, allow_none=False, error=ValueError):
    """Checks that `value` is an integer (not a bool), at least `low`.

    Args:
        name: The argument's name.
        value: The value received.
        low: The smallest value accepted, or `None`. Defaults to `None`.
        allow_none: Whether `None` is accepted. Defaults to `False`.
        error: The exception class raised. Defaults to `ValueError`.

    Returns:
        `value` as an `int`, or `None`.
    """
    if value is None and allow_none:
        return None
    if not is_integer(value) or (low is not None and value < low):
        expected = "an integer" + (f" >= {low}" if low is not None else "")
        fail(name, expected + (" or None" if allow_none else ""), value,
             error)
    return int(value)


def _bounds(low, high, low_open, high_open):
    # "in [0, 1]", "> 0", "<= 1".
    if low is not None and high is not None:
        left, right = "([" [not low_open], ")]"[not high_open]
        return f" in {left}{low:g}, {high:g}{right}"
    if low is not None:
        return f" {'>' if low_open else '>='} {low:g}"
    if high is not None:
        return f" {'<' if high_open else '<='} {high:g}"
    return ""


def number(name, value, low=None, high=None, low_open=False,
           high_open=False, allow_none=False, error=ValueError):
    """Checks that `value` is a finite real number within bounds.

    Integers and NumPy scalars are accepted; bools, strings, `None` (unless
    allowed), NaN and infinities are not.

    Args:
        name: The argument's name.
        value: The value received.
        low: Lower bound, or `None` for none. Defaults to `None`.
        high: Upper bound, or `None` for none. Defaults to `None`.
        low_open: Whether `low` itself is excluded. Defaults to `False`.
        high_open: Whether `high` itself is excluded. Defaults to `False`.
        allow_none: Whether `None` is accepted. Defaults to `False`.
        error: The exception class raised. Defaults to `ValueError`.

    Returns:
        `value` as a `float` (an `int` stays an `int`), or `None`.

    Example:

    >>> number("epsilon", 1e-3, low=0.0, low_open=True)
    0.001
    """
    if value is None and allow_none:
        return None
    expected = "a finite number" + _bounds(low, high, low_open, high_open)
    if not is_number(value) or not math.isfinite(value):
        fail(name, expected, value, error)
    if low is not None and (value < low or (low_open and value == low)):
        fail(name, expected, value, error)
    if high is not None and (value > high or (high_open and value == high)):
        fail(name, expected, value, error)
    return int(value) if is_integer(value) else float(value)


def boolean(name, value, allow_none=False, error=ValueError):
    """Checks that `value` is `True` or `False` (a NumPy bool too).

    Args:
        name: The argument's name.
        value: The value received.
        allow_none: Whether `None` is accepted. Defaults to `False`.
        error: The exception class raised. Defaults to `ValueError`.

    Returns:
        `value` as a `bool`, or `None`.
    """
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        expected = "True or False" + (" or None" if allow_none else "")
        fail(name, expected, value, error)
    return bool(value)


def choice(name, value, choices, error=ValueError):
    """Checks that `value` is one of `choices`; returns it.

    Example:

    >>> choice("data_format", "channels_last",
    ...        ("channels_last", "channels_first"))
    'channels_last'
    """
    try:
        found = value in choices
    except TypeError:  # an unhashable value against a set
        found = False
    if not found:
        listed = ", ".join(format_value(c) for c in choices)
        fail(name, f"one of {listed}", value, error)
    return value


def positive_ints(name, values, distinct=False, error=ValueError):
    """Checks a non-empty sequence of integers >= 1; returns a tuple.

    Args:
        name: The argument's name.
        values: A list or tuple.
        distinct: Whether repeated values are rejected. Defaults to `False`.
        error: The exception class raised. Defaults to `ValueError`.
    """
    expected = "a non-empty list of " + (
        "distinct positive integers" if distinct else "positive integers"
    )
    if (
        not isinstance(values, (list, tuple))
        or not values
        or not all(is_integer(v) and v >= 1 for v in values)
        or (distinct and len(set(values)) != len(values))
    ):
        fail(name, expected, values, error)
    return tuple(int(v) for v in values)


def at_most_one(error=ValueError, **arguments):
    """Checks that at most one of the keyword `arguments` is not `None`.

    Example: `at_most_one(groups_m=groups_m, ghost_batch_size=size)`.
    """
    given = {k: v for k, v in arguments.items() if v is not None}
    if len(given) > 1:
        names = " and ".join(f"`{k}`" for k in arguments)
        received = ", ".join(
            f"{k}={format_value(v)}" for k, v in given.items()
        )
        raise error(f"Give at most one of {names}. Received: {received}")


def channel_axis_and_size(layer_name, axis, input_shape):
    """Checks a norm layer's input shape; returns `(channel_axis, C)`.

    Args:
        layer_name: The layer's class name, for the message.
        axis: The layer's `axis` argument, negative or not.
        input_shape: The input shape, batch first.

    Returns:
        The channel axis, non-negative, and the number of channels.

    Raises:
        ValueError: the input has rank < 2, `axis` names the batch axis or
            no axis, or the channel axis has no known size.
    """
    rank = len(input_shape)
    if rank < 2:
        raise ValueError(
            f"{layer_name} needs inputs of rank >= 2 (batch and channels). "
            f"Received: input_shape={input_shape}"
        )
    channel_axis = axis % rank if -rank <= axis < rank else None
    if channel_axis is None or channel_axis == 0:
        raise ValueError(
            f"Argument `axis` must name a non-batch axis of the "
            f"{rank}-D input (1 to {rank - 1}, or -1 to {1 - rank}). "
            f"Received: axis={axis}"
        )
    channels = input_shape[channel_axis]
    if channels is None:
        raise ValueError(
            f"The channel axis {axis} of the input must have a known "
            f"size. Received: input_shape={input_shape}"
        )
    return channel_axis, channels
