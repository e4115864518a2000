"""adderjax's training steps beside the authors' PyTorch training: float64 against float64,
and each side's float32 against PyTorch's float64, over seeds.

    python benchmarks/torch_trajectory.py --seeds 0 1 2 3 4 --steps 3

Per seed: a ResNet-20 AdderNet in the reference's PyTorch layout (`tests/torch_reference.py`,
with the authors' adder backward: full-precision filter gradient rescaled by the adaptive
rate inside the backward, HardTanh input gradient), random BatchNorm scales, trained for
--steps SGD steps (lr 0.1, momentum 0.9, weight decay 5e-4, eta 0.2, batches of 4 random
32x32 images, train mode) by `torch.optim.SGD`; the same weights converted
(`train.convert_torch`) and trained by `train.classification.train_step` with
`adderjax.optim.adder_sgd`. Each leaf's error is max |a - b| / max |b| against PyTorch's
float64 run; the table gives the median and the worst leaf, for PyTorch float32, adderjax
float32 and adderjax float64. Needs PyTorch (the test extra).

With --pkkd the same for PKKD (`train.distillation`): the ResNet-20 AdderNet as student and
its CNN as progressive teacher, both from their PyTorch weights, trained together for --steps
steps. PyTorch's side is written here from the loss `train.distillation` documents
(cross-entropy + KD at T = 4 + 10 x the mean over the three stage outputs of the aligned
kernel maps' squared error; the teacher learns from the labels; identity alignments with SGD
and momentum, no weight decay); the table's leaves are the student's, the teacher's and the
alignments'.
"""

from __future__ import annotations

import argparse
import pathlib
import statistics
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
ARCH = "resnet20"


def _imports():
    for path in (str(ROOT), str(ROOT / "tests")):
        if path not in sys.path:
            sys.path.insert(0, path)


def make_run(seed: int, steps: int):
    """(PyTorch ResNet-20 with the authors' gradients in float64, its state dict, batches)."""
    _imports()
    import torch
    import torch_reference

    from train.data import sources

    torch.manual_seed(seed)
    net = torch_reference.use_reference_gradients(torch_reference.resnet20(), eta=0.2)
    gen = torch.Generator().manual_seed(seed + 1)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # scales and shifts that show in the steps
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
    rng = np.random.default_rng(seed)
    batches = [
        {
            "image": rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
            "label": rng.integers(0, 10, 4).astype(np.int32),
        }
        for _ in range(steps)
    ]
    state = {k: v.detach().numpy().astype(np.float64) for k, v in net.state_dict().items()}
    return net, state, batches, sources.DATASETS["cifar10"]


def torch_steps(net, state: dict, batches, info, dtype) -> dict:
    """The state dict after PyTorch's steps in ``dtype`` (np.float32 or np.float64)."""
    import torch
    from torch.nn import functional as F

    from train import classification

    net = net.double() if dtype == np.float64 else net.float()
    net.load_state_dict({k: torch.from_numpy(v.astype(dtype)) for k, v in state.items()})
    net.train()
    sgd = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    for batch in batches:
        x = np.asarray(classification.normalize(batch["image"], info)).astype(dtype)
        loss = F.cross_entropy(
            net(torch.from_numpy(x.transpose(0, 3, 1, 2))),
            torch.from_numpy(batch["label"]).long(),
        )
        sgd.zero_grad()
        loss.backward()
        sgd.step()
    return {k: v.detach().numpy().astype(np.float64) for k, v in net.state_dict().items()}


