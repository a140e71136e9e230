"""Loss-landscape probes during training (Santurkar et al. 2018).

At every `k`-th training step the `LossLandscape` callback takes the
gradient `g` of the training loss on a batch, evaluates the loss on the same
batch at `theta - eta * g` for a list of step sizes `eta` and records the
minimum and maximum (the loss landscape), together with the minimum and
maximum of `||grad(theta) - grad(theta - eta * g)||_2` (the gradient
predictiveness). The paper uses this in Section 3.1 and Appendix B to
compare BatchNorm, GhostNorm and no normalization.

`keras-seqnorm landscape [train flags] --norms none,batch,ghost --run-dir DIR`
trains one model per norm with the callback and writes `DIR/landscape.json`,
`DIR/test_error.json` and the figure `DIR/landscape.png` (`DIR` defaults to
`runs/landscape/MODEL-DATASET-ID`, ID a hash of the flags but `--norms`). A
run that stops on a non-finite loss or fails is left out of them and
listed (`failed`); the command then exits with status 1.
"""

import argparse
import functools
import json
import os
import sys

import keras
import numpy as np
from keras import ops

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
        etas = tuple(etas)
        if not etas or not all(
            isinstance(eta, (int, float)) and not isinstance(eta, bool)
            and eta > 0 for eta in etas
        ):
            raise ValueError(
                "Argument `etas` must be a non-empty sequence of positive "
                f"numbers. Received: etas={etas}"
            )
        if (
            isinstance(every_n_steps, bool)
            or not isinstance(every_n_steps, int)
            or every_n_steps < 1
        ):
            raise ValueError(
                "Argument `every_n_steps` must be a positive integer. "
                f"Received: every_n_steps={every_n_steps!r}"
            )
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
        if self.filename is None:
            return
        temporary = self.filename + ".saving"
        with open(temporary, "w") as f:
            json.dump(self.history, f)
        os.replace(temporary, self.filename)

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
            optimizer = model.optimizer
            # A LossScaleOptimizer holds the schedule in its inner optimizer.
            optimizer = getattr(optimizer, "inner_optimizer", optimizer)
            scale = float(ops.convert_to_numpy(optimizer.learning_rate))
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
LANDSCAPE_KEYS = ("step", "loss_min", "loss_max", "grad_pred_min",
                  "grad_pred_max")


def _names(text):
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct comma-separated names (e.g. none,batch,"
            f"ghost). Received: {text!r}"
        )
    return names


def _floats(text):
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        values = ()
    if not values or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(
            f"expected positive numbers separated by commas (e.g. "
            f"0.1,0.2,0.4). Received: {text!r}"
        )
    return values


def build_parser():
    """The flags of `keras-seqnorm train` (but `--norm`, `--run-dir` and
    `--validation-size`) plus the landscape's own."""
    # The training stack (TensorFlow, matplotlib) is imported on use: the
    # callback alone needs neither.
    from keras_seqnorm.training import config as config_module

    parser = config_module.build_parser(
        prog="keras-seqnorm landscape",
        description=__doc__.split("\n")[0],
        exclude=("norm", "run_dir", "validation_size"),
    )
    group = parser.add_argument_group("landscape")
    group.add_argument(
        "--norms", type=_names, default=["none", "batch", "ghost"],
        metavar="LIST",
        help="Norms to train, one model each (default: none,batch,ghost).",
    )
    group.add_argument(
        "--run-dir", dest="landscape_dir", default=None, metavar="DIR",
        help="Output directory: landscape.json, test_error.json, "
        "landscape.png and one training run per norm in NORM/ (default: "
        "runs/landscape/MODEL-DATASET-ID, ID a hash of the flags but "
        "--norms). Rerun the command to resume.",
    )
    group.add_argument(
        "--etas", type=_floats, default=None, metavar="LIST",
        help="Step sizes probed along the gradient (default: 0.1,...,0.8, "
        "Appendix B.2's MNIST values; with --relative, 0.5,1,1.5,2, its "
        "CIFAR-10 one-cycle pairs as multiples of the training cycle).",
    )
    group.add_argument(
        "--relative", action=argparse.BooleanOptionalAction, default=False,
        help="Probe at multiples of the current learning rate (for "
        "cyclical schedules) instead of at fixed step sizes.",
    )
    group.add_argument(
        "--every-n-steps", type=int, default=1, metavar="N",
        help="Probe before every N-th training step (default: 1).",
    )
    return parser


def _norm_config(namespace, norm, run_dir):
    """The training config of `norm`: group counts only for the norms
    that take them; validation on the test split (Appendix B.1)."""
    from keras_seqnorm.training import config as config_module

    overrides = {"norm": norm, "run_dir": run_dir, "validation_size": 0}
    for name in ("groups_m", "groups_c"):
        if name not in config_module.GROUP_ARGUMENTS.get(norm, {}):
            overrides[name] = None
    return config_module.config_from_namespace(namespace, **overrides)


