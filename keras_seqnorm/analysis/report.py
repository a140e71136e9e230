"""The reproduction report behind `make reproduce`: `docs/results.md`.

Three checks of the paper, offline on two CPU cores:

1. Section 2.2's worked example, computed with the package's
   `GhostNormalization` and Keras' `BatchNormalization`, next to the
   values the paper prints.
2. BatchNorm, GhostNorm and SeqNorm trained on `digits` over several seeds
   (`keras-seqnorm compare`), mean and standard deviation.
3. The loss landscape of Section 3.1 (`keras-seqnorm landscape`) for no
   norm, BatchNorm and GhostNorm, as a figure.

`reproduce(run_dir="runs/reproduce", out="docs/results.md")` calls
`compare` and `landscape` and writes the report; `keras-seqnorm reproduce
--run-dir runs/reproduce --out docs/results.md` (`make reproduce`) parses
its flags and calls it.
"""

import json
import os
import shutil
import time

import keras
import numpy as np

from keras_seqnorm import validation
from keras_seqnorm.analysis.comparison import compare
from keras_seqnorm.analysis.loss_landscape import landscape
from keras_seqnorm.layers import GhostNormalization
from keras_seqnorm.training.config import ConfigError
from keras_seqnorm.training.config import values_argv
from keras_seqnorm.utils import versions

# Section 2.2: the tuple X and the outputs the paper prints (as printed).
PAPER_X = (35, 39, 30, 4, 38, 26, 27, 19)
PAPER_BATCH_NORM = ("0.7", "1.1", "0.3", "-2.2", "1.0", "-0.1", "-0.02",
                    "-0.8")
PAPER_GHOST_NORM = ("0.6", "0.9", "0.2", "-1.7", "1.5", "-0.2", "-0.07",
                    "-1.2")
# The paper's code is PyTorch, whose BatchNorm epsilon is 1e-5.
PAPER_EPSILON = 1e-5


