"""Data augmentation as `tf.data` map functions, with stateless randomness.

Every random function takes a `seed`, a shape-`(2,)` integer tensor, and
draws only with TensorFlow's stateless random ops
(`tf.random.stateless_*`): its output is a function of its inputs and the
seed alone. `data.py` derives each seed from the run's seed, the epoch and
the position of the image or batch in it, so a resumed run augments every
image exactly as the uninterrupted run would, whatever the order in which
`tf.data`'s parallel maps run.

Per image (before batching, on pixel values in `[0, 255]`):
`randaugment_fn` and the ImageNet crops `random_resized_crop` and
`center_crop`. Per batch (after standardization, so zero padding and the
Cutout square hold the data set's mean): `pad_and_crop`, `random_flip`,
`cutout` and `mixup`.

RandAugment. `randaugment_fn` applies the policy of
`keras_cv.layers.RandAugment` (its ten operations, `rate=10/11` standing
for the paper's identity operation, no magnitude noise): keras-cv's own
layers (`RandAugment.get_standard_policy`) transform the image, through
their public `augment_images(images, transformations)`, with parameters
drawn here by stateless random ops. keras-cv's own draws come from
stateful generators, which neither a seed per image nor a resumed run can
set; everything else is keras-cv's code. The layers are plain TensorFlow
inside `tf.data` on every Keras backend.

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
`[0, 30]`.
"""

import functools

import tensorflow as tf

from keras_seqnorm import validation
from keras_seqnorm.training.config import ConfigError

RANDAUGMENT_MAX_MAGNITUDE = 30
# keras-cv's RandAugment default: each of the N operations is applied with
# probability 10/11, the paper's identity operation the rest of the time.
RANDAUGMENT_RATE = 10 / 11
# keras-cv's solarize policy caps the addition at 110.
SOLARIZE_MAX_ADDITION = 110.0


def randaugment_magnitude(m):
    """keras-cv `magnitude` for the paper's RandAugment magnitude `m` in
    `[0, 30]`: `m / 30`."""
    validation.number("m", m, low=0, high=RANDAUGMENT_MAX_MAGNITUDE)
    return m / RANDAUGMENT_MAX_MAGNITUDE


def split_seed(seed, num):
    """`num` independent stateless seeds derived from `seed`: a list of
    shape-`(2,)` tensors."""
    return tf.unstack(tf.random.experimental.stateless_split(seed, num))


def _uniform(seed, low, high):
    return tf.random.stateless_uniform((), seed, low, high)


# RandAugment's operations on one RGB float32 image `(H, W, 3)` in
# [0, 255]: each is `apply(image, parameter)`, keras-cv's layer given the
# parameter as its transformation, and `draw(seed, strength)` gives its
# random parameter at keras-cv magnitude `strength`, as
# keras_cv.layers.RandAugment.get_standard_policy configures its layers.

@functools.cache
def keras_cv_operations():
    """The `augment_images` of keras-cv's RandAugment layers
    (`RandAugment.get_standard_policy` on `[0, 255]` images, created once
    in float32) by class name. The two `RandomShear` (x, y) and the two
    `RandomTranslation` layers differ only in how they draw; given a
    transformation, either applies it.

    Each is converted by AutoGraph here: keras-cv's code branches in Python
    on tensors, and `tf.cond` and `tf.switch_case` do not convert the
    functions they call.

    Raises:
        ConfigError: when keras-cv is not installed.
    """
    try:
        import keras_cv
    except ImportError:
        raise ConfigError(
            "RandAugment needs keras-cv: pip install 'keras-seqnorm[train]'."
            " Received: randaugment=(N, M)"
        ) from None
    import keras

    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        layers = keras_cv.layers.RandAugment.get_standard_policy(
            value_range=(0, 255), magnitude=0.5, magnitude_stddev=0.0
        )
    finally:
        keras.config.set_dtype_policy(policy)
    return {
        type(layer).__name__: functools.partial(
            tf.autograph.to_graph(type(layer).augment_images), layer
        )
        for layer in layers
    }


def _apply(name, image, transformation=None):
    augment_images = keras_cv_operations()[name]
    return augment_images(image[None], transformation)[0]


def _per_image(value):
    """A scalar parameter as keras-cv's per-image transformation."""
    return tf.reshape(tf.cast(value, tf.float32), (1, 1, 1, 1))


def _per_axis(value):
    """A scalar parameter as keras-cv's per-image, per-axis one."""
    return tf.reshape(tf.cast(value, tf.float32), (1, 1))


