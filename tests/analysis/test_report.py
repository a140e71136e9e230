import json
import os

import numpy as np
import pytest

from keras_seqnorm import cli
from keras_seqnorm.analysis import report
from keras_seqnorm.training.config import Config


@pytest.mark.jax_run
def test_section_2_2_example_matches_the_paper():
    example = report.section_2_2_example()
    assert all(example["batch_norm_match"])
    assert all(example["ghost_norm_match"])
    np.testing.assert_allclose(
        example["ghost_norm_1"], example["batch_norm"], atol=1e-5
    )
    # The second ghost batch (38, 26, 27, 19) by hand.
    tail = np.array([38, 26, 27, 19], np.float64)
    expected = (tail - tail.mean()) / np.sqrt(tail.var() + 1e-5)
    np.testing.assert_allclose(example["ghost_norm_2"][4:], expected,
                               rtol=1e-5)
    text = report.format_section_2_2(example)
    assert "(8/8 values)" in text and "**no**" not in text
    assert "**Matches:**" in report.format_verdict(example)


@pytest.mark.parametrize(
    "value, printed, expected",
    [
        (0.718, "0.7", True),
        (-1.2499, "-1.2", True),
        (-1.2501, "-1.2", False),
        (-0.023, "-0.02", True),
        (-0.016, "-0.02", True),
        (-0.014, "-0.02", False),
    ],
)
def test_matches_at_printed_precision(value, printed, expected):
    assert report._matches(value, printed) is expected


def test_a_wrong_value_is_reported():
    example = report.section_2_2_example()
    example["ghost_norm_2"][4] = 0.5
    example["ghost_norm_match"][4] = False
    text = report.format_section_2_2(example)
    assert "(7/8 values)" in text
    assert "**Does not match:**" in report.format_verdict(example)


def test_landscape_verdicts():
    def series(low, high):
        return {"step": [0, 1], "loss_min": [low, low],
                "loss_max": [high, high], "grad_pred_min": [0.0, 0.0],
                "grad_pred_max": [1.0, 1.0]}

    landscape = {"norms": {"none": series(0.0, 3.0),
                           "batch": series(0.0, 0.5),
                           "ghost": series(0.0, 2.0)}}
    errors = {norm: {"epoch": [1], "test_error": [e]}
              for norm, e in (("none", 0.2), ("batch", 0.1),
                              ("ghost", 0.05))}
    stats = report.landscape_statistics(landscape, errors)
    assert stats["ghost"]["loss_band"] == pytest.approx(2.0)
    text = report.format_landscape(stats)
    assert text.count("**yes**") == 3


def _results(run_dir, status="completed"):
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "results.json"), "w") as file:
        json.dump({
            "status": status,
            "config": Config(epochs=2).to_dict() | {"image_size": 16},
            "data": {"train_size": 1257, "validation_size": 180,
                     "validation_is_test": False, "test_size": 360},
        }, file)


@pytest.mark.jax_run
def test_failed_runs_are_left_out_and_listed(tmp_path, monkeypatch, capsys):
    runs = str(tmp_path / "runs")
    seq = os.path.join(runs, "compare", "sequential", "seed0")
    ghost = os.path.join(runs, "compare", "ghost", "seed1")
    _results(seq)
    _results(ghost, "stopped_nan")
    _results(os.path.join(runs, "landscape", "ghost"))

    calls = {}

    def fake_compare(**kwargs):
        calls["compare"] = kwargs
        return {
            "summary": {"sequential": {
                "runs": 1, "groups": "G_C=4, G_M=8",
                "val_accuracy_mean": 0.9, "val_accuracy_std": 0.0,
                "test_accuracy_mean": 0.91, "test_accuracy_std": 0.0}},
            "figure": None,
            "runs": [{"run_dir": seq}],
            "failed": [{"norm": "ghost", "seed": 1, "run_dir": ghost,
                        "status": "stopped_nan"}],
        }

    def fake_landscape(**kwargs):
        calls["landscape"] = kwargs
        return {"norms": {}, "test_error": {}, "figure": None,
                "failed": [{"norm": "none", "run_dir": "x",
                            "status": "failed", "error": "OSError: no"}]}

    monkeypatch.setattr(report, "compare", fake_compare)
    monkeypatch.setattr(report, "landscape", fake_landscape)
    out = tmp_path / "docs" / "results.md"
    argv = ["--run-dir", runs, "--out", str(out)]
    result = cli.run_command(["reproduce", *argv])
    assert [entry["norm"] for entry in result["failed"]] == ["ghost", "none"]
    text = out.read_text()
    assert "## Failed runs" in text
    assert f"- compare: ghost seed 1, `stopped_nan` (`{ghost}`)" in text
    assert "- landscape: none, `failed`: OSError: no (`x`)" in text
    assert "(no figure: no run completed)" in text
    assert "2 failed run(s)" in capsys.readouterr().err
    assert cli.main(["reproduce", *argv]) == 1
    # The analyses are called as functions, with the report's recipes.
    assert calls["compare"] == {
        "norms": ("batch", "ghost", "sequential"), "seeds": 5,
        "run_dir": os.path.join(runs, "compare"), "verbose": 0,
        "epochs": 20, "dataset": "digits", "model": "simplecnn",
        "groups_m": 8, "groups_c": 4,
    }
    assert calls["landscape"] == {
        "norms": ("none", "batch", "ghost"),
        "run_dir": os.path.join(runs, "landscape"), "verbose": 0,
        "epochs": 10, "preset": "mnist-simplenet", "dataset": "digits",
        "batch_size": 64, "groups_m": 8,
    }
    assert "keras-seqnorm compare --dataset digits --model simplecnn " \
        "--groups-m 8 --groups-c 4 --seeds 5 --epochs 20" in text


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--seeds", "0"], "Received: seeds=0"),
        (["--epochs", "-1"], "Received: epochs=-1"),
        (["--landscape-epochs", "0"], "Received: landscape_epochs=0"),
        (["--seeds", "two"], "invalid int value: 'two'"),
        (["--bogus"], "unrecognized arguments: --bogus"),
    ],
)
def test_bad_flags_are_one_line(capsys, argv, expected):
    with pytest.raises(SystemExit) as info:
        cli.run_command(["reproduce", *argv])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and expected in error
    assert error.startswith("keras-seqnorm reproduce: error: ")


def test_out_must_be_a_file(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.run_command(["reproduce", "--out", str(tmp_path)])
    assert info.value.code == 2
    assert f"{tmp_path} is a directory" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SystemExit) as info:
        cli.run_command(["reproduce", "--out", str(blocker / "results.md")])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert "must be a file in a directory that can be created" in error
    assert f"Received: out='{blocker / 'results.md'}'" in error