def adderjax_steps(state: dict, batches, info, dtype) -> dict:
    """The variables after `train_step`s in ``dtype``, from PyTorch's state dict ``state``."""
    import jax
    import jax.numpy as jnp

    from adderjax import models, optim
    from train import classification, convert_torch, model_state

    start, _ = convert_torch.convert_state_dict(state, ARCH, dtype=dtype)
    with jax.enable_x64(dtype == np.float64):
        model = models.get_model(ARCH, num_classes=10, dtype=jnp.dtype(dtype), implementation="xla")
        train_state = model_state.TrainState.create(
            apply_fn=model.apply,
            params=jax.tree.map(jnp.asarray, start["params"]),
            batch_stats=jax.tree.map(jnp.asarray, start["batch_stats"]),
            tx=optim.adder_sgd(0.1, momentum=0.9, weight_decay=5e-4, eta=0.2),
        )
        step = jax.jit(
            lambda s, b: classification.train_step(
                s, b, 1.0, info=info, label_smoothing=0.0, lr_fn=lambda _: 0.1
            )[0]
        )
        for batch in batches:
            train_state = step(train_state, batch)
        out = {"params": train_state.params, "batch_stats": train_state.batch_stats}
        return jax.tree.map(lambda a: np.asarray(a, np.float64), out)


# PKKD's distilled layers: ResNet-20's stage outputs (`adderjax.models.STAGE_OUTPUTS`).
PKKD_LAYERS = ("layer1_2/conv2", "layer2_2/conv2", "layer3_2/conv2")
PKKD = dict(kd_weight=1.0, temperature=4.0, feature_weight=10.0, sigma_a=1.0, sigma_c=1.0)


def _randomize_batch_norm(net, seed: int) -> None:
    import torch

    gen = torch.Generator().manual_seed(seed)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):  # scales and shifts that show in the steps
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)


def make_pkkd_run(seed: int, steps: int):
    """(student, teacher, their state dicts, batches, info): `make_run`'s AdderNet and a CNN
    ResNet-20 of the reference's layout as its teacher, in float64."""
    _imports()
    import torch
    import torch_reference

    student, s_state, batches, info = make_run(seed, steps)
    torch.manual_seed(seed + 100)
    teacher = torch_reference.resnet20(adder=False)
    _randomize_batch_norm(teacher, seed + 101)
    t_state = {k: v.detach().numpy().astype(np.float64) for k, v in teacher.state_dict().items()}
    return student, teacher, s_state, t_state, batches, info


def _layer(net, path: str):
    block, conv = path.split("/")
    stage, index = block.split("_")
    return getattr(getattr(net, stage)[int(index)], conv)


def _kernel_maps(net, taps: dict, adder: bool) -> dict:
    """PKKD's maps of the recorded layers: exp(y / (sigma_a n)) of an adder layer, exp(-||x -
    f||^2 / (2 sigma_c^2 n)) of a convolution (its patch norms by a window of ones)."""
    import torch
    from torch.nn import functional as F

    maps = {}
    for path, (x, y) in taps.items():
        layer = _layer(net, path)
        w = layer.adder if adder else layer.weight  # (O, C, kh, kw)
        n = w[0].numel()
        if adder:
            maps[path] = torch.exp(y / (PKKD["sigma_a"] * n))
            continue
        ones = torch.ones((1, 1, *w.shape[2:]), dtype=x.dtype)
        patch = F.conv2d(
            (x * x).sum(1, keepdim=True), ones, stride=layer.stride, padding=layer.padding
        )
        sq = (patch - 2 * y + (w * w).sum((1, 2, 3)).view(1, -1, 1, 1)).clamp(min=0)
        maps[path] = torch.exp(-sq / (2 * PKKD["sigma_c"] ** 2 * n))
    return maps


