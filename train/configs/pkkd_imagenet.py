r"""PKKD on ImageNet: a ResNet AdderNet distilled from the CNN trained alongside it.

    python -m train.imagenet --config=train/configs/pkkd_imagenet.py:resnet50 \
        --workdir=/tmp/pkkd-r50 --config.data_dir=/data/tensorflow_datasets

The argument is the model: resnet18 or resnet50. The reference ImageNet recipe
(`imagenet.py`: 150 epochs, batch 256, weight decay 1e-4) with ``distill="pkkd"`` and the
kernel features at each stage's last adder layer. Top-1 / top-5 the authors report (their
README; Xu et al. 2020):

    ResNet-18  PKKD AdderNet 68.8 / 88.6   AdderNet 67.0 / 87.6   CNN 69.8 / 89.1
    ResNet-50  PKKD AdderNet 76.8 / 93.3   AdderNet 74.9 / 91.7   CNN 76.2 / 92.9

The teacher doubles the memory and compute of a step; with `fsdp_size` the states of both
networks are split alike. Not run here: no GPU and no ImageNet on the development machine.
"""

from train.configs import imagenet


def get_config(arg: str = "resnet50"):
    config = imagenet.get_config()
    config.model = arg
    config.distill = "pkkd"
    config.distill_features = "kernel"
    return config
