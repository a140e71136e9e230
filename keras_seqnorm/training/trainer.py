"""Training one model with one norm under one recipe: `train(config)`.

```python
from keras_seqnorm.training import Config, train

results = train(Config(dataset="digits", norm="ghost", groups_m=4))
```

`keras-seqnorm train [flags]` parses its flags into a `Config` and calls
`train`, which does the work: the strategy first (`distribution.py`: a
`tf.distribute` strategy, or JAX's `keras.distribution.DataParallel`),
then the data with the global batch size, and inside the strategy's scope
the model and its compilation, `fit` with the callbacks of `callbacks.py`,
the test evaluation and, with `--recalibrate-steps`, the recalibration of
the moving statistics and a second test evaluation. Once the data and the
model exist it writes
`RUN_DIR/config.json` (a start that fails leaves the directory as it was),
and after training `RUN_DIR/results.json` with the run's `status`:
`completed`, `stopped_nan` (the loss stopped being finite) or `failed` (an
exception; the run resumes when started again). Starting a killed run again
with the same command resumes it and ends with the weights the
uninterrupted run would have had; starting a completed or stopped run again
returns its results without training.
"""

import dataclasses
import json
import os
import shutil
import statistics
import time
import traceback
import typing

import keras

from keras_seqnorm.models import get_model
from keras_seqnorm.norms import get_norm_layer
from keras_seqnorm.norms import global_batch_kwargs
from keras_seqnorm.recalibrate import recalibrate_statistics
from keras_seqnorm.training import distribution
from keras_seqnorm.training.callbacks import BACKUP_DIR
from keras_seqnorm.training.callbacks import LOG_FILE
from keras_seqnorm.training.callbacks import StopOnNaN
from keras_seqnorm.training.callbacks import get_callbacks
from keras_seqnorm.training.callbacks import read_backup
from keras_seqnorm.training.callbacks import read_log
from keras_seqnorm.training.config import DATASET_DEFAULTS
from keras_seqnorm.training.config import EXECUTION_FIELDS
from keras_seqnorm.training.config import Config
from keras_seqnorm.training.config import ConfigError
from keras_seqnorm.training.config import config_argv
from keras_seqnorm.training.config import default_run_dir
from keras_seqnorm.training.config import format_command
from keras_seqnorm.training.config import resolve_data_fields
from keras_seqnorm.training.config import run_id
from keras_seqnorm.training.optimizers import build_optimizer
from keras_seqnorm.utils import iter_sublayers
from keras_seqnorm.utils import write_json

PROG = "keras-seqnorm train"
CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
COMPLETED, STOPPED_NAN, FAILED = "completed", "stopped_nan", "failed"
# Statuses of a run that is over: starting it again returns its results.
FINAL_STATUSES = (COMPLETED, STOPPED_NAN)


