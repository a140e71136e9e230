"""The training configuration: one frozen dataclass, and its flags.

Every field of `Config` is a flag of `keras-seqnorm train` (`batch_size` is
`--batch-size`, booleans also have a `--no-` form), documented by the
field's `help`. Values come, in increasing priority, from the field
defaults, the `--preset` (see `presets.py`) and the flags given:

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

from keras_seqnorm.training.presets import PRESETS
from keras_seqnorm.training.presets import preset_values

DATASETS = ("digits", "mnist", "cifar10", "cifar100", "imagenet2012")
SCHEDULES = ("constant", "cosine", "piecewise_linear")
STRATEGIES = ("auto", "mirrored", "multi_worker", "one_device")
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")
JIT_COMPILE = {"auto": "auto", "true": True, "false": False}
# Fields that change how a run executes, not what it trains: a run resumed
# with other values of these is the same run, and they are left out of the
# run's identity (`run_id`).
EXECUTION_FIELDS = (
    "run_dir", "verbose", "data_dir", "manual_dir", "download",
    "jit_compile", "steps_per_execution", "deterministic",
)

# Norms that take the group counts, and the layer argument each becomes.
GROUP_ARGUMENTS = {
    "ghost": {"groups_m": "groups_m"},
    "sequential": {"groups_m": "groups_m", "groups_c": "groups_c"},
    "group": {"groups_c": "groups"},
}


def _parse_randaugment(text):
    parts = text.split(",")
    try:
        values = tuple(int(part) for part in parts)
    except ValueError:
        values = ()
    if len(values) != 2:
        raise argparse.ArgumentTypeError(
            f"expected two integers N,M (e.g. 1,6). Received: {text!r}"
        )
    return values


def _parse_knots(text):
    knots = []
    for part in text.split(","):
        epoch, _, rate = part.partition(":")
        try:
            knots.append((float(epoch), float(rate)))
        except ValueError:
            raise argparse.ArgumentTypeError(
                "expected EPOCH:RATE pairs separated by commas (e.g. "
                f"0:0.1,15:3.0,30:0.1,40:0.003). Received: {text!r}"
            ) from None
    return tuple(knots)


def _parse_json_object(text):
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        value = None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(
            f'expected a JSON object (e.g. {{"stddev": 0.0003}}). '
            f"Received: {text!r}"
        )
    return value


def _parse_jit_compile(text):
    if text not in JIT_COMPILE:
        raise argparse.ArgumentTypeError(
            f"expected auto, true or false. Received: {text!r}"
        )
    return JIT_COMPILE[text]


def _option(default, help, parse=str, choices=None, group="training",
            const=None):
    metadata = {"help": help, "parse": parse, "choices": choices,
                "group": group, "const": const}
    if isinstance(default, dict):
        return dataclasses.field(default_factory=dict, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines one training run.

    The fields are listed with their flags by `keras-seqnorm train --help`;
    each field's `help` (in `dataclasses.fields(Config)`) documents it.
    `run(config)` resolves the `None` data fields from the data set and
    a `None` `run_dir` from the config (`train.resolve_run_dir`), and
    writes the resolved config to `RUN_DIR/config.json` once the run has
    started.
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
    )
    seed: int = _option(
        0, "Seed of weights, shuffling and augmentation.", int, group="run"
    )
    verbose: int = _option(
        1, "Keras fit verbosity: 0 silent, 1 progress bar, 2 one line "
        "per epoch.", int, (0, 1, 2), group="run",
    )

    dataset: str = _option(
        "digits",
        "Data set: digits (scikit-learn's bundled 8x8 digits, offline), "
        "or the TensorFlow Datasets mnist, cifar10, cifar100, "
        "imagenet2012.",
        choices=DATASETS,
        group="data",
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
        None,
        group="data",
    )
    image_size: int | None = _option(
        None,
        "Side of the square input images (default: the data set's: "
        "digits 16, mnist 28, cifar 32, imagenet2012 224).",
        int,
        group="data",
    )
    validation_size: int | None = _option(
        None,
        "Images held out of the training split, stratified by class, for "
        "validation; 0 validates on the test split (default: digits 180, "
        "mnist and cifar 5000, imagenet2012 0).",
        int,
        group="data",
    )

    model: str = _option(
        "simplecnn",
        "Model name of keras_seqnorm.models.get_model.",
        group="model",
    )
    norm: str = _option(
        "batch",
        "Norm name of keras_seqnorm.norms.get_norm_layer.",
        group="model",
    )
    groups_m: int | None = _option(
        None,
        "G_M, ghost batches per replica (ghost, sequential); default: the "
        "preset's value for the norm, else the layer's default.",
        int,
        group="model",
    )
    groups_c: int | None = _option(
        None,
        "G_C, channel groups (sequential; the GroupNorm groups of "
        "--norm group); default: the preset's value, else the layer's.",
        int,
        group="model",
    )
    norm_kwargs: dict = _option(
        {},
        'More norm layer arguments as a JSON object, e.g. '
        '\'{"stddev": 0.0003}\' for noisy_batch.',
        _parse_json_object,
        group="model",
    )

    epochs: int = _option(20, "Epochs to train.", int)
    batch_size: int = _option(
        64,
        "Global batch size of one forward pass, split evenly over the "
        "replicas.",
        int,
    )
    learning_rate: float = _option(
        0.1,
        "Peak learning rate (constant and cosine schedules); with "
        "--lr-reference-batch it is the rate for that batch size.",
        float,
    )
    lr_reference_batch: int = _option(
        0,
        "If positive, scale the learning rate linearly: rate = "
        "learning_rate * batch_size * grad_accum / lr_reference_batch.",
        int,
    )
    schedule: str = _option(
        "cosine",
        "Learning-rate schedule: constant; cosine (linear warmup, then "
        "cosine decay to 0 at the last epoch); piecewise_linear (through "
        "--lr-knots).",
        choices=SCHEDULES,
    )
    warmup_epochs: float = _option(
        0.0, "Epochs of linear warmup (cosine schedule).", float
    )
    warmup_start: float = _option(
        0.0,
        "Learning rate at step 0 of the warmup, as a fraction of the peak.",
        float,
    )
    lr_knots: tuple = _option(
        (),
        "piecewise_linear knots EPOCH:RATE,... starting at epoch 0; the "
        "rate is linear between knots and constant after the last (the "
        "rates are used as given, not scaled).",
        _parse_knots,
    )
    momentum: float = _option(0.9, "SGD momentum (0: none).", float)
    nesterov: bool = _option(True, "Nesterov momentum.", None)
    weight_decay: float = _option(
        5e-4,
        "L2 weight decay added to the gradient (coupled, as PyTorch's "
        "SGD weight_decay), so it passes through the momentum.",
        float,
    )
    weight_decay_on: str = _option(
        "all",
        "Variables to decay: all, or kernels (rank >= 2: not the norm "
        "layers' gamma/beta nor biases).",
        choices=("all", "kernels"),
    )
    label_smoothing: float = _option(0.0, "Label smoothing.", float)
    clip_norm: float | None = _option(
        None, "Clip the gradient to this global L2 norm.", float
    )
    grad_accum: int = _option(
        1,
        "Accumulate the gradients of N batches per update (Keras "
        "optimizers' gradient_accumulation_steps); 1: off.",
        int,
    )

    flip: bool = _option(
        False, "Random horizontal flips.", None, group="augmentation"
    )
    pad_crop: int = _option(
        0,
        "Zero-pad by this many pixels and crop back at random (0: off).",
        int,
        group="augmentation",
    )
    cutout: int = _option(
        0,
        "Side of the Cutout square, zero after standardization (0: off).",
        int,
        group="augmentation",
    )
    randaugment: tuple | None = _option(
        None,
        "RandAugment N,M: N operations per image at the RandAugment "
        "paper's magnitude M in [0, 30] (keras-cv magnitude M/30).",
        _parse_randaugment,
        group="augmentation",
    )
    mixup: float = _option(
        0.0, "MixUp alpha (0: off).", float, group="augmentation"
    )

    strategy: str = _option(
        "auto",
        "tf.distribute strategy: auto (MultiWorkerMirrored when TF_CONFIG "
        "lists several workers, Mirrored over several GPUs, else one "
        "device), mirrored, multi_worker, one_device.",
        choices=STRATEGIES,
        group="system",
    )
    precision: str = _option(
        "float32",
        "Keras dtype policy.",
        choices=PRECISIONS,
        group="system",
    )
    jit_compile: bool | str = _option(
        "auto",
        "Compile the train step with XLA: auto (Keras' choice: on with "
        "JAX, and with TensorFlow on a GPU without tf.distribute; off on "
        "TensorFlow CPUs and with torch), true or false; --jit-compile "
        "alone is true.",
        _parse_jit_compile,
        choices=None,
        group="system",
        const=True,
    )
    steps_per_execution: int = _option(
        1,
        "Batches per compiled call (larger is faster for small models).",
        int,
        group="system",
    )
    deterministic: bool = _option(
        False,
        "TensorFlow: switch on op determinism "
        "(tf.config.experimental.enable_op_determinism), so a run on a GPU "
        "repeats bit for bit; slower, and jit_compile=auto then turns XLA "
        "off. Runs on CPUs repeat without it.",
        None,
        group="system",
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
        arguments = GROUP_ARGUMENTS.get(self.norm, {})
        kwargs = {
            arguments[name]: getattr(self, name)
            for name in arguments
            if getattr(self, name) is not None
        }
        kwargs.update(self.norm_kwargs)
        return kwargs


class ConfigError(ValueError):
    """An invalid training configuration: bad flag values or combinations,
    a batch that does not fit the replicas, a run directory holding
    another run, a data set that is not available. `main` reports it as a
    one-line command-line error."""


def _fail(name, expected, value):
    raise ConfigError(
        f"Argument `{name}` must be {expected}. Received: {name}={value!r}"
    )


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value):
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _validate(config):
    from keras_seqnorm.models import MODELS
    from keras_seqnorm.norms import NORM_LAYERS

    for name, minimum in (
        ("seed", 0), ("epochs", 1), ("batch_size", 1),
        ("lr_reference_batch", 0), ("grad_accum", 1), ("pad_crop", 0),
        ("cutout", 0), ("steps_per_execution", 1),
    ):
        value = getattr(config, name)
        if not _is_int(value) or value < minimum:
            _fail(name, f"an integer >= {minimum}", value)
    for name, choices in (
        ("preset", (None, *PRESETS)), ("dataset", DATASETS),
        ("model", tuple(MODELS)), ("norm", tuple(NORM_LAYERS)),
        ("schedule", SCHEDULES), ("weight_decay_on", ("all", "kernels")),
        ("strategy", STRATEGIES), ("precision", PRECISIONS),
        ("verbose", (0, 1, 2)),
    ):
        if getattr(config, name) not in choices:
            _fail(name, f"one of {', '.join(map(str, choices))}",
                  getattr(config, name))
    for name in ("image_size", "validation_size", "groups_m", "groups_c"):
        value = getattr(config, name)
        minimum = 0 if name == "validation_size" else 1
        if value is not None and (not _is_int(value) or value < minimum):
            _fail(name, f"None or an integer >= {minimum}", value)
    if not _is_number(config.learning_rate) or config.learning_rate <= 0:
        _fail("learning_rate", "a positive number", config.learning_rate)
    for name in ("warmup_epochs", "weight_decay", "mixup", "momentum"):
        value = getattr(config, name)
        if not _is_number(value) or value < 0:
            _fail(name, "a number >= 0", value)
    if config.momentum >= 1:
        _fail("momentum", "in [0, 1)", config.momentum)
    if not _is_number(config.warmup_start) or not (
        0 <= config.warmup_start <= 1
    ):
        _fail("warmup_start", "in [0, 1]", config.warmup_start)
    if not _is_number(config.label_smoothing) or not (
        0 <= config.label_smoothing < 1
    ):
        _fail("label_smoothing", "in [0, 1)", config.label_smoothing)
    if config.clip_norm is not None and (
        not _is_number(config.clip_norm) or config.clip_norm <= 0
    ):
        _fail("clip_norm", "None or a positive number", config.clip_norm)
    if config.schedule == "cosine" and config.warmup_epochs >= config.epochs:
        _fail("warmup_epochs", f"less than epochs={config.epochs}",
              config.warmup_epochs)
    _validate_knots(config)
    if config.randaugment is not None:
        if (
            not isinstance(config.randaugment, tuple)
            or len(config.randaugment) != 2
            or not all(_is_int(v) for v in config.randaugment)
            or config.randaugment[0] < 1
            or not 0 <= config.randaugment[1] <= 30
        ):
            _fail("randaugment", "None or (N, M) with N >= 1 and M in "
                  "[0, 30]", config.randaugment)
    if not isinstance(config.norm_kwargs, dict):
        _fail("norm_kwargs", "a dict", config.norm_kwargs)
    if not any(config.jit_compile is v for v in JIT_COMPILE.values()) and (
        config.jit_compile != "auto"
    ):
        _fail("jit_compile", "'auto', True or False", config.jit_compile)
    if config.run_dir is not None and (
        not isinstance(config.run_dir, str) or not config.run_dir.strip()
    ):
        _fail("run_dir", "None or a non-empty path", config.run_dir)
    for name in ("groups_m", "groups_c"):
        arguments = GROUP_ARGUMENTS.get(config.norm, {})
        if getattr(config, name) is not None and name not in arguments:
            takers = [n for n, a in GROUP_ARGUMENTS.items() if name in a]
            _fail(name, f"None for norm={config.norm!r} (it is used by "
                  f"{', '.join(takers)})", getattr(config, name))


def _validate_knots(config):
    knots = config.lr_knots
    if config.schedule != "piecewise_linear":
        if knots:
            _fail("lr_knots", "empty unless schedule='piecewise_linear'",
                  knots)
        return
    epochs = [k[0] for k in knots] if isinstance(knots, tuple) else []
    if (
        not isinstance(knots, tuple)
        or not knots
        or not all(
            isinstance(k, tuple) and len(k) == 2
            and all(_is_number(v) for v in k) and k[1] >= 0
            for k in knots
        )
        or epochs[0] != 0
        or any(b <= a for a, b in zip(epochs, epochs[1:]))
    ):
        _fail("lr_knots", "(epoch, rate) pairs starting at epoch 0 with "
              "increasing epochs and rates >= 0", knots)


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


def build_parser(prog="keras-seqnorm train", description=None, exclude=()):
    """A `CommandParser` with one flag per `Config` field.

    Every flag defaults to `argparse.SUPPRESS`, so the parsed namespace
    holds only the flags given; `parse_config` merges them over the preset
    and the field defaults.

    Args:
        prog: Program name in the usage line.
        description: Text under the usage line.
        exclude: Field names to leave out (e.g. those a caller sets).

    Returns:
        The parser; callers may add their own arguments.
    """
    from keras_seqnorm.models import MODELS
    from keras_seqnorm.norms import NORM_LAYERS

    parser = CommandParser(
        prog=prog,
        description=description or __doc__.split("\n")[0],
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    groups = {}
    choices = {"model": tuple(MODELS), "norm": tuple(NORM_LAYERS)}
    for field in dataclasses.fields(Config):
        if field.name in exclude:
            continue
        meta = field.metadata
        group = groups.get(meta["group"])
        if group is None:
            group = groups[meta["group"]] = parser.add_argument_group(
                meta["group"]
            )
        default = (
            field.default_factory()
            if field.default is dataclasses.MISSING
            else field.default
        )
        text = f"{meta['help']} (default: {default!r})"
        names = choices.get(field.name, meta["choices"])
        if names:
            text += f" Choices: {', '.join(map(str, names))}."
        if meta["parse"] is None:
            group.add_argument(
                _flag(field.name), dest=field.name,
                action=argparse.BooleanOptionalAction, help=text,
            )
            continue
        extra = {}
        if meta["const"] is not None:
            extra = {"nargs": "?", "const": meta["const"]}
        group.add_argument(
            _flag(field.name),
            dest=field.name,
            type=meta["parse"],
            choices=names,
            metavar=field.name.upper(),
            help=text,
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
        field.name: (
            field.default_factory()
            if field.default is dataclasses.MISSING else field.default
        )
        for field in dataclasses.fields(Config)
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
        if field.metadata["parse"] is None:
            argv.append(_flag(name) if value else "--no-" + name.replace(
                "_", "-"))
        elif value is not None:
            argv += [_flag(name), _flag_text(value)]
    return argv


def format_command(prog, argv):
    """`prog` and `argv` as one shell command line."""
    return " ".join([prog, *map(shlex.quote, argv)])


def config_from_namespace(namespace, **overrides):
    """The `Config` of parsed flags: field defaults < the preset's values
    (for the chosen norm) < the flags < `overrides`.

    Raises:
        ValueError: for an invalid combination of values.
    """
    given = {
        field.name: getattr(namespace, field.name)
        for field in dataclasses.fields(Config)
        if hasattr(namespace, field.name)
    }
    given.update(overrides)
    values = {}
    preset = given.get("preset")
    if preset is not None:
        norm = given.get("norm", preset_values(preset).get("norm", "batch"))
        values.update(preset_values(preset, norm))
    values.update(given)
    return Config(**values)


def parse_config(argv=None, prog="keras-seqnorm train"):
    """Parses `argv` (default: `sys.argv[1:]`) into a `Config`.

    Unknown flags, bad values and invalid combinations exit through
    `argparse`'s error (status 2) with a one-line message.
    """
    parser = build_parser(prog)
    namespace = parser.parse_args(argv)
    try:
        return config_from_namespace(namespace)
    except ConfigError as error:
        parser.error(str(error))
