import json
import os

import numpy as np
import pytest

from keras_seqnorm import cli
from keras_seqnorm.analysis import comparison
from keras_seqnorm.training.config import ConfigError
from keras_seqnorm.training.config import given_values

PNG = b"\x89PNG\r\n\x1a\n"


class FakeRun:
    """Stands in for `training.train`: records the configs and returns
    results with known accuracies."""

    def __init__(self, fail=None):
        self.configs = []
        self.fail = fail or {}

    def __call__(self, config):
        self.configs.append(config)
        failure = self.fail.get((config.norm, config.seed))
        if isinstance(failure, Exception):
            raise failure
        test = {"ghost": 0.92, "sequential": 0.94}.get(config.norm, 0.90)
        test += 0.01 * config.seed
        curve = [0.5, 0.7, test - 0.01]
        recalibrated = None
        if config.recalibrate_steps:
            recalibrated = {"statistics": config.recalibrate_statistics,
                            "test_accuracy": test + 0.02 * (config.seed + 1)}
        return {
            "norm_kwargs": config.norm_layer_kwargs(),
            "final": {"val_accuracy": curve[-1]},
            "history": {"val_accuracy": curve},
            "test_accuracy": test,
            "recalibrated": recalibrated,
            "images_per_second": 1000.0,
            "wall_seconds": 1.0,
            **({"status": failure} if failure else {}),
        }


def _compare(argv):
    return cli.run_command(["compare", *argv])


@pytest.fixture
def fake_run(monkeypatch):
    fake = FakeRun()
    monkeypatch.setattr(comparison, "train", fake)
    return fake


def test_table_of_means_and_standard_deviations(tmp_path, fake_run, capsys):
    root = str(tmp_path)
    result = _compare([
        "--preset", "cifar10-wrn28-10", "--norms", "batch,ghost,sequential",
        "--seeds", "3", "--run-dir", root, "--epochs", "10",
    ])
    configs = fake_run.configs
    assert [(c.norm, c.seed) for c in configs] == [
        (n, s) for s in range(3) for n in ("batch", "ghost", "sequential")
    ]
    assert configs[4].run_dir == os.path.join(root, "ghost", "seed1")
    assert all(c.epochs == 10 and c.dataset == "cifar10" for c in configs)
    assert all(c.verbose == 0 for c in configs)
    # The preset's groups for each norm (Section 3.2.2).
    assert (configs[1].groups_m, configs[1].groups_c) == (4, None)
    assert (configs[2].groups_m, configs[2].groups_c) == (8, 16)
    for norm, base in (("batch", 0.90), ("ghost", 0.92),
                       ("sequential", 0.94)):
        tests = base + 0.01 * np.arange(3)
        row = result["summary"][norm]
        assert row["runs"] == 3
        assert row["test_accuracy_mean"] == pytest.approx(tests.mean())
        assert row["test_accuracy_std"] == pytest.approx(tests.std(ddof=1))
        assert row["val_accuracy_mean"] == pytest.approx(tests.mean() - 0.01)
    assert result["summary"]["sequential"]["groups"] == "G_C=16, G_M=8"
    assert result["summary"]["batch"]["groups"] == "-"
    assert comparison._groups_text("ghost", {}) == "layer defaults"
    assert comparison._groups_text("sequential", {"groups_m": 2}) == (
        "G_C=default, G_M=2")
    out = capsys.readouterr().out
    assert result["table"] in out
    assert "ghost" in out and "93.00 ± 1.00" in out
    with open(tmp_path / "compare.json") as file:
        assert json.load(file) == json.loads(json.dumps(result))
    with open(tmp_path / "compare.png", "rb") as file:
        assert file.read(8) == PNG


