"""Train a small CNN with SequentialNormalization on scikit-learn's digits.

    python examples/quickstart.py

Builds the model with the layer in place of BatchNormalization, trains it
for a few epochs (momentum 0.9, as the run is short), saves it to a .keras
file and loads it back.
"""

import os
import tempfile

import keras
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from keras_seqnorm import layers


def main():
    digits = load_digits()
    x = (digits.images[..., None] / 16.0).astype("float32")
    x_train, x_test, y_train, y_test = train_test_split(
        x, digits.target, test_size=0.2, stratify=digits.target,
        random_state=0,
    )
    keras.utils.set_random_seed(0)
    model = keras.Sequential([
        keras.Input((8, 8, 1)),
        keras.layers.Conv2D(32, 3, padding="same", use_bias=False),
        layers.SequentialNormalization(groups_c=4, groups_m=8,
                                       momentum=0.9),
        keras.layers.ReLU(),
        keras.layers.Conv2D(64, 3, padding="same", use_bias=False),
        layers.SequentialNormalization(groups_c=4, groups_m=8,
                                       momentum=0.9),
        keras.layers.ReLU(),
        keras.layers.GlobalAveragePooling2D(),
        keras.layers.Dense(10),
    ])
    model.compile(
        keras.optimizers.Adam(3e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    model.fit(x_train, y_train, batch_size=64, epochs=8, verbose=2)
    _, accuracy = model.evaluate(x_test, y_test, verbose=0)
    print(f"test accuracy: {accuracy:.3f}")

    path = os.path.join(tempfile.mkdtemp(), "seqnorm_digits.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_allclose(
        loaded.predict(x_test, verbose=0), model.predict(x_test, verbose=0),
        atol=1e-5,
    )
    print(f"saved and reloaded {path}")


if __name__ == "__main__":
    main()