def _check_batch(config, replicas, strategy):
    if config.batch_size % replicas:
        raise ConfigError(
            f"Argument `batch_size` must be a multiple of the {replicas} "
            f"replicas. Received: batch_size={config.batch_size}"
        )
    per_replica = config.batch_size // replicas
    if config.groups_m is not None and per_replica < 2 * config.groups_m:
        raise ConfigError(
            f"Argument `groups_m` must leave at least 2 samples per ghost "
            f"batch of the {per_replica} samples per replica (G_M is per "
            f"replica). Received: groups_m={config.groups_m}"
        )
    size = config.ghost_batch_size
    if size is not None and replicas > 1 and per_replica % size:
        raise ConfigError(
            f"Argument `ghost_batch_size` must divide the {per_replica} "
            f"samples per replica, so that every ghost batch lies on one "
            f"device. Received: ghost_batch_size={size}"
        )
    groups_m = layer_kwargs(config, strategy).get("groups_m")
    if (
        groups_m is not None and replicas > 1
        and distribution.layers_see_global_batch(strategy)
        and per_replica % (groups_m // replicas)
    ):
        default = "" if config.groups_m is not None else (
            f", the layer's default {groups_m // replicas}")
        raise ConfigError(
            f"Argument `groups_m` (G_M per device{default}) must divide the "
            f"{per_replica} samples per device under DataParallel, whose "
            f"layers split the global batch: else ghost batches would "
            f"straddle the devices and differ from those of each device's "
            f"share. Received: groups_m={config.groups_m}"
        )


def layer_kwargs(config, strategy):
    """The arguments the norm layers of `config`'s model are built with
    under `strategy`: `config.norm_layer_kwargs()`, whose G_M counts ghost
    batches per device, for a layer that sees the global batch
    (`keras.distribution.DataParallel`) translated by
    `norms.global_batch_kwargs`."""
    kwargs = config.norm_layer_kwargs()
    if distribution.layers_see_global_batch(strategy):
        kwargs = global_batch_kwargs(
            config.norm, kwargs, distribution.replicas(strategy)
        )
    return kwargs


def _read_json(path, what, run_dir):
    try:
        with open(path) as file:
            return json.load(file)
    except (OSError, ValueError) as error:
        raise ConfigError(
            f"The {what} {path} cannot be read ({type(error).__name__}: "
            f"{' '.join(str(error).split())}): delete {run_dir} to start "
            f"the run again. Received: run_dir={run_dir!r}"
        ) from None


def resolve_run_dir(config):
    """`config` with its data fields resolved (`resolve_data_fields`) and
    `run_dir` set: the one given, else the default
    `runs/train/MODEL-DATASET-NORM-ID`, where ID (`run_id(config)`) hashes
    every field but the execution ones, so the same command finds the same
    directory and another config another one."""
    config = resolve_data_fields(config)
    if config.run_dir is None:
        config = dataclasses.replace(
            config,
            run_dir=default_run_dir(
                "train", config.model, config.dataset, config.norm,
                run_id(config),
            ),
        )
    return config


def _check_path(run_dir, given):
    if os.path.exists(run_dir) and not os.path.isdir(run_dir):
        raise ConfigError(
            f"Argument `run_dir` must name a directory, but {run_dir} is a "
            f"file. Received: run_dir={given!r}"
        )
    parent = os.path.dirname(run_dir)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise ConfigError(
            f"Argument `run_dir` must name a directory, but it is under the "
            f"file {parent}. Received: run_dir={given!r}"
        )


def _continue_command(stored, run_dir):
    """The command that continues the run whose config is `stored`, or
    `None` if that config is not one of this version."""
    try:
        config = Config.from_dict({**stored, "run_dir": run_dir})
    except (TypeError, ValueError):
        return None
    defaults = DATASET_DEFAULTS[config.dataset]
    return format_command(PROG, config_argv(
        config, resolved={"image_size": defaults.image_size,
                          "validation_size": defaults.validation_size},
    ))


def _existing_run(config, run_dir, given):
    """Checks `run_dir` against `config` before anything is written.

    Returns:
        The stored results of a run that is over (`FINAL_STATUSES`), else
        `None` (a new run, or one to resume).

    Raises:
        ConfigError: when `run_dir` holds a run with another config.
    """
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        return None
    stored = _read_json(path, "config", run_dir)
    values = config.to_dict()
    changed = sorted(
        key for key in set(values) | set(stored)
        if key not in EXECUTION_FIELDS and values.get(key) != stored.get(key)
    )
    if changed:
        differences = ", ".join(
            f"{key}: {stored.get(key)!r} there, {values.get(key)!r} here"
            for key in changed[:4]
        ) + (", ..." if len(changed) > 4 else "")
        command = _continue_command(stored, run_dir)
        resume = (
            f"To continue that run: {command}." if command
            else f"Its flags are in {path}."
        )
        raise ConfigError(
            f"Argument `run_dir` holds a run with another config (it "
            f"differs in {differences}). {resume} To train this config, "
            f"give another --run-dir, or none (the default directory is "
            f"derived from the config); to discard that run, delete "
            f"{run_dir}. "
            f"Received: run_dir={given!r}"
        )
    results = os.path.join(run_dir, RESULTS_FILE)
    if os.path.exists(results):
        stored = _read_json(results, "results", run_dir)
        if stored.get("status", COMPLETED) in FINAL_STATUSES:
            return stored
    return None


def _build_model(config, data, replicas, norm_kwargs):
    try:
        model = get_model(
            config.model,
            num_classes=data.num_classes,
            input_shape=data.input_shape,
            norm=config.norm,
            norm_kwargs=norm_kwargs,
        )
    except ValueError as error:
        raise ConfigError(" ".join(str(error).split())) from None
    model.compile(
        optimizer=build_optimizer(config, data.steps_per_epoch, replicas),
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.label_smoothing
        ),
        metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        jit_compile=config.jit_compile,
        steps_per_execution=config.steps_per_execution,
    )
    return model


