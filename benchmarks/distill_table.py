"""Distillation of a LeNet-5-BN AdderNet from its CNN, measured: six recipes over seeds.

    python benchmarks/distill_table.py --root /tmp/distill --epochs 2 --seeds 0 1 2
    python benchmarks/distill_table.py --root /tmp/q --quick --seeds 0   # 2 steps a run

Rows (each `python -m train.mnist` with the overrides shown, in its own workdir under
--root, per seed):
  CNN                 --config.layer=conv (also the finished teacher of "KD, finished")
  AdderNet            the plain AdderNet recipe
  KD, finished        logits from the finished CNN of the same seed (distill=kd)
  KD, progressive     logits from a CNN trained alongside (distill=pkkd, no features)
  features, plain     + the stage outputs standardised, aligned, squared error
  PKKD                + the kernel maps instead (distill=pkkd, the default features)

With --resnet20 it runs ResNet-20 instead, the network the paper reports, on the CIFAR-10
layout: Fashion-MNIST padded to 32x32 and tiled to 3 channels, written as CIFAR-10 pickles
under --root (the first --train_images training images, all 10,000 test images), rows
CNN, AdderNet, KD from a progressive CNN (logits only) and PKKD with the stage-level kernel
features (`python -m train.cifar`, workdirs r20_*).

A run whose results.json exists is not run again (an interrupted sweep resumes), and a
workdir made by another command is refused (`paper_tables.check_reusable`). Prints a markdown
table of the student's test top-1 per seed, their mean and standard deviation (ddof=1), the
teacher's top-1 where there is one, and the mean wall time.
"""

from __future__ import annotations

import argparse
import pathlib
import pickle
import statistics
import sys

import numpy as np
from paper_tables import check_reusable, mean_sd, row, run_once

# (row name, workdir prefix, overrides); "{teacher}" is the same seed's CNN workdir.
ROWS = (
    ("CNN", "cnn", ["--config.layer=conv"]),
    ("AdderNet", "adder", []),
    (
        "KD, finished CNN",
        "kd_finished",
        [
            "--config.distill=kd",
            "--config.teacher_workdir={teacher}",
            "--config.distill_features=none",
        ],
    ),
    (
        "KD, progressive",
        "kd_progressive",
        ["--config.distill=pkkd", "--config.distill_features=none"],
    ),
    ("features, plain", "plain", ["--config.distill=pkkd", "--config.distill_features=plain"]),
    ("PKKD (kernel features)", "pkkd", ["--config.distill=pkkd"]),
)


RESNET20_ROWS = (
    ("CNN", "r20_cnn", ["--config.layer=conv"]),
    ("AdderNet", "r20_adder", []),
    (
        "KD, progressive",
        "r20_kd_progressive",
        ["--config.distill=pkkd", "--config.distill_features=none"],
    ),
    ("PKKD (kernel features)", "r20_pkkd", ["--config.distill=pkkd"]),
)


