"""GhostNorm and SeqNorm under tf.distribute.MirroredStrategy on two CPUs,
through their XLA-compiled call and their plain ops."""

import os
import subprocess
import sys
import textwrap

import keras
import pytest

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="tf.distribute needs the TensorFlow backend",
)

SCRIPT = textwrap.dedent(
    """
    import numpy as np
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )

    from keras_seqnorm.layers import GhostNormalization
    from keras_seqnorm.layers import SequentialNormalization

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    rng = np.random.default_rng(0)
    x = rng.normal(2.0, 3.0, size=(16, 5, 8)).astype("float32")

    for cls, kwargs in (
        (GhostNormalization, {}),
        (SequentialNormalization, {"groups_c": 2}),
        # The layer's own XLA-compiled call (the default) and plain ops.
        (GhostNormalization, {"fused": False}),
        (SequentialNormalization, {"groups_c": 2, "fused": False}),
    ):
        with strategy.scope():
            replicated = cls(groups_m=2, momentum=0.5, **kwargs)
            replicated.build((None, 5, 8))
        single = cls(groups_m=4, momentum=0.5, **kwargs)
        single.build((None, 5, 8))

        batches = strategy.experimental_distribute_dataset(
            tf.data.Dataset.from_tensor_slices(x).batch(16)
        )
        step = tf.function(lambda batch: replicated(batch, training=True))
        outputs = strategy.run(step, args=(next(iter(batches)),))
        local = strategy.experimental_local_results(outputs)
        assert len(local) == 2, local
        distributed = np.concatenate([t.numpy() for t in local])
        expected = single(x, training=True).numpy()
        np.testing.assert_allclose(distributed, expected, atol=1e-5)

        for name in ("moving_mean", "moving_variance"):
            variable = getattr(replicated, name).value
            copies = [v.numpy() for v in
                      strategy.experimental_local_results(variable)]
            assert len(copies) == 2
            np.testing.assert_array_equal(copies[0], copies[1])
            np.testing.assert_allclose(
                copies[0], getattr(single, name).numpy(), atol=1e-5
            )
            assert not np.allclose(copies[0], 1.0 if "var" in name else 0.0)
    print("distributed ok")
    """
)


def test_two_replicas_with_g_equal_one_device_with_2g():
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT],
        capture_output=True,
        text=True,
        env={**os.environ, "KERAS_BACKEND": "tensorflow"},
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "distributed ok" in result.stdout
