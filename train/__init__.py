"""Training and the programs around it (`python -m train.X`, docs/training.md).

Programs: `mnist`, `cifar`, `imagenet` and `sr` train (each `cli.train_program`), `eval`
evaluates a checkpoint, `analyze` compares an AdderNet run with its CNN, `convert_torch`
converts PyTorch checkpoints, `upscale` super-resolves an image; every one's `main` is made
by `cli.program`.

`trainer.run(config, workdir, task)` is the run behind every training program; the tasks
are in `train.tasks` (classification, distillation, super-resolution). The parts they are
composed of: `sharding` (the mesh), `model_state` (config -> model -> train state), `loop`
(the training loop), `checkpointing` (orbax, the resume policy), `reporting` (metrics,
progress), each task's steps (`classification`, `distillation`, `super_resolution`), the
data (`sources`, `pipeline`, `sr_images`) and the configs (`train/configs/`).
"""
