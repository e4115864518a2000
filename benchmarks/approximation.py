r"""The journal paper's toy experiments of approximation capacity (Section 5.1, Figs. 2-4).

    python benchmarks/approximation.py --out /tmp/approximation

A two-layer AdderNet (Definitions 1-2: ``L(X)_i = a_i ||W_i - X||_1 + b_i``, ReLU between the
two layers) against a two-layer fully connected network, both with n hidden units and one
output, on three 2-d tasks (Eqs. 34-36):

* ``ball``: label 1 inside radius 10, 0 outside radius 15 (the points between are dropped,
  the margin of Eq. 34), points N(0, 10^2);
* ``two_balls``: label 1 inside either radius-10 ball around (10, 10) and (-10, -10), points
  N(0, 15^2);
* ``xy``: label 1 where x * y >= 0, points N(0, 10^2).

The paper says "variance 10" (and 15); with a variance of 10 (a standard deviation of 3.2)
almost every point of ``ball`` would fall inside the radius-10 ball and the figures could not
show two classes, so 10 and 15 are used here as standard deviations.

The recipe is the paper's: SGD with Nesterov momentum 0.9, weight decay 5e-4 (on every
parameter, as PyTorch's SGD), 10,000 iterations, cosine learning rate from 0.1, binary
cross-entropy on a sigmoid, class 1 where the output's sigmoid > 0.5. What the paper leaves
open, chosen here: full-batch training on ``--points`` points drawn once (``--data_seed``);
a_i, b_i are a batch norm's scale and bias (initialised to 1 and 0) with the statistics of the
whole training set (an adder output is never positive, so a ReLU after an unnormalised adder
layer would be dead); the adder filters are initialised N(0, 1), as the authors' adder layer,
and trained with the AdderNet gradients (`adderjax.adder_dense`: full-precision filter
gradient, HardTanh input gradient), by default without the adaptive learning rate
(``--adder_rule alr`` adds it, eta 0.2; ``--adder_rule l2l1`` also trains with p falling from
2 to 1 over the first 3/4 of the steps, the journal's v2 recipe); the FC layers use PyTorch's
``nn.Linear`` initialisation. Every cell is trained from ``--seeds`` initialisations (vmapped).

Writes ``OUT/results.json``: ``{task: {"adder"|"fc": {n: {"mean", "std", "min", "max",
"per_seed"}}}}`` (training accuracy), and ``OUT/TASK.png`` laid out as Figs. 2-4: the
training data, then one row per network with its decision boundary (the first seed) for each
n. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adderjax import adder_dense  # noqa: E402 (after the path insert)

NETS = ("fc", "adder")
# How the adder filters train (the FC net is the same in all): "plain", the AdderNet
# gradients with plain SGD (the CVPR recipe without its adaptive learning rate); "alr", with
# the adaptive learning rate eta * sqrt(k) / ||g|| on each adder layer (CVPR section 3.3);
# "l2l1", the journal's v2: also p falling from 2 to 1 over the first 3/4 of the steps.
RULES = ("plain", "alr", "l2l1")
ETA = 0.2
# The paper's n values first, a few more after.
WIDTHS = {"ball": (1, 2, 3, 4), "two_balls": (3, 5, 10, 2), "xy": (1, 2, 3, 4)}
TASKS = tuple(WIDTHS)
EPS = 1e-5


def make_task(task: str, points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Eqs. 34-36: ``(x, z)``, float32 points ``(m, 2)`` and 0/1 labels ``(m,)``."""
    rng = np.random.default_rng(seed)
    if task == "ball":
        x = rng.normal(0.0, 10.0, size=(points, 2))
        r = np.linalg.norm(x, axis=1)
        keep = (r < 10) | (r > 15)
        x, z = x[keep], (r[keep] < 10)
    elif task == "two_balls":
        x = rng.normal(0.0, 15.0, size=(points, 2))
        z = (np.linalg.norm(x - 10, axis=1) < 10) | (np.linalg.norm(x + 10, axis=1) < 10)
    elif task == "xy":
        x = rng.normal(0.0, 10.0, size=(points, 2))
        z = x[:, 0] * x[:, 1] >= 0
    else:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {task!r}")
    return x.astype(np.float32), z.astype(np.float32)


def init(net: str, n: int, key: jax.Array) -> dict:
    """The parameters of a two-layer `net` ("fc" or "adder") with `n` hidden units (scales
    and biases as rows, ``(1, n)``, broadcast over the points)."""
    k1, k2, k3, k4 = jax.random.split(key, 4)
    if net == "adder":
        return {
            "w1": jax.random.normal(k1, (2, n)), "a1": jnp.ones((1, n)), "b1": jnp.zeros((1, n)),
            "w2": jax.random.normal(k2, (n, 1)), "a2": jnp.ones((1, 1)), "b2": jnp.zeros((1, 1)),
        }  # fmt: skip
    if net == "fc":  # PyTorch's nn.Linear: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        u = lambda k, shape, fan_in: jax.random.uniform(  # noqa: E731
            k, shape, minval=-1 / math.sqrt(fan_in), maxval=1 / math.sqrt(fan_in)
        )
        return {
            "w1": u(k1, (2, n), 2), "b1": u(k2, (1, n), 2),
            "w2": u(k3, (n, 1), n), "b2": u(k4, (1, 1), n),
        }  # fmt: skip
    raise ValueError(f"net must be one of {', '.join(NETS)}, got {net!r}")


