"""Figures for training runs: learning curves and the AdderNet paper's weight histograms.

Everything draws on a `matplotlib.figure.Figure` with an Agg canvas rather than through
pyplot, so no global backend or rcParams of the caller's session is changed.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# Metric names accepted for each curve, first match wins; the trainer's names come first,
# the others let curves from runs logged with common alternative names plot as well.
_LOSS = ("loss",)
_TOP1 = ("top1", "accuracy", "top1_accuracy", "top_1")
_TOP5 = ("top5", "top5_accuracy", "top_5")
_LEARNING_RATE = ("learning_rate", "lr")
_P = ("p",)

# The first conv and the classifier stay full precision in AdderNets (Chen et al. 2020),
# so the paper's histogram compares only the layers that differ between the two networks.
DEFAULT_EXCLUDE = ("conv1", "fc")


def save_figure(fig: Figure, path: str | os.PathLike) -> None:
    """Writes `fig` as a PNG with the Agg renderer (no display needed), making its folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)  # attaches itself to fig: savefig then renders with Agg
    fig.savefig(path, dpi=100)


def _series(
    metrics: Sequence[Mapping[str, Any]], split: str | None, names: Sequence[str]
) -> tuple[str, np.ndarray, np.ndarray] | None:
    """(name, steps, values) of the first of `names` logged under `split` (any if None).

    Null (non-finite) values are dropped: a diverged step leaves a gap, not a crash.
    """
    records = [r for r in metrics if split is None or r.get("split") == split]
    for name in names:
        points = [
            (r["step"], float(r[name]))
            for r in records
            if r.get(name) is not None and "step" in r and math.isfinite(float(r[name]))
        ]
        if points:
            points.sort(key=lambda sv: sv[0])
            steps, values = zip(*points, strict=True)
            return name, np.asarray(steps), np.asarray(values)
    return None


def _line(ax, series, label: str, **kwargs) -> None:
    _, steps, values = series
    # Markers make a single point (or a short eval series) visible at all.
    marker = "o" if len(steps) <= 30 else None
    ax.plot(steps, values, label=label, marker=marker, markersize=3, **kwargs)


def plot_curves(metrics: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> None:
    """Plots training curves from `read_metrics` output to one image file at `path`.

    Panels, each drawn only if its metrics were logged: loss (train, and eval if present),
    accuracy (eval top-1 `accuracy` and top-5 `top5_accuracy`, train top-1 dashed),
    learning rate (`learning_rate`) and the adder norm's `p`, all against the step.
    Null values are skipped; with no plottable metric at all the image says so.
    """
    panels = []

    loss = [
        (s, f"{split} loss") for split in ("train", "eval") if (s := _series(metrics, split, _LOSS))
    ]
    if loss:
        panels.append(("loss", loss))

    accuracy = []
    if top1 := _series(metrics, "eval", _TOP1):
        accuracy.append((top1, "eval top-1"))
    if top5 := _series(metrics, "eval", _TOP5):
        accuracy.append((top5, "eval top-5"))
    if train_top1 := _series(metrics, "train", _TOP1):
        accuracy.append((train_top1, "train top-1", {"linestyle": "--", "alpha": 0.7}))
    if accuracy:
        panels.append(("accuracy", accuracy))

    if lr := _series(metrics, None, _LEARNING_RATE):
        panels.append(("learning rate", [(lr, "learning rate")]))
    if p := _series(metrics, None, _P):
        panels.append(("p", [(p, "p")]))

    fig = Figure(figsize=(4.5 * max(len(panels), 1), 3.6), layout="constrained")
    if not panels:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, "no metrics to plot", ha="center", va="center")
        ax.set_axis_off()
    else:
        axes = fig.subplots(1, len(panels), squeeze=False)[0]
        for ax, (title, lines) in zip(axes, panels, strict=True):
            for series, label, *style in lines:
                _line(ax, series, label, **(style[0] if style else {}))
            ax.set_title(title)
            ax.set_xlabel("step")
            ax.grid(True, alpha=0.3)
            if len(lines) > 1:
                ax.legend(fontsize="small")
    save_figure(fig, path)


