import numpy as np
import pytest
import requests
import tensorflow as tf
import tensorflow_datasets as tfds

from keras_seqnorm import cli
from keras_seqnorm.training import data as data_lib
from keras_seqnorm.training.config import Config
from keras_seqnorm.training.config import resolve_data_fields
from keras_seqnorm.training.data import DatasetUnavailableError
from keras_seqnorm.training.data import load_data
from keras_seqnorm.training.data import stratified_split

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning:tensorflow_datasets.*"
)


CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def _load(**fields):
    return load_data(resolve_data_fields(Config(**fields)))


def _batches(dataset):
    return [(x.numpy(), y.numpy()) for x, y in dataset]


def test_stratified_split_keeps_class_proportions():
    labels = np.repeat(np.arange(4), [50, 30, 15, 5])
    kept, held = stratified_split(labels, 20)
    assert len(held) == 20 and len(kept) == 80
    assert not set(kept) & set(held)
    assert sorted(np.concatenate([kept, held])) == list(range(100))
    # 20 % of each class.
    assert list(np.bincount(labels[held])) == [10, 6, 3, 1]
    again, _ = stratified_split(labels, 20)
    np.testing.assert_array_equal(kept, again)
    other, _ = stratified_split(labels, 20, seed=1)
    assert not np.array_equal(kept, other)


def test_stratified_split_rounds_by_largest_remainder():
    labels = np.repeat(np.arange(3), [5, 3, 2])
    _, held = stratified_split(labels, 5)
    # Quotas 2.5, 1.5, 1.0: floors 2, 1, 1; the one left goes to the
    # first of the largest remainders.
    assert list(np.bincount(labels[held], minlength=3)) == [3, 1, 1]
    with pytest.raises(ValueError, match="Received: size=10"):
        stratified_split(labels, 10)


def test_digits_pipeline():
    data = _load(dataset="digits", batch_size=64)
    assert data.input_shape == (16, 16, 1) and data.num_classes == 10
    assert (data.train_size, data.validation_size, data.test_size) == (
        1257, 180, 360)
    assert data.steps_per_epoch == 1257 // 64
    train_batches = _batches(data.train)
    assert len(train_batches) == data.steps_per_epoch
    for images, labels in train_batches:
        assert images.shape == (64, 16, 16, 1)
        np.testing.assert_array_equal(labels.sum(axis=1), 1)
    images = np.concatenate([x for x, _ in train_batches])
    # Standardized with the training split's statistics.
    assert abs(images.mean()) < 0.05 and abs(images.std() - 1) < 0.05
    test = _batches(data.test)
    assert [len(x) for x, _ in test] == [64] * 5 + [40]
    counts = np.concatenate([y for _, y in test]).sum(axis=0)
    assert counts.min() >= 35 and counts.max() <= 37  # stratified


def test_digits_image_size_and_validation_on_test():
    data = _load(dataset="digits", image_size=8, validation_size=0,
                 batch_size=100)
    assert data.input_shape == (8, 8, 1)
    assert data.validation_is_test and data.train_size == 1437
    val = np.concatenate([x for x, _ in _batches(data.validation)])
    test = np.concatenate([x for x, _ in _batches(data.test)])
    np.testing.assert_array_equal(val, test)


def test_cifar10_pipeline_against_mock_data():
    with tfds.testing.mock_data(num_examples=100):
        data = _load(dataset="cifar10", validation_size=20, batch_size=16,
                     flip=True, pad_crop=4, cutout=16, randaugment=(1, 6))
        assert data.input_shape == (32, 32, 3) and data.num_classes == 10
        assert (data.train_size, data.validation_size, data.test_size) == (
            80, 20, 100)
        train_batches = _batches(data.train)
        val = _batches(data.validation)
    assert data.steps_per_epoch == 5 and len(train_batches) == 5
    for images, labels in train_batches:
        assert images.shape == (16, 32, 32, 3) and labels.shape == (16, 10)
    # Cutout: each image has a zero square (16 x 16 unless clipped).
    zeros = [np.all(x == 0, axis=-1).sum() for x, _ in train_batches]
    assert min(zeros) >= 16 * 16 * 16 // 4
    assert sum(len(x) for x, _ in val) == 20


def test_mnist_pipeline_validates_on_test():
    with tfds.testing.mock_data(num_examples=40):
        data = _load(dataset="mnist", validation_size=0, batch_size=16)
        batches = _batches(data.train)
    assert data.input_shape == (28, 28, 1) and data.validation_is_test
    assert len(batches) == data.steps_per_epoch == 2


