"""Data sets as `tf.data` pipelines with the global batch size.

`load_data(config)` returns the training, validation and test pipelines of
`config.dataset`:

- `digits`: scikit-learn's bundled 8x8 digits (1,797 images, offline),
  scaled to `[0, 255]` and resized to `image_size` (default 16); a
  stratified test split of 360 images, then `validation_size` (default 180)
  stratified from the rest.
- `mnist`, `cifar10`, `cifar100`, `imagenet2012`: TensorFlow Datasets in
  `--data-dir`; `validation_size` images stratified from the training split
  (CIFAR: 45,000/5,000 as Appendix C), 0 to validate on the test split
  (ImageNet's test split is its validation set). Splits use seed 0, so
  every run of a comparison sees the same split.

Training: map (decode, resize, one-hot labels), cache (not ImageNet),
then per epoch: shuffle, per-image augmentation (RandAugment, ImageNet's
random-resized crop), batch with `drop_remainder=True`, per-batch
standardization and augmentation (pad-and-crop, flip, Cutout, MixUp),
prefetch. Evaluation: map (ImageNet's center crop), batch (the last batch
may be partial), standardize.

Every epoch is a function of `(config.seed, epoch)` alone: the order of
its images and every random draw of its augmentations come from stateless
random ops seeded with them (`Data.epoch_dataset(epoch)`), so a run resumed
at epoch `e` trains on the very batches the uninterrupted run trained on
from epoch `e`. The shuffle permutes windows of `SHUFFLE_WINDOW` images
(every image of the cached data sets, 10,000 consecutive records of
ImageNet's shuffled TFDS files).
"""

import dataclasses
import typing

import numpy as np
import tensorflow as tf

from keras_seqnorm.training import augment
from keras_seqnorm.training.config import DATASET_DEFAULTS
from keras_seqnorm.training.config import ConfigError

AUTOTUNE = tf.data.AUTOTUNE
SPLIT_SEED = 0
DIGITS_TEST_SIZE = 360
# Images permuted together by the shuffle: every image of the data sets
# held in memory, windows of this many of ImageNet's.
SHUFFLE_WINDOW = {"imagenet2012": 10_000}
# Streams of stateless seeds per epoch: one per image, one per batch.
_IMAGE_STREAM, _BATCH_STREAM, _SHUFFLE_STREAM = 0, 1, 2

class _Source(typing.NamedTuple):
    """A data set's splits before the pipelines: `train`, `validation` and
    `test` as `(dataset of (image, label), size)`, the `num_classes`, the
    image `channels` and the per-channel `(mean, std)` `stats`."""

    train: tuple
    validation: tuple
    test: tuple
    num_classes: int
    channels: int
    stats: tuple


class DatasetUnavailableError(ConfigError):
    """A TensorFlow Datasets data set is not in `--data-dir` and could not
    be prepared. The message is one line that says the way out
    (`--data-dir`, `--download`, `--manual-dir`, a network, a package)."""


@dataclasses.dataclass(frozen=True)
class Data:
    """The pipelines of one run and what the model needs to know.

    Attributes:
        epoch_batches: Function of an epoch number (an int64 tensor) giving
            that epoch's training batches `(images, one_hot_labels)`,
            `steps_per_epoch` of them; see `epoch_dataset`.
        validation: Evaluation batches of the validation split (the test
            split when `validation_is_test`).
        test: Evaluation batches of the test split.
        input_shape: `(image_size, image_size, channels)`.
        num_classes: Number of classes.
        train_size: Training images per epoch (before `drop_remainder`).
        validation_size: Validation images.
        test_size: Test images.
        steps_per_epoch: `train_size // batch_size`.
        validation_is_test: Whether validation runs on the test split.
    """

    epoch_batches: object
    validation: tf.data.Dataset
    test: tf.data.Dataset
    input_shape: tuple
    num_classes: int
    train_size: int
    validation_size: int
    test_size: int
    steps_per_epoch: int
    validation_is_test: bool

    def epoch_dataset(self, epoch):
        """The training batches of `epoch`, `steps_per_epoch` of them.

        Args:
            epoch: An int, or an int64 `tf.Variable` read each time the
                dataset is iterated: one dataset then serves every epoch of
                `fit`, which iterates it anew each epoch, when a callback
                assigns the epoch at `on_epoch_begin`.
        """
        if isinstance(epoch, tf.Variable):
            epochs = tf.data.Dataset.range(1).map(
                lambda _: epoch.read_value()
            )
        else:
            epochs = tf.data.Dataset.from_tensors(tf.constant(epoch, tf.int64))
        dataset = epochs.flat_map(self.epoch_batches).apply(
            tf.data.experimental.assert_cardinality(self.steps_per_epoch)
        )
        return _with_options(dataset.prefetch(AUTOTUNE))

    @property
    def train(self):
        """The training batches of the first epoch."""
        return self.epoch_dataset(0)


