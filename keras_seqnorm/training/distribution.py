"""The devices a run trains on: `--strategy`, on either backend.

`get_strategy(name)` returns what `train` builds, compiles, fits and
evaluates the model under (inside `scope(strategy)`):

- TensorFlow: a `tf.distribute` strategy. Each replica runs its share of
  the global batch, and a norm layer sees that share.
- JAX: `keras.distribution.DataParallel` over every device of every
  process, or `None` on one device. The model's weights are replicated,
  each batch is sharded over the devices, and a norm layer sees the
  **global** batch: `layers_see_global_batch(strategy)`, for which `train`
  multiplies G_M by the devices (`norms.global_batch_kwargs`), so that
  `--groups-m` counts ghost batches per device on both backends.
  Several processes (hosts) join through `keras.distribution.initialize`
  before anything else runs, when `KERAS_DISTRIBUTION_NUM_PROCESSES` (with
  `KERAS_DISTRIBUTION_JOB_ADDRESSES` and `KERAS_DISTRIBUTION_PROCESS_ID`)
  says there are several.

Keras lays out every batch of a `fit` epoch or an `evaluate` as its first
batch. Under `EvenDataParallel` a first batch whose size does not split
evenly over the devices is not sharded but replicated, and the evaluation
pipelines of a `DataParallel` run put their partial batch first
(`load_data(partial_batch_first=True)`): a validation or test split whose
size the devices do not divide is evaluated whole on every device (exact,
at the cost of evaluating it on each), one whose size they divide is
sharded. With several processes every batch must split evenly over them,
so there the validation and test sizes must be multiples of the number of
devices (`check_evaluation_sizes`).
"""

import contextlib
import json
import os

import keras

from keras_seqnorm.training.config import ConfigError

DATA_PARALLEL = "DataParallel"
# The strategies of each backend (`Config.strategy`; `auto` on both).
TENSORFLOW_STRATEGIES = ("mirrored", "multi_worker", "one_device")
JAX_STRATEGIES = ("data_parallel",)
_NUM_PROCESSES = "KERAS_DISTRIBUTION_NUM_PROCESSES"


def _refuse(name, backend):
    offered = {
        "tensorflow": TENSORFLOW_STRATEGIES, "jax": JAX_STRATEGIES,
    }.get(backend, ())
    choices = ", ".join(repr(choice) for choice in ("auto", *offered))
    raise ConfigError(
        f"Argument `strategy` must be one of {choices} on the {backend} "
        "backend (tf.distribute needs TensorFlow, "
        "keras.distribution.DataParallel JAX). "
        f"Received: strategy={name!r}"
    )


def get_strategy(name):
    """The strategy called `name` for the active backend (see the module
    docstring); `None` for one device outside TensorFlow.

    TensorFlow:

    - `auto`: `multi_worker` when `TF_CONFIG` lists several workers,
      `mirrored` with several GPUs, else the default strategy (one
      device).
    - `mirrored`: `MirroredStrategy` over all GPUs, or over all logical
      CPU devices when there is no GPU.
    - `multi_worker`: `MultiWorkerMirroredStrategy`, configured by the
      `TF_CONFIG` environment variable of each worker.
    - `one_device`: the first GPU, else the CPU.

    JAX:

    - `auto`: `data_parallel` when JAX sees several devices, else `None`.
    - `data_parallel`: `keras.distribution.DataParallel` over all devices
      (of all processes: `keras.distribution.initialize` runs first when
      `KERAS_DISTRIBUTION_NUM_PROCESSES` is above 1).

    Other backends take `auto` only (`None`). `MultiWorkerMirroredStrategy`
    and `keras.distribution.initialize` must come before any other work of
    the backend, so call this first.

    Raises:
        ConfigError: for a strategy of another backend.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        if name in JAX_STRATEGIES:
            _refuse(name, backend)
        return _tf_strategy(name)
    if backend == "jax":
        if name in TENSORFLOW_STRATEGIES:
            _refuse(name, backend)
        _join_processes()
        if name == "data_parallel" or keras.distribution.get_device_count(
        ) > 1:
            return EvenDataParallel()
        return None
    if name != "auto":
        _refuse(name, backend)
    return None


def _tf_strategy(name):
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
    if name == "one_device":
        return tf.distribute.OneDeviceStrategy(gpus[0] if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def _join_processes():
    """`keras.distribution.initialize()` (from the `KERAS_DISTRIBUTION_*`
    environment variables), once, when they name several processes."""
    import jax

    if int(os.environ.get(_NUM_PROCESSES) or 1) > 1 and not (
        jax.distributed.is_initialized()
    ):
        keras.distribution.initialize()


class EvenDataParallel(keras.distribution.DataParallel):
    """`keras.distribution.DataParallel` over every device, whose batches
    split evenly over the processes, and whose evaluations are replicated
    when their first batch does not split evenly over the devices (see the
    module docstring)."""

    def get_data_layout(self, data_shape):
        import jax

        # `data_shape` is this process's share of the batch.
        local = self.num_model_replicas // jax.process_count()
        if data_shape[0] is not None and data_shape[0] % local:
            return keras.distribution.TensorLayout(
                [None] * len(data_shape), self.device_mesh
            )
        return super().get_data_layout(data_shape)

    def distribute_dataset(self, dataset):
        # Keras' own rebatches by the full batch's share per process,
        # which splits a partial batch unevenly.
        import jax

        count = jax.process_count()
        if count == 1:
            return dataset
        import tensorflow as tf

        index = jax.process_index()

        def share(tensor):
            size = tf.shape(tensor)[0] // count
            return tensor[index * size:(index + 1) * size]

        return dataset.map(
            lambda *batch: tf.nest.map_structure(share, batch),
            num_parallel_calls=tf.data.AUTOTUNE,
        ).prefetch(tf.data.AUTOTUNE)


def is_data_parallel(strategy):
    """Whether `strategy` is a `keras.distribution.DataParallel`."""
    return isinstance(strategy, keras.distribution.DataParallel)


def layers_see_global_batch(strategy):
    """Whether a layer under `strategy` sees the global batch (JAX's
    `DataParallel`) rather than one replica's share (`tf.distribute`)."""
    return is_data_parallel(strategy)


