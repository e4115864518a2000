"""ResNet-50 (or ResNet-18) on ImageNet from tfds (imagenet2012 in array_record format).

python -m train.imagenet --workdir=/tmp/r50 --config.data_dir=/data/tensorflow_datasets
"""

from absl import app

from train import cli

if __name__ == "__main__":
    cli.define_flags("imagenet.py")
    app.run(cli.train_program())
