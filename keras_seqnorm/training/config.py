"""The training configuration: one frozen dataclass, and its flags.

Every field of `Config` is a flag of `keras-seqnorm train` (`batch_size` is
`--batch-size`, booleans also have a `--no-` form). Each field is declared
once (`_option`): its help, its kind, its choices or bounds; the flag, the
check `Config` runs on construction and the `--help` line all derive from
that declaration. Values come, in increasing priority, from the field
defaults, the `--preset` (see `presets.py`) and the flags given
(`make_config` does the same from Python):

```python
config = parse_config(["--preset", "cifar10-wrn28-10", "--norm", "ghost"])
config.batch_size  # 512, from the preset
config.groups_m  # 4, the paper's value for GhostNorm on CIFAR-10
```

The defaults train the offline `digits` demo on a CPU in seconds.
"""

import argparse
import dataclasses
import hashlib
import json
import math
import os
import shlex
import typing

from keras_seqnorm import validation
from keras_seqnorm.models import MODELS
from keras_seqnorm.norms import GROUP_COUNTS
from keras_seqnorm.norms import NORM_LAYERS
from keras_seqnorm.norms import group_arguments
from keras_seqnorm.norms import group_kwargs
from keras_seqnorm.norms import norms_taking
from keras_seqnorm.training.presets import PRESETS
from keras_seqnorm.training.presets import preset_values
from keras_seqnorm.utils import comma_list


class DatasetDefaults(typing.NamedTuple):
    """What a data set brings when the config leaves it open.

    Attributes:
        image_size: Side of the square images fed to the model.
        validation_size: Images held out of the training split for
            validation (0: validate on the test split).
        test_split: The TensorFlow Datasets split used as the test set
            (`None` for digits, which is split from its one set).
        stats: Per-channel `(mean, std)` of the pixel values in [0, 255],
            or `None` (digits: computed from its training split).
    """

    image_size: int
    validation_size: int
    test_split: str | None
    stats: tuple | None


DATASET_DEFAULTS = {
    "digits": DatasetDefaults(16, 180, None, None),
    "mnist": DatasetDefaults(28, 5000, "test", ((33.32,), (78.57,))),
    "cifar10": DatasetDefaults(
        32, 5000, "test",
        ((125.31, 122.95, 113.87), (62.99, 62.09, 66.70)),
    ),
    "cifar100": DatasetDefaults(
        32, 5000, "test",
        ((129.30, 124.07, 112.43), (68.17, 65.39, 70.42)),
    ),
    "imagenet2012": DatasetDefaults(
        224, 0, "validation",
        ((123.675, 116.28, 103.53), (58.395, 57.12, 57.375)),
    ),
}
DATASETS = tuple(DATASET_DEFAULTS)
SCHEDULES = ("constant", "cosine", "piecewise_linear")
STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device",
              "data_parallel")
# `recalibrate_statistics`' kinds of statistics.
RECALIBRATION_STATISTICS = ("ghost", "population")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
JIT_COMPILE = {"auto": "auto", "true": True, "false": False}
# Fields that change how a run executes, not what it trains: a run resumed
# with other values of these is the same run, and they are left out of the
# run's identity (`run_id`).
EXECUTION_FIELDS = (
    "run_dir", "verbose", "data_dir", "manual_dir", "download",
    "jit_compile", "steps_per_execution", "deterministic",
)


class ConfigError(ValueError):
    """A configuration that cannot run: bad argument or flag values or
    combinations (of a training run or of a command that drives runs), a
    batch that does not fit the replicas, a run directory holding another
    run, a data set that is not available. The `keras-seqnorm` commands
    report it as a one-line command-line error."""


def _fail(name, expected, value):
    validation.fail(name, expected, value, ConfigError)


def _parse_knot(text):
    epoch, _, rate = text.partition(":")
    return float(epoch), float(rate)


def _parse_json_object(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f'expected a JSON object (e.g. {{"stddev": 0.0003}}). '
            f"Received: norm_kwargs={text!r}"
        )
    return value


