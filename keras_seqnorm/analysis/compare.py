"""`keras-seqnorm compare`: one recipe with several norms and seeds.

```
keras-seqnorm compare --norms batch,ghost,sequential --seeds 3 \\
    --dataset digits --model simplecnn --run-dir runs/demo
keras-seqnorm compare --preset cifar10-wrn28-10 --seeds 2
```

Every training flag of `keras-seqnorm train` applies (except `--norm` and
`--seed`, which this command sets); with a `--preset`, each norm gets the
preset's group counts for it. Run `r` of norm `n` trains in
`RUN_DIR/n/seed{r}` (a finished run is reused, a killed one resumes), then
the command prints a table of the mean and standard deviation over seeds of
the final validation accuracy and the test accuracy, and writes
`RUN_DIR/compare.json` and `RUN_DIR/compare.png` (validation accuracy per
epoch: mean over seeds, shaded from minimum to maximum). `RUN_DIR` defaults
to `runs/compare/MODEL-DATASET-ID`, ID a hash of the flags but `--norms`
and `--seeds` (more seeds or norms reuse the runs already there).

A run that stopped on a non-finite loss or failed with an exception is not
counted: the table holds the completed runs, and the command lists the
failed ones (`compare.json`'s `failed`) and exits with status 1.
"""

import json
import os
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from keras_seqnorm.norms import NORM_LAYERS
from keras_seqnorm.training.config import GROUP_ARGUMENTS
from keras_seqnorm.training.config import ConfigError
from keras_seqnorm.training.config import build_parser as build_train_parser
from keras_seqnorm.training.config import config_from_namespace
from keras_seqnorm.training.config import default_run_dir
from keras_seqnorm.training.config import run_id
from keras_seqnorm.training.train import COMPLETED
from keras_seqnorm.training.train import run

PROG = "keras-seqnorm compare"
RESULTS_FILE = "compare.json"
FIGURE_FILE = "compare.png"


def _norm_list(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in NORM_LAYERS]
    if not names or unknown or len(set(names)) != len(names):
        raise ValueError(
            "Argument `norms` must be distinct names from "
            f"{', '.join(NORM_LAYERS)}, separated by commas. "
            f"Received: norms={text!r}"
        )
    return names


def build_parser():
    """The train flags (less `--norm` and `--seed`) plus `--norms` and
    `--seeds`."""
    parser = build_train_parser(
        prog=PROG,
        description="Train one recipe with several norms and seeds; "
        "tabulate and plot the accuracies.",
        exclude=("norm", "seed"),
    )
    parser.add_argument(
        "--norms",
        default="batch,ghost,sequential",
        help="Norms to compare, separated by commas (default: "
        "batch,ghost,sequential).",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=3,
        help="Runs per norm, with seeds 0..SEEDS-1 (default: 3).",
    )
    return parser


def _std(values):
    return float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _groups_text(norm, norm_kwargs):
    """`G_C=4, G_M=8`; `layer defaults` for a norm with groups but none
    given; `-` for a norm without groups."""
    labels = {"groups_c": "G_C", "groups_m": "G_M", "groups": "G"}
    arguments = sorted(GROUP_ARGUMENTS.get(norm, {}).values())
    if not arguments:
        return "-"
    if not any(argument in norm_kwargs for argument in arguments):
        return "layer defaults"
    return ", ".join(
        f"{labels[argument]}={norm_kwargs.get(argument, 'default')}"
        for argument in arguments
    )


def summarize(runs):
    """Per norm, in order of first appearance: runs, group counts, mean and
    sample standard deviation (0 for one run) of the final validation and
    the test accuracy, and the mean training images per second.

    Args:
        runs: Dicts with `norm`, `norm_kwargs`, `val_accuracy` (the final
            epoch's), `test_accuracy` and `images_per_second`.
    """
    summary = {}
    for norm in dict.fromkeys(entry["norm"] for entry in runs):
        entries = [entry for entry in runs if entry["norm"] == norm]
        val = [entry["val_accuracy"] for entry in entries]
        test = [entry["test_accuracy"] for entry in entries]
        speed = [entry["images_per_second"] or 0.0 for entry in entries]
        summary[norm] = {
            "runs": len(entries),
            "groups": _groups_text(norm, entries[0]["norm_kwargs"]),
            "val_accuracy_mean": float(np.mean(val)),
            "val_accuracy_std": _std(val),
            "test_accuracy_mean": float(np.mean(test)),
            "test_accuracy_std": _std(test),
            "images_per_second": float(np.mean(speed)),
        }
    return summary


