import json
import os

import pytest

from keras_seqnorm import cli
from keras_seqnorm.analysis import tuner

# KerasTuner's own threading.currentThread() calls.
pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:keras_tuner.*"
)

# Stubbed validation accuracy per (norm, G_M, G_C); seed 1 adds `spread`.
GHOST = {1: 0.900, 2: 0.930, 4: 0.927, 8: 0.910}
# Binary fractions, so the G_C 2 / G_C 4 tie on the mean is exact.
SEQNORM = {1: 0.9375, 2: 0.953125, 4: 0.953125, 8: 0.921875}


class Objective:
    def __init__(self, fail_at=None, runs_fail=()):
        self.calls = []
        self.fail_at = fail_at
        self.runs_fail = runs_fail

    def __call__(self, values, seed, run_dir):
        if len(self.calls) == self.fail_at:
            raise KeyboardInterrupt
        self.calls.append((tuple(sorted(values.items())), seed))
        if (values["norm"], values["groups_m"], seed) in self.runs_fail:
            raise tuner.RunFailed(run_dir, "stopped_nan")
        if values["norm"] == "ghost":
            return GHOST[values["groups_m"]] + 0.002 * seed
        # G_C 2 and 4 tie on the mean; G_C 4 has the lower variance.
        spread = 0.0 if values["groups_c"] == 4 else 0.0078125
        return SEQNORM[values["groups_c"]] + spread * (seed - 0.5)

    def runs(self):
        return sorted(set(call for call, _ in self.calls))


def _values(norm, groups_m, groups_c=None):
    values = {"norm": norm, "groups_m": groups_m}
    if groups_c is not None:
        values["groups_c"] = groups_c
    return tuple(sorted(values.items()))


def test_sequential_runs_gm_plus_gc_trials_and_follows_the_rule(tmp_path):
    objective = Objective()
    summary = tuner.tune(
        objective, str(tmp_path), search="sequential", tolerance=0.005,
        seeds=(0, 1),
    )
    assert len(summary["trials"]) == 4 + 4
    assert len(objective.calls) == 2 * (4 + 4)
    # G_M = 2 is best (0.931); 4 is within 0.005 of it and larger; 8 is not.
    assert summary["selected_groups_m"] == 4
    assert objective.runs() == sorted(
        [_values("ghost", m) for m in (1, 2, 4, 8)]
        + [_values("sequential", 4, c) for c in (1, 2, 4, 8)]
    )
    best = summary["best"]
    assert (best["norm"], best["groups_m"], best["groups_c"]) == (
        "sequential", 4, 4,
    )
    assert best["val_accuracy"] == 0.953125
    assert best["val_accuracy_std"] == pytest.approx(0.0)
    with open(os.path.join(tmp_path, "tune.json")) as f:
        written = json.load(f)
    assert written == json.loads(json.dumps(summary))
    first = written["trials"][0]
    assert {"norm", "groups_m", "groups_c", "val_accuracy"} <= set(first)
    assert first["val_accuracy_per_seed"] == pytest.approx([0.900, 0.902])


def test_a_tight_tolerance_picks_the_best_groups_m(tmp_path):
    objective = Objective()
    summary = tuner.tune(
        objective, str(tmp_path), groups_c=(2, 4), tolerance=0.0,
        seeds=(0,),
    )
    assert summary["selected_groups_m"] == 2
    assert {t["groups_m"] for t in summary["trials"][4:]} == {2}


def test_select_groups_m_prefers_lowest_variance_among_equal_groups():
    results = [
        {"groups_m": 4, "val_accuracy": 0.9, "val_accuracy_std": 0.02},
        {"groups_m": 4, "val_accuracy": 0.9, "val_accuracy_std": 0.01},
        {"groups_m": 2, "val_accuracy": 0.9, "val_accuracy_std": 0.0},
    ]
    assert tuner.select_groups_m(results, 0.01) is results[1]


