"""Evaluates a saved model: top-1, top-5 and loss over the test split.

    python -m train.eval --workdir=/tmp/lenet                  # its newest checkpoint
    python -m train.eval --workdir=/tmp/lenet --best           # its best by eval top-1
    python -m train.eval --checkpoint=/tmp/lenet/checkpoints/4680

The model, dataset and preprocessing come from the config stored in the checkpoint;
--data_dir / --data_format point it at the data on this machine.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import app, flags

from train import cli, saved_models

cli.define_distributed_flags()
flags.DEFINE_string("workdir", None, "A training workdir (its checkpoints/ are read).")
flags.DEFINE_string("checkpoint", None, "A checkpoint directory: WORKDIR/checkpoints/STEP.")
flags.DEFINE_bool("best", False, "With --workdir: the best checkpoint, not the newest.")
flags.DEFINE_string("data_dir", None, "Overrides the data_dir stored in the checkpoint.")
flags.DEFINE_string("data_format", None, "Overrides the data_format stored in the checkpoint.")
flags.DEFINE_integer("batch_size", None, "Overrides the evaluation batch size.")
flags.DEFINE_string("output", None, "Also write the result as JSON to this file.")


def evaluate_checkpoint(
    workdir: str | None = None,
    checkpoint: str | None = None,
    *,
    best: bool = False,
    data_dir: str | None = None,
    data_format: str | None = None,
    batch_size: int | None = None,
) -> dict:
    """Restores a checkpoint and evaluates it; returns top1, top5, loss, count, step."""
    import jax

    from train import checkpointing, train

    mngr, step = saved_models.open_checkpoint(workdir, checkpoint, best=best)
    config = checkpointing.config_from_meta(checkpointing.read_meta(mngr, step))
    with config.unlocked():
        config.data_dir = data_dir or config.data_dir
        config.data_format = data_format or config.data_format
        config.eval_batch_size = batch_size or config.eval_batch_size
        config.steps_per_eval = -1
        config.worker_count = min(config.worker_count, 2)
    run = train._Run(config, pathlib.Path(mngr.directory).parent)
    state, _ = checkpointing.restore(mngr, step, run.abstract_state)
    mngr.close()
    p = run.p(max(step - 1, 0))
    with jax.set_mesh(run.mesh):
        result = train.evaluate(run.eval_step, state, run.eval_batches, p, run.batch_sharding)
    return {
        **result,
        "step": step,
        "model": config.model,
        "adder": config.adder,
        "dataset": config.dataset,
    }


def main(argv) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    f = flags.FLAGS
    cli.exit_on_user_error(cli.initialize_distributed)
    result = cli.exit_on_user_error(
        lambda: evaluate_checkpoint(
            f.workdir,
            f.checkpoint,
            best=f.best,
            data_dir=f.data_dir,
            data_format=f.data_format,
            batch_size=f.batch_size,
        )
    )
    line = json.dumps(result)
    if f.output:
        pathlib.Path(f.output).write_text(line + "\n")
    print(
        f"{result['model']} ({'adder' if result['adder'] else 'cnn'}) on {result['dataset']}, "
        f"step {result['step']}: top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f}, "
        f"loss {result['loss']:.4f} ({result['count']} images)",
        file=sys.stdout,
    )


if __name__ == "__main__":
    app.run(main)