def stratified_split(labels, size, seed=SPLIT_SEED):
    """Splits indices into `(kept, held)` with `len(held) == size`.

    Each class contributes `size * n_c / n` images rounded by largest
    remainder, so class proportions are kept; the images within each class
    are drawn at random with `seed`. Both index arrays are sorted.
    """
    labels = np.asarray(labels)
    total = len(labels)
    if not 0 <= size < total:
        raise ValueError(
            f"Argument `size` must be in [0, {total}) for {total} images. "
            f"Received: size={size}"
        )
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * size / total
    take = np.floor(quota).astype(int)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[: size - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    held = [
        rng.permutation(np.flatnonzero(labels == label))[:count]
        for label, count in zip(classes, take)
    ]
    held = np.sort(np.concatenate(held)).astype(np.int64)
    kept = np.setdiff1d(np.arange(total), held)
    return kept, held


def _check_validation_size(config, total):
    if config.validation_size >= total:
        raise ConfigError(
            f"Argument `validation_size` must be less than the {total} "
            f"training images of {config.dataset}. "
            f"Received: validation_size={config.validation_size}"
        )


def _digits(config):
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = digits.images[..., None].astype(np.float32) * (255.0 / 16.0)
    size = config.image_size
    images = tf.image.resize(images, (size, size)).numpy()
    labels = digits.target.astype(np.int64)
    rest, test = stratified_split(labels, DIGITS_TEST_SIZE)
    _check_validation_size(config, len(rest))
    kept, held = stratified_split(labels[rest], config.validation_size)
    train, validation = rest[kept], rest[held]
    mean = images[train].mean(axis=(0, 1, 2))
    std = images[train].std(axis=(0, 1, 2))

    def source(index):
        return tf.data.Dataset.from_tensor_slices(
            (images[index], labels[index])
        )

    if config.validation_size == 0:
        validation = test
    return _Source(
        train=(source(train), len(train)),
        validation=(source(validation), len(validation)),
        test=(source(test), len(test)),
        num_classes=10,
        channels=1,
        stats=(mean, std),
    )


def _import_tfds(dataset):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise DatasetUnavailableError(
            f"The data set {dataset!r} needs tensorflow-datasets: pip install "
            f"'keras-seqnorm[train]'. Received: dataset={dataset!r}"
        ) from None
    return tfds


def _one_line(error):
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0] if lines else ''}"


def _missing_package(dataset, error, received):
    return DatasetUnavailableError(
        f"TensorFlow Datasets cannot prepare {dataset!r}: a package it "
        f"needs is missing ({_one_line(error)}). Install it (pip install "
        "'keras-seqnorm[train]' installs what TensorFlow Datasets needs), "
        f"or point --data-dir at a directory where {dataset} is prepared. "
        + received
    )


def _where(config):
    return (
        f"--data-dir {config.data_dir}"
        if config.data_dir
        else "--data-dir (default ~/tensorflow_datasets or $TFDS_DATA_DIR)"
    )


def _prepare_elsewhere(dataset):
    return (
        "prepare it where the internet is reachable (`tfds build "
        f"{dataset} --data_dir DIR`) and point --data-dir at DIR. "
    )


def _tfds_builder(config):
    """TensorFlow Datasets and the builder of `config.dataset`, prepared
    (downloaded if allowed) in `config.data_dir`."""
    dataset = config.dataset
    tfds = _import_tfds(dataset)
    received = f"Received: data_dir={config.data_dir!r}"
    try:
        builder = tfds.builder(dataset, data_dir=config.data_dir)
        if builder.is_prepared():
            return tfds, builder
    except ImportError as error:
        raise _missing_package(dataset, error, received) from None
    where = _where(config)
    if not config.download:
        raise DatasetUnavailableError(
            f"The data set {dataset!r} is not prepared in {where} and "
            "--no-download forbids downloading it: drop --no-download (or "
            "give --download) to let TensorFlow Datasets download it, or "
            + _prepare_elsewhere(dataset)
            + received
        )
    if dataset == "imagenet2012" and not config.manual_dir:
        raise DatasetUnavailableError(
            f"imagenet2012 is not prepared in {where}. TensorFlow Datasets "
            "cannot download it: give --manual-dir, the directory holding "
            "ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar. "
            + received
        )
    try:
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(
                manual_dir=config.manual_dir
            )
        )
    except ImportError as error:
        raise _missing_package(dataset, error, received) from None
    except Exception as error:  # Whatever stopped it: one line, a way out.
        raise DatasetUnavailableError(
            _failed_preparation(config, error) + received
        ) from None
    return tfds, builder