def test_recalibrated_accuracy_gets_a_column(tmp_path, fake_run, capsys):
    result = _compare([
        "--norms", "batch,sequential", "--seeds", "2", "--run-dir",
        str(tmp_path), "--recalibrate-steps", "5",
        "--recalibrate-statistics", "population",
    ])
    assert {c.recalibrate_steps for c in fake_run.configs} == {5}
    row = result["summary"]["sequential"]
    assert row["recalibrated_statistics"] == "population"
    # Seeds 0 and 1: 0.94 + 0.02, 0.95 + 0.04.
    assert row["recalibrated_test_accuracy_mean"] == pytest.approx(0.975)
    assert row["recalibrated_test_accuracy_std"] == pytest.approx(
        np.std([0.96, 0.99], ddof=1))
    assert row["test_accuracy_mean"] == pytest.approx(0.945)
    assert [run["recalibrated_test_accuracy"] for run in result["runs"]] \
        == pytest.approx([0.92, 0.95, 0.96, 0.99])
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("norm "))
    assert "test accuracy (%)" in header
    assert "test, population stats (%)" in header
    sequential = next(line for line in lines if line.startswith("sequential"))
    assert "94.50 ± 0.71" in sequential and "97.50 ± 2.12" in sequential
    # Without recalibration, no such column.
    plain = comparison.format_table(comparison.summarize([
        {**run, "recalibrated_test_accuracy": None}
        for run in result["runs"]
    ]))
    assert "stats" not in plain


def test_group_flags_apply_only_to_norms_that_take_them(tmp_path, fake_run):
    _compare(["--norms", "batch,ghost,group", "--seeds", "1",
                  "--groups-m", "2", "--groups-c", "4",
                  "--run-dir", str(tmp_path), "--verbose", "2"])
    batch, ghost, group = fake_run.configs
    assert (batch.groups_m, batch.groups_c) == (None, None)
    assert (ghost.groups_m, ghost.groups_c) == (2, None)
    assert group.norm_layer_kwargs() == {"groups": 4}
    assert ghost.verbose == 2


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--norms", "batch,layer"], "Received: norms='batch,layer'"),
        (["--norms", "ghost,ghost"], "distinct names"),
        (["--seeds", "0"], "Received: seeds=0"),
        (["--norm", "ghost"], "unrecognized arguments"),
        (["--seed", "1"], "unrecognized arguments"),
        (["--batch-size", "-4"], "Received: batch_size=-4"),
    ],
)
def test_bad_flags(capsys, fake_run, argv, expected):
    with pytest.raises(SystemExit) as info:
        _compare(argv)
    assert info.value.code == 2
    assert expected in capsys.readouterr().err
    assert fake_run.configs == []


@pytest.mark.slow
@pytest.mark.jax_run
def test_compare_recalibrates_on_digits(tmp_path, capsys):
    result = _compare([
        "--norms", "ghost", "--seeds", "1", "--epochs", "1",
        "--recalibrate-steps", "5", "--run-dir", str(tmp_path),
    ])
    (entry,) = result["runs"]
    with open(os.path.join(entry["run_dir"], "results.json")) as file:
        stored = json.load(file)
    recalibrated = stored["recalibrated"]
    assert (recalibrated["statistics"], recalibrated["steps"]) == (
        "ghost", 5)
    assert entry["recalibrated_test_accuracy"] == (
        recalibrated["test_accuracy"])
    assert entry["test_accuracy"] == stored["test_accuracy"]
    row = result["summary"]["ghost"]
    assert row["recalibrated_test_accuracy_mean"] == pytest.approx(
        recalibrated["test_accuracy"])
    assert "test, ghost stats (%)" in capsys.readouterr().out


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_compare_trains_on_digits(tmp_path, capsys):
    root = str(tmp_path)
    result = _compare([
        "--dataset", "digits", "--model", "simplecnn", "--norms",
        "batch,sequential", "--seeds", "1", "--epochs", "2",
        "--run-dir", root,
    ])
    assert list(result["summary"]) == ["batch", "sequential"]
    for entry in result["runs"]:
        with open(os.path.join(entry["run_dir"], "results.json")) as file:
            stored = json.load(file)
        assert stored["config"]["norm"] == entry["norm"]
        assert entry["test_accuracy"] == stored["test_accuracy"]
        assert len(entry["val_accuracy_curve"]) == 2
    assert "sequential" in capsys.readouterr().out
    assert os.path.getsize(os.path.join(root, "compare.png")) > 1000


