"""Writers of tiny datasets in the real on-disk formats, for tests of the data sources and trainers.

Each writer returns the path to pass as ``data_dir``. Pixels and labels come from `fake_split`,
so a test can rebuild what was written: split "train" uses ``seed`` and "test" ``seed + 1``.
"""

from __future__ import annotations

import gzip as gzip_lib
import io
import os
import pickle

import numpy as np

__all__ = [
    "fake_split",
    "small_config",
    "write_cifar10_dir",
    "write_cifar100_dir",
    "write_idx",
    "write_idx_dir",
    "write_tfds_array_record",
]

_SPLIT_SEED_OFFSET = {"train": 0, "test": 1}


def fake_split(
    num_examples: int, image_shape: tuple[int, ...], num_classes: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images and int64 labels in which every class appears (given enough examples)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (num_examples, *image_shape), dtype=np.uint8)
    labels = rng.permutation(np.arange(num_examples) % num_classes).astype(np.int64)
    return images, labels


def write_idx(path: str | os.PathLike, array: np.ndarray) -> None:
    """Writes a uint8 array as an idx file, gzipped if the name ends in .gz."""
    array = np.asarray(array)
    assert array.dtype == np.uint8, array.dtype
    header = bytes([0, 0, 0x08, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    data = header + array.tobytes()
    path = os.fspath(path)
    with gzip_lib.open(path, "wb") if path.endswith(".gz") else open(path, "wb") as f:
        f.write(data)


def write_idx_dir(
    directory: str | os.PathLike,
    *,
    num_train: int = 60,
    num_test: int = 20,
    num_classes: int = 10,
    gzip: bool = True,
    seed: int = 0,
) -> str:
    """Writes the four idx files of an MNIST-like dataset of 28x28 images."""
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    suffix = ".gz" if gzip else ""
    for split, prefix, num in (("train", "train", num_train), ("test", "t10k", num_test)):
        images, labels = fake_split(num, (28, 28), num_classes, seed + _SPLIT_SEED_OFFSET[split])
        write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte{suffix}"), images)
        write_idx(
            os.path.join(directory, f"{prefix}-labels-idx1-ubyte{suffix}"), labels.astype(np.uint8)
        )
    return directory


def _pickle(path: str, obj: dict) -> None:
    # Protocol 2, as the originals (pickled by Python 2) are.
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _cifar_rows(images: np.ndarray) -> np.ndarray:
    """HWC images to the files' rows: the red, green and blue 32x32 planes in turn."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), -1)


def write_cifar10_dir(
    directory: str | os.PathLike, *, num_train: int = 50, num_test: int = 20, seed: int = 0
) -> str:
    """Writes ``directory/cifar-10-batches-py/``: data_batch_1..5, test_batch, batches.meta."""
    root = os.path.join(os.fspath(directory), "cifar-10-batches-py")
    os.makedirs(root, exist_ok=True)
    images, labels = fake_split(num_train, (32, 32, 3), 10, seed)
    parts = np.array_split(np.arange(num_train), 5)
    names = [f"data_batch_{i}" for i in range(1, 6)]
    test_images, test_labels = fake_split(num_test, (32, 32, 3), 10, seed + 1)
    parts.append(np.arange(num_test))
    names.append("test_batch")
    for name, idx in zip(names, parts, strict=True):
        x, y = (test_images, test_labels) if name == "test_batch" else (images, labels)
        _pickle(
            os.path.join(root, name),
            {
                b"batch_label": f"{name} of 5".encode(),
                b"labels": [int(v) for v in y[idx]],
                b"data": _cifar_rows(x[idx]),
                b"filenames": [f"img_{i}.png".encode() for i in idx],
            },
        )
    _pickle(
        os.path.join(root, "batches.meta"),
        {
            b"num_cases_per_batch": max(len(p) for p in parts[:5]),
            b"label_names": [f"class_{i}".encode() for i in range(10)],
            b"num_vis": 3072,
        },
    )
    return os.fspath(directory)


def write_cifar100_dir(
    directory: str | os.PathLike, *, num_train: int = 200, num_test: int = 100, seed: int = 0
) -> str:
    """Writes ``directory/cifar-100-python/``: train, test and meta, fine and coarse labels."""
    root = os.path.join(os.fspath(directory), "cifar-100-python")
    os.makedirs(root, exist_ok=True)
    for split, num in (("train", num_train), ("test", num_test)):
        images, fine = fake_split(num, (32, 32, 3), 100, seed + _SPLIT_SEED_OFFSET[split])
        _pickle(
            os.path.join(root, split),
            {
                b"filenames": [f"img_{i}.png".encode() for i in range(num)],
                b"batch_label": f"{split} batch 1 of 1".encode(),
                b"fine_labels": [int(v) for v in fine],
                b"coarse_labels": [int(v) // 5 for v in fine],
                b"data": _cifar_rows(images),
            },
        )
    _pickle(
        os.path.join(root, "meta"),
        {
            b"fine_label_names": [f"fine_{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"coarse_{i}".encode() for i in range(20)],
        },
    )
    return os.fspath(directory)


def write_tfds_array_record(
    directory: str | os.PathLike,
    name: str,
    *,
    num_train: int = 12,
    num_test: int = 6,
    seed: int = 0,
) -> str:
    """Writes a tfds dataset ("mnist", "cifar10" or "cifar100") as prepared in array_record.

    This is what `tfds build NAME --file_format=array_record` leaves in ``directory/NAME/``,
    made without TensorFlow: tfds' own serializer, with the images PNG-encoded by pillow
    (tfds would encode them with TensorFlow).
    """
    import tensorflow_datasets as tfds
    from array_record.python import array_record_module
    from PIL import Image

    directory = os.fspath(directory)
    builder = tfds.builder(name, data_dir=directory, file_format="array_record")
    os.makedirs(builder.data_dir, exist_ok=True)
    features = builder.info.features
    num_classes = features["label"].num_classes
    splits = []
    for split, num in (("train", num_train), ("test", num_test)):
        template = tfds.core.ShardedFileTemplate(
            data_dir=builder.data_dir,
            template="{DATASET}-{SPLIT}.{FILEFORMAT}-{SHARD_X_OF_Y}",
            dataset_name=name,
            split=split,
            filetype_suffix="array_record",
        )
        images, labels = fake_split(
            num, features["image"].shape, num_classes, seed + _SPLIT_SEED_OFFSET[split]
        )
        writer = array_record_module.ArrayRecordWriter(
            os.fspath(template.sharded_filepath(shard_index=0, num_shards=1)), "group_size:1"
        )
        for i, (image, label) in enumerate(zip(images, labels, strict=True)):
            png = io.BytesIO()
            Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(png, "PNG")
            png.seek(0)
            example = {"image": png, "label": int(label)}
            if "id" in features:
                example["id"] = f"{split}_{i:05d}"
            if "coarse_label" in features:
                example["coarse_label"] = int(label) // 5
            writer.write(features.serialize_example(example))
        writer.close()
        splits.append(
            tfds.core.SplitInfo(
                name=split, shard_lengths=[num], num_bytes=0, filename_template=template
            )
        )
    builder.info.set_splits(tfds.core.SplitDict(splits))
    builder.info.write_to_directory(builder.data_dir)
    return directory


def small_config(data_dir, base=None, **overrides):
    """A training config (`base`, a module of `train/configs/`; LeNet-5-BN Fashion-MNIST's by
    default) made small for files written here: batch 16, evaluation batches of 8, 3 epochs,
    a log line every step, no progress bar and no plots; ``data_dir`` None keeps the base's."""
    if base is None:
        from train.configs import mnist as base

    config = base.get_config()
    config.data_dir = None if data_dir is None else str(data_dir)
    config.batch_size = 16
    config.eval_batch_size = 8
    config.num_epochs = 3
    config.log_every_steps = 1
    config.progress_bar = False
    config.plots = False
    config.update(overrides)
    return config
