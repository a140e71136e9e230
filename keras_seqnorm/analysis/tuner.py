"""Tune SeqNorm's G_M and G_C with the paper's sequential strategy.

Section 3.2.1 of the paper: "first tuning G_M, then selecting the largest
g_M for which the network performs well (amongst similarly performing
models, select the one with the lowest variance), and finally tuning G_C
with g_M", `|G_M| + |G_C|` trials instead of the grid's `|G_M| x |G_C|`.

```python
from keras_seqnorm.analysis import tune, training_objective

summary = tune(training_objective(dataset="digits", epochs=3), "runs/tune",
               groups_m=(2, 4), groups_c=(2, 4), seeds=(0, 1))
summary["best"]
```

`tune(objective_fn, run_dir, ...)` runs the search on KerasTuner
(`DIR/keras_tuner/`, resumed when rerun), writes `DIR/tune.json` and prints
a table; `training_objective(**recipe)` scores a trial by training the
recipe. Each trial trains one model per seed and scores the mean
validation accuracy. A trial with a run that stopped on a non-finite loss or
failed is a failed trial: it is not scored and `tune.json` lists the run
(`failed_runs`). `keras-seqnorm tune [train flags] --groups-m 1,2,4,8
--groups-c 1,2,4,8 --search sequential|grid --run-dir DIR` parses its flags
and calls both (and exits with status 1 when a run failed).
"""

import json
import os
import sys

import keras_tuner

from keras_seqnorm import validation
from keras_seqnorm.norms import GROUP_COUNTS
from keras_seqnorm.training import trainer
from keras_seqnorm.training.config import ConfigError
from keras_seqnorm.training.config import make_config
from keras_seqnorm.training.config import resolve_data_fields
from keras_seqnorm.utils import format_failures
from keras_seqnorm.utils import mean_and_std
from keras_seqnorm.utils import write_json

GHOST = "ghost"
SEQUENTIAL = "sequential"
SEARCHES = ("sequential", "grid")
DEFAULT_GROUPS = (1, 2, 4, 8)
DEFAULT_TOLERANCE = 0.005
# The search `tune` runs unless told otherwise.
DEFAULT_SEARCH = {
    "groups_m": DEFAULT_GROUPS,
    "groups_c": DEFAULT_GROUPS,
    "search": SEARCHES[0],
    "tolerance": DEFAULT_TOLERANCE,
}
OBJECTIVE = "val_accuracy"
_DONE = (
    keras_tuner.engine.trial.TrialStatus.COMPLETED,
    keras_tuner.engine.trial.TrialStatus.FAILED,
)


class RunFailed(Exception):
    """Raised by an objective whose training run did not complete.

    Args:
        run_dir: The run's directory.
        status: Its status (`stopped_nan`, `failed`).
        error: Optional text of the exception that stopped it.
    """

    def __init__(self, run_dir, status, error=None):
        super().__init__(
            f"the run {run_dir} did not complete: {status}"
            + (f" ({error})" if error else "")
        )
        self.run_dir = run_dir
        self.status = status
        self.error = error


def _check_groups(name, values):
    return list(validation.positive_ints(
        name, list(values), distinct=True, error=ConfigError
    ))


def select_groups_m(results, tolerance):
    """The paper's G_M rule: the largest G_M that performs well.

    Args:
        results: List of dicts with `groups_m`, `val_accuracy` (mean over
            seeds) and `val_accuracy_std` (over seeds).
        tolerance: A G_M performs well when its accuracy is at least the
            best accuracy minus `tolerance` (accuracy as a fraction, so
            `0.005` is half a percentage point).

    Returns:
        The selected dict. Among the G_M that perform well the largest wins;
        equal G_M (repeated trials) fall to the lowest variance.
    """
    best = max(r[OBJECTIVE] for r in results)
    near = [r for r in results if r[OBJECTIVE] >= best - tolerance]
    return max(near, key=lambda r: (r["groups_m"], -r["val_accuracy_std"]))


def select_best(results):
    """The highest mean accuracy; ties fall to the lowest variance."""
    return max(results, key=lambda r: (r[OBJECTIVE], -r["val_accuracy_std"]))