def test_failed_runs_are_listed_not_counted(tmp_path, monkeypatch, capsys):
    fake = FakeRun(fail={("ghost", 1): "stopped_nan",
                         ("batch", 0): RuntimeError("out of memory")})
    monkeypatch.setattr(comparison, "train", fake)
    root = str(tmp_path)
    result = _compare(["--norms", "batch,ghost", "--seeds", "2",
                           "--run-dir", root])
    assert len(fake.configs) == 4  # a failure does not stop the others
    assert result["summary"]["ghost"]["runs"] == 1
    assert result["summary"]["ghost"]["test_accuracy_mean"] == (
        pytest.approx(0.92))
    assert result["summary"]["batch"]["runs"] == 1
    assert result["summary"]["batch"]["test_accuracy_mean"] == (
        pytest.approx(0.91))
    assert [(r["norm"], r["seed"]) for r in result["runs"]] == [
        ("batch", 1), ("ghost", 0)]
    assert result["failed"] == [
        {"norm": "batch", "seed": 0, "status": "failed",
         "run_dir": os.path.join(root, "batch", "seed0"),
         "error": "RuntimeError: out of memory"},
        {"norm": "ghost", "seed": 1, "status": "stopped_nan",
         "run_dir": os.path.join(root, "ghost", "seed1")},
    ]
    error = capsys.readouterr().err
    assert "failed runs, not counted: batch seed 0 (failed: RuntimeError: " \
        "out of memory" in error
    assert "ghost seed 1 (stopped_nan" in error
    with open(tmp_path / "compare.json") as file:
        assert json.load(file)["failed"] == result["failed"]
    assert cli.exit_status(result) == 1
    assert cli.main(["compare", "--norms", "batch,ghost", "--seeds", "2",
                     "--run-dir", root]) == 1


def test_no_completed_run_draws_no_figure(tmp_path, monkeypatch):
    monkeypatch.setattr(comparison, "train", FakeRun(fail={
        ("batch", 0): "stopped_nan"}))
    result = _compare(["--norms", "batch", "--seeds", "1",
                           "--run-dir", str(tmp_path)])
    assert result["summary"] == {} and result["figure"] is None
    assert not os.path.exists(tmp_path / "compare.png")


def test_a_run_that_cannot_start_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(comparison, "train", FakeRun(fail={
        ("batch", 0): ConfigError("Argument `x` is bad. Received: x=1")}))
    with pytest.raises(SystemExit) as info:
        cli.main(["compare", "--norms", "batch", "--seeds", "1",
                  "--run-dir", str(tmp_path)])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert error == ("keras-seqnorm compare: error: Argument `x` is bad. "
                     "Received: x=1; see keras-seqnorm compare --help\n")


def test_the_default_directory_follows_the_recipe(fake_run, monkeypatch,
                                                  tmp_path):
    monkeypatch.chdir(tmp_path)

    def root(*argv):
        parser = cli.COMMANDS["compare"].parser()
        return comparison.default_root(given_values(parser.parse_args(argv)))

    first = root("--epochs", "3")
    assert first.startswith(os.path.join("runs", "compare",
                                         "simplecnn-digits-"))
    # More norms or seeds reuse the runs already there.
    assert root("--epochs", "3", "--norms", "batch", "--seeds", "5") == first
    assert root("--epochs", "3", "--verbose", "0") == first
    assert len({first, root("--epochs", "4"),
                root("--epochs", "3", "--groups-m", "2")}) == 3
    result = _compare(["--epochs", "3", "--seeds", "1"])
    assert result["runs"][0]["run_dir"] == os.path.join(first, "batch",
                                                        "seed0")


def test_compare_is_a_python_function(tmp_path, fake_run):
    from keras_seqnorm.analysis import compare

    result = compare(norms=["batch", "ghost"], seeds=2, run_dir=str(tmp_path),
                     epochs=3, groups_m=2)
    # The norms take turns, seed by seed; the results list them norm by norm.
    assert [(c.norm, c.seed, c.epochs, c.groups_m, c.verbose)
            for c in fake_run.configs] == [
        ("batch", 0, 3, None, 0), ("ghost", 0, 3, 2, 0),
        ("batch", 1, 3, None, 0), ("ghost", 1, 3, 2, 0),
    ]
    assert [(r["norm"], r["seed"]) for r in result["runs"]] == [
        ("batch", 0), ("batch", 1), ("ghost", 0), ("ghost", 1)]
    assert list(result["summary"]) == ["batch", "ghost"]
    assert result["seeds"] == 2
    with pytest.raises(ConfigError, match="Received: norm='ghost'"):
        compare(run_dir=str(tmp_path), norm="ghost")
    with pytest.raises(ConfigError, match="Received: seeds=0"):
        compare(run_dir=str(tmp_path), seeds=0)
    with pytest.raises(ConfigError, match=r"Received: norms=\('layer',\)"):
        compare(run_dir=str(tmp_path), norms=("layer",))
    assert len(fake_run.configs) == 4
