"""The training data: `sources` (the classification datasets: idx, CIFAR pickles, tfds
array_record, ImageNet; `open_source`, `DataError`), `pipeline` (grain loaders over them:
shuffling, augmentation, sharding over hosts, a checkpointable iterator) and `sr_images`
(super-resolution's HR images, LR/HR patch pairs and evaluation sets)."""