def _check_norm(config, norm_kwargs):
    """Checks that the norm layer can be made."""
    try:
        get_norm_layer(config.norm, **norm_kwargs)
    except ValueError as error:
        raise ConfigError(" ".join(str(error).split())) from None


def _check_recalibration(config, model):
    """Checks that `model` has moving statistics to recalibrate when
    `--recalibrate-steps` asks for it."""
    if config.recalibrate_steps and not any(
        getattr(layer, "moving_mean", None) is not None
        for _, layer in iter_sublayers(model)
    ):
        raise ConfigError(
            f"Argument `recalibrate_steps` must be 0 for norm="
            f"{config.norm!r}, whose layers keep no moving statistics. "
            f"Received: recalibrate_steps={config.recalibrate_steps}"
        )


def _lock(config, run_dir):
    """Writes `config.json`: from now on `run_dir` holds this run."""
    try:
        os.makedirs(run_dir, exist_ok=True)
    except OSError as error:
        raise ConfigError(
            f"Argument `run_dir` must be a directory that can be created "
            f"({type(error).__name__}: {error.strerror}). "
            f"Received: run_dir={config.run_dir!r}"
        ) from None
    path = os.path.join(run_dir, CONFIG_FILE)
    if not os.path.exists(path):
        write_json(path, config.to_dict())


def _switch_on_determinism():
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise ConfigError(
            f"Argument `deterministic` needs KERAS_BACKEND=tensorflow "
            f"(TensorFlow's op determinism); the active backend is "
            f"{backend}. On JAX set "
            "XLA_FLAGS=--xla_gpu_deterministic_ops=true before starting "
            "instead. Received: deterministic=True"
        )
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def _summarize(config, data, rows, outcome, replicas, strategy,
               wall_seconds):
    """The results dict of a run (see `train`), but `run_dir` and
    `is_chief`."""
    test = outcome.test
    history = {key: [row[key] for row in rows] for key in rows[0]} if (
        rows) else {}
    # The first epoch includes tracing and compilation; the median of the
    # others does not move with a stall of the machine (another process,
    # a garbage collection) in one of them.
    timed = rows[1:] or rows
    epoch_seconds = statistics.median(
        row["train_seconds"] for row in timed
    ) if timed else None
    images = data.steps_per_epoch * config.batch_size
    last = rows[-1] if rows else {}
    results = {
        "status": outcome.status,
        "config": config.to_dict(),
        "norm_kwargs": config.norm_layer_kwargs(),
        "layer_kwargs": layer_kwargs(config, strategy),
        "strategy": distribution.strategy_name(strategy),
        "replicas": replicas,
        "data": {
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes,
            "train_size": data.train_size,
            "validation_size": data.validation_size,
            "test_size": data.test_size,
            "validation_is_test": data.validation_is_test,
            "steps_per_epoch": data.steps_per_epoch,
        },
        "epochs_completed": len(rows),
        "history": history,
        "final": {
            key: value for key, value in last.items() if key != "epoch"
        },
        "best_val_accuracy": max(history.get("val_accuracy") or [None]),
        "test_accuracy": float(test["accuracy"]) if test else None,
        "test_loss": float(test["loss"]) if test else None,
        "recalibrated": outcome.recalibrated,
        "train_seconds": sum(row["train_seconds"] for row in rows),
        "wall_seconds": wall_seconds,
        "images_per_second": (
            images / epoch_seconds if epoch_seconds else None
        ),
    }
    if outcome.stopped is not None:
        epoch, batch = outcome.stopped
        results["stopped_at"] = {"epoch": epoch, "batch": batch}
        results["epochs_completed"] = epoch
    if outcome.error is not None:
        error = outcome.error
        results["error"] = f"{type(error).__name__}: {error}"
        results["traceback"] = "".join(traceback.format_exception(error))
    return results


