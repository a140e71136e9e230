"""The callbacks of a run: one `get_callbacks(config, run_dir)`.

A run directory holds:

- `backup/`: `BackupAndRestore`'s state (weights, optimizer and epoch),
  written at the end of every epoch, so a run killed at any moment (even
  with SIGKILL) and started again with the same command continues from the
  last finished epoch. The files are replaced atomically, and kept until
  `results.json` is written (a run killed during its test evaluation
  resumes there).
- `log.csv`: one row per epoch (`CSVLogger(append=True)`), with the
  learning rate, the epoch's training and total seconds; each epoch
  appears exactly once across restarts.
- `best.keras`: the model of the best `val_accuracy` so far.
- `tensorboard/`: TensorBoard logs, when the `tensorboard` package is
  installed (`pip install tensorboard`; TensorFlow no longer requires it).

On a restart `get_callbacks` reads the epoch the backup holds and drops
the rows of later epochs from `log.csv` (written after the last backup by a
run killed in between), so the epoch is logged again when it is trained
again.
"""

import csv
import importlib.util
import json
import math
import os
import time

import keras

BACKUP_DIR = "backup"
LOG_FILE = "log.csv"
BEST_MODEL = "best.keras"
TENSORBOARD_DIR = "tensorboard"
MONITOR = "val_accuracy"


class EpochStats(keras.callbacks.Callback):
    """Adds `learning_rate`, `train_seconds` (the epoch's training steps)
    and `epoch_seconds` (with validation) to each epoch's logs, for the
    callbacks after it (`CSVLogger`)."""

    def on_epoch_begin(self, epoch, logs=None):
        self._begin = time.perf_counter()
        self._train_end = None

    def on_test_begin(self, logs=None):
        if self._train_end is None:
            self._train_end = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        end = time.perf_counter()
        train_end = self._train_end or end
        logs["train_seconds"] = train_end - self._begin
        logs["epoch_seconds"] = end - self._begin
        optimizer = self.model.optimizer
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        logs["learning_rate"] = float(
            keras.ops.convert_to_numpy(optimizer.learning_rate)
        )


class AtomicBackupAndRestore(keras.callbacks.BackupAndRestore):
    """`BackupAndRestore` whose files are written to temporary names and
    renamed into place (weights first, then the epoch), so a process killed
    while saving leaves the previous backup whole."""

    def _save_model(self):
        os.makedirs(self.backup_dir, exist_ok=True)
        weights = os.path.join(self.backup_dir, "saving.weights.h5")
        self.model.save_weights(weights, overwrite=True)
        metadata = self._training_metadata_path + ".saving"
        with open(metadata, "w") as file:
            json.dump({"epoch": self._current_epoch, "batch": 0}, file)
        os.replace(weights, self._weights_path)
        os.replace(metadata, self._training_metadata_path)


def backed_up_epoch(backup_dir):
    """Epochs finished according to the backup in `backup_dir` (0: none)."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as file:
        return int(json.load(file)["epoch"])


def read_log(path):
    """The rows of a `CSVLogger` file as dicts of floats (`epoch` an int);
    `[]` when there is none."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as file:
        rows = list(csv.DictReader(file))
    return [
        {
            key: int(value) if key == "epoch" else _number(value)
            for key, value in row.items()
        }
        for row in rows
    ]


def _number(value):
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _truncate_log(path, epochs):
    """Keeps the header and the rows of epochs `< epochs` of `path`."""
    if not os.path.exists(path):
        return
    if epochs == 0:
        os.remove(path)
        return
    with open(path, newline="") as file:
        lines = file.read().splitlines(keepends=True)
    kept = lines[:1] + [
        line for line in lines[1:] if int(line.split(",", 1)[0]) < epochs
    ]
    if kept != lines:
        with open(path, "w", newline="") as file:
            file.writelines(kept)


def get_callbacks(config, run_dir=None):
    """The callbacks of a run, prepared for a resume.

    Order matters: `EpochStats` adds its numbers to the logs first;
    `CSVLogger` writes the epoch's row before `AtomicBackupAndRestore`
    records the epoch as finished, so a kill in between only repeats the
    epoch (its row is dropped on restart); `ModelCheckpoint` starts from
    the best `val_accuracy` already logged.

    Args:
        config: The run's `Config`.
        run_dir: The run directory (created if needed). Defaults to
            `config.run_dir`; workers other than the chief of a
            multi-worker run pass their own.

    Returns:
        A list of callbacks for `fit`.
    """
    run_dir = run_dir or config.run_dir
    os.makedirs(run_dir, exist_ok=True)
    backup_dir = os.path.join(run_dir, BACKUP_DIR)
    log_path = os.path.join(run_dir, LOG_FILE)
    _truncate_log(log_path, backed_up_epoch(backup_dir))
    logged = [
        row[MONITOR] for row in read_log(log_path)
        if not math.isnan(row.get(MONITOR, math.nan))
    ]
    callbacks = [
        EpochStats(),
        keras.callbacks.CSVLogger(log_path, append=True),
        # Kept after training: a run killed during its final evaluation
        # resumes there. `run` deletes it once `results.json` is written.
        AtomicBackupAndRestore(backup_dir, delete_checkpoint=False),
        keras.callbacks.ModelCheckpoint(
            os.path.join(run_dir, BEST_MODEL),
            monitor=MONITOR,
            mode="max",
            save_best_only=True,
            initial_value_threshold=max(logged) if logged else None,
        ),
        keras.callbacks.TerminateOnNaN(),
    ]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(
            keras.callbacks.TensorBoard(
                os.path.join(run_dir, TENSORBOARD_DIR), write_graph=False
            )
        )
    return callbacks