def compare_curves(
    runs: Mapping[str, Sequence[Mapping[str, Any]]], path: str | os.PathLike, title: str = ""
) -> None:
    """Plots the eval top-1 and the train loss of several runs side by side (the journal
    paper's Fig. 6 layout), one line per run labelled by its key in `runs`.

    A run that logged neither is left out of that panel; with nothing to plot the panel
    says so.
    """
    fig = Figure(figsize=(9.5, 3.6), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (split, names, what) in zip(
        axes, (("eval", _TOP1, "eval top-1"), ("train", _LOSS, "train loss")), strict=True
    ):
        drawn = 0
        for label, metrics in runs.items():
            if series := _series(metrics, split, names):
                _line(ax, series, label)
                drawn += 1
        if not drawn:
            ax.text(0.5, 0.5, f"no {what} to plot", ha="center", va="center")
        ax.set_title(what)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if drawn > 1:
            ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def weight_histograms(
    params: Mapping[str, Any], *, exclude: Iterable[str] = DEFAULT_EXCLUDE
) -> dict[str, np.ndarray]:
    """Collects the conv-shaped weights of a flax linen param tree, flattened.

    Returns `{"adder": ..., "kernel": ...}`: the concatenated values of every 4-D leaf named
    `adder` (adder filters) and every 4-D leaf named `kernel` (convolution filters), as
    1-D float32 arrays (empty if there are none). Leaves under a top-level module whose
    name is in `exclude` are left out; by default `conv1` and `fc`, the full-precision
    first conv and classifier, as in the paper's figure. `params` may also be a variables
    dict (`{"params": ..., "batch_stats": ...}`), of which only `params` is read.
    """
    if "params" in params and isinstance(params["params"], Mapping):
        params = params["params"]
    exclude = frozenset(exclude)
    groups: dict[str, list[np.ndarray]] = {"adder": [], "kernel": []}
    for path, leaf in traverse_util.flatten_dict(params).items():
        name = path[-1]
        if name not in groups or path[0] in exclude or np.ndim(leaf) != 4:
            continue
        groups[name].append(np.asarray(leaf, dtype=np.float32).ravel())
    return {
        name: np.concatenate(arrays) if arrays else np.zeros((0,), np.float32)
        for name, arrays in groups.items()
    }


def fit_weight_distributions(values: np.ndarray) -> dict[str, Any]:
    """Maximum-likelihood Laplace and Gaussian fits to `values`, with their log-likelihoods.

    Laplace: location = median, scale = mean absolute deviation from the median.
    Gaussian: mean and (population) standard deviation. `loglik` is the mean
    log-density per value, so fits to different numbers of weights compare directly;
    `better` names the fit with the higher one.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size < 2:
        raise ValueError(f"{x.size=}: need at least 2 values to fit")
    # A scale of exactly 0 (all values equal) would make the log-likelihood infinite.
    tiny = np.finfo(np.float64).tiny
    loc = float(np.median(x))
    abs_dev = float(np.mean(np.abs(x - loc)))
    scale = max(abs_dev, tiny)
    laplace_ll = -math.log(2.0 * scale) - abs_dev / scale
    mean = float(np.mean(x))
    var = float(np.mean((x - mean) ** 2))
    std = max(math.sqrt(var), tiny)
    gauss_ll = -0.5 * math.log(2.0 * math.pi * std**2) - var / (2.0 * std**2)
    return {
        "n": int(x.size),
        "laplace": {"loc": loc, "scale": scale, "loglik": laplace_ll},
        "gaussian": {"mean": mean, "std": std, "loglik": gauss_ll},
        "better": "laplace" if laplace_ll > gauss_ll else "gaussian",
    }


def _histogram_panel(ax, values: np.ndarray, fit: dict[str, Any], title: str, bins: int) -> None:
    # The range leaves out the rarest 0.1% of values, whose long tails would otherwise
    # squeeze the bulk of the distribution into a few bins.
    lo, hi = np.quantile(values, [0.0005, 0.9995])
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    counts, edges = np.histogram(values, bins=bins, range=(lo, hi))
    # Normalized by all values (not only those in range) so it matches the fitted densities.
    density = counts / (values.size * np.diff(edges))
    ax.stairs(density, edges, fill=True, alpha=0.45, color="tab:gray", label="weights")

    lap, gau = fit["laplace"], fit["gaussian"]
    xs = np.linspace(lo, hi, 1000)
    lap_pdf = np.exp(-np.abs(xs - lap["loc"]) / lap["scale"]) / (2 * lap["scale"])
    gau_pdf = np.exp(-0.5 * ((xs - gau["mean"]) / gau["std"]) ** 2) / (
        gau["std"] * math.sqrt(2 * math.pi)
    )
    ax.plot(xs, lap_pdf, color="tab:red", label="Laplace fit")
    ax.plot(xs, gau_pdf, color="tab:blue", linestyle="--", label="Gaussian fit")

    mark = {fit["better"]: "  (better)"}
    ax.set_title(
        f"{title} (n={fit['n']:,})\n"
        f"Laplace μ={lap['loc']:.3g}, b={lap['scale']:.3g}: "
        f"log-lik/weight {lap['loglik']:.3f}{mark.get('laplace', '')}\n"
        f"Gaussian μ={gau['mean']:.3g}, σ={gau['std']:.3g}: "
        f"log-lik/weight {gau['loglik']:.3f}{mark.get('gaussian', '')}",
        fontsize="small",
    )
    ax.set_xlabel("weight value")
    ax.set_ylabel("density")
    ax.legend(fontsize="small")


def plot_weight_histograms(
    adder_params: Mapping[str, Any] | None = None,
    cnn_params: Mapping[str, Any] | None = None,
    *,
    path: str | os.PathLike,
    exclude: Iterable[str] = DEFAULT_EXCLUDE,
    bins: int = 200,
) -> dict[str, dict[str, Any]]:
    """Histograms of adder-filter vs convolution weights with Laplace and Gaussian fits.

    The AdderNet paper's figure (Chen et al., CVPR 2020, Fig. 3; journal version Fig. 7):
    the weights of an AdderNet's adder filters follow a Laplace distribution, those of
    the same CNN's convolution filters a Gaussian. Each panel overlays both fitted
    densities (see `fit_weight_distributions`) and its title gives the fitted parameters
    and the mean log-likelihood per weight of each fit, so the better fit can be read off.

    Args:
      adder_params: param tree of an AdderNet; its 4-D `adder` leaves are histogrammed.
      cnn_params: param tree of the CNN; its 4-D `kernel` leaves are histogrammed.
        Either may be `None`, giving a one-panel figure; not both.
      path: image file to write (PNG unless the suffix says otherwise).
      exclude: top-level module names whose weights are left out (see
        `weight_histograms`); by default the full-precision `conv1` and `fc`.
      bins: number of histogram bins.

    Returns:
      `{"adder": fit, "cnn": fit}` for the panels drawn, each `fit` the dict of
      `fit_weight_distributions`.

    Example (one AdderNet run, one panel)::

        fits = plot_weight_histograms(state.params, path=workdir / "weights.png")
        print(fits["adder"]["better"])  # "laplace" for a trained AdderNet
    """
    exclude = tuple(exclude)
    panels = []
    if adder_params is not None:
        values = weight_histograms(adder_params, exclude=exclude)["adder"]
        if values.size == 0:
            raise ValueError(f"adder_params has no 4-D 'adder' leaves outside {exclude}")
        panels.append(("adder", "AdderNet adder filters", values))
    if cnn_params is not None:
        values = weight_histograms(cnn_params, exclude=exclude)["kernel"]
        if values.size == 0:
            raise ValueError(f"cnn_params has no 4-D 'kernel' leaves outside {exclude}")
        panels.append(("cnn", "CNN convolution filters", values))
    if not panels:
        raise ValueError("pass adder_params, cnn_params or both")

    fig = Figure(figsize=(5.5 * len(panels), 4.2), layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    fits = {}
    for ax, (key, title, values) in zip(axes, panels, strict=True):
        fits[key] = fit_weight_distributions(values)
        _histogram_panel(ax, values, fits[key], title, bins)
    save_figure(fig, path)
    return fits
