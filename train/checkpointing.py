"""Orbax checkpoints of a training run: the train state, the data iterator and the config.

One `CheckpointManager` under `workdir/checkpoints` keeps the newest `keep` checkpoints and
the best one by evaluation top-1. Each checkpoint holds three items: `state` (parameters,
batch statistics, optimizer state, step), `data` (the grain iterator's position, so a
resumed run reads exactly the batches it would have read) and `meta` (the config as JSON and
the metrics of that step, so `train.eval` can rebuild the model from a checkpoint alone).
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

import grain.python as grain
import ml_collections
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

__all__ = ["BEST_METRIC", "checkpoint_dir", "config_from_meta", "manager", "restore", "save"]

BEST_METRIC = "eval_top1"


def checkpoint_dir(workdir: str | pathlib.Path) -> pathlib.Path:
    return pathlib.Path(workdir).absolute() / "checkpoints"


def manager(
    directory: str | pathlib.Path, *, keep: int = 3, read_only: bool = False
) -> ocp.CheckpointManager:
    """The newest `keep` checkpoints plus the best by `BEST_METRIC` survive."""
    policy = pp.AnyPreservationPolicy(
        [
            pp.LatestN(n=keep),
            # Checkpoints without an evaluation are kept by LatestN alone (BestN would keep
            # every one of them).
            pp.BestN(
                get_metric_fn=lambda m: m[BEST_METRIC],
                reverse=False,
                n=1,
                keep_checkpoints_without_metrics=False,
            ),
        ]
    )
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy,
        # Only for `best_step()`: what is kept is decided by the policy above.
        best_fn=lambda m: m[BEST_METRIC],
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
) -> None:
    """Writes checkpoint `step`; `metrics` (with `BEST_METRIC` when known) rank it."""
    meta = {"config": json.loads(config.to_json()), "metrics": dict(metrics or {})}
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data_iterator is not None:
        items["data"] = grain.PyGrainCheckpointSave(data_iterator)
    ranked = {k: v for k, v in (metrics or {}).items() if k == BEST_METRIC}
    mngr.save(step, args=ocp.args.Composite(**items), metrics=ranked or None, force=True)
    mngr.wait_until_finished()


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
    return restored["state"], restored["meta"]


def read_meta(mngr: ocp.CheckpointManager, step: int) -> dict:
    """The config and metrics stored with checkpoint `step`, without reading the arrays."""
    return mngr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]


def config_from_meta(meta: dict) -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(meta["config"])
