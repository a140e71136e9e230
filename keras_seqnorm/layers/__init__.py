"""The normalization layers of keras-seqnorm."""

from keras_seqnorm.layers.fitted_group_normalization import (
    FittedGroupNormalization,
)
from keras_seqnorm.layers.ghost_normalization import GhostNormalization
from keras_seqnorm.layers.identity_normalization import IdentityNormalization
from keras_seqnorm.layers.noisy_batch_normalization import (
    NoisyBatchNormalization,
)
from keras_seqnorm.layers.sequential_normalization import (
    SequentialNormalization,
)

__all__ = [
    "FittedGroupNormalization",
    "GhostNormalization",
    "IdentityNormalization",
    "NoisyBatchNormalization",
    "SequentialNormalization",
]
