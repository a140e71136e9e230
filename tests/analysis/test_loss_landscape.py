import keras
import numpy as np
import pytest

from keras_seqnorm import cli
from keras_seqnorm.analysis import loss_landscape
from keras_seqnorm.layers import GhostNormalization


def _model(seed=0, dropout=0.2):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(
        8, kernel_regularizer=keras.regularizers.L2(1e-2), name="dense1"
    )(inputs)
    h = GhostNormalization(groups_m=2, momentum=0.5, name="ghost")(h)
    h = keras.layers.Activation("relu")(h)
    if dropout:
        h = keras.layers.Dropout(dropout, seed=1)(h)
    outputs = keras.layers.Dense(3, name="logits")(h)
    model = keras.Model(inputs, outputs)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def _data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype("float32")
    y = rng.integers(0, 3, size=(n,)).astype("int32")
    return x, y


def _snapshot(model):
    variables = (
        model.variables
        + model.optimizer.variables
        + model.metrics_variables
    )
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def _probe_ready_model(dropout=0.2):
    model = _model(dropout=dropout)
    x, y = _data()
    # One real step so momenta, moving statistics and metrics are non-zero.
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    callback = loss_landscape.LossLandscape([(x, y)], etas=(0.1, 0.5, 2.0))
    callback.set_model(model)
    return model, callback, x, y


def test_probe_leaves_every_state_bit_identical():
    model, callback, x, y = _probe_ready_model()
    before = _snapshot(model)
    # The states a careless probe would move are live: momenta, moving
    # statistics.
    momenta = [v for v in model.optimizer.variables if "momentum" in v.path]
    assert momenta and all(np.any(v.numpy() != 0) for v in momenta)
    ghost = model.get_layer("ghost")
    assert np.any(ghost.moving_mean.numpy() != 0)
    callback.probe(x, y)
    after = _snapshot(model)
    assert len(before) == len(after)
    for old, new in zip(before, after):
        assert old.dtype == new.dtype
        assert np.array_equal(old, new)


@pytest.mark.tensorflow_only
@pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="the manual reference uses tf.GradientTape",
)
def test_probe_matches_a_manual_evaluation():
    import tensorflow as tf

    # Without dropout: a clone would draw other masks.
    model, callback, x, y = _probe_ready_model(dropout=0.0)
    record = callback.probe(x, y)
    loss_fn = model.loss

    def loss_and_grads(clone):
        with tf.GradientTape() as tape:
            out = clone(x, training=True)
            loss = loss_fn(y, out) + tf.add_n(clone.losses)
        grads = tape.gradient(loss, clone.trainable_variables)
        return float(loss), [g.numpy() for g in grads]

    weights = model.get_weights()
    clone = keras.models.clone_model(model)
    clone.set_weights(weights)
    loss, grads = loss_and_grads(clone)
    assert record["loss"] == pytest.approx(loss, rel=1e-5)

    eta = min(callback.etas)
    moved = {
        id(v): v.numpy() - eta * g
        for v, g in zip(clone.trainable_variables, grads)
    }
    clone.set_weights(weights)  # undo the moving-statistics update
    clone.set_weights([
        moved.get(id(v), v.numpy()) for v in clone.weights
    ])
    moved_loss, moved_grads = loss_and_grads(clone)
    distance = np.sqrt(sum(
        np.sum((a - b) ** 2) for a, b in zip(grads, moved_grads)
    ))
    index = callback.etas.index(eta)
    assert record["losses"][index] == pytest.approx(moved_loss, rel=1e-5)
    assert record["grad_pred"][index] == pytest.approx(distance, rel=1e-4)
    # A step of 2.0 along the gradient lands elsewhere: the probes differ.
    assert record["loss_min"] < record["loss_max"]
    assert record["grad_pred_min"] < record["grad_pred_max"]


def test_callback_in_fit_probes_every_k_steps():
    import tensorflow as tf

    model = _model()
    x, y = _data(64)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(
        16, drop_remainder=True
    )
    # A function returning the data is called at the first probe.
    callback = loss_landscape.LossLandscape(lambda: train, every_n_steps=3)
    model.fit(
        train, epochs=2, callbacks=[callback], shuffle=False, verbose=0
    )
    # 8 optimizer steps: probes before steps 0, 3 and 6, across epochs.
    assert callback.history["step"] == [0, 3, 6]
    for key in callback.keys:
        assert len(callback.history[key]) == 3
    for low, high in zip(
        callback.history["loss_min"], callback.history["loss_max"]
    ):
        assert np.isfinite(low) and low <= high
    for low, high in zip(
        callback.history["grad_pred_min"], callback.history["grad_pred_max"]
    ):
        assert 0.0 <= low <= high


def test_steps_per_execution_probes_at_the_first_call_past_a_multiple():
    import tensorflow as tf

    model = _model()
    model.compile(
        optimizer="sgd", loss=model.loss, steps_per_execution=2,
    )
    x, y = _data(128)
    train = tf.data.Dataset.from_tensor_slices((x, y)).batch(
        16, drop_remainder=True
    )
    callback = loss_landscape.LossLandscape(train, every_n_steps=3)
    model.fit(train, epochs=1, callbacks=[callback], shuffle=False,
              verbose=0)
    # Calls before steps 0, 2, 4, 6: the multiples 0, 3 and 6.
    assert callback.history["step"] == [0, 4, 6]


