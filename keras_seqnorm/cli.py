"""The `keras-seqnorm` command: a thin shell over the Python API.

`keras-seqnorm COMMAND [flags]` (the console script) and
`python -m keras_seqnorm COMMAND [flags]` are the one way to run a
command. Each command parses its flags and calls one function, which does
the work and returns the command's result:

| command | function |
|---|---|
| `train` | `keras_seqnorm.training.train(config)` |
| `compare` | `keras_seqnorm.analysis.compare(norms, seeds, **recipe)` |
| `landscape` | `keras_seqnorm.analysis.landscape(norms, etas, **recipe)` |
| `tune` | `keras_seqnorm.analysis.tune(training_objective(**recipe), ...)` |
| `reproduce` | `keras_seqnorm.analysis.reproduce(run_dir, out, ...)` |
| `bench` | `keras_seqnorm.benchmark.run(...)` |

The parsers need neither Keras nor a backend, so `--help` is quick. A
command imports its backend with the backend's log lines silenced (the
oneDNN and CUDA notices of TensorFlow's start, `failed call to cuInit`);
`--backend-logs`, anywhere on the command line, shows them.

Exit status: 0; 2 for a command-line error, printed as one line ending
with `see ... --help` (bad flags, configurations that cannot run, missing
data sets, unusable run directories and backups: a `ConfigError`); 1 when
a training run failed or stopped on a non-finite loss (`exit_status`), or
for an unexpected exception (with its traceback).
"""

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import typing

from keras_seqnorm import validation
from keras_seqnorm.norms import NORM_LAYERS
from keras_seqnorm.training.config import EXECUTION_FIELDS
from keras_seqnorm.training.config import CommandParser
from keras_seqnorm.training.config import ConfigError
from keras_seqnorm.training.config import build_parser
from keras_seqnorm.training.config import default_run_dir
from keras_seqnorm.training.config import given_values
from keras_seqnorm.training.config import make_config
from keras_seqnorm.training.config import run_id
from keras_seqnorm.utils import comma_list
from keras_seqnorm.utils import format_failures

BACKEND_LOGS = "--backend-logs"
_EPILOG = (
    f"{BACKEND_LOGS} (with any command): show the backend's log lines, "
    "which are silenced by default."
)


@dataclasses.dataclass(frozen=True)
class Command:
    """One subcommand.

    Attributes:
        summary: One line for `keras-seqnorm --help`.
        parser: Builds the command's parser (without importing Keras).
        run: `run(namespace)` calls the command's function with the parsed
            flags, prints its outcome and returns its result.
        tensorflow: Whether the command needs TensorFlow whatever the
            backend (its `tf.data` pipelines), so that TensorFlow is
            imported with its log lines silenced too.
    """

    summary: str
    parser: typing.Callable[[], argparse.ArgumentParser]
    run: typing.Callable[[argparse.Namespace], object]
    tensorflow: bool = True


def _norms_parser(command, description, exclude, default, help):
    """The train flags of `command` (less `exclude`) and a group of the
    command's own, starting with `--norms` (`default`, `help`)."""
    parser = build_parser(prog=f"keras-seqnorm {command}",
                          description=description, exclude=exclude)
    group = parser.add_argument_group(command)
    group.add_argument(
        "--norms", metavar="LIST", help=f"{help} (default: {default}).",
        type=comma_list(
            "norms", str, f"distinct names from {', '.join(NORM_LAYERS)}, "
            "separated by commas", default, distinct=True,
            check=NORM_LAYERS.__contains__,
        ),
    )
    return parser, group


def _given(namespace, names):
    """The flags among `names` (`dest: keyword`) that were given, as the
    function's keyword arguments."""
    return {
        keyword: getattr(namespace, dest)
        for dest, keyword in names.items()
        if hasattr(namespace, dest)
    }


# train


def _train_parser():
    return build_parser(prog="keras-seqnorm train")


def _train(namespace):
    from keras_seqnorm.training import trainer

    prog = trainer.PROG
    config = trainer.resolve_run_dir(make_config(given_values(namespace)))
    print(f"{prog}: run directory {config.run_dir}", flush=True)
    results = trainer.train(config)
    where = os.path.join(results["run_dir"], trainer.RESULTS_FILE)
    if results.get("status", trainer.COMPLETED) == trainer.STOPPED_NAN:
        stopped = results["stopped_at"]
        print(
            f"{prog}: the loss stopped being finite in epoch "
            f"{stopped['epoch']} (batch {stopped['batch']}, counted from 0); "
            f"the run stopped and {where} records status stopped_nan. A "
            "lower --learning-rate, --clip-norm or --precision float32 may "
            "help (in another run directory).",
            file=sys.stderr,
        )
        return results
    recalibrated = results.get("recalibrated")
    after = (
        f"recalibrated_test_accuracy={recalibrated['test_accuracy']:.4f} "
        f"({recalibrated['statistics']}, {recalibrated['steps']} steps) "
        if recalibrated else ""
    )
    devices = (
        f"replicas={results['replicas']} ({results['strategy']}) "
        if results["replicas"] > 1 else ""
    )
    print(
        f"test_accuracy={results['test_accuracy']:.4f} {after}"
        f"val_accuracy={results['final'].get('val_accuracy', float('nan')):.4f}"
        f" epochs={results['epochs_completed']} {devices}({where})"
    )
    return results


# compare

_COMPARE_FLAGS = {"norms": "norms", "seeds": "seeds", "compare_dir": "run_dir"}


def _compare_parser():
    parser, group = _norms_parser(
        "compare",
        "Train one recipe with several norms and seeds; tabulate and plot "
        "the accuracies.",
        ("norm", "seed", "run_dir"),
        "batch,ghost,sequential",
        "Norms to compare, separated by commas",
    )
    group.add_argument(
        "--seeds", type=int, metavar="N",
        help="Runs per norm, with seeds 0..N-1 (default: 3).",
    )
    group.add_argument(
        "--run-dir", dest="compare_dir", metavar="DIR",
        help="Output directory: compare.json, compare.png and each run in "
        "NORM/seedS (default: runs/compare/MODEL-DATASET-ID, ID a hash of "
        "the flags but --norms and --seeds, so more seeds or norms reuse "
        "the runs there). Rerun the command to resume.",
    )
    return parser


def _compare(namespace):
    from keras_seqnorm.analysis import comparison

    recipe = given_values(namespace)
    kwargs = _given(namespace, _COMPARE_FLAGS)
    kwargs.setdefault("run_dir", comparison.default_root(recipe))
    print(f"keras-seqnorm compare: run directory {kwargs['run_dir']}",
          flush=True)
    result = comparison.compare(**kwargs, **recipe)
    print(result["table"])
    if result["failed"]:
        print(f"keras-seqnorm compare: {format_failures(result['failed'])}",
              file=sys.stderr)
    written = os.path.join(kwargs["run_dir"], comparison.RESULTS_FILE)
    if result["figure"]:
        written += f" and {result['figure']}"
    print(f"wrote {written}")
    return result


# landscape

_LANDSCAPE_FLAGS = {
    "norms": "norms", "etas": "etas", "relative": "relative",
    "every_n_steps": "every_n_steps", "landscape_dir": "run_dir",
}


def _landscape_parser():
    parser, group = _norms_parser(
        "landscape",
        "Loss-landscape probes during training (Santurkar et al. 2018), one "
        "model per norm.",
        ("norm", "run_dir", "validation_size"),
        "none,batch,ghost",
        "Norms to train, one model each",
    )
    group.add_argument(
        "--run-dir", dest="landscape_dir", metavar="DIR",
        help="Output directory: landscape.json, test_error.json, "
        "landscape.png and one training run per norm in NORM/ (default: "
        "runs/landscape/MODEL-DATASET-ID, ID a hash of the flags but "
        "--norms). Rerun the command to resume.",
    )
    group.add_argument(
        "--etas", metavar="LIST",
        type=comma_list("etas", float, "positive numbers separated by "
                        "commas", "0.1,0.2,0.4", check=lambda eta: eta > 0),
        help="Step sizes probed along the gradient (default: 0.1,...,0.8, "
        "Appendix B.2's MNIST values; with --relative, 0.5,1,1.5,2, its "
        "CIFAR-10 one-cycle pairs as multiples of the training cycle).",
    )
    group.add_argument(
        "--relative", action=argparse.BooleanOptionalAction,
        help="Probe at multiples of the current learning rate (for "
        "cyclical schedules) instead of at fixed step sizes (default: "
        "false).",
    )
    group.add_argument(
        "--every-n-steps", type=int, metavar="N",
        help="Probe before every N-th training step (default: 1).",
    )
    return parser


def _landscape(namespace):
    from keras_seqnorm.analysis import loss_landscape

    kwargs = _given(namespace, _LANDSCAPE_FLAGS)
    recipe = given_values(namespace)
    if "run_dir" not in kwargs:
        probes = {
            key: value for key, value in kwargs.items() if key in (
                "etas", "relative", "every_n_steps"
            )
        }
        kwargs["run_dir"] = loss_landscape.default_root(recipe, **probes)
    print(f"keras-seqnorm landscape: run directory {kwargs['run_dir']}",
          flush=True)
    result = loss_landscape.landscape(**kwargs, **recipe)
    if result["failed"]:
        print("keras-seqnorm landscape: "
              + format_failures(result["failed"], "left out"),
              file=sys.stderr)
    written = os.path.join(kwargs["run_dir"], loss_landscape.LANDSCAPE_FILE)
    print(f"wrote {written}"
          + (f" and {result['figure']}" if result["figure"] else ""))
    return result


# tune

_TUNE_FLAGS = {
    "tune_groups_m": "groups_m", "tune_groups_c": "groups_c",
    "search": "search", "tolerance": "tolerance", "tune_dir": "run_dir",
    "overwrite": "overwrite",
}


def _tune_parser():
    parser = build_parser(
        prog="keras-seqnorm tune",
        description="Tune SeqNorm's G_M and G_C with the paper's sequential "
        "strategy (Section 3.2.1).",
        exclude=("norm", "groups_m", "groups_c", "seed", "run_dir"),
    )
    group = parser.add_argument_group("tuning")
    groups = comma_list("groups", int, "integers separated by commas",
                        "1,2,4,8")
    group.add_argument("--groups-m", dest="tune_groups_m", type=groups,
                       metavar="LIST", help="G_M values (default: 1,2,4,8).")
    group.add_argument("--groups-c", dest="tune_groups_c", type=groups,
                       metavar="LIST", help="G_C values (default: 1,2,4,8).")
    group.add_argument(
        "--search",
        help="sequential: GhostNorm over G_M, then SeqNorm over G_C at the "
        "selected G_M (|G_M| + |G_C| trials); grid: SeqNorm over every "
        "pair (|G_M| x |G_C|). Default: sequential.",
    )
    group.add_argument(
        "--tolerance", type=float,
        help="A G_M performs well within this much validation accuracy "
        "(a fraction) of the best; the largest such G_M is selected "
        "(default: 0.005).",
    )
    group.add_argument(
        "--seeds", type=int, default=1, metavar="N",
        help="Training runs per trial, seeds 0..N-1; the trial scores "
        "their mean validation accuracy (default: 1).",
    )
    group.add_argument(
        "--run-dir", dest="tune_dir", metavar="DIR",
        help="Output directory: tune.json, tune_settings.json and the "
        "KerasTuner project keras_tuner/ with each trial's training runs "
        "(default: runs/tune/MODEL-DATASET-ID, ID a hash of the flags). "
        "Rerun the command to resume.",
    )
    group.add_argument(
        "--overwrite", action=argparse.BooleanOptionalAction,
        help="Discard an earlier search in --run-dir instead of resuming.",
    )
    return parser


def _tune(namespace):
    from keras_seqnorm.analysis import tuner

    seeds = validation.positive_int("seeds", namespace.seeds,
                                    error=ConfigError)
    recipe = given_values(namespace)
    objective = tuner.training_objective(**recipe)
    kwargs = _given(namespace, _TUNE_FLAGS)
    search = {**tuner.DEFAULT_SEARCH, **{
        key: kwargs.pop(key) for key in tuner.DEFAULT_SEARCH if key in kwargs
    }}
    # A search is its recipe, its search settings and its seeds, but not
    # where or how it runs.
    settings = {
        "recipe": {
            key: value for key, value in recipe.items()
            if key not in EXECUTION_FIELDS
        },
    }
    if "run_dir" not in kwargs:
        base = make_config(recipe, norm=tuner.GHOST)
        identity = run_id(json.loads(json.dumps(
            {**settings, **search, "seeds": seeds}
        )))
        kwargs["run_dir"] = default_run_dir(
            "tune", base.model, base.dataset, identity
        )
    print(f"keras-seqnorm tune: run directory {kwargs['run_dir']}",
          flush=True)
    return tuner.tune(
        objective, seeds=range(seeds), settings=settings,
        verbose=recipe.get("verbose", 1), **search, **kwargs,
    )


# reproduce

