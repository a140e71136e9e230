"""Loss-landscape probes during training (Santurkar et al. 2018).

At every `k`-th training step the `LossLandscape` callback takes the
gradient `g` of the training loss on a batch, evaluates the loss on the same
batch at `theta - eta * g` for a list of step sizes `eta` and records the
minimum and maximum (the loss landscape), together with the minimum and
maximum of `||grad(theta) - grad(theta - eta * g)||_2` (the gradient
predictiveness). The paper uses this in Section 3.1 and Appendix B to
compare BatchNorm, GhostNorm and no normalization.

`landscape(norms=..., **recipe)` trains one model per norm with the
callback and writes `DIR/landscape.json`, `DIR/test_error.json` and the
figure `DIR/landscape.png` (`DIR` defaults to
`runs/landscape/MODEL-DATASET-ID`, ID a hash of the recipe and the probes
but the norms). A run that stops on a non-finite loss or fails is left out
of them and listed (`failed`). `keras-seqnorm landscape [train flags]
--norms none,batch,ghost --run-dir DIR` parses its flags and calls it (and
exits with status 1 when a run failed).
"""

import functools
import json
import os
import typing

import keras
import numpy as np
from keras import ops

from keras_seqnorm import validation
from keras_seqnorm.analysis import plots
from keras_seqnorm.norms import check_norm_names
from keras_seqnorm.training import trainer
from keras_seqnorm.training.config import ConfigError
from keras_seqnorm.training.config import default_run_dir
from keras_seqnorm.training.config import make_config
from keras_seqnorm.training.config import norm_config
from keras_seqnorm.training.config import recipe_id
from keras_seqnorm.training.config import resolve_data_fields
from keras_seqnorm.utils import current_learning_rate
from keras_seqnorm.utils import write_json

# Appendix B.2, MNIST: eight learning rates 0.1, 0.2, ..., 0.8.
MNIST_ETAS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8)
# Appendix B.2, CIFAR-10: the one-cycle (low, high) pairs probed while the
# model trains on the (0.1, 3.0) cycle of Appendix B.1.
CIFAR_CYCLICAL_PAIRS = ((0.05, 1.5), (0.1, 3.0), (0.15, 4.5), (0.2, 6.0))
CIFAR_CYCLE = (0.1, 3.0)


def cyclical_multipliers(pairs=CIFAR_CYCLICAL_PAIRS, cycle=CIFAR_CYCLE):
    """Learning-rate multipliers equivalent to cyclical `(low, high)` pairs.

    A one-cycle schedule that runs from `low` to `high` and back is `s` times
    the training cycle when `(low, high) = s * cycle`; probing at that
    schedule's current value is probing at `s` times the current learning
    rate. The paper's CIFAR-10 pairs are `0.5, 1, 1.5, 2` times the
    `(0.1, 3.0)` cycle; its no-norm baseline, trained on `(0.1, 1)`, is
    probed "analogously", which the same multipliers give.

    Args:
        pairs: Sequence of `(low, high)` learning rates. Defaults to the
            paper's `CIFAR_CYCLICAL_PAIRS`.
        cycle: The `(low, high)` of the training schedule. Defaults to
            `(0.1, 3.0)`.

    Returns:
        A tuple of floats, one multiplier per pair.
    """
    multipliers = []
    for low, high in pairs:
        scale = low / cycle[0]
        if not np.isclose(high / cycle[1], scale):
            raise ValueError(
                "Argument `pairs` must hold multiples of `cycle` "
                f"{tuple(cycle)}. Received: pairs={tuple(pairs)}"
            )
        multipliers.append(float(scale))
    return tuple(multipliers)


def check_etas(etas, error=ValueError):
    """Checks a non-empty sequence of positive step sizes; returns a
    tuple."""
    etas = tuple(etas)
    if not etas or not all(
        isinstance(eta, (int, float)) and not isinstance(eta, bool)
        and eta > 0 for eta in etas
    ):
        validation.fail("etas", "a non-empty sequence of positive numbers",
                        etas, error)
    return etas


