"""The AdderNet paper's MNIST-scale tables, re-run: the eta sweep (Table 5) and the ablation of
the training rules (Table 4), LeNet-5-BN on Fashion-MNIST (or MNIST), plus the CNN baseline;
and the journal version's ablation with l2-to-l1 training (its Table 4), the epoch at which
p reaches 1 (its Table 6) and the learning curves of v1 (p = 1) and v2 (l2 to l1, Fig. 6).

    python benchmarks/paper_tables.py --root /tmp/paper_tables --epochs 3
    python benchmarks/paper_tables.py --root /tmp/journal --epochs 8 --only journal

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

The journal's rules (HT always on):
  FP:    as above;
  l2l1:  p falls linearly from 2 to 1 over the first 3/4 of the epochs, the journal's 600 of
         800 (config.p_init=2, p_decay_epochs), vs p = 1 throughout;
  ALR:   as above.
Its Table 6 moves the epoch where p reaches 1 over 3/8 .. 7/8 of the run, the journal's
300 .. 700 of 800 (with --epochs 8, exactly those fractions). Fig. 6 (``ROOT/fig6.png``)
draws the test accuracy and train loss of v1 (the full recipe at p = 1) and v2 (with l2l1)
from their metrics.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from train import plots, reporting  # noqa: E402 (after the path insert)

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


# (FP, l2l1, ALR) rows of the journal's Table 4, the full recipe first; its values (the
# check marks' columns were lost in the text: only "none" 80.77 and "all" 92.32 are sure).
JOURNAL_ABLATION = (
    (True, True, True),
    (True, True, False),
    (True, False, True),
    (False, True, True),
    (True, False, False),
    (False, True, False),
    (False, False, True),
    (False, False, False),
)
JOURNAL_TABLE4 = (80.77, 85.34, 86.21, 90.14, 87.61, 91.83, 91.80, 92.32)  # CIFAR-10, ResNet-20
# The journal's Table 6 (CIFAR-10, 800 epochs): the epoch p reaches 1 -> top-1 %.
JOURNAL_TABLE6 = {300: 91.91, 400: 92.00, 500: 92.11, 600: 92.31, 700: 91.76}
P_DECAY_FRACTIONS = tuple(e / 800 for e in JOURNAL_TABLE6)
V2_FRACTION = 600 / 800


def decay_epochs(fraction: float, epochs: int) -> int:
    """The epoch at which p reaches 1, `fraction` of a run of `epochs` (at least 1)."""
    return max(1, round(fraction * epochs))


def _journal_name(fp: bool, l2l1: bool, alr: bool, decay: int) -> str:
    if not l2l1:
        return _ablation_name(fp, True, alr)  # the CVPR ablation's run with HT on
    return f"adder_{'fp' if fp else 'sign'}_l2l1e{decay}_{'alr' if alr else 'sgd'}"


def _l2l1(decay: int) -> list[str]:
    return ["--config.p_init=2.0", "--config.p_final=1.0", f"--config.p_decay_epochs={decay}"]


def _eta_name(eta: float) -> str:
    return f"adder_eta{eta:g}"


def _ablation_name(fp: bool, ht: bool, alr: bool) -> str:
    if fp and ht and alr:
        return _eta_name(0.2)  # the default recipe, shared with the eta sweep
    return f"adder_{'fp' if fp else 'sign'}_{'ht' if ht else 'signin'}_{'alr' if alr else 'sgd'}"


def _rules(fp: bool, ht: bool, alr: bool) -> list[str]:
    return [
        f"--config.filter_grad={'full_precision' if fp else 'sign'}",
        f"--config.input_grad={'hardtanh' if ht else 'lp'}",
        f"--config.adaptive_lr={alr}",
    ]


def _journal_runs(epochs: int) -> dict[str, list[str]]:
    """The journal's Table 4 and Table 6 runs: workdir name -> config overrides."""
    v2 = decay_epochs(V2_FRACTION, epochs)
    runs = {}
    for fp, l2l1, alr in JOURNAL_ABLATION:
        name = _journal_name(fp, l2l1, alr, v2)
        runs[name] = _rules(fp, True, alr) + (_l2l1(v2) if l2l1 else [])
    for fraction in P_DECAY_FRACTIONS:
        decay = decay_epochs(fraction, epochs)
        runs.setdefault(
            _journal_name(True, True, True, decay), _rules(True, True, True) + _l2l1(decay)
        )
    return runs


def _runs(epochs: int = 3) -> dict[str, list[str]]:
    """workdir name -> config overrides (the CVPR tables' and the journal's)."""
    runs = {"cnn": ["--config.layer=conv"]}
    for eta in ETAS:
        runs[_eta_name(eta)] = [f"--config.eta={eta}"]
    for fp, ht, alr in ABLATION:
        runs.setdefault(_ablation_name(fp, ht, alr), _rules(fp, ht, alr))
    for name, overrides in _journal_runs(epochs).items():
        runs.setdefault(name, overrides)
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


