"""The normalization layers of keras-seqnorm."""

from keras_seqnorm.layers.ghost_normalization import GhostNormalization
from keras_seqnorm.layers.noisy_batch_normalization import (
    NoisyBatchNormalization,
)
from keras_seqnorm.layers.sequential_normalization import (
    SequentialNormalization,
)

__all__ = [
    "GhostNormalization",
    "NoisyBatchNormalization",
    "SequentialNormalization",
]