def test_grid_runs_every_pair(tmp_path):
    objective = Objective()
    summary = tuner.tune(
        objective, str(tmp_path), groups_m=(2, 4), groups_c=(1, 2, 4),
        search="grid", seeds=(0,),
    )
    assert len(summary["trials"]) == 2 * 3
    assert objective.runs() == sorted(
        _values("sequential", m, c) for m in (2, 4) for c in (1, 2, 4)
    )
    assert "selected_groups_m" not in summary
    assert summary["best"]["groups_c"] in (2, 4)


def test_an_interrupted_search_resumes(tmp_path):
    interrupted = Objective(fail_at=2)
    with pytest.raises(KeyboardInterrupt):
        tuner.tune(interrupted, str(tmp_path), seeds=(0,))
    assert len(interrupted.calls) == 2

    resumed = Objective()
    summary = tuner.tune(resumed, str(tmp_path), seeds=(0,))
    # Trials 0 and 1 completed before the interrupt and are not rerun; the
    # interrupted trial 2 and the rest run once.
    assert resumed.runs() == sorted(
        [_values("ghost", m) for m in (4, 8)]
        + [_values("sequential", 4, c) for c in (1, 2, 4, 8)]
    )
    assert len(resumed.calls) == 6
    assert [t["status"] for t in summary["trials"]] == ["COMPLETED"] * 8

    again = Objective()
    tuner.tune(again, str(tmp_path), seeds=(0,))
    assert again.calls == []