def test_relative_etas_follow_the_learning_rate():
    model, _, x, y = _probe_ready_model()
    model.optimizer.learning_rate = 0.25
    callback = loss_landscape.LossLandscape(
        [(x, y)], etas=loss_landscape.cyclical_multipliers(), relative=True
    )
    callback.set_model(model)
    record = callback.probe(x, y)
    assert record["etas"] == pytest.approx([0.125, 0.25, 0.375, 0.5])


def test_cyclical_multipliers():
    assert loss_landscape.cyclical_multipliers() == pytest.approx(
        (0.5, 1.0, 1.5, 2.0)
    )
    with pytest.raises(
        ValueError, match=r"`pairs`.*Received: pairs=\(\(0.1, 1.0\),"
    ):
        loss_landscape.cyclical_multipliers([(0.1, 1.0)])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"etas": ()}, r"`etas`.*Received: etas=\(\)"),
        ({"etas": (0.1, -1.0)}, r"`etas`.*Received: etas=\(0.1, -1.0\)"),
        ({"every_n_steps": 0}, r"`every_n_steps`.*Received: every_n_steps=0"),
        ({"every_n_steps": 2.0}, r"Received: every_n_steps=2.0"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        loss_landscape.LossLandscape([], **kwargs)


def test_empty_data_is_an_error():
    model, _, _, _ = _probe_ready_model()
    callback = loss_landscape.LossLandscape([])
    callback.set_model(model)
    with pytest.raises(ValueError, match="Argument `data` yielded no batch"):
        callback.on_train_batch_begin(0)


def _landscape(argv):
    return cli.run_command(["landscape", *argv])


TRAIN_FLAGS = [
    "--model", "simplenet", "--epochs", "1", "--batch-size", "128",
    "--learning-rate", "0.4", "--schedule", "constant", "--momentum", "0",
    "--no-nesterov", "--weight-decay", "0", "--verbose", "0",
]


@pytest.mark.slow
@pytest.mark.jax_run
def test_landscape_command_writes_the_schema_and_resumes(tmp_path):
    import json
    import os

    argv = TRAIN_FLAGS + [
        "--groups-m", "8", "--norms", "batch,ghost", "--every-n-steps", "4",
        "--run-dir", str(tmp_path),
    ]
    result = _landscape(argv)
    with open(os.path.join(tmp_path, "landscape.json")) as f:
        written = json.load(f)
    assert list(written) == ["norms"]
    assert list(written["norms"]) == ["batch", "ghost"]
    # 1,437 digits training images, batch 128: steps 0..10, every 4th.
    for series in written["norms"].values():
        assert list(series) == list(loss_landscape.LANDSCAPE_KEYS)
        assert series["step"] == [0, 4, 8]
        assert all(
            low <= high
            for low, high in zip(series["loss_min"], series["loss_max"])
        )
    assert result["norms"] == written["norms"]
    assert len(result["test_error"]["ghost"]["test_error"]) == 1
    assert os.path.getsize(os.path.join(tmp_path, "landscape.png")) > 0
    with open(os.path.join(tmp_path, "ghost", "config.json")) as f:
        config = json.load(f)
    assert (config["groups_m"], config["validation_size"]) == (8, 0)
    with open(os.path.join(tmp_path, "batch", "config.json")) as f:
        assert json.load(f)["groups_m"] is None

    # Finished runs are reused: the same probes come back without training.
    mtime = os.path.getmtime(os.path.join(tmp_path, "ghost", "log.csv"))
    again = _landscape(argv)
    assert again["norms"] == written["norms"]
    assert os.path.getmtime(
        os.path.join(tmp_path, "ghost", "log.csv")
    ) == mtime


def test_landscape_command_rejects_bad_flags(capsys):
    with pytest.raises(SystemExit):
        _landscape(["--etas", "0.1,-2"])
    assert "Received: etas='0.1,-2'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        _landscape(["--every-n-steps", "0"])
    assert "Received: every_n_steps=0" in capsys.readouterr().err


def test_the_torch_backend_is_refused_before_any_run(
    tmp_path, monkeypatch, capsys
):
    # The probe's gradients come from tf.GradientTape or jax.grad: on torch
    # the callback, `landscape` and `reproduce` stop before training.
    monkeypatch.setattr(keras.backend, "backend", lambda: "torch")
    expected = "needs KERAS_BACKEND=tensorflow or jax"
    with pytest.raises(ValueError, match=expected):
        loss_landscape.LossLandscape([])
    for argv in (
        ["landscape", "--run-dir", str(tmp_path / "landscape")],
        ["reproduce", "--run-dir", str(tmp_path / "reproduce"),
         "--out", str(tmp_path / "docs" / "results.md")],
    ):
        with pytest.raises(SystemExit) as info:
            cli.run_command(argv)
        assert info.value.code == 2
        error = capsys.readouterr().err
        assert error.count("\n") == 1 and expected in error
        assert "Received: KERAS_BACKEND=torch" in error
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_landscape_command_on_a_cifar_resnet(tmp_path):
    # Issue 5: the tool works offline with the CIFAR ResNets too.
    argv = [
        "--model", "resnet20", "--epochs", "1", "--batch-size", "256",
        "--learning-rate", "0.1", "--schedule", "constant", "--verbose", "0",
        "--groups-m", "8", "--norms", "ghost", "--every-n-steps", "3",
        "--etas", "0.05,0.1", "--run-dir", str(tmp_path),
    ]
    result = _landscape(argv)
    series = result["norms"]["ghost"]
    # 1,437 training images, batch 256: steps 0..4, every 3rd probed.
    assert series["step"] == [0, 3]
    assert all(
        low <= high for low, high in zip(series["loss_min"], series["loss_max"])
    )
    assert all(v >= 0 for v in series["grad_pred_min"])