class SequentialNormOracle(keras_tuner.Oracle):
    """A KerasTuner oracle for GhostNorm's G_M and SeqNorm's G_C.

    With `search="sequential"` it first proposes GhostNorm with each
    `groups_m`; once they are done it selects G_M with `select_groups_m`
    and proposes SeqNorm with that G_M and each `groups_c`:
    `len(groups_m) + len(groups_c)` trials. With `search="grid"` it
    proposes SeqNorm with every `(groups_m, groups_c)`:
    `len(groups_m) * len(groups_c)` trials. Trials are proposed in a fixed
    order and derived from the trials already recorded, so a reloaded
    search proposes only what is missing.

    Args:
        groups_m: List of G_M values. Defaults to `(1, 2, 4, 8)`.
        groups_c: List of G_C values. Defaults to `(1, 2, 4, 8)`.
        search: `"sequential"` or `"grid"`. Defaults to `"sequential"`.
        tolerance: See `select_groups_m`. Defaults to `0.005`.
        **kwargs: Passed to `keras_tuner.Oracle`.
    """

    def __init__(self, groups_m=DEFAULT_GROUPS, groups_c=DEFAULT_GROUPS,
                 search="sequential", tolerance=DEFAULT_TOLERANCE, **kwargs):
        groups_m = _check_groups("groups_m", groups_m)
        groups_c = _check_groups("groups_c", groups_c)
        validation.choice("search", search, SEARCHES, ConfigError)
        validation.number("tolerance", tolerance, low=0.0,
                          error=ConfigError)
        hp = keras_tuner.HyperParameters()
        hp.Choice("norm", [GHOST, SEQUENTIAL])
        hp.Choice("groups_m", groups_m)
        with hp.conditional_scope("norm", [SEQUENTIAL]):
            hp.Choice("groups_c", groups_c)
        if search == "grid":
            max_trials = len(groups_m) * len(groups_c)
        else:
            max_trials = len(groups_m) + len(groups_c)
        # A failed trial is a result (an unstable G_M, G_C), not a reason
        # to stop the search.
        kwargs.setdefault("max_consecutive_failed_trials", max_trials + 1)
        super().__init__(
            objective=keras_tuner.Objective(OBJECTIVE, "max"),
            max_trials=max_trials,
            hyperparameters=hp,
            allow_new_entries=False,
            tune_new_entries=False,
            **kwargs,
        )
        self.groups_m = groups_m
        self.groups_c = groups_c
        self.search = search
        self.tolerance = tolerance

    def results(self, norm):
        """Completed trials of `norm` as dicts, in trial order."""
        return [
            trial_result(t) for _, t in sorted(self.trials.items())
            if t.status == keras_tuner.engine.trial.TrialStatus.COMPLETED
            and t.hyperparameters.values["norm"] == norm
        ]

    def selected_groups_m(self):
        """The G_M picked from the GhostNorm trials, or `None` while they
        run (or if none completed)."""
        ghost = [
            t for t in self.trials.values()
            if t.hyperparameters.values["norm"] == GHOST
        ]
        if len(ghost) < len(self.groups_m) or any(
            t.status not in _DONE for t in ghost
        ):
            return None
        results = self.results(GHOST)
        if not results:
            return None
        return select_groups_m(results, self.tolerance)["groups_m"]

    def _planned(self):
        if self.search == "grid":
            return [
                {"norm": SEQUENTIAL, "groups_m": m, "groups_c": c}
                for m in self.groups_m for c in self.groups_c
            ]
        plan = [{"norm": GHOST, "groups_m": m} for m in self.groups_m]
        chosen = self.selected_groups_m()
        if chosen is not None:
            plan += [
                {"norm": SEQUENTIAL, "groups_m": chosen, "groups_c": c}
                for c in self.groups_c
            ]
        return plan

    def populate_space(self, trial_id):
        # One worker runs one trial at a time, so when a trial is asked for
        # every earlier one is done and the plan is final.
        seen = [t.hyperparameters.values for t in self.trials.values()]
        for values in self._planned():
            if values not in seen:
                return {
                    "status": keras_tuner.engine.trial.TrialStatus.RUNNING,
                    "values": values,
                }
        return {"status": keras_tuner.engine.trial.TrialStatus.STOPPED}


def trial_result(trial):
    """One trial as a flat dict: hyperparameters and metrics."""
    values = trial.hyperparameters.values
    result = {
        "trial_id": trial.trial_id,
        "norm": values["norm"],
        "groups_m": values["groups_m"],
        "groups_c": values.get("groups_c"),
        "status": trial.status,
    }
    for name in (OBJECTIVE, "val_accuracy_std"):
        if trial.metrics.exists(name):
            result[name] = float(trial.metrics.get_last_value(name))
    return result


