"""The shape of the package's code: no function longer than a screen."""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "keras_seqnorm"
MAX_LINES = 60


def _code_lines(function):
    """Lines of `function` from its `def` to its end, but its docstring."""
    lines = function.end_lineno - function.lineno + 1
    body = function.body
    if (
        body and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        lines -= body[0].end_lineno - body[0].lineno + 1
    return lines


def _functions():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(PACKAGE.parent), node


def _is_layer_constructor(path, function):
    # A layer's constructor stores each of its many arguments.
    return path.parts[1] == "layers" and function.name == "__init__"


def test_the_check_sees_the_package():
    names = {function.name for _, function in _functions()}
    assert {"train", "compare", "landscape", "tune", "reproduce",
            "get_norm_layer", "main"} <= names


@pytest.mark.parametrize("limit", [MAX_LINES])
def test_no_function_is_longer_than_60_lines(limit):
    long = [
        f"{path}:{function.lineno} {function.name} "
        f"({_code_lines(function)} lines)"
        for path, function in _functions()
        if _code_lines(function) > limit
        and not _is_layer_constructor(path, function)
    ]
    assert long == []