def write_fashion_cifar(root: pathlib.Path, train_images: int, data_dir: str | None) -> str:
    """Fashion-MNIST as CIFAR-10 pickles: 2 zero pixels of padding a side, gray tiled to RGB."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    from train.data import sources

    out = root / "fashion_cifar"
    batches = out / "cifar-10-batches-py"
    if (batches / "test_batch").exists():
        return str(out)
    batches.mkdir(parents=True, exist_ok=True)

    def rows(split, limit=None):
        source, _ = sources.open_source(
            "fashion_mnist", split, data_format="idx", data_dir=data_dir
        )
        images, labels = source.images[:limit], source.labels[:limit]
        padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
        rgb = np.repeat(padded, 3, axis=-1)  # (N, 32, 32, 3)
        return rgb.transpose(0, 3, 1, 2).reshape(len(rgb), -1), [int(v) for v in labels]

    def dump(name, data, labels):
        with open(batches / name, "wb") as f:
            pickle.dump({b"data": data, b"labels": labels}, f, protocol=2)

    data, labels = rows("train", train_images)
    for i, idx in enumerate(np.array_split(np.arange(len(labels)), 5), start=1):
        dump(f"data_batch_{i}", data[idx], [labels[j] for j in idx])
    dump("test_batch", *rows("test"))
    return str(out)


# --quick: a few steps of small batches (the test suite's check that the rows run, not a result).
QUICK = [
    "--config.num_train_steps=2",
    "--config.batch_size=8",
    "--config.eval_batch_size=64",
    "--config.log_every_steps=1",
]


def _command(root: pathlib.Path, name: str, overrides: list[str], seed: int, args) -> list[str]:
    teacher = root / f"cnn_s{seed}"
    overrides = [*overrides, *(QUICK if args.quick else [])]
    if args.resnet20:
        return [
            "-m",
            "train.cifar",
            f"--workdir={root / name}",
            f"--config.num_epochs={args.epochs}",
            f"--config.seed={seed}",
            "--config.data_format=cifar_pickle",
            f"--config.data_dir={args.fashion_cifar}",
            "--config.batch_size=128",
            "--config.worker_count=0",
            "--config.progress_bar=False",
            "--config.plots=False",
            *overrides,
        ]
    return [
        "-m",
        "train.mnist",
        f"--workdir={root / name}",
        f"--config.num_epochs={args.epochs}",
        f"--config.seed={seed}",
        "--config.progress_bar=False",
        "--config.plots=False",
        *([f"--config.data_dir={args.data_dir}"] if args.data_dir else []),
        *(o.format(teacher=teacher) for o in overrides),
    ]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="parent of the runs' workdirs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--data_dir", default=None, help="the idx files (default: Debian's)")
    parser.add_argument("--resnet20", action="store_true", help="ResNet-20 on 32x32x3 inputs")
    parser.add_argument("--train_images", type=int, default=10_000, help="with --resnet20")
    parser.add_argument("--rows", default=None, help="workdir prefixes to run (default: all)")
    parser.add_argument(
        "--quick", action="store_true", help="2 steps a run (for the test suite; not a result)"
    )
    args = parser.parse_args(argv)
    root = pathlib.Path(args.root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    rows = ROWS
    if args.resnet20:
        args.fashion_cifar = write_fashion_cifar(root, args.train_images, args.data_dir)
        rows = RESNET20_ROWS
    if args.rows:
        wanted = args.rows.split(",")
        known = [p for _, p, _ in rows]
        if unknown := [w for w in wanted if w not in known]:
            parser.error(f"--rows: unknown {unknown}; choose from {known}")
        if "kd_finished" in wanted and "cnn" not in wanted:
            parser.error("--rows: kd_finished reads the same seed's CNN; add cnn")
        rows = tuple(r for r in rows if r[1] in wanted)
    commands = {
        (label, seed): (f"{prefix}_s{seed}", _command(root, f"{prefix}_s{seed}", o, seed, args))
        for seed in args.seeds  # seed by seed: a seed's CNN before the KD that reads it
        for label, prefix, o in rows
    }
    for name, cmd in commands.values():  # before anything runs
        check_reusable(root, name, cmd)
    results = {key: run_once(root, name, cmd) for key, (name, cmd) in commands.items()}

    seeds = [f"seed {s}" for s in args.seeds]
    what = "ResNet-20 on 32x32x3 Fashion-MNIST" if args.resnet20 else "LeNet-5-BN on Fashion-MNIST"
    print(f"{what}, {args.epochs} epochs, runs in {root}\n")
    print(row(["student top-1 %", *seeds, "mean ± sd", "teacher top-1 %", "wall s"]))
    print(row(["---"] * (len(seeds) + 4)))
    for label, _, _ in rows:
        rs = [results[label, s] for s in args.seeds]
        ok = [r for r in rs if "error" not in r]
        cells = [r["error"] if "error" in r else f"{100 * r['top1']:.2f}" for r in rs]
        teachers = [r["teacher"]["top1"] for r in ok if "teacher" in r]
        wall = statistics.mean(r["wall_s"] for r in ok) if ok else float("nan")
        stats = [mean_sd([r["top1"] for r in ok]), mean_sd(teachers), f"{wall:.0f}"]
        print(row([label, *cells, *stats]))


if __name__ == "__main__":
    main()