def _parse_jit_compile(text):
    if text not in JIT_COMPILE:
        raise argparse.ArgumentTypeError(
            f"expected auto, true or false. Received: jit_compile={text!r}"
        )
    return JIT_COMPILE[text]


def _check_run_dir(name, value):
    if not isinstance(value, str) or not value.strip():
        _fail(name, "None or a non-empty path", value)


def _check_knots(name, knots):
    epochs = [k[0] for k in knots] if isinstance(knots, tuple) else []
    if (
        not isinstance(knots, tuple)
        or not all(
            isinstance(k, tuple) and len(k) == 2
            and all(_is_number(v) for v in k) and k[1] >= 0
            for k in knots
        )
        or (knots and epochs[0] != 0)
        or any(b <= a for a, b in zip(epochs, epochs[1:]))
    ):
        _fail(name, "(epoch, rate) pairs starting at epoch 0 with "
              "increasing epochs and rates >= 0", knots)


def _check_randaugment(name, value):
    if (
        not isinstance(value, tuple)
        or len(value) != 2
        or not all(validation.is_integer(v) for v in value)
        or value[0] < 1
        or not 0 <= value[1] <= 30
    ):
        _fail(name, "None or (N, M) with N >= 1 and M in [0, 30]", value)


def _check_jit_compile(name, value):
    if value != "auto" and value is not True and value is not False:
        _fail(name, "'auto', True or False", value)


def _is_number(value):
    return validation.is_number(value) and math.isfinite(value)


