"""EMA vs recalibrated (ghost, population) statistics on the digits data set.

    KERAS_BACKEND=tensorflow python examples/recalibration_digits.py \
        --epochs 3 --seeds 5

Trains the SimpleCNN of `keras-seqnorm train` (`--dataset digits --model
simplecnn`, its default recipe: batch 64, SGD with Nesterov momentum 0.9,
cosine schedule from 0.1, moving-statistics momentum 0.99) once per norm and
seed, then measures the test accuracy of the same trained weights with

- `ema`: the moving statistics that training left (what `evaluate` uses);
- `ghost`: `recalibrate_statistics(model, train, statistics="ghost")`;
- `population`: `recalibrate_statistics(..., statistics="population")`;

each recalibration over `--recalibration-epochs` passes of the training
pipeline (batches as `fit` sees them: 19 of 64 per pass). It prints a
Markdown table of the mean and standard deviation over the seeds, and
writes every run's figures to `--out` as JSON.
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

COLUMNS = ("ema", "ghost", "population")


class _KeepModel(keras.callbacks.Callback):
    """Holds on to the trained model `train` builds."""

    def on_train_end(self, logs=None):
        self.trained = self.model


def measure(norm, seed, epochs, run_dir, recalibration_epochs=1):
    """Test accuracies of one trained model with each kind of statistics."""
    config = Config(
        run_dir=run_dir, seed=seed, verbose=0, dataset="digits",
        model="simplecnn", norm=norm, epochs=epochs,
    )
    keep = _KeepModel()
    results = train(config, callbacks=[keep])
    model = keep.trained
    data = load_data(resolve_data_fields(config))
    accuracies = {"ema": results["test_accuracy"]}
    moved = {}
    batches = data.train.repeat(recalibration_epochs)
    for statistics in COLUMNS[1:]:
        summary = recalibrate_statistics(model, batches, statistics=statistics)
        accuracies[statistics] = model.evaluate(
            data.test, return_dict=True, verbose=0
        )["accuracy"]
        moved[statistics] = {
            path: dataclasses.asdict(entry) for path, entry in summary.items()
        }
    return {"norm": norm, "seed": seed, "epochs": epochs,
            "recalibration_epochs": recalibration_epochs,
            "test_accuracy": accuracies, "recalibration": moved}


def table(records, norms):
    lines = [
        "| norm | " + " | ".join(f"{c} statistics" for c in COLUMNS) + " |",
        "|---|" + "---|" * len(COLUMNS),
    ]
    for norm in norms:
        cells = []
        for column in COLUMNS:
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
        "--recalibration-epochs", type=int, default=1,
        help="Passes over the training pipeline to recalibrate on.",
    )
    parser.add_argument("--out", default="runs/recalibration_digits.json")
    args = parser.parse_args(argv)
    norms = args.norms.split(",")
    records = []
    with tempfile.TemporaryDirectory() as folder:
        for norm in norms:
            for seed in range(args.seeds):
                run_dir = os.path.join(folder, f"{norm}_{seed}")
                records.append(measure(
                    norm, seed, args.epochs, run_dir,
                    args.recalibration_epochs,
                ))
                print(norm, seed, records[-1]["test_accuracy"], flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as file:
        json.dump(records, file, indent=1)
    print(f"\nTest accuracy (%) after {args.epochs} epochs, statistics "
          f"recalibrated over {args.recalibration_epochs} epoch(s); mean ± "
          f"std over {args.seeds} seeds:\n")
    print(table(records, norms))


if __name__ == "__main__":
    main()
