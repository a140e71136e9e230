"""The `keras-seqnorm` console script.

Each subcommand lives in its own module and exposes `main(argv=None)`,
which returns the command's result (a dict); this file only dispatches, so
`keras-seqnorm --help` imports nothing heavy.

Exit status: 0; 2 for a command-line error, printed as one line ending
with `see ... --help` (bad flags, configurations that cannot run, missing
data sets, unusable run directories and backups); 1 when a training run
failed or stopped on a non-finite loss (`exit_status`), or for an
unexpected exception (with its traceback).
"""

import argparse
import contextlib
import importlib
import sys

SUBCOMMANDS = {
    "train": ("keras_seqnorm.training.train", "train one model"),
    "compare": (
        "keras_seqnorm.analysis.compare",
        "train one recipe with several norms and seeds, tabulate",
    ),
    "landscape": (
        "keras_seqnorm.analysis.landscape",
        "loss-landscape probes (Santurkar et al. 2018) per norm",
    ),
    "tune": (
        "keras_seqnorm.analysis.tuner",
        "tune G_M then G_C (the paper's sequential strategy)",
    ),
    "bench": (
        "keras_seqnorm.benchmark",
        "time the layers against BatchNormalization",
    ),
    "reproduce": (
        "keras_seqnorm.analysis.report",
        "write the reproduction report docs/results.md",
    ),
}


def _usage():
    lines = ["usage: keras-seqnorm COMMAND [flags]", "", "commands:"]
    for name, (_, text) in SUBCOMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    lines.append("")
    lines.append("`keras-seqnorm COMMAND --help` lists a command's flags.")
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
def one_line_errors():
    """Makes every `argparse` error inside the block one line, ending with
    `see PROG --help`, with exit status 2 (for the commands whose parser is
    a plain `argparse.ArgumentParser`)."""
    from keras_seqnorm.training.config import one_line_error

    error = argparse.ArgumentParser.error
    argparse.ArgumentParser.error = one_line_error
    try:
        yield
    finally:
        argparse.ArgumentParser.error = error


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(
            f"keras-seqnorm: error: unknown command {command!r}; expected "
            f"one of {', '.join(SUBCOMMANDS)}; see keras-seqnorm --help",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(SUBCOMMANDS[command][0])
    with one_line_errors():
        return exit_status(module.main(rest))


if __name__ == "__main__":
    sys.exit(main())