def _option(default, help, kind=str, group="training", choices=None,
            low=None, high=None, low_open=False, high_open=False,
            parse=None, check=None, const=None):
    """A `Config` field, declared once for its flag, its check and its
    `--help` line.

    Args:
        default: The default value; `None` makes `None` a valid value.
        help: What the field means.
        kind: `int`, `float`, `bool`, `str`, `dict` or `tuple`. A `bool`
            is a `--flag`/`--no-flag` pair.
        group: The `--help` section.
        choices: The valid values, or `None`.
        low, high, low_open, high_open: Bounds of a number (see
            `validation.number`; an `int` takes `low` only).
        parse: The flag's `argparse` type. Defaults to `kind`.
        check: `check(name, value)` raising `ConfigError`, for a value no
            `kind`, `choices` or bounds describe.
        const: The value of the flag given without a value, or `None`.
    """
    metadata = {
        "help": help, "kind": kind, "group": group, "choices": choices,
        "bounds": (low, high, low_open, high_open),
        "parse": parse or kind, "check": check, "const": const,
    }
    if isinstance(default, dict):
        return dataclasses.field(default_factory=dict, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines one training run.

    The fields are listed with their flags by `keras-seqnorm train --help`;
    each field's metadata (in `dataclasses.fields(Config)`) holds its
    `help`, its valid `choices` or `bounds`, and how its flag is parsed:
    the flags, the checks of `__post_init__` and the `--help` text all come
    from it. `train(config)` resolves the `None` data fields from the data
    set and a `None` `run_dir` from the config (`trainer.resolve_run_dir`),
    and writes the resolved config to `RUN_DIR/config.json` once the run has
    started.

    Raises:
        ConfigError: for a value outside its field's choices or bounds, or
            an invalid combination of values.
    """

    preset: str | None = _option(
        None,
        "Named recipe from keras_seqnorm.training.presets; its values "
        "replace the defaults and the flags given override them.",
        choices=tuple(PRESETS),
        group="run",
    )
    run_dir: str | None = _option(
        None,
        "Directory of the run: config.json, log.csv, results.json, "
        "best.keras, backup/ (resume state), tensorboard/. Start the same "
        "command again to resume a killed run. Default: "
        "runs/train/MODEL-DATASET-NORM-ID, ID a hash of the config, so "
        "the same command finds the same directory.",
        group="run",
        check=_check_run_dir,
    )
    seed: int = _option(
        0, "Seed of weights, shuffling and augmentation.", int, "run", low=0
    )
    verbose: int = _option(
        1, "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line "
        "per epoch.", int, "run", choices=(0, 1, 2),
    )

    dataset: str = _option(
        "digits",
        "Data set: digits (scikit-learn's bundled 8x8 digits, offline), "
        "or the TensorFlow Datasets mnist, cifar10, cifar100, "
        "imagenet2012.",
        group="data",
        choices=DATASETS,
    )
    data_dir: str | None = _option(
        None,
        "TensorFlow Datasets directory (default: ~/tensorflow_datasets "
        "or $TFDS_DATA_DIR).",
        group="data",
    )
    manual_dir: str | None = _option(
        None,
        "Directory holding ILSVRC2012_img_train.tar and "
        "ILSVRC2012_img_val.tar, to prepare imagenet2012.",
        group="data",
    )
    download: bool = _option(
        True,
        "Let TensorFlow Datasets download and prepare a data set missing "
        "from --data-dir.",
        bool,
        "data",
    )
    image_size: int | None = _option(
        None,
        "Side of the square input images (default: the data set's: "
        "digits 16, mnist 28, cifar 32, imagenet2012 224).",
        int,
        "data",
        low=1,
    )
    validation_size: int | None = _option(
        None,
        "Images held out of the training split, stratified by class, for "
        "validation; 0 validates on the test split (default: digits 180, "
        "mnist and cifar 5000, imagenet2012 0).",
        int,
        "data",
        low=0,
    )

    model: str = _option(
        "simplecnn",
        "Model name of keras_seqnorm.models.get_model.",
        group="model",
        choices=tuple(MODELS),
    )
    norm: str = _option(
        "batch",
        "Norm name of keras_seqnorm.norms.get_norm_layer.",
        group="model",
        choices=tuple(NORM_LAYERS),
    )
    groups_m: int | None = _option(
        None,
        "G_M, ghost batches per device (ghost, sequential): per replica "
        "of a tf.distribute strategy, per device of JAX's DataParallel "
        "(whose layers see the global batch and get G_M times the "
        "devices); default: the preset's value for the norm, else the "
        "layer's default.",
        int,
        "model",
        low=1,
    )
    groups_c: int | None = _option(
        None,
        "G_C, channel groups (sequential; the GroupNorm groups of "
        "--norm group); default: the preset's value, else the layer's.",
        int,
        "model",
        low=1,
    )
    ghost_batch_size: int | None = _option(
        None,
        "Samples per ghost batch (ghost, sequential), instead of "
        "--groups-m: the same ghost batches on any number of devices and "
        "either backend (with several devices it must divide each "
        "device's share of the batch).",
        int,
        "model",
        low=1,
    )
    norm_kwargs: dict = _option(
        {},
        'More norm layer arguments as a JSON object, e.g. '
        '\'{"stddev": 0.0003}\' for noisy_batch.',
        dict,
        "model",
        parse=_parse_json_object,
    )

    epochs: int = _option(20, "Epochs to train.", int, low=1)
    batch_size: int = _option(
        64,
        "Global batch size of one forward pass, split evenly over the "
        "replicas.",
        int,
        low=1,
    )
    learning_rate: float = _option(
        0.1,
        "Peak learning rate (constant and cosine schedules); with "
        "--lr-reference-batch it is the rate for that batch size.",
        float,
        low=0.0,
        low_open=True,
    )
    lr_reference_batch: int = _option(
        0,
        "If positive, scale the learning rate linearly: rate = "
        "learning_rate * batch_size * grad_accum / lr_reference_batch.",
        int,
        low=0,
    )
    schedule: str = _option(
        "cosine",
        "Learning-rate schedule: constant; cosine (linear warmup, then "
        "cosine decay to 0 at the last epoch); piecewise_linear (through "
        "--lr-knots).",
        choices=SCHEDULES,
    )
    warmup_epochs: float = _option(
        0.0, "Epochs of linear warmup (cosine schedule).", float, low=0.0
    )
    warmup_start: float = _option(
        0.0,
        "Learning rate at step 0 of the warmup, as a fraction of the peak.",
        float,
        low=0.0,
        high=1.0,
    )
    lr_knots: tuple = _option(
        (),
        "piecewise_linear knots EPOCH:RATE,... starting at epoch 0; the "
        "rate is linear between knots and constant after the last (the "
        "rates are used as given, not scaled).",
        tuple,
        parse=comma_list(
            "lr_knots", _parse_knot, "EPOCH:RATE pairs separated by commas",
            "0:0.1,15:3.0,30:0.1,40:0.003",
        ),
        check=_check_knots,
    )
    momentum: float = _option(
        0.9, "SGD momentum (0: none).", float, low=0.0, high=1.0,
        high_open=True,
    )
    nesterov: bool = _option(True, "Nesterov momentum.", bool)
    weight_decay: float = _option(
        5e-4,
        "L2 weight decay added to the gradient (coupled, as PyTorch's "
        "SGD weight_decay), so it passes through the momentum.",
        float,
        low=0.0,
    )
    weight_decay_on: str = _option(
        "all",
        "Variables to decay: all, or kernels (rank >= 2: not the norm "
        "layers' gamma/beta nor biases).",
        choices=("all", "kernels"),
    )
    label_smoothing: float = _option(
        0.0, "Label smoothing.", float, low=0.0, high=1.0, high_open=True
    )
    clip_norm: float | None = _option(
        None, "Clip the gradient to this global L2 norm.", float, low=0.0,
        low_open=True,
    )
    grad_accum: int = _option(
        1,
        "Accumulate the gradients of N batches per update (Keras "
        "optimizers' gradient_accumulation_steps); 1: off.",
        int,
        low=1,
    )

    flip: bool = _option(
        False, "Random horizontal flips.", bool, "augmentation"
    )
    pad_crop: int = _option(
        0,
        "Zero-pad by this many pixels and crop back at random (0: off).",
        int,
        "augmentation",
        low=0,
    )
    cutout: int = _option(
        0,
        "Side of the Cutout square, zero after standardization (0: off).",
        int,
        "augmentation",
        low=0,
    )
    randaugment: tuple | None = _option(
        None,
        "RandAugment N,M: N operations per image at the RandAugment "
        "paper's magnitude M in [0, 30] (keras-cv magnitude M/30).",
        tuple,
        "augmentation",
        parse=comma_list("randaugment", int, "two integers N,M", "1,6",
                         length=2),
        check=_check_randaugment,
    )
    mixup: float = _option(
        0.0, "MixUp alpha (0: off).", float, "augmentation", low=0.0
    )

    recalibrate_steps: int = _option(
        0,
        "After training, recompute the norm layers' moving statistics "
        "over this many training batches (keras_seqnorm."
        "recalibrate_statistics; the batches the epochs after the last "
        "would train on) and report the test accuracy before and after "
        "(0: off).",
        int,
        "recalibration",
        low=0,
    )
    recalibrate_statistics: str = _option(
        "ghost",
        "Statistics of --recalibrate-steps: ghost (the average of the "
        "ghost batches' statistics, what training normalized with) or "
        "population (of all the samples seen).",
        group="recalibration",
        choices=RECALIBRATION_STATISTICS,
    )

    strategy: str = _option(
        "auto",
        "Devices: auto (TensorFlow: MultiWorkerMirrored when TF_CONFIG "
        "lists several workers, Mirrored over several GPUs, else one "
        "device; JAX: data_parallel when it sees several devices), "
        "mirrored, multi_worker, one_device (tf.distribute, TensorFlow), "
        "data_parallel (keras.distribution.DataParallel over every device "
        "of every process, JAX).",
        group="system",
        choices=STRATEGIES,
    )
    precision: str = _option(
        "float32",
        "Keras dtype policy.",
        group="system",
        choices=PRECISIONS,
    )
    jit_compile: bool | str = _option(
        "auto",
        "Compile the train step with XLA: auto (Keras' choice: on with "
        "JAX, and with TensorFlow on a GPU without tf.distribute; off on "
        "TensorFlow CPUs and with torch), true or false; --jit-compile "
        "alone is true.",
        group="system",
        parse=_parse_jit_compile,
        check=_check_jit_compile,
        const=True,
    )
    steps_per_execution: int = _option(
        1,
        "Batches per compiled call (larger is faster for small models).",
        int,
        "system",
        low=1,
    )
    deterministic: bool = _option(
        False,
        "TensorFlow: switch on op determinism "
        "(tf.config.experimental.enable_op_determinism), so a run on a GPU "
        "repeats bit for bit; slower, and jit_compile=auto then turns XLA "
        "off. Runs on CPUs repeat without it.",
        bool,
        "system",
    )

    def __post_init__(self):
        _validate(self)

    def to_dict(self):
        """The fields as a JSON-able dict (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, values):
        """Inverse of `to_dict`."""
        values = dict(values)
        if values.get("lr_knots") is not None:
            values["lr_knots"] = tuple(tuple(k) for k in values["lr_knots"])
        if values.get("randaugment") is not None:
            values["randaugment"] = tuple(values["randaugment"])
        return cls(**values)

    def norm_layer_kwargs(self):
        """`norm_kwargs` of `get_model`: the group counts set for this
        norm, as the layer's argument names, plus `norm_kwargs`."""
        kwargs = group_kwargs(self.norm, self.groups_m, self.groups_c,
                              self.ghost_batch_size)
        kwargs.update(self.norm_kwargs)
        return kwargs


def _default(field):
    if field.default is dataclasses.MISSING:
        return field.default_factory()
    return field.default


def _check_field(field, value):
    """Checks one field's value against its declaration (`_option`)."""
    meta = field.metadata
    name = field.name
    if value is None and _default(field) is None:
        return
    if meta["check"] is not None:
        meta["check"](name, value)
        return
    low, high, low_open, high_open = meta["bounds"]
    kind = meta["kind"]
    if kind is int:
        validation.integer(name, value, low=low, error=ConfigError)
    elif kind is float:
        validation.number(name, value, low, high, low_open, high_open,
                          error=ConfigError)
    elif kind is bool:
        validation.boolean(name, value, error=ConfigError)
    elif not isinstance(value, kind):
        _fail(name, f"a {kind.__name__}", value)
    if meta["choices"] is not None:
        validation.choice(name, value, meta["choices"], error=ConfigError)


def _validate(config):
    """Checks every field (`_check_field`), then the combinations."""
    for field in dataclasses.fields(Config):
        _check_field(field, getattr(config, field.name))
    if config.schedule == "cosine" and config.warmup_epochs >= config.epochs:
        _fail("warmup_epochs", f"less than epochs={config.epochs}",
              config.warmup_epochs)
    piecewise = config.schedule == "piecewise_linear"
    if piecewise and not config.lr_knots:
        _fail("lr_knots", "(epoch, rate) pairs starting at epoch 0 with "
              "increasing epochs and rates >= 0", config.lr_knots)
    if config.lr_knots and not piecewise:
        _fail("lr_knots", "empty unless schedule='piecewise_linear'",
              config.lr_knots)
    for count in GROUP_COUNTS:
        takers = norms_taking(count)
        if getattr(config, count) is not None and config.norm not in takers:
            _fail(count, f"None for norm={config.norm!r} (it is used by "
                  f"{', '.join(takers)})", getattr(config, count))
    if config.groups_m is not None and config.ghost_batch_size is not None:
        _fail("ghost_batch_size", f"None when groups_m={config.groups_m} "
              "is given (give one of them)", config.ghost_batch_size)


def _flag(name):
    return "--" + name.replace("_", "-")


class CommandParser(argparse.ArgumentParser):
    """An `ArgumentParser` whose errors are one line on stderr, ending with
    where to look (`PROG: error: MESSAGE; see PROG --help`), and exit
    status 2, without the usage dump."""

    def error(self, message):
        one_line_error(self, message)


def one_line_error(parser, message):
    """Exits with status 2 after printing `message` as one line."""
    text = " ".join(str(message).split())
    parser.exit(2, f"{parser.prog}: error: {text}; see {parser.prog} "
                "--help\n")


def _help_text(field):
    """A field's `--help` line: its help, default, choices and bounds."""
    meta = field.metadata
    text = meta["help"]
    if "default" not in text.lower():  # else the help says it better
        text += f" (default: {_default(field)!r})"
    if meta["choices"] is not None:
        text += f" Choices: {', '.join(map(str, meta['choices']))}."
    low, high, low_open, high_open = meta["bounds"]
    limits = []
    if low is not None:
        limits.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        limits.append(f"{'<' if high_open else '<='} {high:g}")
    if limits:
        text += f" Range: {' and '.join(limits)}."
    return text


def build_parser(prog="keras-seqnorm train", description=None, exclude=()):
    """A `CommandParser` with one flag per `Config` field.

    Every flag defaults to `argparse.SUPPRESS`, so the parsed namespace
    holds only the flags given; `parse_config` merges them over the preset
    and the field defaults. A flag's type, choices and help come from its
    field's declaration.

    Args:
        prog: Program name in the usage line.
        description: Text under the usage line.
        exclude: Field names to leave out (e.g. those a caller sets).

    Returns:
        The parser; callers may add their own arguments.
    """
    parser = CommandParser(
        prog=prog,
        description=description or __doc__.split("\n")[0],
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    groups = {}
    for field in dataclasses.fields(Config):
        if field.name in exclude:
            continue
        meta = field.metadata
        if meta["group"] not in groups:
            groups[meta["group"]] = parser.add_argument_group(meta["group"])
        group = groups[meta["group"]]
        if meta["kind"] is bool:
            group.add_argument(
                _flag(field.name), dest=field.name,
                action=argparse.BooleanOptionalAction,
                help=_help_text(field),
            )
            continue
        extra = {}
        if meta["const"] is not None:
            extra = {"nargs": "?", "const": meta["const"]}
        group.add_argument(
            _flag(field.name),
            dest=field.name,
            type=meta["parse"],
            choices=meta["choices"],
            metavar=field.name.upper(),
            help=_help_text(field),
            **extra,
        )
    return parser


def run_id(values, exclude=()):
    """Eight hex digits naming a run's config: a hash of the fields of
    `values` (a `Config` or its `to_dict()`) but `EXECUTION_FIELDS` and
    `exclude`. Equal configs give equal ids."""
    if isinstance(values, Config):
        values = values.to_dict()
    kept = {
        key: value for key, value in values.items()
        if key not in EXECUTION_FIELDS and key not in exclude
    }
    text = json.dumps(kept, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def default_run_dir(command, *parts):
    """`runs/COMMAND/PART-PART-...`: the default directory of a command's
    run, e.g. `default_run_dir("train", "simplecnn", "digits", "ghost",
    run_id(config))`."""
    return os.path.join("runs", command, "-".join(map(str, parts)))


def _flag_text(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, (tuple, list)):
        return ",".join(
            ":".join(str(v) for v in item)
            if isinstance(item, (tuple, list)) else str(item)
            for item in value
        )
    return str(value)


def config_argv(config, resolved=None):
    """The flags that give `config` back through `parse_config`.

    `--preset` (if any), then one flag per field whose value differs from
    the preset's (or the default), in field order; `EXECUTION_FIELDS` but
    `run_dir` are left out.

    Args:
        config: A `Config`.
        resolved: Optional dict of the values that fields left at `None`
            resolve to (e.g. `{"image_size": 16}`); a field holding that
            value needs no flag. Defaults to `None`.

    Returns:
        A list of strings, e.g. `["--norm", "ghost", "--epochs", "3"]`.
    """
    resolved = resolved or {}
    baseline = {
        field.name: _default(field) for field in dataclasses.fields(Config)
    }
    argv = []
    if config.preset is not None:
        argv += ["--preset", config.preset]
        baseline.update(preset_values(config.preset, config.norm))
    for field in dataclasses.fields(Config):
        name = field.name
        value = getattr(config, name)
        base = baseline[name]
        if name == "preset" or (
            name in EXECUTION_FIELDS and name != "run_dir"
        ):
            continue
        if value == base and type(value) is type(base):
            continue
        if base is None and resolved.get(name) == value:
            continue
        argv += values_argv({name: value})
    return argv


def values_argv(values):
    """The flags that give the field values `values`, in their order.

    Example:

    >>> values_argv({"epochs": 3, "flip": True, "randaugment": (1, 6)})
    ['--epochs', '3', '--flip', '--randaugment', '1,6']
    """
    kinds = {f.name: f.metadata["kind"] for f in dataclasses.fields(Config)}
    argv = []
    for name, value in values.items():
        if kinds[name] is bool:
            argv.append(_flag(name) if value else "--no-" + name.replace(
                "_", "-"))
        elif value is not None:
            argv += [_flag(name), _flag_text(value)]
    return argv


def format_command(prog, argv):
    """`prog` and `argv` as one shell command line."""
    return " ".join([prog, *map(shlex.quote, argv)])


def resolve_data_fields(config):
    """`config` with `image_size` and `validation_size` set to the data
    set's defaults (`DATASET_DEFAULTS`) where they are `None`."""
    defaults = DATASET_DEFAULTS[config.dataset]
    return dataclasses.replace(
        config,
        image_size=(
            defaults.image_size if config.image_size is None
            else config.image_size
        ),
        validation_size=(
            defaults.validation_size if config.validation_size is None
            else config.validation_size
        ),
    )


def make_config(values=None, **overrides):
    """The `Config` of the field values given.

    Values come, in increasing priority, from the field defaults, the
    preset's values for the chosen norm (when `values` or `overrides` name
    a `preset`), `values` and `overrides`.

    Args:
        values: A dict of field values, e.g. the flags given. Defaults to
            `None`.
        **overrides: More field values, e.g. `norm="ghost"`.

    Returns:
        A `Config`.

    Raises:
        ConfigError: for an invalid value or combination of values.

    Example:

    >>> make_config({"preset": "cifar10-wrn28-10"}, norm="ghost").groups_m
    4
    """
    given = {**(values or {}), **overrides}
    merged = {}
    preset = given.get("preset")
    if preset is not None:
        norm = given.get("norm", preset_values(preset).get("norm", "batch"))
        merged.update(preset_values(preset, norm))
        if given.get("ghost_batch_size") is not None:
            # The ghost batches are given by their size instead.
            merged.pop("groups_m", None)
    merged.update(given)
    return Config(**merged)


def norm_config(values, norm, **overrides):
    """The `Config` of `values` for `norm`, one run of a comparison.

    The group counts of `values` apply only to a norm that takes them
    (`norms.group_arguments`); with a preset, the norm gets the preset's
    group counts for it.

    Args:
        values: A dict of field values, the recipe shared by the norms.
        norm: A name from `NORM_LAYERS`.
        **overrides: More field values, e.g. `seed=1`.

    Returns:
        A `Config`.
    """
    unused = {
        count: None for count in GROUP_COUNTS
        if count not in group_arguments(norm)
    }
    return make_config(values, norm=norm, **unused, **overrides)


def recipe_id(values, exclude=("norm",), **extra):
    """Eight hex digits naming a recipe that several runs share: the
    `Config` of `values` (for the norm `sequential`, which takes both group
    counts, with the counts as given), but `exclude`, plus `extra`.

    Args:
        values: A dict of field values, e.g. the flags given.
        exclude: Field names left out of the identity. Defaults to
            `("norm",)`.
        **extra: More JSON-able settings that tell the recipes apart.
    """
    base = make_config(values, norm="sequential", run_dir=None)
    identity = base.to_dict()
    for count in GROUP_COUNTS:
        identity[count] = values.get(count)
    identity.update(extra)
    return run_id(identity, exclude=exclude)


def given_values(namespace):
    """The `Config` field values of a namespace parsed by `build_parser`:
    the flags given (the others are absent)."""
    return {
        field.name: getattr(namespace, field.name)
        for field in dataclasses.fields(Config)
        if hasattr(namespace, field.name)
    }


def parse_config(argv=None, prog="keras-seqnorm train"):
    """Parses `argv` (default: `sys.argv[1:]`) into a `Config`.

    Unknown flags, bad values and invalid combinations exit through
    `argparse`'s error (status 2) with a one-line message.
    """
    parser = build_parser(prog)
    namespace = parser.parse_args(argv)
    try:
        return make_config(given_values(namespace))
    except ConfigError as error:
        parser.error(str(error))