class NormTuner(keras_tuner.Tuner):
    """Runs each trial as one training run per seed.

    Args:
        oracle: A `SequentialNormOracle`.
        objective_fn: Callable `(values, seed, run_dir) -> float`, the
            validation accuracy of one training run, where `values` holds
            `norm`, `groups_m` and (for SeqNorm) `groups_c`; it raises
            `RunFailed` for a run that did not complete, which fails the
            trial.
        seeds: Sequence of integer seeds run per trial.
        **kwargs: Passed to `keras_tuner.Tuner` (`directory`,
            `project_name`, `overwrite`).
    """

    def __init__(self, oracle, objective_fn, seeds=(0,), **kwargs):
        super().__init__(oracle, **kwargs)
        self.objective_fn = objective_fn
        self.seeds = tuple(seeds)

    def run_trial(self, trial, *args, **kwargs):
        values = dict(trial.hyperparameters.values)
        trial_dir = self.get_trial_dir(trial.trial_id)
        scores, failed = [], []
        for seed in self.seeds:
            run_dir = os.path.join(trial_dir, f"seed_{seed}")
            try:
                scores.append(float(self.objective_fn(values, seed, run_dir)))
            except RunFailed as error:
                failed.append({"seed": seed, "run_dir": error.run_dir,
                               "status": error.status, "error": error.error})
                break
        write_json(os.path.join(trial_dir, "seeds.json"),
                   {"seeds": list(self.seeds), OBJECTIVE: scores,
                    "failed": failed}, indent=None)
        if failed:
            raise keras_tuner.errors.FailedTrialError(
                f"seed {failed[0]['seed']}: {failed[0]['status']} "
                f"({failed[0]['run_dir']})"
            )
        mean, std = mean_and_std(scores)
        return {OBJECTIVE: mean, "val_accuracy_std": std}

    def summary(self):
        """`{"trials": [...], "best": {...}, "failed": [...]}` for
        `tune.json`."""
        trials = []
        for _, trial in sorted(self.oracle.trials.items()):
            result = trial_result(trial)
            path = os.path.join(
                self.get_trial_dir(trial.trial_id), "seeds.json"
            )
            if os.path.exists(path):
                with open(path) as f:
                    per_seed = json.load(f)
                result["seeds"] = per_seed["seeds"]
                result["val_accuracy_per_seed"] = per_seed[OBJECTIVE]
                result["failed_runs"] = per_seed.get("failed", [])
            trials.append(result)
        oracle = self.oracle
        seqnorm = oracle.results(SEQUENTIAL)
        summary = {
            "search": oracle.search,
            "tolerance": oracle.tolerance,
            "trials": trials,
            "best": select_best(seqnorm) if seqnorm else None,
            "failed": [
                {"trial_id": t["trial_id"], **run}
                for t in trials for run in t.get("failed_runs", [])
            ],
        }
        if oracle.search == "sequential":
            summary["selected_groups_m"] = oracle.selected_groups_m()
        return summary


def format_table(summary):
    """The trials of a `summary` as a plain-text table, best marked."""
    best = summary["best"] or {}
    lines = [
        f"{'trial':>5}  {'norm':<10} {'G_M':>4} {'G_C':>4}  "
        f"{'val_accuracy':>12} {'std':>7}  status",
    ]
    for t in summary["trials"]:
        accuracy = t.get(OBJECTIVE)
        mark = " *" if t["trial_id"] == best.get("trial_id") else ""
        lines.append(
            f"{t['trial_id']:>5}  {t['norm']:<10} {t['groups_m']:>4} "
            f"{'-' if t['groups_c'] is None else t['groups_c']:>4}  "
            + (
                f"{accuracy:>12.4f} {t['val_accuracy_std']:>7.4f}"
                if accuracy is not None else f"{'-':>12} {'-':>7}"
            )
            + f"  {t['status']}{mark}"
        )
    return "\n".join(lines)


