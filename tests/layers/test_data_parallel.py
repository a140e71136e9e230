"""GhostNorm and SeqNorm under `keras.distribution.DataParallel` (JAX).

Two JAX CPU devices (`--xla_force_host_platform_device_count=2`) in a
subprocess. Under `DataParallel` a layer sees the global batch, so a
per-device G_M of `g` is `groups_m=g * devices` in the layer; the contiguous
ghost batches are then the same as under `tf.distribute.MirroredStrategy`
with `groups_m=g` per replica, which the last test checks across backends.
"""

import os
import re
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="keras.distribution.DataParallel runs on the JAX backend; the "
    "test starts its own JAX (and TensorFlow) subprocesses once",
)

DEVICES = 2
PER_DEVICE_GROUPS_M = 2
BATCH = 16
SHAPE = (8, 8, 3)
CHANNELS = 16

MODEL = textwrap.dedent(
    """
    import keras
    import numpy as np

    from keras_seqnorm import layers


    def build(norm, groups_m):
        keras.utils.set_random_seed(0)
        kwargs = {"groups_c": 4} if norm == "sequential" else {}
        make = {
            "ghost": layers.GhostNormalization,
            "sequential": layers.SequentialNormalization,
        }[norm]
        return keras.Sequential([
            keras.Input(%(shape)r),
            keras.layers.Conv2D(
                %(channels)d, 3, padding="same", use_bias=False
            ),
            make(groups_m=groups_m, momentum=0.5, **kwargs),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(4),
        ])


    def data():
        rng = np.random.default_rng(0)
        x = rng.normal(1.0, 2.0, size=(4 * %(batch)d,) + %(shape)r)
        return x.astype("float32"), np.arange(4 * %(batch)d) %% 4


    def fit(model, x, y):
        model.compile(
            keras.optimizers.SGD(0.1),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        model.fit(x, y, batch_size=%(batch)d, epochs=2, verbose=0,
                  shuffle=False)
        return [np.asarray(w) for w in model.get_weights()]
    """
) % {"shape": SHAPE, "channels": CHANNELS, "batch": BATCH}

JAX_SCRIPT = MODEL + textwrap.dedent(
    """
    import sys

    import jax

    norm, out = sys.argv[1], sys.argv[2]
    groups_m = %(groups_m)d * %(devices)d  # per device -> global batch
    assert len(jax.devices()) == %(devices)d, jax.devices()
    x, y = data()
    results = {}
    for name in ("single", "data_parallel"):
        distribution = None
        if name == "data_parallel":
            distribution = keras.distribution.DataParallel()
        keras.distribution.set_distribution(distribution)
        model = build(norm, groups_m)
        if name == "single":
            results["initial"] = [np.asarray(w) for w in model.get_weights()]
        trainable = [v.value for v in model.trainable_variables]
        non_trainable = [v.value for v in model.non_trainable_variables]
        batch = x[:%(batch)d]
        if distribution is not None:
            batch = keras.distribution.distribute_tensor(
                batch, distribution.get_data_layout(batch.shape)
            )
            assert len(batch.sharding.device_set) == %(devices)d

        def loss(trainable, non_trainable, batch):
            outputs, updated = model.stateless_call(
                trainable, non_trainable, batch, training=True
            )
            weights = keras.ops.arange(1.0, 5.0)
            return keras.ops.sum(outputs * weights), (outputs, updated)

        step = jax.jit(jax.value_and_grad(loss, has_aux=True))
        (_, (outputs, updated)), grads = step(trainable, non_trainable, batch)
        results[name] = {
            "outputs": np.asarray(outputs),
            "gradients": [np.asarray(g) for g in grads],
            "statistics": [np.asarray(v) for v in updated],
            "weights": fit(model, x, y),
        }
    np.save(out, results, allow_pickle=True)
    print("jax ok")
    """
) % {"groups_m": PER_DEVICE_GROUPS_M, "devices": DEVICES, "batch": BATCH}

TF_SCRIPT = MODEL + textwrap.dedent(
    """
    import sys

    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * %(devices)d
    )
    norm, initial, out = sys.argv[1], sys.argv[2], sys.argv[3]
    strategy = tf.distribute.MirroredStrategy(
        [f"/cpu:{i}" for i in range(%(devices)d)]
    )
    x, y = data()
    with strategy.scope():
        model = build(norm, %(groups_m)d)  # per replica
        model.set_weights(list(np.load(initial, allow_pickle=True)))
        weights = fit(model, x, y)
    assert strategy.num_replicas_in_sync == %(devices)d
    np.save(out, np.array(weights, dtype=object), allow_pickle=True)
    print("tensorflow ok")
    """
) % {"groups_m": PER_DEVICE_GROUPS_M, "devices": DEVICES}


