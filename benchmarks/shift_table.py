"""CNN, AdderNet, DeepShift-PS and ShiftAddNet side by side: accuracy over seeds, operations
and energy per image.

    python benchmarks/shift_table.py --root /tmp/shift --epochs 10 --seeds 0 1 2
    python benchmarks/shift_table.py --root /tmp/shift_r20 --resnet20 --epochs 2 --seeds 0 1 2

Rows (each `python -m train.mnist` with the overrides shown, in its own workdir under
--root, per seed; the README's recipe for every row):
  CNN                      --config.layer=conv
  AdderNet                 the plain AdderNet recipe
  DeepShift-PS             --config.layer=shift (every conv and dense layer a shift layer)
  ShiftAddNet              --config.layer=shiftadd (each inner layer shift then adder)
  ShiftAddNet, frozen      + --config.shift_frozen=True (their train_fix.py)

With --resnet20 it runs ResNet-20 on the CIFAR-10 layout (Fashion-MNIST padded to 32x32 and
tiled to 3 channels, `distill_table.write_fashion_cifar`, the first --train_images training
images, all 10,000 test images) through `python -m train.cifar`.

A run whose results.json exists is not run again (an interrupted sweep resumes), and a
workdir made by another command is refused (`paper_tables.check_reusable`). Prints a markdown
table: test top-1 per seed, mean and standard deviation (ddof=1), then per image (batch 1,
`adderjax.count_ops` "full" convention: every layer, BatchNorm folded) the multiplications,
additions and shifts, and the energy with ShiftAddNAS's 45 nm unit energies for 32-bit and
8-bit operands (`adderjax.counting.ENERGY_PJ`).
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import statistics
import sys

from distill_table import write_fashion_cifar
from paper_tables import check_reusable, mean_sd, row, run_once

# (row name, workdir prefix, overrides)
ROWS = (
    ("CNN", "cnn", ["--config.layer=conv"]),
    ("AdderNet", "adder", ["--config.layer=adder"]),
    ("DeepShift-PS", "shift", ["--config.layer=shift"]),
    ("ShiftAddNet", "shiftadd", ["--config.layer=shiftadd"]),
    (
        "ShiftAddNet, frozen shifts",
        "frozen",
        ["--config.layer=shiftadd", "--config.shift_frozen=True"],
    ),
)


def _command(root: pathlib.Path, name: str, overrides: list[str], seed: int, args) -> list[str]:
    common = [
        f"--workdir={root / name}",
        f"--config.num_epochs={args.epochs}",
        f"--config.seed={seed}",
        "--config.progress_bar=False",
        "--config.plots=False",
        *([f"--config.num_train_steps={args.steps}"] if args.steps else []),
    ]
    if args.resnet20:
        return [
            "-m",
            "train.cifar",
            *common,
            "--config.data_format=cifar_pickle",
            f"--config.data_dir={args.fashion_cifar}",
            "--config.batch_size=128",
            "--config.worker_count=0",
            *overrides,
        ]
    return [
        "-m",
        "train.mnist",
        *common,
        *([f"--config.data_dir={args.data_dir}"] if args.data_dir else []),
        *overrides,
    ]


def op_counts(model_name: str, layer: str, shape, frozen: bool = False) -> dict[str, float]:
    """Per-image multiplications, additions, shifts and energy (uJ, 32- and 8-bit)."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from adderjax import count_ops, counting, models
    from adderjax.shift import ShiftOptions

    model = models.get_model(
        model_name, num_classes=10, layer=layer, shift_options=ShiftOptions(frozen=frozen)
    )
    c = count_ops(model, (1, *shape), convention="full", energy="shiftaddnas_32bit", train=False)
    eight = dataclasses.replace(c, energy=counting.ENERGY_PJ["shiftaddnas_8bit"])  # same counts
    return {
        "mul": c.multiplications,
        "add": c.additions,
        "shift": c.shifts,
        "energy_32bit": c.energy_pj / 1e6,
        "energy_8bit": eight.energy_pj / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="parent of the runs' workdirs")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=0, help="stop each run after this many steps")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", default=",".join(p for _, p, _ in ROWS), help="prefixes to run")
    parser.add_argument("--data_dir", default=None, help="the idx files (default: Debian's)")
    parser.add_argument("--resnet20", action="store_true", help="ResNet-20 on 32x32x3 inputs")
    parser.add_argument("--train_images", type=int, default=10_000, help="with --resnet20")
    args = parser.parse_args()
    root = pathlib.Path(args.root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    wanted = args.rows.split(",")
    unknown = sorted(set(wanted) - {p for _, p, _ in ROWS})
    if unknown:
        parser.error(
            f"--rows: unknown {', '.join(unknown)}; known: {', '.join(p for _, p, _ in ROWS)}"
        )
    rows = [r for r in ROWS if r[1] in wanted]
    prefix = "r20_" if args.resnet20 else ""
    if args.resnet20:
        args.fashion_cifar = write_fashion_cifar(root, args.train_images, args.data_dir)
    commands = {
        (label, seed): (
            f"{prefix}{name}_s{seed}",
            _command(root, f"{prefix}{name}_s{seed}", o, seed, args),
        )
        for seed in args.seeds
        for label, name, o in rows
    }
    for name, cmd in commands.values():  # before anything runs
        check_reusable(root, name, cmd)
    results = {key: run_once(root, name, cmd) for key, (name, cmd) in commands.items()}

    model, shape = ("resnet20", (32, 32, 3)) if args.resnet20 else ("lenet5_bn", (28, 28, 1))
    seeds = [f"seed {s}" for s in args.seeds]
    what = "ResNet-20 on 32x32x3 Fashion-MNIST" if args.resnet20 else "LeNet-5-BN on Fashion-MNIST"
    length = f"{args.steps} steps" if args.steps else f"{args.epochs} epochs"
    print(f"{what}, {length}, runs in {root}\n")
    header = ["top-1 %", *seeds, "mean ± sd", "mul", "add", "shift", "uJ 32-bit", "uJ 8-bit"]
    print(row([*header, "wall s"]))
    print(row(["---"] * (len(header) + 1)))
    for label, name, overrides in rows:
        rs = [results[label, s] for s in args.seeds]
        ok = [r for r in rs if "error" not in r]
        cells = [r["error"] if "error" in r else f"{100 * r['top1']:.2f}" for r in rs]
        layer = next(o.split("=")[1] for o in overrides if o.startswith("--config.layer="))
        c = op_counts(model, layer, shape, frozen=name == "frozen")
        wall = statistics.mean(r["wall_s"] for r in ok) if ok else float("nan")
        counts = [f"{c['mul'] / 1e6:.3f}M", f"{c['add'] / 1e6:.3f}M", f"{c['shift'] / 1e6:.3f}M"]
        energy = [f"{c['energy_32bit']:.2f}", f"{c['energy_8bit']:.3f}"]
        print(
            row([label, *cells, mean_sd([r["top1"] for r in ok]), *counts, *energy, f"{wall:.0f}"])
        )


if __name__ == "__main__":
    main()