def tune(objective_fn, run_dir, groups_m=DEFAULT_GROUPS,
         groups_c=DEFAULT_GROUPS, search="sequential",
         tolerance=DEFAULT_TOLERANCE, seeds=(0,), settings=None,
         overwrite=False, verbose=0):
    """Runs (or resumes) a search and writes `run_dir/tune.json`.

    The KerasTuner project lives in `run_dir/keras_tuner/`; rerunning with
    `overwrite=False` reloads it, skips the completed trials and reruns an
    interrupted one.

    Args:
        objective_fn: See `NormTuner`.
        run_dir: Output folder.
        groups_m: List of G_M values. Defaults to `(1, 2, 4, 8)`.
        groups_c: List of G_C values. Defaults to `(1, 2, 4, 8)`.
        search: `"sequential"` or `"grid"`. Defaults to `"sequential"`.
        tolerance: See `select_groups_m`. Defaults to `0.005`.
        seeds: Seeds trained per trial. Defaults to `(0,)`.
        settings: Optional JSON-able dict (e.g. the training config) that a
            resumed search must match. Defaults to `None`.
        overwrite: Start afresh, discarding an earlier search. Defaults to
            `False`.
        verbose: KerasTuner's verbosity. Defaults to `0`.

    Returns:
        The summary written to `tune.json`: `search`, `tolerance`,
        `trials` (one dict per trial: `trial_id`, `norm`, `groups_m`,
        `groups_c`, `status`, `val_accuracy`, `val_accuracy_std`, `seeds`,
        `val_accuracy_per_seed`, `failed_runs`), `best` (the best SeqNorm
        trial), `failed` (every run that did not complete, with its
        `trial_id`, `seed`, `run_dir` and `status`) and, for the sequential
        search, `selected_groups_m`.
    """
    seeds = [int(seed) for seed in seeds]
    oracle = SequentialNormOracle(
        groups_m=groups_m, groups_c=groups_c, search=search,
        tolerance=tolerance,
    )
    os.makedirs(run_dir, exist_ok=True)
    _claim(run_dir, overwrite, {
        "groups_m": oracle.groups_m,
        "groups_c": oracle.groups_c,
        "search": search,
        "tolerance": tolerance,
        "seeds": seeds,
        "settings": settings,
    })
    tuner = NormTuner(
        oracle,
        objective_fn,
        seeds=seeds,
        directory=run_dir,
        project_name="keras_tuner",
        overwrite=overwrite,
    )
    try:
        tuner.search(verbose=verbose)
    except _Abort as abort:
        raise abort.error from None
    summary = tuner.summary()
    write_json(os.path.join(run_dir, "tune.json"), summary)
    print(format_table(summary))
    if summary["failed"]:
        print(format_failures(summary["failed"], "not scored"),
              file=sys.stderr)
    return summary


def _claim(run_dir, overwrite, expected):
    """Writes the search's settings to `run_dir/tune_settings.json`, unless
    the directory holds a search with other settings (and not
    `overwrite`)."""
    path = os.path.join(run_dir, "tune_settings.json")
    if not overwrite and os.path.exists(path):
        with open(path) as f:
            found = json.load(f)
        if found != json.loads(json.dumps(expected)):
            raise ConfigError(
                "Argument `run_dir` holds a search with other settings "
                f"({found}, not {expected}): pass `overwrite=True` "
                "(`--overwrite`) or use another run directory. "
                f"Received: run_dir={run_dir!r}"
            )
    write_json(path, expected)


class _Abort(keras_tuner.errors.FatalError):
    """Stops the search for a configuration that cannot run; `tune` raises
    `error` again."""

    def __init__(self, error):
        super().__init__(str(error))
        self.error = error


def training_objective(**recipe):
    """The objective of `tune` that trains `recipe` for each trial.

    A trial's `norm`, `groups_m`, `groups_c`, and the seed and run
    directory of each of its runs, are set over `recipe`; the score is the
    run's final validation accuracy.

    Args:
        **recipe: `Config` field values shared by the trials (`preset`,
            `dataset`, `model`, `epochs`, ...; not `norm`, `groups_m`,
            `groups_c`, `seed` or `run_dir`). It must keep a validation
            split (`validation_size` > 0).

    Returns:
        A function `(values, seed, run_dir) -> val_accuracy` that raises
        `RunFailed` for a run that did not complete, and stops the search
        (`tune` raises the `ConfigError`) for a configuration that cannot
        run.

    Raises:
        ConfigError: for a recipe that cannot be tuned.
    """
    for name in ("norm", *GROUP_COUNTS, "seed", "run_dir"):
        if name in recipe:
            validation.fail(name, "set by tune, not in the recipe",
                            recipe[name], ConfigError)
    probe = resolve_data_fields(make_config(recipe, norm=GHOST))
    if probe.validation_size == 0:
        raise ConfigError(
            "Argument `validation_size` must be positive to tune: with "
            "0 the trials would be scored on the test split. "
            "Received: validation_size=0"
        )

    def objective(values, seed, run_dir):
        config = make_config(
            recipe, norm=values["norm"], groups_m=values["groups_m"],
            groups_c=values.get("groups_c"), seed=seed, run_dir=run_dir,
        )
        try:
            results = trainer.train(config)
        except ConfigError as error:
            raise _Abort(error) from error
        except Exception as error:  # Recorded in the run's results.json.
            raise RunFailed(
                run_dir, trainer.FAILED, f"{type(error).__name__}: {error}"
            ) from None
        status = results.get("status", trainer.COMPLETED)
        if status != trainer.COMPLETED:
            raise RunFailed(run_dir, status)
        return results["final"][OBJECTIVE]

    return objective
