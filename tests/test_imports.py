"""Import hygiene: the package runs on JAX (or torch) without TensorFlow or
matplotlib installed, and its modules import them only where they use
them."""

import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs with TensorFlow and matplotlib impossible to import, as in an
# environment without them: importing the modules given must still work,
# and leave neither in `sys.modules`.
WITHOUT_TENSORFLOW = textwrap.dedent(
    """
    import importlib
    import importlib.abc
    import sys

    BLOCKED = {"tensorflow", "matplotlib"}


    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"blocked: {name}")
            return None


    sys.meta_path.insert(0, Block())
    for module in sys.argv[1:]:
        if not module.startswith("--"):
            importlib.import_module(module)
    if "--use" in sys.argv:
        import numpy as np
        import keras_seqnorm
        from keras_seqnorm import models

        x = np.random.default_rng(0).normal(size=(8, 8, 8, 1))
        x = x.astype("float32")
        model = models.get_model("simplecnn", num_classes=3,
                                 input_shape=(8, 8, 1), norm="ghost",
                                 norm_kwargs={"groups_m": 2})
        model(x, training=True)
        converted = keras_seqnorm.convert_normalization(
            model, "sequential", groups_c=2, groups_m=2)
        keras_seqnorm.recalibrate_statistics(converted, x, batch_size=8)
    print(sorted({name.split(".")[0] for name in sys.modules} & BLOCKED))
    """
)

CORE = ["keras_seqnorm", "keras_seqnorm.layers", "keras_seqnorm.models",
        "keras_seqnorm.norms", "keras_seqnorm.convert",
        "keras_seqnorm.recalibrate", "keras_seqnorm.ops"]
# TensorFlow is imported inside the functions that build `tf.data`
# pipelines (`training.data`, `training.augment`) or use `tf.distribute`.
HARNESS = ["keras_seqnorm.cli", "keras_seqnorm.training",
           "keras_seqnorm.training.trainer", "keras_seqnorm.analysis",
           "keras_seqnorm.analysis.comparison",
           "keras_seqnorm.analysis.loss_landscape",
           "keras_seqnorm.analysis.tuner", "keras_seqnorm.analysis.report",
           "keras_seqnorm.analysis.plots"]


def _run(backend, *argv):
    return subprocess.run(
        [sys.executable, "-c", WITHOUT_TENSORFLOW, *argv],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
        env={**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": ROOT},
    )


BACKENDS = [
    pytest.param(name, marks=pytest.mark.skipif(
        importlib.util.find_spec(name) is None,
        reason=f"{name} is not installed",
    ))
    for name in ("jax", "torch")
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_library_needs_neither_tensorflow_nor_matplotlib(backend):
    result = _run(backend, *CORE, "--use")
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "[]"


def test_training_and_analysis_import_tensorflow_where_used():
    # An import of TensorFlow or matplotlib at a module's top fails here,
    # with its traceback.
    result = _run("jax", *HARNESS)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-1] == "[]"
