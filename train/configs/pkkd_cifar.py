r"""PKKD on CIFAR: an AdderNet distilled from a CNN of the same network trained alongside it.

    python -m train.cifar --config=train/configs/pkkd_cifar.py:resnet20,cifar10 \
        --workdir=/tmp/pkkd-r20 --config.data_format=cifar_pickle \
        --config.data_dir=/data/cifar-10-batches-py

The argument is MODEL,DATASET: resnet20, resnet32 or vgg_small; cifar10 or cifar100. The
reference CIFAR recipe (`cifar10.py`: 400 epochs, batch 256) with ``distill="pkkd"`` and the
kernel features at each stage's last adder layer. Top-1 the authors report in their
README (huawei-noah/AdderNet; Xu et al. 2020), PKKD AdderNet vs the plain AdderNet:

                 CIFAR-10         CIFAR-100
    VGG-small    95.03 vs 93.72   76.94 vs 74.58
    ResNet-20    92.96 vs 92.02   69.93 vs 67.60
    ResNet-32    93.62 vs 93.01   72.41 vs 69.17

The loss weights, temperature and kernel widths are the defaults of `default.py` (the
paper's are not public), measured on Fashion-MNIST only (docs/results.md). Not run here: no
GPU and no CIFAR on the development machine.
"""

from train.configs import cifar10


def get_config(arg: str = "resnet20,cifar10"):
    model, dataset = (arg.split(",") + ["cifar10"])[:2]
    config = cifar10.get_config()
    config.model = model
    config.dataset = dataset
    config.distill = "pkkd"
    config.distill_features = "kernel"
    return config
