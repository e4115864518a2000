r"""ResNet-20 AdderNet on CIFAR-100 (Chen et al. 2020, Table 2: 67.6% AdderNet, 68.1% CNN).

    python -m train.cifar --config=train/configs/cifar100.py --workdir=/tmp/r20c100 \
        --config.data_format=cifar_pickle --config.data_dir=/data/cifar-100-python
"""

from train.configs import cifar10


def get_config():
    config = cifar10.get_config()
    config.dataset = "cifar100"
    return config