def _batches(data):
    """Yield `(x, y, sample_weight)` from `data` forever, re-iterating it."""
    while True:
        iterator = (
            data.as_numpy_iterator() if hasattr(data, "as_numpy_iterator")
            else iter(data)
        )
        empty = True
        for batch in iterator:
            empty = False
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(
                tuple(batch) if isinstance(batch, list) else batch
            )
            if sample_weight is not None:
                sample_weight = ops.convert_to_tensor(sample_weight)
            x, y = keras.tree.map_structure(ops.convert_to_tensor, (x, y))
            yield x, y, sample_weight
        if empty:
            raise ValueError(
                "Argument `data` yielded no batch. Received: "
                f"data={data!r}"
            )


class LossLandscape(keras.callbacks.Callback):
    """Records the loss landscape and gradient predictiveness during `fit`.

    Before every `every_n_steps`-th optimizer step the callback draws a
    batch `(x, y)` from `data`, computes the training loss `L` and its
    gradient `g` at the current trainable weights `theta`, and for each step
    size `eta` in `etas` evaluates `L(theta - eta * g)` and
    `d(eta) = ||g - grad L(theta - eta * g)||_2` on the same batch. It
    records `min` and `max` over `eta` of both. The model runs with
    `training=True` (normalization layers use batch statistics, as in the
    update they predict) through `Model.stateless_call`, so no variable is
    ever assigned: weights, optimizer state, moving statistics and seed
    states stay bit-identical.

    The loss is the model's compiled loss plus its regularization losses
    (`Model.compute_loss`). Weight decay that the optimizer applies itself
    (as PyTorch's SGD, and this package's training command, do) is not part
    of `g`, as in the paper's PyTorch code.

    With `relative=True`, the step sizes are `eta * learning_rate`, where
    `learning_rate` is the optimizer's current (scheduled) value: use
    `cyclical_multipliers()` to probe a cyclical schedule as in
    Appendix B.2.

    Args:
        data: A `tf.data.Dataset` or any iterable of `(x, y)` or
            `(x, y, sample_weight)` batches, re-iterated when exhausted, or
            a function without arguments that returns one (called at the
            first probe, e.g. to build the data after a `tf.distribute`
            strategy exists). Pass the training dataset to probe fresh
            training batches of the same size, or `[(x, y)]` to probe one
            fixed batch. The probes run on one device: under a
            multi-replica strategy, GhostNorm's `groups_m` then splits the
            whole probe batch rather than each replica's share.
        etas: Sequence of positive step sizes. Defaults to `MNIST_ETAS`,
            `0.1, 0.2, ..., 0.8` (Appendix B.2).
        every_n_steps: Probe before the optimizer steps that are multiples
            of `every_n_steps`, counted by `optimizer.iterations` (with
            `steps_per_execution` > 1, at the first call at or after each
            multiple). Defaults to `1`.
        relative: If `True`, `etas` multiply the current learning rate.
            Defaults to `False`.
        filename: Optional JSON file for `history`, rewritten at the end of
            every epoch. When training starts and it exists, its probes
            before the current optimizer step are loaded, so a resumed run
            (put this callback after the one that restores its backup, as
            `training.train.run` does with extra callbacks) keeps its
            earlier probes. Defaults to `None`.

    Attributes:
        history: Dict of lists, one entry per probe: `step` (the optimizer
            iteration), `loss` (at `theta`), `loss_min`, `loss_max`,
            `grad_pred_min`, `grad_pred_max`.

    Example:

    ```python
    probe = LossLandscape(train_ds, every_n_steps=10)
    model.fit(train_ds, epochs=5, callbacks=[probe])
    probe.history["loss_max"]
    ```

    Reference:
    - [Dimitriou and Arandjelovic, 2022](https://doi.org/10.3390/s22093353),
      Section 3.1 and Appendix B, after
      [Santurkar et al., 2018](https://arxiv.org/abs/1805.11604).
    """

    keys = ("step", "loss", "loss_min", "loss_max", "grad_pred_min",
            "grad_pred_max")

    def __init__(self, data, etas=MNIST_ETAS, every_n_steps=1, relative=False,
                 filename=None):
        super().__init__()
        etas = check_etas(etas)
        every_n_steps = validation.positive_int("every_n_steps",
                                                every_n_steps)
        backend = keras.backend.backend()
        if backend not in ("tensorflow", "jax"):
            raise ValueError(
                "LossLandscape supports the TensorFlow and JAX backends. "
                f"Received: backend={backend}"
            )
        self.data = data
        self.etas = etas
        self.every_n_steps = every_n_steps
        self.relative = relative
        self.filename = filename
        self.history = {key: [] for key in self.keys}
        self._batches = None
        self._value_and_grad = None
        self._next_probe = 0

    def set_model(self, model):
        super().set_model(model)
        self._value_and_grad = None

    def _step(self):
        # The JAX trainer keeps the state outside the variables during an
        # epoch; syncing writes it back (and the next step reads it again).
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()
        return int(ops.convert_to_numpy(self.model.optimizer.iterations))

    def on_train_begin(self, logs=None):
        step = self._step()
        # The first multiple of `every_n_steps` at or after `step`.
        self._next_probe = -(-step // self.every_n_steps) * self.every_n_steps
        if self.filename is None or not os.path.exists(self.filename):
            return
        with open(self.filename) as f:
            stored = json.load(f)
        keep = [i for i, s in enumerate(stored["step"]) if s < step]
        self.history = {
            key: [stored[key][i] for i in keep] for key in self.keys
        }

    def on_epoch_end(self, epoch, logs=None):
        if self.filename is not None:
            write_json(self.filename, self.history, indent=None)

    def on_train_batch_begin(self, batch, logs=None):
        step = self._step()
        # With `steps_per_execution` > 1 the steps advance in jumps: probe
        # once a multiple of `every_n_steps` has been reached.
        if step < self._next_probe:
            return
        self._next_probe = (step // self.every_n_steps + 1) * (
            self.every_n_steps
        )
        if self._batches is None:
            data = self.data() if callable(self.data) else self.data
            self._batches = _batches(data)
        x, y, sample_weight = next(self._batches)
        record = self.probe(x, y, sample_weight)
        record["step"] = step
        for key in self.keys:
            self.history[key].append(record[key])

    def probe(self, x, y, sample_weight=None):
        """Probes the landscape at the current weights on one batch.

        Args:
            x: Input batch.
            y: Target batch.
            sample_weight: Optional sample weights. Defaults to `None`.

        Returns:
            A dict with `loss` (at `theta`), `etas` (the step sizes used),
            `losses` and `grad_pred` (one value per step size), and their
            `loss_min`, `loss_max`, `grad_pred_min`, `grad_pred_max`.
        """
        model = self.model
        if self._value_and_grad is None:
            self._value_and_grad = _make_value_and_grad(model)
        trainable = [v.value for v in model.trainable_variables]
        state = (
            [v.value for v in model.non_trainable_variables],
            [v.value for v in model.metrics_variables],
        )
        loss, grads = self._value_and_grad(
            trainable, *state, x, y, sample_weight
        )
        scale = 1.0
        if self.relative:
            scale = current_learning_rate(model.optimizer)
        steps = [eta * scale for eta in self.etas]
        losses, distances = [], []
        for size in steps:
            moved = [
                ops.subtract(value, ops.multiply(ops.cast(size, g.dtype), g))
                for value, g in zip(trainable, grads)
            ]
            moved_loss, moved_grads = self._value_and_grad(
                moved, *state, x, y, sample_weight
            )
            distance = ops.sqrt(sum(
                ops.sum(ops.square(ops.subtract(a, b)))
                for a, b in zip(grads, moved_grads)
            ))
            losses.append(float(ops.convert_to_numpy(moved_loss)))
            distances.append(float(ops.convert_to_numpy(distance)))
        return {
            "loss": float(ops.convert_to_numpy(loss)),
            "etas": steps,
            "losses": losses,
            "grad_pred": distances,
            "loss_min": min(losses),
            "loss_max": max(losses),
            "grad_pred_min": min(distances),
            "grad_pred_max": max(distances),
        }


def _make_value_and_grad(model):
    """A compiled `(trainable, non_trainable, metrics, x, y, sw) -> (loss,
    grads)` that reads and writes no variable."""

    def loss_fn(trainable, non_trainable, metrics, x, y, sample_weight):
        y_pred, _ = model.stateless_call(
            trainable, non_trainable, x, training=True
        )
        loss, _ = model.stateless_compute_loss(
            trainable, non_trainable, metrics, x=x, y=y, y_pred=y_pred,
            sample_weight=sample_weight, training=True,
        )
        return loss

    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(jax.value_and_grad(loss_fn))
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def value_and_grad(trainable, non_trainable, metrics, x, y,
                       sample_weight):
        with tf.GradientTape() as tape:
            tape.watch(trainable)
            loss = loss_fn(
                trainable, non_trainable, metrics, x, y, sample_weight
            )
        return loss, tape.gradient(loss, trainable)

    return value_and_grad


PROBES_FILE = "landscape_probes.json"
LANDSCAPE_FILE = "landscape.json"
TEST_ERROR_FILE = "test_error.json"
FIGURE_FILE = "landscape.png"
LANDSCAPE_KEYS = ("step", "loss_min", "loss_max", "grad_pred_min",
                  "grad_pred_max")
DEFAULT_NORMS = ("none", "batch", "ghost")
# Fields `landscape` sets for each run: it validates on the test split, as
# Appendix B.1.
_PER_RUN = ("norm", "run_dir", "validation_size")


def _training_data(config):
    """The training pipeline of `config`, built on first use inside `fit`
    (after `train` has created the strategy)."""
    from keras_seqnorm.training.data import load_data

    return load_data(resolve_data_fields(config)).train


def _etas(etas, relative, error=ValueError):
    """The step sizes probed: `etas`, or by default `MNIST_ETAS`, with
    `relative` `cyclical_multipliers()`."""
    return check_etas(
        etas or (cyclical_multipliers() if relative else MNIST_ETAS), error
    )


def default_root(recipe, etas=None, relative=False, every_n_steps=1):
    """`runs/landscape/MODEL-DATASET-ID`: ID hashes the recipe (a dict of
    `Config` field values) and the probes (see `landscape`), but the
    norms."""
    etas = _etas(etas, relative)
    recipe = {**recipe, "validation_size": 0}
    base = make_config(recipe, norm="sequential")
    identity = recipe_id(recipe, probes=[list(etas), relative, every_n_steps])
    return default_run_dir("landscape", base.model, base.dataset, identity)


def landscape(norms=DEFAULT_NORMS, etas=None, relative=False,
              every_n_steps=1, run_dir=None, **recipe):
    """Trains one model per norm with a `LossLandscape` probe.

    Each norm trains with `training.train` in `run_dir/NORM/`, validating
    on the test split (Appendix B.1); a finished run is reused and a killed
    one resumes with its earlier probes. Then it writes
    `run_dir/landscape.json` (`{"norms": {name: {"step", "loss_min",
    "loss_max", "grad_pred_min", "grad_pred_max"}}}`),
    `run_dir/test_error.json` (`{"norms": {name: {"epoch",
    "test_error"}}}`) and the figure `run_dir/landscape.png`.

    Args:
        norms: Distinct names from `NORM_LAYERS`, one model each. Defaults
            to `("none", "batch", "ghost")`.
        etas: Step sizes probed along the gradient. Defaults to `None`:
            `MNIST_ETAS`, or with `relative`, `cyclical_multipliers()`.
        relative: Probe at multiples of the current learning rate (for
            cyclical schedules). Defaults to `False`.
        every_n_steps: Probe before every `every_n_steps`-th training
            step. Defaults to `1`.
        run_dir: The output folder. Defaults to `None`: `default_root`.
        **recipe: `Config` field values shared by the runs (not `norm`,
            `run_dir` or `validation_size`); `groups_m` and `groups_c`
            apply only to the norms that take them.

    Returns:
        A dict with `norms` (as `landscape.json`), `test_error` (as
        `test_error.json`), `test_accuracy` (per norm, after training),
        `figure` (the PNG's path, `None` when no run completed) and
        `failed` (per norm whose run did not complete: `norm`, `run_dir`,
        `status` and the `error`, if any).

    Raises:
        ConfigError: for bad `norms`, `etas` or `every_n_steps`, or a
            recipe that cannot run.
    """
    norms = check_norm_names("norms", norms, ConfigError)
    etas = _etas(etas, relative, ConfigError)
    every_n_steps = validation.positive_int("every_n_steps", every_n_steps,
                                            error=ConfigError)
    for name in _PER_RUN:
        if name in recipe:
            validation.fail(name, "set by landscape, not in the recipe",
                            recipe[name], ConfigError)
    root = run_dir or default_root(recipe, etas, relative, every_n_steps)
    runs = {
        norm: _train_with_probe(
            recipe, norm, os.path.join(root, norm),
            etas=etas, every_n_steps=every_n_steps, relative=relative,
        )
        for norm in norms
    }
    probed = {norm: run for norm, run in runs.items() if not run.failure}
    result = {
        "norms": {norm: run.history for norm, run in probed.items()},
        "test_error": {
            norm: _test_error(run.results) for norm, run in probed.items()
        },
        "test_accuracy": {
            norm: run.results["test_accuracy"]
            for norm, run in probed.items()
        },
        "figure": None,
        "failed": [run.failure for run in runs.values() if run.failure],
    }
    os.makedirs(root, exist_ok=True)
    write_json(os.path.join(root, LANDSCAPE_FILE),
               {"norms": result["norms"]}, indent=None)
    write_json(os.path.join(root, TEST_ERROR_FILE),
               {"norms": result["test_error"]}, indent=None)
    if probed:
        first = next(iter(probed.values())).results["config"]
        result["figure"] = plots.plot_landscape(
            {"norms": result["norms"]}, {"norms": result["test_error"]},
            os.path.join(root, FIGURE_FILE),
            title=f"{first['model']} on {first['dataset']}",
        )
    return result


def _train_with_probe(recipe, norm, run_dir, **probe):
    """Trains the recipe's `norm` in `run_dir` with a `LossLandscape`.

    Returns:
        A `_ProbedRun`.
    """
    config = norm_config(recipe, norm, run_dir=run_dir, validation_size=0)
    path = os.path.join(run_dir, PROBES_FILE)
    callback = LossLandscape(
        functools.partial(_training_data, config), filename=path, **probe
    )
    failure = {"norm": norm, "run_dir": run_dir, "status": trainer.FAILED}
    try:
        results = trainer.train(config, callbacks=[callback])
    except ConfigError:
        raise
    except Exception as error:  # Recorded in its results.json.
        error = f"{type(error).__name__}: {error}"
        return _ProbedRun(failure={**failure, "error": error})
    status = results.get("status", trainer.COMPLETED)
    if status != trainer.COMPLETED:
        return _ProbedRun(failure={**failure, "status": status})
    with open(path) as file:
        history = json.load(file)
    history = {key: history[key] for key in LANDSCAPE_KEYS}
    return _ProbedRun(history=history, results=results)


class _ProbedRun(typing.NamedTuple):
    """One norm's run: its probes (`LANDSCAPE_KEYS`) and training results
    when it completed, else its `failure` entry (`norm`, `run_dir`,
    `status` and the `error`, if any)."""

    history: dict | None = None
    results: dict | None = None
    failure: dict | None = None


def _test_error(results):
    """`{"epoch", "test_error"}` per epoch of a run validated on the test
    split."""
    history = results["history"]
    return {
        "epoch": [int(epoch) + 1 for epoch in history["epoch"]],
        "test_error": [1.0 - a for a in history["val_accuracy"]],
    }
