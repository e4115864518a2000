"""ResNet-50 (or ResNet-18) on ImageNet from tfds (imagenet2012 in array_record format).

python -m train.imagenet --workdir=/tmp/r50 --config.data_dir=/data/tensorflow_datasets
"""

from absl import app

from train import cli

cli.define_flags("imagenet.py")

if __name__ == "__main__":
    app.run(cli.train_main)
