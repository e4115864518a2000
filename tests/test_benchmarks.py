"""The benchmark scripts: kernels.py refuses to time without a GPU and its roofline is the
kernels' own, its TPU bundle report reads libtpu's dumps (and needs libtpu); scaling.py and
train_step.py run their tables end to end."""

import importlib.util
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import pytest
from conftest import XLA_FLAGS

import adderjax
import kernels.adder_triton

BENCH = pathlib.Path(__file__).resolve().parents[1] / "benchmarks"


def _run(*args):
    return subprocess.run(
        [sys.executable, str(BENCH / "kernels.py"), *args], capture_output=True, text=True
    )


def _script(name, *args, timeout=600):
    """benchmarks/NAME run with ARGS from the repository root; its completed process."""
    return subprocess.run(
        [sys.executable, str(BENCH / name), *args],
        capture_output=True,
        text=True,
        cwd=BENCH.parent,
        timeout=timeout,
    )


def test_without_a_gpu_it_says_so_and_exits():
    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is present: the benchmark would run")
    result = _run("--only", "resnet20")
    assert result.returncode == 1
    assert "needs a GPU" in result.stderr and result.stdout == ""


def test_roofline_table_matches_the_kernel_docstring():
    result = _run("--roofline")
    assert result.returncode == 0, result.stderr
    printed = {
        row[0]: row[1:]
        for row in (
            [c.strip() for c in line.strip("|").split("|")]
            for line in result.stdout.splitlines()
            if line.startswith("| r")
        )
    }
    assert len(printed) == 14
    doc = kernels.adder_triton.__doc__
    for name, (terms, fwd, _, dx, _, dw, _, total) in printed.items():
        row = re.search(
            re.escape(name) + r"\s+([\d.]+)\s+(\d+) \w+\.\s+(\d+) \w+\.\s+(\d+) \w+\.\s+(\d+)", doc
        )
        assert row is not None, name
        assert row.groups() == (terms, fwd, dx, dw, total), name


