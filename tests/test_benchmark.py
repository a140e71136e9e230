import json

import keras
import numpy as np
import pytest

from keras_seqnorm import benchmark
from keras_seqnorm.layers import SequentialNormalization
from tests.helpers import to_numpy


def test_two_stage_reference_equals_the_fused_layer():
    x = np.random.default_rng(0).normal(size=(16, 4, 4, 8)).astype("float32")
    fused = SequentialNormalization(groups_c=4, groups_m=8)
    reference = benchmark.TwoStageSequentialNormalization(groups_c=4,
                                                          groups_m=8)
    np.testing.assert_allclose(
        to_numpy(fused(x, training=True)),
        to_numpy(reference(x, training=True)),
        atol=1e-4,
    )


@pytest.mark.skipif(keras.backend.backend() not in ("tensorflow", "jax"),
                    reason="the harness compiles with XLA")
def test_harness_writes_ratios_to_batch_normalization(tmp_path):
    out = tmp_path / "bench.json"
    result = benchmark.main([
        "--shapes", "16x4x4x16", "--dtypes", "float32", "--iters", "1",
        "--samples", "1", "--model", "", "--out", str(out),
    ])
    saved = json.loads(out.read_text())
    assert saved["backend"] == keras.backend.backend()
    assert saved["rows"] == result["rows"]
    impls = {row["impl"]: row for row in saved["rows"]}
    assert set(impls) == {"batch", "ghost", "sequential", "two_stage",
                          "group"}
    assert impls["batch"]["ratio"] == 1.0
    assert all(row["ms"] > 0 for row in saved["rows"])
    table = (tmp_path / "bench.md").read_text()
    assert "| 16x4x4x16 | float32 |" in table


def test_bad_shapes_flag():
    with pytest.raises(ValueError, match="Received: --shapes=16x4xa"):
        benchmark.main(["--shapes", "16x4xa", "--model", ""])
