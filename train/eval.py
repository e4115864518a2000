"""Evaluates a saved model: top-1, top-5 and loss over the test split.

    python -m train.eval --workdir=/tmp/lenet                  # its newest checkpoint
    python -m train.eval --workdir=/tmp/lenet --best           # its best by eval top-1
    python -m train.eval --checkpoint=/tmp/lenet/checkpoints/4680
    python -m train.eval --workdir=/tmp/pkkd --network=teacher  # a distillation run's CNN

The model, dataset and preprocessing come from the config stored in the checkpoint;
--data_dir / --data_format point it at the data on this machine.
"""

from __future__ import annotations

import json
import pathlib

import jax
import ml_collections
import numpy as np
from absl import app, flags

from train import (
    checkpointing,
    classification,
    cli,
    config_checks,
    saved_models,
    schedules,
    sharding,
)
from train.data import pipeline, sources


def evaluate_checkpoint(
    workdir: str | None = None,
    checkpoint: str | None = None,
    *,
    best: bool = False,
    data_dir: str | None = None,
    data_format: str | None = None,
    batch_size: int | None = None,
    network: str = "student",
) -> dict:
    """Restores a checkpoint and evaluates it; returns top1, top5, loss, count, step.

    Only the test split is read (no training data needs to be on this machine). Of a
    distillation run, ``network`` is the "student" (the AdderNet) or the "teacher" (the CNN).
    """
    with saved_models.open_checkpoint(workdir, checkpoint, best=best) as (mngr, step):
        meta = checkpointing.read_meta(mngr, step)
        config = checkpointing.config_from_meta(meta)
        with config.unlocked():
            config.data_dir = data_dir or config.data_dir
            config.data_format = data_format or config.data_format
            config.eval_batch_size = batch_size or config.eval_batch_size
            config.steps_per_eval = -1
            config.worker_count = min(config.worker_count, 2)
        config_checks.validate(config, device_count=jax.device_count())
        source, info = sources.open_source(
            config.dataset, "test", data_format=config.data_format, data_dir=config.data_dir
        )
        mesh = sharding.make_mesh(config.fsdp_size)
        _, state, shardings, net_config = saved_models.restore_network(
            mngr, step, config, info, network=network, mesh=mesh
        )
    p = np.float32(checkpoint_p(net_config, step, meta))
    eval_step = classification.jit_eval_step(info, shardings, mesh)
    with jax.set_mesh(mesh):
        result = classification.evaluate(
            eval_step, state, pipeline.config_eval_batches(config, source), p, mesh
        )
    return {
        **result,
        "step": step,
        "model": net_config.model,
        "layer": net_config.layer,
        "network": network,
        "dataset": config.dataset,
    }


def checkpoint_p(config: ml_collections.ConfigDict, step: int, meta: dict) -> float:
    """The l_p exponent checkpoint `step` was trained with at its last step.

    The schedule counts epochs, so it needs the run's steps per epoch: stored in the
    checkpoint since this version; for older checkpoints of a schedule that changes p, it
    is counted from the training split.
    """
    if config.p_decay_epochs <= 0 or config.p_init == config.p_final:
        return float(config.p_final)
    steps_per_epoch = meta.get("steps_per_epoch")
    if steps_per_epoch is None:
        source, _ = sources.open_source(
            config.dataset, "train", data_format=config.data_format, data_dir=config.data_dir
        )
        steps_per_epoch = max(len(source) // config.batch_size, 1)
    return schedules.p_at_step(config, max(step - 1, 0), steps_per_epoch)


def run_from_flags(_=None) -> str:
    """`evaluate_checkpoint` of the flags; writes --output; the program's last line."""
    f = flags.FLAGS
    result = evaluate_checkpoint(
        f.workdir,
        f.checkpoint,
        best=f.best,
        data_dir=f.data_dir,
        data_format=f.data_format,
        batch_size=f.batch_size,
        network=f.network,
    )
    if f.output:
        pathlib.Path(f.output).write_text(json.dumps(result) + "\n")
    return (
        f"{result['model']} ({result['layer']}) on {result['dataset']}, "
        f"step {result['step']}: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f}, "
        f"loss {result['loss']:.4f} ({result['count']} images)"
    )


def define_flags() -> None:
    cli.define_distributed_flags()
    flags.DEFINE_string("workdir", None, "A training workdir (its checkpoints/ are read).")
    flags.DEFINE_string("checkpoint", None, "A checkpoint directory: WORKDIR/checkpoints/STEP.")
    flags.DEFINE_bool("best", False, "With --workdir: the best checkpoint, not the newest.")
    flags.DEFINE_string("data_dir", None, "Overrides the data_dir stored in the checkpoint.")
    flags.DEFINE_string("data_format", None, "Overrides the data_format stored in the checkpoint.")
    flags.DEFINE_integer("batch_size", None, "Overrides the evaluation batch size.")
    flags.DEFINE_string("output", None, "Also write the result as JSON to this file.")
    flags.DEFINE_enum(
        "network", "student", ["student", "teacher"], "Of a distillation run: which network."
    )


if __name__ == "__main__":
    define_flags()
    app.run(cli.program(run_from_flags, distributed=True))
