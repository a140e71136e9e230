"""Comparing norms: one recipe trained with several norms and seeds.

```python
from keras_seqnorm.analysis import compare

result = compare(norms=("batch", "ghost"), seeds=2, dataset="digits",
                 epochs=3)
print(result["table"])
```

`keras-seqnorm compare [train flags] --norms ... --seeds N` parses its
flags and calls `compare`. Every training flag of `keras-seqnorm train`
applies (except `--norm` and `--seed`, which this command sets); with a
`--preset`, each norm gets the preset's group counts for it. Run `r` of
norm `n` trains in `RUN_DIR/n/seed{r}` (a finished run is reused, a killed
one resumes), then the command prints a table of the mean and standard
deviation over seeds of the final validation accuracy and the test
accuracy (with `--recalibrate-steps`, also the test accuracy after
recalibrating the statistics), and writes `RUN_DIR/compare.json` and
`RUN_DIR/compare.png` (validation accuracy per epoch: mean over seeds,
shaded from minimum to maximum). `RUN_DIR` defaults to
`runs/compare/MODEL-DATASET-ID`, ID a hash of the recipe but the norms and
seeds (more seeds or norms reuse the runs already there).

A run that stopped on a non-finite loss or failed with an exception is not
counted: the table holds the completed runs, and the command lists the
failed ones (`compare.json`'s `failed`) and exits with status 1.
"""

import os

from keras_seqnorm import validation
from keras_seqnorm.analysis import plots
from keras_seqnorm.norms import check_norm_names
from keras_seqnorm.norms import group_arguments
from keras_seqnorm.training.config import ConfigError
from keras_seqnorm.training.config import default_run_dir
from keras_seqnorm.training.config import make_config
from keras_seqnorm.training.config import norm_config
from keras_seqnorm.training.config import recipe_id
from keras_seqnorm.training.trainer import COMPLETED
from keras_seqnorm.training.trainer import train
from keras_seqnorm.utils import mean_and_std
from keras_seqnorm.utils import write_json

RESULTS_FILE = "compare.json"
FIGURE_FILE = "compare.png"
DEFAULT_NORMS = ("batch", "ghost", "sequential")
# Fields `compare` sets for each run.
_PER_RUN = ("norm", "seed", "run_dir")


def _groups_text(norm, norm_kwargs):
    """`G_C=4, G_M=8` (`G_C=4, ghost batch=16` with a ghost batch size);
    `layer defaults` for a norm with groups but none given; `-` for a norm
    without groups."""
    labels = {"groups_c": "G_C", "groups_m": "G_M", "groups": "G",
              "ghost_batch_size": "ghost batch"}
    arguments = sorted(group_arguments(norm).values())
    if not arguments:
        return "-"
    if not any(argument in norm_kwargs for argument in arguments):
        return "layer defaults"
    # G_M comes from the ghost batch size when that is given.
    skip = "groups_m" if "ghost_batch_size" in norm_kwargs else (
        "ghost_batch_size")
    return ", ".join(
        f"{labels[argument]}={norm_kwargs.get(argument, 'default')}"
        for argument in arguments if argument != skip
    )


def summarize(runs):
    """Per norm, in order of first appearance: runs, group counts, mean and
    sample standard deviation (0 for one run) of the final validation and
    the test accuracy, and the mean training images per second; with
    recalibrated statistics (`--recalibrate-steps`), also the mean and
    standard deviation of the test accuracy after recalibrating and which
    `recalibrated_statistics` they were.

    Args:
        runs: Dicts with `norm`, `norm_kwargs`, `val_accuracy` (the final
            epoch's), `test_accuracy`, `images_per_second` and
            `recalibrated_test_accuracy` (`None` without recalibration).
    """
    summary = {}
    for norm in dict.fromkeys(entry["norm"] for entry in runs):
        entries = [entry for entry in runs if entry["norm"] == norm]
        val = mean_and_std(entry["val_accuracy"] for entry in entries)
        test = mean_and_std(entry["test_accuracy"] for entry in entries)
        speed, _ = mean_and_std(
            entry["images_per_second"] or 0.0 for entry in entries
        )
        summary[norm] = {
            "runs": len(entries),
            "groups": _groups_text(norm, entries[0]["norm_kwargs"]),
            "val_accuracy_mean": val[0],
            "val_accuracy_std": val[1],
            "test_accuracy_mean": test[0],
            "test_accuracy_std": test[1],
            "images_per_second": speed,
        }
        if entries[0].get("recalibrated_test_accuracy") is not None:
            after = mean_and_std(
                entry["recalibrated_test_accuracy"] for entry in entries
            )
            summary[norm].update(
                recalibrated_statistics=entries[0]["recalibrated_statistics"],
                recalibrated_test_accuracy_mean=after[0],
                recalibrated_test_accuracy_std=after[1],
            )
    return summary