def _failed_preparation(config, error):
    """What went wrong preparing `config.dataset`, and the way out."""
    dataset, where, reason = config.dataset, _where(config), _one_line(error)
    if dataset == "imagenet2012":
        return (
            f"imagenet2012 could not be prepared from --manual-dir "
            f"{config.manual_dir} into {where} ({reason}). --manual-dir "
            "must hold ILSVRC2012_img_train.tar and "
            "ILSVRC2012_img_val.tar, and --data-dir must be writable. "
        )
    if isinstance(error, OSError) and error.filename:
        # A local file, not the network: requests' errors have none.
        return (
            f"The data set {dataset!r} could not be written in {where} "
            f"({reason}). Give --data-dir a directory you can write to. "
        )
    return (
        f"The data set {dataset!r} is not prepared in {where} and "
        f"could not be downloaded ({reason}). Check the network and "
        "rerun, or " + _prepare_elsewhere(dataset)
    )


def _labels(tfds, builder):
    labels = builder.as_dataset(
        split="train",
        shuffle_files=False,
        decoders={"image": tfds.decode.SkipDecoding()},
    ).map(lambda example: example["label"], num_parallel_calls=AUTOTUNE)
    return np.concatenate(
        [batch for batch in labels.batch(8192).as_numpy_iterator()]
    )


def _tfds(config):
    tfds, builder = _tfds_builder(config)
    defaults = DATASET_DEFAULTS[config.dataset]

    def split(name):
        dataset = builder.as_dataset(
            split=name, shuffle_files=False, as_supervised=True
        )
        return dataset, int(dataset.cardinality())

    train, train_size = split("train")
    test, test_size = split(defaults.test_split)
    validation, validation_size = test, test_size
    if config.validation_size:
        _check_validation_size(config, train_size)
        kept, held = stratified_split(
            _labels(tfds, builder), config.validation_size
        )
        held_mask = np.zeros(train_size, bool)
        held_mask[held] = True
        held_mask = tf.constant(held_mask)

        def subset(keep_held, size):
            return (
                train.enumerate()
                .filter(lambda i, _: held_mask[i] == keep_held)
                .map(lambda _, example: example)
                .apply(tf.data.experimental.assert_cardinality(size))
            )

        train, validation = subset(False, len(kept)), subset(True, len(held))
        train_size, validation_size = len(kept), len(held)
    features = builder.info.features
    return _Source(
        train=(train, train_size),
        validation=(validation, validation_size),
        test=(test, test_size),
        num_classes=features["label"].num_classes,
        channels=features["image"].shape[-1],
        stats=defaults.stats,
    )


def load_data(config, partial_batch_first=False):
    """The pipelines of `config.dataset` (see the module docstring).

    Args:
        config: A `Config` whose data fields are resolved
            (`resolve_data_fields`); `config.batch_size` is the global batch
            size, over all replicas.
        partial_batch_first: Make the partial batch of an evaluation
            pipeline (its first `size % batch_size` images) its first
            batch, not its last. Under `keras.distribution.DataParallel`,
            which lays out every batch of an evaluation as its first, a
            split whose size the devices do not divide is then evaluated
            whole on every device, not cut unevenly. Defaults to `False`.

    Returns:
        A `Data`.

    Raises:
        DatasetUnavailableError: when a TensorFlow Datasets data set is not
            in `--data-dir` and cannot be prepared.
        ConfigError: when the training split holds fewer images than a
            batch, or no more than `validation_size`.
    """
    batch_size = config.batch_size
    source = _digits(config) if config.dataset == "digits" else _tfds(config)
    train, train_size = source.train
    steps = train_size // batch_size
    if steps < 1:
        raise ConfigError(
            f"Argument `batch_size` must be at most the {train_size} "
            f"training images of {config.dataset}. "
            f"Received: batch_size={batch_size}"
        )
    channels = source.channels
    mean, std = (np.asarray(s, np.float32) for s in source.stats)
    imagenet = config.dataset == "imagenet2012"
    size = config.image_size
    num_classes = source.num_classes

    def prepare(image, label):
        image = tf.cast(image, tf.float32)
        if not imagenet and image.shape[:2] != (size, size):
            image = tf.image.resize(image, (size, size))
        return image, tf.one_hot(label, num_classes)

    def standardize(images, labels):
        return (images - mean) / std, labels

    def evaluation(dataset, images):
        dataset = dataset.map(prepare, num_parallel_calls=AUTOTUNE)
        if imagenet:
            dataset = dataset.map(
                lambda image, label: (augment.center_crop(image, size), label),
                num_parallel_calls=AUTOTUNE,
            )
        else:
            dataset = dataset.cache()
        partial = images % batch_size if partial_batch_first else 0
        batches = dataset.skip(partial).batch(batch_size)
        if partial:
            batches = dataset.take(partial).batch(partial).concatenate(batches)
        dataset = batches.map(standardize, num_parallel_calls=AUTOTUNE)
        return _with_options(dataset.prefetch(AUTOTUNE))

    validation, validation_size = source.validation
    test, test_size = source.test
    return Data(
        epoch_batches=_training(
            train, train_size, config, batch_size, channels, prepare,
            standardize,
        ),
        validation=evaluation(validation, validation_size),
        test=evaluation(test, test_size),
        input_shape=(size, size, channels),
        num_classes=num_classes,
        train_size=train_size,
        validation_size=validation_size,
        test_size=test_size,
        steps_per_epoch=steps,
        validation_is_test=config.validation_size == 0,
    )


