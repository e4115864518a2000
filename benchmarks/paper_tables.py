"""The AdderNet paper's MNIST-scale tables, re-run: the eta sweep (Table 5) and the ablation of
the training rules (Table 4), LeNet-5-BN on Fashion-MNIST (or MNIST), plus the CNN baseline.

    python benchmarks/paper_tables.py --root /tmp/paper_tables --epochs 3

Every run is `python -m train.mnist` with the overrides shown in the table, in its own workdir
under --root; a run whose results.json is already there is not run again, so an interrupted
sweep picks up where it stopped (and `python -m train.analyze` can read the workdirs after).
Each workdir keeps the command that made it (command.txt): a --root holds one choice of
--epochs, --dataset and --data_dir, and a workdir made with other ones is refused.
Prints markdown tables: test top-1 / top-5, the train loss of the last logged steps and the
wall time of every run.

The ablation's rules:
  FP:  filter gradient x - w (config.filter_grad="full_precision") vs sign(x - w) ("sign");
  HT:  input gradient clip(w - x, -1, 1) ("hardtanh") vs sign(w - x) ("lp" at p = 1);
  ALR: the adaptive learning rate eta * sqrt(k) / ||g|| on the adder filters
       (config.adaptive_lr) vs plain SGD with the same schedule.
With neither FP nor HT the network trains on the true gradient of its l_1 forward.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import subprocess
import sys
import time

ETAS = (0.05, 0.1, 0.2, 0.5, 1.0)
# (FP, HT, ALR) rows of the ablation, the paper's full recipe first.
ABLATION = (
    (True, True, True),
    (True, True, False),
    (True, False, True),
    (False, True, True),
    (False, True, False),
    (False, False, False),
)


def _eta_name(eta: float) -> str:
    return f"adder_eta{eta:g}"


def _ablation_name(fp: bool, ht: bool, alr: bool) -> str:
    if fp and ht and alr:
        return _eta_name(0.2)  # the default recipe, shared with the eta sweep
    return f"adder_{'fp' if fp else 'sign'}_{'ht' if ht else 'signin'}_{'alr' if alr else 'sgd'}"


def _runs() -> dict[str, list[str]]:
    """workdir name -> config overrides."""
    runs = {"cnn": ["--config.adder=False"]}
    for eta in ETAS:
        runs[_eta_name(eta)] = [f"--config.eta={eta}"]
    for fp, ht, alr in ABLATION:
        runs.setdefault(
            _ablation_name(fp, ht, alr),
            [
                f"--config.filter_grad={'full_precision' if fp else 'sign'}",
                f"--config.input_grad={'hardtanh' if ht else 'lp'}",
                f"--config.adaptive_lr={alr}",
            ],
        )
    return runs


def _command(root: pathlib.Path, name: str, overrides: list[str], args) -> list[str]:
    return [
        "-m",
        "train.mnist",
        f"--workdir={root / name}",
        f"--config.num_epochs={args.epochs}",
        f"--config.dataset={args.dataset}",
        "--config.progress_bar=False",
        *([f"--config.data_dir={args.data_dir}"] if args.data_dir else []),
        *overrides,
    ]


def check_reusable(root: pathlib.Path, name: str, cmd: list[str]) -> None:
    """A workdir that already holds a run must hold this run: same epochs, data and overrides."""
    workdir, stored = root / name, root / name / "command.txt"
    if not workdir.exists():
        return
    if not stored.exists():
        sys.exit(f"error: {workdir} exists but was not made by this script; use another --root")
    made_by = stored.read_text().strip()
    if made_by != " ".join(cmd):
        sys.exit(
            f"error: {workdir} holds another run ({made_by!r}); "
            "use another --root for other settings"
        )


def run_once(root: pathlib.Path, name: str, cmd: list[str]) -> dict:
    workdir = root / name
    results = workdir / "results.json"
    timing = workdir / "wall_seconds.txt"
    if not results.exists():
        print("$", " ".join(cmd), file=sys.stderr, flush=True)
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "command.txt").write_text(" ".join(cmd) + "\n")
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        if done.returncode != 0:
            tail = done.stderr.strip().splitlines()[-1:] or ["(no output)"]
            return {"error": f"exit {done.returncode}: {tail[0]}"}
        timing.write_text(f"{time.perf_counter() - start:.1f}\n")
    out = json.loads(results.read_text())
    out["wall_s"] = float(timing.read_text()) if timing.exists() else float("nan")
    lines = (workdir / "metrics.jsonl").read_text().splitlines()
    train = [m for m in map(json.loads, lines) if m.get("split") == "train"]
    out["train_loss"] = train[-1]["loss"] if train else float("nan")
    return out


def row(cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def _metrics(r: dict) -> list[str]:
    if "error" in r:
        return [r["error"], "", "", ""]
    return [
        f"{100 * r['top1']:.2f}",
        f"{100 * r['top5']:.2f}",
        f"{r['train_loss']:.3f}",
        f"{r['wall_s']:.0f}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="parent of the runs' workdirs")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist, mnist, kmnist")
    parser.add_argument("--data_dir", default=None, help="the idx files (default: Debian's)")
    parser.add_argument("--only", choices=("all", "eta", "ablation"), default="all")
    args = parser.parse_args()
    root = pathlib.Path(args.root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    runs = _runs()
    wanted = set(runs)
    if args.only == "eta":
        wanted = {"cnn", *map(_eta_name, ETAS)}
    elif args.only == "ablation":
        wanted = {"cnn", *(_ablation_name(*r) for r in ABLATION)}
    commands = {n: _command(root, n, o, args) for n, o in runs.items() if n in wanted}
    for name, cmd in commands.items():  # before anything runs
        check_reusable(root, name, cmd)
    results = {name: run_once(root, name, cmd) for name, cmd in commands.items()}

    head = ["top-1 %", "top-5 %", "train loss", "wall s"]
    print(f"LeNet-5-BN on {args.dataset}, {args.epochs} epochs, runs in {root}\n")
    print(row(["CNN (same recipe)", *head]))
    print(row(["---"] * 5))
    print(row(["`--config.adder=False`", *_metrics(results["cnn"])]))
    if args.only in ("all", "eta"):
        print("\nTable 5: the local learning rate eta (AdderNet, full recipe)\n")
        print(row(["eta", *head]))
        print(row(["---"] * 5))
        for eta in ETAS:
            print(row([f"{eta:g}", *_metrics(results[_eta_name(eta)])]))
    if args.only in ("all", "ablation"):
        print("\nTable 4: training rules (AdderNet, eta 0.2)\n")
        print(row(["FP", "HT", "ALR", *head]))
        print(row(["---"] * 7))
        for fp, ht, alr in ABLATION:
            marks = ["yes" if b else "no" for b in (fp, ht, alr)]
            print(row([*marks, *_metrics(results[_ablation_name(fp, ht, alr)])]))


if __name__ == "__main__":
    main()
