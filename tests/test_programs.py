"""The programs as a user runs them: `python -m train.mnist / cifar / imagenet / eval`.

Each runs in a subprocess for a few steps, on tiny files in the real formats or inside
`tfds.testing.mock_data`, checkpoints, and resumes from the checkpoint; bad input stops with
one line on stderr and exit status 2, never a traceback.
"""

import json
import os
import pathlib
import re
import subprocess
import sys

import datafiles
import numpy as np
import pytest
from conftest import CACHE_DIR, XLA_FLAGS

from adderjax import shift
from train import saved_models

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Runs a program module inside tfds' mock: fake records, no files, no network.
MOCK_RUNNER = """
import runpy, sys
import tensorflow_datasets as tfds
module, n = sys.argv[1], int(sys.argv[2])
sys.argv = [module] + sys.argv[3:]
with tfds.testing.mock_data(num_examples=n):
    runpy.run_module(module, run_name="__main__", alter_sys=True)
"""

SMALL = [
    "--config.num_train_steps=2",
    "--config.batch_size=4",
    "--config.eval_batch_size=4",
    "--config.steps_per_eval=2",
    "--config.log_every_steps=1",
    "--config.plots=False",
]


def _run(args, *, env=None, mock_examples=None):
    env = {
        **os.environ,
        "JAX_COMPILATION_CACHE_DIR": CACHE_DIR,
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0.5",
        **(env or {}),
    }
    if mock_examples is None:
        cmd = [sys.executable, "-m", *args]
    else:
        cmd = [sys.executable, "-c", MOCK_RUNNER, args[0], str(mock_examples), *args[1:]]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def _ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _final_line(proc):
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("final test accuracy")]
    assert lines, proc.stdout + proc.stderr[-2000:]
    return lines[-1]


@pytest.mark.slow
def test_mnist_on_idx_files_trains_resumes_and_evaluates(tmp_path):
    data = datafiles.write_idx_dir(tmp_path / "data", num_train=40, num_test=10)
    workdir = tmp_path / "w"
    args = ["train.mnist", f"--workdir={workdir}", f"--config.data_dir={data}", *SMALL]
    first = _ok(_run(args))
    assert "step 2)" in _final_line(first)
    # Quiet by default: progress and results, no library INFO logs (absl's "I1202 ..." lines).
    assert not [ln for ln in first.stderr.splitlines() if re.match(r"I\d{4} ", ln)]
    resumed = _ok(_run([*args, "--config.num_train_steps=4", "--verbosity=0"]))
    assert "step 4)" in _final_line(resumed)
    assert re.search(r"^I\d{4} .*resumed from", resumed.stderr, re.M)  # asked for: shown
    train_steps = [
        m["step"] for m in map(json.loads, open(workdir / "metrics.jsonl")) if m["split"] == "train"
    ]
    assert train_steps == [1, 2, 3, 4]  # the second run started at step 3
    out = _ok(_run(["train.eval", f"--workdir={workdir}", f"--output={tmp_path / 'e.json'}"]))
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["step"] == 4 and result["count"] == 10
    assert "lenet5_bn (adder) on fashion_mnist, step 4: top-1" in out.stdout


@pytest.mark.slow
def test_cifar_on_pickle_files_with_grain_workers(tmp_path):
    """The CIFAR-10 pickles through two grain worker processes, and resume of the workers'
    iterator state from the checkpoint (a small model: ResNet-20 runs in the mock test)."""
    data = datafiles.write_cifar10_dir(tmp_path / "data", num_train=24, num_test=8)
    args = [
        "train.cifar",
        f"--workdir={tmp_path / 'w'}",
        "--config.data_format=cifar_pickle",
        f"--config.data_dir={data}",
        "--config.worker_count=2",
        "--config.model=lenet5_bn",
        *SMALL,
    ]
    assert "(8 images, step 2)" in _final_line(_ok(_run(args)))
    assert "step 3)" in _final_line(_ok(_run([*args, "--config.num_train_steps=3"])))


@pytest.mark.slow
def test_cifar100_config_file(tmp_path):
    data = datafiles.write_cifar100_dir(tmp_path / "data", num_train=16, num_test=4)
    args = [
        "train.cifar",
        "--config=train/configs/cifar100.py",
        f"--workdir={tmp_path / 'w'}",
        "--config.data_format=cifar_pickle",
        f"--config.data_dir={data}",
        "--config.worker_count=0",
        "--config.model=lenet5_bn",
        *SMALL,
    ]
    _ok(_run(args))
    meta = json.loads((tmp_path / "w" / "results.json").read_text())
    assert meta["count"] == 4


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "extra"),
    [
        ("train.mnist", ["--config.data_format=tfds"]),
        # What is checked here is the tfds path, the augmentations and the resume; LeNet-5-BN
        # keeps the CPU compilations short (a ResNet-20 train step and evaluation run in
        # test_models.py, ResNet-18/50's shapes there too, and ResNet-20's program end to end
        # in test_convert_torch.py).
        ("train.cifar", ["--config.model=lenet5_bn"]),
        # Mock ImageNet has random image sizes: random resized crop, resize and center crop.
        ("train.imagenet", ["--config.image_size=32", "--config.model=lenet5_bn"]),
    ],
)
def test_programs_under_tfds_mock(tmp_path, module, extra):
    args = [module, f"--workdir={tmp_path}", "--config.worker_count=0", *SMALL, *extra]
    proc = _ok(_run(args, mock_examples=8))
    assert "(8 images, step 2)" in _final_line(proc)
    proc = _ok(_run([*args, "--config.num_train_steps=3"], mock_examples=8))
    assert "step 3)" in _final_line(proc)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == [
        "2",
        "3",
    ]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "data_format", "extra"),
    [
        # (DeepShift-PS alone: tests/test_models.py trains it; the tfds row runs DeepShift-Q.)
        ("train.mnist", "idx", ["--config.layer=shiftadd", "--config.shift_frozen=True"]),
        ("train.cifar", "cifar_pickle", ["--config.layer=shiftadd"]),
        ("train.imagenet", "tfds", ["--config.layer=shift", "--config.shift_kind=q"]),
    ],
    ids=["idx-shiftadd-frozen", "pickle-shiftadd", "tfds-shift-q"],
)
def test_shift_layer_kinds_through_the_programs(tmp_path, module, data_format, extra):
    """DeepShift and ShiftAddNet networks train and evaluate through the programs, on each
    input format; their checkpoints hold exact powers of two."""
    workdir = tmp_path / "w"
    args = [module, f"--workdir={workdir}", "--config.worker_count=0", *SMALL, *extra]
    mock = None
    if data_format == "idx":
        data = datafiles.write_idx_dir(tmp_path / "data", num_train=16, num_test=8)
        args.append(f"--config.data_dir={data}")
    elif data_format == "cifar_pickle":
        data = datafiles.write_cifar10_dir(tmp_path / "data", num_train=16, num_test=8)
        args += [f"--config.data_dir={data}", "--config.data_format=cifar_pickle"]
        args.append("--config.model=lenet5_bn")
    else:
        args += ["--config.image_size=32", "--config.model=lenet5_bn"]
        mock = 8
    # (Resumed bitwise in tests/test_train.py; the programs' resume in the tests above.)
    assert "(8 images, step 2)" in _final_line(_ok(_run(args, mock_examples=mock)))
    _, variables, config = saved_models.load_model(str(workdir))
    weights = shift.shift_weights(variables["params"], weight_bits=config.weight_bits)
    assert len(weights) == 5  # LeNet-5-BN: conv1, conv2, fc1, fc2, fc3
    for path, w in weights.items():
        mantissa, _ = np.frexp(np.asarray(w)[np.asarray(w) != 0])
        assert np.all(np.abs(mantissa) == 0.5), path
    if data_format == "idx":
        layer = extra[0].split("=")[1]
        out = _ok(_run(["train.eval", f"--workdir={workdir}"]))
        assert f"lenet5_bn ({layer}) on fashion_mnist, step 2: top-1" in out.stdout


def _one_line_error(proc, expected):
    assert proc.returncode == 2, (proc.stdout, proc.stderr[-3000:])
    assert "Traceback" not in proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert expected in errors[0], errors[0]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--config.model=resnet1000"], "config.model='resnet1000' is invalid: expected one of"),
        (["--config.dataset=svhn"], "config.dataset='svhn' is invalid"),
        (["--config.num_epochs=-3"], "config.num_epochs=-3 is invalid: expected an integer >= 1"),
        (["--config.layer=mul"], "config.layer='mul' is invalid: expected one of 'conv', 'adder'"),
        (
            ["--config.layer=shift", "--config.weight_bits=1"],
            "config.weight_bits=1 is invalid: expected an integer >= 2",
        ),
        (
            ["--config.dataset=mnist", "--config.data_dir=/nonexistent/mnist"],
            "/nonexistent/mnist",
        ),
    ],
)
def test_bad_input_is_one_line(tmp_path, args, expected):
    _one_line_error(_run(["train.mnist", f"--workdir={tmp_path}", *args]), expected)


def test_missing_tfds_data_says_how_to_provide_it(tmp_path):
    proc = _run(["train.cifar", f"--workdir={tmp_path}", f"--config.data_dir={tmp_path}/none"])
    _one_line_error(proc, "cifar10")
    assert "tfds build" in proc.stderr


def test_batch_not_divisible_by_the_device_count(tmp_path):
    proc = _run(
        ["train.mnist", f"--workdir={tmp_path}", "--config.batch_size=12"],
        env={"XLA_FLAGS": f"{XLA_FLAGS} --xla_force_host_platform_device_count=8"},
    )
    _one_line_error(proc, "config.batch_size=12 is invalid: expected a multiple of the device")


def test_eval_without_checkpoints(tmp_path):
    _one_line_error(_run(["train.eval", f"--workdir={tmp_path}"]), "no checkpoints in")