def _percent(row, key):
    return f"{100 * row[key + '_mean']:.2f} ± {100 * row[key + '_std']:.2f}"


def format_table(summary):
    """The summary as a fixed-width text table (accuracies in percent),
    with a column of the test accuracy after recalibrating when the runs
    recalibrated their statistics."""
    recalibrated = next(
        (row["recalibrated_statistics"] for row in summary.values()
         if "recalibrated_statistics" in row), None,
    )
    after = f"test, {recalibrated} stats (%)" if recalibrated else ""
    header = (
        f"{'norm':<12} {'groups':<16} {'runs':>4}  "
        f"{'val accuracy (%)':>17}  {'test accuracy (%)':>17}  "
        + (f"{after}  " if recalibrated else "")
        + f"{'images/s':>9}"
    )
    lines = [header, "-" * len(header)]
    for norm, row in summary.items():
        cells = [_percent(row, "val_accuracy"), _percent(row, "test_accuracy")]
        if recalibrated:
            cells.append((
                _percent(row, "recalibrated_test_accuracy")
                if "recalibrated_statistics" in row else "-"
            ).rjust(len(after)))
        lines.append(
            f"{norm:<12} {row['groups']:<16} {row['runs']:>4}  "
            f"{cells[0]:>17}  {cells[1]:>17}  "
            + "".join(f"{cell}  " for cell in cells[2:])
            + f"{row['images_per_second']:>9.0f}"
        )
    return "\n".join(lines)


def default_root(recipe):
    """`runs/compare/MODEL-DATASET-ID`: ID hashes the recipe (a dict of
    `Config` field values), but the norms and seeds."""
    base = make_config(recipe, norm="sequential")
    identity = recipe_id(recipe, exclude=("norm", "seed"))
    return default_run_dir("compare", base.model, base.dataset, identity)


def run_configs(recipe, root, norms, seeds):
    """The `Config` of every run of a comparison, seeds `0..seeds-1`, in
    `root/NORM/seedS`, silent (`verbose=0`) unless the recipe sets
    `verbose`. The norms take turns, seed by seed (every norm's seed 0,
    then every norm's seed 1, ...), so that a machine that slows down or
    speeds up during the comparison moves every norm's images per second
    alike, as the benchmark interleaves its timings."""
    recipe = {"verbose": 0, **recipe}
    return [
        norm_config(recipe, norm, seed=seed,
                    run_dir=os.path.join(root, norm, f"seed{seed}"))
        for seed in range(seeds)
        for norm in norms
    ]


def _failure(config, status, error=None):
    entry = {
        "norm": config.norm,
        "seed": config.seed,
        "run_dir": config.run_dir,
        "status": status,
    }
    if error is not None:
        entry["error"] = f"{type(error).__name__}: {error}"
    return entry