def auto_contrast(image, _=None):
    """keras-cv `AutoContrast`: stretches each channel to [0, 255]; a
    constant channel is kept."""
    return _apply("AutoContrast", image)


def equalize(image, _=None):
    """keras-cv `Equalization`: histogram equalization of each channel
    (PIL's `ImageOps.equalize`), on the pixel values truncated to
    integers."""
    return _apply("Equalization", image)


def solarize(image, parameters):
    """keras-cv `Solarization`: adds `addition`, clips to [0, 255], and
    inverts the pixels at or above `threshold`."""
    addition, threshold = parameters
    return _apply("Solarization", image, {
        "additions": _per_image(addition),
        "thresholds": _per_image(threshold),
    })


def _solarize_parameters(seed, strength):
    addition = min(max(strength * SOLARIZE_MAX_ADDITION, 0.0),
                   SOLARIZE_MAX_ADDITION)
    threshold = min(max(255.0 - strength * 255.0, 0.0), 255.0)
    return tf.constant(addition), tf.constant(threshold)


def color(image, factor):
    """keras-cv `RandomColorDegeneration`: blends towards the grayscale
    image by `factor`."""
    return _apply("RandomColorDegeneration", image, _per_image(factor))


def contrast(image, factor):
    """keras-cv `RandomContrast`: scales each channel's deviations from its
    mean by `factor`."""
    return _apply("RandomContrast", image, _per_image(factor))


def brightness(image, delta):
    """keras-cv `RandomBrightness`: adds `delta` (in pixel values)."""
    return _apply("RandomBrightness", image, _per_image(delta))


def shear_x(image, amount):
    """keras-cv `RandomShear(x_factor=...)`: `x += amount * y`, reflecting
    at the borders, bilinear."""
    return _apply("RandomShear", image,
                  {"shear_x": _per_axis(amount), "shear_y": None})


def shear_y(image, amount):
    """keras-cv `RandomShear(y_factor=...)`: `y += amount * x`."""
    return _apply("RandomShear", image,
                  {"shear_x": None, "shear_y": _per_axis(amount)})


def translate_x(image, fraction):
    """keras-cv `RandomTranslation(width_factor=...)`: shifts by `fraction`
    of the width, reflecting at the borders."""
    return _apply("RandomTranslation", image, {
        "height_translations": _per_axis(0.0),
        "width_translations": _per_axis(fraction),
    })


def translate_y(image, fraction):
    """keras-cv `RandomTranslation(height_factor=...)`."""
    return _apply("RandomTranslation", image, {
        "height_translations": _per_axis(fraction),
        "width_translations": _per_axis(0.0),
    })


def _fixed(value):
    return lambda seed, strength: tf.constant(value(strength), tf.float32)


def _symmetric(scale):
    def draw(seed, strength):
        return _uniform(seed, -strength, strength) * scale

    return draw


def _signed(seed, strength):
    # keras-cv's random inversion: negative when a uniform draw is > 0.5.
    sign = tf.where(_uniform(seed, 0.0, 1.0) > 0.5, -1.0, 1.0)
    return sign * min(max(strength, 0.0), 1.0)


def _contrast_factor(seed, strength):
    # keras-cv's contrast policy: RandomContrast(factor=max(m, 0.001)).
    spread = max(strength, 0.001)
    return _uniform(seed, 1.0 - spread, 1.0 + spread)


# keras-cv's RandAugment.get_standard_policy, in its order: (operation,
# draw of its parameter).
RANDAUGMENT_OPERATIONS = (
    (auto_contrast, _fixed(lambda m: 0.0)),
    (equalize, _fixed(lambda m: 0.0)),
    (solarize, _solarize_parameters),
    (color, _fixed(lambda m: min(max(m, 0.0), 1.0))),
    (contrast, _contrast_factor),
    (brightness, _symmetric(255.0)),
    (shear_x, _signed),
    (shear_y, _signed),
    (translate_x, _symmetric(1.0)),
    (translate_y, _symmetric(1.0)),
)


