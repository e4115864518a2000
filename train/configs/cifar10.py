r"""ResNet-20 AdderNet on CIFAR-10, the reference recipe (Chen et al. 2020, Table 2: 91.8%).

    python -m train.cifar --workdir=/tmp/r20 \
        --config.data_format=cifar_pickle --config.data_dir=/data/cifar-10-batches-py

400 epochs of batch 256 (78,000 steps); the paper reports 91.8% top-1 for the AdderNet and
92.3% for the CNN (--config.layer=conv). Not reproduced here: no GPU and no CIFAR on the
development machine.
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.model = "resnet20"
    config.dataset = "cifar10"
    config.augment = "cifar"
    return config
