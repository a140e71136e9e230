import json
import os
import socket
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_seqnorm.training import distribution
from keras_seqnorm.training.config import Config
from keras_seqnorm.training.config import ConfigError
from keras_seqnorm.training.config import resolve_data_fields
from keras_seqnorm.training.data import load_data

BACKEND = keras.backend.backend()
JAX_ONLY = pytest.mark.skipif(BACKEND != "jax", reason="JAX's DataParallel")


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
    assert distribution.worker_run_dir("runs/x", strategy) == expected
    assert distribution.worker_run_dir("runs/x", object()) == (
        "runs/x", True)


@pytest.mark.parametrize("process, expected", [
    (0, ("runs/x", True)),
    (1, (os.path.join("runs/x", "workers", "process_1"), False)),
])
def test_only_process_0_of_several_writes_the_run_directory(
    monkeypatch, process, expected
):
    monkeypatch.setattr(distribution, "processes", lambda: (process, 2))
    assert distribution.worker_run_dir("runs/x", None) == expected


def test_a_strategy_of_the_other_backend_is_refused():
    other = {"tensorflow": "data_parallel"}.get(BACKEND, "mirrored")
    with pytest.raises(ConfigError) as info:
        distribution.get_strategy(other)
    message = str(info.value)
    assert message.endswith(f"Received: strategy={other!r}")
    assert f"on the {BACKEND} backend" in message
    if BACKEND == "jax":
        assert "'auto', 'data_parallel'" in message
    if BACKEND == "tensorflow":
        assert "'auto', 'mirrored', 'multi_worker', 'one_device'" in message


@pytest.mark.jax_run
def test_one_device_strategies():
    auto = distribution.get_strategy("auto")
    assert distribution.replicas(auto) == 1
    assert not distribution.layers_see_global_batch(auto)
    if BACKEND != "jax":
        return
    # JAX: no distribution on one device, unless asked for.
    assert auto is None and distribution.strategy_name(auto) is None
    parallel = distribution.get_strategy("data_parallel")
    assert isinstance(parallel, keras.distribution.DataParallel)
    assert distribution.replicas(parallel) == 1
    assert distribution.strategy_name(parallel) == "DataParallel"
    assert distribution.layers_see_global_batch(parallel)


