r"""ResNet-20 (and friends) on CIFAR-10 / CIFAR-100, the AdderNet reference recipe.

    python -m train.cifar --workdir=/tmp/r20 --config.data_format=cifar_pickle \
        --config.data_dir=/data/cifar-10-batches-py
    python -m train.cifar --config=train/configs/cifar100.py --workdir=/tmp/r20c100 ...
"""

from absl import app

from train import cli

if __name__ == "__main__":
    cli.define_flags("cifar10.py")
    app.run(cli.train_program())