@pytest.mark.slow
def test_scaling_prints_a_row_per_device_count():
    env = {**os.environ, "XLA_FLAGS": XLA_FLAGS}  # scaling.py sets the device count
    result = subprocess.run(
        [
            sys.executable,
            str(BENCH / "scaling.py"),
            "--model=lenet5_bn",
            "--per-device-batch=2",
            "--steps=1",
            "--warmup=0",
            "--device-counts=1,2",  # each count compiles the step again: 2 of 4 halve the time
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=BENCH.parent,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [ln.split("|")[1:-1] for ln in result.stdout.splitlines() if re.match(r"\| \d", ln)]
    assert [int(r[0]) for r in rows] == [1, 2]
    assert [int(r[1]) for r in rows] == [2, 4]  # weak scaling: 2 images per device
    assert all(float(r[3]) > 0 for r in rows)
    assert float(rows[0][4]) == 1.0


def test_train_step_prints_each_adder_implementation_beside_its_cnn():
    result = _script("train_step.py", "--models=lenet5_bn", "--batch=4", "--steps=1", "--warmup=0")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [ln.split("|")[1:-1] for ln in result.stdout.splitlines() if ln.startswith("| lenet")]
    variants = [r[1].strip() for r in rows]
    implementations = adderjax.available_implementations()
    assert variants == [f"AdderNet, {i}" for i in implementations] + ["CNN"]
    assert all(float(r[2]) > 0 and float(r[3]) > 0 for r in rows)
    assert float(rows[-1][4]) == 1.0  # the CNN against itself


def test_ops_prints_both_tables_for_a_shape():
    """ops.py end to end on its one small shape: the timing table, and with the native kernels
    the bound table, every cell a number (page faults included)."""
    result = _script("ops.py", "--only=tiny", "--repeats=1", "--warmup=1")
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [ln.split("|")[1:-1] for ln in result.stdout.splitlines() if ln.startswith("| tiny")]
    native = adderjax.default_implementation() == "native"
    assert len(rows) == (2 if native else 1)
    assert len(rows[0]) == 12  # with the XLA path's two columns
    for row in rows:
        [float(cell) for cell in row[1:]]
    if native:
        header = next(ln for ln in result.stdout.splitlines() if ln.startswith("| shape |"))
        assert "| fwd faults | floor faults |" in header
        assert len(rows[1]) == 16 and float(rows[1][5]) >= 0 and float(rows[1][6]) >= 0
    assert "geometric mean ratio: forward" in result.stdout


def test_train_step_names_a_bad_model():
    result = subprocess.run(
        [sys.executable, str(BENCH / "train_step.py"), "--models=resnet21"],
        capture_output=True,
        text=True,
        cwd=BENCH.parent,
        timeout=120,
    )
    assert result.returncode == 2
    assert "expected a comma-separated list of ('lenet5_bn', 'resnet20'), got 'resnet21'" in (
        result.stderr
    )


def _load_paper_tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("paper_tables", BENCH / "paper_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_paper_tables_overrides_are_valid_configs():
    import ml_collections

    from train import config_checks
    from train.configs import mnist

    module = _load_paper_tables()
    runs = module._runs(8)
    # The CNN, 5 etas, 5 more ablation rows (one shares eta 0.2); the journal's Table 4 adds
    # its 4 l2-to-l1 rows (its p = 1 rows are the ablation's), Table 6 4 more decay epochs.
    assert len(runs) == 19
    for overrides in runs.values():
        config = mnist.get_config()
        for flag in overrides:
            key, value = flag.removeprefix("--config.").split("=")
            config[key] = type(config[key])(
                value == "True" if value in ("True", "False") else value
            )
        config_checks.validate(ml_collections.ConfigDict(config), device_count=1)
    assert runs["adder_sign_signin_sgd"] == [
        "--config.filter_grad=sign",
        "--config.input_grad=lp",
        "--config.adaptive_lr=False",
    ]
    # v2: p from 2 to 1 over 6 of 8 epochs (the journal's 600 of 800); Table 6: 3..7 of 8.
    assert runs["adder_fp_l2l1e6_alr"][-3:] == [
        "--config.p_init=2.0",
        "--config.p_final=1.0",
        "--config.p_decay_epochs=6",
    ]
    assert [f"adder_fp_l2l1e{e}_alr" in runs for e in range(2, 9)] == [0, 1, 1, 1, 1, 1, 0]
    assert module.decay_epochs(0.375, 2) == 1 and module.decay_epochs(0.1, 2) == 1


def test_paper_tables_reads_finished_runs_without_running_them(tmp_path):
    """Runs whose results.json exists are not run again: the tables come from their files."""
    import argparse
    import json

    module = _load_paper_tables()
    names = module._runs(1)
    args = argparse.Namespace(epochs=1, dataset="fashion_mnist", data_dir=None)
    for i, (name, overrides) in enumerate(names.items()):
        (tmp_path / name).mkdir()
        command = module._command(tmp_path, name, overrides, args)
        (tmp_path / name / "command.txt").write_text(" ".join(command) + "\n")
        (tmp_path / name / "results.json").write_text(
            json.dumps({"top1": 0.5 + i / 100, "top5": 0.9})
        )
        (tmp_path / name / "wall_seconds.txt").write_text("12.5\n")
        lines = [
            {"step": 1, "split": "train", "loss": 2.0},
            {"step": 2, "split": "train", "loss": 0.25},
        ]
        (tmp_path / name / "metrics.jsonl").write_text("\n".join(map(json.dumps, lines)) + "\n")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "paper_tables.py"), f"--root={tmp_path}", "--epochs=1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # nothing was run
    assert "| `--config.layer=conv` | 50.00 | 90.00 | 0.250 | 12 |" in proc.stdout
    assert "| 0.05 | 51.00 | 90.00 | 0.250 | 12 |" in proc.stdout
    assert "| no | no | no | 60.00 | 90.00 | 0.250 | 12 |" in proc.stdout
    # The journal's tables: its rows with p = 1 are the ablation's runs, its values beside.
    cvpr, journal = proc.stdout.split("Journal Table 4")
    sign_ht_sgd = next(line for line in cvpr.splitlines() if line.startswith("| no | yes | no |"))
    assert sign_ht_sgd.replace("| no | yes | no |", "| no | no | no |") in journal
    assert "| 1 | 600 | 92.31 |" in journal and "(none: 80.77, all: 92.32)" in journal
    assert (tmp_path / "fig6.png").stat().st_size > 10_000
    # The same workdirs asked for with other settings: refused before anything runs.
    proc = subprocess.run(
        [sys.executable, str(BENCH / "paper_tables.py"), f"--root={tmp_path}", "--epochs=2"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert proc.stderr.startswith(f"error: {tmp_path / 'cnn'} holds another run (")
    assert "--config.num_epochs=1" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_shift_table_reads_finished_runs_and_counts_each_network(tmp_path):
    """benchmarks/shift_table.py: its rows are valid configs; finished runs are read, not run
    again; each row has its per-image operation counts (the CNN multiplies, DeepShift
    shifts, the adder networks add)."""
    import argparse
    import json

    import ml_collections

    from train import config_checks
    from train.configs import mnist

    sys.path.insert(0, str(BENCH))
    try:
        import shift_table
    finally:
        sys.path.remove(str(BENCH))
    args = argparse.Namespace(epochs=1, steps=0, data_dir=None, resnet20=False)
    for i, (_, prefix, overrides) in enumerate(shift_table.ROWS):
        config = mnist.get_config()
        for flag in overrides:
            key, value = flag.removeprefix("--config.").split("=")
            config[key] = value == "True" if value in ("True", "False") else value
        config_checks.validate(ml_collections.ConfigDict(config), device_count=1)
        for seed in (0, 1):
            name = f"{prefix}_s{seed}"
            (tmp_path / name).mkdir()
            command = shift_table._command(tmp_path, name, overrides, seed, args)
            (tmp_path / name / "command.txt").write_text(" ".join(command) + "\n")
            top1 = 0.5 + i / 10 + seed / 100
            (tmp_path / name / "results.json").write_text(json.dumps({"top1": top1}))
            (tmp_path / name / "wall_seconds.txt").write_text("10\n")
            (tmp_path / name / "metrics.jsonl").write_text("")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "shift_table.py"), f"--root={tmp_path}", "--epochs=1",
         "--seeds", "0", "1"],
        capture_output=True,
        text=True,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""  # nothing was run
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in proc.stdout.splitlines()}
    assert rows["CNN"][1:4] == ["50.00", "51.00", "50.50 ± 0.71"]
    assert rows["CNN"][4] == "0.423M" and rows["CNN"][6] == "0.000M"
    assert rows["DeepShift-PS"][6] == rows["ShiftAddNet"][6] == "0.417M"  # the CNN's products
    assert rows["AdderNet"][6] == "0.000M" and rows["ShiftAddNet, frozen shifts"][3] == (
        "90.50 ± 0.71"
    )


# Lines in the format of libtpu's *-final_bundles.txt (from a v5e forward kernel).
_BUNDLES = """\
     0   :  { %s1_s0 = smov 0 /* materialized constant */ }
  0x11 LB: > { %v10_v0 = vld [vmem:[%s1_s0] sm:$0xff]  ;;  %s2_s1 = sadd.s32 1, %s1_s0 }
  0x12 LB: >> { %s3_s2 = sld [smem:[%s2_s1]]  ;;  %v4_v1 = vstv %s3_s2 }
  0x13   : >> { %v5_v2 = vsub.f32 %v10_v0, %v4_v1  ;;  %v6_v3 = vsub.f32 %v10_v0, %v4_v1 }
  0x14   : >> { %v7_v4 = vand.u32 2147483647, %v5_v2  ;;  %v8_v5 = vand.u32 2147483647, %v6_v3 }
  0x15   : >> { %v9_v6 = vadd.f32 %v7_v4, %v9_v6  ;;  %v11_v7 = vadd.f32 %v8_v5, %v11_v7 }
  0x16   : > { %12 = vst [vmem:[%s1_s0] sm:$0xff] %v9_v6 }
"""


def test_tpu_bundle_report_reads_the_hot_loop_and_the_tiling(tmp_path):
    sys.path.insert(0, str(BENCH))
    import tpu_bundles

    path = tmp_path / "1796-adder_forward_tpu.1-72-final_bundles.txt"
    path.write_text(_BUNDLES)
    loop = tpu_bundles.hot_loop(path)
    assert loop.bundles == 4 and loop.ops["vsub.f32"] == 2 and loop.ops["vld"] == 0
    assert loop.valu() == 7  # vstv, 2 vsub, 2 vand, 2 vadd
    per = tpu_bundles.per_1024(loop)
    assert per["bundles"] == 2.0 and per["valu"] == 3.5
    hlo = tmp_path / "1795-TLP-hlo.txt"
    hlo.write_text("  %fusion.36 = f32[32,32,32,16]{2,3,1,0:T(8,128)S(1)} fusion(%a, %b)\n")
    fused = tmp_path / "1797-fusion.36-67-final_bundles.txt"
    # W (32 of 128 lanes) is most minor, C (16) on sublanes: a quarter of each vreg.
    assert tpu_bundles.tile_fill([hlo, fused], fused) == 0.25
    assert tpu_bundles.per_1024(loop, fill=0.25)["bundles"] == 8.0


def test_tpu_report_without_libtpu_says_so():
    result = _run("--tpu", "--generation", "v5e")
    if importlib.util.find_spec("libtpu") is not None:
        pytest.skip("libtpu is installed: the report would run")
    assert result.returncode == 1 and "needs libtpu" in result.stderr
    assert (
        _run("--tpu", "--generation", "v9")
        .stderr.strip()
        .endswith("--generation must be one of ('v4', 'v5e', 'v5p', 'v6e'), got 'v9'")
    )


@pytest.mark.slow
def test_distill_table_quick_runs_the_rows_it_is_given(tmp_path):
    """distill_table.py --quick on tiny idx files: the CNN and PKKD (its CNN trained
    alongside), 2 steps each, in one table; the teacher column where a row has one."""
    import datafiles

    data = datafiles.write_idx_dir(tmp_path / "idx", num_train=32, num_test=16)
    result = _script(
        "distill_table.py", f"--root={tmp_path / 'runs'}", "--quick", "--seeds", "0",
        "--epochs=1", f"--data_dir={data}", "--rows=cnn,pkkd",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith("| ")]
    rows = {ln.split("|")[1].strip(): ln.split("|")[2:-1] for ln in lines}
    assert set(rows) == {"student top-1 %", "---", "CNN", "PKKD (kernel features)"}
    pkkd = rows["PKKD (kernel features)"]
    student, teacher = float(pkkd[0]), float(pkkd[2].split("±")[0])
    assert 0 <= student <= 100 and 0 <= teacher <= 100
    assert rows["CNN"][2].strip() == ""  # no teacher
    command = (tmp_path / "runs" / "pkkd_s0" / "command.txt").read_text()
    assert "--config.num_train_steps=2" in command and "--config.distill=pkkd" in command


@pytest.mark.slow
def test_sr_table_quick_prints_the_table_and_the_curves(tmp_path):
    """sr_table.py --quick: the CNN and AdderSR (VDSR x3) for a few steps on the photographs,
    the table with bicubic's row, the learning-curve table and its plot."""
    pytest.importorskip("skimage")
    result = _script(
        "sr_table.py", f"--out={tmp_path}", "--quick", "--model=vdsr", "--scale=3",
        "--variants=cnn,addersr",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert out.startswith("vdsr x3, 4 layers x 32 channels") and "border 3" in out
    table = {ln.split("|")[1].strip(): ln.split("|")[2:-1] for ln in out.splitlines()[:8]
             if ln.startswith("| ") and not ln.startswith("| method")}  # fmt: skip
    assert set(table) == {"bicubic", "CNN", "AdderSR"}
    assert all(20 < float(cells[0].split("±")[0]) < 50 for cells in table.values())
    assert "| step | CNN | AdderSR |" in out
    saved = json.loads((tmp_path / "results.json").read_text())
    assert set(saved["curves"]) == {"cnn", "addersr"} and saved["curves"]["cnn"]["step"]
    assert (tmp_path / "curves.png").stat().st_size > 0
    summary = _script("sr_table.py", "--summary", str(tmp_path), timeout=120)
    assert summary.returncode == 0, summary.stderr[-3000:]
    row = next(ln for ln in summary.stdout.splitlines() if ln.startswith("| vdsr x3"))
    assert "| 33.66 / 33.47 | 0.19 |" in row  # the authors' Set5 numbers beside ours