def torch_pkkd_steps(student, teacher, s_state, t_state, batches, info, dtype):
    """(student state dict, teacher state dict, {layer: alignment}) after PyTorch PKKD steps."""
    import torch
    from torch.nn import functional as F

    from train import classification

    def ready(net, state):
        net = net.double() if dtype == np.float64 else net.float()
        net.load_state_dict({k: torch.from_numpy(v.astype(dtype)) for k, v in state.items()})
        return net.train()

    student, teacher = ready(student, s_state), ready(teacher, t_state)
    taps = {"student": {}, "teacher": {}}
    hooks = [
        _layer(net, path).register_forward_hook(
            lambda _m, inputs, out, which=which, path=path: taps[which].__setitem__(
                path, (inputs[0], out)
            )
        )
        for which, net in (("student", student), ("teacher", teacher))
        for path in PKKD_LAYERS
    ]
    tdtype = torch.float64 if dtype == np.float64 else torch.float32
    align = {
        path: torch.eye(_layer(student, path).adder.shape[0], dtype=tdtype).requires_grad_()
        for path in PKKD_LAYERS
    }
    sgd = lambda params, wd: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=wd)
    opt_s, opt_t, opt_a = (
        sgd(student.parameters(), 5e-4),
        sgd(teacher.parameters(), 5e-4),
        sgd(list(align.values()), 0.0),
    )
    temperature = PKKD["temperature"]
    for batch in batches:
        x = np.asarray(classification.normalize(batch["image"], info)).astype(dtype)
        x = torch.from_numpy(x.transpose(0, 3, 1, 2))
        labels = torch.from_numpy(batch["label"]).long()
        # The progressive teacher: its maps and logits from this forward, then its own step.
        t_logits = teacher(x)
        t_maps = {k: v.detach() for k, v in _kernel_maps(teacher, taps["teacher"], False).items()}
        t_logits_fixed = t_logits.detach()
        opt_t.zero_grad()
        F.cross_entropy(t_logits, labels).backward()
        opt_t.step()
        logits = student(x)
        s_maps = _kernel_maps(student, taps["student"], True)
        log_p_t = F.log_softmax(t_logits_fixed / temperature, dim=-1)
        log_p_s = F.log_softmax(logits / temperature, dim=-1)
        kd = temperature**2 * (log_p_t.exp() * (log_p_t - log_p_s)).sum(-1).mean()
        feature = torch.stack(
            [
                ((torch.einsum("nchw,cd->ndhw", s_maps[k], align[k]) - t_maps[k]) ** 2).mean()
                for k in PKKD_LAYERS
            ]
        ).mean()
        loss = (
            F.cross_entropy(logits, labels)
            + PKKD["kd_weight"] * kd
            + PKKD["feature_weight"] * feature
        )
        opt_s.zero_grad()
        opt_a.zero_grad()
        loss.backward()
        opt_s.step()
        opt_a.step()
    for hook in hooks:
        hook.remove()
    as_np = lambda net: {
        k: v.detach().numpy().astype(np.float64) for k, v in net.state_dict().items()
    }
    return (
        as_np(student),
        as_np(teacher),
        {k: v.detach().numpy().astype(np.float64) for k, v in align.items()},
    )


def adderjax_pkkd_steps(s_state, t_state, batches, info, dtype):
    """{"student", "teacher": variables, "align": {layer: matrix}} after
    `train.distillation.train_step`s (progressive teacher, kernel features) in ``dtype``."""
    import jax
    import jax.numpy as jnp
    import optax
    from flax import traverse_util
    from flax.training import train_state as flax_train_state

    from adderjax import models, optim
    from train import convert_torch, distillation, model_state

    tx = lambda: optim.adder_sgd(0.1, momentum=0.9, weight_decay=5e-4, eta=0.2)
    with jax.enable_x64(dtype == np.float64):

        def network(state, layer):
            start, _ = convert_torch.convert_state_dict(state, ARCH, dtype=dtype)
            model = models.get_model(
                ARCH, num_classes=10, dtype=jnp.dtype(dtype), layer=layer, implementation="xla"
            )
            return model_state.TrainState.create(
                apply_fn=model.apply,
                params=jax.tree.map(jnp.asarray, start["params"]),
                batch_stats=jax.tree.map(jnp.asarray, start["batch_stats"]),
                tx=tx(),
            )

        student = network(s_state, "adder")
        channels = {
            k: traverse_util.flatten_dict(student.params, sep="/")[f"{k}/adder"].shape[-1]
            for k in PKKD_LAYERS
        }
        align = flax_train_state.TrainState.create(
            apply_fn=None,
            params=traverse_util.unflatten_dict(
                {k: jnp.eye(c, dtype=dtype) for k, c in channels.items()}, sep="/"
            ),
            tx=optax.sgd(0.1, momentum=0.9),
        )
        state = distillation.DistillState(
            student=student, teacher=network(t_state, "conv"), align=align
        )
        settings = distillation.Settings(
            progressive=True, features="kernel", layers=PKKD_LAYERS, **PKKD
        )
        step = jax.jit(
            lambda s, b: distillation.train_step(
                s, b, 1.0, info=info, settings=settings, label_smoothing=0.0, lr_fn=lambda _: 0.1
            )[0]
        )
        for batch in batches:
            state = step(state, batch)
        out = {
            which: {"params": net.params, "batch_stats": net.batch_stats}
            for which, net in (("student", state.student), ("teacher", state.teacher))
        }
        out["align"] = traverse_util.flatten_dict(state.align.params, sep="/")
        return jax.tree.map(lambda a: np.asarray(a, np.float64), out)


