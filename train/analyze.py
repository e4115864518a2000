r"""The AdderNet paper's analyses of a trained AdderNet and the CNN of the same architecture.

    python -m train.analyze --workdir=runs/lenet-adder --cnn_workdir=runs/lenet-cnn

writes into ``WORKDIR/analysis`` (or --out):

* the l2 norm of every layer's weight gradient at the first iteration, from the run's own
  initialisation and first batch (Chen et al. 2020, Table 1), as a table of
  ``analysis.md`` and ``grad_norms`` of ``analysis.json``;
* ``filters.png``: the filters of the first layer and of the first adder layer (Figure 5);
* ``weights.png``: adder vs convolution weight histograms with fitted Laplace and Gaussian
  densities (Figure 7 of the journal version);
* ``features.png``: for a model with a 2-d or 3-d bottleneck (``--config.model=lenetpp``),
  the bottleneck features of test images by class (Figure 1), with how well the nearest
  class centre by angle (cosine) and by l1 distance classifies them;
* ``analysis.md``: the tables and the figures in one report; ``analysis.json`` the numbers.

Either workdir may be left out for a one-sided report. The checkpoints are the newest of
each workdir (--best: the best by eval top-1); the data comes from the stored configs
(--data_dir / --data_format point them at this machine's files).
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags
from matplotlib.figure import Figure

from train import (
    classification,
    cli,
    config_checks,
    model_state,
    plots,
    saved_models,
    schedules,
    sharding,
)
from train.data import pipeline, sources

__all__ = [
    "feature_separation",
    "first_iteration_gradient_norms",
    "first_layers",
    "layer_weights",
    "plot_features",
    "plot_filters",
]


WEIGHT_NAMES = ("adder", "kernel")


def layer_weights(params) -> dict[str, Any]:
    """{layer path: weight} for every conv/dense weight (``adder`` or ``kernel``), in order."""
    out = {}
    for name, leaf in model_state.named_leaves(params).items():
        layer, _, weight = name.rpartition("/")
        if weight in WEIGHT_NAMES:
            out[layer] = leaf
    return out


def _with_local_data(config, data_dir: str | None, data_format: str | None):
    """A stored config pointed at this machine's data, read in the main process."""
    config = ml_collections.ConfigDict(config.to_dict())
    config.data_dir = data_dir or config.data_dir
    config.data_format = data_format or config.data_format
    config.worker_count = 0
    return config


def first_iteration_gradient_norms(config: ml_collections.ConfigDict) -> dict[str, float]:
    """{layer: ||dL/dW||_2} at the run's initialisation on its first training batch.

    The same initial state (``config.seed``), batch and p as the first step of the training
    run of `config`, and the gradient the optimizer receives: for adder layers the
    full-precision rule (or the config's filter_grad), before the adaptive learning rate
    rescales it.
    """
    config_checks.validate(config, device_count=jax.device_count())
    source, info = sources.open_source(
        config.dataset, "train", data_format=config.data_format, data_dir=config.data_dir
    )
    mesh = sharding.make_mesh(config.fsdp_size)
    built = model_state.build(config, info, mesh=mesh)
    first = next(iter(pipeline.config_train_loader(config, source)))
    p = np.float32(schedules.p_at_step(config, 0, 1))
    with jax.set_mesh(mesh):
        state = built.init(jax.random.key(config.seed))
        batch = sharding.global_batch(first, sharding.batch_sharding(mesh))
        _, _, _, grads = jax.jit(
            lambda s, b, p: classification.loss_and_grads(
                s, b, p, info=info, label_smoothing=config.label_smoothing
            )
        )(state, batch, p)
    return {k: float(jnp.linalg.norm(g.ravel())) for k, g in layer_weights(grads).items()}


def first_layers(params) -> list[str]:
    """The first conv layer and, if another, the first adder conv layer of a param tree."""
    convs = [k for k, v in layer_weights(params).items() if np.ndim(v) == 4]
    adders = [k for k in convs if _is_adder(params, k)]
    return convs[:1] + [k for k in adders[:1] if k not in convs[:1]]


def _is_adder(params, layer: str) -> bool:
    node = params
    for part in layer.split("/"):
        node = node[part]
    return "adder" in node