def train(config, callbacks=()):
    """Trains, evaluates and records the run of `config`.

    Args:
        config: A `Config`.
        callbacks: Extra Keras callbacks for `fit`, run after the run
            directory's own (after the backup has been restored).

    Returns:
        The results dict also written to `RUN_DIR/results.json`: `status`
        (`completed`; `stopped_nan`, with `stopped_at`, the `epoch` and
        `batch` of the first non-finite loss, counted from 0), the resolved
        `config`, `norm_kwargs` (the norm arguments of the config, G_M per
        device), `layer_kwargs` (those the layers were built with: G_M
        times the devices under `DataParallel`), `strategy` (its class
        name, `DataParallel` on JAX, `None` on one JAX device),
        `replicas` (devices), `data` (shapes and
        sizes), `history` (every epoch's metrics across restarts, from
        `log.csv`), `epochs_completed`, `final` (the last epoch's metrics,
        `val_accuracy` included), `best_val_accuracy`, `test_accuracy` and
        `test_loss` of the final model with the moving statistics that
        training left (`None` unless completed), `recalibrated` (with
        `--recalibrate-steps`, else `None`: the `statistics`, `steps`,
        `test_accuracy` and `test_loss` after recalibrating them, and per
        norm layer the summary of `recalibrate_statistics` as a dict),
        `train_seconds`, `wall_seconds` (this invocation),
        `images_per_second` (training steps, at the median epoch's speed
        after the first epoch),
        `run_dir` and `is_chief`.

    Raises:
        ConfigError: for a configuration that cannot run (batch and
            replicas, run directory, unavailable data, a model the norm
            arguments cannot build, a backup that cannot be read); nothing
            is written then.
        Exception: whatever stopped training; `results.json` then records
            `status: failed`, the `error` and its `traceback`, and the run
            resumes from its backup when started again.
    """
    start = time.perf_counter()
    keras.backend.clear_session()
    strategy = distribution.get_strategy(config.strategy)
    if config.deterministic:
        _switch_on_determinism()
    replicas = distribution.replicas(strategy)
    place = _place(config, strategy, replicas)
    config = place.config
    finished = _existing_run(config, place.run_dir, place.given)
    if finished is not None:
        return finished
    backup = read_backup(os.path.join(place.run_dir, BACKUP_DIR))
    norm_kwargs = layer_kwargs(config, strategy)
    _check_norm(config, norm_kwargs)
    keras.utils.set_random_seed(config.seed)
    from keras_seqnorm.training.data import load_data

    data = load_data(
        config, partial_batch_first=distribution.is_data_parallel(strategy)
    )
    distribution.check_evaluation_sizes(data, strategy)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        with distribution.scope(strategy):
            model = _build_model(config, data, replicas, norm_kwargs)
            _check_recalibration(config, model)
            _lock(config, place.run_dir)
            outcome = _fit_and_test(
                model, data, config, place.run_dir, backup, callbacks
            )
    finally:
        keras.config.set_dtype_policy(policy)
    rows = read_log(os.path.join(place.run_dir, LOG_FILE))
    results = _summarize(
        config, data, rows, outcome, replicas, strategy,
        time.perf_counter() - start,
    )
    results.update(run_dir=place.run_dir, is_chief=place.is_chief)
    write_json(os.path.join(place.run_dir, RESULTS_FILE), results)
    if outcome.error is not None:
        raise outcome.error
    shutil.rmtree(os.path.join(place.run_dir, BACKUP_DIR),
                  ignore_errors=True)
    return results


class _Place(typing.NamedTuple):
    """Where a run writes: `config` resolved (its `run_dir` the real path),
    this worker's `run_dir`, the `run_dir` as given (for messages) and
    whether this worker is the chief."""

    config: Config
    run_dir: str
    given: str
    is_chief: bool


