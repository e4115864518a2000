"""A trainer run on simulated devices or several processes, for tests/test_distributed.py.

Started as a subprocess so that XLA_FLAGS (the simulated device count) and
jax.distributed take effect before jax starts:

    python tests/mesh_run.py train --devices 8 --workdir W --data D [--pallas] --out F.npz
    python tests/mesh_run.py train --devices 8 --workdir W --data D --layer shiftadd --out F.npz
    python tests/mesh_run.py lower  --devices 8 --workdir W --data D --out F.json
    python tests/mesh_run.py distill --devices 8 --workdir W --data D --out F.npz
    python tests/mesh_run.py train  --devices 2 --process-id I --process-count 2 --port P ...
"""

import argparse
import json
import os
import sys


def _args():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["train", "lower", "distill"])
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--pallas", action="store_true")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--fsdp", type=int, default=1)
    parser.add_argument("--layer", default="adder")
    parser.add_argument("--process-id", type=int, default=0)
    parser.add_argument("--process-count", type=int, default=1)
    parser.add_argument("--port", type=int, default=0)
    return parser.parse_args()


def _config(args):
    from train.configs import mnist

    config = mnist.get_config()
    config.data_dir = args.data
    config.batch_size = 16
    config.eval_batch_size = 8
    config.num_train_steps = args.steps
    config.log_every_steps = 1
    config.progress_bar = False
    config.plots = False
    config.fsdp_size = args.fsdp
    config.layer = args.layer
    if args.pallas:
        config.implementation = "pallas"
        config.interpret = True
    return config


def _train(args):
    import jax
    import numpy as np

    from train import checkpointing, model_state, sharding, tasks, trainer
    from train.data import sources

    config = _config(args)
    result = trainer.run(config, args.workdir, tasks.classification)
    mngr = checkpointing.manager(checkpointing.checkpoint_dir(args.workdir), read_only=True)
    mesh = sharding.make_mesh(config.fsdp_size)
    built = model_state.build(config, sources.DATASETS[config.dataset], mesh=mesh)
    state, _ = checkpointing.restore(mngr, mngr.latest_step(), built.abstract)
    if jax.process_index() == 0:
        leaves = jax.tree_util.tree_flatten_with_path(
            {"params": state.params, "batch_stats": state.batch_stats}
        )[0]
        arrays = {jax.tree_util.keystr(k): np.asarray(jax.device_get(v)) for k, v in leaves}
        losses = [
            m["loss"]
            for m in map(json.loads, open(os.path.join(args.workdir, "metrics.jsonl")))
            if m["split"] == "train"
        ]
        np.savez(args.out, losses=np.asarray(losses), top1=result["top1"], **arrays)


def _lower(args):
    """The jitted step with its mesh lowered for TPU (Mosaic kernels) and CUDA (Triton kernels)."""
    from unittest import mock

    import jax
    import numpy as np

    from adderjax import ops
    from train import classification, model_state, schedules, sharding
    from train.data import sources

    config = _config(args)
    out = {}
    for platform in ("tpu", "cuda"):
        config.implementation = "pallas"
        config.interpret = False
        # The op refuses "pallas" without a GPU or TPU before anything could be lowered.
        with mock.patch.object(ops, "available_implementations", lambda: ("pallas", "xla")):
            info = sources.DATASETS[config.dataset]
            mesh = sharding.make_mesh(config.fsdp_size)
            built = model_state.build(config, info, mesh=mesh)
            train_step = classification.jit_train_step(
                config, info, built.shardings, mesh, lr_fn=schedules.learning_rate(config, 1)
            )
            rows = sharding.batch_sharding(mesh)
            batch = {
                "image": jax.ShapeDtypeStruct((16, *built.shape), np.uint8, sharding=rows),
                "label": jax.ShapeDtypeStruct((16,), np.int32, sharding=rows),
            }
            p = jax.ShapeDtypeStruct((), np.float32, sharding=sharding.replicated(mesh))
            with jax.set_mesh(mesh):
                traced = train_step.trace(built.abstract, batch, p)
                text = traced.lower(lowering_platforms=(platform,)).as_text()
        out[platform] = {
            "num_partitions": text.count("mhlo.num_partitions = 8"),
            "triton_calls": text.count("__gpu$xla.gpu.triton"),
            "mosaic_calls": text.count("tpu_custom_call"),
            "manual_computations": text.count("sdy.manual_computation"),
            "sharded_batch": text.count('"data"'),
        }
    with open(args.out, "w") as f:
        json.dump(out, f)


def _distill(args):
    """PKKD's step (student, teacher, alignments) for --steps batches on a 1-device mesh and
    on an all-device mesh of this one process: the partitioned step against the unpartitioned
    one in one process (in a separate 1-device process the teacher's loss at step 3 differs
    by 3e-4: XLA:CPU rounds otherwise there, and three steps of random data amplify it).
    Saved: each step's losses, and the state after the first step (later states carry that
    amplification: see tests/test_distributed.py)."""
    import jax
    import numpy as np

    from train import distillation, schedules, sharding
    from train.data import pipeline, sources

    config = _config(args)
    config.distill = "pkkd"
    source, info = sources.open_source(
        config.dataset, "train", data_format=config.data_format, data_dir=config.data_dir
    )
    out = {}
    for n in (1, args.devices):
        mesh = sharding.make_mesh(1, devices=jax.devices()[:n])
        built = distillation.build(config, info, steps_per_epoch=4, mesh=mesh)
        lr_fn = schedules.learning_rate(config, 4)
        step = distillation.jit_train_step(config, info, built.shardings, mesh, lr_fn=lr_fn)
        batches = iter(pipeline.config_train_loader(config, source))
        rows = sharding.batch_sharding(mesh)
        losses = []
        with jax.set_mesh(mesh):
            state = built.init(jax.random.key(0))
            for i in range(args.steps):
                batch = sharding.global_batch(next(batches), rows)
                state, metrics = step(state, batch, np.float32(1.0))
                losses.append([float(metrics["loss"]), float(metrics["teacher_loss"])])
                if i == 0:
                    first = jax.device_get(state)
        leaves = jax.tree_util.tree_flatten_with_path(first)[0]
        out[f"{n}/losses"] = np.asarray(losses)
        out.update({f"{n}/{jax.tree_util.keystr(k)}": np.asarray(v) for k, v in leaves})
    np.savez(args.out, **out)


def main():
    args = _args()
    flags = os.environ.get("XLA_FLAGS", "")
    os.environ["XLA_FLAGS"] = f"{flags} --xla_force_host_platform_device_count={args.devices}"
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import jax

    if args.process_count > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        jax.distributed.initialize(
            coordinator_address=f"127.0.0.1:{args.port}",
            num_processes=args.process_count,
            process_id=args.process_id,
        )
    if args.mode == "train":
        _train(args)
    elif args.mode == "distill":
        _distill(args)
    else:
        _lower(args)


if __name__ == "__main__":
    main()
