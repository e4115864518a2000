"""Data-parallel scaling of a ResNet-20 AdderNet training step: images/s on 1, 2, 4, 8 devices.

    python benchmarks/scaling.py [--per-device-batch 32] [--steps 5] [--implementation xla]
                                 [--device-counts 1,2,4,8]

Weak scaling: each device gets `--per-device-batch` images, the global batch grows with the
device count, the step is the trainer's own (`train.classification.train_step`, jitted over
the mesh of the first n devices). Reports the median step time and images/s, and the speedup
and efficiency against 1 device measured in the same run.

On a machine without accelerators the devices are simulated CPU devices
(--xla_force_host_platform_device_count) that share the machine's cores: the table then shows
the cost of partitioning the step, not how it scales on real devices.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

if __name__ == "__main__":
    # Run as a script, this folder is sys.path[0] and its kernels.py would shadow the kernels
    # package that adderjax imports: the repository goes first, this folder last.
    sys.path.append(sys.path.pop(0))
    sys.path.insert(0, os.path.dirname(sys.path[-1]))

DEVICE_COUNTS = (1, 2, 4, 8)


def _args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-device-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per device count")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--implementation", default=None, help="None, 'xla' or 'pallas'")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument(
        "--device-counts",
        type=_device_counts,
        default=DEVICE_COUNTS,
        help="comma-separated device counts, the first the baseline (default 1,2,4,8)",
    )
    return parser.parse_args()


def _device_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(c) for c in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,2,4,8, got {text!r}")
    return counts


def main() -> None:
    args = _args()
    # Simulated devices must be asked for before jax starts; harmless on GPU/TPU hosts.
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_force_host_platform_device_count" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count=8"

    import jax
    import numpy as np

    from train import classification, model_state, schedules, sharding
    from train.configs import cifar10
    from train.data import sources

    config = cifar10.get_config()
    config.model = args.model
    config.implementation = args.implementation
    info = sources.DATASETS["cifar10"]
    lr_fn = schedules.learning_rate(config, 196)
    devices = jax.devices()
    print(
        f"{args.model} training step, {jax.default_backend()} backend, "
        f"{len(devices)} devices ({devices[0].device_kind}), "
        f"{args.per_device_batch} images per device, median of {args.steps}"
    )
    print()
    print("| devices | global batch | step ms | images/s | speedup | efficiency |")
    print("|---:|---:|---:|---:|---:|---:|")
    base = None
    rng = np.random.default_rng(0)
    for n in args.device_counts:
        if n > len(devices):
            print(f"| {n} | - | - | - | - | (only {len(devices)} devices) |")
            continue
        mesh = sharding.make_mesh(devices=devices[:n])
        batch_sharding = sharding.batch_sharding(mesh)
        replicated = sharding.replicated(mesh)
        global_batch = n * args.per_device_batch
        with jax.set_mesh(mesh):
            built = model_state.build(config, info, steps_per_epoch=196, mesh=mesh)
            state = built.init(jax.random.key(0))
            step = classification.jit_train_step(config, info, built.shardings, mesh, lr_fn=lr_fn)
            batch = {
                "image": jax.device_put(
                    rng.integers(0, 256, (global_batch, 32, 32, 3), dtype=np.uint8),
                    batch_sharding,
                ),
                "label": jax.device_put(
                    rng.integers(0, 10, (global_batch,), dtype=np.int32), batch_sharding
                ),
            }
            p = jax.device_put(np.float32(1.0), replicated)
            times = []
            for i in range(args.warmup + args.steps):
                t0 = time.perf_counter()
                state, metrics = step(state, batch, p)
                jax.block_until_ready((state, metrics))
                if i >= args.warmup:
                    times.append(time.perf_counter() - t0)
        median = statistics.median(times)
        ips = global_batch / median
        base = base or ips
        print(
            f"| {n} | {global_batch} | {median * 1e3:.1f} | {ips:.1f} | {ips / base:.2f} | "
            f"{ips / base / n:.2f} |"
        )


if __name__ == "__main__":
    main()
