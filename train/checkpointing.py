"""Orbax checkpoints of a training run: the train state, the data iterator and the config.

Every checkpoint gets a manifest of SHA-256 digests of its files once orbax has finished it;
`restore_latest` checks the newest checkpoint against it (and that orbax can read it), and
when it is damaged says so, moves it aside (never deletes it) and falls back to the next
newest, down to the oldest.

One `CheckpointManager` under `workdir/checkpoints` keeps the newest `keep` checkpoints and
the best one by the task's evaluation metric (`manager(best_metric=...)`: top-1 for
classification and distillation, the first evaluation set's PSNR for super-resolution).
Each checkpoint holds three items: `state` (parameters, batch statistics, optimizer state,
step), `data` (the grain iterator's position, so a resumed run reads exactly the batches it
would have read) and `meta` (the config as JSON and the metrics of that step, so `train.eval`
can rebuild the model from a checkpoint alone).

The resume policy is here too: `check_resumable` refuses a workdir whose checkpoints were
made by a config that would restore into another model (a task's keys: classification's and
distillation's `RESUME_KEYS`, super-resolution's `train.super_resolution.RESUME_KEYS`).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
import time
from typing import Any

import grain.python as grain
import jax
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from train import config_checks
from train.configs import default

__all__ = [
    "BEST_METRIC",
    "RESUME_KEYS",
    "CheckpointError",
    "check_resumable",
    "checkpoint_dir",
    "config_from_meta",
    "manager",
    "metric_name",
    "read_meta",
    "restore",
    "restore_latest",
    "restore_or_init",
    "save",
    "step_dir",
    "upgrade_meta",
    "verify",
]

BEST_METRIC = "eval_top1"
MANIFEST = "adderjax_manifest.json"
# What a checkpoint must share with the config that resumes it: another model or dataset
# would either fail to restore or, worse, restore into something else.
RESUME_KEYS = (
    "model",
    "layer",
    "shift_kind",
    "shift_frozen",
    "dataset",
    "image_size",
    "dtype",
    "distill",
    "distill_features",
    "distill_layers",
)
# What a key missing from a checkpoint older than it meant.
_RESUME_DEFAULTS = {
    "distill": "none",
    "distill_features": "kernel",
    "distill_layers": "",
    "shift_kind": "ps",
    "shift_frozen": False,
}


def metric_name(eval_metric: str) -> str:
    """The name a checkpoint ranks by for an evaluation metric: "top1" -> `BEST_METRIC`."""
    return f"eval_{eval_metric}"


class CheckpointError(ValueError):
    """No checkpoint of a workdir can be used; the message is one line."""


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(workdir).absolute() / "checkpoints"


def manager(
    directory: str | pathlib.Path,
    *,
    keep: int = 3,
    read_only: bool = False,
    best_metric: str = BEST_METRIC,
) -> ocp.CheckpointManager:
    """The newest `keep` checkpoints plus the best by `best_metric` (higher is better)
    survive."""
    policy = pp.AnyPreservationPolicy(
        [
            pp.LatestN(n=keep),
            # Checkpoints without an evaluation are kept by LatestN alone (BestN would keep
            # every one of them).
            pp.BestN(
                get_metric_fn=lambda m: m[best_metric],
                reverse=False,
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        # Only for `best_step()`: what is kept is decided by the policy above.
        best_fn=lambda m: m[best_metric],
        best_mode="max",
        read_only=read_only,
        create=not read_only,
        # Synchronous saves: the step that follows never races a half-written checkpoint.
        enable_async_checkpointing=False,
    )
    handlers = {
        "state": ocp.StandardCheckpointHandler(),
        "data": grain.PyGrainCheckpointHandler(),
        "meta": ocp.JsonCheckpointHandler(),
    }
    return ocp.CheckpointManager(pathlib.Path(directory), options=options, item_handlers=handlers)


def save(
    mngr: ocp.CheckpointManager,
    step: int,
    state: Any,
    *,
    data_iterator: Any | None,
    config: ml_collections.ConfigDict,
    metrics: dict[str, float] | None = None,
    steps_per_epoch: int | None = None,
) -> None:
    """Writes checkpoint `step`; `metrics` (the manager's best metric, when evaluated) rank
    it. `steps_per_epoch` is stored with the config, so a schedule's value at `step` can be
    known without the training data."""
    meta = {"config": json.loads(config.to_json()), "metrics": dict(metrics or {})}
    if steps_per_epoch is not None:
        meta["steps_per_epoch"] = int(steps_per_epoch)
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iterator is not None:
        items["data"] = grain.PyGrainCheckpointSave(data_iterator)
    mngr.save(
        step, args=ocp.args.Composite(**items), metrics=dict(metrics or {}) or None, force=True
    )
    mngr.wait_until_finished()
    if jax.process_index() == 0:
        _write_manifest(step_dir(mngr, step))


def step_dir(mngr: ocp.CheckpointManager, step: int) -> pathlib.Path:
    """The directory of checkpoint `step` (WORKDIR/checkpoints/STEP)."""
    return pathlib.Path(mngr.directory) / str(step)


def _digests(directory: pathlib.Path) -> dict[str, str]:
    out = {}
    for path in sorted(directory.rglob("*")):
        if path.is_file() and path.name != MANIFEST:
            out[str(path.relative_to(directory))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _write_manifest(directory: pathlib.Path) -> None:
    tmp = directory / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(_digests(directory), indent=0))
    tmp.replace(directory / MANIFEST)  # atomic: a manifest is whole or absent


def verify(mngr: ocp.CheckpointManager, step: int) -> str | None:
    """What is wrong with checkpoint `step`'s files, or None when they match its manifest.

    A checkpoint without a manifest (the run died between orbax's commit and the manifest)
    is taken as orbax left it; reading it is the remaining check.
    """
    directory = step_dir(mngr, step)
    manifest = directory / MANIFEST
    if not manifest.exists():
        return None
    try:
        want = json.loads(manifest.read_text())
    except (OSError, ValueError) as e:
        return f"unreadable manifest {manifest}: {e}"
    got = _digests(directory)
    for name in sorted(set(want) | set(got)):
        if name not in got:
            return f"file {name} is missing"
        if name not in want:
            return f"file {name} was not part of it"
        if got[name] != want[name]:
            return f"file {name} does not match its checksum"
    return None


def _set_aside(mngr: ocp.CheckpointManager, step: int) -> pathlib.Path:
    """Moves a damaged checkpoint out of the manager's sight, keeping it for inspection."""
    target = pathlib.Path(mngr.directory) / f"damaged-{step}-{int(time.time())}"
    if jax.process_index() == 0:
        step_dir(mngr, step).rename(target)
    mngr.reload()
    return target


def restore_latest(
    mngr: ocp.CheckpointManager, abstract_state: Any, *, data_iterator: Any | None = None, log=print
) -> tuple[Any, dict, int] | None:
    """The newest checkpoint that is whole and readable: (state, meta, step), or None when
    there is none at all. Damaged ones are reported through `log` and set aside.

    Raises:
      CheckpointError: checkpoints exist but none can be read.
    """
    problems = []
    for step in sorted(mngr.all_steps(), reverse=True):
        problem = verify(mngr, step)
        if problem is None:
            _check_same_data(mngr, step, data_iterator)
            try:
                state, meta = restore(mngr, step, abstract_state, data_iterator=data_iterator)
                return state, meta, step
            except Exception as e:  # orbax, tensorstore and grain raise many kinds
                problem = f"it cannot be read ({type(e).__name__}: {str(e).splitlines()[0]})"
        moved = _set_aside(mngr, step)
        log(f"checkpoint {step} in {mngr.directory} is damaged: {problem}; moved to {moved}")
        problems.append(step)
    if problems:
        raise CheckpointError(
            f"no usable checkpoint in {mngr.directory}: steps {problems} are damaged (moved "
            f"aside); start a new run with another --workdir or repair them"
        )
    return None


def _check_same_data(mngr: ocp.CheckpointManager, step: int, data_iterator) -> None:
    """Refuses (without setting the checkpoint aside: it is whole) to resume a data iterator
    over other data: grain compares its source's and sampler's reprs (the files read, the
    batch size, the seed) and would fail the restore as if the checkpoint were damaged."""
    if data_iterator is None or not hasattr(data_iterator, "get_state"):
        return
    name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
    path = step_dir(mngr, step) / "data" / name
    try:
        saved = json.loads(path.read_text())
        now = json.loads(data_iterator.get_state())
    except (OSError, ValueError, TypeError):
        return  # not grain's JSON state: the restore itself decides
    for key, what in (("data_source", "data"), ("sampler", "sampler")):
        if key in saved and key in now and saved[key] != now[key]:
            raise CheckpointError(
                f"checkpoint {step} in {mngr.directory} was written reading {what} "
                f"{saved[key]}, this run reads {now[key]}: give it the same {what} to resume "
                f"(data_dir, batch_size, seed), or use another --workdir"
            )


def restore_or_init(
    mngr: ocp.CheckpointManager,
    abstract_state: Any,
    init,
    *,
    data_iterator: Any | None = None,
    warn=print,
    info=print,
) -> tuple[Any, int]:
    """(state, step) of the newest usable checkpoint (`restore_latest`, damaged ones
    reported through `warn`), or (``init()``, 0) when there is none; a resume is reported
    through `info`."""
    restored = restore_latest(mngr, abstract_state, data_iterator=data_iterator, log=warn)
    if restored is None:
        return init(), 0
    state, _, step = restored
    info(f"resumed from {mngr.directory} at step {step}")
    return state, step


def restore(
    mngr: ocp.CheckpointManager,
    step: int,
    abstract_state: Any,
    *,
    data_iterator: Any | None = None,
) -> tuple[Any, dict]:
    """Restores `state` into the structure and shardings of `abstract_state` (and moves
    `data_iterator` to its saved position); returns (state, meta)."""
    items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
    if data_iterator is not None:
        items["data"] = grain.PyGrainCheckpointRestore(data_iterator)
    restored = mngr.restore(step, args=ocp.args.Composite(**items))
    return restored["state"], upgrade_meta(restored["meta"])


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    """The config and metrics stored with checkpoint `step`, without reading the arrays."""
    meta = mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    return upgrade_meta(meta)


def upgrade_meta(meta: dict) -> dict:
    """`meta` with its config in today's keys: checkpoints written before the layer kinds
    say ``adder: true`` / ``false`` where today's say ``layer: "adder"`` / ``"conv"``."""
    config = meta.get("config")
    if isinstance(config, dict) and "adder" in config and "layer" not in config:
        config = dict(config)
        config["layer"] = "adder" if config.pop("adder") else "conv"
        meta = {**meta, "config": config}
    return meta


def config_from_meta(
    meta: dict, defaults: ml_collections.ConfigDict | None = None
) -> ml_collections.ConfigDict:
    """The config stored with a checkpoint; keys added since it was written get their
    defaults (`defaults`, by default `train.configs.default`'s), so older checkpoints still
    evaluate."""
    config = default.get_config() if defaults is None else defaults
    config.update(meta["config"])
    return config


def check_resumable(
    mngr: ocp.CheckpointManager,
    config: ml_collections.ConfigDict,
    *,
    keys: tuple[str, ...] = RESUME_KEYS,
    missing: dict | None = None,
) -> None:
    """Refuses to resume a workdir whose checkpoints were made by an incompatible config.

    Reads the newest readable checkpoint's stored config (damaged ones are left to
    `restore_latest`) and compares its `keys` (a task's; classification's `RESUME_KEYS` by
    default) with `config`'s; `missing` says what a key absent from an older checkpoint
    meant.

    Raises:
      config_checks.ConfigError: the keys differ (the config is what the user changes); the
        message names each.
    """
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            saved = read_meta(mngr, step)["config"]
        except Exception:  # a damaged checkpoint: restore_latest reports it
            continue
        before = _RESUME_DEFAULTS if missing is None else missing
        diffs = [
            f"{k}={saved.get(k, before.get(k))!r} there, {config[k]!r} here"
            for k in keys
            if saved.get(k, before.get(k)) != config[k]
        ]
        if diffs:
            raise config_checks.ConfigError(
                f"the checkpoints in {mngr.directory} were made by another config "
                f"({'; '.join(diffs)}): use another --workdir to start a new run"
            )
        return