def replicas(strategy):
    """Devices (replicas) the global batch is split over."""
    if strategy is None:
        return 1
    if is_data_parallel(strategy):
        return strategy.num_model_replicas
    return strategy.num_replicas_in_sync


def strategy_name(strategy):
    """`MirroredStrategy`, `DataParallel`, ...; `None` without one."""
    if strategy is None:
        return None
    if is_data_parallel(strategy):
        return DATA_PARALLEL
    return type(strategy).__name__


def scope(strategy):
    """The context that builds, fits and evaluates under `strategy`."""
    return strategy.scope() if strategy else contextlib.nullcontext()


def processes():
    """`(index, count)` of this process among those of the run (JAX's
    processes; TensorFlow's workers are told apart by `worker_run_dir`)."""
    if keras.backend.backend() != "jax":
        return 0, 1
    import jax

    return jax.process_index(), jax.process_count()


def worker_run_dir(run_dir, strategy):
    """Where this worker writes, and whether it is the chief.

    The chief writes to `run_dir`: worker 0 (or the `chief` task) of a
    multi-worker `tf.distribute` run, process 0 of a JAX run. The others
    write their identical copies to `run_dir/workers/TYPE_ID` (JAX:
    `run_dir/workers/process_I`).
    """
    index, count = processes()
    if count > 1 and index > 0:
        return os.path.join(run_dir, "workers", f"process_{index}"), False
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None)
    task_id = getattr(resolver, "task_id", None)
    if task_type in (None, "chief"):
        return run_dir, True
    cluster = resolver.cluster_spec().as_dict()
    if task_type == "worker" and task_id == 0 and "chief" not in cluster:
        return run_dir, True
    return os.path.join(run_dir, "workers", f"{task_type}_{task_id}"), False


def global_batches(dataset, strategy):
    """The inputs of `dataset`'s `(x, y)` batches as global arrays laid out
    by the `DataParallel` `strategy` (this process's share of each batch,
    sharded over its devices), as `fit` lays them out: for functions that
    run the model eagerly, such as `recalibrate_statistics`.

    Returns:
        A generator of `jax.Array`s.
    """
    import jax

    for x, _ in strategy.distribute_dataset(dataset).as_numpy_iterator():
        layout = strategy.get_data_layout(x.shape).backend_layout
        yield jax.make_array_from_process_local_data(layout, x)


def check_evaluation_sizes(data, strategy):
    """Checks that every evaluation batch splits evenly over several
    processes.

    Raises:
        ConfigError: when a JAX run of several processes has a validation
            or test split whose size is not a multiple of the devices.
    """
    _, count = processes()
    if count == 1 or not is_data_parallel(strategy):
        return
    devices = replicas(strategy)
    for name, size in (("validation_size", data.validation_size),
                       ("test_size", data.test_size)):
        if size % devices:
            raise ConfigError(
                f"The {name.replace('_', ' ')} ({size} images) must be a "
                f"multiple of the {devices} devices of a run over "
                f"{count} processes, so that every evaluation batch splits "
                "evenly over them (set --validation-size). "
                f"Received: {name}={size}"
            )
