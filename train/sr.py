r"""Trains a super-resolution network (VDSR or EDSR, AdderSR or CNN) and evaluates it.

    python -m train.sr --workdir=/tmp/edsr_x2 --config=train/configs/sr.py:edsr,2 \
        --config.train_data=/data/DIV2K_train_HR --config.eval_data=/data/Set5,/data/Set14

The run of every task (`train.trainer`, task `train.tasks.super_resolution`): checkpoints
every epoch with exact resume (run the command again), SIGTERM/SIGINT save and stop, a
non-finite loss stops naming the layer, metrics in ``metrics.jsonl`` and TensorBoard,
one-line errors. Each evaluation gives PSNR and SSIM per test set with bicubic's beside
them; ``results.json`` holds the last.
"""

from absl import app

from train import cli

if __name__ == "__main__":
    cli.define_flags("sr.py")
    app.run(cli.train_program("super_resolution"))
