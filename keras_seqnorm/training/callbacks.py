"""The callbacks of a run: one `get_callbacks(config, run_dir)`.

A run directory holds:

- `backup/`: the state at the end of the last finished epoch, written by
  `Backup`: the weights with the optimizer's state
  (`epochN.weights.h5`, `Model.save_weights`) and `training_metadata.json`
  (the epoch, the weights file's name and SHA-256, the model's random-seed
  states). The weights are written first, under a name of their own; the
  metadata is then replaced atomically, so a run killed at any moment
  (even with SIGKILL) leaves the previous backup whole and the same
  command continues from the last finished epoch. It is kept until
  `results.json` is written (a run killed during its test evaluation
  resumes there). `read_backup` checks a backup before it is loaded: a
  file that cannot be read or whose bytes do not match the recorded
  checksum is a `CheckpointError`, never loaded.
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
import hashlib
import importlib.util
import json
import math
import os
import time

import keras
import numpy as np

from keras_seqnorm.training.config import ConfigError
from keras_seqnorm.utils import current_learning_rate
from keras_seqnorm.utils import write_json

BACKUP_DIR = "backup"
METADATA_FILE = "training_metadata.json"
LOG_FILE = "log.csv"
BEST_MODEL = "best.keras"
TENSORBOARD_DIR = "tensorboard"
MONITOR = "val_accuracy"


class CheckpointError(ConfigError):
    """A backup that cannot be read, or whose bytes do not match the
    checksum written when it was saved."""


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
        logs["learning_rate"] = current_learning_rate(self.model.optimizer)


class StopOnNaN(keras.callbacks.Callback):
    """`keras.callbacks.TerminateOnNaN` that remembers where it stopped:
    `stopped` is `(epoch, batch)` of the first non-finite loss, else
    `None`."""

    def __init__(self):
        super().__init__()
        self.stopped = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            self.stopped = (self._epoch, batch)
            self.model.stop_training = True


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _seed_states(model):
    """The model's random-seed states (`SeedGenerator`s of Dropout,
    NoisyBatchNormalization, ...): the variables of `model.variables` that
    are not weights, which `save_weights` leaves out."""
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def save_backup(model, backup_dir, epoch):
    """Backs up `model` (weights, optimizer, seed states) as the state
    after `epoch` finished epochs; the previous backup stays valid until
    the new metadata replaces it."""
    os.makedirs(backup_dir, exist_ok=True)
    name = f"epoch{epoch}.weights.h5"
    path = os.path.join(backup_dir, name)
    model.save_weights(path, overwrite=True)
    metadata = {
        "epoch": epoch,
        "weights": name,
        "sha256": _sha256(path),
        "seed_states": [
            np.asarray(keras.ops.convert_to_numpy(v)).tolist()
            for v in _seed_states(model)
        ],
    }
    write_json(os.path.join(backup_dir, METADATA_FILE), metadata, indent=None)
    for other in os.listdir(backup_dir):
        if other.endswith(".weights.h5") and other != name:
            os.remove(os.path.join(backup_dir, other))


def _corrupt(path, what, backup_dir):
    run_dir = os.path.dirname(os.path.abspath(backup_dir))
    return CheckpointError(
        f"The backup file {path} {what}: it is not loaded. Delete "
        f"{backup_dir} to train the run again from its first epoch (log.csv "
        f"and best.keras are kept), or delete {run_dir} to discard the run. "
        f"Received: run_dir={run_dir!r}"
    )


def read_backup(backup_dir):
    """The checked backup in `backup_dir`, or `None` when there is none.

    Returns:
        A dict: `epoch` (finished epochs), `weights` (the path of the
        weights file, whose SHA-256 matches the recorded one) and
        `seed_states`.

    Raises:
        CheckpointError: when the metadata cannot be read, or the weights
            file is missing or does not match its checksum.
    """
    path = os.path.join(backup_dir, METADATA_FILE)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as file:
            metadata = json.load(file)
        epoch = metadata["epoch"]
        name = metadata["weights"]
        expected = metadata["sha256"]
        seed_states = metadata["seed_states"]
        if not (
            isinstance(epoch, int) and epoch >= 0 and isinstance(name, str)
            and os.path.basename(name) == name
            and isinstance(expected, str) and isinstance(seed_states, list)
        ):
            raise ValueError("unexpected values")
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise _corrupt(
            path, f"cannot be read ({type(error).__name__}: "
            f"{' '.join(str(error).split())})", backup_dir,
        ) from None
    weights = os.path.join(backup_dir, name)
    if not os.path.exists(weights):
        raise _corrupt(weights, "is missing", backup_dir)
    if _sha256(weights) != expected:
        raise _corrupt(
            weights, "does not match the SHA-256 recorded in "
            f"{METADATA_FILE} when it was saved (truncated or overwritten)",
            backup_dir,
        )
    return {"epoch": epoch, "weights": weights, "seed_states": seed_states}


def backed_up_epoch(backup_dir):
    """Epochs finished according to the backup in `backup_dir` (0: none).

    Raises:
        CheckpointError: see `read_backup`.
    """
    backup = read_backup(backup_dir)
    return backup["epoch"] if backup else 0


class Backup(keras.callbacks.Callback):
    """Backs up the model at the end of every epoch (`save_backup`) and
    restores the checked backup `restore` (from `read_backup`) when
    training begins. Give `fit` the backup's epoch as `initial_epoch`.

    An epoch whose loss is not finite is not backed up.

    Args:
        backup_dir: The folder of the backup.
        restore: `read_backup(backup_dir)`, or `None` to start afresh.
    """

    def __init__(self, backup_dir, restore=None):
        super().__init__()
        self.backup_dir = backup_dir
        self.restore = restore

    def on_train_begin(self, logs=None):
        if self.restore is None:
            return
        path = self.restore["weights"]
        optimizer = self.model.optimizer
        if not optimizer.built:
            # Without a tf.distribute strategy Keras builds it in the
            # first step: too late for its saved state.
            optimizer.build(self.model.trainable_variables)
        states = _seed_states(self.model)
        saved = self.restore["seed_states"]
        try:
            if len(states) != len(saved):
                raise ValueError(
                    f"{len(saved)} seed states for {len(states)} generators"
                )
            self.model.load_weights(path)
            for variable, value in zip(states, saved):
                variable.assign(np.asarray(value, variable.dtype))
        except (OSError, ValueError) as error:
            raise _corrupt(
                path, f"does not fit the model ({type(error).__name__}: "
                f"{' '.join(str(error).split())})", self.backup_dir,
            ) from None

    def on_epoch_end(self, epoch, logs=None):
        loss = (logs or {}).get("loss")
        if loss is not None and not math.isfinite(float(loss)):
            return
        save_backup(self.model, self.backup_dir, epoch + 1)


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


def get_callbacks(config, run_dir=None, backup=None):
    """The callbacks of a run, prepared for a resume.

    Order matters: `EpochStats` adds its numbers to the logs first;
    `CSVLogger` writes the epoch's row before `Backup` records the epoch
    as finished, so a kill in between only repeats the epoch (its row is
    dropped on restart); `ModelCheckpoint` starts from the best
    `val_accuracy` already logged; `StopOnNaN` stops at a non-finite loss.

    Args:
        config: The run's `Config`.
        run_dir: The run directory (created if needed). Defaults to
            `config.run_dir`; workers other than the chief of a
            multi-worker run pass their own.
        backup: The checked backup to restore (`read_backup`); by default
            the one in `run_dir/backup`, if any.

    Returns:
        A list of callbacks for `fit`, which must start at
        `initial_epoch=backed_up_epoch(...)`.

    Raises:
        CheckpointError: for a backup that cannot be used.
    """
    run_dir = run_dir or config.run_dir
    os.makedirs(run_dir, exist_ok=True)
    backup_dir = os.path.join(run_dir, BACKUP_DIR)
    if backup is None:
        backup = read_backup(backup_dir)
    log_path = os.path.join(run_dir, LOG_FILE)
    _truncate_log(log_path, backup["epoch"] if backup else 0)
    logged = [
        row[MONITOR] for row in read_log(log_path)
        if not math.isnan(row.get(MONITOR, math.nan))
    ]
    callbacks = [
        EpochStats(),
        StopOnNaN(),
        keras.callbacks.CSVLogger(log_path, append=True),
        # Kept after training: a run killed during its final evaluation
        # resumes there. `run` deletes it once `results.json` is written.
        Backup(backup_dir, restore=backup),
        keras.callbacks.ModelCheckpoint(
            os.path.join(run_dir, BEST_MODEL),
            monitor=MONITOR,
            mode="max",
            save_best_only=True,
            initial_value_threshold=max(logged) if logged else None,
        ),
    ]
    if importlib.util.find_spec("tensorboard") is not None:
        callbacks.append(
            keras.callbacks.TensorBoard(
                os.path.join(run_dir, TENSORBOARD_DIR), write_graph=False
            )
        )
    return callbacks
