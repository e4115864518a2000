"""Random-access image-classification data sources for the training programs, with no TensorFlow.

Each source has `__len__` and `__getitem__(int)` (grain's RandomAccessDataSource protocol) and
returns ``{"image": uint8 (H, W, C), "label": int64 scalar}``. Three on-disk formats are read:
the MNIST family's idx files, the CIFAR "python version" pickles, and tfds datasets prepared in
array_record format (the only tfds format readable without TensorFlow). `open_source` picks one
from the training config's ``dataset``, ``data_format`` and ``data_dir``.
"""

from __future__ import annotations

import dataclasses
import glob
import gzip
import operator
import os
import pickle
import zlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

__all__ = [
    "CIFAR_DATASETS",
    "DATA_FORMATS",
    "DATASETS",
    "IDX_DATASETS",
    "SPLITS",
    "ArraySource",
    "DataError",
    "DatasetInfo",
    "TfdsSource",
    "load_cifar",
    "load_idx",
    "formats_for",
    "open_source",
    "read_idx",
]

SPLITS = ("train", "test")
DATA_FORMATS = ("tfds", "idx", "cifar_pickle")


class DataError(ValueError):
    """Data files that are missing, corrupt or inconsistent; the message is one line."""


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What the trainer needs to know about a dataset before reading it.

    Attributes:
      name: the tfds name, also the key in `DATASETS`.
      num_classes: labels are in ``[0, num_classes)``.
      image_shape: ``(H, W, C)``, or None where images vary in size (ImageNet).
      mean: per-channel mean of the pixels in [0, 1] units, for normalisation.
      std: per-channel standard deviation in the same units.
    """

    name: str
    num_classes: int
    image_shape: tuple[int, int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in [
        DatasetInfo("mnist", 10, (28, 28, 1), (0.1307,), (0.3081,)),
        DatasetInfo("fashion_mnist", 10, (28, 28, 1), (0.2860,), (0.3530,)),
        DatasetInfo("kmnist", 10, (28, 28, 1), (0.1918,), (0.3483,)),
        # The AdderNet reference's numbers (its std is not the per-pixel std of CIFAR-10,
        # 0.247/0.243/0.261, but matching it matters more for reproducing its accuracy).
        DatasetInfo("cifar10", 10, (32, 32, 3), (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
        DatasetInfo(
            "cifar100", 100, (32, 32, 3), (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
        ),
        DatasetInfo("imagenet2012", 1000, None, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    ]
}

# Which on-disk formats each dataset can be read from besides tfds.
# The datasets each non-tfds format holds (tfds reads every one of `DATASETS`).
IDX_DATASETS = ("mnist", "fashion_mnist", "kmnist")
CIFAR_DATASETS = ("cifar10", "cifar100")


def formats_for(dataset: str) -> tuple[str, ...]:
    """The `DATA_FORMATS` a dataset can be read in."""
    return tuple(
        f
        for f in DATA_FORMATS
        if f == "tfds"
        or (f == "idx" and dataset in IDX_DATASETS)
        or (f == "cifar_pickle" and dataset in CIFAR_DATASETS)
    )


# The evaluation split's tfds name where it is not "test".
_TFDS_EVAL_SPLIT = {"imagenet2012": "validation"}

_DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
_IDX_HOMEPAGES = {
    "mnist": "http://yann.lecun.com/exdb/mnist/",
    "fashion_mnist": "https://github.com/zalandoresearch/fashion-mnist",
    "kmnist": "https://github.com/rois-codh/kmnist",
}
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"


def _one_line(text: object) -> str:
    """Folds a foreign message (gzip's, pickle's) so that a DataError stays on one line."""
    return " ".join(str(text).split())


def _validate_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split={split!r}: expected one of {', '.join(SPLITS)}")


# --------------------------------------------------------------------------------------------
# In-memory source


def _record_index(index, n: int) -> int:
    """``index`` of a source of ``n`` records as 0..n-1 (negative counts from the end); an
    IndexError outside [-n, n), a TypeError for what is not an integer (operator.index
    accepts numpy integers and rejects floats and slices)."""
    i = operator.index(index)
    if not -n <= i < n:
        raise IndexError(f"index {i} out of range for {n} examples")
    return i % n


class ArraySource:
    """A data source over in-memory arrays: uint8 images (N, H, W, C) and integer labels (N,).

    The arrays are kept as read-only views, so a transform that writes into a record fails
    instead of silently changing the dataset for the next epoch.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, origin: str = "in-memory"):
        images = np.asarray(images)
        labels = np.asarray(labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(f"{images.shape=} {images.dtype=}: expected uint8 (N, H, W, C)")
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"{labels.shape=} {labels.dtype=}: expected integer labels (N,)")
        if len(images) != len(labels):
            raise ValueError(f"{images.shape=} {labels.shape=}: different numbers of examples")
        self.images = images.view()
        self.images.flags.writeable = False
        self.labels = labels.astype(np.int64)
        self.labels.flags.writeable = False
        self.origin = origin

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        i = _record_index(index, len(self.labels))
        return {"image": self.images[i], "label": self.labels[i]}

    def __repr__(self) -> str:
        # grain compares reprs when restoring a checkpoint, so the origin is part of it.
        return f"ArraySource({self.origin!r}, {len(self)} x {self.images.shape[1:]})"


