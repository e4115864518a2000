r"""Converts the AdderNet reference's PyTorch checkpoints (``.pth``) to adderjax checkpoints.

    pip install "adderjax[torch]"        # reading .pth files needs PyTorch
    python -m train.convert_torch --arch=resnet20 ResNet20-AdderNet.pth /tmp/r20
    python -m train.eval --workdir=/tmp/r20 \
        --data_format=cifar_pickle --data_dir=/data/cifar-10-batches-py

The output directory is a training workdir holding one checkpoint (step 0): `train.eval`
evaluates it, `train.saved_models.load_model` returns the Flax model and its variables, and
`python -m train.cifar --workdir=...` would fine-tune it. `converted_from.json` beside it
records the source file and its SHA-256.

What the conversion does, key by key (huawei-noah/AdderNet ``resnet20.py``/``resnet50.py``):

* the ``module.`` prefix of a state dict saved from ``nn.DataParallel`` is dropped;
* ``layer1.0.downsample.0.adder`` is ``params/layer1_0/downsample_0/adder``: a trailing
  ``_N`` of a Flax module name is PyTorch's ``.N`` (`adderjax.models` is named for this);
* adder filters ``.adder`` and conv weights ``.weight``, (O, C, kh, kw), become HWIO
  (kh, kw, C, O); linear weights (out, in) are transposed (the VGG and LeNet flatten is in
  PyTorch's C, H, W order, so no other permutation is needed);
* BatchNorm ``weight, bias, running_mean, running_var`` become ``scale, bias`` (params) and
  ``mean, var`` (batch_stats); ``num_batches_tracked`` is dropped. The models use PyTorch's
  epsilon 1e-5 and its momentum 0.1 (Flax's 0.9), so statistics carry over as they are.

A checkpoint whose keys or shapes do not match the chosen architecture is refused with the
first mismatches listed; whether it is an AdderNet (``.adder`` keys) or the CNN of the same
architecture, and its number of classes, are read from the checkpoint.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from absl import app, flags

from adderjax import models
from train import checkpointing, cli, model_state
from train.data import sources

__all__ = [
    "ConversionError",
    "convert",
    "convert_state_dict",
    "expected_torch_shapes",
    "read_pth",
    "torch_key",
]

# The training config each architecture is evaluated with, by its number of classes.
_DEFAULT_DATASET = {
    "lenet5_bn": {10: "mnist"},
    "resnet20": {10: "cifar10", 100: "cifar100"},
    "resnet32": {10: "cifar10", 100: "cifar100"},
    "vgg_small": {10: "cifar10", 100: "cifar100"},
    "resnet18": {1000: "imagenet2012"},
    "resnet50": {1000: "imagenet2012"},
}
_CONFIG_FILE = {
    "mnist": "mnist",
    "fashion_mnist": "mnist",
    "kmnist": "mnist",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
    "imagenet2012": "imagenet",
}
# The classifier's weight, whose first axis is the number of classes.
_CLASSIFIER = {"lenet5_bn": "fc3.weight"}
_SHOWN = 5  # mismatches listed per kind in an error


class ConversionError(ValueError):
    """A checkpoint that cannot be converted; the message is one line."""


def read_pth(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """The state dict in a ``.pth`` file as numpy arrays (``{"state_dict": ...}`` unwrapped)."""
    path = pathlib.Path(path)
    try:
        import torch  # here, not at the top: PyTorch is an optional extra
    except ImportError:
        raise ConversionError(
            "reading a .pth file needs PyTorch: pip install 'adderjax[torch]' "
            "(or pip install torch)"
        ) from None
    if not path.is_file():
        raise ConversionError(f"no such checkpoint file: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many kinds for a damaged or foreign file
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConversionError(
            f"{path} is not a PyTorch checkpoint torch can read: {first}"
        ) from None
    if isinstance(obj, Mapping) and isinstance(obj.get("state_dict"), Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()
    ):
        raise ConversionError(
            f"{path} holds a {type(obj).__name__}, not a state dict of tensors "
            "(save it with torch.save(model.state_dict(), path))"
        )
    return {k: v.detach().to(torch.float32).numpy() for k, v in obj.items()}


def torch_key(path: tuple[str, ...]) -> str:
    """The PyTorch state-dict key of a Flax variable path ``(collection, *modules, leaf)``."""
    collection, *modules, leaf = path
    names = {
        ("params", "adder"): "adder",
        ("params", "kernel"): "weight",
        ("params", "scale"): "weight",
        ("params", "bias"): "bias",
        ("batch_stats", "mean"): "running_mean",
        ("batch_stats", "var"): "running_var",
    }
    if (collection, leaf) not in names:
        raise ValueError(f"no PyTorch name for the variable {'/'.join(path)}")
    modules = [re.sub(r"_(\d+)$", r".\1", m) for m in modules]
    return ".".join([*modules, names[collection, leaf]])


def _to_torch_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
    if len(shape) == 4:  # HWIO -> OIHW
        return (shape[3], shape[2], shape[0], shape[1])
    if len(shape) == 2:  # (in, out) -> (out, in)
        return (shape[1], shape[0])
    return tuple(shape)


def _from_torch_layout(array: np.ndarray) -> np.ndarray:
    if array.ndim == 4:
        return np.ascontiguousarray(array.transpose(2, 3, 1, 0))
    if array.ndim == 2:
        return np.ascontiguousarray(array.T)
    return array


def _abstract_variables(model, image_shape) -> dict:
    x = jax.ShapeDtypeStruct((1, *image_shape), np.float32)
    return jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), x)


def _flat(variables) -> dict[tuple[str, ...], Any]:
    return {tuple(k.split("/")): leaf for k, leaf in model_state.named_leaves(variables).items()}


def expected_torch_shapes(model, image_shape) -> dict[str, tuple[int, ...]]:
    """Every state-dict key a PyTorch checkpoint of ``model`` has (but num_batches_tracked),
    with its shape in PyTorch's layout."""
    return {
        torch_key(path): _to_torch_layout(leaf.shape)
        for path, leaf in _flat(_abstract_variables(model, image_shape)).items()
    }


def _strip_prefix(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def _mismatches(got: Mapping[str, np.ndarray], want: Mapping[str, tuple]) -> str | None:
    missing = [k for k in want if k not in got]
    unexpected = [k for k in got if k not in want]
    shapes = [
        f"{k} {tuple(got[k].shape)} (expected {want[k]})"
        for k in want
        if k in got and tuple(got[k].shape) != want[k]
    ]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
        if keys:
            more = f", and {len(keys) - _SHOWN} more" if len(keys) > _SHOWN else ""
            parts.append(f"{len(keys)} {label}: {', '.join(keys[:_SHOWN])}{more}")
    return "; ".join(parts) or None


def _num_classes(arch: str, state_dict: Mapping[str, np.ndarray]) -> int | None:
    weight = state_dict.get(_CLASSIFIER.get(arch, "fc.weight"))
    return int(weight.shape[0]) if weight is not None and weight.ndim >= 2 else None


def _dataset_for(arch: str, num_classes: int | None, dataset: str | None) -> str:
    if dataset is None:
        choices = _DEFAULT_DATASET[arch]
        if num_classes not in choices:
            raise ConversionError(
                f"a {arch} with {num_classes} classes has no default dataset "
                f"(known: {choices}); pass --dataset"
            )
        return choices[num_classes]
    if dataset not in _CONFIG_FILE:
        raise ConversionError(f"--dataset={dataset}: expected one of {', '.join(_CONFIG_FILE)}")
    want = sources.DATASETS[dataset].num_classes
    if num_classes is not None and num_classes != want:
        raise ConversionError(
            f"the checkpoint's classifier has {num_classes} classes but {dataset} has {want}"
        )
    return dataset


def _config(arch: str, dataset: str, adder: bool):
    config = importlib.import_module(f"train.configs.{_CONFIG_FILE[dataset]}").get_config()
    config.model = arch
    config.dataset = dataset
    config.layer = "adder" if adder else "conv"
    if dataset != "fashion_mnist" and config.data_format == "idx":
        config.data_format = "tfds"  # the idx default points at Debian's Fashion-MNIST
    return config


def convert_state_dict(
    state_dict: Mapping[str, np.ndarray],
    arch: str,
    *,
    dataset: str | None = None,
    dtype: Any = None,
) -> tuple[dict, Any]:
    """PyTorch state dict (numpy arrays) -> (Flax variables, training config).

    The variables are in the model's dtypes (float32), or all in ``dtype`` when given
    (``np.float64`` keeps a float64 state dict's digits, e.g. to follow PyTorch in float64).

    Raises:
      ConversionError: unknown arch, or keys/shapes that do not match it (the first
        mismatches of each kind are listed).
    """
    variables, config, _ = _convert(state_dict, arch, dataset, dtype)
    return variables, config


def _convert(state_dict, arch: str, dataset: str | None, dtype: Any = None):
    """(variables, config, `model_state.ModelState` of the config)."""
    if arch not in models.MODELS:
        raise ConversionError(f"--arch={arch}: expected one of {', '.join(models.MODELS)}")
    state_dict = {
        k: np.asarray(v)
        for k, v in _strip_prefix(state_dict).items()
        if not k.endswith(".num_batches_tracked")
    }
    adder = any(k.endswith(".adder") for k in state_dict)
    num_classes = _num_classes(arch, state_dict)
    dataset = _dataset_for(arch, num_classes, dataset)
    config = _config(arch, dataset, adder)
    built = model_state.build(config, sources.DATASETS[dataset])
    abstract = {"params": built.abstract.params, "batch_stats": built.abstract.batch_stats}
    flat = _flat(abstract)
    want = {torch_key(p): _to_torch_layout(a.shape) for p, a in flat.items()}
    problem = _mismatches(state_dict, want)
    if problem:
        kind = "AdderNet" if adder else "CNN"
        raise ConversionError(f"the checkpoint is not a {arch} {kind}: {problem}")
    treedef = jax.tree_util.tree_structure(abstract)
    leaves = [
        _from_torch_layout(state_dict[torch_key(p)]).astype(dtype or flat[p].dtype) for p in flat
    ]
    # tree_flatten_with_path and tree_structure walk the same order.
    return jax.tree_util.tree_unflatten(treedef, leaves), config, built


def convert(
    source: str | pathlib.Path,
    out_dir: str | pathlib.Path,
    arch: str,
    *,
    dataset: str | None = None,
) -> dict:
    """Converts the ``.pth`` file ``source`` into a workdir ``out_dir``; returns a summary."""
    source, out_dir = pathlib.Path(source), pathlib.Path(out_dir).absolute()
    if checkpointing.checkpoint_dir(out_dir).exists():
        raise ConversionError(
            f"{checkpointing.checkpoint_dir(out_dir)} already exists; choose a new directory"
        )
    state_dict = read_pth(source)
    variables, config, built = _convert(state_dict, arch, dataset)
    state = model_state.TrainState.create(
        apply_fn=built.model.apply,
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        tx=built.tx,
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    mngr = checkpointing.manager(checkpointing.checkpoint_dir(out_dir))
    checkpointing.save(mngr, 0, state, data_iterator=None, config=config)
    mngr.close()
    summary = {
        "source": str(source.absolute()),
        "sha256": hashlib.sha256(source.read_bytes()).hexdigest(),
        "arch": arch,
        "layer": config.layer,
        "dataset": config.dataset,
        "tensors": len(state_dict),
        "parameters": int(sum(np.size(x) for x in jax.tree.leaves(variables["params"]))),
    }
    (out_dir / "converted_from.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_from_flags(args: list[str]) -> str:
    """`convert` of SOURCE.pth OUT_DIR and the flags; the program's last line."""
    if flags.FLAGS.arch is None:
        raise app.UsageError("--arch is required (e.g. --arch=resnet20)")
    source, out_dir = args
    summary = convert(source, out_dir, flags.FLAGS.arch, dataset=flags.FLAGS.dataset)
    kind = "AdderNet" if summary["layer"] == "adder" else "CNN"
    return (
        f"wrote {out_dir}: {summary['arch']} {kind} for {summary['dataset']}, "
        f"{summary['tensors']} tensors, {summary['parameters']:,} parameters"
    )


def define_flags() -> None:
    flags.DEFINE_string("arch", None, "Architecture, a name of adderjax.models.MODELS.")
    flags.DEFINE_string(
        "dataset", None, "Dataset the checkpoint is evaluated on (default: by arch and classes)."
    )


if __name__ == "__main__":
    define_flags()
    app.run(
        cli.program(
            run_from_flags,
            args=2,
            usage="usage: python -m train.convert_torch --arch=ARCH SOURCE.pth OUT_DIR",
            errors=(ConversionError,),
        )
    )
