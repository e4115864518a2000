"""Tests for train/data/sources.py on tiny files in the real formats (tests/datafiles.py)."""

import gzip
import os
import pickle

import datafiles
import numpy as np
import pytest
import tensorflow_datasets as tfds
from hypothesis import given, settings
from hypothesis import strategies as st

from train.data import sources
from train.data.sources import DataError, open_source

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


def assert_one_line_error(excinfo, *fragments):
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# --------------------------------------------------------------------------------------------
# The table


def test_datasets_table_is_consistent():
    for name, info in sources.DATASETS.items():
        assert info.name == name
        channels = 3 if info.image_shape is None else info.image_shape[-1]
        assert len(info.mean) == len(info.std) == channels
        assert all(0 < v < 1 for v in info.mean + info.std)
    assert sources.DATASETS["imagenet2012"].num_classes == 1000
    assert sources.DATASETS["cifar10"].std == (0.2023, 0.1994, 0.2010)


# --------------------------------------------------------------------------------------------
# ArraySource


def test_array_source_indexing():
    images, labels = datafiles.fake_split(5, (2, 3, 1), 3, seed=0)
    source = sources.ArraySource(images, labels, origin="five")
    assert len(source) == 5
    assert "five" in repr(source) and len(repr(source)) < 80
    for i in (0, 4, np.int32(2), np.int64(-1), -5):
        record = source[i]
        np.testing.assert_array_equal(record["image"], images[i])
        assert record["label"] == labels[i]
        assert record["image"].dtype == np.uint8 and record["label"].dtype == np.int64
    for i in (5, -6):
        with pytest.raises(IndexError):
            source[i]
    with pytest.raises(TypeError):
        source[1.0]
    # Records are read-only views so that a transform cannot corrupt the next epoch.
    with pytest.raises(ValueError):
        source[0]["image"][0, 0, 0] = 1


def test_array_source_validates():
    images, labels = datafiles.fake_split(4, (2, 2, 1), 2, seed=0)
    with pytest.raises(ValueError, match="different numbers"):
        sources.ArraySource(images, labels[:3])
    with pytest.raises(ValueError, match="uint8"):
        sources.ArraySource(images.astype(np.float32), labels)
    with pytest.raises(ValueError, match="uint8"):
        sources.ArraySource(images[..., 0], labels)


def test_array_source_is_a_grain_source():
    import grain.python as grain

    images, labels = datafiles.fake_split(6, (2, 2, 1), 3, seed=0)
    source = sources.ArraySource(images, labels)
    assert isinstance(source, grain.RandomAccessDataSource)
    dataset = grain.MapDataset.source(source).map(lambda r: r["label"])
    assert [int(dataset[i]) for i in range(6)] == labels.tolist()
    restored = pickle.loads(pickle.dumps(source))  # grain's worker processes pickle sources
    np.testing.assert_array_equal(restored[3]["image"], images[3])


# --------------------------------------------------------------------------------------------
# idx


def test_read_idx_follows_the_spec(tmp_path):
    # Written by hand from the format description, not by the helper under test.
    path = tmp_path / "a-idx2-ubyte"
    path.write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3, 4, 5, 6]))
    np.testing.assert_array_equal(sources.read_idx(path), [[1, 2, 3], [4, 5, 6]])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_round_trip(tmp_path, gz):
    data_dir = datafiles.write_idx_dir(tmp_path, num_train=30, num_test=12, gzip=gz, seed=3)
    for split, num, seed in (("train", 30, 3), ("test", 12, 4)):
        source = sources.load_idx(data_dir, split)
        images, labels = datafiles.fake_split(num, (28, 28), 10, seed)
        assert len(source) == num
        assert source.images.shape == (num, 28, 28, 1)
        np.testing.assert_array_equal(source.images[..., 0], images)
        np.testing.assert_array_equal(source.labels, labels)
        assert set(labels) == set(range(10))
        record = source[7]
        assert record["image"].shape == (28, 28, 1) and record["image"].dtype == np.uint8
        assert record["label"].dtype == np.int64 and record["label"] == labels[7]