# --------------------------------------------------------------------------------------------
# idx (the MNIST family)

_IDX_UINT8 = 0x08
_IDX_TYPE_NAMES = {0x09: "int8", 0x0B: "int16", 0x0C: "int32", 0x0D: "float32", 0x0E: "float64"}


def _read_file(path: str) -> bytes:
    """The file's bytes, decompressed if its name ends in .gz; DataError if unreadable."""
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                return f.read()
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: corrupt gzip stream ({_one_line(e)})") from e


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Reads an array of unsigned bytes from an idx file (gzipped if the name ends in .gz).

    The format (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type code (0x08 for
    unsigned bytes, the only type the MNIST family uses), the number of dimensions, each
    dimension as a big-endian int32, then the data in C order.

    Raises:
      DataError: the file is missing, not valid gzip, or not a well-formed uint8 idx file.
    """
    path = os.fspath(path)
    data = _read_file(path)
    if len(data) < 4:
        raise DataError(f"{path}: truncated: {len(data)} bytes, shorter than the 4-byte magic")
    zero0, zero1, type_code, ndim = data[:4]
    if zero0 or zero1:
        raise DataError(
            f"{path}: not an idx file: magic number {data[:4].hex()} does not start with 0000"
        )
    if type_code != _IDX_UINT8:
        name = _IDX_TYPE_NAMES.get(type_code, "unknown")
        raise DataError(
            f"{path}: unsupported idx type code 0x{type_code:02x} ({name}); "
            "only 0x08 (unsigned byte) is supported"
        )
    header_size = 4 + 4 * ndim
    if len(data) < header_size:
        raise DataError(
            f"{path}: truncated header: {ndim} dimensions need {header_size} bytes, "
            f"file has {len(data)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, ">i4", count=ndim, offset=4))
    if any(d < 0 for d in shape):
        raise DataError(f"{path}: negative dimension in header {shape}")
    expected = int(np.prod(shape, dtype=np.int64))
    actual = len(data) - header_size
    dims = "x".join(map(str, shape))
    if actual < expected:
        raise DataError(
            f"{path}: truncated: header says {dims} = {expected} bytes of data, file has {actual}"
        )
    if actual > expected:
        raise DataError(
            f"{path}: {actual - expected} trailing bytes after the {dims} = {expected} bytes "
            "of data the header describes"
        )
    return np.frombuffer(data, np.uint8, offset=header_size).reshape(shape)


def _idx_file(directory: str, stem: str) -> str | None:
    # Uncompressed first: it is the faster to read when someone has gunzipped a copy.
    for name in (stem, stem + ".gz"):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def _idx_how_to(dataset: str | None) -> str:
    site = _IDX_HOMEPAGES.get(dataset or "", "the dataset's site")
    how = f"put the four idx files from {site} in a directory and pass --config.data_dir=DIR"
    if dataset == "fashion_mnist":
        how = (
            f"`apt-get install dataset-fashion-mnist` puts them in {_DEBIAN_FASHION_MNIST}; "
            f"or {how}"
        )
    return how


def load_idx(
    directory: str | os.PathLike,
    split: str,
    *,
    num_classes: int = 10,
    dataset: str | None = None,
) -> ArraySource:
    """Loads a split of an MNIST-family dataset from its four idx files.

    Args:
      directory: holds ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte``, each plain or ``.gz``.
      split: "train" or "test".
      num_classes: labels must lie in ``[0, num_classes)``.
      dataset: the dataset's name, only to say in an error how to get the files.

    Returns:
      An `ArraySource` of (N, 28, 28, 1) images.

    Raises:
      DataError: files missing, corrupt or inconsistent with each other.
    """
    _validate_split(split)
    directory = os.fspath(directory)
    prefix = "train" if split == "train" else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    paths = [_idx_file(directory, stem) for stem in stems]
    if None in paths:
        wanted = " and ".join(f"{stem}[.gz]" for stem in stems)
        where = directory if os.path.isdir(directory) else f"{directory} (no such directory)"
        raise DataError(
            f"no {dataset or 'idx'} {split} data in {where}: wanted {wanted}; "
            f"{_idx_how_to(dataset)}"
        )
    images_path, labels_path = paths
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: expected N x 28 x 28 images, header says {images.shape}")
    if labels.ndim != 1:
        raise DataError(f"{labels_path}: expected a 1-D array of labels, got {labels.shape}")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    if len(labels) and labels.max() >= num_classes:
        raise DataError(
            f"{labels_path}: label {labels.max()} out of range for {num_classes} classes"
        )
    return ArraySource(images[..., None], labels, origin=f"{split} from {images_path}")


# --------------------------------------------------------------------------------------------
# CIFAR python-version pickles


@dataclasses.dataclass(frozen=True)
class _CifarLayout:
    subdir: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: bytes
    tarball: str


_CIFAR_LAYOUTS = {
    10: _CifarLayout(
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)),
        "test_batch",
        b"labels",
        "CIFAR-10 python version",
    ),
    100: _CifarLayout(
        "cifar-100-python", ("train",), "test", b"fine_labels", "CIFAR-100 python version"
    ),
}


def _read_cifar_batch(path: str, label_key: bytes, num_classes: int):
    """One pickle's data as (N, 3072) uint8 and labels as int64 (N,); DataError if malformed."""
    try:
        with open(path, "rb") as f:
            # The files were pickled by Python 2: encoding="bytes" keeps their str keys as bytes.
            batch = pickle.load(f, encoding="bytes")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except Exception as e:
        # pickle documents UnpicklingError, EOFError, AttributeError, ImportError, IndexError
        # and "other exceptions" for bad input; all of them mean the same thing here.
        raise DataError(f"{path}: not a CIFAR pickle ({type(e).__name__}: {_one_line(e)})") from e
    if not isinstance(batch, Mapping):
        raise DataError(f"{path}: expected a pickled dict, got {type(batch).__name__}")
    for key in (b"data", label_key):
        if key not in batch:
            raise DataError(f"{path}: missing key {key!r} (has {sorted(batch, key=repr)})")
    data, labels = batch[b"data"], batch[label_key]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        shape, dtype = getattr(data, "shape", None), getattr(data, "dtype", type(data).__name__)
        raise DataError(f"{path}: b'data' is {dtype} {shape}, expected uint8 (N, 3072)")
    if data.shape[1] != 3 * 32 * 32:
        raise DataError(f"{path}: b'data' has shape {data.shape}, expected (N, 3072)")
    try:
        labels = np.asarray(labels)
    except Exception as e:  # Ragged or exotic objects: malformed either way.
        raise DataError(f"{path}: {label_key!r} is not a list of integers ({_one_line(e)})") from e
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{path}: {label_key!r} is not a list of integers")
    if len(labels) != len(data):
        raise DataError(f"{path}: {len(data)} images but {len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        bad = labels.min() if labels.min() < 0 else labels.max()
        raise DataError(f"{path}: label {bad} out of range for {num_classes} classes")
    return data, labels.astype(np.int64)


def load_cifar(directory: str | os.PathLike, split: str, *, num_classes: int) -> ArraySource:
    """Loads a split of CIFAR-10 or CIFAR-100 from the "python version" pickles.

    The files are pickles, and unpickling can run arbitrary code: use this only on files from
    a trusted source (the tarballs from https://www.cs.toronto.edu/~kriz/cifar.html). Nothing
    but the files named below is ever unpickled.

    Args:
      directory: ``cifar-10-batches-py/`` (``data_batch_1`` to ``_5``, ``test_batch``) or
        ``cifar-100-python/`` (``train``, ``test``), or the directory that contains it.
      split: "train" or "test".
      num_classes: 10 or 100; picks the layout and bounds the labels.

    Returns:
      An `ArraySource` of (N, 32, 32, 3) images.

    Raises:
      DataError: files missing, not pickles of the expected shape, or labels out of range.
    """
    _validate_split(split)
    if num_classes not in _CIFAR_LAYOUTS:
        raise ValueError(f"{num_classes=}: expected 10 (CIFAR-10) or 100 (CIFAR-100)")
    layout = _CIFAR_LAYOUTS[num_classes]
    directory = os.fspath(directory)
    nested = os.path.join(directory, layout.subdir)
    pickle_dir = nested if os.path.isdir(nested) else directory
    names = layout.train_files if split == "train" else (layout.test_file,)
    all_names = (*layout.train_files, layout.test_file)
    if not any(os.path.isfile(os.path.join(pickle_dir, name)) for name in all_names):
        where = directory if os.path.isdir(directory) else f"{directory} (no such directory)"
        raise DataError(
            f"no CIFAR-{num_classes} data in {where} nor in {nested}: wanted "
            f"{', '.join(names)}; download the {layout.tarball!r} tarball from {_CIFAR_URL} "
            "on a machine with network, untar it and pass --config.data_dir=DIR (the untarred "
            f"{layout.subdir} or the directory holding it)"
        )
    batches = [
        _read_cifar_batch(os.path.join(pickle_dir, name), layout.label_key, num_classes)
        for name in names
    ]
    data = np.concatenate([d for d, _ in batches])
    labels = np.concatenate([lab for _, lab in batches])
    # Rows are the red, green and blue 32x32 planes one after another (CHW); models want HWC.
    images = np.ascontiguousarray(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
    return ArraySource(images, labels, origin=f"{split} from {pickle_dir}")


# --------------------------------------------------------------------------------------------
# tfds


def _default_tfds_data_dir() -> str:
    # tfds' own default (tensorflow_datasets.core.constants.get_default_data_dir).
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(
        os.path.expanduser("~"), "tensorflow_datasets"
    )


def _tfds_how_to(name: str, data_dir: str, default: bool) -> str:
    base = name.split(":")[0].split("/")[0]  # "mnist:3.0.1" and "name/config" live in name/
    where = (
        f"{data_dir} (tfds' default: $TFDS_DATA_DIR or ~/tensorflow_datasets)"
        if default
        else data_dir
    )
    prepared = glob.glob(os.path.join(data_dir, base, "**", "dataset_info.json"), recursive=True)
    found = " (it holds a copy in another format, e.g. tfrecord)" if prepared else ""
    how = (
        f"tfds dataset {name!r} is not prepared in array_record format in {where}{found}, the "
        f"only format tfds reads without TensorFlow: prepare it with `tfds build {name} "
        "--file_format=array_record` on a machine with TensorFlow and network"
    )
    if base == "imagenet2012":
        how += " (and ImageNet's tarballs in tfds' manual_dir)"
    how += f", copy DIR/{base} to this machine and pass --config.data_dir=DIR"
    if base in IDX_DATASETS:
        how += "; or read the original idx files with --config.data_format=idx"
    elif base in CIFAR_DATASETS:
        how += "; or read the original pickles with --config.data_format=cifar_pickle"
    return how


class TfdsSource:
    """A tfds dataset prepared in array_record format, read by `tfds.data_source` (no TF).

    Under `tfds.testing.mock_data` this reads the mock's random examples, which is how the
    trainer's tests run. The wrapped source's batched ``__getitems__`` is not used because
    the mock's raises TypeError; records are read one by one.
    """

    def __init__(self, name: str, split: str, data_dir: str | os.PathLike | None = None):
        default = data_dir is None
        # An explicit data_dir makes tfds look in one place, the one the error names; with
        # None tfds would also request array_record itself and fail in other ways.
        data_dir = _default_tfds_data_dir() if default else os.fspath(data_dir)
        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except (NotImplementedError, KeyError) as e:
            # What tfds 4.9.10 raises here without TensorFlow (measured): NotImplementedError
            # "Random access data source for file format FileFormat.TFRECORD is not supported"
            # both when nothing is prepared in data_dir and when a tfrecord copy is; KeyError
            # "`splits` is empty" when asked for array_record where nothing is prepared.
            raise DataError(_tfds_how_to(name, data_dir, default)) from e
        self.name = name
        self.split = split
        self.data_dir = data_dir

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        record = self._source[_record_index(index, len(self._source))]
        image = np.asarray(record["image"], dtype=np.uint8)
        if image.ndim == 2:
            image = image[..., None]
        return {"image": image, "label": np.int64(record["label"])}

    def __repr__(self) -> str:
        return f"TfdsSource({self.name!r}, {self.split!r}, data_dir={self.data_dir!r})"


# --------------------------------------------------------------------------------------------
# Entry point


def open_source(
    dataset: str, split: str, *, data_format: str, data_dir: str | None
) -> tuple[Any, DatasetInfo]:
    """Opens a split of a dataset in the given format.

    Args:
      dataset: a key of `DATASETS`.
      split: "train" or "test" (ImageNet's "test" is its tfds "validation" split).
      data_format: "tfds" (any dataset, prepared as array_record), "idx" (MNIST family) or
        "cifar_pickle" (CIFAR-10/100).
      data_dir: where the files are; None means tfds' default for "tfds" and Debian's
        /usr/share/datasets/fashion-mnist for fashion_mnist in "idx".

    Returns:
      The source (an `ArraySource` or `TfdsSource`) and the dataset's `DatasetInfo`.

    Raises:
      ValueError: an unknown dataset, format, split or combination of them.
      DataError: the data is missing or malformed (the message says how to provide it).
    """
    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r}: expected one of {', '.join(sorted(DATASETS))}")
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format={data_format!r}: expected one of {', '.join(DATA_FORMATS)}")
    _validate_split(split)
    info = DATASETS[dataset]
    if data_format == "tfds":
        tfds_split = _TFDS_EVAL_SPLIT.get(dataset, "test") if split == "test" else split
        return TfdsSource(dataset, tfds_split, data_dir), info
    if data_format == "idx":
        if dataset not in IDX_DATASETS:
            raise ValueError(
                f"data_format='idx' reads {', '.join(IDX_DATASETS)}, not {dataset!r}; "
                "use data_format='tfds'"
                + (" or 'cifar_pickle'" if dataset in CIFAR_DATASETS else "")
            )
        if data_dir is None:
            if dataset != "fashion_mnist":
                raise DataError(
                    f"data_format='idx' needs --config.data_dir for {dataset}: "
                    f"{_idx_how_to(dataset)}"
                )
            data_dir = _DEBIAN_FASHION_MNIST
        return load_idx(data_dir, split, num_classes=info.num_classes, dataset=dataset), info
    if dataset not in CIFAR_DATASETS:
        raise ValueError(
            f"data_format='cifar_pickle' reads {', '.join(CIFAR_DATASETS)}, not {dataset!r}; "
            "use data_format='tfds'" + (" or 'idx'" if dataset in IDX_DATASETS else "")
        )
    if data_dir is None:
        layout = _CIFAR_LAYOUTS[info.num_classes]
        raise DataError(
            f"data_format='cifar_pickle' needs --config.data_dir for {dataset}: download the "
            f"{layout.tarball!r} tarball from {_CIFAR_URL} on a machine with network, untar "
            "it and pass the directory"
        )
    return load_cifar(data_dir, split, num_classes=info.num_classes), info
