"""grain pipelines over the random-access sources of `train.data.sources`.

Training batches come from a shuffled, infinitely repeating `grain.python.DataLoader`: the
order and the augmentation randomness are functions of (seed, record index), each host
reads only its shard, and the iterator's state goes into the checkpoint, so a resumed run
sees exactly the batches it would have seen. Images stay uint8 until they are on the device
(`normalize` runs inside the jitted step): four times fewer bytes to move than float32.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Iterator

import grain.python as grain
import jax
import ml_collections
import numpy as np
from PIL import Image

__all__ = [
    "AUGMENTATIONS",
    "EvalBatches",
    "eval_batches",
    "global_order_loader",
    "config_eval_batches",
    "config_train_loader",
    "local_batch_size",
    "resize_crop_geometry",
    "train_loader",
]

AUGMENTATIONS = ("none", "cifar", "imagenet")


def local_batch_size(global_batch_size: int, process_count: int) -> int:
    """This host's share of a global batch (the trainer checks divisibility up front)."""
    if global_batch_size % process_count:
        raise ValueError(
            f"batch size {global_batch_size} does not divide over {process_count} hosts"
        )
    return global_batch_size // process_count


class _Record(grain.MapTransform):
    """Keeps the image (uint8, HWC) and the label (int32), drops anything else."""

    def map(self, record):
        image = np.asarray(record["image"], np.uint8)
        if image.ndim == 2:
            image = image[:, :, None]
        return {"image": image, "label": np.int32(record["label"])}


@dataclasses.dataclass(frozen=True)
class _PadCropFlip(grain.RandomMapTransform):
    """The CIFAR recipe: zero-pad by `pad`, take a random crop of the original size, flip."""

    pad: int = 4

    def random_map(self, record, rng: np.random.Generator):
        image = record["image"]
        h, w = image.shape[:2]
        padded = np.pad(image, ((self.pad, self.pad), (self.pad, self.pad), (0, 0)))
        top, left = rng.integers(0, 2 * self.pad + 1, size=2)
        image = padded[top : top + h, left : left + w]
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": np.ascontiguousarray(image), "label": record["label"]}


def _resize(image: np.ndarray, height: int, width: int) -> np.ndarray:
    squeeze = image.shape[2] == 1
    pil = Image.fromarray(image[:, :, 0] if squeeze else image)
    out = np.asarray(pil.resize((width, height), Image.BILINEAR))
    return out[:, :, None] if squeeze else out


@dataclasses.dataclass(frozen=True)
class _RandomResizedCrop(grain.RandomMapTransform):
    """The ImageNet recipe (torchvision's RandomResizedCrop and flip): area 8-100%,
    aspect ratio 3/4-4/3, ten tries, then the central crop."""

    size: int = 224
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)

    def random_map(self, record, rng: np.random.Generator):
        image = record["image"]
        h, w = image.shape[:2]
        crop = None
        for _ in range(10):
            area = h * w * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(math.log(self.ratio[0]), math.log(self.ratio[1])))
            cw = int(round(math.sqrt(area * aspect)))
            ch = int(round(math.sqrt(area / aspect)))
            if 0 < cw <= w and 0 < ch <= h:
                top = int(rng.integers(0, h - ch + 1))
                left = int(rng.integers(0, w - cw + 1))
                crop = image[top : top + ch, left : left + cw]
                break
        if crop is None:
            side = min(h, w)
            top, left = (h - side) // 2, (w - side) // 2
            crop = image[top : top + side, left : left + side]
        image = _resize(crop, self.size, self.size)
        if rng.random() < 0.5:
            image = image[:, ::-1]
        return {"image": np.ascontiguousarray(image), "label": record["label"]}


def resize_crop_geometry(height: int, width: int, size: int) -> tuple[int, int, int, int]:
    """(resized height, resized width, crop top, crop left) of ImageNet evaluation.

    torchvision's ``Resize(round(size / 0.875))`` then ``CenterCrop(size)``, the reference's
    evaluation (256 and 224): the shorter side becomes 256 and the longer side
    ``int(256 * long / short)``, truncated; the crop starts at ``round((resized - size) / 2)``
    with Python's round (half to even), as torchvision's ``center_crop`` computes it.
    """
    short = int(round(size / 0.875))
    if height <= width:
        nh, nw = short, int(short * width / height)
    else:
        nh, nw = int(short * height / width), short
    return nh, nw, int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))