def test_imagenet_crops_against_mock_data():
    with tfds.testing.mock_data(num_examples=8):
        data = _load(dataset="imagenet2012", manual_dir="/nonexistent",
                     image_size=32, batch_size=4, mixup=0.2)
        images, labels = _batches(data.train)[0]
        test_images, _ = _batches(data.test)[0]
    assert data.num_classes == 1000
    assert images.shape == (4, 32, 32, 3) == test_images.shape
    np.testing.assert_allclose(labels.sum(axis=1), 1, rtol=1e-5)


def test_imagenet_needs_manual_dir(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="--manual-dir"):
        _load(dataset="imagenet2012", data_dir=str(tmp_path))


def test_missing_data_set_without_download(tmp_path):
    with pytest.raises(DatasetUnavailableError) as info:
        _load(dataset="cifar10", data_dir=str(tmp_path), download=False)
    assert f"--data-dir {tmp_path}" in str(info.value)
    assert "drop --no-download (or give --download)" in str(info.value)
    assert str(info.value).endswith(f"Received: data_dir='{tmp_path}'")


@pytest.fixture
def network(monkeypatch):
    """The URLs TensorFlow Datasets asks `requests` for; each is refused
    as an offline machine refuses it."""
    urls = []

    def refuse(self, url, *args, **kwargs):
        urls.append(url)
        raise requests.ConnectionError(f"Offline: no route to {url}")

    monkeypatch.setattr(requests.Session, "get", refuse)
    return urls


def test_cifar10_real_builder_runs_up_to_the_network(tmp_path, network):
    # TensorFlow Datasets' own builder, download manager and downloader:
    # a package they need and lack (importlib_resources for tfds 4.9.10)
    # fails here, before any download.
    with pytest.raises(DatasetUnavailableError) as info:
        _load(dataset="cifar10", data_dir=str(tmp_path))
    assert network == [CIFAR10_URL]
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        f"The data set 'cifar10' is not prepared in --data-dir {tmp_path} "
        f"and could not be downloaded (ConnectionError: Offline: no route "
        f"to {CIFAR10_URL}). Check the network and rerun, or prepare it "
        "where the internet is reachable (`tfds build cifar10 --data_dir "
        "DIR`) and point --data-dir at DIR."
    )
    assert message.endswith(f"Received: data_dir='{tmp_path}'")


