import json
import os

import keras
import numpy as np
import pytest

from keras_seqnorm.training import callbacks as callbacks_lib
from keras_seqnorm.training.callbacks import CheckpointError
from keras_seqnorm.training.callbacks import get_callbacks
from keras_seqnorm.training.callbacks import read_backup
from keras_seqnorm.training.callbacks import read_log
from keras_seqnorm.training.callbacks import save_backup
from keras_seqnorm.training.config import Config

HEADER = "epoch,accuracy,loss,val_accuracy,val_loss\n"


def _write_log(run_dir, epochs):
    with open(os.path.join(run_dir, "log.csv"), "w") as file:
        file.write(HEADER)
        for epoch in range(epochs):
            file.write(f"{epoch},0.5,1.0,{0.6 + 0.01 * epoch},0.9\n")


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    model = keras.Sequential([
        keras.Input((3,)),
        keras.layers.Dense(4),
        keras.layers.Dropout(0.5, seed=seed),
        keras.layers.Dense(2),
    ])
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9), "mse")
    return model


def _trained_model():
    model = _model()
    rng = np.random.default_rng(0)
    model.fit(rng.normal(size=(8, 3)), rng.normal(size=(8, 2)),
              batch_size=4, epochs=2, verbose=0)
    return model


def _write_backup(run_dir, epoch):
    save_backup(_trained_model(), os.path.join(run_dir, "backup"), epoch)


def _of_type(callbacks, kind):
    return [c for c in callbacks if isinstance(c, kind)]


def _state(model):
    return [np.array(keras.ops.convert_to_numpy(v))
            for v in model.variables + model.optimizer.variables]


def test_callbacks_of_a_run(tmp_path):
    callbacks = get_callbacks(Config(run_dir=str(tmp_path)))
    kinds = [type(c) for c in callbacks]
    # Logged before the backup marks the epoch finished.
    assert kinds.index(keras.callbacks.CSVLogger) < kinds.index(
        callbacks_lib.Backup
    )
    assert kinds.index(callbacks_lib.EpochStats) == 0
    (logger,) = _of_type(callbacks, keras.callbacks.CSVLogger)
    assert logger.append and logger.filename == str(tmp_path / "log.csv")
    (backup,) = _of_type(callbacks, callbacks_lib.Backup)
    assert backup.backup_dir == str(tmp_path / "backup")
    assert backup.restore is None
    (checkpoint,) = _of_type(callbacks, keras.callbacks.ModelCheckpoint)
    assert checkpoint.filepath == str(tmp_path / "best.keras")
    assert checkpoint.save_best_only and checkpoint.monitor == "val_accuracy"
    assert _of_type(callbacks, callbacks_lib.StopOnNaN)


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
    (backup,) = _of_type(callbacks, callbacks_lib.Backup)
    assert backup.restore["epoch"] == 3


def test_fresh_start_removes_a_stale_log(tmp_path):
    _write_log(str(tmp_path), 2)
    get_callbacks(Config(), str(tmp_path))
    assert not os.path.exists(tmp_path / "log.csv")


def test_backup_files_are_replaced_whole(tmp_path):
    model = _trained_model()
    backup_dir = str(tmp_path / "b")
    backup = callbacks_lib.Backup(backup_dir)
    backup.set_model(model)
    backup.on_epoch_end(3, {"loss": 1.0})
    backup.on_epoch_end(4, {"loss": 0.5})
    # The older weights file is gone once the new metadata is in place.
    assert sorted(os.listdir(backup_dir)) == [
        "epoch5.weights.h5", "training_metadata.json"]
    assert callbacks_lib.backed_up_epoch(backup_dir) == 5
    restored = _model(seed=1)
    restored.optimizer.build(restored.trainable_variables)
    restored.load_weights(str(tmp_path / "b" / "epoch5.weights.h5"))
    for a, b in zip(model.get_weights(), restored.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_a_kill_while_saving_leaves_the_previous_backup(tmp_path):
    backup_dir = str(tmp_path)
    model = _trained_model()
    save_backup(model, backup_dir, 1)
    # Killed while writing the weights of epoch 2: a partial file, and the
    # metadata still names epoch 1.
    with open(tmp_path / "epoch2.weights.h5", "wb") as file:
        file.write(b"\x89HDF\r\n")
    backup = read_backup(backup_dir)
    assert backup["epoch"] == 1
    assert backup["weights"] == str(tmp_path / "epoch1.weights.h5")
    save_backup(model, backup_dir, 2)
    assert read_backup(backup_dir)["epoch"] == 2
    assert sorted(os.listdir(backup_dir)) == [
        "epoch2.weights.h5", "training_metadata.json"]


def test_restore_brings_back_weights_optimizer_and_seed_states(tmp_path):
    model = _trained_model()
    save_backup(model, str(tmp_path), 2)
    before = _state(model)
    seeds = callbacks_lib._seed_states(model)
    assert seeds, "the Dropout layer's seed generator"

    fresh = _model(seed=5)
    assert fresh.optimizer.built is False
    backup = callbacks_lib.Backup(str(tmp_path), read_backup(str(tmp_path)))
    backup.set_model(fresh)
    backup.on_train_begin()
    after = _state(fresh)
    assert len(after) == len(before)
    for old, new in zip(before, after):
        np.testing.assert_array_equal(old, new)


def test_no_backup_after_a_non_finite_loss(tmp_path):
    backup = callbacks_lib.Backup(str(tmp_path))
    backup.set_model(_trained_model())
    backup.on_epoch_end(0, {"loss": float("nan")})
    assert read_backup(str(tmp_path)) is None


def test_stop_on_nan_records_where():
    guard = callbacks_lib.StopOnNaN()
    model = _model()
    guard.set_model(model)
    guard.on_epoch_begin(2)
    guard.on_train_batch_end(4, {"loss": 0.3})
    assert guard.stopped is None and not model.stop_training
    guard.on_train_batch_end(5, {"loss": float("inf")})
    assert guard.stopped == (2, 5) and model.stop_training


def _truncate(path, keep):
    with open(path, "rb") as file:
        data = file.read()
    with open(path, "wb") as file:
        file.write(data[:keep(len(data))])


def _overwrite_middle(path):
    with open(path, "r+b") as file:
        file.seek(os.path.getsize(path) // 2)
        file.write(b"\x00\x01\x02\x03" * 8)


@pytest.mark.parametrize(
    "damage, name, expected",
    [
        (lambda p: _truncate(p, lambda n: n // 2), "epoch3.weights.h5",
         "does not match the SHA-256"),
        (_overwrite_middle, "epoch3.weights.h5",
         "does not match the SHA-256"),
        (os.remove, "epoch3.weights.h5", "is missing"),
        (lambda p: _truncate(p, lambda n: n // 2), "training_metadata.json",
         "cannot be read (JSONDecodeError"),
        (lambda p: open(p, "w").write('{"epoch": 3, "batch": 0}'),
         "training_metadata.json", "cannot be read (KeyError"),
    ],
    ids=["truncated_weights", "overwritten_weights", "missing_weights",
         "truncated_metadata", "metadata_without_checksum"],
)
def test_damaged_backups_are_never_loaded(tmp_path, damage, name, expected):
    run_dir = tmp_path / "run"
    backup_dir = run_dir / "backup"
    _write_backup(str(run_dir), 3)
    damage(str(backup_dir / name))
    with pytest.raises(CheckpointError) as info:
        read_backup(str(backup_dir))
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"The backup file {backup_dir / name} ")
    assert expected in message
    # The way out.
    assert f"Delete {backup_dir} to train the run again" in message
    with pytest.raises(CheckpointError):
        get_callbacks(Config(), str(run_dir))


def test_metadata_is_json(tmp_path):
    _write_backup(str(tmp_path), 2)
    with open(tmp_path / "backup" / "training_metadata.json") as file:
        metadata = json.load(file)
    assert metadata["epoch"] == 2
    assert metadata["weights"] == "epoch2.weights.h5"
    assert len(metadata["sha256"]) == 64