@dataclasses.dataclass(frozen=True)
class _ResizeCenterCrop(grain.MapTransform):
    """ImageNet evaluation: resize the shorter side to size / 0.875 (256 for 224), crop
    the centre (`resize_crop_geometry`)."""

    size: int = 224

    def map(self, record):
        image = record["image"]
        nh, nw, top, left = resize_crop_geometry(*image.shape[:2], self.size)
        image = _resize(image, nh, nw)
        image = image[top : top + self.size, left : left + self.size]
        return {"image": np.ascontiguousarray(image), "label": record["label"]}


def _train_transforms(augment: str, image_size: int) -> list:
    if augment == "none":
        return []
    if augment == "cifar":
        return [_PadCropFlip()]
    if augment == "imagenet":
        return [_RandomResizedCrop(size=image_size)]
    raise ValueError(f"augment must be one of {AUGMENTATIONS}, got augment={augment!r}")


def _eval_transforms(augment: str, image_size: int) -> list:
    return [_ResizeCenterCrop(size=image_size)] if augment == "imagenet" else []


@functools.lru_cache(maxsize=4)
def _epoch_order(num_records: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(num_records)


@dataclasses.dataclass(frozen=True)
class GlobalOrderSampler:
    """A grain sampler of one host's rows of a global stream fixed by the seed alone.

    The global stream runs through a fresh permutation of the records every epoch; global
    batch s is its positions [s*B, (s+1)*B), and host i reads rows [i*b, (i+1)*b) of it
    (b = B / hosts). grain's own sharding splits the records per host instead, which makes
    the batches depend on the number of hosts.
    """

    num_records: int
    seed: int
    local_batch_size: int
    process_index: int = 0
    process_count: int = 1

    def __len__(self) -> int:
        return sys.maxsize  # endless, like grain's IndexSampler with num_epochs=None

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        if index < 0:
            raise IndexError(f"negative sampler index {index}")
        step, offset = divmod(index, self.local_batch_size)
        position = (step * self.process_count + self.process_index) * self.local_batch_size
        position += offset
        epoch, within = divmod(position, self.num_records)
        key = int(_epoch_order(self.num_records, self.seed, epoch)[within])
        rng = np.random.Generator(np.random.Philox(key=[self.seed, position]))
        return grain.RecordMetadata(index=index, record_key=key, rng=rng)


def train_loader(
    source,
    *,
    batch_size: int,
    seed: int,
    augment: str,
    image_size: int = 224,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
) -> grain.DataLoader:
    """An endless, shuffled loader of this host's share of every global batch.

    The global stream of records (and each record's augmentation randomness) depends only
    on the seed, so 1 host or N hosts, 1 device or N, train on the same global batches.

    Args:
      source: a random-access source of {"image": uint8 HWC, "label": int} records.
      batch_size: this host's batch size (`local_batch_size` of the global one).
      seed: the shuffle and augmentation seed; the same seed gives the same batches.
      augment: one of `AUGMENTATIONS`.
      image_size: the crop size of the "imagenet" augmentation.
      process_index: this host (`jax.process_index()`).
      process_count: the number of hosts (`jax.process_count()`).
      worker_count: grain worker processes (0: read in this process).

    Returns:
      A `grain.python.DataLoader`; `iter()` of it yields {"image": uint8 (B, H, W, C),
      "label": int32 (B,)} and has `get_state()` / `set_state()` for exact resume.
    """
    operations = [_Record(), *_train_transforms(augment, image_size)]
    return global_order_loader(
        source,
        operations,
        batch_size=batch_size,
        seed=seed,
        process_index=process_index,
        process_count=process_count,
        worker_count=worker_count,
    )


def global_order_loader(
    source,
    operations: list,
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
) -> grain.DataLoader:
    """An endless grain loader of `source` in `GlobalOrderSampler`'s order, each record
    through `operations` (with its own seeded rng), batched `batch_size` (this host's
    share) at a time; what every task's training loader is built on."""
    sampler = GlobalOrderSampler(
        num_records=len(source),
        seed=seed,
        local_batch_size=batch_size,
        process_index=process_index,
        process_count=process_count,
    )
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        operations=[*operations, grain.Batch(batch_size, drop_remainder=True)],
        worker_count=worker_count,
        # The sampler already picks this host's rows.
        shard_options=grain.NoSharding(),
    )


@dataclasses.dataclass(frozen=True)
class _Slice:
    """Records start..stop-1 of a source, as a source (picklable for grain workers)."""

    source: object
    start: int
    stop: int

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int):
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} records")
        return self.source[self.start + int(i)]