def format_table(summary):
    """The summary as a fixed-width text table (accuracies in percent)."""
    header = (
        f"{'norm':<12} {'groups':<16} {'runs':>4}  "
        f"{'val accuracy (%)':>17}  {'test accuracy (%)':>17}  "
        f"{'images/s':>9}"
    )
    lines = [header, "-" * len(header)]
    for norm, row in summary.items():
        val = (
            f"{100 * row['val_accuracy_mean']:.2f} ± "
            f"{100 * row['val_accuracy_std']:.2f}"
        )
        test = (
            f"{100 * row['test_accuracy_mean']:.2f} ± "
            f"{100 * row['test_accuracy_std']:.2f}"
        )
        lines.append(
            f"{norm:<12} {row['groups']:<16} {row['runs']:>4}  "
            f"{val:>17}  {test:>17}  {row['images_per_second']:>9.0f}"
        )
    return "\n".join(lines)


def plot_curves(runs, path, title=None):
    """Validation accuracy per epoch, one line per norm: the mean over its
    seeds, shaded between their minimum and maximum. Writes a PNG."""
    figure = Figure(figsize=(7, 4.5))
    FigureCanvasAgg(figure)
    axis = figure.subplots()
    for index, norm in enumerate(dict.fromkeys(r["norm"] for r in runs)):
        curves = [r["val_accuracy_curve"] for r in runs if r["norm"] == norm]
        length = min(len(curve) for curve in curves)
        values = np.array([curve[:length] for curve in curves])
        epochs = np.arange(1, length + 1)
        color = f"C{index}"
        axis.plot(epochs, values.mean(axis=0), color=color, label=norm)
        axis.fill_between(
            epochs, values.min(axis=0), values.max(axis=0), color=color,
            alpha=0.2,
        )
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_xlabel("epoch")
    axis.set_ylabel("validation accuracy")
    if title:
        axis.set_title(title)
    axis.grid(alpha=0.3)
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    return path


def default_root(namespace):
    """`runs/compare/MODEL-DATASET-ID`: ID hashes the recipe the flags give,
    but the norms and seeds."""
    base = config_from_namespace(
        namespace, norm="sequential", seed=0, run_dir=None
    )
    values = base.to_dict()
    for name in ("groups_m", "groups_c"):
        values[name] = getattr(namespace, name, None)
    identity = run_id(values, exclude=("norm", "seed"))
    return default_run_dir("compare", base.model, base.dataset, identity)


def _run_configs(namespace, root, norms, seeds):
    defaults = {} if hasattr(namespace, "verbose") else {"verbose": 0}
    for norm in norms:
        for seed in range(seeds):
            overrides = {
                **defaults,
                "norm": norm,
                "seed": seed,
                "run_dir": os.path.join(root, norm, f"seed{seed}"),
            }
            for name in ("groups_m", "groups_c"):
                if name not in GROUP_ARGUMENTS.get(norm, {}):
                    overrides[name] = None
            yield config_from_namespace(namespace, **overrides)


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


def format_failures(failed):
    """One line naming each failed run, for the end of a command."""
    return "failed runs, not counted: " + "; ".join(
        f"{entry['norm']} seed {entry['seed']} ({entry['status']}"
        + (f": {entry['error']}" if entry.get("error") else "")
        + f", {entry['run_dir']})"
        for entry in failed
    )


