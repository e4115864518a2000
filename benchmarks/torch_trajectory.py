"""adderjax's training steps beside the authors' PyTorch training: float64 against float64,
and each side's float32 against PyTorch's float64, over seeds.

    python benchmarks/torch_trajectory.py --seeds 0 1 2 3 4 --steps 3

Per seed: a ResNet-20 AdderNet in the reference's PyTorch layout (`tests/torch_reference.py`,
with the authors' adder backward: full-precision filter gradient rescaled by the adaptive
rate inside the backward, HardTanh input gradient), random BatchNorm scales, trained for
--steps SGD steps (lr 0.1, momentum 0.9, weight decay 5e-4, eta 0.2, batches of 4 random
32x32 images, train mode) by `torch.optim.SGD`; the same weights converted
(`train.convert_torch`) and trained by `train.classification.train_step` with
`adderjax.optim.adder_sgd`. Each leaf's error is max |a - b| / max |b| against PyTorch's
float64 run; the table gives the median and the worst leaf, for PyTorch float32, adderjax
float32 and adderjax float64. Needs PyTorch (the test extra).
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARCH = "resnet20"


def _imports():
    for path in (str(ROOT), str(ROOT / "tests")):
        if path not in sys.path:
            sys.path.insert(0, path)


def make_run(seed: int, steps: int):
    """(PyTorch ResNet-20 with the authors' gradients in float64, its state dict, batches)."""
    _imports()
    import torch
    import torch_reference

    from train.data import sources

    torch.manual_seed(seed)
    net = torch_reference.use_reference_gradients(torch_reference.resnet20(), eta=0.2)
    gen = torch.Generator().manual_seed(seed + 1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # scales and shifts that show in the steps
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    rng = np.random.default_rng(seed)
    batches = [
        {
            "image": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 10, 4).astype(np.int32),
        }
        for _ in range(steps)
    ]
    state = {k: v.detach().numpy().astype(np.float64) for k, v in net.state_dict().items()}
    return net, state, batches, sources.DATASETS["cifar10"]


def torch_steps(net, state: dict, batches, info, dtype) -> dict:
    """The state dict after PyTorch's steps in ``dtype`` (np.float32 or np.float64)."""
    import torch
    from torch.nn import functional as F

    from train import classification

    net = net.double() if dtype == np.float64 else net.float()
    net.load_state_dict({k: torch.from_numpy(v.astype(dtype)) for k, v in state.items()})
    net.train()
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for batch in batches:
        x = np.asarray(classification.normalize(batch["image"], info)).astype(dtype)
        loss = F.cross_entropy(
            net(torch.from_numpy(x.transpose(0, 3, 1, 2))),
            torch.from_numpy(batch["label"]).long(),
        )
        sgd.zero_grad()
        loss.backward()
        sgd.step()
    return {k: v.detach().numpy().astype(np.float64) for k, v in net.state_dict().items()}


def adderjax_steps(state: dict, batches, info, dtype) -> dict:
    """The variables after `train_step`s in ``dtype``, from PyTorch's state dict ``state``."""
    import jax
    import jax.numpy as jnp

    from adderjax import models, optim
    from train import classification, convert_torch, model_state

    start, _ = convert_torch.convert_state_dict(state, ARCH, dtype=dtype)
    with jax.enable_x64(dtype == np.float64):
        model = models.get_model(ARCH, num_classes=10, dtype=jnp.dtype(dtype), implementation="xla")
        train_state = model_state.TrainState.create(
            apply_fn=model.apply,
            params=jax.tree.map(jnp.asarray, start["params"]),
            batch_stats=jax.tree.map(jnp.asarray, start["batch_stats"]),
            tx=optim.adder_sgd(0.1, momentum=0.9, weight_decay=5e-4, eta=0.2),
        )
        step = jax.jit(
            lambda s, b: classification.train_step(
                s, b, 1.0, info=info, label_smoothing=0.0, lr_fn=lambda _: 0.1
            )[0]
        )
        for batch in batches:
            train_state = step(train_state, batch)
        out = {"params": train_state.params, "batch_stats": train_state.batch_stats}
        return jax.tree.map(lambda a: np.asarray(a, np.float64), out)


def errors(got, want) -> dict[str, float]:
    """{leaf path: max |got - want| / max |want|} over two trees of the same structure."""
    import jax

    paths = jax.tree_util.tree_flatten_with_path(want)[0]
    return {
        jax.tree_util.keystr(path): float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
        for (path, b), a in zip(paths, jax.tree.leaves(got), strict=True)
    }


def as_variables(state: dict):
    """A PyTorch state dict as adderjax variables in float64 (to compare trees)."""
    _imports()
    from train import convert_torch

    return convert_torch.convert_state_dict(state, ARCH, dtype=np.float64)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    rows = {"PyTorch float32": [], "adderjax float32": [], "adderjax float64": []}
    for seed in args.seeds:
        net, state, batches, info = make_run(seed, args.steps)
        want = as_variables(torch_steps(net, state, batches, info, np.float64))
        runs = {
            "PyTorch float32": as_variables(torch_steps(net, state, batches, info, np.float32)),
            "adderjax float32": adderjax_steps(state, batches, info, np.float32),
            "adderjax float64": adderjax_steps(state, batches, info, np.float64),
        }
        for name, got in runs.items():
            e = list(errors(got, want).values())
            rows[name].append((statistics.median(e), max(e)))
    print(f"ResNet-20 AdderNet, {args.steps} steps, seeds {args.seeds}; error of each leaf")
    print("against PyTorch's float64 run, max |a - b| / max |b|\n")
    seeds = [f"seed {s} median / worst" for s in args.seeds]
    print("| run | " + " | ".join(seeds) + " |")
    print("|---|" + "---|" * len(seeds))
    for name, values in rows.items():
        cells = [f"{m:.1e} / {w:.1e}" for m, w in values]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
