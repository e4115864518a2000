"""LeNet-5-BN on MNIST-family data (default: Fashion-MNIST from Debian's dataset-fashion-mnist).

sudo apt-get install dataset-fashion-mnist
python -m train.mnist --workdir=/tmp/lenet            # AdderNet
python -m train.mnist --workdir=/tmp/lenet-cnn --config.adder=False
"""

from absl import app

from train import cli

cli.define_flags("mnist.py")

if __name__ == "__main__":
    app.run(cli.train_main)