def _training_data(config):
    """The training pipeline of `config`, built on first use inside `fit`
    (after `run` has created the strategy)."""
    from keras_seqnorm.training.data import load_data
    from keras_seqnorm.training.data import resolve_data_fields

    return load_data(resolve_data_fields(config)).train


def _default_dir(namespace, etas):
    from keras_seqnorm.training import config as config_module

    base = _norm_config(namespace, "sequential", None)
    values = base.to_dict()
    for name in ("groups_m", "groups_c"):
        values[name] = getattr(namespace, name, None)
    values["probes"] = [list(etas), namespace.relative,
                        namespace.every_n_steps]
    return config_module.default_run_dir(
        "landscape", base.model, base.dataset,
        config_module.run_id(values, exclude=("norm",)),
    )


def main(argv=None):
    """`keras-seqnorm landscape [train flags] --norms ... --run-dir DIR`.

    Trains one model per norm with a `LossLandscape` probe and writes
    `DIR/landscape.json` (`{"norms": {name: {"step", "loss_min",
    "loss_max", "grad_pred_min", "grad_pred_max"}}}`),
    `DIR/test_error.json` (`{"norms": {name: {"epoch", "test_error"}}}`)
    and `DIR/landscape.png`. A killed command resumes where it stopped.

    Returns:
        A dict with `norms` (as `landscape.json`), `test_error` (as
        `test_error.json`), `test_accuracy` (per norm, after training),
        `figure` (the PNG's path, `None` when no run completed) and
        `failed` (per norm whose run did not complete: `norm`, `run_dir`,
        `status`, `error`). The console script exits with status 1 when a
        run failed.
    """
    from keras_seqnorm.analysis import plots
    from keras_seqnorm.training import train
    from keras_seqnorm.training.config import ConfigError

    parser = build_parser()
    namespace = parser.parse_args(argv)
    if namespace.every_n_steps < 1:
        parser.error(
            "Argument `every_n_steps` must be a positive integer. "
            f"Received: every_n_steps={namespace.every_n_steps}"
        )
    relative = namespace.relative
    etas = namespace.etas or (
        cyclical_multipliers() if relative else MNIST_ETAS
    )
    landscape, test_error, accuracy, failed = {}, {}, {}, []
    try:
        out_dir = namespace.landscape_dir or _default_dir(namespace, etas)
        print(f"keras-seqnorm landscape: run directory {out_dir}",
              flush=True)
        for norm in namespace.norms:
            run_dir = os.path.join(out_dir, norm)
            probes = os.path.join(run_dir, PROBES_FILE)
            config = _norm_config(namespace, norm, run_dir)
            callback = LossLandscape(
                functools.partial(_training_data, config),
                etas=etas,
                every_n_steps=namespace.every_n_steps,
                relative=relative,
                filename=probes,
            )
            try:
                results = train.run(config, callbacks=[callback])
            except ConfigError:
                raise
            except Exception as error:  # Recorded in its results.json.
                failed.append({"norm": norm, "run_dir": run_dir,
                               "status": train.FAILED,
                               "error": f"{type(error).__name__}: {error}"})
                continue
            status = results.get("status", train.COMPLETED)
            if status != train.COMPLETED:
                failed.append({"norm": norm, "run_dir": run_dir,
                               "status": status})
                continue
            with open(probes) as f:
                history = json.load(f)
            landscape[norm] = {key: history[key] for key in LANDSCAPE_KEYS}
            epochs = results["history"]
            test_error[norm] = {
                "epoch": [int(e) + 1 for e in epochs["epoch"]],
                "test_error": [1.0 - a for a in epochs["val_accuracy"]],
            }
            accuracy[norm] = results["test_accuracy"]
    except ConfigError as error:
        parser.error(str(error))
    landscape = {"norms": landscape}
    test_error = {"norms": test_error}
    os.makedirs(out_dir, exist_ok=True)
    for name, value in (("landscape.json", landscape),
                        ("test_error.json", test_error)):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(value, f)
    figure = None
    if landscape["norms"]:
        figure = plots.plot_landscape(
            landscape, test_error, os.path.join(out_dir, "landscape.png"),
            title=f"{config.model} on {config.dataset}",
        )
    if failed:
        print(
            "keras-seqnorm landscape: failed runs, left out: " + "; ".join(
                f"{entry['norm']} ({entry['status']}"
                + (f": {entry['error']}" if "error" in entry else "")
                + f", {entry['run_dir']})" for entry in failed
            ),
            file=sys.stderr,
        )
    print(f"wrote {os.path.join(out_dir, 'landscape.json')}"
          + (f" and {figure}" if figure else ""))
    return {
        "norms": landscape["norms"],
        "test_error": test_error["norms"],
        "test_accuracy": accuracy,
        "figure": figure,
        "failed": failed,
    }


if __name__ == "__main__":
    from keras_seqnorm.cli import exit_status

    sys.exit(exit_status(main()))