def test_resuming_with_other_settings_is_an_error(tmp_path):
    tuner.tune(Objective(), str(tmp_path), groups_m=(2,), groups_c=(1,))
    with pytest.raises(ValueError, match="other settings.*Received: run_dir="):
        tuner.tune(Objective(), str(tmp_path), groups_m=(4,), groups_c=(1,))
    summary = tuner.tune(
        Objective(), str(tmp_path), groups_m=(4,), groups_c=(1,),
        overwrite=True,
    )
    assert [t["groups_m"] for t in summary["trials"]] == [4, 4]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"groups_m": ()}, r"`groups_m`.*Received: groups_m=\[\]"),
        ({"groups_m": (2, 2)}, r"Received: groups_m=\[2, 2\]"),
        ({"groups_c": (0, 1)}, r"`groups_c`.*Received: groups_c=\[0, 1\]"),
        ({"search": "random"}, r"Received: search='random'"),
        ({"tolerance": -0.1}, r"Received: tolerance=-0.1"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        tuner.SequentialNormOracle(**kwargs)


def test_format_table_marks_the_best(tmp_path):
    summary = tuner.tune(
        Objective(), str(tmp_path), groups_m=(2, 4), groups_c=(2, 4),
    )
    lines = tuner.format_table(summary).splitlines()
    assert len(lines) == 1 + 4
    marked = [line for line in lines if line.endswith("*")]
    assert len(marked) == 1 and " sequential " in marked[0]


@pytest.mark.slow
@pytest.mark.jax_run
def test_tune_command_trains_the_trials(tmp_path, capsys):
    argv = [
        "--model", "simplenet", "--epochs", "1", "--batch-size", "128",
        "--verbose", "0", "--groups-m", "2,4", "--groups-c", "2",
        "--run-dir", str(tmp_path),
    ]
    summary = cli.run_command(["tune", *argv])
    assert [(t["norm"], t["groups_m"], t["groups_c"])
            for t in summary["trials"]] == [
        ("ghost", 2, None), ("ghost", 4, None),
        ("sequential", summary["selected_groups_m"], 2),
    ]
    assert all(0.0 <= t["val_accuracy"] <= 1.0 for t in summary["trials"])
    assert "sequential" in capsys.readouterr().out
    trial_dir = os.path.join(tmp_path, "keras_tuner", "trial_0", "seed_0")
    with open(os.path.join(trial_dir, "config.json")) as f:
        config = json.load(f)
    assert (config["norm"], config["groups_m"], config["seed"]) == (
        "ghost", 2, 0,
    )


def test_tune_command_refuses_to_tune_on_the_test_split(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.run_command(["tune", "--validation-size", "0", "--run-dir",
                         str(tmp_path)])
    assert "Received: validation_size=0" in capsys.readouterr().err


def test_a_trial_with_a_failed_run_is_failed_and_listed(tmp_path, capsys):
    objective = Objective(runs_fail={("ghost", 2, 1)})
    summary = tuner.tune(objective, str(tmp_path), groups_c=(2, 4),
                         seeds=(0, 1))
    statuses = {(t["norm"], t["groups_m"], t["groups_c"]): t["status"]
                for t in summary["trials"]}
    assert statuses[("ghost", 2, None)] == "FAILED"
    assert "val_accuracy" not in summary["trials"][1]
    # The best G_M, 2, failed: the rule picks among the others (1, 4, 8).
    assert summary["selected_groups_m"] == 4
    (failed,) = summary["failed"]
    assert (failed["seed"], failed["status"]) == (1, "stopped_nan")
    assert failed["run_dir"].endswith(os.path.join("trial_1", "seed_1"))
    assert "failed runs, not scored: trial 1 seed 1 (stopped_nan" in (
        capsys.readouterr().err)
    assert cli.exit_status(summary) == 1
    assert cli.exit_status(tuner.tune(Objective(), str(tmp_path / "ok"),
                                      groups_c=(2,))) == 0


def test_many_failed_trials_do_not_stop_the_search(tmp_path):
    objective = Objective(runs_fail={("ghost", m, 0) for m in (1, 2, 4, 8)})
    summary = tuner.tune(objective, str(tmp_path), seeds=(0,))
    assert [t["status"] for t in summary["trials"]] == ["FAILED"] * 4
    assert summary["best"] is None and len(summary["failed"]) == 4


def _one_line_error(capsys, argv):
    with pytest.raises(SystemExit) as info:
        cli.main(["tune", *argv])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "Traceback" not in error, error
    assert error.endswith("; see keras-seqnorm tune --help\n")
    return error


@pytest.mark.tensorflow_only
def test_a_missing_data_set_is_one_line(tmp_path, capsys):
    error = _one_line_error(capsys, [
        "--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
        "--no-download", "--groups-m", "2", "--groups-c", "2",
        "--run-dir", str(tmp_path / "tune"),
    ])
    assert "is not prepared in --data-dir" in error


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--seeds", "0"], "Received: seeds=0"),
        (["--groups-m", "2,x"], "expected integers separated by commas"),
        (["--groups-c", "0,1"], "Received: groups_c=[0, 1]"),
        (["--norm", "ghost"], "unrecognized arguments: --norm"),
    ],
)
def test_bad_flags_are_one_line(tmp_path, capsys, argv, expected):
    error = _one_line_error(capsys, [*argv, "--run-dir", str(tmp_path)])
    assert expected in error


def test_the_default_directory_follows_the_flags(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    dirs = {}
    monkeypatch.setattr(tuner, "tune",
                        lambda objective, run_dir, **kwargs: dirs.setdefault(
                            kwargs["groups_m"][0], []).append(run_dir))
    cli.run_command(["tune", "--groups-m", "2"])
    cli.run_command(["tune", "--groups-m", "2", "--data-dir", "elsewhere",
                     "--verbose", "0"])
    cli.run_command(["tune", "--groups-m", "4"])
    # The defaults, given or not, are the same search.
    cli.run_command(["tune", "--groups-m", "4", "--search", "sequential",
                     "--groups-c", "1,2,4,8", "--tolerance", "0.005"])
    assert dirs[2][0] == dirs[2][1]
    assert dirs[2][0].startswith(os.path.join("runs", "tune",
                                              "simplecnn-digits-"))
    assert dirs[4][0] != dirs[2][0]
    assert dirs[4][1] == dirs[4][0]
