"""Training programs (`python -m train.mnist`, `train.cifar`, `train.imagenet`, `train.eval`).

Not part of this release yet; the package exists so that the layout installs as designed.
"""
