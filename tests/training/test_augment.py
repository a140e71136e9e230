import numpy as np
import pytest
import tensorflow as tf

from keras_seqnorm.training import augment


@pytest.fixture(autouse=True)
def _seed():
    tf.random.set_seed(1)


def _images(batch=6, size=8, channels=3):
    return np.random.default_rng(0).uniform(
        1, 255, (batch, size, size, channels)
    ).astype("float32")


def test_pad_and_crop_takes_a_window_of_the_zero_padded_image():
    images = _images()
    padding = 2
    out = augment.pad_and_crop(tf.constant(images), padding).numpy()
    assert out.shape == images.shape
    padded = np.pad(images, [(0, 0), (2, 2), (2, 2), (0, 0)])
    offsets = set()
    for image, result in zip(padded, out):
        windows = [
            (top, left)
            for top in range(2 * padding + 1)
            for left in range(2 * padding + 1)
            if np.array_equal(image[top:top + 8, left:left + 8], result)
        ]
        assert windows, "not a window of the padded image"
        offsets.add(windows[0])
    assert len(offsets) > 1, "every image got the same offset"


def test_random_flip_flips_some_images_left_right():
    images = _images(batch=32)
    out = augment.random_flip(tf.constant(images)).numpy()
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < 32


def test_cutout_zeroes_one_clipped_square_per_image():
    size = 4
    out = augment.cutout(tf.ones((64, 10, 10, 3)), size).numpy()
    full = 0
    for image in out:
        zero = np.all(image == 0, axis=-1)
        rows = np.flatnonzero(zero.any(axis=1))
        cols = np.flatnonzero(zero.any(axis=0))
        assert 1 <= len(rows) <= size and 1 <= len(cols) <= size
        # A solid rectangle, and nothing else is touched.
        assert zero.sum() == len(rows) * len(cols)
        assert np.all(zero[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1])
        assert np.all(image[~zero] == 1)
        full += zero.sum() == size * size
    assert full > 0


def test_mixup_mixes_images_and_labels_with_one_lambda():
    images = _images(batch=4)
    labels = np.eye(4, dtype="float32")
    mixed, mixed_labels = augment.mixup(
        tf.constant(images), tf.constant(labels), 0.2
    )
    mixed, mixed_labels = mixed.numpy(), mixed_labels.numpy()
    lam = mixed_labels[0, 0]
    np.testing.assert_allclose(mixed_labels.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(
        mixed, lam * images + (1 - lam) * images[::-1], rtol=1e-4, atol=1e-3
    )


@pytest.mark.parametrize("m, expected", [(0, 0.0), (6, 0.2), (14, 14 / 30),
                                         (30, 1.0)])
def test_randaugment_magnitude_is_m_over_30(m, expected):
    assert augment.randaugment_magnitude(m) == pytest.approx(expected)


def test_randaugment_magnitude_range():
    with pytest.raises(ValueError, match="Received: m=31"):
        augment.randaugment_magnitude(31)


@pytest.mark.parametrize("backend", ["keras_cv", "keras"])
@pytest.mark.parametrize("channels", [1, 3])
def test_randaugment_in_tf_data(monkeypatch, backend, channels):
    if backend == "keras":
        monkeypatch.setattr(augment, "_keras_cv", lambda: None)
    fn = augment.randaugment_fn(2, 14, channels=channels, seed=3)
    images = _images(batch=8, size=16, channels=channels)
    dataset = tf.data.Dataset.from_tensor_slices(images).map(fn)
    out = np.stack(list(dataset.as_numpy_iterator()))
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, images), "RandAugment changed nothing"


def test_imagenet_crops():
    image = tf.random.uniform((50, 80, 3), 0, 255)
    assert augment.random_resized_crop(image, 24).shape == (24, 24, 3)
    crop = augment.center_crop(image, 28, crop_fraction=28 / 32)
    assert crop.shape == (28, 28, 3)
    # The shorter side is resized to 32, the center 28 x 28 is kept.
    resized = tf.image.resize(image, (32, 51))
    np.testing.assert_allclose(crop, resized[2:30, 11:39], rtol=1e-5)