def _idx_bytes(array):
    array = np.asarray(array, np.uint8)
    return bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, ">i4").tobytes() + array.tobytes()


GOOD = _idx_bytes(np.arange(24).reshape(2, 3, 4))


@pytest.mark.parametrize(
    "content, fragment",
    [
        (GOOD[:2], "truncated"),
        (GOOD[:9], "truncated header"),
        (GOOD[:-5], "truncated: header says 2x3x4 = 24 bytes of data, file has 19"),
        (b"\x01" + GOOD[1:], "magic"),
        (GOOD[:2] + b"\x0c" + GOOD[3:], "type code 0x0c"),
        (GOOD + b"\x00\x00\x00", "3 trailing bytes"),
    ],
    ids=["tiny", "header", "data", "magic", "dtype", "trailing"],
)
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_corruptions(tmp_path, content, fragment, gz):
    path = tmp_path / ("bad-idx3-ubyte.gz" if gz else "bad-idx3-ubyte")
    path.write_bytes(gzip.compress(content) if gz else content)
    with pytest.raises(DataError) as excinfo:
        sources.read_idx(path)
    assert_one_line_error(excinfo, str(path), fragment)


@pytest.mark.parametrize(
    "mangle",
    [lambda z: z[: len(z) // 2], lambda z: z[:20] + bytes(8) + z[28:], lambda z: b"not gzip"],
    ids=["cut", "garbled", "plain"],
)
def test_read_idx_corrupt_gzip(tmp_path, mangle):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(mangle(gzip.compress(_idx_bytes(np.arange(4000).reshape(40, 100)))))
    with pytest.raises(DataError) as excinfo:
        sources.read_idx(path)
    assert_one_line_error(excinfo, str(path), "gzip")


def test_load_idx_inconsistent_files(tmp_path):
    datafiles.write_idx_dir(tmp_path, num_train=20, num_test=10, gzip=False)
    labels_path = tmp_path / "t10k-labels-idx1-ubyte"
    datafiles.write_idx(labels_path, np.zeros(9, np.uint8))
    with pytest.raises(DataError) as excinfo:
        sources.load_idx(tmp_path, "test")
    assert_one_line_error(excinfo, "t10k-images-idx3-ubyte", str(labels_path), "10 images", "9")

    datafiles.write_idx(labels_path, np.full(10, 10, np.uint8))
    with pytest.raises(DataError) as excinfo:
        sources.load_idx(tmp_path, "test", num_classes=10)
    assert_one_line_error(excinfo, str(labels_path), "label 10 out of range")

    datafiles.write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((20, 28, 27), np.uint8))
    with pytest.raises(DataError) as excinfo:
        sources.load_idx(tmp_path, "train")
    assert_one_line_error(excinfo, "train-images-idx3-ubyte", "28 x 28")


def test_load_idx_prefers_whichever_exists(tmp_path):
    datafiles.write_idx_dir(tmp_path, num_train=10, num_test=10, gzip=True)
    os.rename(tmp_path / "t10k-labels-idx1-ubyte.gz", tmp_path / "labels.gz")
    with open(tmp_path / "t10k-labels-idx1-ubyte", "wb") as f:
        f.write(gzip.decompress((tmp_path / "labels.gz").read_bytes()))
    assert len(sources.load_idx(tmp_path, "test")) == 10


def test_load_idx_missing(tmp_path):
    with pytest.raises(DataError) as excinfo:
        sources.load_idx(tmp_path / "nowhere", "train", dataset="kmnist")
    assert_one_line_error(
        excinfo,
        str(tmp_path / "nowhere"),
        "no such directory",
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "--config.data_dir",
    )
    datafiles.write_idx_dir(tmp_path, num_train=10, num_test=10)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(DataError) as excinfo:
        sources.load_idx(tmp_path, "test", dataset="fashion_mnist")
    assert_one_line_error(
        excinfo, str(tmp_path), "t10k-labels-idx1-ubyte", "apt-get install dataset-fashion-mnist"
    )


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DIR), reason="dataset-fashion-mnist absent")
def test_debian_fashion_mnist():
    for split, num in (("train", 60000), ("test", 10000)):
        source, info = open_source("fashion_mnist", split, data_format="idx", data_dir=None)
        assert len(source) == num and info.num_classes == 10
        assert source[0]["image"].shape == info.image_shape
        np.testing.assert_array_equal(np.bincount(source.labels), [num // 10] * 10)
        # The table's normalisation constants are this data's (train) statistics.
        if split == "train":
            counts = np.bincount(source.images.ravel(), minlength=256)
            values = np.arange(256) / 255
            mean = counts @ values / counts.sum()
            std = np.sqrt(counts @ (values - mean) ** 2 / counts.sum())
            assert abs(mean - info.mean[0]) < 1e-4 and abs(std - info.std[0]) < 1e-4


# --------------------------------------------------------------------------------------------
# CIFAR pickles


def test_cifar_follows_the_layout(tmp_path):
    # Written by hand: each row holds the red, then green, then blue 32x32 plane, row-major.
    row = np.concatenate([np.full(1024, 10), np.full(1024, 20), np.arange(1024) % 256])
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": row[None].astype(np.uint8), b"labels": [7]}, f, protocol=2)
    image = sources.load_cifar(tmp_path, "test", num_classes=10)[0]["image"]
    assert image.shape == (32, 32, 3)
    assert (image[..., 0] == 10).all() and (image[..., 1] == 20).all()
    assert image[0, 1, 2] == 1 and image[1, 0, 2] == 32


@pytest.mark.parametrize("direct", [False, True], ids=["parent", "direct"])
@pytest.mark.parametrize("num_classes", [10, 100])
def test_cifar_round_trip(tmp_path, num_classes, direct):
    if num_classes == 10:
        data_dir = datafiles.write_cifar10_dir(tmp_path, num_train=23, num_test=11, seed=5)
        subdir = "cifar-10-batches-py"
    else:
        data_dir = datafiles.write_cifar100_dir(tmp_path, num_train=230, num_test=110, seed=5)
        subdir = "cifar-100-python"
    if direct:
        data_dir = os.path.join(data_dir, subdir)
    scale = 1 if num_classes == 10 else 10
    for split, num, seed in (("train", 23 * scale, 5), ("test", 11 * scale, 6)):
        source = sources.load_cifar(data_dir, split, num_classes=num_classes)
        images, labels = datafiles.fake_split(num, (32, 32, 3), num_classes, seed)
        assert len(source) == num
        np.testing.assert_array_equal(source.images, images)
        np.testing.assert_array_equal(source.labels, labels)
        assert source[-1]["image"].shape == (32, 32, 3)
        assert source[-1]["label"].dtype == np.int64


def _write_batch(path, obj):
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


CIFAR_ROW = np.zeros((2, 3072), np.uint8)


@pytest.mark.parametrize(
    "content, fragment",
    [
        (b"certainly not a pickle", "not a CIFAR pickle"),
        (pickle.dumps({b"data": CIFAR_ROW, b"labels": [0, 1]})[:-9], "not a CIFAR pickle"),
        ([1, 2], "expected a pickled dict"),
        ({b"labels": [0, 1]}, "missing key b'data'"),
        ({b"data": CIFAR_ROW}, "missing key b'labels'"),
        ({b"data": CIFAR_ROW[:, :3000], b"labels": [0, 1]}, "expected (N, 3072)"),
        ({b"data": CIFAR_ROW.astype(np.int32), b"labels": [0, 1]}, "expected uint8"),
        ({b"data": [[0] * 3072] * 2, b"labels": [0, 1]}, "expected uint8"),
        ({b"data": CIFAR_ROW, b"labels": [0]}, "2 images but 1 labels"),
        ({b"data": CIFAR_ROW, b"labels": [0, 10]}, "label 10 out of range"),
        ({b"data": CIFAR_ROW, b"labels": [-1, 0]}, "label -1 out of range"),
        ({b"data": CIFAR_ROW, b"labels": ["a", "b"]}, "not a list of integers"),
    ],
    ids=[
        "text",
        "truncated",
        "list",
        "no-data",
        "no-labels",
        "shape",
        "dtype",
        "nested-list",
        "count",
        "label-high",
        "label-negative",
        "label-str",
    ],
)
def test_cifar_corruptions(tmp_path, content, fragment):
    datafiles.write_cifar10_dir(tmp_path, num_train=10, num_test=4)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        _write_batch(path, content)
    with pytest.raises(DataError) as excinfo:
        sources.load_cifar(tmp_path, "train", num_classes=10)
    assert_one_line_error(excinfo, str(path), fragment)
    # The other split does not read the damaged file.
    assert len(sources.load_cifar(tmp_path, "test", num_classes=10)) == 4


def test_cifar100_fine_labels_bounded(tmp_path):
    datafiles.write_cifar100_dir(tmp_path, num_train=4, num_test=4)
    path = tmp_path / "cifar-100-python" / "test"
    _write_batch(path, {b"data": CIFAR_ROW, b"fine_labels": [3, 100], b"coarse_labels": [0, 0]})
    with pytest.raises(DataError) as excinfo:
        sources.load_cifar(tmp_path, "test", num_classes=100)
    assert_one_line_error(excinfo, str(path), "label 100 out of range for 100 classes")


def test_cifar_missing(tmp_path):
    with pytest.raises(DataError) as excinfo:
        sources.load_cifar(tmp_path / "nowhere", "train", num_classes=10)
    assert_one_line_error(
        excinfo,
        str(tmp_path / "nowhere"),
        "data_batch_1",
        "CIFAR-10 python version",
        "https://www.cs.toronto.edu/~kriz/cifar.html",
        "--config.data_dir",
    )
    # A CIFAR-10 directory is not CIFAR-100 data.
    datafiles.write_cifar10_dir(tmp_path, num_train=5, num_test=2)
    with pytest.raises(DataError) as excinfo:
        sources.load_cifar(tmp_path, "test", num_classes=100)
    assert_one_line_error(excinfo, "cifar-100-python", "CIFAR-100 python version")
    # One batch missing from an otherwise complete directory.
    path = tmp_path / "cifar-10-batches-py" / "data_batch_5"
    os.remove(path)
    with pytest.raises(DataError) as excinfo:
        sources.load_cifar(tmp_path, "train", num_classes=10)
    assert_one_line_error(excinfo, str(path), "no such file")


# --------------------------------------------------------------------------------------------
# tfds


@pytest.mark.parametrize(
    "name, shape, num_classes",
    [("mnist", (28, 28, 1), 10), ("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100)],
)
def test_tfds_source_under_mock_data(name, shape, num_classes):
    with tfds.testing.mock_data(num_examples=7):
        source = sources.TfdsSource(name, "train")
        assert len(source) == 7
        for i in (0, 6, np.int64(-1)):
            record = source[i]
            assert set(record) == {"image", "label"}
            assert record["image"].shape == shape and record["image"].dtype == np.uint8
            assert record["label"].dtype == np.int64 and 0 <= record["label"] < num_classes
        with pytest.raises(IndexError):
            source[7]


def test_open_source_tfds_imagenet_eval_split_under_mock_data():
    with tfds.testing.mock_data(num_examples=3):
        source, info = open_source("imagenet2012", "test", data_format="tfds", data_dir=None)
        assert source.split == "validation" and info.image_shape is None
        image = source[2]["image"]
        assert image.ndim == 3 and image.shape[-1] == 3 and image.dtype == np.uint8


@pytest.mark.parametrize("name", ["mnist", "cifar100"])
def test_tfds_source_reads_prepared_array_record(tmp_path, name):
    # The real path, not the mock: tfds reads array_record and decodes PNG without TensorFlow.
    datafiles.write_tfds_array_record(tmp_path, name, num_train=5, num_test=3, seed=2)
    source, info = open_source(name, "test", data_format="tfds", data_dir=str(tmp_path))
    images, labels = datafiles.fake_split(3, info.image_shape, info.num_classes, seed=3)
    assert len(source) == 3
    for i in range(3):
        np.testing.assert_array_equal(source[i]["image"], images[i])
        assert source[i]["label"] == labels[i] and source[i]["label"].dtype == np.int64
    restored = pickle.loads(pickle.dumps(source))  # grain's worker processes pickle sources
    np.testing.assert_array_equal(restored[2]["image"], images[2])


def test_tfds_not_prepared(tmp_path, monkeypatch):
    with pytest.raises(DataError) as excinfo:
        sources.TfdsSource("cifar10", "train", data_dir=tmp_path)
    assert_one_line_error(
        excinfo,
        "'cifar10'",
        str(tmp_path),
        "tfds build cifar10 --file_format=array_record",
        "--config.data_dir",
        "data_format=cifar_pickle",
    )
    # data_dir=None names tfds' default directory.
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "default"))
    with pytest.raises(DataError) as excinfo:
        open_source("mnist", "train", data_format="tfds", data_dir=None)
    assert_one_line_error(excinfo, "'mnist'", str(tmp_path / "default"), "data_format=idx")


def test_tfds_prepared_as_tfrecord(tmp_path):
    # Only the metadata (the records need TensorFlow to write): tfds refuses on reading it.
    builder = tfds.builder("mnist", data_dir=str(tmp_path))
    os.makedirs(builder.data_dir)
    template = tfds.core.ShardedFileTemplate(
        data_dir=builder.data_dir, dataset_name="mnist", split="test", filetype_suffix="tfrecord"
    )
    split = tfds.core.SplitInfo(
        name="test", shard_lengths=[3], num_bytes=0, filename_template=template
    )
    builder.info.set_splits(tfds.core.SplitDict([split]))
    builder.info.write_to_directory(builder.data_dir)
    with pytest.raises(DataError) as excinfo:
        sources.TfdsSource("mnist", "test", data_dir=tmp_path)
    assert_one_line_error(excinfo, str(tmp_path), "another format", "tfds build mnist")


# --------------------------------------------------------------------------------------------
# open_source


def test_open_source_on_disk_formats(tmp_path):
    datafiles.write_idx_dir(tmp_path / "k", num_train=20, num_test=10)
    source, info = open_source("kmnist", "test", data_format="idx", data_dir=str(tmp_path / "k"))
    assert len(source) == 10 and info.name == "kmnist"
    datafiles.write_cifar100_dir(tmp_path / "c", num_train=5, num_test=3)
    source, info = open_source(
        "cifar100", "train", data_format="cifar_pickle", data_dir=str(tmp_path / "c")
    )
    assert len(source) == 5 and info.num_classes == 100


@pytest.mark.parametrize(
    "dataset, split, data_format, data_dir, error, fragments",
    [
        ("svhn", "train", "tfds", None, ValueError, ["svhn", "cifar10", "mnist"]),
        ("mnist", "train", "csv", None, ValueError, ["csv", "tfds", "idx", "cifar_pickle"]),
        ("mnist", "valid", "idx", "/x", ValueError, ["valid", "train", "test"]),
        ("cifar10", "train", "idx", "/x", ValueError, ["idx", "mnist", "cifar_pickle"]),
        ("imagenet2012", "test", "cifar_pickle", "/x", ValueError, ["cifar10", "tfds"]),
        ("mnist", "train", "idx", None, DataError, ["mnist", "--config.data_dir"]),
        ("cifar10", "test", "cifar_pickle", None, DataError, ["CIFAR-10", "--config.data_dir"]),
    ],
)
def test_open_source_argument_errors(dataset, split, data_format, data_dir, error, fragments):
    with pytest.raises(error) as excinfo:
        open_source(dataset, split, data_format=data_format, data_dir=data_dir)
    assert_one_line_error(excinfo, *fragments)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=64), gz=st.booleans())
def test_random_bytes_as_idx_give_data_error_or_an_array(tmp_path_factory, data, gz):
    """Whatever the bytes, read_idx returns the array they describe or one DataError line
    naming the file; never another exception."""
    path = tmp_path_factory.mktemp("fuzz") / ("f.gz" if gz else "f")
    path.write_bytes(gzip.compress(data) if gz else data)
    try:
        array = sources.read_idx(path)
    except sources.DataError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return
    assert array.dtype == np.uint8
    assert array.size == len(data) - 4 - 4 * array.ndim