_REPRODUCE_FLAGS = {
    "run_dir": "run_dir", "out": "out", "seeds": "seeds", "epochs": "epochs",
    "landscape_epochs": "landscape_epochs",
}


def _reproduce_parser():
    parser = CommandParser(
        prog="keras-seqnorm reproduce",
        description="Write the reproduction report (docs/results.md).",
        argument_default=argparse.SUPPRESS,
        allow_abbrev=False,
    )
    parser.add_argument(
        "--run-dir",
        help="Training runs; rerunning reuses the finished ones "
        "(default: runs/reproduce).",
    )
    parser.add_argument(
        "--out",
        help="The report; its figures go next to it "
        "(default: docs/results.md).",
    )
    parser.add_argument(
        "--seeds", type=int,
        help="Seeds per norm of the comparison (default: 5).",
    )
    parser.add_argument(
        "--epochs", type=int,
        help="Epochs of the comparison runs (default: 20).",
    )
    parser.add_argument(
        "--landscape-epochs", type=int,
        help="Epochs of the landscape runs (default: 10).",
    )
    return parser


def _reproduce(namespace):
    from keras_seqnorm.analysis import report

    kwargs = _given(namespace, _REPRODUCE_FLAGS)
    result = report.reproduce(**kwargs)
    out = kwargs.get("out", os.path.join("docs", "results.md"))
    print(f"wrote {out} ({result['seconds'] / 60:.1f} minutes)")
    if result["failed"]:
        print(f"keras-seqnorm reproduce: {len(result['failed'])} failed "
              f"run(s), listed in {out}", file=sys.stderr)
    return result


# bench


def _shape(text):
    shape = tuple(int(d) for d in text.split("x"))
    if len(shape) < 2 or min(shape) < 1:
        raise ValueError(text)
    return shape


def _bench_parser():
    parser = CommandParser(
        prog="keras-seqnorm bench",
        description="Time GhostNorm and SeqNorm against BatchNormalization "
        "and print the tables; nothing is written without --out.",
    )
    add = parser.add_argument
    add("--shapes", type=comma_list(
        "shapes", _shape, "NxHxWxC shapes separated by commas",
        "128x32x32x160,64x8x8x32",
    ), help="activation shapes, channels last (default: WRN-28-10's, "
        "ResNet-50's and the small ones of docs/performance.md)")
    add("--dtypes", default=("float32", "bfloat16"), type=comma_list(
        "dtypes", str,
        f"dtypes from {', '.join(validation.BENCHMARK_DTYPES)} separated "
        "by commas", "float32,bfloat16", distinct=True,
        check=validation.BENCHMARK_DTYPES.__contains__,
    ), help="input dtypes; half precision runs under the matching mixed "
        "policy (default: float32,bfloat16)")
    add("--iters", type=int, default=None,
        help="calls per timed sample (default: enough for a sample to "
        "last 20 ms, at least 5)")
    add("--samples", type=int, default=7,
        help="interleaved samples; the median is reported")
    add("--model", default="wrn16_4",
        help="model for the train-step timing ('' skips it); use wrn28_10 "
        "with batch 128 on a GPU")
    add("--model-batch-size", type=int, default=32)
    add("--model-precision", default="float32")
    add("--no-group", action="store_true",
        help="skip keras.layers.GroupNormalization")
    add("--no-graph-mode", action="store_true",
        help="skip the TensorFlow graph-mode (no XLA) timings")
    add("--torch-reference", action="store_true",
        help="also time the paper's PyTorch SeqNorm (F.group_norm, then "
        "Figure A1), eager and under torch.compile, in the same "
        "interleaved loop (needs torch)")
    add("--kernels-only", action="store_true",
        help="time nothing: count the kernels of each layer's compiled "
        "fwd+bwd (BatchNorm; GhostNorm and SeqNorm with G_M = 8 and 7), "
        "channels last and first")
    add("--out", help="write the results to this JSON path (and a .md "
        "table beside it); by default nothing is written")
    return parser


def _bench(namespace):
    from keras_seqnorm import benchmark

    for name in ("iters", "samples", "model_batch_size"):
        validation.positive_int(name, getattr(namespace, name),
                                allow_none=name == "iters",
                                error=ConfigError)
    result = benchmark.run(
        shapes=namespace.shapes or benchmark.DEFAULT_SHAPES,
        dtypes=namespace.dtypes,
        iters=namespace.iters,
        samples=namespace.samples,
        model=namespace.model,
        model_batch_size=namespace.model_batch_size,
        model_precision=namespace.model_precision,
        include_group=not namespace.no_group,
        torch_reference=namespace.torch_reference,
        graph_mode=False if namespace.no_graph_mode else None,
        kernels_only=namespace.kernels_only,
        out=namespace.out,
    )
    print(result.markdown())
    return result