def compare(configs, root, title=None):
    """Trains `configs` in turn (resuming or reusing what `root` holds),
    tabulates and plots the completed runs.

    Args:
        configs: `Config`s, one per norm and seed.
        root: The folder of `compare.json` and `compare.png`.
        title: Optional title of the figure.

    Returns:
        The `compare.json` dict: `norms`, `seeds` (their number),
        `summary` (see `summarize`), `table`,
        `figure` (`None` when no run completed), `runs` (per completed run:
        `norm`, `seed`, `run_dir`, `norm_kwargs`, `val_accuracy`,
        `test_accuracy`, `images_per_second`, `val_accuracy_curve`) and
        `failed` (per other run: `norm`, `seed`, `run_dir`, `status` and
        the `error`, if any).

    Raises:
        ConfigError: for a configuration that cannot run.
    """
    runs, failed = [], []
    for index, config in enumerate(configs, start=1):
        try:
            results = run(config)
        except ConfigError:
            raise
        except Exception as error:  # Recorded in the run's results.json.
            failed.append(_failure(config, "failed", error))
            print(f"[{index}/{len(configs)}] norm={config.norm} "
                  f"seed={config.seed}: failed ({type(error).__name__}: "
                  f"{error})", flush=True)
            continue
        status = results.get("status", COMPLETED)
        if status != COMPLETED:
            failed.append(_failure(config, status))
            print(f"[{index}/{len(configs)}] norm={config.norm} "
                  f"seed={config.seed}: {status}", flush=True)
            continue
        history = results["history"]
        runs.append(
            {
                "norm": config.norm,
                "seed": config.seed,
                "run_dir": config.run_dir,
                "norm_kwargs": results["norm_kwargs"],
                "val_accuracy": results["final"]["val_accuracy"],
                "test_accuracy": results["test_accuracy"],
                "images_per_second": results["images_per_second"],
                "val_accuracy_curve": history["val_accuracy"],
            }
        )
        print(
            f"[{index}/{len(configs)}] norm={config.norm} "
            f"seed={config.seed}: test_accuracy="
            f"{results['test_accuracy']:.4f} "
            f"({results['wall_seconds']:.1f} s)",
            flush=True,
        )
    summary = summarize(runs)
    table = format_table(summary)
    figure = None
    os.makedirs(root, exist_ok=True)
    if runs:
        figure = plot_curves(runs, os.path.join(root, FIGURE_FILE),
                             title=title)
    comparison = {
        "norms": list(dict.fromkeys(config.norm for config in configs)),
        "seeds": len(dict.fromkeys(config.seed for config in configs)),
        "summary": summary,
        "table": table,
        "figure": figure,
        "runs": runs,
        "failed": failed,
    }
    with open(os.path.join(root, RESULTS_FILE), "w") as file:
        json.dump(comparison, file, indent=2)
        file.write("\n")
    return comparison


def main(argv=None):
    """`keras-seqnorm compare [flags]`; `argv` defaults to `sys.argv[1:]`.

    Returns:
        The `compare.json` dict of `compare`. The console script exits with
        status 1 when a run failed.
    """
    parser = build_parser()
    namespace = parser.parse_args(argv)
    try:
        norms = _norm_list(namespace.norms)
    except ValueError as error:
        parser.error(str(error))
    if namespace.seeds < 1:
        parser.error(
            "Argument `seeds` must be a positive integer. "
            f"Received: seeds={namespace.seeds}"
        )
    try:
        root = getattr(namespace, "run_dir", None) or default_root(namespace)
        configs = list(_run_configs(namespace, root, norms, namespace.seeds))
        print(f"{PROG}: run directory {root}", flush=True)
        first = configs[0]
        comparison = compare(
            configs, root,
            title=f"{first.dataset}, {first.model}: {namespace.seeds} "
            "seed(s)",
        )
    except ConfigError as error:
        parser.error(str(error))
    print(comparison["table"])
    if comparison["failed"]:
        print(f"{PROG}: {format_failures(comparison['failed'])}",
              file=sys.stderr)
    written = os.path.join(root, RESULTS_FILE)
    if comparison["figure"]:
        written += f" and {comparison['figure']}"
    print(f"wrote {written}")
    return comparison


if __name__ == "__main__":
    from keras_seqnorm.cli import exit_status

    sys.exit(exit_status(main()))