def _run(script, backend, *args, flags=""):
    env = {
        **os.environ,
        "KERAS_BACKEND": backend,
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES} "
        + flags,
    }
    result = subprocess.run(
        [sys.executable, "-c", script, *args],
        capture_output=True, text=True, env=env, timeout=900,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module", params=["ghost", "sequential"])
def runs(request, tmp_path_factory):
    norm = request.param
    folder = tmp_path_factory.mktemp(norm)
    jax_out = str(folder / "jax.npy")
    _run(JAX_SCRIPT, "jax", norm, jax_out)
    results = np.load(jax_out, allow_pickle=True).item()
    initial = str(folder / "initial.npy")
    np.save(initial, np.array(results["initial"], dtype=object),
            allow_pickle=True)
    tf_out = str(folder / "tf.npy")
    _run(TF_SCRIPT, "tensorflow", norm, initial, tf_out)
    results["mirrored"] = list(np.load(tf_out, allow_pickle=True))
    return results


@pytest.mark.parametrize("part", ["outputs", "gradients", "statistics"])
def test_data_parallel_equals_one_device(runs, part):
    single, parallel = runs["single"][part], runs["data_parallel"][part]
    if part == "outputs":
        single, parallel = [single], [parallel]
    assert len(single) == len(parallel) > 0
    for a, b in zip(single, parallel):
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5)
    if part == "statistics":  # moving statistics did move
        assert not np.allclose(single[0], 0.0)


def test_training_equals_one_device_and_mirrored_strategy(runs):
    single = runs["single"]["weights"]
    for name in ("data_parallel", "mirrored"):
        other = runs[name] if name == "mirrored" else runs[name]["weights"]
        assert len(other) == len(single)
        for a, b in zip(single, other):
            np.testing.assert_allclose(b, a, rtol=2e-4, atol=2e-5)
    moved = [
        not np.allclose(a, b) for a, b in zip(runs["initial"], single)
    ]
    assert all(moved)


HLO_SCRIPT = MODEL + textwrap.dedent(
    """
    import sys

    keras.distribution.set_distribution(keras.distribution.DataParallel())
    x, y = data()
    fit(build(sys.argv[1], int(sys.argv[2])), x, y)
    print("hlo ok")
    """
)

_COLLECTIVE = re.compile(
    r"=\s*(\([^=]*?\)|\S+)\s+"
    r"(all-gather|all-to-all|collective-permute|all-reduce|reduce-scatter)"
    r"(?:-start)?\("
)
_SHAPE = re.compile(r"[a-z]+\d*\[([\d,]*)\]")


def collectives(hlo_text):
    """`(opcode, elements)` of every collective in an HLO module's text,
    `elements` being the largest array it moves."""
    found = []
    for shapes, opcode in _COLLECTIVE.findall(hlo_text):
        sizes = [
            int(np.prod([int(d) for d in dims.split(",") if d]))
            for dims in _SHAPE.findall(shapes)
        ]
        found.append((opcode, max(sizes, default=0)))
    return found


def train_step_collectives(tmp_path, norm, groups_m):
    dump = tmp_path / "hlo"
    _run(HLO_SCRIPT, "jax", norm, str(groups_m),
         flags=f"--xla_dump_to={dump} --xla_dump_hlo_as_text")
    modules = [
        path for path in dump.iterdir()
        if "train_step" in path.name
        and path.name.endswith("after_optimizations.txt")
    ]
    assert modules, sorted(p.name for p in dump.iterdir())[:20]
    return [c for path in modules for c in collectives(path.read_text())]


def test_collective_parser():
    text = (
        "%a = f32[16,8,8,16]{3,2,1,0} all-gather(f32[8,8,8,16] %x)\n"
        "%b = (f32[16]{0}, f32[3,3,3,16]{3,2,1,0}) all-reduce(%y, %z)\n"
        "%c = f32[4]{0} add(%u, %v)\n"
    )
    assert collectives(text) == [("all-gather", 16 * 8 * 8 * 16),
                                 ("all-reduce", 3 * 3 * 3 * 16)]


@pytest.mark.parametrize("norm", ["ghost", "sequential"])
def test_train_step_moves_no_activation_between_devices(tmp_path, norm):
    # G_M a multiple of the devices: every ghost batch lies on one device.
    found = train_step_collectives(
        tmp_path, norm, PER_DEVICE_GROUPS_M * DEVICES
    )
    assert any(opcode == "all-reduce" for opcode, _ in found), found
    moving = [
        (opcode, size) for opcode, size in found
        if opcode in ("all-gather", "all-to-all", "collective-permute")
        and size > BATCH * CHANNELS
    ]
    assert not moving, moving
