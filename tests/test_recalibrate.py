"""recalibrate_statistics against a float64 NumPy reference."""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_seqnorm import recalibrate_statistics
from keras_seqnorm.layers import GhostNormalization
from keras_seqnorm.layers import NoisyBatchNormalization
from keras_seqnorm.layers import SequentialNormalization
from tests.helpers import to_numpy

BACKEND = keras.backend.backend()
EPSILON = 1e-3
# Layer name -> (groups_c, groups_m) of the reference (BatchNorm: one ghost
# batch per batch) and the layer that feeds it.
NORMS = {
    "ghost": (None, 3, "dense1"),
    "seq": (2, 2, "dense2"),
    "bn": (None, 1, "seq"),
}
STATS = ("moving_mean", "moving_variance")


def _data(size=22, seed=0):
    """Sequences (size, 5, 8) around 2 with std 3; trailing steps of some
    samples are zero (masked by `Masking`), sample 4 entirely."""
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, size=(size, 5, 8)).astype("float32")
    for index, length in ((1, 3), (4, 0), (9, 1), (15, 4), (21, 2)):
        if index < size:
            x[index, length:] = 0.0
    y = rng.integers(0, 2, size=(size,))
    return x, y


def _model(seed=1):
    """Masking -> Dense -> GhostNorm -> Dense -> SeqNorm -> BatchNorm."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((5, 8), name="sequence")
    h = keras.layers.Masking(0.0)(inputs)
    h = keras.layers.Dense(8, name="dense1")(h)
    h = GhostNormalization(groups_m=3, name="ghost")(h)
    h = keras.layers.Dense(8, name="dense2")(h)
    h = SequentialNormalization(groups_c=2, groups_m=2, name="seq")(h)
    h = keras.layers.BatchNormalization(name="bn")(h)
    outputs = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, keras.layers.Dense(2)(outputs))
    rng = np.random.default_rng(seed)
    for name in NORMS:
        layer = model.get_layer(name)
        layer.gamma.assign(rng.uniform(0.5, 2.0, 8).astype("float32"))
        layer.beta.assign(rng.normal(0.0, 1.0, 8).astype("float32"))
    return model


def _snapshot(variables):
    return [to_numpy(v).copy() for v in variables]


def _statistics(model):
    return {
        name: [to_numpy(getattr(model.get_layer(name), s)) for s in STATS]
        for name in NORMS
    }


def _layer_inputs(model, name, x):
    """The input of layer `name` in a training-mode forward of `x`."""
    head = keras.Model(model.input, model.get_layer(NORMS[name][2]).output)
    with keras.StatelessScope():
        return to_numpy(head(x, training=True)).astype(np.float64)


def _group_normalized(x, keep, groups_c):
    """GroupNorm without affine of (B, T, C) over unmasked positions."""
    out = np.zeros_like(x)
    for i in range(len(x)):
        for group in np.split(np.arange(x.shape[-1]), groups_c):
            values = x[i][keep[i]][:, group]
            if values.size == 0:
                continue
            out[i][:, group] = (x[i][:, group] - values.mean()) / np.sqrt(
                values.var() + EPSILON
            )
    return out


def _reference(model, name, batches, statistics):
    """NumPy moving statistics of layer `name` after recalibration."""
    groups_c, groups_m, _ = NORMS[name]
    ghost_batches = []  # the (n, C) unmasked values of each ghost batch
    for x in batches:
        keep = np.any(x != 0.0, axis=-1)
        inputs = _layer_inputs(model, name, x)
        if groups_c:
            inputs = _group_normalized(inputs, keep, groups_c)
        for index in np.array_split(np.arange(len(x)), groups_m):
            values = inputs[index][keep[index]]
            if len(values):
                ghost_batches.append(values)
    if statistics == "population":
        values = np.concatenate(ghost_batches)
        return values.mean(0), values.var(0), len(values)
    counts = np.array([len(v) for v in ghost_batches], np.float64)[:, None]
    means = np.array([v.mean(0) for v in ghost_batches])
    variances = np.array([v.var(0) for v in ghost_batches])
    total = counts.sum()
    return (
        (counts * means).sum(0) / total,
        (counts * variances).sum(0) / total,
        int(total),
    )


def _batches(x, batch_size):
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


@pytest.mark.parametrize("statistics", ["ghost", "population"])
def test_matches_numpy_with_uneven_batches_and_masks(statistics):
    # 22 samples in batches of 8: 8, 8 and 6; ghost batches 3-3-2 and 2-2-2.
    x, _ = _data()
    model = _model()
    before = _statistics(model)
    summary = recalibrate_statistics(
        model, x, statistics=statistics, batch_size=8
    )
    assert list(summary) == list(NORMS)
    after = _statistics(model)
    for name in NORMS:
        mean, variance, count = _reference(
            model, name, _batches(x, 8), statistics
        )
        np.testing.assert_allclose(after[name][0], mean, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(
            after[name][1], variance, rtol=1e-4, atol=1e-5
        )
        # The EMA statistics (zeros and ones) are far from these.
        assert not np.allclose(after[name][1], before[name][1], atol=0.01)
        entry = summary[name]
        assert entry.count == count == 22 * 5 - 15
        assert entry.batches == 3
        assert entry.statistics == statistics
        assert entry.layer_class == type(model.get_layer(name)).__name__


def test_ghost_and_population_differ_by_the_spread_of_ghost_means():
    # Same mean; the population variance adds the spread between the ghost
    # batches' means, so it is larger in every channel. BatchNorm's input is
    # SeqNorm's output, whose mean is `beta` in every batch: no spread.
    x, _ = _data()
    results = {}
    for statistics in ("ghost", "population"):
        model = _model()
        recalibrate_statistics(model, x, statistics=statistics, batch_size=8)
        results[statistics] = _statistics(model)
    for name in NORMS:
        ghost, population = results["ghost"][name], results["population"][name]
        np.testing.assert_allclose(ghost[0], population[0], atol=1e-5)
        if name == "bn":
            np.testing.assert_allclose(ghost[1], population[1], rtol=1e-5)
        else:
            assert np.all(population[1] >= ghost[1] * (1 - 1e-6))
            assert np.any(population[1] > ghost[1] * (1 + 1e-3))


def test_steps_and_kinds_of_data_agree():
    x, y = _data()
    expected_model = _model()
    recalibrate_statistics(expected_model, x[:14], batch_size=7)
    expected = _statistics(expected_model)
    batches = _batches(x, 7)
    sources = {
        "array": (x, 7),
        "tuple": ((x, y), 7),
        "generator": ((b for b in batches), None),
        "generator of tuples": (((b, np.zeros(len(b))) for b in batches),
                                None),
    }
    for kind, (data, batch_size) in sources.items():
        model = _model()
        summary = recalibrate_statistics(
            model, data, steps=2, batch_size=batch_size
        )
        assert summary["ghost"].batches == 2, kind
        for name in NORMS:
            for got, want in zip(_statistics(model)[name], expected[name]):
                np.testing.assert_allclose(got, want, rtol=1e-6, err_msg=kind)
    mean, variance, _ = _reference(model, "seq", batches[:2], "ghost")
    np.testing.assert_allclose(expected["seq"][0], mean, atol=1e-5)
    np.testing.assert_allclose(expected["seq"][1], variance, rtol=1e-4)


def test_dict_of_arrays_for_several_inputs():
    first = keras.Input((3,), name="first")
    second = keras.Input((2,), name="second")
    model = keras.Model(
        [first, second],
        [
            keras.layers.BatchNormalization(name="bn1")(first),
            GhostNormalization(groups_m=2, name="bn2")(second),
        ],
    )
    rng = np.random.default_rng(0)
    data = {
        "first": rng.normal(size=(10, 3)).astype("float32"),
        "second": rng.normal(size=(10, 2)).astype("float32"),
    }
    summary = recalibrate_statistics(
        model, data, batch_size=4, statistics="population"
    )
    assert summary["bn1"].count == summary["bn2"].count == 10
    assert summary["bn1"].batches == 3
    for name, layer in (("first", "bn1"), ("second", "bn2")):
        layer = model.get_layer(layer)
        np.testing.assert_allclose(
            to_numpy(layer.moving_mean), data[name].mean(0), atol=1e-6
        )
        np.testing.assert_allclose(
            to_numpy(layer.moving_variance), data[name].var(0), rtol=1e-5
        )


def test_summary_says_how_far_each_layer_moved():
    x, _ = _data()
    model = _model()
    model.get_layer("ghost").moving_mean.assign(np.full(8, 0.5, "float32"))
    model.get_layer("ghost").moving_variance.assign(np.full(8, 4.0, "float32"))
    before = _statistics(model)
    summary = recalibrate_statistics(model, x, batch_size=8)
    after = _statistics(model)
    for name in NORMS:
        (old_mean, old_var), (new_mean, new_var) = before[name], after[name]
        shift = np.abs(new_mean - old_mean) / np.sqrt(old_var + EPSILON)
        ratio = (new_var + EPSILON) / (old_var + EPSILON)
        entry = summary[name]
        np.testing.assert_allclose(entry.mean_shift, shift.max(), rtol=1e-5)
        np.testing.assert_allclose(
            entry.variance_ratio, np.maximum(ratio, 1 / ratio).max(),
            rtol=1e-5,
        )
    # JSON-ready for a results file; the dataclass is frozen.
    record = json.loads(json.dumps(dataclasses.asdict(summary["bn"])))
    assert record["path"] == "bn" and record["count"] == 95
    with pytest.raises(dataclasses.FrozenInstanceError):
        summary["bn"].count = 0


def _noisy_model():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(8)(inputs)
    h = NoisyBatchNormalization(stddev=0.5, seed=4, name="noisy")(h)
    h = keras.layers.Dropout(0.5, seed=5)(h)
    h = GhostNormalization(groups_m=2, name="ghost")(h)
    h = keras.layers.BatchNormalization(name="frozen", trainable=False)(h)
    model = keras.Model(inputs, keras.layers.Dense(3)(h))
    model.compile(
        optimizer=keras.optimizers.Adam(0.01),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def _noisy_data(seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(1.0, 2.0, size=(20, 6)).astype("float32"),
        rng.integers(0, 3, size=(20,)),
    )


def test_no_other_state_changes():
    x, y = _noisy_data()
    model = _noisy_model()
    model.train_on_batch(x, y)  # optimizer state, moved EMA statistics
    recalibrated = [
        getattr(model.get_layer(name), s)
        for name in ("noisy", "ghost")
        for s in STATS
    ]
    others = [
        v for v in model.variables if not any(v is r for r in recalibrated)
    ]
    # Seed generator states are among the model's variables.
    assert any("seed_generator" in v.path for v in others)
    configs = {layer.name: layer.get_config() for layer in model.layers}
    before = _snapshot(others)
    optimizer_before = _snapshot(model.optimizer.variables)
    assert int(to_numpy(model.optimizer.iterations)) == 1
    old = _snapshot(recalibrated)

    summary = recalibrate_statistics(model, x, batch_size=5)

    assert sorted(summary) == ["ghost", "noisy"]  # not the frozen one
    for got, want in zip(_snapshot(others), before):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(_snapshot(model.optimizer.variables),
                         optimizer_before):
        np.testing.assert_array_equal(got, want)
    for got, want in zip(_snapshot(recalibrated), old):
        assert not np.allclose(got, want)
    for layer in model.layers:
        assert "call" not in vars(layer)
        assert layer.get_config() == configs[layer.name]
    # Still trains and predicts.
    model.train_on_batch(x, y)
    assert np.isfinite(to_numpy(model.predict(x, verbose=0))).all()


def test_dropout_masks_differ_between_steps():
    # The seed generators' state advances from batch to batch during the
    # pass (and is restored after it): four identical batches behind a
    # dropout give different statistics, so the population variance of a
    # norm after the dropout is larger than that of any single batch.
    x, _ = _noisy_data()
    model = _noisy_model()
    four = recalibrate_statistics(
        model, np.concatenate([x] * 4), batch_size=20,
        statistics="population",
    )
    pooled = to_numpy(model.get_layer("ghost").moving_variance).copy()
    recalibrate_statistics(model, x, batch_size=20, statistics="population")
    single = to_numpy(model.get_layer("ghost").moving_variance)
    assert four["ghost"].batches == 4
    assert not np.allclose(pooled, single)


def test_failure_midway_changes_nothing():
    x, _ = _data()
    model = _model()
    before = _snapshot(model.variables)

    def failing():
        yield x[:8]
        raise RuntimeError("data source failed")

    with pytest.raises(RuntimeError, match="data source failed"):
        recalibrate_statistics(model, failing())
    with pytest.raises(ValueError, match="Received: steps=4"):
        recalibrate_statistics(model, x, steps=4, batch_size=8)
    for got, want in zip(_snapshot(model.variables), before):
        np.testing.assert_array_equal(got, want)
    for layer in model.layers:
        assert "call" not in vars(layer)


def test_nested_models_and_shared_calls():
    # A norm inside a nested model is found under its path; a layer called
    # twice per step averages over both calls.
    x, _ = _data()
    inner_inputs = keras.Input((5, 8))
    inner = keras.Model(
        inner_inputs,
        GhostNormalization(groups_m=2, name="norm")(inner_inputs),
        name="inner",
    )
    shared = keras.layers.BatchNormalization(name="shared")
    inputs = keras.Input((5, 8))
    outputs = shared(inner(inputs)) + shared(inputs * 2.0)
    model = keras.Model(inputs, outputs)
    summary = recalibrate_statistics(
        model, x, batch_size=11, statistics="population"
    )
    assert sorted(summary) == ["inner/norm", "shared"]
    assert summary["shared"].batches == 4
    assert summary["shared"].count == 2 * 22 * 5
    with keras.StatelessScope():
        first = to_numpy(inner(x, training=True)).reshape(-1, 8)
    values = np.concatenate([first, 2.0 * x.reshape(-1, 8)])
    np.testing.assert_allclose(
        to_numpy(shared.moving_mean), values.mean(0), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        to_numpy(shared.moving_variance), values.var(0), rtol=1e-4
    )


def test_mixed_precision():
    # float16 inputs; the statistics are computed and stored in float32.
    rng = np.random.default_rng(0)
    x = rng.normal(300.0, 20.0, size=(12, 4, 6)).astype("float16")
    inputs = keras.Input((4, 6), dtype="float16")
    layer = SequentialNormalization(
        groups_c=2, groups_m=2, dtype="mixed_float16"
    )
    model = keras.Model(inputs, layer(inputs))
    recalibrate_statistics(model, x, batch_size=6, statistics="population")
    assert layer.moving_mean.dtype == "float32"
    values = x.astype(np.float64)
    groups = values.reshape(12, 4, 2, 3)
    normalized = (groups - groups.mean(axis=(1, 3), keepdims=True)) / np.sqrt(
        groups.var(axis=(1, 3), keepdims=True) + EPSILON
    )
    normalized = normalized.reshape(-1, 6)
    np.testing.assert_allclose(
        to_numpy(layer.moving_mean), normalized.mean(0), atol=1e-4
    )
    np.testing.assert_allclose(
        to_numpy(layer.moving_variance), normalized.var(0), rtol=1e-3
    )


def _generator():
    yield np.zeros((2, 5, 8), "float32")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"statistics": "ema"}, "Received: statistics='ema'"),
        ({"steps": 0}, "Received: steps=0"),
        ({"steps": True}, "Received: steps=True"),
        ({"steps": 2.0}, "Received: steps=2.0"),
        ({"batch_size": 0}, "Received: batch_size=0"),
        ({"data": [np.zeros((2, 5, 8))]}, "Received: data="),
        ({"data": "x.npy"}, "Received: data="),
        ({"data": _generator(), "batch_size": 2}, "Received: batch_size=2"),
        ({"data": np.zeros((0, 5, 8), "float32")}, "holds no batch"),
        ({"model": "model"}, "Received: model='model'"),
        ({"model": keras.Sequential([keras.layers.Dense(2)])},
         "Received: model="),
    ],
)
def test_invalid_arguments(kwargs, match):
    arguments = {"model": _model(), "data": _data()[0], **kwargs}
    with pytest.raises(ValueError, match=match):
        recalibrate_statistics(**arguments)


def test_model_without_norm_layers():
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="no trainable norm layer"):
        recalibrate_statistics(model, np.zeros((4, 3), "float32"))


@pytest.mark.tensorflow_only
@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.data")
def test_tf_data():
    import tensorflow as tf

    x, y = _data()
    expected_model = _model()
    recalibrate_statistics(expected_model, x, batch_size=8, steps=2)
    model = _model()
    dataset = tf.data.Dataset.from_tensor_slices((x, y)).batch(8)
    recalibrate_statistics(model, dataset.repeat(), steps=2)
    for name in NORMS:
        for got, want in zip(_statistics(model)[name],
                             _statistics(expected_model)[name]):
            np.testing.assert_allclose(got, want, rtol=1e-6)
    with pytest.raises(ValueError, match="Received: steps=None"):
        recalibrate_statistics(model, dataset.repeat())
    with pytest.raises(ValueError, match="Received: batch_size=8"):
        recalibrate_statistics(model, dataset, batch_size=8)


DISTRIBUTED = textwrap.dedent(
    """
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras

    from keras_seqnorm import recalibrate_statistics
    from keras_seqnorm.layers import GhostNormalization
    from keras_seqnorm.layers import SequentialNormalization

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        inputs = keras.Input((5, 8))
        norms = [
            GhostNormalization(groups_m=2, name="ghost"),
            SequentialNormalization(groups_c=2, groups_m=2, name="seq"),
            keras.layers.BatchNormalization(name="bn"),
            keras.layers.BatchNormalization(synchronized=True, name="sync"),
        ]
        model = keras.Model(inputs, [norm(inputs) for norm in norms])
    rng = np.random.default_rng(0)
    # Batches of 8, 8 and 7: replica shards 4/4, 4/4 and 4/3.
    x = rng.normal(2.0, 3.0, size=(23, 5, 8)).astype("float32")

    def group_normalized(x):
        g = x.reshape(len(x), 5, 2, 4)
        mean = g.mean(axis=(1, 3), keepdims=True)
        var = g.var(axis=(1, 3), keepdims=True)
        return ((g - mean) / np.sqrt(var + 1e-3)).reshape(x.shape)

    def reference(name, statistics):
        groups = []  # every normalization batch's values, (n, 8)
        for start in range(0, 23, 8):
            batch = x[start:start + 8].astype(np.float64)
            if name == "seq":
                batch = group_normalized(batch)
            half = -(-len(batch) // 2)
            shards = [batch[:half], batch[half:]]
            if name == "sync":
                shards = [batch]
            for shard in shards:
                ghosts = 2 if name in ("ghost", "seq") else 1
                for ghost in np.array_split(shard, ghosts):
                    groups.append(ghost.reshape(-1, 8))
        if statistics == "population":
            values = np.concatenate(groups)
            return values.mean(0), values.var(0)
        n = np.array([len(g) for g in groups], np.float64)[:, None]
        means = np.array([g.mean(0) for g in groups])
        variances = np.array([g.var(0) for g in groups])
        return (n * means).sum(0) / n.sum(), (n * variances).sum(0) / n.sum()

    for statistics in ("ghost", "population"):
        for data, batch_size in (
            (x, 8),
            (tf.data.Dataset.from_tensor_slices(x).batch(8), None),
        ):
            summary = recalibrate_statistics(
                model, data, statistics=statistics, batch_size=batch_size
            )
            assert summary["ghost"].batches == 6, summary
            assert summary["sync"].batches == 3, summary
            for norm in norms:
                expected = reference(norm.name, statistics)
                for variable, want in zip(
                    (norm.moving_mean, norm.moving_variance), expected
                ):
                    copies = [
                        v.numpy() for v in
                        strategy.experimental_local_results(variable.value)
                    ]
                    assert len(copies) == 2
                    np.testing.assert_array_equal(copies[0], copies[1])
                    np.testing.assert_allclose(
                        copies[0], want, rtol=1e-4, atol=1e-5,
                        err_msg=f"{norm.name} {statistics}",
                    )
    print("distributed recalibration ok")
    """
)


@pytest.mark.tensorflow_only
@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute")
def test_mirrored_strategy_on_two_cpus():
    result = subprocess.run(
        [sys.executable, "-c", DISTRIBUTED],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed recalibration ok" in result.stdout