def _matches(value, printed):
    """`value` rounds to `printed` at the precision `printed` shows."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return abs(value - float(printed)) <= 0.5 * 10.0 ** -decimals + 1e-9


def section_2_2_example():
    """Section 2.2's example through the real layers.

    Returns:
        A dict with `x`, `batch_norm` (Keras `BatchNormalization`),
        `ghost_norm_1` (`GhostNormalization(groups_m=1)`), `ghost_norm_2`
        (`groups_m=2`), all in training mode with `epsilon=1e-5`, the
        paper's printed values and per-value `*_match` flags.
    """
    x = np.asarray(PAPER_X, "float32").reshape(-1, 1)

    def run(layer):
        return [
            float(v) for v in
            keras.ops.convert_to_numpy(layer(x, training=True)).ravel()
        ]

    result = {
        "x": list(PAPER_X),
        "batch_norm": run(
            keras.layers.BatchNormalization(epsilon=PAPER_EPSILON)
        ),
        "ghost_norm_1": run(
            GhostNormalization(groups_m=1, epsilon=PAPER_EPSILON)
        ),
        "ghost_norm_2": run(
            GhostNormalization(groups_m=2, epsilon=PAPER_EPSILON)
        ),
        "paper_batch_norm": list(PAPER_BATCH_NORM),
        "paper_ghost_norm": list(PAPER_GHOST_NORM),
    }
    result["batch_norm_match"] = [
        _matches(v, p) for v, p in zip(result["batch_norm"], PAPER_BATCH_NORM)
    ]
    result["ghost_norm_match"] = [
        _matches(v, p)
        for v, p in zip(result["ghost_norm_2"], PAPER_GHOST_NORM)
    ]
    return result


def _ranks(values):
    return list(np.argsort(np.argsort(values)))


def format_section_2_2(example):
    """Markdown for the Section 2.2 example."""
    lines = [
        "| i | x | BatchNorm (Keras) | paper | GhostNorm G_M=1 | "
        "GhostNorm G_M=2 | paper |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, x in enumerate(example["x"]):
        lines.append(
            f"| {i + 1} | {x} | {example['batch_norm'][i]:.4f} | "
            f"{example['paper_batch_norm'][i]} | "
            f"{example['ghost_norm_1'][i]:.4f} | "
            f"{example['ghost_norm_2'][i]:.4f} | "
            f"{example['paper_ghost_norm'][i]} |"
        )
    batch = example["batch_norm"]
    ghost = example["ghost_norm_2"]
    same_as_bn = np.allclose(example["ghost_norm_1"], batch, atol=1e-5)
    bn_ok = all(example["batch_norm_match"])
    ghost_ok = all(example["ghost_norm_match"])
    kept = _ranks(batch) == _ranks(example["x"])
    lines += [
        "",
        f"- BatchNorm matches the paper at its printed precision: "
        f"**{'yes' if bn_ok else 'no'}** "
        f"({sum(example['batch_norm_match'])}/8 values).",
        f"- GhostNorm (G_M=2) matches the paper at its printed precision: "
        f"**{'yes' if ghost_ok else 'no'}** "
        f"({sum(example['ghost_norm_match'])}/8 values).",
        f"- GhostNorm with G_M=1 equals Keras BatchNormalization: "
        f"**{'yes' if same_as_bn else 'no'}**.",
        f"- BatchNorm keeps the ranking of X (Equation 4): "
        f"**{'yes' if kept else 'no'}**; GhostNorm reorders the 2nd and "
        f"5th values: x2 = 39 > x5 = 38, but "
        f"{ghost[1]:.3f} {'<' if ghost[1] < ghost[4] else '>='} "
        f"{ghost[4]:.3f} "
        f"(**{'yes' if ghost[1] < ghost[4] else 'no'}**, as in the paper).",
    ]
    return "\n".join(lines)


# The recipes of the report (`Config` field values): small enough for two
# CPU cores.
COMPARE_RECIPE = {
    "dataset": "digits", "model": "simplecnn", "groups_m": 8, "groups_c": 4,
}
# Appendix B.1's MNIST recipe (SimpleNet, learning rate 0.4, constant, no
# momentum) on digits; batch 64 with G_M = 8 normalizes over 8 samples, as
# the paper's best MNIST GhostNorm (G_M = 64 of 512, Appendix B.3).
LANDSCAPE_RECIPE = {
    "preset": "mnist-simplenet", "dataset": "digits", "batch_size": 64,
    "groups_m": 8,
}
LANDSCAPE_NORMS = ("none", "batch", "ghost")
COMPARE_NORMS = ("batch", "ghost", "sequential")


def _percent(mean, std):
    return f"{100 * mean:.2f} ± {100 * std:.2f}"


def format_compare(comparison):
    """Markdown table of a `compare` result and what it says."""
    summary = comparison["summary"]
    lines = [
        "| norm | groups | runs | validation accuracy (%) | "
        "test accuracy (%) |",
        "|---|---|---|---|---|",
    ]
    for norm, row in summary.items():
        lines.append(
            f"| {norm} | {row['groups']} | {row['runs']} | "
            f"{_percent(row['val_accuracy_mean'], row['val_accuracy_std'])}"
            f" | "
            f"{_percent(row['test_accuracy_mean'], row['test_accuracy_std'])}"
            " |"
        )
    test = {
        norm: (row["test_accuracy_mean"], row["test_accuracy_std"])
        for norm, row in summary.items()
    }
    order = sorted(test, key=lambda norm: -test[norm][0])
    lines += ["", f"- Ranking by mean test accuracy: {' > '.join(order)} "
              "(the paper: sequential > ghost > batch on CIFAR-10, "
              "CIFAR-100 and ImageNet)."]
    for norm in ("ghost", "sequential"):
        if norm in test and "batch" in test:
            gap = test[norm][0] - test["batch"][0]
            noise = max(test[norm][1], test["batch"][1])
            verdict = (
                "larger than" if abs(gap) > noise else "within"
            )
            lines.append(
                f"- {norm} − batch: {100 * gap:+.2f} points, {verdict} the "
                f"larger standard deviation over seeds "
                f"({100 * noise:.2f})."
            )
    return "\n".join(lines)


def landscape_statistics(landscape, test_error):
    """Per norm: mean band width of the loss and of the gradient
    predictiveness over all probes, and the final test error."""
    stats = {}
    for norm, series in landscape["norms"].items():
        stats[norm] = {
            "loss_band": float(np.mean(
                np.subtract(series["loss_max"], series["loss_min"])
            )),
            "grad_pred_max": float(np.mean(series["grad_pred_max"])),
            "test_error": test_error[norm]["test_error"][-1],
        }
    return stats


def format_landscape(stats):
    """Markdown table of `landscape_statistics` and what it says."""
    lines = [
        "| norm | mean loss range (max − min) | mean max gradient change | "
        "final test error (%) |",
        "|---|---|---|---|",
    ]
    for norm, row in stats.items():
        lines.append(
            f"| {norm} | {row['loss_band']:.4f} | "
            f"{row['grad_pred_max']:.4f} | {100 * row['test_error']:.2f} |"
        )
    if {"none", "batch", "ghost"} <= set(stats):
        band = {norm: stats[norm]["loss_band"] for norm in stats}
        rougher = band["ghost"] > band["batch"]
        closer = abs(band["ghost"] - band["none"]) < abs(
            band["batch"] - band["none"]
        )
        better = stats["ghost"]["test_error"] < stats["batch"]["test_error"]
        lines += [
            "",
            f"- GhostNorm's loss landscape is less smooth than BatchNorm's "
            f"(wider band): **{'yes' if rougher else 'no'}** (the paper: "
            "yes, Section 3.1).",
            f"- GhostNorm's band is closer to the baseline's than "
            f"BatchNorm's: **{'yes' if closer else 'no'}** (the paper: yes "
            "on MNIST, Figure 2).",
            f"- GhostNorm ends with a lower test error than BatchNorm: "
            f"**{'yes' if better else 'no'}** (the paper: yes; one seed "
            "here, so this is anecdotal).",
        ]
    return "\n".join(lines)


def reproduce(run_dir=os.path.join("runs", "reproduce"),
              out=os.path.join("docs", "results.md"), seeds=5, epochs=20,
              landscape_epochs=10):
    """Runs the three checks and writes the report.

    Training runs go to `run_dir` (`compare/` and `landscape/`); a rerun
    reuses the finished ones.

    Args:
        run_dir: The folder of the training runs. Defaults to
            `runs/reproduce`.
        out: The report; its figures go next to it. Defaults to
            `docs/results.md`.
        seeds: Seeds per norm of the comparison. Defaults to `5`.
        epochs: Epochs of the comparison runs. Defaults to `20`.
        landscape_epochs: Epochs of the landscape runs. Defaults to `10`.

    Returns:
        A dict with `section_2_2`, `compare` (its summary), `landscape`
        (its statistics), `figures`, `failed` (the runs that did not
        complete: they are left out of the tables and listed in the report)
        and `seconds`.

    Raises:
        ConfigError: for a bad argument, or an `out` that cannot be
            written.
    """
    for name, value in (("seeds", seeds), ("epochs", epochs),
                        ("landscape_epochs", landscape_epochs)):
        validation.positive_int(name, value, error=ConfigError)
    start = time.perf_counter()
    out_dir = _check_out(out)
    example = section_2_2_example()
    comparison = compare(
        norms=COMPARE_NORMS, seeds=seeds,
        run_dir=os.path.join(run_dir, "compare"), verbose=0, epochs=epochs,
        **COMPARE_RECIPE,
    )
    probes = landscape(
        norms=LANDSCAPE_NORMS, run_dir=os.path.join(run_dir, "landscape"),
        verbose=0, epochs=landscape_epochs, **LANDSCAPE_RECIPE,
    )
    figures = {}
    for name, source in (("landscape", probes["figure"]),
                         ("compare", comparison["figure"])):
        if source:
            figures[name] = os.path.join(out_dir, f"results_{name}.png")
            shutil.copyfile(source, figures[name])
    stats = landscape_statistics(probes, probes["test_error"])
    failed = [
        {"analysis": "compare", **entry} for entry in comparison["failed"]
    ] + [{"analysis": "landscape", **entry} for entry in probes["failed"]]
    seconds = time.perf_counter() - start
    text = _report_text(
        example, comparison, stats, figures, failed, seconds,
        run_dir=run_dir, seeds=seeds, epochs=epochs,
        landscape_epochs=landscape_epochs,
    )
    with open(out, "w") as f:
        f.write(text)
    return {
        "section_2_2": example,
        "compare": comparison["summary"],
        "landscape": stats,
        "figures": figures,
        "failed": failed,
        "seconds": seconds,
    }


def _check_out(out):
    """Checks that the report `out` can be written; returns its folder,
    created."""
    if os.path.isdir(out):
        validation.fail("out", f"a file, but {out} is a directory", out,
                        ConfigError)
    out_dir = os.path.dirname(os.path.abspath(out))
    try:
        os.makedirs(out_dir, exist_ok=True)
    except OSError as error:
        validation.fail(
            "out", f"a file in a directory that can be created "
            f"({type(error).__name__}: {error.strerror})", out, ConfigError,
        )
    return out_dir


def _report_text(example, comparison, stats, figures, failed, seconds,
                 run_dir, seeds, epochs, landscape_epochs):
    """The Markdown of the report."""
    compare_runs = comparison["runs"] or comparison["failed"]
    compare_flags = [
        *values_argv(COMPARE_RECIPE), "--seeds", str(seeds),
        *values_argv({"epochs": epochs}),
    ]
    return TEMPLATE.format(
        section_2_2=format_section_2_2(example),
        compare_command=" ".join(compare_flags),
        compare_recipe=_recipe(compare_runs[0]["run_dir"]),
        seeds=seeds,
        compare=format_compare(comparison),
        compare_figure=_figure(figures, "compare", "validation accuracy "
                               "per epoch"),
        landscape_command=" ".join(values_argv(
            {**LANDSCAPE_RECIPE, "epochs": landscape_epochs}
        )),
        landscape_recipe=_recipe(
            os.path.join(run_dir, "landscape", LANDSCAPE_NORMS[-1])
        ),
        landscape=format_landscape(stats),
        landscape_figure=_figure(figures, "landscape", "loss landscape"),
        verdict=format_verdict(example),
        failed=format_failed(failed),
        minutes=seconds / 60,
        versions=_versions_text(),
    )


def _figure(figures, name, text):
    if name not in figures:
        return "(no figure: no run completed)"
    return f"![{text}]({os.path.basename(figures[name])})"


def format_failed(failed):
    """Markdown list of the runs that did not complete (empty if none)."""
    if not failed:
        return ""
    lines = ["", "## Failed runs", "",
             "Not counted in the tables above:", ""]
    for entry in failed:
        seed = f" seed {entry['seed']}" if "seed" in entry else ""
        error = f": {entry['error']}" if entry.get("error") else ""
        lines.append(
            f"- {entry['analysis']}: {entry['norm']}{seed}, "
            f"`{entry['status']}`{error} (`{entry['run_dir']}`)"
        )
    return "\n".join(lines)


def _recipe(run_dir):
    """One line describing the training recipe of a finished run."""
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    c, data = results["config"], results["data"]
    momentum = (
        f"momentum {c['momentum']}" + (" (Nesterov)" if c["nesterov"] else "")
        if c["momentum"] else "no momentum"
    )
    return (
        f"{c['model']}, {c['epochs']} epochs of batch {c['batch_size']}, "
        f"SGD with learning rate {c['learning_rate']} ({c['schedule']} "
        f"schedule), {momentum}, weight decay {c['weight_decay']}; "
        f"{data['train_size']} training, {data['validation_size']} "
        f"validation{' (= test)' if data['validation_is_test'] else ''} and "
        f"{data['test_size']} test images of {c['image_size']}x"
        f"{c['image_size']}"
    )


def format_verdict(example):
    """The closing bullet on Section 2.2, from the computed example."""
    exact = (
        all(example["batch_norm_match"]) and all(example["ghost_norm_match"])
    )
    if exact:
        return (
            "- **Matches:** the Section 2.2 example. Keras "
            "BatchNormalization gives the paper's BatchNorm values and "
            "`GhostNormalization(groups_m=2)` its GhostNorm values at the "
            "printed precision, including the swapped order of the 2nd "
            "and 5th values (section 1)."
        )
    return (
        "- **Does not match:** the Section 2.2 example; see the values "
        "marked in section 1."
    )


def _versions_text():
    found = versions()
    backend = found["backend"]
    return (
        f"keras {found['keras']}, backend {backend} {found[backend]}, "
        f"Python {found['python']}, {os.cpu_count()} CPUs"
    )


TEMPLATE = """\
# Reproduction report

