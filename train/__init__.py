"""Training programs (`python -m train.mnist`, `train.cifar`, `train.imagenet`, `train.eval`).

`train.train.train_and_evaluate(config, workdir)` is the classification trainer behind them,
composed of parts a new task reuses: `sharding` (the mesh), `model_state` (config -> model
-> train state), `loop` (the training loop), `checkpointing` (orbax, resume policy),
`reporting` (metrics, progress), with the task itself in `classification`. Configs are in
`train/configs/`, input in `data_sources` and `input_pipeline`.
"""
