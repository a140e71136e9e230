"""Data augmentation as `tf.data` map functions.

Per image (before batching, on pixel values in `[0, 255]`):
`randaugment_fn` and the ImageNet crops `random_resized_crop` and
`center_crop`. Per batch (after standardization, so zero padding and the
Cutout square hold the data set's mean): `pad_and_crop`, `random_flip`,
`cutout` and `mixup`.

RandAugment's magnitude. The RandAugment paper (Cubuk et al., 2019) and the
SeqNorm paper (Appendix C: N in {1, 2}, M in {2, 6, 10, 14}) give M on the
scale of the original implementation, where an operation's strength is
`M / 10` of its AutoAugment range and M goes past 10 (RandAugment uses
M = 14 on CIFAR-100 and 28 on ImageNet). keras-cv's `magnitude` is a
strength in `[0, 1]`, clipped at 1, whose geometric operations translate
by up to `magnitude` of the image side and shear by up to `magnitude`. The
original CIFAR code translates by M pixels of 32 and shears by `0.03 M`,
so `magnitude = M / 30` matches it closely (M = 10: translation 0.31
there, 0.33 here; shear 0.30 and 0.33), keeps the paper's grid distinct
(`M / 10` would clip M = 14 to the strongest setting) and spans M in
`[0, 30]`. The fallback `keras.layers.RandAugment(factor=M / 30)` uses the
same number, but its operations differ (its rotation reaches
`factor * 360` degrees), so runs with the fallback are not comparable with
keras-cv ones.
"""

import keras
import tensorflow as tf

RANDAUGMENT_MAX_MAGNITUDE = 30


def randaugment_magnitude(m):
    """keras-cv `magnitude` (and `keras.layers.RandAugment` `factor`) for
    the paper's RandAugment magnitude `m` in `[0, 30]`: `m / 30`."""
    if not 0 <= m <= RANDAUGMENT_MAX_MAGNITUDE:
        raise ValueError(
            "Argument `m` must be in [0, 30]. "
            f"Received: m={m}"
        )
    return m / RANDAUGMENT_MAX_MAGNITUDE


def _keras_cv():
    if keras.backend.backend() != "tensorflow":
        return None
    try:
        import keras_cv
    except ImportError:
        return None
    return keras_cv


def randaugment_fn(num_ops, magnitude, channels, seed=None):
    """A function `image -> image` applying RandAugment to one image.

    Uses `keras_cv.layers.RandAugment` (`augmentations_per_image=num_ops`,
    `magnitude=m / 30`, no magnitude noise, `rate=10/11` as the paper's
    identity operation) when keras-cv is installed and the backend is
    TensorFlow, else `keras.layers.RandAugment(num_ops, factor=m / 30)`.
    Grayscale images are augmented as three equal channels and averaged
    back.

    Args:
        num_ops: Operations per image, the paper's N.
        magnitude: The paper's M in `[0, 30]`.
        channels: Channels of the images (1 or 3).
        seed: Optional seed of the layer. Defaults to `None`.

    Returns:
        A function of a float32 `(H, W, channels)` image in `[0, 255]`.
    """
    strength = randaugment_magnitude(magnitude)
    keras_cv = _keras_cv()
    if keras_cv is not None:
        layer = keras_cv.layers.RandAugment(
            value_range=(0, 255),
            augmentations_per_image=num_ops,
            magnitude=strength,
            magnitude_stddev=0.0,
            seed=seed,
        )
    else:
        layer = keras.layers.RandAugment(
            value_range=(0, 255), num_ops=num_ops, factor=strength, seed=seed
        )

    def augment(image):
        if channels == 1:
            image = tf.image.grayscale_to_rgb(image)
        image = tf.cast(layer(image, training=True), tf.float32)
        if channels == 1:
            image = tf.reduce_mean(image, axis=-1, keepdims=True)
        return tf.clip_by_value(image, 0.0, 255.0)

    return augment


def random_resized_crop(image, size, area=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)):
    """Inception-style crop of one image, resized to `size x size`.

    A box of `area` of the image and aspect ratio in `ratio` (the ImageNet
    recipe's "scale from 8% to 100%, aspect ratio from 3/4 to 4/3"); the
    whole image when no such box is found in 10 tries.
    """
    begin, box_size, _ = tf.image.sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros((1, 0, 4)),
        min_object_covered=0.0,
        aspect_ratio_range=ratio,
        area_range=area,
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    image = tf.slice(image, begin, box_size)
    return tf.image.resize(image, (size, size))


def center_crop(image, size, crop_fraction=224 / 256):
    """Resizes the shorter side to `size / crop_fraction` and takes the
    central `size x size` square (ImageNet evaluation: 256, then 224)."""
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = (size / crop_fraction) / tf.reduce_min(shape)
    resized = tf.cast(tf.round(shape * scale), tf.int32)
    image = tf.image.resize(image, resized)
    top = (resized[0] - size) // 2
    left = (resized[1] - size) // 2
    return image[top:top + size, left:left + size]


def pad_and_crop(images, padding):
    """Zero-pads a batch `(B, H, W, C)` by `padding` pixels on each side and
    crops each image back to `(H, W)` at its own random offset."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    padded = tf.pad(
        images, [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    )
    top = tf.random.uniform((batch,), 0, 2 * padding + 1, tf.int32)
    left = tf.random.uniform((batch,), 0, 2 * padding + 1, tf.int32)
    rows = top[:, None] + tf.range(height)[None]
    cols = left[:, None] + tf.range(width)[None]
    images = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)


def random_flip(images):
    """Flips each image of a batch left-right with probability 1/2."""
    flip = tf.random.uniform((tf.shape(images)[0], 1, 1, 1)) < 0.5
    return tf.where(flip, tf.reverse(images, axis=[2]), images)


def cutout(images, size):
    """Cutout (DeVries and Taylor, 2017): zeroes a `size x size` square of
    each image of a batch, centred at a uniform random pixel and clipped at
    the borders."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    cy = tf.random.uniform((batch, 1, 1), 0, height, tf.int32)
    cx = tf.random.uniform((batch, 1, 1), 0, width, tf.int32)
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    low, high = size // 2, size - size // 2
    inside = (
        (rows >= cy - low) & (rows < cy + high)
        & (cols >= cx - low) & (cols < cx + high)
    )
    return tf.where(inside[..., None], tf.zeros_like(images), images)


def mixup(images, labels, alpha):
    """MixUp (Zhang et al., 2018) of a batch with itself reversed, one
    `lambda ~ Beta(alpha, alpha)` per batch (as NVIDIA's recipe does);
    `labels` are one-hot."""
    first = tf.random.gamma((), alpha)
    second = tf.random.gamma((), alpha)
    lam = first / (first + second)
    images = lam * images + (1 - lam) * tf.reverse(images, axis=[0])
    labels = lam * labels + (1 - lam) * tf.reverse(labels, axis=[0])
    return images, labels
