"""`train.classification`: normalisation, top-k, and the eval step's masked sums."""

import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import classification, model_state
from train.configs import mnist
from train.data import sources


def test_normalize_is_x_over_255_minus_mean_over_std():
    info = sources.DATASETS["cifar10"]
    images = np.full((1, 2, 2, 3), 255, np.uint8)
    got = np.asarray(classification.normalize(images, info))
    want = (1.0 - np.asarray(info.mean)) / np.asarray(info.std)
    np.testing.assert_allclose(got[0, 0, 0], want, rtol=1e-6)


def test_topk_correct():
    logits = jnp.asarray([[0.1, 0.5, 0.4], [0.9, 0.04, 0.06]])
    labels = jnp.asarray([2, 1])
    np.testing.assert_array_equal(classification.topk_correct(logits, labels, 1), [0.0, 0.0])
    np.testing.assert_array_equal(classification.topk_correct(logits, labels, 2), [1.0, 0.0])
    np.testing.assert_array_equal(classification.topk_correct(logits, labels, 5), [1.0, 1.0])


def test_eval_step_sums_only_the_valid_rows():
    config = mnist.get_config()
    info = sources.DATASETS[config.dataset]
    built = model_state.build(config, info)
    state = built.init(jax.random.key(0))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (4, 28, 28, 1), dtype=np.uint8),
        "label": np.asarray([1, 2, 3, 4], np.int32),
        "mask": np.asarray([1, 1, 1, 0], np.float32),
    }
    sums = jax.device_get(classification.eval_step(state, batch, 1.0, info=info))
    full = jax.device_get(
        classification.eval_step(state, {**batch, "mask": np.ones(4, np.float32)}, 1.0, info=info)
    )
    last = {k: v[3:] for k, v in batch.items()}
    last_only = jax.device_get(
        classification.eval_step(state, {**last, "mask": np.ones(1, np.float32)}, 1.0, info=info)
    )
    assert sums["count"] == 3
    np.testing.assert_allclose(sums["loss"], full["loss"] - last_only["loss"], rtol=1e-5)
    assert classification.describe({"top1": 0.5, "top5": 1.0, "loss": 2.0}) == (
        "top-1 0.5000 top-5 1.0000 loss 2.0000"
    )


def test_train_step_projects_shift_latents_and_keys_the_quantiser_by_step():
    """After the update the PS shifts are back in [-14, 0] (their forward's in-place clip);
    the same state and batch give the same step, and another step count another gradient
    quantisation (the key is fold_in(key(seed), step))."""
    from flax import traverse_util

    config = mnist.get_config()
    config.layer = "shiftadd"
    config.weight_decay = 0.0
    info = sources.DATASETS[config.dataset]
    built = model_state.build(config, info)
    state = built.init(jax.random.key(0))
    flat = traverse_util.flatten_dict(state.params, sep="/")
    flat = {k: v - 30.0 if k == "fc1/shift/shift" else v for k, v in flat.items()}
    state = state.replace(params=traverse_util.unflatten_dict(flat, sep="/"))
    rng = np.random.default_rng(0)
    batch = {
        "image": rng.integers(0, 256, (8, 28, 28, 1), dtype=np.uint8),
        "label": rng.integers(0, 10, 8).astype(np.int32),
    }
    step = jax.jit(
        lambda state: (
            classification.train_step(
                state,
                batch,
                1.0,
                info=info,
                label_smoothing=0.0,
                lr_fn=lambda s: 0.1,
                shift_options=model_state.shift_options(config),
                seed=config.seed,
            )[0].params
        )
    )
    new = traverse_util.flatten_dict(step(state), sep="/")
    assert float(np.min(flat["fc1/shift/shift"])) < -15
    assert float(np.min(new["fc1/shift/shift"])) == -14.0
    assert all(float(np.min(v)) >= -14 for k, v in new.items() if k.endswith("/shift"))
    again = traverse_util.flatten_dict(step(state), sep="/")
    later = traverse_util.flatten_dict(step(state.replace(step=state.step + 1)), sep="/")
    assert all(np.array_equal(new[k], again[k]) for k in new)
    assert not all(np.array_equal(new[k], later[k]) for k in new)


@pytest.mark.slow
def test_three_steps_follow_the_reference_pytorch_training_in_float64():
    """ResNet-20 AdderNet, the authors' training in PyTorch (their adder backward with its
    adaptive rate, `torch.optim.SGD` with momentum and weight decay, BatchNorm in train mode)
    beside `train_step` with `adderjax.optim.adder_sgd`, from the same weights, both in
    float64 (`benchmarks/torch_trajectory.py`): after 3 steps every parameter and BatchNorm
    statistic agrees to 1e-5 of its largest value, and every one of them moved."""
    pytest.importorskip("torch")
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
    try:
        import torch_trajectory
    finally:
        sys.path.pop(0)

    net, state, batches, info = torch_trajectory.make_run(seed=0, steps=3)
    start = torch_trajectory.as_variables(state)
    want = torch_trajectory.as_variables(
        torch_trajectory.torch_steps(net, state, batches, info, np.float64)
    )
    got = torch_trajectory.adderjax_steps(state, batches, info, np.float64)
    errors = torch_trajectory.errors(got, want)
    assert len(errors) == len(jax.tree.leaves(want)) and max(errors.values()) < 1e-5, errors
    assert min(torch_trajectory.errors(start, want).values()) > 1e-6  # every leaf moved