def as_pkkd_variables(student: dict, teacher: dict, align: dict) -> dict:
    """`torch_pkkd_steps`' result as `adderjax_pkkd_steps`' tree, in float64."""
    return {"student": as_variables(student), "teacher": as_variables(teacher), "align": align}


def errors(got, want) -> dict[str, float]:
    """{leaf path: max |got - want| / max |want|} over two trees of the same structure."""
    import jax

    paths = jax.tree_util.tree_flatten_with_path(want)[0]
    return {
        jax.tree_util.keystr(path): float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
        for (path, b), a in zip(paths, jax.tree.leaves(got), strict=True)
    }


def as_variables(state: dict):
    """A PyTorch state dict as adderjax variables in float64 (to compare trees)."""
    _imports()
    from train import convert_torch

    return convert_torch.convert_state_dict(state, ARCH, dtype=np.float64)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--pkkd", action="store_true", help="PKKD steps (student and teacher)")
    args = parser.parse_args()
    rows = {"PyTorch float32": [], "adderjax float32": [], "adderjax float64": []}
    for seed in args.seeds:
        if args.pkkd:
            student, teacher, s_state, t_state, batches, info = make_pkkd_run(seed, args.steps)
            nets = (student, teacher, s_state, t_state, batches, info)
            want = as_pkkd_variables(*torch_pkkd_steps(*nets, np.float64))
            runs = {
                "PyTorch float32": as_pkkd_variables(*torch_pkkd_steps(*nets, np.float32)),
                "adderjax float32": adderjax_pkkd_steps(
                    s_state, t_state, batches, info, np.float32
                ),
                "adderjax float64": adderjax_pkkd_steps(
                    s_state, t_state, batches, info, np.float64
                ),
            }
        else:
            net, state, batches, info = make_run(seed, args.steps)
            want = as_variables(torch_steps(net, state, batches, info, np.float64))
            runs = {
                "PyTorch float32": as_variables(torch_steps(net, state, batches, info, np.float32)),
                "adderjax float32": adderjax_steps(state, batches, info, np.float32),
                "adderjax float64": adderjax_steps(state, batches, info, np.float64),
            }
        for name, got in runs.items():
            e = list(errors(got, want).values())
            rows[name].append((statistics.median(e), max(e)))
    what = "PKKD: AdderNet student, CNN teacher, alignments" if args.pkkd else "AdderNet"
    print(f"ResNet-20 {what}, {args.steps} steps, seeds {args.seeds}; error of each leaf")
    print("against PyTorch's float64 run, max |a - b| / max |b|\n")
    seeds = [f"seed {s} median / worst" for s in args.seeds]
    print("| run | " + " | ".join(seeds) + " |")
    print("|---|" + "---|" * len(seeds))
    for name, values in rows.items():
        cells = [f"{m:.1e} / {w:.1e}" for m, w in values]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