def _cifar10_archive(root, rng):
    """A small CIFAR-10 binary archive, as extracted: 2 images in each of
    the 5 training files, 4 in the test file. Returns the test images and
    labels."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    names = "airplane automobile bird cat deer dog frog horse ship truck"
    (folder / "batches.meta.txt").write_text("\n".join(names.split()))
    files = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for name in files:
        count = 4 if name == "test_batch.bin" else 2
        labels = rng.integers(0, 10, count, dtype=np.uint8)
        # One label byte, then the red, green and blue 32x32 planes.
        planes = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
        (folder / name).write_bytes(b"".join(
            label.tobytes() + image.tobytes()
            for label, image in zip(labels, planes)
        ))
    return planes.transpose(0, 2, 3, 1), labels


def test_cifar10_real_builder_prepares_the_served_archive(
    tmp_path, network, monkeypatch
):
    # The download replaced by a local archive: TensorFlow Datasets' real
    # extraction layout, example generation, encoding and shard writing.
    served = []
    images, labels = _cifar10_archive(
        tmp_path / "served", np.random.default_rng(0)
    )

    def serve(self, url):
        served.append(url)
        return tmp_path / "served"

    monkeypatch.setattr(
        tfds.download.DownloadManager, "download_and_extract", serve
    )
    fields = dict(dataset="cifar10", data_dir=str(tmp_path / "data"),
                  validation_size=2, batch_size=4)
    data = _load(**fields)
    assert served == [CIFAR10_URL] and network == []
    assert data.input_shape == (32, 32, 3) and data.num_classes == 10
    assert (data.train_size, data.validation_size, data.test_size) == (
        8, 2, 4)
    assert len(_batches(data.train)) == data.steps_per_epoch == 2
    # The test split holds the served images (in TensorFlow Datasets'
    # order), standardized with CIFAR-10's statistics.
    mean, std = data_lib.DATASET_DEFAULTS["cifar10"][3]
    (test_images, test_labels), = _batches(data.test)
    pixels = np.rint(test_images * np.float32(std) + np.float32(mean))
    served_order = sorted(range(4), key=lambda i: images[i].tobytes())
    loaded_order = sorted(
        range(4), key=lambda i: pixels[i].astype(np.uint8).tobytes()
    )
    np.testing.assert_array_equal(
        pixels[loaded_order], images[served_order].astype(np.float32)
    )
    np.testing.assert_array_equal(
        test_labels[loaded_order].argmax(axis=1), labels[served_order]
    )
    # Prepared once: the next run reads it without a download.
    assert _load(**fields).train_size == 8 and len(served) == 1


def test_missing_package_is_named(tmp_path, monkeypatch):
    def missing(self, *args, **kwargs):
        raise ModuleNotFoundError("No module named 'importlib_resources'")

    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", missing
    )
    with pytest.raises(
        DatasetUnavailableError,
        match=r"^TensorFlow Datasets cannot prepare 'mnist': a package it "
        r"needs is missing \(ModuleNotFoundError: No module named "
        r"'importlib_resources'\)\. Install it \(pip install "
        r"'keras-seqnorm\[train\]'.*Received: data_dir=",
    ):
        _load(dataset="mnist", data_dir=str(tmp_path))


def test_data_dir_that_cannot_be_written(tmp_path, network):
    not_a_directory = tmp_path / "file"
    not_a_directory.write_text("")
    with pytest.raises(
        DatasetUnavailableError,
        match=r"could not be written in --data-dir .*NotADirectoryError.*"
        r"Give --data-dir a directory you can write to\. Received: ",
    ):
        _load(dataset="mnist", data_dir=str(not_a_directory))
    assert network == []


def test_imagenet_archives_missing_from_manual_dir(tmp_path, network):
    with pytest.raises(
        DatasetUnavailableError,
        match=r"^imagenet2012 could not be prepared from --manual-dir "
        r".*ILSVRC2012_img_train\.tar and ILSVRC2012_img_val\.tar",
    ):
        _load(dataset="imagenet2012", data_dir=str(tmp_path / "data"),
              manual_dir=str(tmp_path / "archives"))
    assert network == []


def test_failed_download_is_one_clear_line(tmp_path, monkeypatch, capsys):
    def refuse(self, *args, **kwargs):
        raise ConnectionError("Failed to establish a new connection\nmore")

    monkeypatch.setattr(
        tfds.core.DatasetBuilder, "download_and_prepare", refuse
    )
    with pytest.raises(SystemExit) as info:
        cli.run_command(["train", "--dataset", "cifar100", "--data-dir",
                         str(tmp_path), "--run-dir", str(tmp_path / "run")])
    assert info.value.code == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error
    assert f"--data-dir {tmp_path}" in error
    assert "ConnectionError: Failed to establish a new connection" in error


def test_batch_larger_than_training_split():
    with pytest.raises(ValueError, match="Received: batch_size=2000"):
        _load(dataset="digits", batch_size=2000)
    with pytest.raises(ValueError, match="Received: validation_size=1437"):
        _load(dataset="digits", validation_size=1437)


def test_dataset_defaults():
    assert set(data_lib.DATASET_DEFAULTS) == {
        "digits", "mnist", "cifar10", "cifar100", "imagenet2012"}
    config = resolve_data_fields(Config(dataset="cifar100"))
    assert (config.image_size, config.validation_size) == (32, 5000)


def test_each_epoch_is_a_function_of_the_seed_and_the_epoch():
    fields = dict(dataset="digits", batch_size=64, flip=True, pad_crop=2,
                  cutout=4, mixup=0.2, randaugment=(1, 6), seed=3)
    data = _load(**fields)
    first = _batches(data.epoch_dataset(1))
    assert len(first) == data.steps_per_epoch
    # A new pipeline, as a resumed run builds: the same batches.
    again = _batches(_load(**fields).epoch_dataset(1))
    for (x, y), (x2, y2) in zip(first, again):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    other_epoch = _batches(data.epoch_dataset(2))
    assert not np.array_equal(first[0][0], other_epoch[0][0])
    other_seed = _batches(_load(**{**fields, "seed": 4}).epoch_dataset(1))
    assert not np.array_equal(first[0][0], other_seed[0][0])
    # One data set for every epoch of `fit`, reading the epoch variable.
    epoch = tf.Variable(0, dtype=tf.int64)
    dataset = data.epoch_dataset(epoch)
    epoch.assign(1)
    for (x, _), (x2, _) in zip(first, _batches(dataset)):
        np.testing.assert_array_equal(x, x2)


def test_an_epoch_is_a_permutation_of_the_training_split():
    data = _load(dataset="digits", batch_size=419)  # 3 batches, no rest
    plain = load_data(resolve_data_fields(Config(batch_size=1257)))
    (images, labels), = _batches(plain.epoch_dataset(0))
    epochs = []
    for epoch in (0, 1):
        batches = _batches(data.epoch_dataset(epoch))
        epochs.append(np.concatenate([x for x, _ in batches]))
        assert epochs[-1].shape == images.shape
        order = lambda a: a[np.lexsort(a.reshape(len(a), -1).T)]  # noqa: E731
        np.testing.assert_array_equal(order(epochs[-1]), order(images))
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled
