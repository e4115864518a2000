"""`train.convert_torch`: the reference's PyTorch checkpoints as adderjax checkpoints.

The PyTorch models are built here in the reference's layout (`torch_reference.py`), saved the
way the reference saves them (a `DataParallel` state dict, every key under ``module.``),
converted, and compared with the PyTorch forward. Tests of the key mapping and of the refusals
use state dicts of numpy arrays and run without PyTorch.
"""

import json
import os
import pathlib
import subprocess
import sys

import datafiles
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import CACHE_DIR

from adderjax import models
from train import convert_torch, saved_models

ROOT = pathlib.Path(__file__).resolve().parents[1]
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)  # the reference's


def _fake_state_dict(arch, *, adder=True, num_classes=10, image_shape=(32, 32, 3), seed=0):
    """A random state dict in PyTorch's names and layouts, DataParallel style."""
    model = models.get_model(arch, num_classes=num_classes, layer="adder" if adder else "conv")
    shapes = convert_torch.expected_torch_shapes(model, image_shape)
    rng = np.random.default_rng(seed)
    out = {f"module.{k}": rng.standard_normal(s).astype(np.float32) for k, s in shapes.items()}
    out.update(
        {
            f"module.{k[: -len('running_var')]}num_batches_tracked": np.int64(3)
            for k in shapes
            if k.endswith("running_var")
        }
    )
    return out


def test_torch_key_names():
    key = convert_torch.torch_key
    assert key(("params", "layer1_0", "downsample_0", "adder")) == "layer1.0.downsample.0.adder"
    assert key(("params", "layer1_0", "downsample_1", "scale")) == "layer1.0.downsample.1.weight"
    assert key(("batch_stats", "bn2", "mean")) == "bn2.running_mean"
    assert key(("batch_stats", "layer3_2", "bn1", "var")) == "layer3.2.bn1.running_var"
    assert key(("params", "conv1", "kernel")) == "conv1.weight"
    assert key(("params", "fc", "bias")) == "fc.bias"


def test_resnet20_expected_keys_are_the_reference_names():
    shapes = convert_torch.expected_torch_shapes(
        models.get_model("resnet20", num_classes=10), (32, 32, 3)
    )
    assert shapes["conv1.weight"] == (16, 3, 3, 3)
    assert shapes["layer1.0.conv1.adder"] == (16, 16, 3, 3)
    assert shapes["layer2.0.downsample.0.adder"] == (32, 16, 1, 1)
    assert shapes["layer2.0.downsample.1.running_var"] == (32,)
    assert shapes["fc.weight"] == (10, 64, 1, 1)
    assert shapes["bn2.weight"] == (10,)
    assert "fc.bias" not in shapes
    # 22 convs and 22 batch norms x 4; with 22 num_batches_tracked, the 132 entries of the
    # reference's state dict.
    assert len(shapes) == 110


@pytest.mark.parametrize(
    "arch, image_shape, num_classes",
    [("lenet5_bn", (28, 28, 1), 10), ("vgg_small", (32, 32, 3), 100)],
)
def test_values_land_transposed_in_their_place(arch, image_shape, num_classes):
    state = _fake_state_dict(arch, num_classes=num_classes, image_shape=image_shape)
    variables, config = convert_torch.convert_state_dict(state, arch)
    assert config.model == arch and config.layer == "adder"
    assert config.dataset == {"lenet5_bn": "mnist", "vgg_small": "cifar100"}[arch]
    flat = jax.tree_util.tree_flatten_with_path(variables)[0]
    for path, leaf in flat:
        names = tuple(str(k.key) for k in path)
        src = state["module." + convert_torch.torch_key(names)]
        want = {4: lambda a: a.transpose(2, 3, 1, 0), 2: lambda a: a.T}.get(src.ndim, lambda a: a)
        np.testing.assert_array_equal(np.asarray(leaf), want(src), err_msg="/".join(names))


def test_cnn_variant_is_read_from_the_keys():
    state = _fake_state_dict("resnet20", adder=False)
    variables, config = convert_torch.convert_state_dict(state, "resnet20")
    assert config.layer == "conv"
    assert variables["params"]["layer1_0"]["conv1"]["kernel"].shape == (3, 3, 16, 16)


def test_other_architecture_is_refused_with_the_first_mismatches():
    state = _fake_state_dict("resnet32")
    with pytest.raises(convert_torch.ConversionError) as e:
        convert_torch.convert_state_dict(state, "resnet20")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("the checkpoint is not a resnet20 AdderNet: ")
    assert "60 unexpected: layer1.3." in msg and msg.endswith(", and 55 more")


def test_wrong_shapes_and_missing_keys_are_listed():
    state = _fake_state_dict("resnet20")
    state["module.layer1.0.conv1.adder"] = np.zeros((16, 16, 5, 5), np.float32)
    del state["module.layer3.2.bn2.running_mean"]
    with pytest.raises(convert_torch.ConversionError) as e:
        convert_torch.convert_state_dict(state, "resnet20")
    msg = str(e.value)
    assert "1 missing: layer3.2.bn2.running_mean" in msg
    assert "1 wrong shape: layer1.0.conv1.adder (16, 16, 5, 5) (expected (16, 16, 3, 3))" in msg


def test_classes_must_fit_the_dataset():
    state = _fake_state_dict("resnet20", num_classes=100)
    _, config = convert_torch.convert_state_dict(state, "resnet20")
    assert config.dataset == "cifar100"
    with pytest.raises(convert_torch.ConversionError, match="100 classes but cifar10 has 10"):
        convert_torch.convert_state_dict(state, "resnet20", dataset="cifar10")
    with pytest.raises(convert_torch.ConversionError, match="--arch=resnet21: expected one of"):
        convert_torch.convert_state_dict(state, "resnet21")


def test_without_torch_the_error_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    with pytest.raises(convert_torch.ConversionError, match=r"pip install 'adderjax\[torch\]'"):
        convert_torch.read_pth(tmp_path / "x.pth")


# --- with PyTorch: the reference's layout, saved as the reference saves it -----------------

torch_required = pytest.mark.skipif(
    not __import__("importlib").util.find_spec("torch"), reason="needs PyTorch (the test extra)"
)


def _saved_reference(tmp_path, build, x, *, name="model.pth"):
    import torch
    import torch_reference

    torch.manual_seed(0)
    model = torch_reference.calibrate(build(), x)
    path = tmp_path / name
    torch.save(torch.nn.DataParallel(model).state_dict(), path)
    return model, path


@torch_required
@pytest.mark.parametrize("adder", [True, False], ids=["addernet", "cnn"])
def test_resnet20_logits_match_pytorch(tmp_path, adder):
    import torch
    import torch_reference

    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    model, path = _saved_reference(tmp_path, lambda: torch_reference.resnet20(adder=adder), x)
    assert all(k.startswith("module.") for k in torch.load(path, weights_only=True))
    summary = convert_torch.convert(path, tmp_path / "out", "resnet20")
    assert summary["layer"] == ("adder" if adder else "conv")
    assert summary["parameters"] == 272_484

    flax_model, variables, config = saved_models.load_model(str(tmp_path / "out"))
    assert config.dataset == "cifar10"
    logits = flax_model.apply(variables, jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), train=False)
    with torch.no_grad():
        want = model(x).numpy()
    assert np.abs(want).max() > 0.5  # not a degenerate all-zero forward
    np.testing.assert_allclose(np.asarray(logits), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@torch_required
def test_resnet50_converts_with_bias_bottlenecks_and_layer4(tmp_path):
    import torch
    import torch_reference

    torch.manual_seed(0)
    model = torch_reference.resnet50()
    state = {f"module.{k}": v.numpy() for k, v in model.state_dict().items()}
    variables, config = convert_torch.convert_state_dict(state, "resnet50")
    assert config.dataset == "imagenet2012" and config.layer == "adder"
    params = variables["params"]
    np.testing.assert_array_equal(params["fc"]["bias"], state["module.fc.bias"])
    np.testing.assert_array_equal(
        params["layer4_2"]["conv3"]["adder"],
        state["module.layer4.2.conv3.adder"].transpose(2, 3, 1, 0),
    )
    np.testing.assert_array_equal(
        variables["batch_stats"]["layer4_0"]["downsample_1"]["var"],
        state["module.layer4.0.downsample.1.running_var"],
    )
    n = sum(
        v.numel()
        for k, v in model.state_dict().items()
        if "running" not in k and "num_batches" not in k
    )
    assert n == sum(a.size for a in jax.tree.leaves(params)) == 25_559_032


@pytest.mark.slow
@torch_required
def test_program_converts_and_train_eval_matches_pytorch_accuracy(tmp_path):
    """The CLI end to end: convert, then `train.eval` on CIFAR-10 files with the reference's
    preprocessing gives the PyTorch model's accuracy on the same images."""
    import pickle

    import torch
    import torch_reference

    data = datafiles.write_cifar10_dir(tmp_path / "data", num_train=256, num_test=40, seed=3)
    with open(tmp_path / "data" / "cifar-10-batches-py" / "test_batch", "rb") as f:
        batch = pickle.load(f, encoding="bytes")
    images = torch.tensor(batch[b"data"], dtype=torch.float32).view(-1, 3, 32, 32) / 255
    mean, std = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1), torch.tensor(CIFAR_STD).view(1, 3, 1, 1)
    x = (images - mean) / std  # transforms.Normalize of the reference's test loader
    model, path = _saved_reference(tmp_path, lambda: torch_reference.resnet20(), x)
    with torch.no_grad():
        want = (model(x).argmax(1).numpy() == np.asarray(batch[b"labels"])).mean()

    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": CACHE_DIR}
    cmd = [sys.executable, "-m", "train.convert_torch", "--arch=resnet20", str(path)]
    proc = subprocess.run(
        [*cmd, str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "resnet20 AdderNet for cifar10, 132 tensors, 272,484 parameters" in proc.stdout
    again = subprocess.run(
        [*cmd, str(tmp_path / "out")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert again.returncode == 2
    assert again.stderr.strip().startswith("error: ") and "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1

    out = tmp_path / "eval.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "train.eval",
            f"--workdir={tmp_path / 'out'}",
            f"--data_dir={data}",
            "--data_format=cifar_pickle",
            "--batch_size=8",
            f"--output={out}",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())
    assert result["count"] == 40 and result["step"] == 0
    assert result["top1"] == pytest.approx(want, abs=1e-6)


@torch_required
def test_unreadable_and_foreign_files_are_refused(tmp_path):
    import torch

    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a zip or a pickle")
    with pytest.raises(convert_torch.ConversionError, match="is not a PyTorch checkpoint"):
        convert_torch.read_pth(bad)
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(convert_torch.ConversionError, match="holds a list, not a state dict"):
        convert_torch.read_pth(tmp_path / "list.pth")
    with pytest.raises(convert_torch.ConversionError, match="no such checkpoint file"):
        convert_torch.read_pth(tmp_path / "missing.pth")
    torch.save({"state_dict": {"a.weight": torch.ones(2, 3)}, "epoch": 3}, tmp_path / "wrap.pth")
    assert convert_torch.read_pth(tmp_path / "wrap.pth")["a.weight"].shape == (2, 3)
