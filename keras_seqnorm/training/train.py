"""`keras-seqnorm train`: train one model with one norm under one recipe.

```
keras-seqnorm train --dataset digits --model simplecnn --norm sequential
keras-seqnorm train --preset cifar100-wrn28-10 --norm ghost --run-dir runs/g
python -m keras_seqnorm.train --help
```

`run(config)` does the work: the `tf.distribute` strategy first, then the
data with the global batch size, the model and its compilation inside
`strategy.scope()`, `fit` with the callbacks of `callbacks.py`, and the
test evaluation. It writes `RUN_DIR/config.json` before training and
`RUN_DIR/results.json` after, and returns the results. Starting a killed
run again with the same command resumes it; starting a finished run again
returns its results without training.
"""

import contextlib
import json
import os
import shutil
import time

import keras

from keras_seqnorm.models import get_model
from keras_seqnorm.training.callbacks import BACKUP_DIR
from keras_seqnorm.training.callbacks import LOG_FILE
from keras_seqnorm.training.callbacks import get_callbacks
from keras_seqnorm.training.callbacks import read_log
from keras_seqnorm.training.config import ConfigError
from keras_seqnorm.training.config import build_parser
from keras_seqnorm.training.config import config_from_namespace
from keras_seqnorm.training.data import load_data
from keras_seqnorm.training.data import resolve_data_fields
from keras_seqnorm.training.optimizers import build_optimizer

CONFIG_FILE = "config.json"
RESULTS_FILE = "results.json"
# Fields that change how a run executes, not what it computes: a resumed
# run may differ from the first attempt in these.
_EXECUTION_FIELDS = ("verbose", "data_dir", "manual_dir", "download")


