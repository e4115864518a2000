r"""AdderSR's table on real photographs: bicubic, the CNN, AdderSR and its two ablations.

    python benchmarks/sr_table.py --out /work/runs/sr_table
    python benchmarks/sr_table.py --out runs/sr_vdsr_x3 --model vdsr --scale 3 --seeds 0,1,2
    python benchmarks/sr_table.py --out /tmp/sr_quick --quick     # a few steps (the suite)
    python benchmarks/sr_table.py --summary runs/sr/*             # finished tables side by side

No SR benchmark (Set5, DIV2K, ...) installs offline; scikit-image's wheel ships real
photographs. A fixed split of them is written to ``OUT/photos`` (never to be called Set5):

* train (10): astronaut, brick, camera, cell, grass, gravel, hubble_deep_field, ihc,
  motorcycle_left, retina;
* test (5): chelsea, coffee, coins, moon, rocket.

(left out: the synthetic images, and motorcycle_right, the same scene as motorcycle_left.)
Each variant is one ``python -m train.sr`` run in ``OUT/runs/VARIANT_sSEED`` (a finished run
is read, not run again), the same small network (``--blocks`` x ``--features``: EDSR blocks
or VDSR layers) for all, at ``--scale``. It prints a markdown table (PSNR / SSIM on the Y
channel of the test photos, scale pixels of border cropped, mean ± standard deviation over
the seeds; the operation and energy counts of `adderjax.count_ops` for a 1280x720 output),
then the learning curves (test PSNR at every evaluation, mean over the seeds), writes
``OUT/results.json`` and plots the curves to ``OUT/curves.png``. ``--quick`` runs each
variant for a few steps on small patches: the suite's check that the program works, not a
result. ``--summary DIR ...`` reads finished tables' ``results.json`` and prints CNN against
AdderSR for each network and scale beside the authors' Set5 numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TRAIN = ("astronaut.png", "brick.png", "camera.png", "cell.png", "grass.png", "gravel.png",
         "hubble_deep_field.jpg", "ihc.png", "motorcycle_left.png", "retina.jpg")  # fmt: skip
TEST = ("chelsea.png", "coffee.png", "coins.png", "moon.png", "rocket.jpg")
VARIANTS = {
    "cnn": ["--config.layer=conv"],
    "addersr": [],
    "no_shortcut": ["--config.self_shortcut=False"],
    "no_power": ["--config.power_activation=False"],
}
LABELS = {
    "bicubic": "bicubic",
    "cnn": "CNN",
    "addersr": "AdderSR",
    "no_shortcut": "AdderSR without self-shortcut",
    "no_power": "AdderSR without power activation",
}


def write_photos(out: pathlib.Path) -> pathlib.Path:
    import skimage  # noqa: PLC0415 (an optional dependency, only this program needs it)

    source = pathlib.Path(skimage.__file__).parent / "data"
    photos = out / "photos"
    for split, names in (("train", TRAIN), ("test", TEST)):
        (photos / split).mkdir(parents=True, exist_ok=True)
        for name in names:
            shutil.copyfile(source / name, photos / split / name)
    return photos


def run_args(args, photos: pathlib.Path, variant: str, seed: int, workdir: pathlib.Path):
    steps_per_epoch = len(TRAIN) * args.repeat // args.batch
    epochs = max(1, args.steps // steps_per_epoch)
    return [
        sys.executable, "-m", "train.sr", f"--workdir={workdir}",
        f"--config=train/configs/sr.py:{args.model},{args.scale}",
        f"--config.train_data={photos / 'train'}", f"--config.eval_data={photos / 'test'}",
        f"--config.num_blocks={args.blocks}", f"--config.depth={args.blocks}",
        f"--config.features={args.features}", f"--config.patch_size={args.patch}",
        f"--config.batch_size={args.batch}", f"--config.repeat={args.repeat}",
        f"--config.num_epochs={epochs}", f"--config.learning_rate={args.lr}",
        f"--config.lr_decay_epochs={max(1, 2 * epochs // 3)}",
        f"--config.eval_every_epochs={max(1, epochs // 10)}", f"--config.seed={seed}",
        "--config.worker_count=0", "--config.progress_bar=False", *VARIANTS[variant],
    ]  # fmt: skip


def counts(args) -> dict:
    from adderjax import count_ops, sr_models  # noqa: PLC0415 (after sys.path is set)

    out = {}
    for variant, flags in VARIANTS.items():
        kw = dict(
            scale=args.scale,
            features=args.features,
            layer="conv" if "--config.layer=conv" in flags else "adder",
        )
        kw.update(num_blocks=args.blocks) if args.model == "edsr" else kw.update(depth=args.blocks)
        model = sr_models.get_sr_model(args.model, **kw)
        c = count_ops(model, (1, 360, 640, 3), convention="full", train=False)
        out[variant] = {
            "mul": c.multiplications,
            "add": c.additions,
            "energy_uj": c.energy_pj / 1e6,
        }
    return out


# The authors' README (PSNR / SSIM on Set5's Y channel, DIV2K training, full-size networks):
# (model, scale) -> (CNN, AdderSR); bicubic's Set5 rows from the VDSR and EDSR papers.
PAPER_SET5 = {
    ("vdsr", 2): ((37.53, 0.9587), (37.37, 0.9575)),
    ("edsr", 2): ((38.11, 0.9601), (37.92, 0.9589)),
    ("vdsr", 3): ((33.66, 0.9213), (33.47, 0.9151)),
    ("edsr", 3): ((34.65, 0.9282), (34.35, 0.9212)),
    ("vdsr", 4): ((31.35, 0.8838), (31.27, 0.8762)),
    ("edsr", 4): ((32.46, 0.8968), (32.13, 0.8864)),
}
BICUBIC_SET5 = {2: (33.66, 0.9299), 3: (30.39, 0.8682), 4: (28.42, 0.8104)}


def summary(dirs: list[pathlib.Path]) -> None:
    """CNN against AdderSR for every finished table in ``dirs``, beside the paper's Set5: the
    gap in dB, and how much of the CNN's gain over bicubic AdderSR keeps."""
    print(
        "| network | steps | seeds | bicubic | CNN | AdderSR | gap (dB) | AdderSR keeps | "
        "the paper, Set5: CNN / AdderSR | gap | keeps |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for out in dirs:
        saved = json.loads((out / "results.json").read_text())
        setup, r = saved["setup"], saved["psnr_ssim"]
        if "cnn" not in r or "addersr" not in r:
            continue
        model, scale = setup["model"], setup["scale"]
        bicubic = r["bicubic"]["test_psnr"][0]
        cnn, adder = np.array(r["cnn"]["test_psnr"]), np.array(r["addersr"]["test_psnr"])
        ms = lambda v: f"{v.mean():.2f} ± {v.std(ddof=1):.2f}" if len(v) > 1 else f"{v[0]:.2f}"
        gap, keeps = cnn.mean() - adder.mean(), (adder.mean() - bicubic) / (cnn.mean() - bicubic)
        (pc, _), (pa, _) = PAPER_SET5[model, scale]
        pb = BICUBIC_SET5[scale][0]
        print(
            f"| {model} x{scale} ({setup['blocks']} x {setup['features']}) | {setup['steps']} | "
            f"{len(cnn)} | {bicubic:.2f} | {ms(cnn)} | {ms(adder)} | {gap:.2f} | "
            f"{100 * keeps:.0f}% | {pc:.2f} / {pa:.2f} | {pc - pa:.2f} | "
            f"{100 * (pa - pb) / (pc - pb):.0f}% |"
        )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, help="the table's folder (required)")
    parser.add_argument(
        "--summary", type=pathlib.Path, nargs="+", help="finished tables' --out folders"
    )
    parser.add_argument("--model", default="edsr", choices=("edsr", "vdsr"))
    parser.add_argument("--blocks", type=int, default=4, help="EDSR blocks or VDSR depth")
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--patch", type=int, default=24)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeat", type=int, default=160)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--seeds", default="0")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--scale", type=int, default=2, choices=(2, 3, 4))
    parser.add_argument("--jobs", type=int, default=2, help="runs at once")
    parser.add_argument(
        "--quick", action="store_true", help="a few steps on small patches (for the test suite)"
    )
    args = parser.parse_args(argv)
    if args.summary:
        if missing := [str(d) for d in args.summary if not (d / "results.json").exists()]:
            parser.error(f"--summary: no results.json in {', '.join(missing)}")
        summary(args.summary)
        return
    if args.out is None:
        parser.error("--out is required (or --summary)")
    if args.quick:
        args.steps, args.repeat, args.patch, args.batch = 4, 2, 12, 4
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    photos = write_photos(args.out)
    todo, running = [], []
    for variant in variants:
        for seed in seeds:
            workdir = args.out / "runs" / f"{variant}_s{seed}"
            if not (workdir / "results.json").exists():
                todo.append((variant, seed, workdir))
    env = {**os.environ, "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    while todo or running:
        while todo and len(running) < args.jobs:
            variant, seed, workdir = todo.pop(0)
            workdir.mkdir(parents=True, exist_ok=True)
            log = open(workdir / "log.txt", "w")  # noqa: SIM115 (closed when the run ends)
            cmd = run_args(args, photos, variant, seed, workdir)
            running.append(
                (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=log), log, workdir)
            )
        proc, log, workdir = running.pop(0)
        if proc.wait() != 0:
            sys.exit(f"run {workdir} failed: see {workdir / 'log.txt'}")
        log.close()
    results, curves = {}, {}
    for variant in variants:
        rows = [json.loads((args.out / "runs" / f"{variant}_s{s}" / "results.json").read_text())
                for s in seeds]  # fmt: skip
        results[variant] = {k: [r[k] for r in rows] for k in ("test_psnr", "test_ssim")}
        curves[variant] = learning_curve([args.out / "runs" / f"{variant}_s{s}" for s in seeds])
        results["bicubic"] = {
            "test_psnr": [rows[0]["test_bicubic_psnr"]], "test_ssim": [rows[0]["test_bicubic_ssim"]]
        }  # fmt: skip
    ops = counts(args)
    unit = "blocks" if args.model == "edsr" else "layers"
    print(
        f"{args.model} x{args.scale}, {args.blocks} {unit} x {args.features} channels, "
        f"{args.steps} steps, seeds {args.seeds}; test photos (Y, border {args.scale})\n"
    )
    print("| method | PSNR (dB) | SSIM | multiplications | additions | energy (uJ) |")
    print("|---|---|---|---|---|---|")
    for variant in ["bicubic", *variants]:
        r = results[variant]
        p, s = np.array(r["test_psnr"]), np.array(r["test_ssim"])
        spread = f" ± {p.std(ddof=1):.2f}" if len(p) > 1 else ""
        c = ops.get(variant)
        cells = (
            f"{c['mul'] / 1e9:.2f} G | {c['add'] / 1e9:.2f} G | {c['energy_uj']:.0f}"
            if c
            else "— | — | —"
        )
        print(f"| {LABELS[variant]} | {p.mean():.2f}{spread} | {s.mean():.4f} | {cells} |")
    print_curves(curves)
    plot_curves(curves, results["bicubic"]["test_psnr"][0], args, args.out / "curves.png")
    (args.out / "results.json").write_text(
        json.dumps(
            {
                "setup": {
                    k: getattr(args, k) for k in ("model", "scale", "blocks", "features", "steps")
                },
                "psnr_ssim": results,
                "ops": ops,
                "curves": curves,
            },
            indent=2,
        )
    )


