"""keras-seqnorm: Ghost Normalization and Sequential Normalization for Keras 3.

Public API::

    from keras_seqnorm import layers
    layers.SequentialNormalization(groups_c=4, groups_m=8)
"""

from keras_seqnorm import layers
from keras_seqnorm.layers import GhostNormalization
from keras_seqnorm.layers import SequentialNormalization
from keras_seqnorm.version import __version__

__all__ = [
    "GhostNormalization",
    "SequentialNormalization",
    "__version__",
    "layers",
]
