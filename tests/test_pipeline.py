"""The grain pipelines: determinism, per-host shards, exact resume, augmentations, eval."""

import itertools

import numpy as np
import pytest
from absl import flags

from train.data import pipeline, sources


def _source(n=40, shape=(8, 8, 1)):
    images = np.arange(n, dtype=np.uint8)[:, None, None, None] * np.ones(shape, np.uint8)
    return sources.ArraySource(images, np.arange(n) % 10)


def _take(loader, k):
    return [b for b in itertools.islice(iter(loader), k)]


def _ids(batch):
    return batch["image"][:, 0, 0, 0].tolist()


def test_same_seed_same_batches_other_seed_others():
    kw = dict(batch_size=8, augment="none")
    a = _take(pipeline.train_loader(_source(), seed=1, **kw), 6)
    b = _take(pipeline.train_loader(_source(), seed=1, **kw), 6)
    c = _take(pipeline.train_loader(_source(), seed=2, **kw), 6)
    assert [_ids(x) for x in a] == [_ids(x) for x in b]
    assert [_ids(x) for x in a] != [_ids(x) for x in c]
    assert a[0]["image"].dtype == np.uint8 and a[0]["label"].dtype == np.int32
    # One epoch (5 batches of 8 of 40 records) shows every record once.
    assert sorted(sum((_ids(x) for x in a[:5]), [])) == list(range(40))


def test_hosts_read_disjoint_shares():
    kw = dict(batch_size=4, seed=0, augment="none", process_count=2)
    host0 = _take(pipeline.train_loader(_source(), process_index=0, **kw), 5)
    host1 = _take(pipeline.train_loader(_source(), process_index=1, **kw), 5)
    seen0 = set(sum(map(_ids, host0), []))
    seen1 = set(sum(map(_ids, host1), []))
    assert not seen0 & seen1
    assert seen0 | seen1 == set(range(40))


def test_iterator_state_resumes_exactly():
    loader = pipeline.train_loader(_source(), batch_size=8, seed=3, augment="cifar")
    it = iter(loader)
    for _ in range(7):  # past the first epoch boundary
        next(it)
    state = it.get_state()
    expected = [next(it) for _ in range(4)]
    fresh = iter(pipeline.train_loader(_source(), batch_size=8, seed=3, augment="cifar"))
    fresh.set_state(state)
    for want in expected:
        got = next(fresh)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["label"], want["label"])


def test_cifar_augmentation_is_a_shifted_padded_crop_or_its_flip():
    rng = np.random.default_rng(0)
    image = rng.integers(1, 256, (32, 32, 3), dtype=np.uint8)  # no zeros: padding is visible
    source = sources.ArraySource(image[None].repeat(16, 0), np.zeros(16, np.int64))
    batch = _take(pipeline.train_loader(source, batch_size=16, seed=0, augment="cifar"), 1)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    candidates = [padded[t : t + 32, s : s + 32] for t in range(9) for s in range(9)]
    candidates += [c[:, ::-1] for c in candidates]
    shifts = set()
    for out in batch[0]["image"]:
        matches = [i for i, c in enumerate(candidates) if np.array_equal(out, c)]
        assert matches, "not a padded crop of the image"
        shifts.add(matches[0])
    assert len(shifts) > 3  # the crops are random, not one fixed shift


def test_imagenet_augmentations_give_the_crop_size():
    rng = np.random.default_rng(0)
    records = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(47, 17), (23, 33)]]

    class Ragged:
        def __len__(self):
            return 8

        def __getitem__(self, i):
            return {"image": records[i % 2], "label": i}

    train = _take(
        pipeline.train_loader(Ragged(), batch_size=4, seed=0, augment="imagenet", image_size=16),
        2,
    )
    assert train[0]["image"].shape == (4, 16, 16, 3)
    evals = list(pipeline.eval_batches(Ragged(), batch_size=4, augment="imagenet", image_size=16))
    assert [b["image"].shape for b in evals] == [(4, 16, 16, 3)] * 2


