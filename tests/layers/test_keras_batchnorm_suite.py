"""Keras' own BatchNormalization test suite, run against GhostNormalization.

With `groups_m=1` GhostNormalization is BatchNormalization. The suite ships
inside the installed `keras` package; it is run from there, unchanged, with
`keras.src.layers.BatchNormalization` pointing at GhostNormalization. The
renorm tests (a feature GhostNormalization does not have, `test_serialization`
among them: it builds a renorm layer) are deselected.
"""

import os
import pathlib
import subprocess
import sys
import textwrap

import keras

PLUGIN = textwrap.dedent(
    """
    import keras
    import keras.src.layers

    from keras_seqnorm.layers import GhostNormalization


    @keras.saving.register_keras_serializable(package="suite")
    class GhostAsBatchNormalization(GhostNormalization):
        # The suite passes `synchronized=False`; one ghost batch.
        def __init__(self, groups_m=1, synchronized=False, **kwargs):
            if synchronized:
                raise ValueError("synchronized=True is not supported")
            super().__init__(groups_m=groups_m, **kwargs)


    keras.src.layers.BatchNormalization = GhostAsBatchNormalization
    """
)


def test_keras_batch_normalization_suite(tmp_path):
    suite = (
        pathlib.Path(keras.__file__).parent
        / "src"
        / "layers"
        / "normalization"
        / "batch_normalization_test.py"
    )
    (tmp_path / "ghost_as_batchnorm.py").write_text(PLUGIN)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "ghost_as_batchnorm",
            "-p",
            "no:cacheprovider",
            "-k",
            "not renorm and not test_serialization",
            str(suite),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(tmp_path), os.getcwd()]),
        },
        timeout=900,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary, summary
    # The suite really ran against GhostNormalization: its many parametrized
    # correctness cases count among the passes.
    assert int(summary.split(" passed")[0].split()[-1]) >= 20, summary
