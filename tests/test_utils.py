import argparse
import functools
import json
import os
import sys

import keras
import numpy as np
import pytest

from keras_seqnorm import utils


def test_write_json_replaces_the_file_whole(tmp_path):
    path = str(tmp_path / "results.json")
    utils.write_json(path, {"a": [1, 2]})
    with open(path) as file:
        assert json.load(file) == {"a": [1, 2]}
    # A value that cannot be written leaves the previous file as it was.
    with pytest.raises(TypeError):
        utils.write_json(path, {"a": object()})
    with open(path) as file:
        assert json.load(file) == {"a": [1, 2]}
    utils.write_json(path, [3], indent=None)
    with open(path) as file:
        assert file.read() == "[3]\n"
    assert os.listdir(tmp_path) == ["results.json"]


def test_mean_and_std_is_the_sample_spread():
    values = [0.9, 0.93, 0.91, 0.95]
    mean, std = utils.mean_and_std(values)
    assert mean == pytest.approx(np.mean(values))
    assert std == pytest.approx(np.std(values, ddof=1))
    assert utils.mean_and_std([0.5]) == (0.5, 0.0)
    assert utils.mean_and_std(v for v in (1, 3)) == (2.0, pytest.approx(
        np.sqrt(2)))


def test_versions_name_the_backend():
    found = utils.versions()
    backend = keras.backend.backend()
    assert found["backend"] == backend
    assert found["keras"] == keras.__version__
    assert found[backend] == sys.modules[backend].__version__
    assert {"keras_seqnorm", "python"} <= set(found)


def test_comma_list_parses_and_refuses_in_one_style():
    etas = utils.comma_list("etas", float, "positive numbers separated by "
                            "commas", "0.1,0.2", check=lambda v: v > 0)
    assert etas("0.1, 0.4") == (0.1, 0.4)
    pair = utils.comma_list("randaugment", int, "two integers N,M", "1,6",
                            length=2)
    names = utils.comma_list("norms", str, "distinct names", "a,b",
                             distinct=True)
    for parse, text in ((etas, "0.1,-2"), (etas, "0.1,x"), (pair, "1"),
                        (pair, "1,2,3"), (names, "a,a")):
        with pytest.raises(argparse.ArgumentTypeError) as info:
            parse(text)
        name = {etas: "etas", pair: "randaugment", names: "norms"}[parse]
        assert str(info.value).startswith("expected ")
        assert str(info.value).endswith(f". Received: {name}={text!r}")


def test_format_failures_names_each_run():
    line = utils.format_failures([
        {"norm": "ghost", "seed": 1, "status": "stopped_nan",
         "run_dir": "r/g"},
        {"trial_id": "3", "seed": 0, "status": "failed", "error": "E: x",
         "run_dir": "r/t"},
    ], "not scored")
    assert line == ("failed runs, not scored: ghost seed 1 (stopped_nan, "
                    "r/g); trial 3 seed 0 (failed: E: x, r/t)")


def test_iter_sublayers_walks_nested_models_once():
    inner_inputs = keras.Input((4,))
    inner = keras.Model(
        inner_inputs,
        keras.layers.Dense(3, name="dense")(inner_inputs),
        name="inner",
    )
    shared = keras.layers.Dense(3, name="shared")
    inputs = keras.Input((4,))
    outputs = shared(inner(inputs)) + shared(
        keras.layers.Dense(3, name="head")(inputs))
    model = keras.Model(inputs, outputs)
    paths = [path for path, _ in utils.iter_sublayers(model)]
    assert len(paths) == len(set(paths))
    assert {"inner", "inner/dense", "shared", "head"} <= set(paths)
    assert paths.index("inner") < paths.index("inner/dense")
    layers = [layer for _, layer in utils.iter_sublayers(model)]
    assert layers.count(shared) == 1


def test_lazy_registry_lists_names_without_importing():
    registry = utils.LazyRegistry({
        "dumps": "json:dumps",
        "sorted_dumps": ("json:dumps", {"sort_keys": True}),
        "missing": "keras_seqnorm.no_such_module:thing",
    })
    assert list(registry) == ["dumps", "sorted_dumps", "missing"]
    assert "missing" in registry and len(registry) == 3
    assert registry["dumps"] is json.dumps
    bound = registry["sorted_dumps"]
    assert isinstance(bound, functools.partial)
    assert bound({"b": 1, "a": 2}) == '{"a": 2, "b": 1}'
    with pytest.raises(ModuleNotFoundError):
        registry["missing"]
    with pytest.raises(KeyError):
        registry["nope"]


def test_write_json_into_a_missing_folder_raises_the_open_error(tmp_path):
    # The error is open's own, not a second one from removing a temporary
    # file that was never made.
    path = str(tmp_path / "no-such-folder" / "results.json")
    with pytest.raises(FileNotFoundError) as info:
        utils.write_json(path, {"a": 1})
    assert info.value.filename == path + ".saving"
    assert info.value.__context__ is None
    assert os.listdir(tmp_path) == []
