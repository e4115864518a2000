"""Super-resolution data: high-resolution images from folders or tfds, low-resolution ones
made from them by MATLAB bicubic (`train.sr_metrics.imresize`), training patches with
flips and rotations, and the evaluation sets.

* `HRFolder`: every PNG/JPEG of a folder (DIV2K_train_HR, Set5, ... or any photos), as
  uint8 RGB (grey images repeated to three channels, alpha dropped).
* `HRTfds`: the ``hr`` images of a tfds dataset read without TensorFlow (``div2k``).
* `SRPairs`: (modcropped HR, its LR) per image, the LR made when an image is first read and
  kept in memory (DIV2K at x2 is about 6 GB: read it with ``worker_count=0`` so only one
  process holds it).
* `train_loader`: an endless grain loader of random aligned patches, ``repeat`` per image
  per epoch, in the global order of `train.data.pipeline.GlobalOrderSampler`, so it
  resumes exactly from a checkpoint on any number of hosts.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from typing import Any

import grain.python as grain
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, UnidentifiedImageError

from train import sr_metrics
from train.data import pipeline
from train.data.sources import DataError

__all__ = [
    "IMAGE_SUFFIXES",
    "TFDS_PREFIX",
    "EvalSet",
    "HRFolder",
    "HRTfds",
    "SRPairs",
    "eval_sets",
    "open_hr",
    "read_image",
    "save_image",
    "train_loader",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
# "tfds:div2k" (or "tfds:div2k/bicubic_x2") names a tfds dataset instead of a folder.
TFDS_PREFIX = "tfds:"


def read_image(path: str | os.PathLike) -> np.ndarray:
    """The image at `path` as uint8 (H, W, 3) RGB; `DataError` naming it if unreadable."""
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"), np.uint8)
    except (OSError, UnidentifiedImageError, ValueError) as e:
        message = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"cannot read image {path}: {message}") from None


def save_image(image: np.ndarray, path: str | os.PathLike) -> None:
    """Writes uint8 (H, W, 3) `image` to `path` (PNG, JPEG, ... by its suffix)."""
    Image.fromarray(np.asarray(image, np.uint8)).save(path)


def _rgb(image) -> np.ndarray:
    array = np.asarray(image, np.uint8)
    if array.ndim == 2:
        array = array[:, :, None]
    if array.shape[-1] == 1:
        array = np.repeat(array, 3, axis=-1)
    return array[:, :, :3]


class HRFolder:
    """The PNG/JPEG images of a folder, sorted by name, as uint8 RGB."""

    def __init__(self, directory: str | os.PathLike):
        self.directory = pathlib.Path(directory)
        if not self.directory.is_dir():
            raise DataError(f"image folder {self.directory} does not exist")
        self.paths = sorted(
            p for p in self.directory.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not self.paths:
            raise DataError(
                f"image folder {self.directory} has no {'/'.join(IMAGE_SUFFIXES)} images"
            )
        for path in self.paths:  # headers now, so a broken file is named before training
            try:
                with Image.open(path) as image:
                    image.verify()
            except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
                raise DataError(f"cannot read image {path}: {str(e).splitlines()[0]}") from None
        self.name = self.directory.name
        self.names = [p.stem for p in self.paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> np.ndarray:
        return read_image(self.paths[index])

    def __repr__(self) -> str:
        return f"HRFolder({str(self.directory)!r}, {len(self)} images)"


class HRTfds:
    """The ``hr`` images of a tfds dataset in array_record format (no TensorFlow)."""

    def __init__(self, name: str, split: str, data_dir: str | None = None):
        self.name, self.split = name.split("/")[0], split
        try:
            self._source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except (NotImplementedError, KeyError, ValueError, OSError) as e:
            raise DataError(
                f"tfds dataset {name!r} split {split!r} is not prepared in array_record format"
                f"{f' in {data_dir}' if data_dir else ''} ({type(e).__name__}): run `tfds build "
                f"{name} --file_format=array_record` on a machine with network, or use folders "
                f"of images"
            ) from None
        self.names = [f"{self.name}_{i:04d}" for i in range(len(self._source))]

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> np.ndarray:
        return _rgb(self._source[int(index)]["hr"])

    def __repr__(self) -> str:
        return f"HRTfds({self.name!r}, {self.split!r})"


def open_hr(spec: str, split: str, *, data_dir: str | None = None):
    """A folder path, or ``tfds:NAME`` (DIV2K's "train" or "validation" split)."""
    if spec.startswith(TFDS_PREFIX):
        name = spec[len(TFDS_PREFIX) :]
        return HRTfds(name, "train" if split == "train" else "validation", data_dir)
    return HRFolder(spec)


class SRPairs:
    """{"hr": modcropped HR, "lr": its bicubic LR} per image of an HR source, both uint8
    (H, W, 3); each pair is made once and kept (not pickled to grain's workers)."""

    def __init__(self, hr_source, scale: int):
        self.hr_source, self.scale = hr_source, scale
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    def __getstate__(self):
        return {**self.__dict__, "_cache": {}}

    def __len__(self) -> int:
        return len(self.hr_source)

    def __repr__(self) -> str:  # grain checks it when restoring an iterator: no addresses
        return f"SRPairs({self.hr_source!r}, scale={self.scale})"

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        index = int(index)
        if index not in self._cache:
            hr = self.hr_source[index]
            name = self.hr_source.names[index]
            if min(hr.shape[:2]) < self.scale:
                raise DataError(
                    f"image {name} ({hr.shape[0]}x{hr.shape[1]}) is smaller than the scale"
                )
            hr = sr_metrics.modcrop(hr, self.scale)
            self._cache[index] = {"hr": hr, "lr": sr_metrics.imresize(hr, 1 / self.scale)}
        return self._cache[index]


@dataclasses.dataclass(frozen=True)
class _Repeated:
    """`repeat` passes over a source as one source (an epoch of `repeat` patches per image)."""

    source: Any
    repeat: int

    def __len__(self) -> int:
        return len(self.source) * self.repeat

    def __getitem__(self, index: int):
        return self.source[int(index) % len(self.source)]


@dataclasses.dataclass(frozen=True)
class RandomPatch(grain.RandomMapTransform):
    """An aligned random patch: `patch_size` LR pixels and `scale` times as many HR ones,
    then (with `augment`) a random horizontal flip, vertical flip and transpose (the eight
    symmetries of the square, as EDSR)."""

    patch_size: int
    scale: int
    augment: bool = True

    def random_map(self, record, rng: np.random.Generator):
        lr, hr = record["lr"], record["hr"]
        p, s = self.patch_size, self.scale
        h, w = lr.shape[:2]
        if h < p or w < p:
            raise DataError(f"an LR image of {h}x{w} is smaller than patch_size={p}")
        y, x = int(rng.integers(0, h - p + 1)), int(rng.integers(0, w - p + 1))
        lr, hr = lr[y : y + p, x : x + p], hr[y * s : (y + p) * s, x * s : (x + p) * s]
        if self.augment:
            flip_h, flip_v, transpose = (bool(b) for b in rng.integers(0, 2, size=3))
            if flip_h:
                lr, hr = lr[:, ::-1], hr[:, ::-1]
            if flip_v:
                lr, hr = lr[::-1], hr[::-1]
            if transpose:
                lr, hr = lr.transpose(1, 0, 2), hr.transpose(1, 0, 2)
        return {"lr": np.ascontiguousarray(lr), "hr": np.ascontiguousarray(hr)}


def train_loader(
    pairs: SRPairs,
    *,
    batch_size: int,
    patch_size: int,
    repeat: int,
    seed: int,
    augment: bool = True,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
) -> grain.DataLoader:
    """An endless loader of this host's {"lr": (b, p, p, 3), "hr": (b, s p, s p, 3)} uint8
    batches (b = `batch_size`, this host's share); `get_state()` / `set_state()` resume it."""
    return pipeline.global_order_loader(
        _Repeated(pairs, repeat),
        [RandomPatch(patch_size, pairs.scale, augment)],
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        worker_count=worker_count,
    )


@dataclasses.dataclass(frozen=True)
class EvalSet:
    """A test set: its name, and per image its name, HR, LR and the bicubic upsampling."""

    name: str
    names: tuple[str, ...]
    hr: tuple[np.ndarray, ...]
    lr: tuple[np.ndarray, ...]
    bicubic: tuple[np.ndarray, ...]


def eval_sets(specs: list[str], scale: int, *, data_dir: str | None = None) -> list[EvalSet]:
    """Each spec (a folder or ``tfds:NAME``) read whole, its LR and bicubic made once."""
    out = []
    for spec in specs:
        hr_source = open_hr(spec, "test", data_dir=data_dir)
        pairs = SRPairs(hr_source, scale)
        hr, lr = zip(*((pairs[i]["hr"], pairs[i]["lr"]) for i in range(len(pairs))), strict=True)
        for name, image in zip(hr_source.names, hr, strict=True):
            if min(image.shape[:2]) - 2 * scale < sr_metrics.SSIM_WINDOW:
                raise DataError(
                    f"image {name} ({image.shape[0]}x{image.shape[1]}) of {spec} is too small to "
                    f"evaluate at scale {scale}: SSIM needs {sr_metrics.SSIM_WINDOW} pixels a side "
                    f"after cropping {scale}"
                )
        bicubic = tuple(sr_metrics.imresize(x, scale) for x in lr)
        out.append(EvalSet(hr_source.name, tuple(hr_source.names), hr, lr, bicubic))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise DataError(f"two evaluation sets have the same name: {', '.join(names)}")
    return out
