import numpy as np
import pytest
import tensorflow as tf

from keras_seqnorm.training import augment

SEED = tf.constant([3, 7], tf.int64)
OTHER_SEED = tf.constant([3, 8], tf.int64)


def _images(batch=6, size=8, channels=3):
    return np.random.default_rng(0).uniform(
        1, 255, (batch, size, size, channels)
    ).astype("float32")


def test_pad_and_crop_takes_a_window_of_the_zero_padded_image():
    images = _images()
    padding = 2
    out = augment.pad_and_crop(tf.constant(images), padding, SEED).numpy()
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
    out = augment.random_flip(tf.constant(images), SEED).numpy()
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, images)]
    kept = [np.array_equal(o, i) for o, i in zip(out, images)]
    assert all(f or k for f, k in zip(flipped, kept))
    assert 0 < sum(flipped) < 32


def test_cutout_zeroes_one_clipped_square_per_image():
    size = 4
    out = augment.cutout(tf.ones((64, 10, 10, 3)), size, SEED).numpy()
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
        tf.constant(images), tf.constant(labels), 0.2, SEED
    )
    mixed, mixed_labels = mixed.numpy(), mixed_labels.numpy()
    lam = mixed_labels[0, 0]
    np.testing.assert_allclose(mixed_labels.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_allclose(
        mixed, lam * images + (1 - lam) * images[::-1], rtol=1e-4, atol=1e-3
    )


@pytest.mark.parametrize(
    "fn",
    [
        lambda x, s: augment.pad_and_crop(x, 2, s),
        augment.random_flip,
        lambda x, s: augment.cutout(x, 3, s),
        lambda x, s: augment.mixup(x, tf.eye(16), 0.4, s)[0],
        lambda x, s: tf.stack([
            augment.randaugment_fn(2, 14, channels=3)(image, s)
            for image in tf.unstack(x)
        ]),
        lambda x, s: tf.stack([
            augment.random_resized_crop(image, 6, s) for image in tf.unstack(x)
        ]),
    ],
    ids=["pad_and_crop", "flip", "cutout", "mixup", "randaugment",
         "random_resized_crop"],
)
def test_augmentations_are_functions_of_their_seed(fn):
    images = tf.constant(_images(batch=16))
    first = fn(images, SEED).numpy()
    # Other random ops in between change nothing: no hidden state.
    tf.random.uniform((5,))
    np.testing.assert_array_equal(fn(images, SEED).numpy(), first)
    assert not np.array_equal(fn(images, OTHER_SEED).numpy(), first)


@pytest.mark.parametrize("m, expected", [(0, 0.0), (6, 0.2), (14, 14 / 30),
                                         (30, 1.0)])
def test_randaugment_magnitude_is_m_over_30(m, expected):
    assert augment.randaugment_magnitude(m) == pytest.approx(expected)


def test_randaugment_magnitude_range():
    with pytest.raises(ValueError, match="Received: m=31"):
        augment.randaugment_magnitude(31)


@pytest.mark.parametrize("channels", [1, 3])
def test_randaugment_in_tf_data(channels):
    fn = augment.randaugment_fn(2, 14, channels=channels)
    images = _images(batch=8, size=16, channels=channels)

    def run(parallel):
        dataset = tf.data.Dataset.from_tensor_slices(images).enumerate().map(
            lambda i, image: fn(image, tf.stack([tf.constant(5, tf.int64),
                                                 i])),
            num_parallel_calls=parallel,
        )
        return np.stack(list(dataset.as_numpy_iterator()))

    out = run(None)
    assert out.shape == images.shape
    assert out.min() >= 0 and out.max() <= 255
    assert not np.allclose(out, images), "RandAugment changed nothing"
    # The same images whatever order the parallel map runs in.
    np.testing.assert_array_equal(run(4), out)


def test_randaugment_applies_operations_at_the_policy_rate():
    fn = augment.randaugment_fn(1, 10, channels=3)
    image = tf.constant(_images(batch=1, size=12)[0])
    changed = [
        not np.array_equal(fn(image, tf.constant([i, 0], tf.int64)), image)
        for i in range(110)
    ]
    # 10 of 11 draws apply an operation (equalize and auto-contrast can
    # leave an image as it is, so a few more may look unchanged).
    assert 80 <= sum(changed) <= 106


# Each RandAugment operation against the keras-cv layer of the same policy,
# given the same random parameter.
def _keras_cv():
    keras_cv = pytest.importorskip("keras_cv")
    return keras_cv.layers


def _cv_case(name):
    layers = _keras_cv()
    cases = {
        "auto_contrast": (
            augment.auto_contrast, None,
            lambda x: layers.AutoContrast(value_range=(0, 255))
            .augment_images(x),
        ),
        "equalize": (
            augment.equalize, None,
            lambda x: layers.Equalization(value_range=(0, 255))
            .augment_images(x),
        ),
        "solarize": (
            augment.solarize, (40.0, 150.0),
            lambda x: layers.Solarization(value_range=(0, 255))
            .augment_images(x, {"additions": tf.fill((1, 1, 1, 1), 40.0),
                                "thresholds": tf.fill((1, 1, 1, 1), 150.0)}),
        ),
        "color": (
            augment.color, 0.3,
            lambda x: layers.RandomColorDegeneration(0.5)
            .augment_images(x, tf.fill((1, 1, 1, 1), 0.3)),
        ),
        "contrast": (
            augment.contrast, 1.4,
            lambda x: layers.RandomContrast((0, 255), 0.5)
            .augment_images(x, tf.fill((1, 1, 1, 1), 1.4)),
        ),
        "brightness": (
            augment.brightness, -30.0,
            lambda x: layers.RandomBrightness(0.5)
            .augment_images(x, tf.fill((1, 1, 1, 1), -30.0)),
        ),
        "shear_x": (
            augment.shear_x, -0.3,
            lambda x: layers.RandomShear(x_factor=0.5)
            .augment_images(x, {"shear_x": tf.fill((1, 1), -0.3),
                                "shear_y": None}),
        ),
        "shear_y": (
            augment.shear_y, 0.2,
            lambda x: layers.RandomShear(y_factor=0.5)
            .augment_images(x, {"shear_x": None,
                                "shear_y": tf.fill((1, 1), 0.2)}),
        ),
        "translate_x": (
            augment.translate_x, 0.25,
            lambda x: layers.RandomTranslation(0.0, 0.5)
            .augment_images(x, {"height_translations": tf.zeros((1, 1)),
                                "width_translations": tf.fill((1, 1),
                                                              0.25)}),
        ),
        "translate_y": (
            augment.translate_y, -0.125,
            lambda x: layers.RandomTranslation(0.5, 0.0)
            .augment_images(x, {"height_translations": tf.fill((1, 1),
                                                               -0.125),
                                "width_translations": tf.zeros((1, 1))}),
        ),
    }
    return cases[name]


@pytest.mark.parametrize(
    "name",
    ["auto_contrast", "equalize", "solarize", "color", "contrast",
     "brightness", "shear_x", "shear_y", "translate_x", "translate_y"],
)
def test_operations_match_keras_cv(name):
    op, parameter, reference = _cv_case(name)
    image = _images(batch=1, size=12)[0]
    # A constant channel: auto-contrast keeps it, equalize too.
    image[..., 2] = 77.0
    expected = reference(tf.constant(image[None]))[0].numpy()
    np.testing.assert_allclose(
        op(tf.constant(image), parameter).numpy(), expected, atol=1e-3
    )


def test_policy_parameters_follow_keras_cv():
    names = [op.__name__ for op, _ in augment.RANDAUGMENT_OPERATIONS]
    assert names == ["auto_contrast", "equalize", "solarize", "color",
                     "contrast", "brightness", "shear_x", "shear_y",
                     "translate_x", "translate_y"]
    draws = dict(zip(names, (d for _, d in augment.RANDAUGMENT_OPERATIONS)))
    m = 14 / 30
    addition, threshold = draws["solarize"](SEED, m)
    assert float(addition) == pytest.approx(110 * m)
    assert float(threshold) == pytest.approx(255 - 255 * m)
    assert float(draws["color"](SEED, m)) == pytest.approx(m)
    seeds = [tf.constant([i, 1], tf.int64) for i in range(64)]
    contrast = [float(draws["contrast"](s, m)) for s in seeds]
    assert 1 - m <= min(contrast) < 1 < max(contrast) <= 1 + m
    brightness = [float(draws["brightness"](s, m)) for s in seeds]
    assert -255 * m <= min(brightness) < 0 < max(brightness) <= 255 * m
    shear = {round(float(draws["shear_x"](s, m)), 6) for s in seeds}
    assert shear == {round(m, 6), round(-m, 6)}
    translate = [float(draws["translate_y"](s, m)) for s in seeds]
    assert -m <= min(translate) < 0 < max(translate) <= m


def test_imagenet_crops():
    image = tf.random.uniform((50, 80, 3), 0, 255)
    assert augment.random_resized_crop(image, 24, SEED).shape == (24, 24, 3)
    crop = augment.center_crop(image, 28, crop_fraction=28 / 32)
    assert crop.shape == (28, 28, 3)
    # The shorter side is resized to 32, the center 28 x 28 is kept.
    resized = tf.image.resize(image, (32, 51))
    np.testing.assert_allclose(crop, resized[2:30, 11:39], rtol=1e-5)
