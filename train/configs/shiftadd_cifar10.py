r"""ShiftAddNet ResNet-20 on CIFAR-10, their recipe (You et al., NeurIPS 2020;
GATECH-EIC/ShiftAddNet ``train.py`` defaults and README command).

    python -m train.cifar --config=train/configs/shiftadd_cifar10.py --workdir=/tmp/r20-shiftadd \
        --config.data_format=cifar_pickle --config.data_dir=/data/cifar-10-batches-py

Each inner conv a shift conv then an adder conv (`adderjax.models`, layer="shiftadd"),
DeepShift-PS shifts of 5 weight bits, 16-bit fixed-point inputs and output gradients; SGD
momentum 0.9 from lr 0.1, batch 256, 160 epochs, the rate x0.1 at epochs 80 and 120, weight
decay 1e-4 (none on the shift and sign latents), the adder filters' adaptive rate eta 0.2.
Reported top-1: ShiftAddNet 89.32% (the AdderNet README's table); DeepShift's README for
ResNet-20: CNN 91.79%, DeepShift-Q 89.85%, DeepShift-PS 88.84%
(--config.layer=shift; --config.shift_kind=q). Their frozen-shift variant:
--config.shift_frozen=True. Not reproduced here: no GPU and no CIFAR on the development
machine (docs/results.md has the Fashion-MNIST runs).
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.model = "resnet20"
    config.dataset = "cifar10"
    config.augment = "cifar"
    config.layer = "shiftadd"
    config.shift_kind = "ps"
    config.weight_bits = 5
    config.shift_quant_bits = 16
    config.batch_size = 256
    config.num_epochs = 160
    config.learning_rate = 0.1
    config.momentum = 0.9
    config.lr_schedule = "step"
    config.lr_step_epochs = "80,120"
    config.lr_step_factor = 0.1
    config.weight_decay = 1e-4
    config.eta = 0.2
    return config