def _place(config, strategy, replicas):
    """Resolves the run directory of `config` and checks it, and the batch
    against the replicas, before anything is written."""
    given = config.run_dir
    config = resolve_run_dir(config)
    given = config.run_dir if given is None else given
    config = dataclasses.replace(
        config, run_dir=os.path.realpath(config.run_dir)
    )
    run_dir, is_chief = distribution.worker_run_dir(config.run_dir, strategy)
    _check_batch(config, replicas, strategy)
    _check_path(run_dir, given)
    return _Place(config, run_dir, given, is_chief)


class _Outcome(typing.NamedTuple):
    """How `fit` ended: `status`; `stopped`, the `(epoch, batch)` of a
    non-finite loss; `test`, the test metrics of a completed run; `error`,
    the exception that stopped training (status `failed`); `recalibrated`,
    the test after recalibrating the statistics (`--recalibrate-steps`)."""

    status: str
    stopped: tuple | None = None
    test: dict | None = None
    error: Exception | None = None
    recalibrated: dict | None = None


class _EpochFeed(keras.callbacks.Callback):
    """Assigns each epoch's number to the variable the training data set
    reads when `fit` iterates it for that epoch (`Data.epoch_dataset`)."""

    def __init__(self, variable):
        super().__init__()
        self.variable = variable

    def on_epoch_begin(self, epoch, logs=None):
        self.variable.assign(epoch)


def _fit_and_test(model, data, config, run_dir, backup, callbacks):
    """`fit` from the backup's epoch, then the test evaluation; returns
    the `_Outcome`."""
    own = get_callbacks(config, run_dir, backup)
    (guard,) = [c for c in own if isinstance(c, StopOnNaN)]
    first = backup["epoch"] if backup else 0
    import tensorflow as tf

    epoch = tf.Variable(first, dtype=tf.int64, trainable=False)
    try:
        model.fit(
            data.epoch_dataset(epoch),
            validation_data=data.validation,
            epochs=config.epochs,
            initial_epoch=first,
            callbacks=[_EpochFeed(epoch), *own, *callbacks],
            verbose=config.verbose,
            shuffle=False,  # Each epoch is shuffled by `data.epochs`.
        )
        if guard.stopped is not None:
            return _Outcome(STOPPED_NAN, stopped=guard.stopped)
        test = model.evaluate(data.test, return_dict=True, verbose=0)
        recalibrated = None
        if config.recalibrate_steps:
            recalibrated = _recalibrate(model, data, config)
    except ConfigError:
        raise
    except Exception as error:  # Recorded, then raised again by `train`.
        return _Outcome(FAILED, error=error)
    return _Outcome(COMPLETED, test=test, recalibrated=recalibrated)


def recalibration_batches(data, config):
    """The batches `--recalibrate-steps` averages over: those the epochs
    after the last would train on (`config.epochs`, then the next), each
    epoch in its own order and with the augmentation of training, so the
    statistics are those of fresh training batches, the same on every
    run and every resume of the config.

    Returns:
        A `tf.data.Dataset` of `(images, labels)` batches, `steps` of them
        at most (`config.recalibrate_steps`).
    """
    import tensorflow as tf

    steps = config.recalibrate_steps
    epochs = -(-steps // data.steps_per_epoch)
    return tf.data.Dataset.range(
        config.epochs, config.epochs + epochs
    ).flat_map(data.epoch_batches).take(steps)


def _recalibrate(model, data, config):
    """Recalibrates the moving statistics (`recalibrate_statistics`) over
    `recalibration_batches` and tests again; returns the results'
    `recalibrated` dict."""
    batches = recalibration_batches(data, config)
    strategy = keras.distribution.distribution()
    if distribution.is_data_parallel(strategy):
        batches = distribution.global_batches(batches, strategy)
    summary = recalibrate_statistics(
        model, batches, steps=config.recalibrate_steps,
        statistics=config.recalibrate_statistics,
    )
    test = model.evaluate(data.test, return_dict=True, verbose=0)
    return {
        "statistics": config.recalibrate_statistics,
        "steps": config.recalibrate_steps,
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "layers": {
            path: dataclasses.asdict(entry)
            for path, entry in summary.items()
        },
    }