def get_strategy(name):
    """The `tf.distribute` strategy called `name`, or `None` on a backend
    other than TensorFlow (where only `"auto"` is accepted).

    - `auto`: `multi_worker` when `TF_CONFIG` lists several workers,
      `mirrored` with several GPUs, one GPU's `OneDeviceStrategy`, else the
      default strategy (one device).
    - `mirrored`: `MirroredStrategy` over all GPUs, or over all logical
      CPU devices when there is no GPU.
    - `multi_worker`: `MultiWorkerMirroredStrategy`, configured by the
      `TF_CONFIG` environment variable of each worker.
    - `one_device`: the first GPU, else the CPU.

    `MultiWorkerMirroredStrategy` must exist before TensorFlow starts, so
    call this before any other TensorFlow work.
    """
    if keras.backend.backend() != "tensorflow":
        if name != "auto":
            raise ConfigError(
                f"Argument `strategy` must be 'auto' on the "
                f"{keras.backend.backend()} backend: tf.distribute needs "
                f"TensorFlow. Received: strategy={name!r}"
            )
        return None
    import tensorflow as tf

    cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get(
        "cluster", {}
    )
    workers = len(cluster.get("worker", [])) + len(cluster.get("chief", []))
    if name == "multi_worker" or (name == "auto" and workers > 1):
        return tf.distribute.MultiWorkerMirroredStrategy()
    gpus = [device.name for device in tf.config.list_logical_devices("GPU")]
    if name == "mirrored" or (name == "auto" and len(gpus) > 1):
        cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(gpus or cpus)
    if name == "one_device" or gpus:
        return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def _worker_run_dir(run_dir, strategy):
    """The chief writes to `run_dir`; other workers of a multi-worker run
    to `run_dir/workers/TYPE_ID` (their copies are identical)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None)
    if task_type in (None, "chief"):
        return run_dir, True
    cluster = resolver.cluster_spec().as_dict()
    if task_type == "worker" and task_id == 0 and "chief" not in cluster:
        return run_dir, True
    return os.path.join(run_dir, "workers", f"{task_type}_{task_id}"), False


def _check_batch(config, replicas):
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


def _write_json(path, value):
    temporary = path + ".saving"
    with open(temporary, "w") as file:
        json.dump(value, file, indent=2)
        file.write("\n")
    os.replace(temporary, path)


def _prepare_run_dir(config, run_dir):
    """Writes `config.json`, or checks it against the one already there.

    Returns:
        The stored results of a finished run, else `None`.
    """
    os.makedirs(run_dir, exist_ok=True)
    path = os.path.join(run_dir, CONFIG_FILE)
    values = config.to_dict()
    if os.path.exists(path):
        with open(path) as file:
            stored = json.load(file)
        changed = sorted(
            key for key in set(values) | set(stored)
            if key not in _EXECUTION_FIELDS
            and values.get(key) != stored.get(key)
        )
        if changed:
            raise ConfigError(
                f"Argument `run_dir` holds a run with another config (it "
                f"differs in {', '.join(changed)}): use another --run-dir, "
                f"or delete it to start again. Received: run_dir={run_dir!r}"
            )
        results = os.path.join(run_dir, RESULTS_FILE)
        if os.path.exists(results):
            with open(results) as file:
                return json.load(file)
    _write_json(path, values)
    return None


def _summarize(config, data, rows, test, replicas, strategy, wall_seconds):
    history = {key: [row[key] for row in rows] for key in rows[0]}
    # The first epoch includes tracing and compilation.
    timed = rows[1:] or rows
    train_seconds = sum(row["train_seconds"] for row in timed)
    images = len(timed) * data.steps_per_epoch * config.batch_size
    last = rows[-1] if rows else {}
    return {
        "config": config.to_dict(),
        "norm_kwargs": config.norm_layer_kwargs(),
        "strategy": type(strategy).__name__ if strategy else None,
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
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "train_seconds": sum(row["train_seconds"] for row in rows),
        "wall_seconds": wall_seconds,
        "images_per_second": images / train_seconds if train_seconds else None,
    }


def run(config, callbacks=()):
    """Trains, evaluates and records the run of `config`.

    Args:
        config: A `Config`.
        callbacks: Extra Keras callbacks for `fit`, run after the run
            directory's own (after `BackupAndRestore` has restored state).

    Returns:
        The results dict also written to `RUN_DIR/results.json`: the
        resolved `config`, `norm_kwargs`, `strategy`, `replicas`, `data`
        (shapes and sizes), `history` (every epoch's metrics across
        restarts, from `log.csv`), `final` (the last epoch's metrics,
        `val_accuracy` included), `best_val_accuracy`, `test_accuracy` and
        `test_loss` of the final model, `train_seconds`, `wall_seconds`
        (this invocation) and `images_per_second` (training steps, after
        the first epoch).

    Raises:
        ConfigError: for a configuration that cannot run (batch and
            replicas, run directory, unavailable data).
    """
    start = time.perf_counter()
    keras.backend.clear_session()
    strategy = get_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync if strategy else 1
    run_dir, is_chief = _worker_run_dir(config.run_dir, strategy)
    config = resolve_data_fields(config)
    _check_batch(config, replicas)
    finished = _prepare_run_dir(config, run_dir)
    if finished is not None:
        return finished
    keras.utils.set_random_seed(config.seed)
    data = load_data(config)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.precision)
    try:
        with strategy.scope() if strategy else contextlib.nullcontext():
            model = get_model(
                config.model,
                num_classes=data.num_classes,
                input_shape=data.input_shape,
                norm=config.norm,
                norm_kwargs=config.norm_layer_kwargs(),
            )
            model.compile(
                optimizer=build_optimizer(
                    config, data.steps_per_epoch, replicas
                ),
                loss=keras.losses.CategoricalCrossentropy(
                    from_logits=True, label_smoothing=config.label_smoothing
                ),
                metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                jit_compile=config.jit_compile,
                steps_per_execution=config.steps_per_execution,
            )
        model.fit(
            data.train,
            validation_data=data.validation,
            epochs=config.epochs,
            callbacks=get_callbacks(config, run_dir) + list(callbacks),
            verbose=config.verbose,
            shuffle=False,  # The data set shuffles itself.
        )
        test = model.evaluate(data.test, return_dict=True, verbose=0)
    finally:
        keras.config.set_dtype_policy(policy)
    results = _summarize(
        config, data, read_log(os.path.join(run_dir, LOG_FILE)), test,
        replicas, strategy, time.perf_counter() - start,
    )
    results["run_dir"] = run_dir
    results["is_chief"] = is_chief
    _write_json(os.path.join(run_dir, RESULTS_FILE), results)
    shutil.rmtree(os.path.join(run_dir, BACKUP_DIR), ignore_errors=True)
    return results


def main(argv=None):
    """`keras-seqnorm train [flags]`; `argv` defaults to `sys.argv[1:]`.

    Returns:
        The results dict of `run`. Bad flags and configurations that cannot
        run exit with status 2 and a one-line error.
    """
    parser = build_parser()
    namespace = parser.parse_args(argv)
    try:
        results = run(config_from_namespace(namespace))
    except ConfigError as error:
        parser.error(str(error))
    print(
        f"test_accuracy={results['test_accuracy']:.4f} "
        f"val_accuracy={results['final'].get('val_accuracy', float('nan')):.4f}"
        f" epochs={results['epochs_completed']} "
        f"({os.path.join(results['run_dir'], RESULTS_FILE)})"
    )
    return results


if __name__ == "__main__":
    main()
