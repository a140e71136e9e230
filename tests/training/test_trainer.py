import csv
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_seqnorm import cli
from keras_seqnorm import recalibrate_statistics as recalibrate
from keras_seqnorm.layers import SequentialNormalization
from keras_seqnorm.models import get_model
from keras_seqnorm.training import distribution
from keras_seqnorm.training import trainer
from keras_seqnorm.training.config import Config
from keras_seqnorm.training.config import ConfigError
from keras_seqnorm.training.config import parse_config
from keras_seqnorm.training.data import load_data

BACKEND = keras.backend.backend()
# Tests marked `tensorflow_only` need TensorFlow as the backend (their
# subprocesses start it); `jax_run` ones also run in `make test`'s JAX run.

# Digits: 1,257 training images.
STEPS_64 = 1257 // 64


def _log_epochs(run_dir):
    with open(os.path.join(run_dir, "log.csv"), newline="") as file:
        return [int(row["epoch"]) for row in csv.DictReader(file)]


def _main(argv):
    return cli.run_command(["train", *argv])


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
@pytest.mark.jax_run
def test_train_digits_writes_the_run_directory(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    argv = ["--norm", "sequential", "--groups-m", "4", "--groups-c", "2",
            "--norm-kwargs", '{"momentum": 0.5}', "--epochs", "4",
            "--run-dir", run_dir, "--verbose", "0"]
    results = _main(argv)
    assert "test_accuracy=" in capsys.readouterr().out
    with open(os.path.join(run_dir, "config.json")) as file:
        config = json.load(file)
    assert config == results["config"]
    assert (config["image_size"], config["validation_size"]) == (16, 180)
    with open(os.path.join(run_dir, "results.json")) as file:
        assert json.load(file) == json.loads(json.dumps(results))
    assert _log_epochs(run_dir) == [0, 1, 2, 3]
    assert results["epochs_completed"] == 4
    assert len(results["history"]["val_accuracy"]) == 4
    assert results["final"]["val_accuracy"] == (
        results["history"]["val_accuracy"][-1])
    assert results["data"]["input_shape"] == [16, 16, 1]
    assert results["norm_kwargs"] == {"groups_m": 4, "groups_c": 2,
                                      "momentum": 0.5}
    assert results["test_accuracy"] > 0.8  # digits are easy
    # At the median epoch's speed, compilation (the first epoch) left
    # out: three epochs, whose median is not their mean.
    epoch_seconds = np.median(results["history"]["train_seconds"][1:])
    assert results["images_per_second"] == pytest.approx(
        results["data"]["steps_per_epoch"] * config["batch_size"]
        / epoch_seconds
    )
    assert not os.path.exists(os.path.join(run_dir, "backup"))
    best = keras.saving.load_model(os.path.join(run_dir, "best.keras"))
    norms = [layer for layer in best.layers
             if isinstance(layer, SequentialNormalization)]
    assert norms and all(
        (n.groups_m, n.groups_c) == (4, 2) for n in norms
    )
    # A finished run is not trained again.
    mtime = os.path.getmtime(os.path.join(run_dir, "log.csv"))
    assert _main(argv) == json.loads(json.dumps(results))
    assert os.path.getmtime(os.path.join(run_dir, "log.csv")) == mtime
    # Another config in the same directory is refused.
    with pytest.raises(SystemExit):
        _main([*argv, "--epochs", "5"])
    assert "differs in epochs" in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_stopped_after_training_is_not_trained_again(
    tmp_path, monkeypatch
):
    run_dir = str(tmp_path)
    argv = ["--epochs", "1", "--run-dir", run_dir, "--verbose", "0"]
    summarize = trainer._summarize

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_summarize", crash)
    with pytest.raises(KeyboardInterrupt):
        _main(argv)
    assert os.path.exists(os.path.join(run_dir, "backup"))
    best = os.path.join(run_dir, "best.keras")
    mtime = os.path.getmtime(best)
    monkeypatch.setattr(trainer, "_summarize", summarize)
    results = _main(argv)
    assert os.path.getmtime(best) == mtime  # no epoch trained again
    assert _log_epochs(run_dir) == [0]
    assert results["epochs_completed"] == 1
    assert not os.path.exists(os.path.join(run_dir, "backup"))


@pytest.mark.slow
@pytest.mark.jax_run
def test_grad_accum_clip_precision_and_augmentation(tmp_path):
    run_dir = str(tmp_path)
    results = _main([
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

    monkeypatch.setattr(trainer, "get_model", spy)
    with tfds.testing.mock_data(num_examples=48):
        results = _main([
            "--dataset", "cifar100", "--model", "simplenet",
            "--validation-size", "16", "--batch-size", "16", "--epochs",
            "1", "--run-dir", str(tmp_path), "--verbose", "0",
        ])
    assert built[0]["input_shape"] == (32, 32, 3)
    assert built[0]["num_classes"] == 100
    assert results["data"]["steps_per_epoch"] == 2


def test_help_lists_the_flags(capsys):
    with pytest.raises(SystemExit) as info:
        _main(["--help"])
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
from keras_seqnorm.cli import run_command

try:
    run_command(["train", *sys.argv[1:], "--batch-size", "33"])
except SystemExit as exit:
    print("uneven batch exit", exit.code)
run_command(["train", *sys.argv[1:]])
"""


@pytest.mark.slow
@pytest.mark.tensorflow_only
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
    assert "epochs=1 replicas=2 (MirroredStrategy) (" in process.stdout
    with open(os.path.join(run_dir, "results.json")) as file:
        results = json.load(file)
    assert results["strategy"] == "MirroredStrategy"
    assert results["replicas"] == 2
    assert results["epochs_completed"] == 1
    assert math.isfinite(results["history"]["loss"][0])


RESUMABLE = """
import os, signal, sys
import keras
from keras_seqnorm.cli import run_command
from keras_seqnorm.training import distribution
from keras_seqnorm.training import trainer
from keras_seqnorm.training.callbacks import Backup

kill_after, where = os.environ.get("KILL_AFTER"), os.environ.get("KILL_AT")


class Kill(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if kill_after and epoch + 1 == int(kill_after):
            os.kill(os.getpid(), signal.SIGKILL)


def get_callbacks(config, run_dir=None, backup=None):
    callbacks = original(config, run_dir, backup)
    kinds = [type(c) for c in callbacks]
    index = kinds.index(Backup)
    # Just before or just after the backup marks the epoch finished.
    callbacks.insert(index if where == "before_backup" else index + 1,
                     Kill())
    return callbacks


original = trainer.get_callbacks
trainer.get_callbacks = get_callbacks
run_command(["train", *sys.argv[1:]])
"""


def _backed_up(run_dir):
    path = os.path.join(run_dir, "backup", "training_metadata.json")
    with open(path) as file:
        return json.load(file)["epoch"]


@pytest.mark.slow
@pytest.mark.tensorflow_only
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


# Run directories: identity, locking, refusal (issue 10, defects 1 and 2).


def _finished_run(tmp_path, *flags):
    """A finished one-epoch digits run in `runs/p` under `tmp_path`."""
    argv = ["--epochs", "1", "--verbose", "0", *flags, "--run-dir", "runs/p"]
    return _main(argv), argv


def _one_line_error(capsys, argv, command="train"):
    with pytest.raises(SystemExit) as info:
        cli.main([command, *argv])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1, error
    assert error.startswith(f"keras-seqnorm {command}: error: ")
    assert error.endswith(f"; see keras-seqnorm {command} --help\n")
    return error


@pytest.mark.slow
def test_a_run_directory_is_its_resolved_path(tmp_path, monkeypatch,
                                              capsys):
    monkeypatch.chdir(tmp_path)
    results, argv = _finished_run(tmp_path)
    log = tmp_path / "runs" / "p" / "log.csv"
    mtime = os.path.getmtime(log)
    for spelling in ("runs/p/", "./runs/p", str(tmp_path / "runs" / "p"),
                     "runs/../runs/p"):
        again = _main([*argv[:-1], spelling])
        assert again == json.loads(json.dumps(results)), spelling
    assert os.path.getmtime(log) == mtime  # nothing trained again
    assert results["config"]["run_dir"] == str(tmp_path / "runs" / "p")

    # Another config: refused, saying how to continue the stored run first.
    error = _one_line_error(capsys, [*argv[:-1], "./runs/p", "--epochs",
                                     "2"])
    assert "differs in epochs: 1 there, 2 here" in error
    resume = error.index("To continue that run: keras-seqnorm train ")
    assert resume < error.index(f"delete {tmp_path / 'runs' / 'p'}")
    command = error[resume:].split(": ", 1)[1].split(". To train", 1)[0]
    flags = shlex.split(command)[2:]
    # The flags given back reproduce the stored run: it is found finished.
    assert _main(flags) == json.loads(json.dumps(results))
    assert os.path.getmtime(log) == mtime


def test_the_continue_command_gives_back_the_config():
    for argv in (
        ["--norm", "ghost", "--groups-m", "2", "--epochs", "3"],
        ["--preset", "cifar100-wrn28-10", "--norm", "sequential",
         "--epochs", "7", "--no-flip", "--randaugment", "1,6",
         "--norm-kwargs", '{"momentum": 0.5}', "--run-dir", "x y"],
        ["--schedule", "piecewise_linear", "--lr-knots",
         "0:0.1,2.5:1e-05", "--mixup", "0.2", "--image-size", "12"],
    ):
        config = trainer.resolve_run_dir(parse_config(argv))
        command = trainer._continue_command(config.to_dict(), config.run_dir)
        flags = shlex.split(command)[2:]
        assert "--image-size" not in flags or "12" in flags
        assert trainer.resolve_run_dir(parse_config(flags)) == config


@pytest.mark.slow
def test_a_failed_start_leaves_the_directory_reusable(tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = ["--epochs", "1", "--verbose", "0", "--run-dir", str(run_dir)]
    for flags, expected in (
        (["--norm", "sequential", "--groups-c", "3"],
         "Argument `groups_c` must divide the number of channels (16). "
         "Received: groups_c=3"),
        (["--norm-kwargs", '{"foo": 1}'],
         "does not accept the argument(s) foo"),
        (["--dataset", "cifar10", "--data-dir", str(tmp_path / "data"),
          "--no-download"], "is not prepared in --data-dir"),
        (["--norm", "group", "--recalibrate-steps", "5"],
         "Argument `recalibrate_steps` must be 0 for norm='group', whose "
         "layers keep no moving statistics. Received: recalibrate_steps=5"),
    ):
        error = _one_line_error(capsys, [*base, *flags])
        assert expected in error
        assert not os.path.exists(run_dir / "config.json"), flags
    results = _main([*base, "--norm", "sequential", "--groups-c", "4"])
    assert results["status"] == "completed"
    assert results["config"]["groups_c"] == 4


@pytest.mark.parametrize("under", [False, True])
def test_a_run_dir_that_is_a_file_is_one_line(tmp_path, capsys, under):
    path = tmp_path / "file"
    path.write_text("not a directory")
    run_dir = path / "sub" if under else path
    error = _one_line_error(capsys, ["--run-dir", str(run_dir)])
    expected = f"under the file {path}" if under else f"{path} is a file"
    assert expected in error
    assert f"Received: run_dir='{run_dir}'" in error


@pytest.fixture(scope="module")
def interrupted_run(tmp_path_factory):
    """A run stopped after its one epoch, before its results: its backup
    is in place."""
    run_dir = tmp_path_factory.mktemp("interrupted") / "run"
    argv = ["--epochs", "1", "--verbose", "0", "--run-dir", str(run_dir)]
    summarize = trainer._summarize

    def crash(*args):
        raise KeyboardInterrupt

    trainer._summarize = crash
    try:
        with pytest.raises(KeyboardInterrupt):
            _main(argv)
    finally:
        trainer._summarize = summarize
    return run_dir, argv


def _damage_weights(backup):
    (name,) = [n for n in os.listdir(backup) if n.endswith(".weights.h5")]
    path = backup / name
    with open(path, "r+b") as file:
        file.truncate(os.path.getsize(path) // 2)
    return path


def _damage_metadata(backup):
    path = backup / "training_metadata.json"
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    return path


def _overwrite_weights(backup):
    (name,) = [n for n in os.listdir(backup) if n.endswith(".weights.h5")]
    path = backup / name
    with open(path, "r+b") as file:
        file.seek(os.path.getsize(path) - 4096)
        file.write(bytes(range(256)) * 4)
    return path


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage", [_damage_weights, _damage_metadata, _overwrite_weights],
    ids=["truncated_weights", "truncated_metadata", "overwritten_weights"],
)
def test_a_damaged_backup_stops_the_run_in_one_line(
    interrupted_run, tmp_path, capsys, damage
):
    source, argv = interrupted_run
    run_dir = tmp_path / "run"
    shutil.copytree(source, run_dir)
    path = damage(run_dir / "backup")
    mtime = os.path.getmtime(run_dir / "log.csv")
    error = _one_line_error(capsys, [*argv[:-1], str(run_dir)])
    assert f"The backup file {path} " in error
    assert f"Delete {run_dir / 'backup'} to train the run again" in error
    # Not loaded, nothing trained.
    assert os.path.getmtime(run_dir / "log.csv") == mtime
    assert not os.path.exists(run_dir / "results.json")
    # The way out works: without the backup the run trains again.
    shutil.rmtree(run_dir / "backup")
    assert _main([*argv[:-1], str(run_dir)])["status"] == "completed"


# Failed runs (issue 10, defect 5).


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_a_run_stopped_by_nan_fails(tmp_path, capsys):
    run_dir = tmp_path / "run"
    argv = ["train", "--epochs", "3", "--norm", "none", "--learning-rate",
            "1e30", "--schedule", "constant", "--verbose", "0",
            "--run-dir", str(run_dir)]
    assert cli.main(argv) == 1
    error = capsys.readouterr().err
    assert "the loss stopped being finite in epoch 0" in error
    with open(run_dir / "results.json") as file:
        results = json.load(file)
    assert results["status"] == "stopped_nan"
    assert results["stopped_at"]["epoch"] == 0
    assert results["epochs_completed"] == 0
    assert results["test_accuracy"] is None
    assert not os.path.exists(run_dir / "backup")
    # Started again, it stays stopped: not trained, still a failure.
    assert cli.main(argv) == 1
    process = _subprocess(
        "import sys; from keras_seqnorm.cli import main; "
        "sys.exit(main(sys.argv[1:]))", *argv,
    )
    assert process.returncode == 1, process.stderr[-3000:]


class _Explode(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        if epoch == 1:
            raise RuntimeError("disk full")


@pytest.mark.slow
def test_a_run_stopped_by_an_exception_fails_then_resumes(tmp_path):
    config = Config(epochs=3, verbose=0, run_dir=str(tmp_path))
    with pytest.raises(RuntimeError, match="disk full"):
        trainer.train(config, callbacks=[_Explode()])
    with open(tmp_path / "results.json") as file:
        results = json.load(file)
    assert results["status"] == "failed"
    assert results["error"] == "RuntimeError: disk full"
    assert "Traceback" in results["traceback"]
    assert _backed_up(str(tmp_path)) == 2  # the epoch ended, then failed
    # Not finished: the same config resumes from the backup.
    results = trainer.train(config)
    assert results["status"] == "completed"
    assert _log_epochs(str(tmp_path)) == [0, 1, 2]


# The default run directory (issue 16).


def test_the_default_run_directory_is_derived_from_the_config():
    first = trainer.resolve_run_dir(Config(norm="ghost", groups_m=4))
    assert first.run_dir.startswith(
        os.path.join("runs", "train", "simplecnn-digits-ghost-"))
    # The same command, spelled otherwise: the same directory.
    same = trainer.resolve_run_dir(parse_config(
        ["--norm", "ghost", "--groups-m", "4", "--image-size", "16",
         "--verbose", "0", "--jit-compile", "false"]))
    assert same.run_dir == first.run_dir
    others = {
        trainer.resolve_run_dir(Config(norm="ghost", groups_m=2)).run_dir,
        trainer.resolve_run_dir(Config(norm="ghost", groups_m=4,
                                     epochs=3)).run_dir,
        trainer.resolve_run_dir(Config(norm="ghost", groups_m=4,
                                     seed=1)).run_dir,
        first.run_dir,
    }
    assert len(others) == 4
    given = trainer.resolve_run_dir(Config(run_dir="mine"))
    assert given.run_dir == "mine"


@pytest.mark.slow
def test_the_run_directory_is_printed_first(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    results = _main(["--epochs", "1", "--verbose", "0"])
    out = capsys.readouterr().out
    expected = trainer.resolve_run_dir(
        parse_config(["--epochs", "1", "--verbose", "0"])).run_dir
    assert out.splitlines()[0] == (
        f"keras-seqnorm train: run directory {expected}")
    assert results["run_dir"] == str(tmp_path / expected)


def test_jit_compile_defaults_to_keras_auto():
    assert Config().jit_compile == "auto"
    for text, value in (("auto", "auto"), ("true", True), ("false", False)):
        assert parse_config(["--jit-compile", text]).jit_compile == value
    assert parse_config(["--jit-compile"]).jit_compile is True


@pytest.mark.tensorflow_only
def test_jit_compile_auto_reaches_compile(monkeypatch):
    compiled = {}
    original = keras.Model.compile

    def spy(self, *args, **kwargs):
        compiled.update(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "compile", spy)
    data = load_data(trainer.resolve_run_dir(Config(batch_size=64)))
    model = trainer._build_model(Config(), data, 1,
                                 Config().norm_layer_kwargs())
    assert compiled["jit_compile"] == "auto"
    # Keras' choice: no XLA for TensorFlow on a machine without a GPU.
    import tensorflow as tf

    if not tf.config.list_physical_devices("GPU"):
        assert model.jit_compile is False


# Reproducible resume (issue 10, defect 8): killed with SIGKILL at a point
# held open by the child, then resumed, the run ends with the weights of the
# uninterrupted run.

KILLABLE = """
import os, sys, time
import keras
import numpy as np
from keras_seqnorm.training import callbacks as callbacks_lib
from keras_seqnorm.training import distribution
from keras_seqnorm.training import trainer
from keras_seqnorm.training.config import parse_config

out = os.environ["WEIGHTS_OUT"]
hold = os.environ.get("HOLD_AT_BATCH")
hold_in_save = os.environ.get("HOLD_IN_SAVE")


def wait_to_be_killed():
    with open(out + ".holding", "w"):
        pass
    while True:
        time.sleep(1)


class Final(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        np.savez(out, *self.model.get_weights())


class Hold(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        if hold and (self.epoch, batch) == tuple(map(int, hold.split(","))):
            wait_to_be_killed()


save_backup = callbacks_lib.save_backup


def held_save_backup(model, backup_dir, epoch):
    if hold_in_save and epoch == int(hold_in_save):
        # The weights are written, the metadata not yet replaced.
        model.save_weights(os.path.join(backup_dir,
                                        f"epoch{epoch}.weights.h5"))
        wait_to_be_killed()
    save_backup(model, backup_dir, epoch)


def held_recalibrate(*args, **kwargs):
    summary = recalibrate(*args, **kwargs)
    if os.environ.get("HOLD_IN_RECALIBRATION"):
        # The statistics are recalibrated, the results not yet written.
        wait_to_be_killed()
    return summary


recalibrate = trainer.recalibrate_statistics
trainer.recalibrate_statistics = held_recalibrate
callbacks_lib.save_backup = held_save_backup
trainer.train(parse_config(sys.argv[1:]), callbacks=[Final(), Hold()])
"""


def _killed(script, argv, env):
    marker = env["WEIGHTS_OUT"] + ".holding"
    process = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *argv],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "KERAS_BACKEND": "tensorflow",
             "TF_CPP_MIN_LOG_LEVEL": "3", **env},
    )
    # The script holds at the kill point; one that ends first fails here.
    while not os.path.exists(marker):
        assert process.poll() is None, process.stderr.read()[-3000:]
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    process.stderr.close()
    assert process.returncode == -signal.SIGKILL


def _weights(path):
    with np.load(path) as arrays:
        return [arrays[key] for key in sorted(arrays, key=lambda k: int(
            k.split("_")[1]))]


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_a_killed_run_resumes_to_the_same_weights(tmp_path):
    # Every source of randomness: shuffling, per-image RandAugment, every
    # per-batch augmentation and the noise of NoisyBatchNormalization.
    # Two steps per execution, which do not divide the 19 of an epoch.
    flags = ["--epochs", "3", "--norm", "noisy_batch", "--flip",
             "--pad-crop", "2", "--cutout", "4", "--mixup", "0.2",
             "--randaugment", "1,6", "--verbose", "0", "--seed", "3",
             "--steps-per-execution", "2"]
    whole = str(tmp_path / "whole.npz")
    done = _subprocess(KILLABLE, *flags, "--run-dir",
                       str(tmp_path / "whole"), env={"WEIGHTS_OUT": whole})
    assert done.returncode == 0, done.stderr[-3000:]

    run_dir = tmp_path / "resumed"
    argv = [*flags, "--run-dir", str(run_dir)]
    resumed = str(tmp_path / "resumed.npz")
    # Killed in the middle of the second epoch, after the first backup.
    _killed(KILLABLE, argv, {"WEIGHTS_OUT": resumed, "HOLD_AT_BATCH": "1,6"})
    assert _backed_up(str(run_dir)) == 1
    os.remove(resumed + ".holding")
    # Killed while writing the backup of the second epoch.
    _killed(KILLABLE, argv, {"WEIGHTS_OUT": resumed, "HOLD_IN_SAVE": "2"})
    assert _backed_up(str(run_dir)) == 1
    assert os.path.exists(run_dir / "backup" / "epoch2.weights.h5")
    os.remove(resumed + ".holding")
    done = _subprocess(KILLABLE, *argv, env={"WEIGHTS_OUT": resumed})
    assert done.returncode == 0, done.stderr[-3000:]
    assert _log_epochs(str(run_dir)) == [0, 1, 2]
    expected, actual = _weights(whole), _weights(resumed)
    assert len(expected) == len(actual)
    for a, b in zip(expected, actual):
        np.testing.assert_array_equal(a, b)


def _readme_block(marker):
    readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
    with open(readme) as file:
        blocks = file.read().split("```python\n")[1:]
    (block,) = [b.split("```", 1)[0] for b in blocks if marker in b]
    return block


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_the_readme_training_snippet_runs_as_written(tmp_path):
    script = _readme_block("seqnorm = train(parse_config(")
    first = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, capture_output=True,
        text=True, timeout=600,
        env={**os.environ, "KERAS_BACKEND": "tensorflow",
             "TF_CPP_MIN_LOG_LEVEL": "3",
             "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    assert first.returncode == 0, first.stderr[-3000:]
    runs = sorted(os.listdir(tmp_path / "runs" / "train"))
    assert len(runs) == 2  # one directory per config, no collision
    assert runs[0].startswith("simplecnn-digits-ghost-")
    assert runs[1].startswith("simplecnn-digits-sequential-")
    run_dir, ghost, seqnorm = first.stdout.splitlines()[-1].split()
    assert run_dir == str(tmp_path / "runs" / "train" / runs[0])
    assert 0 <= float(ghost) <= 1 and 0 <= float(seqnorm) <= 1


def test_the_readme_train_commands_get_their_own_directories():
    readme = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")
    with open(readme) as file:
        text = file.read()
    # The section's first shell block.
    section = text.split("## Training:", 1)[1].split("```bash\n", 1)[1]
    section = section.split("```", 1)[0]
    prefixes = ("keras-seqnorm train ", "python -m keras_seqnorm train ")
    commands = [
        shlex.split(line)[len(prefix.split()):]
        for line in section.replace("\\\n", "").splitlines()
        for prefix in prefixes if line.startswith(prefix)
    ]
    assert len(commands) == 3
    dirs = {trainer.resolve_run_dir(parse_config(argv)).run_dir
            for argv in commands}
    assert len(dirs) == 3


@pytest.mark.tensorflow_only
def test_deterministic_switches_on_op_determinism(monkeypatch):
    import tensorflow as tf

    calls = []
    monkeypatch.setattr(tf.config.experimental, "enable_op_determinism",
                        lambda: calls.append(True))
    trainer._switch_on_determinism()
    assert calls == [True]
    assert Config(deterministic=True).deterministic is True
    # An execution field: the same run directory.
    assert trainer.resolve_run_dir(Config(deterministic=True)).run_dir == (
        trainer.resolve_run_dir(Config()).run_dir)


def test_deterministic_on_torch_names_the_backend(monkeypatch):
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(
        ConfigError,
        match=r"needs KERAS_BACKEND=tensorflow .*the active backend is "
        r"torch\..*Received: deterministic=True",
    ):
        trainer._switch_on_determinism()


@pytest.mark.parametrize("strategy", ["mirrored", "multi_worker",
                                      "one_device"])
def test_tf_distribute_strategies_are_refused_on_torch(monkeypatch,
                                                       strategy):
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    with pytest.raises(
        ConfigError, match=rf"torch backend.*Received: strategy='{strategy}'"
    ):
        distribution.get_strategy(strategy)


# Recalibrated statistics (issue 13): `--recalibrate-steps`.


class _KeepModel(keras.callbacks.Callback):
    """Keeps the trained model and its weights as training left them."""

    def on_train_end(self, logs=None):
        self.trained = self.model
        self.weights = self.model.get_weights()


def _moving_statistics(model):
    return [np.array(keras.ops.convert_to_numpy(v)) for v in model.variables
            if "moving" in v.path]


@pytest.mark.slow
@pytest.mark.tensorflow_only
def test_recalibration_after_training_resumes_when_killed(tmp_path):
    flags = ["--norm", "sequential", "--epochs", "3", "--recalibrate-steps",
             "20", "--verbose", "0"]
    run_dir = tmp_path / "run"
    argv = [*flags, "--run-dir", str(run_dir)]
    out = str(tmp_path / "weights.npz")
    # Killed after recalibrating, before the results are written.
    _killed(KILLABLE, argv, {"WEIGHTS_OUT": out,
                             "HOLD_IN_RECALIBRATION": "1"})
    assert _backed_up(str(run_dir)) == 3
    assert not os.path.exists(run_dir / "results.json")

    keep = _KeepModel()
    config = parse_config(argv)
    results = trainer.train(config, callbacks=[keep])
    assert _log_epochs(str(run_dir)) == [0, 1, 2]  # not trained again
    # The trained weights are those of the killed run, backed up.
    expected = _weights(out)
    assert len(expected) == len(keep.weights)
    for a, b in zip(expected, keep.weights):
        np.testing.assert_array_equal(a, b)
    recalibrated = results["recalibrated"]
    assert (recalibrated["statistics"], recalibrated["steps"]) == (
        "ghost", 20)
    model = keep.trained
    data = load_data(trainer.resolve_run_dir(config))
    # The model now holds the recalibrated statistics; the EMA ones gave
    # `test_accuracy`.
    after = model.evaluate(data.test, return_dict=True, verbose=0)
    assert after["accuracy"] == pytest.approx(recalibrated["test_accuracy"])
    recalibrated_statistics = _moving_statistics(model)
    model.set_weights(keep.weights)
    before = model.evaluate(data.test, return_dict=True, verbose=0)
    assert before["accuracy"] == pytest.approx(results["test_accuracy"])
    # They are recalibrate_statistics' over 20 batches of the epochs after
    # the last: epoch 3's 19, then epoch 4's first.
    batches = list(trainer.recalibration_batches(data, config))
    assert len(batches) == 20
    epoch_3 = list(data.epoch_dataset(3))
    np.testing.assert_array_equal(batches[0][0], epoch_3[0][0])
    np.testing.assert_array_equal(batches[19][0],
                                  next(iter(data.epoch_dataset(4)))[0])
    assert not np.array_equal(batches[0][0], next(iter(data.train))[0])
    summary = recalibrate(model, data.epoch_dataset(3).concatenate(
        data.epoch_dataset(4)), steps=20)
    assert list(summary) == list(recalibrated["layers"])
    for path, entry in summary.items():
        assert recalibrated["layers"][path]["count"] == entry.count
        assert recalibrated["layers"][path]["batches"] == 20
    for a, b in zip(_moving_statistics(model), recalibrated_statistics):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # Three epochs leave most of the initial zeros and ones in the EMA.
    assert recalibrated["test_accuracy"] > results["test_accuracy"]


# Two JAX devices (issue 12): keras.distribution.DataParallel.

TWO_JAX_DEVICES = {
    "KERAS_BACKEND": "jax",
    "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
}


def _results(run_dir):
    with open(os.path.join(run_dir, "results.json")) as file:
        return json.load(file)


@pytest.mark.slow
@pytest.mark.jax_run
@pytest.mark.skipif(BACKEND != "jax", reason="starts JAX subprocesses")
def test_a_killed_data_parallel_run_on_two_jax_devices_resumes(tmp_path):
    # 181 validation images: the last validation batch (53) does not split
    # over the two devices. G_M=2 per device.
    flags = ["--epochs", "2", "--strategy", "data_parallel", "--norm",
             "sequential", "--groups-m", "2", "--groups-c", "4",
             "--validation-size", "181", "--flip", "--verbose", "0"]
    whole = str(tmp_path / "whole.npz")
    done = _subprocess(KILLABLE, *flags, "--run-dir", str(tmp_path / "whole"),
                       env={**TWO_JAX_DEVICES, "WEIGHTS_OUT": whole})
    assert done.returncode == 0, done.stderr[-3000:]

    run_dir = tmp_path / "resumed"
    argv = [*flags, "--run-dir", str(run_dir)]
    resumed = str(tmp_path / "resumed.npz")
    # Killed with SIGKILL in the second epoch, after the first backup.
    _killed(KILLABLE, argv, {**TWO_JAX_DEVICES, "WEIGHTS_OUT": resumed,
                             "HOLD_AT_BATCH": "1,3"})
    assert _backed_up(str(run_dir)) == 1
    assert _log_epochs(str(run_dir)) == [0]
    os.remove(resumed + ".holding")
    done = _subprocess(KILLABLE, *argv,
                       env={**TWO_JAX_DEVICES, "WEIGHTS_OUT": resumed})
    assert done.returncode == 0, done.stderr[-3000:]
    assert _log_epochs(str(run_dir)) == [0, 1]
    results = _results(str(run_dir))
    assert results["status"] == "completed"
    assert (results["strategy"], results["replicas"]) == ("DataParallel", 2)
    # G_M per device: twice as many ghost batches of the global batch.
    assert results["norm_kwargs"] == {"groups_m": 2, "groups_c": 4}
    assert results["layer_kwargs"] == {"groups_m": 4, "groups_c": 4}
    # The very weights and metrics of the uninterrupted run.
    for a, b in zip(_weights(whole), _weights(resumed)):
        np.testing.assert_array_equal(a, b)
    uninterrupted = _results(str(tmp_path / "whole"))
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        assert results["history"][key] == uninterrupted["history"][key]
    for key in ("test_accuracy", "test_loss"):
        assert results[key] == uninterrupted[key], key