def _normalise(d, d_ref, a, b):
    """``a * (d - mean) / std + b``, the statistics those of `d_ref`."""
    mean, var = d_ref.mean(0, keepdims=True), d_ref.var(0, keepdims=True)
    return a * (d - mean) * jax.lax.rsqrt(var + EPS) + b


def logits(net: str, params: dict, x: jax.Array, reference: jax.Array | None = None, p=1.0):
    """The network's output before the sigmoid, ``(m,)``. The adder net normalises with the
    statistics of `reference` (the training set), or of `x` itself where None (training,
    where each adder output is then computed once); its layers use the l_p distance."""
    if net == "fc":
        h = jax.nn.relu(x @ params["w1"] + params["b1"])
        return (h @ params["w2"] + params["b2"])[:, 0]
    own = reference is None
    dense = lambda a, w: adder_dense(a, w, p=p)  # noqa: E731
    d1 = dense(x, params["w1"])
    d1_ref = d1 if own else dense(reference, params["w1"])
    h = jax.nn.relu(_normalise(d1, d1_ref, params["a1"], params["b1"]))
    h_ref = h if own else jax.nn.relu(_normalise(d1_ref, d1_ref, params["a1"], params["b1"]))
    d2 = dense(h, params["w2"])
    d2_ref = d2 if own else dense(h_ref, params["w2"])
    return _normalise(d2, d2_ref, params["a2"], params["b2"])[:, 0]


def adaptive_lr(eta: float) -> optax.GradientTransformation:
    """The adaptive learning rate on the adder filters w1 and w2: each gradient rescaled to
    the norm ``eta * sqrt(k)`` (`adderjax.optim.scale_by_adaptive_lr`, which finds adder
    filters by their Flax names, for this script's plain dict)."""

    def rescale(g):
        return g * (eta * math.sqrt(g.size) / jnp.maximum(jnp.linalg.norm(g), 1e-12))

    def update(updates, state, params=None):
        del params
        return {k: rescale(g) if k in ("w1", "w2") else g for k, g in updates.items()}, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def optimizer(steps: int, lr: float, net: str = "fc", rule: str = "plain"):
    """SGD with Nesterov momentum 0.9, weight decay 5e-4 (PyTorch's, added to the gradient),
    cosine learning rate from `lr` over `steps`; with the adaptive learning rate first for an
    adder net trained by rule "alr" or "l2l1"."""
    alr = [adaptive_lr(ETA)] if net == "adder" and rule != "plain" else []
    return optax.chain(
        *alr,
        optax.add_decayed_weights(5e-4),
        optax.sgd(optax.cosine_decay_schedule(lr, steps), momentum=0.9, nesterov=True),
    )


def p_at(step, steps: int, rule: str):
    """The norm at `step`: 1, or under "l2l1" falling linearly from 2 to 1 by 3/4 of steps."""
    if rule != "l2l1":
        return 1.0
    return jnp.maximum(1.0, 2.0 - step / (0.75 * steps))


def train(net: str, n: int, x, z, seeds: int, steps: int, lr: float = 0.1, rule: str = "plain"):
    """Trains `seeds` networks (vmapped) full-batch; returns their parameters (stacked) and
    training accuracies ``(seeds,)``."""
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    x, z = jnp.asarray(x), jnp.asarray(z)
    opt = optimizer(steps, lr, net, rule)

    def loss(params, p):
        return optax.sigmoid_binary_cross_entropy(logits(net, params, x, p=p), z).mean()

    def one(key):
        params = init(net, n, key)

        def step(carry, i):
            params, state = carry
            grads = jax.grad(loss)(params, p_at(i, steps, rule))
            updates, state = opt.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), None

        carry = (params, opt.init(params))
        (params, _), _ = jax.lax.scan(step, carry, jnp.arange(steps, dtype=jnp.float32))
        accuracy = ((logits(net, params, x) > 0) == (z > 0.5)).mean()
        return params, accuracy

    keys = jax.random.split(jax.random.key(0), seeds)
    return jax.jit(jax.vmap(one))(keys)


