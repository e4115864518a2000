"""LeNet-5-BN on MNIST-family data (default: Fashion-MNIST from Debian's dataset-fashion-mnist).

sudo apt-get install dataset-fashion-mnist
python -m train.mnist --workdir=/tmp/lenet            # AdderNet
python -m train.mnist --workdir=/tmp/lenet-cnn --config.layer=conv
"""

from absl import app

from train import cli

if __name__ == "__main__":
    cli.define_flags("mnist.py")
    app.run(cli.train_program())
