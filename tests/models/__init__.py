import pytest

from keras_seqnorm.models.blocks import channels_first_convolutions_run

# Where TensorFlow cannot run a channels_first Conv2D (a CPU without oneDNN:
# no AVX-512, or TF_ENABLE_ONEDNN_OPTS=0, and no GPU), the builders refuse
# channels_first (tested in test_blocks); the tests that run such a model
# are skipped there and run by the JAX half of `make test`, whose XLA
# convolutions take channels first on every CPU.
needs_channels_first = pytest.mark.skipif(
    not channels_first_convolutions_run(),
    reason="TensorFlow on a CPU without oneDNN (no AVX-512, or "
    "TF_ENABLE_ONEDNN_OPTS=0) runs no channels_first Conv2D; `make "
    "test-jax` runs this test",
)
