"""Super-resolution training (`python -m train.sr`): VDSR or EDSR, AdderSR or CNN, x2/x3/x4.

Pick the network and scale with the config argument, ``MODEL,SCALE``:

    python -m train.sr --workdir=W --config=train/configs/sr.py:edsr,2 \
        --config.train_data=/data/DIV2K_train_HR \
        --config.eval_data=/data/Set5,/data/Set14,/data/B100,/data/Urban100

The recipe is EDSR's (Lim et al. 2017) for both networks: L1 loss, Adam (0.9, 0.999, 1e-8)
at 1e-4 halved every 200 epochs, batch 16, LR patches of 48 pixels (VDSR: 41 HR pixels in
its paper; 48 LR here too, so the two see the same data), 300 epochs of 16,000 patches of
DIV2K's 800 images (repeat 20), flips and rotations. AdderSR's paper gives no more detail;
the authors' README table to compare with (PSNR / SSIM on the Y channel):

| x2 Set5          | CNN            | AdderSR        |
|------------------|----------------|----------------|
| VDSR             | 37.53 / 0.9587 | 37.37 / 0.9575 |
| EDSR             | 38.11 / 0.9601 | 37.92 / 0.9589 |
"""

import ml_collections
from ml_collections import config_dict

from train.configs import run_control


def get_config(arg: str = "edsr,2") -> ml_collections.ConfigDict:
    try:
        model, scale = arg.split(",")
        scale = int(scale)
    except ValueError:
        raise ValueError(f"the config argument is MODEL,SCALE (e.g. edsr,2), got {arg!r}") from None
    config = ml_collections.ConfigDict()

    # Model: "vdsr" or "edsr" (`adderjax.sr_models`); layer="conv" is the CNN.
    config.model = model
    config.scale = scale
    config.layer = "adder"
    # AdderSR's additions to each adder layer (the ablation turns them off).
    config.self_shortcut = True
    config.power_activation = True
    config.features = 64
    config.num_blocks = 16  # EDSR's residual blocks (the baseline)
    config.depth = 20  # VDSR's layers
    # EDSR's residual scaling; None: 0.1 for AdderSR with self-shortcuts, else 1 (`EDSR`).
    config.res_scale = config_dict.placeholder(float)
    config.rgb_range = 255.0  # EDSR's pixel range inside the network (255 or 1)
    config.input_grad = "hardtanh"
    config.filter_grad = "full_precision"
    config.implementation = config_dict.placeholder(str)
    config.interpret = False
    config.dtype = "float32"

    # Data: comma-separated folders of PNG/JPEG images, or "tfds:div2k" (array_record).
    # LR images are made from the HR ones by MATLAB bicubic (`train.sr_metrics.imresize`).
    config.train_data = ""
    config.eval_data = ""
    config.data_dir = config_dict.placeholder(str)  # tfds' data_dir
    config.patch_size = 48  # LR pixels
    config.repeat = 20  # patches per training image per epoch
    config.augment = True  # flips and 90-degree rotations
    config.worker_count = 2
    config.fsdp_size = 1

    # Optimisation (EDSR): L1 loss, Adam, the learning rate halved every lr_decay_epochs.
    config.batch_size = 16
    config.num_epochs = 300
    config.learning_rate = 1e-4
    config.lr_decay_epochs = 200
    config.b1 = 0.9
    config.b2 = 0.999
    config.eps = 1e-8

    # Run control, as the classification programs (the best checkpoint: the first eval
    # set's PSNR).
    run_control.add_run_control(config)
    return config
