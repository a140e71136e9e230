import csv
import json
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_seqnorm.layers import SequentialNormalization
from keras_seqnorm.models import get_model
from keras_seqnorm.training import train

pytestmark = pytest.mark.tensorflow_only

# Digits: 1,257 training images.
STEPS_64 = 1257 // 64


def _log_epochs(run_dir):
    with open(os.path.join(run_dir, "log.csv"), newline="") as file:
        return [int(row["epoch"]) for row in csv.DictReader(file)]


def _subprocess(script, *args, env=None):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KERAS_BACKEND": "tensorflow",
             "TF_CPP_MIN_LOG_LEVEL": "3", **(env or {})},
    )


@pytest.mark.slow
def test_train_digits_writes_the_run_directory(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    argv = ["--norm", "sequential", "--groups-m", "4", "--groups-c", "2",
            "--norm-kwargs", '{"momentum": 0.5}', "--epochs", "3",
            "--run-dir", run_dir, "--verbose", "0"]
    results = train.main(argv)
    assert "test_accuracy=" in capsys.readouterr().out
    with open(os.path.join(run_dir, "config.json")) as file:
        config = json.load(file)
    assert config == results["config"]
    assert (config["image_size"], config["validation_size"]) == (16, 180)
    with open(os.path.join(run_dir, "results.json")) as file:
        assert json.load(file) == json.loads(json.dumps(results))
    assert _log_epochs(run_dir) == [0, 1, 2]
    assert results["epochs_completed"] == 3
    assert len(results["history"]["val_accuracy"]) == 3
    assert results["final"]["val_accuracy"] == (
        results["history"]["val_accuracy"][-1])
    assert results["data"]["input_shape"] == [16, 16, 1]
    assert results["norm_kwargs"] == {"groups_m": 4, "groups_c": 2,
                                      "momentum": 0.5}
    assert results["test_accuracy"] > 0.8  # digits are easy
    assert results["images_per_second"] > 0
    assert not os.path.exists(os.path.join(run_dir, "backup"))
    best = keras.saving.load_model(os.path.join(run_dir, "best.keras"))
    norms = [layer for layer in best.layers
             if isinstance(layer, SequentialNormalization)]
    assert norms and all(
        (n.groups_m, n.groups_c) == (4, 2) for n in norms
    )
    # A finished run is not trained again.
    mtime = os.path.getmtime(os.path.join(run_dir, "log.csv"))
    assert train.main(argv) == json.loads(json.dumps(results))
    assert os.path.getmtime(os.path.join(run_dir, "log.csv")) == mtime
    # Another config in the same directory is refused.
    with pytest.raises(SystemExit):
        train.main([*argv, "--epochs", "4"])
    assert "differs in epochs" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_stopped_after_training_is_not_trained_again(
    tmp_path, monkeypatch
):
    run_dir = str(tmp_path)
    argv = ["--epochs", "1", "--run-dir", run_dir, "--verbose", "0"]
    summarize = train._summarize

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(train, "_summarize", crash)
    with pytest.raises(KeyboardInterrupt):
        train.main(argv)
    assert os.path.exists(os.path.join(run_dir, "backup"))
    best = os.path.join(run_dir, "best.keras")
    mtime = os.path.getmtime(best)
    monkeypatch.setattr(train, "_summarize", summarize)
    results = train.main(argv)
    assert os.path.getmtime(best) == mtime  # no epoch trained again
    assert _log_epochs(run_dir) == [0]
    assert results["epochs_completed"] == 1
    assert not os.path.exists(os.path.join(run_dir, "backup"))


@pytest.mark.slow
def test_grad_accum_clip_precision_and_augmentation(tmp_path):
    run_dir = str(tmp_path)
    results = train.main([
        "--model", "simplenet", "--norm", "ghost", "--epochs", "1",
        "--grad-accum", "2", "--clip-norm", "1", "--precision",
        "mixed_bfloat16", "--label-smoothing", "0.1", "--randaugment",
        "1,6", "--mixup", "0.2", "--flip", "--pad-crop", "2", "--cutout",
        "4", "--weight-decay-on", "kernels", "--run-dir", run_dir,
        "--verbose", "0",
    ])
    assert math.isfinite(results["history"]["loss"][0])
    assert keras.config.dtype_policy().name == "float32"  # restored
    model = keras.saving.load_model(os.path.join(run_dir, "best.keras"))
    assert model.layers[-1].dtype_policy.name == "mixed_bfloat16"
    # One update per two batches.
    assert int(model.optimizer.iterations) == STEPS_64 // 2
    assert model.optimizer.global_clipnorm == 1.0


@pytest.mark.slow
def test_input_shape_and_classes_come_from_the_data(tmp_path, monkeypatch):
    built = []

    def spy(name, **kwargs):
        built.append(kwargs)
        return get_model(name, **kwargs)

    monkeypatch.setattr(train, "get_model", spy)
    with tfds.testing.mock_data(num_examples=48):
        results = train.main([
            "--dataset", "cifar100", "--model", "simplenet",
            "--validation-size", "16", "--batch-size", "16", "--epochs",
            "1", "--run-dir", str(tmp_path), "--verbose", "0",
        ])
    assert built[0]["input_shape"] == (32, 32, 3)
    assert built[0]["num_classes"] == 100
    assert results["data"]["steps_per_epoch"] == 2


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as info:
        train.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    for flag in ("--batch-size", "--groups-m", "--preset", "--randaugment",
                 "--strategy", "--grad-accum", "--no-flip"):
        assert flag in out


MIRRORED = """
import json, sys
import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from keras_seqnorm.training import train

try:
    train.main([*sys.argv[1:], "--batch-size", "33"])
except SystemExit as exit:
    print("uneven batch exit", exit.code)
train.main(sys.argv[1:])
"""


@pytest.mark.slow
def test_mirrored_strategy_over_two_logical_cpus(tmp_path):
    run_dir = str(tmp_path)
    process = _subprocess(
        MIRRORED, "--strategy", "mirrored", "--norm", "ghost",
        "--groups-m", "4", "--epochs", "1", "--batch-size", "64",
        "--run-dir", run_dir, "--verbose", "0",
    )
    assert process.returncode == 0, process.stderr[-3000:]
    assert "uneven batch exit 2" in process.stdout
    assert "multiple of the 2 replicas" in process.stderr
    with open(os.path.join(run_dir, "results.json")) as file:
        results = json.load(file)
    assert results["strategy"] == "MirroredStrategy"
    assert results["replicas"] == 2
    assert results["epochs_completed"] == 1
    assert math.isfinite(results["history"]["loss"][0])


RESUMABLE = """
import os, signal, sys
import keras
from keras_seqnorm.training import train
from keras_seqnorm.training.callbacks import AtomicBackupAndRestore

kill_after, where = os.environ.get("KILL_AFTER"), os.environ.get("KILL_AT")


class Kill(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if kill_after and epoch + 1 == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)


def get_callbacks(config, run_dir=None):
    callbacks = original(config, run_dir)
    kinds = [type(c) for c in callbacks]
    index = kinds.index(AtomicBackupAndRestore)
    # Just before or just after the backup marks the epoch finished.
    callbacks.insert(index if where == "before_backup" else index + 1,
                     Kill())
    return callbacks


original = train.get_callbacks
train.get_callbacks = get_callbacks
train.main(sys.argv[1:])
"""


def _backed_up(run_dir):
    path = os.path.join(run_dir, "backup", "training_metadata.json")
    with open(path) as file:
        return json.load(file)["epoch"]


@pytest.mark.slow
def test_sigkill_and_resume_logs_every_epoch_once(tmp_path):
    run_dir = str(tmp_path)
    argv = ["--epochs", "4", "--run-dir", run_dir, "--verbose", "0"]
    # Killed after logging the second epoch, before backing it up.
    killed = _subprocess(RESUMABLE, *argv,
                         env={"KILL_AFTER": "2", "KILL_AT": "before_backup"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert _log_epochs(run_dir) == [0, 1]
    assert _backed_up(run_dir) == 1
    # Resumed at the second epoch; killed after backing up the third.
    killed = _subprocess(RESUMABLE, *argv,
                         env={"KILL_AFTER": "3", "KILL_AT": "after_backup"})
    assert killed.returncode == -9, killed.stderr[-3000:]
    assert _log_epochs(run_dir) == [0, 1, 2]
    assert _backed_up(run_dir) == 3
    assert not os.path.exists(os.path.join(run_dir, "results.json"))

    resumed = _subprocess(RESUMABLE, *argv)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert _log_epochs(run_dir) == [0, 1, 2, 3]
    with open(os.path.join(run_dir, "results.json")) as file:
        results = json.load(file)
    assert results["epochs_completed"] == 4
    # The optimizer's step count was restored: the cosine continues.
    total = 4 * STEPS_64
    expected = [0.1 * (1 + math.cos(math.pi * (e + 1) * STEPS_64 / total))
                / 2 for e in range(4)]
    np.testing.assert_allclose(
        results["history"]["learning_rate"], expected, atol=1e-6
    )


class _Resolver:
    def __init__(self, task_type, task_id, cluster):
        self.task_type = task_type
        self.task_id = task_id
        self._cluster = cluster

    def cluster_spec(self):
        return self

    def as_dict(self):
        return self._cluster


class _Strategy:
    def __init__(self, *args):
        self.cluster_resolver = _Resolver(*args)


@pytest.mark.parametrize(
    "task, cluster, expected",
    [
        (("worker", 0), {"worker": ["a", "b"]}, ("runs/x", True)),
        (("worker", 1), {"worker": ["a", "b"]},
         (os.path.join("runs/x", "workers", "worker_1"), False)),
        (("chief", 0), {"chief": ["a"], "worker": ["b"]}, ("runs/x", True)),
        (("worker", 0), {"chief": ["a"], "worker": ["b"]},
         (os.path.join("runs/x", "workers", "worker_0"), False)),
    ],
)
def test_only_the_chief_writes_the_run_directory(task, cluster, expected):
    strategy = _Strategy(*task, cluster)
    assert train._worker_run_dir("runs/x", strategy) == expected
    assert train._worker_run_dir("runs/x", object()) == ("runs/x", True)
