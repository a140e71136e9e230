"""The `keras-seqnorm` console script.

Each subcommand lives in its own module and exposes `main(argv=None)`; this
file only dispatches, so `keras-seqnorm --help` imports nothing heavy.
"""

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


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0
    command, rest = argv[0], argv[1:]
    if command not in SUBCOMMANDS:
        print(_usage(), file=sys.stderr)
        print(
            f"\nkeras-seqnorm: unknown command {command!r}; "
            f"expected one of {sorted(SUBCOMMANDS)}",
            file=sys.stderr,
        )
        return 2
    module = importlib.import_module(SUBCOMMANDS[command][0])
    module.main(rest)
    return 0


if __name__ == "__main__":
    sys.exit(main())