def mean_sd(values: list[float]) -> str:
    """ "mean ± sd" (ddof=1) of fractions, in percent; "" for none, nan sd for one."""
    if not values:
        return ""
    mean = statistics.mean(values)
    spread = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{100 * mean:.2f} ± {100 * spread:.2f}"


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
    parser.add_argument(
        "--only", choices=("all", "cvpr", "eta", "ablation", "journal"), default="all",
        help="cvpr: eta and ablation; journal: the journal's Tables 4 and 6 and Fig. 6",
    )  # fmt: skip
    args = parser.parse_args()
    if args.epochs < 1:
        parser.error(f"--epochs must be >= 1, got {args.epochs}")
    root = pathlib.Path(args.root).absolute()
    root.mkdir(parents=True, exist_ok=True)
    runs = _runs(args.epochs)
    groups = {
        "eta": {"cnn", *map(_eta_name, ETAS)},
        "ablation": {"cnn", *(_ablation_name(*r) for r in ABLATION)},
        "journal": {"cnn", *_journal_runs(args.epochs)},
    }
    groups["cvpr"] = groups["eta"] | groups["ablation"]
    wanted = set(runs) if args.only == "all" else groups[args.only]
    commands = {n: _command(root, n, o, args) for n, o in runs.items() if n in wanted}
    for name, cmd in commands.items():  # before anything runs
        check_reusable(root, name, cmd)
    results = {name: run_once(root, name, cmd) for name, cmd in commands.items()}

    head = ["top-1 %", "top-5 %", "train loss", "wall s"]
    print(f"LeNet-5-BN on {args.dataset}, {args.epochs} epochs, runs in {root}\n")
    print(row(["CNN (same recipe)", *head]))
    print(row(["---"] * 5))
    print(row(["`--config.layer=conv`", *_metrics(results["cnn"])]))
    if args.only in ("all", "cvpr", "eta"):
        print("\nTable 5: the local learning rate eta (AdderNet, full recipe)\n")
        print(row(["eta", *head]))
        print(row(["---"] * 5))
        for eta in ETAS:
            print(row([f"{eta:g}", *_metrics(results[_eta_name(eta)])]))
    if args.only in ("all", "cvpr", "ablation"):
        print("\nTable 4: training rules (AdderNet, eta 0.2)\n")
        print(row(["FP", "HT", "ALR", *head]))
        print(row(["---"] * 7))
        for fp, ht, alr in ABLATION:
            marks = ["yes" if b else "no" for b in (fp, ht, alr)]
            print(row([*marks, *_metrics(results[_ablation_name(fp, ht, alr)])]))
    if args.only in ("all", "journal"):
        journal_tables(root, args.epochs, results, head)


def journal_tables(root: pathlib.Path, epochs: int, results: dict, head: list[str]) -> None:
    """The journal's Table 4 (FP, l2l1, ALR) and Table 6 beside its values, and Fig. 6."""
    v2 = decay_epochs(V2_FRACTION, epochs)
    print(f"\nJournal Table 4: training rules with l2-to-l1 (HT on; p reaches 1 at epoch {v2})\n")
    print("The journal's values (CIFAR-10, ResNet-20), in its column order, whose check marks")
    print(f"were lost: {', '.join(map(str, JOURNAL_TABLE4))} (none: 80.77, all: 92.32).\n")
    print(row(["FP", "l2l1", "ALR", *head]))
    print(row(["---"] * 7))
    for fp, l2l1, alr in JOURNAL_ABLATION:
        marks = ["yes" if b else "no" for b in (fp, l2l1, alr)]
        print(row([*marks, *_metrics(results[_journal_name(fp, l2l1, alr, v2)])]))
    print(f"\nJournal Table 6: the epoch p reaches 1, of {epochs} (full recipe, l2 to l1)\n")
    print(row(["p = 1 from epoch", "the journal's (of 800)", "its top-1 %", *head]))
    print(row(["---"] * 7))
    for (paper_epoch, paper_acc), fraction in zip(
        JOURNAL_TABLE6.items(), P_DECAY_FRACTIONS, strict=True
    ):
        decay = decay_epochs(fraction, epochs)
        name = _journal_name(True, True, True, decay)
        print(row([decay, paper_epoch, f"{paper_acc:.2f}", *_metrics(results[name])]))
    curves = {}
    for label, name in (("v1 (p = 1)", _eta_name(0.2)),
                        ("v2 (l2 to l1)", _journal_name(True, True, True, v2))):  # fmt: skip
        if (root / name / "metrics.jsonl").exists():
            curves[label] = reporting.read_metrics(root / name)
    plots.compare_curves(curves, root / "fig6.png", "AdderNet v1 and v2 (journal Fig. 6)")
    print(f"\nFig. 6: {root / 'fig6.png'}")


if __name__ == "__main__":
    main()
