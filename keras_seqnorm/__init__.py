"""keras-seqnorm: Ghost Normalization and Sequential Normalization for Keras 3.

Public API::

    from keras_seqnorm import layers
    layers.SequentialNormalization(groups_c=4, groups_m=8)

`import keras_seqnorm` imports the layers, which registers them with Keras
for `keras.saving.load_model`; every other name is imported on first use.
The `keras-seqnorm` command (the console script, or `python -m
keras_seqnorm`) imports what each command needs, so that `--help` imports
neither Keras nor a backend.
"""

import os
import sys

from keras_seqnorm.utils import lazy_attributes
from keras_seqnorm.version import __version__

__all__ = [
    "GhostNormalization",
    "NORM_LAYERS",
    "SequentialNormalization",
    "__version__",
    "convert_normalization",
    "get_norm_layer",
    "layers",
    "models",
    "recalibrate_statistics",
]

__getattr__, __dir__ = lazy_attributes(
    __name__,
    {
        "GhostNormalization": "keras_seqnorm.layers:GhostNormalization",
        "NORM_LAYERS": "keras_seqnorm.norms:NORM_LAYERS",
        "SequentialNormalization": (
            "keras_seqnorm.layers:SequentialNormalization"
        ),
        "convert_normalization": (
            "keras_seqnorm.convert:convert_normalization"
        ),
        "get_norm_layer": "keras_seqnorm.norms:get_norm_layer",
        "layers": "keras_seqnorm.layers",
        "models": "keras_seqnorm.models",
        "recalibrate_statistics": (
            "keras_seqnorm.recalibrate:recalibrate_statistics"
        ),
    },
)


def _starting_the_command():
    """Whether this process was started as the `keras-seqnorm` command: the
    console script, or `python -m keras_seqnorm` (whose package is imported
    while `sys.argv[0]` is `"-m"`)."""
    argv = getattr(sys, "argv", None) or [""]
    script = os.path.splitext(os.path.basename(argv[0]))[0]
    if script == "keras-seqnorm":
        return True
    if argv[0] != "-m":
        return False
    command = getattr(sys, "orig_argv", [])
    return f"-m{__name__}" in command or ("-m", __name__) in zip(
        command, command[1:]
    )

if not _starting_the_command():
    import keras_seqnorm.layers  # noqa: F401  (registers the layers)