def boundary(net: str, params: dict, x: np.ndarray, extent: float, size: int = 200):
    """The predicted class (0/1) of the first seed's network on a ``size`` x ``size`` grid."""
    first = jax.tree.map(lambda a: a[0], params)
    g = np.linspace(-extent, extent, size, dtype=np.float32)
    grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    out = logits(net, first, jnp.asarray(grid), jnp.asarray(x))
    return np.asarray(out > 0).reshape(size, size)


def plot(path: pathlib.Path, task: str, x, z, maps: dict, scores: dict, extent: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415
    from matplotlib.figure import Figure  # noqa: PLC0415 (only when plotting)

    widths = list(maps[NETS[0]])
    fig = Figure(figsize=(2.2 * (1 + len(widths)), 4.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2, 1 + len(widths), squeeze=False)
    for row, net in enumerate(NETS):
        ax = axes[row, 0]
        ax.scatter(x[:, 0], x[:, 1], c=z, s=2, cmap="coolwarm", vmin=0, vmax=1)
        ax.set_title("training data" if row == 0 else "")
        ax.set_ylabel({"fc": "FC network", "adder": "AdderNet"}[net])
        for col, n in enumerate(widths, start=1):
            ax = axes[row, col]
            ax.imshow(maps[net][n], origin="lower", extent=(-extent, extent) * 2,
                      cmap="coolwarm", vmin=0, vmax=1, alpha=0.35)  # fmt: skip
            ax.scatter(x[:, 0], x[:, 1], c=z, s=1, cmap="coolwarm", vmin=0, vmax=1)
            ax.set_title(f"n = {n}: {100 * scores[net][n]['mean']:.1f}%", fontsize=9)
        for ax in axes[row]:
            ax.set_xlim(-extent, extent), ax.set_ylim(-extent, extent)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_aspect("equal")
    fig.suptitle(f"{task}: decision boundaries (first seed), mean training accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def run(args) -> dict:
    results = {}
    for task in args.tasks:
        x, z = make_task(task, args.points, args.data_seed)
        extent = float(np.abs(x).max())
        results[task], maps = {}, {}
        for net in NETS:
            results[task][net], maps[net] = {}, {}
            for n in args.widths or WIDTHS[task]:
                start = time.perf_counter()
                params, accuracy = train(
                    net, n, x, z, args.seeds, args.steps, args.lr, rule=args.adder_rule
                )
                accuracy = np.asarray(accuracy, dtype=np.float64)
                results[task][net][n] = {
                    "mean": float(accuracy.mean()), "std": float(accuracy.std()),
                    "min": float(accuracy.min()), "max": float(accuracy.max()),
                    "per_seed": accuracy.round(4).tolist(),
                }  # fmt: skip
                maps[net][n] = boundary(net, params, x, extent)
                print(f"{task} {net} n={n}: {100 * accuracy.mean():.2f}% "
                      f"({time.perf_counter() - start:.1f} s)", flush=True)  # fmt: skip
        if not args.no_plots:
            plot(args.out / f"{task}.png", task, x, z, maps, results[task], extent)
    return results


def table(results: dict) -> str:
    """Markdown: mean ± std (best seed) training accuracy, in %, per task, n and network."""
    lines = ["| task | n | FC network | AdderNet |", "|---|---|---|---|"]
    for task, nets in results.items():
        for n in sorted(nets["fc"], key=int):
            cells = [
                f"{100 * nets[net][n]['mean']:.1f} ± {100 * nets[net][n]['std']:.1f} "
                f"({100 * nets[net][n]['max']:.1f})"
                for net in NETS
            ]
            lines.append(f"| {task} | {n} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def parse(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=pathlib.Path, required=True)
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--steps", type=int, default=10_000)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--points", type=int, default=1000)
    parser.add_argument("--data_seed", type=int, default=0)
    parser.add_argument(
        "--widths",
        default="",
        help="hidden units n for every task, e.g. 1,3 (default: "
        + "; ".join(f"{t} {','.join(map(str, w))}" for t, w in WIDTHS.items())
        + ")",
    )
    parser.add_argument(
        "--adder_rule", default="plain", choices=RULES,
        help="how the adder filters train: plain SGD, + the adaptive learning rate (alr), "
        "+ p from 2 to 1 (l2l1)",
    )  # fmt: skip
    parser.add_argument("--no_plots", action="store_true")
    args = parser.parse_args(argv)
    widths = [n.strip() for n in args.widths.split(",") if n.strip()]
    if not all(n.isdigit() and int(n) >= 1 for n in widths):
        parser.error(f"--widths must be positive integers separated by commas, got {args.widths!r}")
    args.widths = [int(n) for n in widths]
    args.tasks = [t for t in args.tasks.split(",") if t]
    bad = [t for t in args.tasks if t not in TASKS]
    if bad or not args.tasks:
        parser.error(f"--tasks must name some of {', '.join(TASKS)}, got {bad or 'none'}")
    for name in ("steps", "seeds", "points"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    return args


def main(argv=None) -> None:
    args = parse(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    results = run(args)
    (args.out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
