"""Swap the BatchNormalization layers of a Keras Applications ResNet-50.

    python examples/convert_resnet50.py

`convert_normalization` returns a new model; the original is unchanged.
With GhostNorm and one ghost batch the converted model computes exactly
what the original computes, a quick check before fine-tuning with SeqNorm.
"""

import keras
import numpy as np

import keras_seqnorm


def main():
    backbone = keras.applications.ResNet50(
        weights=None, input_shape=(64, 64, 3), classes=10
    )
    images = np.random.default_rng(0).random((4, 64, 64, 3), "float32")

    same = keras_seqnorm.convert_normalization(backbone, "ghost", groups_m=1)
    difference = np.abs(
        same.predict(images, verbose=0) - backbone.predict(images, verbose=0)
    ).max()
    print(f"GhostNorm(groups_m=1) vs BatchNorm: max difference "
          f"{difference:.2e}")

    seqnorm = keras_seqnorm.convert_normalization(
        backbone, "sequential", groups_c=4, groups_m=8
    )
    kinds = {type(layer).__name__ for layer in seqnorm.layers}
    print("BatchNormalization left:", "BatchNormalization" in kinds)
    print("SequentialNormalization layers:", sum(
        isinstance(layer, keras_seqnorm.SequentialNormalization)
        for layer in seqnorm.layers
    ))


if __name__ == "__main__":
    main()