Written by `make reproduce` (`keras-seqnorm reproduce`) in
{minutes:.1f} minutes ({versions}; a rerun reuses the finished training
runs in its `--run-dir`). Everything here runs offline on
scikit-learn's bundled 8x8 `digits` (1,797 images), not on the paper's
MNIST, CIFAR or ImageNet: it checks that the package computes what the
paper describes and whether the paper's qualitative claims show up on a
small problem, not the paper's accuracies.

## 1. The worked example of Section 2.2

X = (35, 39, 30, 4, 38, 26, 27, 19) as a batch of 8 samples with one
channel, through Keras `BatchNormalization` and this package's
`GhostNormalization` in training mode, epsilon 1e-5 (PyTorch's, the
paper's framework). "paper" is the value the paper prints; a value matches
when it rounds to the printed digits.

{section_2_2}

## 2. BatchNorm vs GhostNorm vs SeqNorm on digits

`keras-seqnorm compare {compare_command}`: {compare_recipe}. {seeds}
seeds per norm; GhostNorm and SeqNorm with G_M = 8 (8 samples per ghost
batch of 64, as the paper's 64 of 512 on CIFAR) and SeqNorm with G_C = 4
(the paper's CIFAR-100 choice). Mean ± sample standard deviation over
seeds of the final epoch's accuracies.

{compare}

{compare_figure}

## 3. The loss landscape (Section 3.1, Appendix B)

`keras-seqnorm landscape {landscape_command} --norms none,batch,ghost`:
Appendix B.1's SimpleNet (hidden layers of 512 and 300 units, the images
flattened): {landscape_recipe}; GhostNorm with G_M = 8, 8 samples per ghost
batch as the paper's best MNIST model (G_M = 64 of 512). Before every
training step the loss is evaluated on the step's batch at
theta − eta·g for eta = 0.1, 0.2, ..., 0.8 (Appendix B.2); the bands span
the minimum to the maximum, as in the paper's Figures 2 and A3. Gradient
predictiveness is ||g(theta) − g(theta − eta·g)||₂. One seed per norm.

{landscape_figure}

{landscape}

## What matches the paper and what does not

{verdict}
- **Checked qualitatively:** the loss-landscape claims of Section 3.1 and
  the ranking of the norms, with the verdicts in sections 2 and 3 above,
  computed from this run. Digits is small (1,257 training images) and easy
  (near 99% test accuracy), so differences between the norms of a few
  tenths of a point are within the spread over seeds, and one landscape
  run per norm is anecdotal.
- **Not reproduced:** the paper's accuracies (Tables 1 and 2: CIFAR-10,
  CIFAR-100 and ImageNet with WRN-28-10 and ResNet-18), the CIFAR-10
  ResNet-56 landscape (Figure 3), and the G_M sweeps of Appendix B.3. They
  need the data sets and GPUs; the presets `cifar100-wrn28-10`,
  `cifar10-wrn28-10`, `cifar10-resnet56-superconvergence`,
  `mnist-simplenet` and `imagenet-resnet18` and the commands `compare`,
  `landscape` (`--relative` for the cyclical schedules) and `tune` run
  them.
{failed}
"""

