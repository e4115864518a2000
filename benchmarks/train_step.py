"""One training step end to end: the AdderNet on each implementation against its CNN.

    python benchmarks/train_step.py                          # LeNet-5-BN and ResNet-20, batch 128
    python benchmarks/train_step.py --models resnet20 --steps 21
    python benchmarks/train_step.py --implementations native  # leave out the XLA path

The step is the trainer's own (`train.classification.jit_train_step`: forward, backward,
the adaptive-learning-rate SGD update, BatchNorm statistics) on one device, with the recipe of
`train/configs/mnist.py` for LeNet-5-BN (28x28x1) and `train/configs/cifar10.py` for ResNet-20
(32x32x3), on random images. Every round times each variant once, in turn (so a noisy machine
slows all of them alike); the table has the median step time, images/s and the ratio of each
AdderNet's step to its CNN's, all measured in this run.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

if __name__ == "__main__":
    # Run as a script, this folder is sys.path[0] and its kernels.py would shadow the kernels
    # package that adderjax imports: the repository goes first, this folder last.
    sys.path.append(sys.path.pop(0))
    sys.path.insert(0, os.path.dirname(sys.path[-1]))

import jax
import numpy as np

import adderjax
from train import classification, model_state, schedules, sharding
from train.configs import cifar10, mnist
from train.data import sources

# model -> (config module, dataset whose shapes and statistics it uses)
MODELS = {"lenet5_bn": (mnist, "fashion_mnist"), "resnet20": (cifar10, "cifar10")}


def _args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="lenet5_bn,resnet20", type=_names(MODELS))
    parser.add_argument(
        "--implementations",
        default=",".join(adderjax.available_implementations()),
        type=_names(adderjax.available_implementations()),
        help="the AdderNet's implementations to time (default: all that run here)",
    )
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=11, help="timed rounds")
    parser.add_argument("--warmup", type=int, default=2)
    return parser.parse_args()


def _names(allowed):
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n for n in text.split(",") if n)
        bad = [n for n in names if n not in allowed]
        if not names or bad:
            raise argparse.ArgumentTypeError(
                f"expected a comma-separated list of {tuple(allowed)}, got {text!r}"
            )
        return names

    return parse


def _step(model: str, adder: bool, implementation: str | None, batch: int, mesh):
    """(jitted step, state, batch, p) for one variant."""
    module, dataset = MODELS[model]
    config = module.get_config()
    config.model = model
    config.layer = "adder" if adder else "conv"
    config.implementation = implementation
    config.batch_size = batch
    info = sources.DATASETS[dataset]
    steps_per_epoch = 100
    built = model_state.build(config, info, steps_per_epoch=steps_per_epoch, mesh=mesh)
    state = built.init(jax.random.key(0))
    lr_fn = schedules.learning_rate(config, steps_per_epoch)
    step = classification.jit_train_step(config, info, built.shardings, mesh, lr_fn=lr_fn)
    rng = np.random.default_rng(0)
    h, w, c = info.image_shape
    images = {
        "image": rng.integers(0, 256, (batch, h, w, c), dtype=np.uint8),
        "label": rng.integers(0, info.num_classes, (batch,), dtype=np.int32),
    }
    images = jax.device_put(images, sharding.batch_sharding(mesh))
    return step, state, images, np.float32(1.0)


def main() -> None:
    args = _args()
    mesh = sharding.make_mesh(devices=jax.devices()[:1])
    print(
        f"jax {jax.__version__}, {jax.default_backend()} backend "
        f"({jax.devices()[0].device_kind}, {platform.machine()}, "
        f"{len(os.sched_getaffinity(0))} CPUs), batch {args.batch}, one device, median of "
        f"{args.steps} round-robin rounds after {args.warmup} warm-up"
    )
    print()
    print("| model | variant | step ms | images/s | step / CNN's |")
    print("|---|---|---:|---:|---:|")
    for model in args.models:
        variants = {f"AdderNet, {impl}": (True, impl) for impl in args.implementations}
        variants["CNN"] = (False, None)
        with jax.set_mesh(mesh):
            runs = {
                name: _step(model, adder, impl, args.batch, mesh)
                for name, (adder, impl) in variants.items()
            }
            times = {name: [] for name in runs}
            states = {name: run[1] for name, run in runs.items()}
            for i in range(args.warmup + args.steps):
                for name, (step, _, batch, p) in runs.items():
                    t0 = time.perf_counter()
                    states[name], metrics = step(states[name], batch, p)
                    jax.block_until_ready((states[name], metrics))
                    if i >= args.warmup:
                        times[name].append(time.perf_counter() - t0)
        cnn = statistics.median(times["CNN"])
        for name, t in times.items():
            median = statistics.median(t)
            print(
                f"| {model} | {name} | {median * 1e3:.1f} | {args.batch / median:.0f} | "
                f"{median / cnn:.2f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