def _shuffle(dataset, window, seed):
    """Stateless shuffle: a permutation of each window of `window`
    consecutive elements, drawn from `seed` and the window's index."""
    ragged = any(
        not spec.shape.is_fully_defined()
        for spec in tf.nest.flatten(dataset.element_spec)
    )
    windows = dataset.ragged_batch(window) if ragged else dataset.batch(
        window
    )

    def permute(index, elements):
        size = tf.shape(tf.nest.flatten(elements)[-1])[0]
        key_seed = tf.random.experimental.stateless_fold_in(seed, index)
        order = tf.argsort(tf.random.stateless_uniform([size], key_seed))
        return tf.data.Dataset.from_tensor_slices(
            tf.nest.map_structure(lambda t: tf.gather(t, order), elements)
        )

    shuffled = windows.enumerate().flat_map(permute)
    if not ragged:
        return shuffled
    return shuffled.map(
        lambda image, label: (image.to_tensor(), label),
        num_parallel_calls=AUTOTUNE,
    )


def _training(dataset, size, config, batch_size, channels, prepare,
              standardize):
    """The function `epoch -> that epoch's training batches` (see
    `Data.epochs`)."""
    imagenet = config.dataset == "imagenet2012"
    if imagenet:
        # Shuffled as decoded uint8 images, converted after.
        window = SHUFFLE_WINDOW[config.dataset]
    else:
        dataset = dataset.map(prepare, num_parallel_calls=AUTOTUNE).cache()
        window = size
    per_image = []
    if imagenet:
        per_image.append(
            lambda image, seed: augment.random_resized_crop(
                image, config.image_size, seed
            )
        )
    if config.randaugment is not None:
        per_image.append(
            augment.randaugment_fn(*config.randaugment, channels=channels)
        )

    def augment_image(index, example, seed):
        image, label = prepare(*example) if imagenet else example
        image_seed = tf.random.experimental.stateless_fold_in(seed, index)
        for fn, fn_seed in zip(
            per_image, augment.split_seed(image_seed, len(per_image) or 1)
        ):
            image = fn(image, fn_seed)
        return image, label

    augment_batch = _batch_augmentation(config)

    def epoch_batches(epoch):
        seed = tf.stack([tf.constant(config.seed, tf.int64),
                         tf.cast(epoch, tf.int64)])
        image_seed, batch_seed, shuffle_seed = (
            tf.random.experimental.stateless_fold_in(seed, stream)
            for stream in (_IMAGE_STREAM, _BATCH_STREAM, _SHUFFLE_STREAM)
        )
        batches = _shuffle(dataset, window, shuffle_seed)
        if per_image or imagenet:
            batches = batches.enumerate().map(
                lambda i, example: augment_image(i, example, image_seed),
                num_parallel_calls=AUTOTUNE,
            )
        batches = batches.batch(batch_size, drop_remainder=True)
        return batches.enumerate().map(
            lambda i, batch: augment_batch(*standardize(*batch), i, batch_seed),
            num_parallel_calls=AUTOTUNE,
        )

    return epoch_batches


def _batch_augmentation(config):
    """The per-batch augmentation of `config`: a function of a standardized
    batch `(images, labels)`, its index in the epoch and the epoch's batch
    seed."""

    def augment_batch(images, labels, index, seed):
        batch_seed = tf.random.experimental.stateless_fold_in(seed, index)
        crop_seed, flip_seed, cutout_seed, mixup_seed = augment.split_seed(
            batch_seed, 4
        )
        if config.pad_crop:
            images = augment.pad_and_crop(images, config.pad_crop, crop_seed)
        if config.flip:
            images = augment.random_flip(images, flip_seed)
        if config.cutout:
            images = augment.cutout(images, config.cutout, cutout_seed)
        if config.mixup:
            images, labels = augment.mixup(
                images, labels, config.mixup, mixup_seed
            )
        return images, labels

    return augment_batch


def _with_options(dataset):
    # Under MultiWorkerMirroredStrategy every worker reads the whole data
    # set and keeps its share of each global batch.
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.DATA
    )
    return dataset.with_options(options)
