"""Training programs (`python -m train.mnist`, `train.cifar`, `train.imagenet`, `train.eval`).

`train.train.train_and_evaluate(config, workdir)` is the one trainer behind them; configs are
in `train/configs/`, input in `data_sources` and `input_pipeline`, checkpoints in
`checkpointing`.
"""