# torchvision's Resize(256) + CenterCrop(224), which the reference evaluates ImageNet with
# (torchvision is not installed here, so its rule is written out): for an image of height h
# and width w, the shorter side becomes 256 and the longer int(256 * long / short),
# truncated (torchvision.transforms.functional._compute_resized_output_size); the crop
# starts at int(round((resized - 224) / 2.0)) on each axis (functional.center_crop).
TORCHVISION_EVAL_CROPS = {
    # (h, w): (resized h, resized w, crop top, crop left), worked out by hand.
    (353, 500): (256, 362, 16, 69),  # 362.6 truncated (rounding gave 363)
    (500, 465): (275, 256, 26, 16),  # (275 - 224) / 2 = 25.5 rounds to 26 (floor gave 25)
    (500, 375): (341, 256, 58, 16),  # 341.33
    (375, 500): (256, 341, 16, 58),  # (341 - 224) / 2 = 58.5 rounds to 58 (half to even)
    (333, 500): (256, 384, 16, 80),  # 384.38
    (256, 256): (256, 256, 16, 16),
    (224, 300): (256, 342, 16, 59),  # 342.86; 59.0
    (640, 427): (383, 256, 80, 16),  # 383.70; 79.5 rounds to 80
}


def test_imagenet_eval_crop_is_torchvisions():
    for (h, w), want in TORCHVISION_EVAL_CROPS.items():
        assert pipeline.resize_crop_geometry(h, w, 224) == want, (h, w)
    # The transform crops the resized image there: a 353x500 image whose columns count up.
    image = np.broadcast_to(np.arange(500, dtype=np.float64) / 2, (353, 500))
    image = np.repeat(image[:, :, None], 3, axis=2).astype(np.uint8)
    source = [{"image": image, "label": 0}]
    (batch,) = pipeline.eval_batches(source, batch_size=1, augment="imagenet")
    assert batch["image"].shape == (1, 224, 224, 3)
    # Column c of the crop is column (c + 69) of the 362-wide resize: source column
    # (c + 69 + 0.5) * 500 / 362 - 0.5, value half of it.
    c = np.arange(10, 214)
    want = ((c + 69 + 0.5) * 500 / 362 - 0.5) / 2
    np.testing.assert_allclose(batch["image"][0, 100, 10:214, 0], want, atol=1.01)


@pytest.mark.parametrize("process_count", [1, 3, 30])
def test_eval_batches_cover_every_record_once(process_count):
    n, batch = 23, 4
    seen, counts = [], []
    for host in range(process_count):
        batches = pipeline.eval_batches(
            _source(n),
            batch_size=batch,
            augment="none",
            process_index=host,
            process_count=process_count,
        )
        out = list(batches)
        counts.append(len(out))
        assert len(out) == batches.num_batches
        for b in out:
            assert b["image"].shape[0] == batch and b["mask"].shape == (batch,)
            seen += [i for i, m in zip(_ids(b), b["mask"], strict=True) if m]
    assert sorted(seen) == list(range(n))
    assert len(set(counts)) == 1  # every host runs the same number of eval steps


def test_eval_batches_with_worker_processes_cover_every_record_once():
    """Regression: batching in each grain worker made every worker's remainder a batch of its
    own, and records were lost past num_batches (36 of 40 with 2 workers and batch 8)."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain's workers read absl flags, as in the programs
    batches = pipeline.eval_batches(_source(40), batch_size=8, augment="none", worker_count=2)
    out = list(batches)
    assert len(out) == batches.num_batches == 5
    ids = [i for b in out for i, m in zip(_ids(b), b["mask"], strict=True) if m]
    assert ids == list(range(40))  # and in order


def test_eval_max_batches():
    batches = pipeline.eval_batches(_source(), batch_size=8, augment="none", max_batches=2)
    assert len(list(batches)) == batches.num_batches == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="augment must be one of"):
        pipeline.train_loader(_source(), batch_size=4, seed=0, augment="mixup")
    with pytest.raises(ValueError, match="does not divide over 3 hosts"):
        pipeline.local_batch_size(8, 3)


@pytest.mark.parametrize("hosts", [2, 4])
def test_global_batches_do_not_depend_on_the_host_count(hosts):
    """Hosts' local batches, side by side, are the one-host global batch, augmentation
    included: N hosts train on what one host would."""
    kw = dict(seed=5, augment="cifar")
    source = sources.ArraySource(
        np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8),
        np.arange(40) % 10,
    )
    single = _take(pipeline.train_loader(source, batch_size=16, **kw), 7)
    per_host = [
        _take(
            pipeline.train_loader(
                source, batch_size=16 // hosts, process_index=h, process_count=hosts, **kw
            ),
            7,
        )
        for h in range(hosts)
    ]
    for step in range(7):
        for key in ("image", "label"):
            joined = np.concatenate([per_host[h][step][key] for h in range(hosts)])
            np.testing.assert_array_equal(joined, single[step][key])
