"""keras-seqnorm: Ghost Normalization and Sequential Normalization for Keras 3.

Public API::

    from keras_seqnorm import layers
    layers.SequentialNormalization(groups_c=4, groups_m=8)
"""

from keras_seqnorm import layers
from keras_seqnorm import models
from keras_seqnorm.convert import convert_normalization
from keras_seqnorm.layers import GhostNormalization
from keras_seqnorm.layers import SequentialNormalization
from keras_seqnorm.norms import NORM_LAYERS
from keras_seqnorm.norms import get_norm_layer
from keras_seqnorm.recalibrate import recalibrate_statistics
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