def learning_curve(workdirs: list[pathlib.Path]) -> dict[str, list[float]]:
    """Test PSNR at every evaluation step of the runs: the steps all of them evaluated at, the
    mean and the spread (max - min) over the runs."""
    from train import reporting  # noqa: PLC0415 (after sys.path is set)

    per_run = []
    for workdir in workdirs:
        evals = [m for m in reporting.read_metrics(workdir) if m.get("split") == "eval"]
        per_run.append({int(m["step"]): float(m["test_psnr"]) for m in evals})
    steps = sorted(set.intersection(*(set(r) for r in per_run)))
    values = np.array([[r[step] for step in steps] for r in per_run])
    return {
        "step": steps,
        "psnr": values.mean(axis=0).round(3).tolist(),
        "spread": (values.max(axis=0) - values.min(axis=0)).round(3).tolist(),
    }


def print_curves(curves: dict) -> None:
    """A markdown table: one row per evaluation step, a column per variant."""
    variants = list(curves)
    steps = curves[variants[0]]["step"]
    print("\nTest PSNR (dB) during training, mean over the seeds:\n")
    print("| step | " + " | ".join(LABELS[v] for v in variants) + " |")
    print("|---:|" + "---:|" * len(variants))
    for i, step in enumerate(steps):
        cells = []
        for v in variants:
            c = curves[v]
            cells.append(
                f"{c['psnr'][i]:.2f}" if i < len(c["step"]) and c["step"][i] == step else ""
            )
        print(f"| {step} | " + " | ".join(cells) + " |")


def plot_curves(curves: dict, bicubic: float, args, path: pathlib.Path) -> None:
    from matplotlib.figure import Figure  # noqa: PLC0415 (only when plotting)

    from train import plots  # noqa: PLC0415 (after sys.path is set)

    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for variant, c in curves.items():
        ax.plot(c["step"], c["psnr"], marker="o", ms=3, label=LABELS[variant])
    ax.axhline(bicubic, color="gray", ls="--", lw=1, label="bicubic")
    ax.set_xlabel("step")
    ax.set_ylabel("test PSNR (dB, Y)")
    ax.set_title(f"{args.model} x{args.scale}, {args.blocks} x {args.features}, seeds {args.seeds}")
    ax.grid(alpha=0.3)
    ax.legend()
    plots.save_figure(fig, path)


if __name__ == "__main__":
    main()