@pytest.mark.parametrize("split, size", [("validation", 181), ("test", 360)])
def test_the_partial_evaluation_batch_can_come_first(split, size):
    config = resolve_data_fields(Config(validation_size=181))
    last, first = (
        getattr(load_data(config, partial_batch_first=flag), split)
        for flag in (False, True)
    )
    last, first = list(last.as_numpy_iterator()), list(
        first.as_numpy_iterator())
    partial = size % 64
    assert [len(x) for x, _ in last] == [64] * (size // 64) + [partial]
    assert [len(x) for x, _ in first] == [partial] + [64] * (size // 64)
    # The same images, in the same order.
    for part in (0, 1):
        np.testing.assert_array_equal(
            np.concatenate([batch[part] for batch in first]),
            np.concatenate([batch[part] for batch in last]),
        )


TWO_DEVICES = textwrap.dedent(
    """
    import jax
    import keras
    import numpy as np
    import tensorflow as tf

    from keras_seqnorm import recalibrate_statistics
    from keras_seqnorm.layers import SequentialNormalization
    from keras_seqnorm.training import distribution
    from keras_seqnorm.training.config import ConfigError

    assert len(jax.devices()) == 2


    def model(groups_m):
        keras.utils.set_random_seed(0)
        model = keras.Sequential([
            keras.Input((6, 6, 3)),
            keras.layers.Conv2D(8, 3, padding="same"),
            SequentialNormalization(groups_c=2, groups_m=groups_m),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4),
        ])
        model.compile(
            "sgd", keras.losses.CategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
        return model


    rng = np.random.default_rng(0)
    x = rng.normal(1.0, 2.0, (45, 6, 6, 3)).astype("float32")
    y = np.eye(4, dtype="float32")[rng.integers(0, 4, 45)]
    # The partial batch (5 images) first, as load_data(partial_batch_first)
    # puts it; then batches of 20.
    batches = tf.data.Dataset.from_tensor_slices((x[:5], y[:5])).batch(5)
    batches = batches.concatenate(
        tf.data.Dataset.from_tensor_slices((x[5:], y[5:])).batch(20))
    single = model(groups_m=4)
    reference = single.evaluate(batches, return_dict=True, verbose=0)

    strategy = distribution.get_strategy("auto")
    assert type(strategy).__name__ == "EvenDataParallel"
    assert distribution.replicas(strategy) == 2
    with strategy.scope():
        parallel = model(groups_m=4)
        found = parallel.evaluate(batches, return_dict=True, verbose=0)
        # An even first batch is sharded (and so the evaluation).
        even = parallel.evaluate(
            tf.data.Dataset.from_tensor_slices((x[:40], y[:40])).batch(20),
            return_dict=True, verbose=0)
    for key in ("loss", "accuracy"):
        np.testing.assert_allclose(found[key], reference[key], rtol=1e-6)
    np.testing.assert_allclose(
        even["loss"],
        single.evaluate(x[:40], y[:40], batch_size=20, verbose=0)[0],
        rtol=1e-6)
    layout = strategy.get_data_layout((5, 6, 6, 3))
    assert layout.axes == (None, None, None, None)
    assert strategy.get_data_layout((20, 6, 6, 3)).axes[0] == "batch"

    # Keras' own DataParallel cuts that evaluation unevenly.
    with keras.distribution.DataParallel().scope():
        try:
            model(groups_m=4).evaluate(batches, verbose=0)
        except ValueError as error:
            print("keras cannot:", type(error).__name__)

    # Recalibration on global arrays sharded as fit shards them equals the
    # one-device recalibration with the same (global-batch) G_M.
    train = tf.data.Dataset.from_tensor_slices((x[:40], y[:40])).batch(20)
    expected = recalibrate_statistics(single, train)
    with strategy.scope():
        inputs = list(distribution.global_batches(train, strategy))
        assert [len(a.sharding.device_set) for a in inputs] == [2, 2]
        found = recalibrate_statistics(parallel, iter(inputs))
    # (The two models' layers have names of their own.)
    assert [(e.count, e.batches) for e in found.values()] == [
        (e.count, e.batches) for e in expected.values()] == [(1440, 2)]
    for a, b in zip(single.non_trainable_weights,
                    parallel.non_trainable_weights):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-5,
                                   atol=1e-6)

    # G_M per device: the layers of the global batch get twice as many;
    # ghost batches that would straddle the two devices are refused.
    from keras_seqnorm.training import trainer
    from keras_seqnorm.training.config import Config

    assert trainer.layer_kwargs(
        Config(norm="sequential", groups_c=2), strategy
    ) == {"groups_c": 2, "groups_m": 16}
    trainer._check_batch(Config(norm="ghost", batch_size=16, groups_m=4), 2,
                         strategy)
    for uneven in ({"groups_m": 3}, {"ghost_batch_size": 3}):
        try:
            trainer._check_batch(
                Config(norm="ghost", batch_size=16, **uneven), 2, strategy)
        except ConfigError as error:
            print("uneven:", error)

    # Several processes: every evaluation batch must split over them.
    distribution.processes = lambda: (0, 2)

    class Sizes:
        validation_size, test_size = 180, 360

    distribution.check_evaluation_sizes(Sizes, strategy)
    Sizes.validation_size = 181
    try:
        distribution.check_evaluation_sizes(Sizes, strategy)
    except ConfigError as error:
        print("refused:", error)
    print("ok")
    """
)


def _jax_env(devices=2, **extra):
    return {
        **os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3",
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        **extra,
    }


@pytest.mark.jax_run
@JAX_ONLY
def test_data_parallel_evaluates_and_recalibrates_like_one_device():
    process = subprocess.run(
        [sys.executable, "-c", TWO_DEVICES], capture_output=True, text=True,
        timeout=600, env=_jax_env(),
    )
    assert process.returncode == 0, process.stderr[-3000:]
    out = process.stdout
    assert "keras cannot: IndivisibleError" in out
    assert (
        "refused: The validation size (181 images) must be a multiple of "
        "the 2 devices of a run over 2 processes"
    ) in out
    assert "Received: validation_size=181" in out
    assert (
        "uneven: Argument `groups_m` (G_M per device) must divide the 8 "
        "samples per device under DataParallel"
    ) in out and "Received: groups_m=3" in out
    assert (
        "uneven: Argument `ghost_batch_size` must divide the 8 samples per "
        "replica"
    ) in out
    assert out.rstrip().endswith("ok")


def _free_port():
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
@pytest.mark.jax_run
@JAX_ONLY
def test_two_processes_train_one_run(tmp_path):
    # The README's command per host, with both "hosts" on this machine:
    # two processes of one CPU device each.
    run_dir = tmp_path / "run"
    address = f"localhost:{_free_port()}"
    argv = [sys.executable, "-m", "keras_seqnorm", "train", "--strategy",
            "data_parallel", "--norm", "ghost", "--groups-m", "2",
            "--epochs", "1", "--recalibrate-steps", "3", "--verbose", "0",
            "--run-dir", str(run_dir)]
    hosts = [
        subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env=_jax_env(
                devices=1, KERAS_DISTRIBUTION_JOB_ADDRESSES=address,
                KERAS_DISTRIBUTION_NUM_PROCESSES="2",
                KERAS_DISTRIBUTION_PROCESS_ID=str(index),
            ),
        )
        for index in range(2)
    ]
    outputs = [host.communicate(timeout=600) for host in hosts]
    for host, (_, error) in zip(hosts, outputs):
        assert host.returncode == 0, error[-3000:]
    with open(run_dir / "results.json") as file:
        chief = json.load(file)
    with open(run_dir / "workers" / "process_1" / "results.json") as file:
        worker = json.load(file)
    assert (chief["strategy"], chief["replicas"]) == ("DataParallel", 2)
    assert "epochs=1 replicas=2 (DataParallel) (" in outputs[0][0]
    assert chief["layer_kwargs"] == {"groups_m": 4}
    assert (chief["is_chief"], worker["is_chief"]) == (True, False)
    # One model: both processes end with the same metrics.
    assert chief["history"]["loss"] == worker["history"]["loss"]
    assert chief["test_accuracy"] == worker["test_accuracy"]
    assert chief["recalibrated"]["steps"] == 3
    assert chief["recalibrated"] == worker["recalibrated"]