def compare(norms=DEFAULT_NORMS, seeds=3, run_dir=None, title=None,
            **recipe):
    """Trains one recipe with several norms and seeds, then tabulates and
    plots the completed runs.

    Each run trains with `training.train` in `run_dir/NORM/seedS`: a
    finished run is reused, a killed one resumes.

    Args:
        norms: Distinct names from `NORM_LAYERS`. Defaults to
            `("batch", "ghost", "sequential")`.
        seeds: Runs per norm, with seeds `0..seeds-1`. Defaults to `3`.
        run_dir: The folder of the runs, `compare.json` and `compare.png`.
            Defaults to `None`: `default_root(recipe)`.
        title: Title of the figure. Defaults to `None`: the data set, the
            model and the seeds.
        **recipe: `Config` field values shared by the runs (`preset`,
            `dataset`, `model`, `epochs`, ...; not `norm`, `seed` or
            `run_dir`). `groups_m` and `groups_c` apply only to the norms
            that take them; with a `preset`, each norm gets the preset's
            group counts for it. `verbose` defaults to 0.

    Returns:
        The `compare.json` dict: `norms`, `seeds` (their number),
        `summary` (see `summarize`), `table`,
        `figure` (`None` when no run completed), `runs` (per completed run:
        `norm`, `seed`, `run_dir`, `norm_kwargs`, `val_accuracy`,
        `test_accuracy`, `recalibrated_test_accuracy` and
        `recalibrated_statistics` (`None` unless the recipe sets
        `recalibrate_steps`), `images_per_second`, `val_accuracy_curve`) and
        `failed` (per other run: `norm`, `seed`, `run_dir`, `status` and
        the `error`, if any).

    Raises:
        ConfigError: for bad `norms` or `seeds`, or a recipe that cannot
            run.
    """
    norms = check_norm_names("norms", norms, ConfigError)
    seeds = validation.positive_int("seeds", seeds, error=ConfigError)
    for name in _PER_RUN:
        if name in recipe:
            validation.fail(name, "set by compare, not in the recipe",
                            recipe[name], ConfigError)
    root = run_dir or default_root(recipe)
    configs = run_configs(recipe, root, norms, seeds)
    runs, failed = _train_all(configs)
    # Listed norm by norm, as given, whatever order they trained in.
    order = {norm: index for index, norm in enumerate(norms)}
    for entries in (runs, failed):
        entries.sort(key=lambda entry: (order[entry["norm"]], entry["seed"]))
    summary = summarize(runs)
    figure = None
    os.makedirs(root, exist_ok=True)
    if runs:
        first = configs[0]
        figure = plots.plot_curves(
            runs, os.path.join(root, FIGURE_FILE),
            title=title or f"{first.dataset}, {first.model}: {seeds} "
            "seed(s)",
        )
    comparison = {
        "norms": list(norms),
        "seeds": seeds,
        "summary": summary,
        "table": format_table(summary),
        "figure": figure,
        "runs": runs,
        "failed": failed,
    }
    write_json(os.path.join(root, RESULTS_FILE), comparison)
    return comparison


def _recalibrated(results):
    """The test accuracy after recalibrating (`None` without) and the
    statistics, for a run's entry."""
    recalibrated = results.get("recalibrated") or {}
    return {
        "recalibrated_test_accuracy": recalibrated.get("test_accuracy"),
        "recalibrated_statistics": recalibrated.get("statistics"),
    }


def _train_all(configs):
    """Trains `configs` in turn; returns `(runs, failed)`: an entry per
    completed run, and one per run that failed or stopped."""
    runs, failed = [], []
    for index, config in enumerate(configs, start=1):
        where = f"[{index}/{len(configs)}] norm={config.norm} " \
            f"seed={config.seed}"
        try:
            results = train(config)
        except ConfigError:
            raise
        except Exception as error:  # Recorded in the run's results.json.
            failed.append(_failure(config, "failed", error))
            print(f"{where}: failed ({type(error).__name__}: {error})",
                  flush=True)
            continue
        status = results.get("status", COMPLETED)
        if status != COMPLETED:
            failed.append(_failure(config, status))
            print(f"{where}: {status}", flush=True)
            continue
        runs.append(
            {
                "norm": config.norm,
                "seed": config.seed,
                "run_dir": config.run_dir,
                "norm_kwargs": results["norm_kwargs"],
                "val_accuracy": results["final"]["val_accuracy"],
                "test_accuracy": results["test_accuracy"],
                **_recalibrated(results),
                "images_per_second": results["images_per_second"],
                "val_accuracy_curve": results["history"]["val_accuracy"],
            }
        )
        print(f"{where}: test_accuracy={results['test_accuracy']:.4f} "
              f"({results['wall_seconds']:.1f} s)", flush=True)
    return runs, failed