def plot_filters(panels: dict[str, np.ndarray], path, *, max_filters: int = 16) -> None:
    """One panel per (title, HWIO filters): a row per output filter, a column per input
    channel (up to 8), each image scaled to its own range."""
    fig = Figure(figsize=(3.2 * len(panels), 6.5), layout="constrained")
    subfigs = fig.subfigures(1, len(panels), squeeze=False)[0]
    for sub, (title, w) in zip(subfigs, panels.items(), strict=True):
        kh, kw, cin, cout = w.shape
        rows, cols = min(cout, max_filters), min(cin, 8)
        axes = sub.subplots(rows, cols, squeeze=False)
        for o in range(rows):
            for c in range(cols):
                ax = axes[o][c]
                f = w[:, :, c, o]
                span = f.max() - f.min()
                ax.imshow((f - f.min()) / (span if span > 0 else 1), cmap="gray", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
        sub.suptitle(f"{title}\n{kh}x{kw}x{cin}x{cout}, first {rows} filters", fontsize="small")
    plots.save_figure(fig, path)


def bottleneck_features(model, variables, images) -> np.ndarray:
    """The output of the ``features`` layer for normalised NHWC images."""

    @jax.jit
    def f(x):
        _, state = model.apply(
            variables,
            x,
            train=False,
            capture_intermediates=lambda mdl, _: mdl.name == "features",
            mutable=["intermediates"],
        )
        return state["intermediates"]["features"]["__call__"][0]

    return np.concatenate([np.asarray(f(images[i : i + 500])) for i in range(0, len(images), 500)])


def feature_separation(features: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Accuracy of the nearest class centre by angle (cosine to the class mean direction) and
    by l1 distance (to the class median): which geometry separates the classes (Figure 1:
    CNN features are split by angle, AdderNet features gather around l1 centres)."""
    classes = np.unique(labels)
    unit = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    directions = np.stack([unit[labels == c].mean(0) for c in classes])
    directions /= np.maximum(np.linalg.norm(directions, axis=1, keepdims=True), 1e-12)
    by_angle = classes[np.argmax(unit @ directions.T, axis=1)]
    centres = np.stack([np.median(features[labels == c], axis=0) for c in classes])
    l1 = np.abs(features[:, None, :] - centres[None]).sum(-1)
    by_l1 = classes[np.argmin(l1, axis=1)]
    return {
        "nearest_angle": float(np.mean(by_angle == labels)),
        "nearest_l1_centre": float(np.mean(by_l1 == labels)),
    }


def plot_features(panels: dict[str, tuple[np.ndarray, np.ndarray]], path) -> None:
    """3-d (or 2-d) scatter of bottleneck features coloured by class, one panel per model."""
    fig = Figure(figsize=(5.5 * len(panels), 5), layout="constrained")
    for i, (title, (feats, labels)) in enumerate(panels.items()):
        three = feats.shape[1] >= 3
        ax = fig.add_subplot(1, len(panels), i + 1, projection="3d" if three else None)
        coords = [feats[:, d] for d in range(3 if three else 2)]
        ax.scatter(*coords, c=labels, cmap="tab10", s=3, alpha=0.7, vmin=0, vmax=9)
        ax.set_title(title, fontsize="small")
    plots.save_figure(fig, path)


def _test_images(config, limit: int):
    """Up to `limit` normalised test images and their labels."""
    source, info = sources.open_source(
        config.dataset, "test", data_format=config.data_format, data_dir=config.data_dir
    )
    images, labels = [], []
    for batch in pipeline.config_eval_batches(config, source):
        keep = batch["mask"] > 0
        images.append(np.asarray(classification.normalize(batch["image"][keep], info)))
        labels.append(batch["label"][keep])
        if sum(map(len, labels)) >= limit:
            break
    return np.concatenate(images)[:limit], np.concatenate(labels)[:limit]


def _side(workdir: str, best: bool, data_dir, data_format, num_points: int) -> dict:
    """Everything measured for one run."""
    model, variables, config = saved_models.load_model(workdir, best=best)
    config = _with_local_data(config, data_dir, data_format)
    out = {
        "workdir": str(pathlib.Path(workdir).absolute()),
        "model": config.model,
        "layer": config.layer,
        "params": jax.device_get(variables["params"]),
        "grad_norms": first_iteration_gradient_norms(config),
    }
    results = pathlib.Path(workdir) / "results.json"
    if results.exists():
        out["top1"] = json.loads(results.read_text()).get("top1")
    if "features" in variables["params"]:
        images, labels = _test_images(config, num_points)
        feats = bottleneck_features(model, variables, images)
        out["features"] = (feats, labels)
        out["separation"] = feature_separation(feats, labels)
    return out


def _fmt(x: float) -> str:
    return f"{x:.3g}" if x < 1e4 else f"{x:.3e}"


def analyze(
    workdir: str | None,
    cnn_workdir: str | None,
    out: str | None = None,
    *,
    best: bool = False,
    data_dir: str | None = None,
    data_format: str | None = None,
    num_points: int = 2000,
) -> pathlib.Path:
    """Writes the report and figures; returns the path of ``analysis.md``."""
    if workdir is None and cnn_workdir is None:
        raise config_checks.ConfigError("give --workdir (AdderNet), --cnn_workdir (CNN) or both")
    sides = {}
    for name, wd in (("AdderNet", workdir), ("CNN", cnn_workdir)):
        if wd is not None:
            sides[name] = _side(wd, best, data_dir, data_format, num_points)
    for name, side in sides.items():
        want = "adder" if name == "AdderNet" else "conv"
        if side["layer"] != want:
            flag = "--workdir" if name == "AdderNet" else "--cnn_workdir"
            raise config_checks.ConfigError(
                f"{flag}={side['workdir']} holds a layer={side['layer']!r} run, not layer={want!r}"
            )
    out_dir = pathlib.Path(out or pathlib.Path(workdir or cnn_workdir) / "analysis")
    out_dir.mkdir(parents=True, exist_ok=True)
    names = list(sides)
    lines = ["# AdderNet analyses", ""]
    for name, side in sides.items():
        acc = f", test top-1 {100 * side['top1']:.2f}%" if side.get("top1") is not None else ""
        lines.append(f"- {name}: {side['model']} in `{side['workdir']}`{acc}")

    # Table 1: gradient norms at the first iteration.
    layers = list(next(iter(sides.values()))["grad_norms"])
    lines += ["", "## Gradient l2 norms at the first iteration (paper Table 1)", ""]
    lines += ["| layer | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    for layer in layers:
        cells = [_fmt(s["grad_norms"].get(layer, math.nan)) for s in sides.values()]
        kind = (
            " (adder)"
            if "AdderNet" in sides and _is_adder(sides["AdderNet"]["params"], layer)
            else ""
        )
        lines.append(f"| {layer}{kind} | " + " | ".join(cells) + " |")

    # Figure 5: the first layer, and the first adder layer beside its CNN counterpart.
    shown = first_layers(sides["AdderNet" if "AdderNet" in sides else "CNN"]["params"])
    panels = {}
    for layer in shown:
        for name, side in sides.items():
            weights = layer_weights(side["params"])
            if layer in weights:
                panels[f"{name} {layer}"] = np.asarray(weights[layer])
    plot_filters(panels, out_dir / "filters.png")
    lines += ["", "## Filters (paper Figure 5)", "", "![filters](filters.png)", ""]
    lines.append(
        f"Layers {', '.join(shown)}: the first layer, and the first adder layer. The models "
        "keep the first layer multiplicative in both networks, as the paper does."
    )

    # Figure 7: weight histograms.
    fits = plots.plot_weight_histograms(
        sides["AdderNet"]["params"] if "AdderNet" in sides else None,
        sides["CNN"]["params"] if "CNN" in sides else None,
        path=out_dir / "weights.png",
    )
    lines += ["", "## Weight distributions (journal Figure 7)", "", "![weights](weights.png)", ""]
    lines += ["| weights | n | Laplace b | Gaussian sigma | log-lik/weight Laplace | "
              "log-lik/weight Gaussian | better |", "|---" * 7 + "|"]  # fmt: skip
    for key, fit in fits.items():
        lap, gau = fit["laplace"], fit["gaussian"]
        what = "adder filters" if key == "adder" else "conv filters"
        lines.append(
            f"| {what} | {fit['n']:,} | {lap['scale']:.4g} | {gau['std']:.4g} | "
            f"{lap['loglik']:.4f} | {gau['loglik']:.4f} | {fit['better']} |"
        )
    lines.append("")
    lines.append(
        "The conv-shaped (4-D) filters of both networks but the first conv and the classifier, "
        "which are multiplicative in both."
    )

    # Figure 1: bottleneck features.
    feats = {n: s["features"] for n, s in sides.items() if "features" in s}
    lines += ["", "## Bottleneck features (paper Figure 1)", ""]
    if feats:
        plot_features(feats, out_dir / "features.png")
        lines += ["![features](features.png)", ""]
        lines += ["| model | nearest centre by angle | nearest centre by l1 |", "|---|---|---|"]
        for n, s in sides.items():
            if "separation" in s:
                sep = s["separation"]
                lines.append(
                    f"| {n} | {100 * sep['nearest_angle']:.2f}% | "
                    f"{100 * sep['nearest_l1_centre']:.2f}% |"
                )
    else:
        lines.append(
            "Not drawn: these models have no 2-d or 3-d bottleneck; train a pair with "
            "`--config.model=lenetpp` and analyse it."
        )
    report = out_dir / "analysis.md"
    report.write_text("\n".join(lines) + "\n")
    numbers = {
        n: {k: v for k, v in s.items() if k not in ("params", "features")} for n, s in sides.items()
    }
    numbers["weight_fits"] = fits
    (out_dir / "analysis.json").write_text(json.dumps(numbers, indent=2) + "\n")
    return report


def run_from_flags(_=None) -> str:
    """`analyze` of the flags; the program's last line."""
    f = flags.FLAGS
    report = analyze(
        f.workdir,
        f.cnn_workdir,
        f.out,
        best=f.best,
        data_dir=f.data_dir,
        data_format=f.data_format,
        num_points=f.num_points,
    )
    return f"wrote {report}"


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Workdir of the AdderNet run.")
    flags.DEFINE_string("cnn_workdir", None, "Workdir of the CNN run of the same architecture.")
    flags.DEFINE_string("out", None, "Output directory (default: WORKDIR/analysis).")
    flags.DEFINE_bool("best", False, "Analyse the best checkpoints, not the newest.")
    flags.DEFINE_string("data_dir", None, "Overrides the data_dir stored in the checkpoints.")
    flags.DEFINE_string("data_format", None, "Overrides the data_format stored in the checkpoints.")
    flags.DEFINE_integer("num_points", 2000, "Test images in the features figure.")


if __name__ == "__main__":
    define_flags()
    app.run(cli.program(run_from_flags))