def randaugment_fn(num_ops, magnitude, channels):
    """A function `(image, seed) -> image` applying RandAugment.

    keras-cv's `RandAugment(augmentations_per_image=num_ops,
    magnitude=magnitude / 30, magnitude_stddev=0, rate=10/11)`: `num_ops`
    times, with probability 10/11, one of `RANDAUGMENT_OPERATIONS` chosen
    uniformly at random. Grayscale images are augmented as three equal
    channels and averaged back.

    Args:
        num_ops: Operations per image, the paper's N.
        magnitude: The paper's M in `[0, 30]`.
        channels: Channels of the images (1 or 3).

    Returns:
        A function of a float32 `(H, W, channels)` image in `[0, 255]` and
        a stateless seed.
    """
    strength = randaugment_magnitude(magnitude)

    def one_operation(image, seed):
        apply_seed, choice_seed, draw_seed = split_seed(seed, 3)
        choice = tf.random.stateless_uniform(
            (), choice_seed, 0, len(RANDAUGMENT_OPERATIONS), tf.int32
        )

        def branch(op, draw):
            return lambda: op(image, draw(draw_seed, strength))

        return tf.cond(
            _uniform(apply_seed, 0.0, 1.0) > RANDAUGMENT_RATE,
            lambda: image,
            lambda: tf.switch_case(
                choice,
                [branch(op, draw) for op, draw in RANDAUGMENT_OPERATIONS],
            ),
        )

    def augment(image, seed):
        if channels == 1:
            image = tf.image.grayscale_to_rgb(image)
        for op_seed in split_seed(seed, num_ops):
            image = one_operation(image, op_seed)
        if channels == 1:
            image = tf.reduce_mean(image, axis=-1, keepdims=True)
        return tf.clip_by_value(image, 0.0, 255.0)

    return augment


def random_resized_crop(image, size, seed, area=(0.08, 1.0),
                        ratio=(3 / 4, 4 / 3)):
    """Inception-style crop of one image, resized to `size x size`.

    A box of `area` of the image and aspect ratio in `ratio` (the ImageNet
    recipe's "scale from 8% to 100%, aspect ratio from 3/4 to 4/3"); the
    whole image when no such box is found in 10 tries.
    """
    begin, box_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros((1, 0, 4)),
        seed=seed,
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


def pad_and_crop(images, padding, seed):
    """Zero-pads a batch `(B, H, W, C)` by `padding` pixels on each side and
    crops each image back to `(H, W)` at its own random offset."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    padded = tf.pad(
        images, [[0, 0], [padding, padding], [padding, padding], [0, 0]]
    )
    offsets = tf.random.stateless_uniform(
        (2, batch), seed, 0, 2 * padding + 1, tf.int32
    )
    rows = offsets[0][:, None] + tf.range(height)[None]
    cols = offsets[1][:, None] + tf.range(width)[None]
    images = tf.gather(padded, rows, axis=1, batch_dims=1)
    return tf.gather(images, cols, axis=2, batch_dims=1)


def random_flip(images, seed):
    """Flips each image of a batch left-right with probability 1/2."""
    flip = tf.random.stateless_uniform(
        (tf.shape(images)[0], 1, 1, 1), seed
    ) < 0.5
    return tf.where(flip, tf.reverse(images, axis=[2]), images)


def cutout(images, size, seed):
    """Cutout (DeVries and Taylor, 2017): zeroes a `size x size` square of
    each image of a batch, centred at a uniform random pixel and clipped at
    the borders."""
    shape = tf.shape(images)
    batch, height, width = shape[0], shape[1], shape[2]
    row_seed, col_seed = split_seed(seed, 2)
    cy = tf.random.stateless_uniform((batch, 1, 1), row_seed, 0, height,
                                     tf.int32)
    cx = tf.random.stateless_uniform((batch, 1, 1), col_seed, 0, width,
                                     tf.int32)
    rows = tf.range(height)[None, :, None]
    cols = tf.range(width)[None, None, :]
    low, high = size // 2, size - size // 2
    inside = (
        (rows >= cy - low) & (rows < cy + high)
        & (cols >= cx - low) & (cols < cx + high)
    )
    return tf.where(inside[..., None], tf.zeros_like(images), images)


def mixup(images, labels, alpha, seed):
    """MixUp (Zhang et al., 2018) of a batch with itself reversed, one
    `lambda ~ Beta(alpha, alpha)` per batch (as NVIDIA's recipe does);
    `labels` are one-hot."""
    draws = tf.random.stateless_gamma((2,), seed, alpha)
    lam = draws[0] / (draws[0] + draws[1])
    images = lam * images + (1 - lam) * tf.reverse(images, axis=[0])
    labels = lam * labels + (1 - lam) * tf.reverse(labels, axis=[0])
    return images, labels
