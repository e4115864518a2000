"""LeNet-5-BN AdderNet on Fashion-MNIST from Debian's dataset-fashion-mnist package.

    sudo apt-get install dataset-fashion-mnist
    python -m train.mnist --workdir=/tmp/lenet

MNIST or KMNIST: --config.dataset=mnist --config.data_dir=DIR (the four idx files).
Measured accuracy and time are in the README.
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.model = "lenet5_bn"
    config.dataset = "fashion_mnist"
    config.data_format = "idx"
    config.augment = "none"
    config.batch_size = 128
    config.eval_batch_size = 400
    config.num_epochs = 10
    config.learning_rate = 0.1
    config.worker_count = 0  # in-memory arrays: worker processes cost more than they save
    return config
