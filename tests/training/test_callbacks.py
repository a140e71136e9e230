import json
import os

import keras
import numpy as np

from keras_seqnorm.training import callbacks as callbacks_lib
from keras_seqnorm.training.callbacks import get_callbacks
from keras_seqnorm.training.callbacks import read_log
from keras_seqnorm.training.config import Config

HEADER = "epoch,accuracy,loss,val_accuracy,val_loss\n"


def _write_log(run_dir, epochs):
    with open(os.path.join(run_dir, "log.csv"), "w") as file:
        file.write(HEADER)
        for epoch in range(epochs):
            file.write(f"{epoch},0.5,1.0,{0.6 + 0.01 * epoch},0.9\n")


def _write_backup(run_dir, epoch):
    backup = os.path.join(run_dir, "backup")
    os.makedirs(backup, exist_ok=True)
    with open(os.path.join(backup, "training_metadata.json"), "w") as file:
        json.dump({"epoch": epoch, "batch": 0}, file)


def _of_type(callbacks, kind):
    return [c for c in callbacks if isinstance(c, kind)]


def test_callbacks_of_a_run(tmp_path):
    callbacks = get_callbacks(Config(run_dir=str(tmp_path)))
    kinds = [type(c) for c in callbacks]
    # Logged before the backup marks the epoch finished.
    assert kinds.index(keras.callbacks.CSVLogger) < kinds.index(
        callbacks_lib.AtomicBackupAndRestore
    )
    assert kinds.index(callbacks_lib.EpochStats) == 0
    (logger,) = _of_type(callbacks, keras.callbacks.CSVLogger)
    assert logger.append and logger.filename == str(tmp_path / "log.csv")
    (backup,) = _of_type(callbacks, keras.callbacks.BackupAndRestore)
    assert backup.backup_dir == str(tmp_path / "backup")
    (checkpoint,) = _of_type(callbacks, keras.callbacks.ModelCheckpoint)
    assert checkpoint.filepath == str(tmp_path / "best.keras")
    assert checkpoint.save_best_only and checkpoint.monitor == "val_accuracy"


def test_resume_drops_rows_after_the_backup(tmp_path):
    run_dir = str(tmp_path)
    _write_log(run_dir, 4)  # epochs 0-3 logged, killed before backup of 3
    _write_backup(run_dir, 3)
    callbacks = get_callbacks(Config(), run_dir)
    assert [row["epoch"] for row in read_log(tmp_path / "log.csv")] == [
        0, 1, 2]
    (checkpoint,) = _of_type(callbacks, keras.callbacks.ModelCheckpoint)
    # The best of the rows kept, so a worse model never replaces it.
    np.testing.assert_allclose(checkpoint.best, 0.62)


def test_fresh_start_removes_a_stale_log(tmp_path):
    _write_log(str(tmp_path), 2)
    get_callbacks(Config(), str(tmp_path))
    assert not os.path.exists(tmp_path / "log.csv")


def test_backup_files_are_replaced_whole(tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile("sgd", "mse")
    backup = callbacks_lib.AtomicBackupAndRestore(str(tmp_path / "b"))
    backup.set_model(model)
    backup.on_epoch_end(4)
    assert sorted(os.listdir(tmp_path / "b")) == [
        "latest.weights.h5", "training_metadata.json"]
    assert callbacks_lib.backed_up_epoch(str(tmp_path / "b")) == 5
    restored = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    restored.load_weights(str(tmp_path / "b" / "latest.weights.h5"))
    for a, b in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)
