import math

import numpy as np
import pytest

from keras_seqnorm import validation


@pytest.mark.parametrize("value", [1, 7, np.int64(4), np.int32(2)])
def test_positive_int_accepts_python_and_numpy_integers(value):
    result = validation.positive_int("groups_m", value)
    assert result == value and type(result) is int


@pytest.mark.parametrize(
    "value, shown",
    [
        (0, "0"), (-3, "-3"), (2.0, "2.0"), (True, "True"), ("4", "'4'"),
        (None, "None"), (np.float64(4.0), "4.0"), (np.bool_(True), "True"),
    ],
)
def test_positive_int_rejects(value, shown):
    with pytest.raises(
        ValueError,
        match=rf"^Argument `groups_m` must be a positive integer\. "
        rf"Received: groups_m={shown}$",
    ):
        validation.positive_int("groups_m", value)


def test_positive_int_or_none():
    assert validation.positive_int("size", None, allow_none=True) is None
    with pytest.raises(ValueError, match="a positive integer or None"):
        validation.positive_int("size", 0, allow_none=True)


def test_integer():
    assert validation.integer("axis", np.int64(-1)) == -1
    for bad in (True, 1.0, "channels"):
        with pytest.raises(ValueError, match="Received: axis="):
            validation.integer("axis", bad)


@pytest.mark.parametrize(
    "value", [0.9, 1, np.float32(0.5), np.float64(0.0), np.int64(1)]
)
def test_number_accepts_numpy_numbers_within_bounds(value):
    result = validation.number("momentum", value, 0.0, 1.0)
    assert result == value and type(result) in (int, float)


@pytest.mark.parametrize(
    "value, shown",
    [
        ("0.9", "'0.9'"), (None, "None"), (True, "True"), (1.5, "1.5"),
        (-0.1, "-0.1"), (math.inf, "inf"), (math.nan, "nan"),
        (np.float32(np.inf), "inf"), ([0.9], r"\[0.9\]"),
    ],
)
def test_number_rejects(value, shown):
    with pytest.raises(
        ValueError,
        match=rf"^Argument `momentum` must be a finite number in \[0, 1\]\. "
        rf"Received: momentum={shown}$",
    ):
        validation.number("momentum", value, 0.0, 1.0)


def test_number_open_bounds_and_none():
    assert validation.number("epsilon", 1e-5, 0.0, low_open=True) == 1e-5
    with pytest.raises(
        ValueError,
        match=r"^Argument `epsilon` must be a finite number > 0\. "
        r"Received: epsilon=0.0$",
    ):
        validation.number("epsilon", 0.0, 0.0, low_open=True)
    with pytest.raises(ValueError, match=r"number < 1\. Received: x=1.0"):
        validation.number("x", 1.0, high=1.0, high_open=True)
    with pytest.raises(ValueError, match=r"number in \(0, 1\]\. Rec"):
        validation.number("x", 0.0, 0.0, 1.0, low_open=True)
    assert validation.number("x", None, allow_none=True) is None
    with pytest.raises(ValueError, match=r"a finite number\. Received: x=inf"):
        validation.number("x", math.inf)


def test_boolean():
    assert validation.boolean("center", np.bool_(False)) is False
    assert validation.boolean("fused", None, allow_none=True) is None
    for bad in (1, "yes", None):
        with pytest.raises(
            ValueError, match=r"must be True or False\. Received: center="
        ):
            validation.boolean("center", bad)
    with pytest.raises(ValueError, match="True or False or None"):
        validation.boolean("fused", "auto", allow_none=True)


def test_choice():
    formats = ("channels_last", "channels_first")
    assert validation.choice("data_format", "channels_last", formats) == (
        "channels_last"
    )
    with pytest.raises(
        ValueError,
        match=r"must be one of 'channels_last', 'channels_first'\. "
        r"Received: data_format='NHWC'$",
    ):
        validation.choice("data_format", "NHWC", formats)
    with pytest.raises(ValueError, match=r"Received: data_format=\[1\]"):
        validation.choice("data_format", [1], frozenset(formats))


def test_positive_ints():
    assert validation.positive_ints("filters", [16, np.int64(32)]) == (16, 32)
    for bad in ([], (16, 0), "16", (16, True), None):
        with pytest.raises(ValueError, match="Received: filters="):
            validation.positive_ints("filters", bad)
    with pytest.raises(ValueError, match="distinct positive integers"):
        validation.positive_ints("groups_m", (1, 2, 2), distinct=True)


def test_at_most_one():
    validation.at_most_one(groups_m=2, ghost_batch_size=None)
    with pytest.raises(
        ValueError,
        match=r"^Give at most one of `groups_m` and `ghost_batch_size`\. "
        r"Received: groups_m=2, ghost_batch_size=8$",
    ):
        validation.at_most_one(groups_m=2, ghost_batch_size=8)


def test_error_class_is_configurable():
    class ConfigError(ValueError):
        pass

    with pytest.raises(ConfigError, match="Received: epochs=0"):
        validation.positive_int("epochs", 0, error=ConfigError)


@pytest.mark.parametrize(
    "axis, shape, expected",
    [(-1, (None, 4, 6), (2, 6)), (1, (8, 3, 5, 5), (1, 3)),
     (np.int64(-3), (2, 7, 4, 4), (1, 7))],
)
def test_channel_axis_and_size(axis, shape, expected):
    assert validation.channel_axis_and_size("Layer", axis, shape) == expected


@pytest.mark.parametrize(
    "axis, shape, match",
    [
        (-1, (None,), r"needs inputs of rank >= 2.*input_shape=\(None,\)"),
        (0, (None, 3), "Received: axis=0"),
        (-3, (None, 3), "Received: axis=-3"),
        (-1, (None, 4, None), r"known size\. Received: input_shape="),
    ],
)
def test_channel_axis_and_size_errors(axis, shape, match):
    with pytest.raises(ValueError, match=match):
        validation.channel_axis_and_size("Layer", axis, shape)
