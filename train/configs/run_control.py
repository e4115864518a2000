"""The run-control keys every training config shares (`train.trainer.run`, `train.loop`)."""

import ml_collections


def add_run_control(config: ml_collections.ConfigDict) -> None:
    """Adds the run-control keys, with their defaults, to `config`."""
    config.seed = 0
    # > 0 stops after this many steps (smoke tests); otherwise num_epochs of steps.
    config.num_train_steps = -1
    config.eval_every_epochs = 1
    config.log_every_steps = 50
    config.checkpoint_every_epochs = 1
    # > 0 also checkpoints every this many steps (long epochs on preemptible machines).
    config.checkpoint_every_steps = 0
    # A non-finite loss or gradient stops the run (keeping the last good checkpoint);
    # True skips that step's update instead and counts it in the metrics.
    config.skip_nonfinite = False
    # The newest keep_checkpoints checkpoints are kept, and the best by the task's metric
    # (classification: eval top-1; super-resolution: the first eval set's PSNR).
    config.keep_checkpoints = 3
    # Progress bar on the terminal (a plain line every log_every_steps when not a tty).
    config.progress_bar = True
