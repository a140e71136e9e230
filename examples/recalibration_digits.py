"""EMA vs recalibrated (ghost, population) statistics on the digits data set.

    KERAS_BACKEND=tensorflow python examples/recalibration_digits.py \
        --epochs 3 --seeds 5

Trains the SimpleCNN of `keras-seqnorm train` (`--dataset digits --model
simplecnn`, its default recipe: batch 64, SGD with Nesterov momentum 0.9,
cosine schedule from 0.1, moving-statistics momentum 0.99) once per norm and
seed with `--recalibrate-steps` (the first of `--steps`), then measures the
test accuracy of the same trained weights with

- `ema`: the moving statistics that training left (`test_accuracy`);
- `ghost`: the statistics `recalibrate_statistics(..., statistics="ghost")`
  computes over `steps` batches (`recalibrated.test_accuracy` of the run for
  the first of `--steps`);
- `population`: the same with `statistics="population"`;

the batches being those `train` recalibrates over
(`trainer.recalibration_batches`: the epochs after the last, 19 batches of
64 per epoch). It prints a Markdown table of the mean and standard
deviation over the seeds, and writes every run's figures to `--out` as
JSON.
"""

import argparse
import dataclasses
import json
import os
import tempfile

import keras
import numpy as np

from keras_seqnorm import recalibrate_statistics
from keras_seqnorm.training import Config
from keras_seqnorm.training import train
from keras_seqnorm.training.config import resolve_data_fields
from keras_seqnorm.training.data import load_data
from keras_seqnorm.training.trainer import recalibration_batches

STATISTICS = ("ghost", "population")


class _KeepModel(keras.callbacks.Callback):
    """Holds on to the trained model `train` builds."""

    def on_train_end(self, logs=None):
        self.trained = self.model


def measure(norm, seed, epochs, run_dir, steps=(19,)):
    """Test accuracies of one trained model with each kind of statistics,
    recalibrated over each number of `steps`."""
    config = Config(
        run_dir=run_dir, seed=seed, verbose=0, dataset="digits",
        model="simplecnn", norm=norm, epochs=epochs,
        recalibrate_steps=steps[0],
    )
    keep = _KeepModel()
    results = train(config, callbacks=[keep])
    model = keep.trained
    data = load_data(resolve_data_fields(config))
    accuracies = {"ema": results["test_accuracy"]}
    moved = {}
    for count in steps:
        batches_config = dataclasses.replace(config, recalibrate_steps=count)
        for statistics in STATISTICS:
            key = f"{statistics}, {count} steps"
            if (count, statistics) == (steps[0], "ghost"):
                # What the run itself recalibrated.
                accuracies[key] = results["recalibrated"]["test_accuracy"]
                moved[key] = results["recalibrated"]["layers"]
                continue
            summary = recalibrate_statistics(
                model, recalibration_batches(data, batches_config),
                steps=count, statistics=statistics,
            )
            accuracies[key] = model.evaluate(
                data.test, return_dict=True, verbose=0
            )["accuracy"]
            moved[key] = {
                path: dataclasses.asdict(entry)
                for path, entry in summary.items()
            }
    return {"norm": norm, "seed": seed, "epochs": epochs,
            "test_accuracy": accuracies, "recalibration": moved}


def table(records, norms):
    columns = list(records[0]["test_accuracy"])
    lines = [
        "| norm | " + " | ".join(
            "EMA statistics" if c == "ema" else c for c in columns
        ) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for norm in norms:
        cells = []
        for column in columns:
            values = 100 * np.array([
                r["test_accuracy"][column] for r in records
                if r["norm"] == norm
            ])
            cells.append(f"{values.mean():.1f} ± {values.std():.1f}")
        lines.append(f"| {norm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--norms", default="batch,ghost,sequential")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument(
        "--steps", default="19",
        help="Batches to recalibrate over, separated by commas (19: one "
        "epoch); the first is the runs' --recalibrate-steps.",
    )
    parser.add_argument("--out", default="runs/recalibration_digits.json")
    args = parser.parse_args(argv)
    norms = args.norms.split(",")
    steps = tuple(int(count) for count in args.steps.split(","))
    records = []
    with tempfile.TemporaryDirectory() as folder:
        for norm in norms:
            for seed in range(args.seeds):
                run_dir = os.path.join(folder, f"{norm}_{seed}")
                records.append(
                    measure(norm, seed, args.epochs, run_dir, steps)
                )
                print(norm, seed, records[-1]["test_accuracy"], flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as file:
        json.dump(records, file, indent=1)
    print(f"\nTest accuracy (%) after {args.epochs} epochs, statistics "
          f"recalibrated over {args.steps} batches; mean ± std over "
          f"{args.seeds} seeds:\n")
    print(table(records, norms))


if __name__ == "__main__":
    main()