COMMANDS = {
    "train": Command("train one model", _train_parser, _train),
    "compare": Command(
        "train one recipe with several norms and seeds, tabulate",
        _compare_parser, _compare,
    ),
    "landscape": Command(
        "loss-landscape probes (Santurkar et al. 2018) per norm",
        _landscape_parser, _landscape,
    ),
    "tune": Command(
        "tune G_M then G_C (the paper's sequential strategy)",
        _tune_parser, _tune,
    ),
    "bench": Command(
        "time the layers against BatchNormalization", _bench_parser,
        _bench, tensorflow=False,
    ),
    "reproduce": Command(
        "write the reproduction report docs/results.md",
        _reproduce_parser, _reproduce,
    ),
}


def _usage():
    lines = [
        f"usage: keras-seqnorm [{BACKEND_LOGS}] COMMAND [flags]",
        "       python -m keras_seqnorm COMMAND [flags]", "", "commands:",
    ]
    for name, command in COMMANDS.items():
        lines.append(f"  {name:<10} {command.summary}")
    lines += ["", "`keras-seqnorm COMMAND --help` lists a command's flags.",
              _EPILOG]
    return "\n".join(lines)


def exit_status(result):
    """The exit status of a command that returned `result`: 1 when it
    holds a run that did not complete (a `status` other than `completed`,
    or a non-empty `failed` list), else 0."""
    if not isinstance(result, dict):
        return 0
    if result.get("failed") or result.get("status", "completed") != (
        "completed"
    ):
        return 1
    return 0


@contextlib.contextmanager
def _stderr_silenced():
    """Sends the process's file descriptor 2 (C++ logging included) to
    /dev/null inside the block."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # No stderr to silence.
        yield
        return
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 2)
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def quiet_backend(tensorflow=True):
    """Imports Keras (and its backend) and, if `tensorflow`, TensorFlow,
    without their log lines, and keeps TensorFlow's later C++ logging to
    fatal errors (`TF_CPP_MIN_LOG_LEVEL=3` unless already set).

    TensorFlow 2.19 and later print their start-up lines through absl
    before reading `TF_CPP_MIN_LOG_LEVEL`, so the imports run with the
    process's stderr sent to /dev/null; an import that fails raises as
    usual once stderr is back.
    """
    import importlib.util
    import logging

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with _stderr_silenced():
        import keras  # noqa: F401

        if tensorflow and importlib.util.find_spec("tensorflow"):
            import tensorflow  # noqa: F401
    for name in ("tensorflow", "absl", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(logging.ERROR)


def run_command(argv):
    """Runs one command line (without the program name) and returns the
    command's result.

    Bad flags and `ConfigError`s exit with status 2 and a one-line error;
    `--help` prints the command's help and exits with status 0.

    Args:
        argv: A list of strings, e.g. `["train", "--epochs", "3"]`.

    Returns:
        What the command's function returned (see `COMMANDS`).
    """
    argv = list(argv)
    backend_logs = BACKEND_LOGS in argv
    argv = [arg for arg in argv if arg != BACKEND_LOGS]
    command = COMMANDS[argv[0]]
    parser = command.parser()
    parser.epilog = _EPILOG
    namespace = parser.parse_args(argv[1:])
    if not backend_logs:
        quiet_backend(command.tensorflow)
    try:
        return command.run(namespace)
    except ConfigError as error:
        parser.error(str(error))


def main(argv=None):
    """The console script: `keras-seqnorm COMMAND [flags]`.

    Args:
        argv: The arguments after the program name. Defaults to
            `sys.argv[1:]`.

    Returns:
        The exit status (see the module docstring).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = [arg for arg in argv if arg != BACKEND_LOGS]
    if not commands or commands[0] in ("-h", "--help"):
        print(_usage())
        return 0
    if commands[0] not in COMMANDS:
        print(
            f"keras-seqnorm: error: unknown command {commands[0]!r}; "
            f"expected one of {', '.join(COMMANDS)}; see keras-seqnorm "
            "--help",
            file=sys.stderr,
        )
        return 2
    return exit_status(run_command(argv))
