"""ResNet-50 AdderNet on ImageNet (Chen et al. 2020, Table 3: 74.9% top-1, 91.7% top-5).

    python -m train.imagenet --workdir=/tmp/r50 --config.data_dir=/data/tensorflow_datasets

Reads tfds' imagenet2012 prepared in array_record format (tfds can't download ImageNet).
The reference trains 150 epochs of batch 256 on 8 GPUs, cosine learning rate from 0.1.
"""

from train.configs import default


def get_config():
    config = default.get_config()
    config.model = "resnet50"
    config.dataset = "imagenet2012"
    config.augment = "imagenet"
    config.image_size = 224
    config.num_epochs = 150
    config.weight_decay = 1e-4
    config.worker_count = 8
    config.log_every_steps = 100
    return config