@dataclasses.dataclass(frozen=True)
class EvalBatches:
    """Every evaluation record exactly once, in fixed-size batches with a validity mask.

    Each host yields the same number of batches (`num_batches`), so a jitted step over a
    global batch runs the same number of times everywhere; padding rows have mask 0.
    """

    source: object
    batch_size: int
    augment: str
    image_size: int
    process_index: int
    process_count: int
    worker_count: int
    max_batches: int = -1

    def _shard(self) -> _Slice:
        # Contiguous shards of ceil(n / hosts) records; grain's own uneven sharding leaves
        # records out, and evaluation must see every one exactly once.
        per_host = math.ceil(len(self.source) / self.process_count)
        start = min(self.process_index * per_host, len(self.source))
        return _Slice(self.source, start, min(start + per_host, len(self.source)))

    @property
    def num_batches(self) -> int:
        per_host = math.ceil(len(self.source) / self.process_count)
        n = math.ceil(per_host / self.batch_size)
        return min(n, self.max_batches) if self.max_batches > 0 else n

    def __iter__(self) -> Iterator[dict[str, np.ndarray]]:
        shard = self._shard()
        if len(shard) == 0:  # more hosts than records: this host only pads
            yield from self._padding(self.num_batches)
            return
        sampler = grain.IndexSampler(num_records=len(shard), shuffle=False, num_epochs=1, seed=0)
        # Records are transformed in the workers but batched here: a grain.Batch runs in each
        # worker on that worker's records, and with worker_count > 0 every worker's last
        # partial batch would make more, smaller batches than num_batches counts.
        loader = grain.DataLoader(
            data_source=shard,
            sampler=sampler,
            operations=[_Record(), *_eval_transforms(self.augment, self.image_size)],
            worker_count=self.worker_count,
            shard_options=grain.NoSharding(),
        )
        produced, rows = 0, []
        for record in loader:
            rows.append(record)
            if len(rows) == self.batch_size:
                yield _pad(_stack(rows), self.batch_size)
                produced, rows = produced + 1, []
                if produced == self.num_batches:
                    return
        if rows:
            yield _pad(_stack(rows), self.batch_size)
            produced += 1
        yield from self._padding(self.num_batches - produced)  # this host's shard ran out

    def _padding(self, count: int) -> Iterator[dict[str, np.ndarray]]:
        """`count` batches of padding only (mask 0), shaped like real ones."""
        if count <= 0:
            return
        record = _Record().map(self.source[0])
        for transform in _eval_transforms(self.augment, self.image_size):
            record = transform.map(record)
        empty = {k: np.asarray(v)[None][:0] for k, v in record.items()}
        for _ in range(count):
            yield _pad(empty, self.batch_size)


def _stack(records: list[dict]) -> dict[str, np.ndarray]:
    return {k: np.stack([np.asarray(r[k]) for r in records]) for k in records[0]}


def _pad(batch: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    n = len(batch["label"])
    out = {
        k: np.concatenate([v, np.zeros((size - n, *v.shape[1:]), v.dtype)])
        for k, v in batch.items()
    }
    out["mask"] = (np.arange(size) < n).astype(np.float32)
    return out


def eval_batches(
    source,
    *,
    batch_size: int,
    augment: str,
    image_size: int = 224,
    process_index: int = 0,
    process_count: int = 1,
    worker_count: int = 0,
    max_batches: int = -1,
) -> EvalBatches:
    """This host's evaluation batches (see `EvalBatches`); re-iterable, one pass each time."""
    return EvalBatches(
        source,
        batch_size,
        augment,
        image_size,
        process_index,
        process_count,
        worker_count,
        max_batches,
    )


def _config_options(config: ml_collections.ConfigDict) -> dict:
    return dict(
        augment=config.augment,
        image_size=config.image_size,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        worker_count=config.worker_count,
    )


def config_train_loader(config: ml_collections.ConfigDict, source) -> grain.DataLoader:
    """`train_loader` of this host's share of ``config.batch_size``, as the config says."""
    batch_size = local_batch_size(config.batch_size, jax.process_count())
    return train_loader(source, batch_size=batch_size, seed=config.seed, **_config_options(config))


def config_eval_batches(config: ml_collections.ConfigDict, source) -> EvalBatches:
    """`eval_batches` of this host's share of ``config.eval_batch_size`` (at most
    ``config.steps_per_eval`` batches when > 0)."""
    return eval_batches(
        source,
        batch_size=local_batch_size(config.eval_batch_size, jax.process_count()),
        max_batches=config.steps_per_eval,
        **_config_options(config),
    )
