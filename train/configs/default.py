"""The shared defaults of the classification programs: the AdderNet reference recipe.

Dataset configs (`cifar10.py`, `mnist.py`, ..., and the distillation configs `pkkd_*.py`)
start from `get_config()` here and override only what changes, as in flax's
examples/imagenet/configs. Super-resolution's config is `sr.py`; both take their run-control
keys from `run_control.py`.
"""

import ml_collections
from ml_collections import config_dict

from train.configs import run_control


def get_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()

    # Model: a name of `adderjax.models.MODELS`, and the kind of its layers
    # (`adderjax.models.LAYERS`): "adder" (AdderNet), "conv" (the CNN of the same
    # architecture, the comparison every AdderNet table makes), "shift" (DeepShift) or
    # "shiftadd" (ShiftAddNet: a shift layer then an adder layer).
    config.model = "resnet20"
    config.layer = "adder"
    # The shift layers' options (`adderjax.shift.ShiftOptions`; ShiftAddNet's train.py flags
    # in brackets): "ps" or "q" [--shift_type], weight bits [--weight_bits 5], the PS sign's
    # threshold [--sign_threshold_ps None], the fixed-point fraction bits of the inputs and of
    # the output gradient [--shift_quant_bits 16], and their train_fix.py variant whose shift
    # layers are drawn once and never trained.
    config.shift_kind = "ps"
    config.weight_bits = 5
    config.sign_threshold = config_dict.placeholder(float)
    config.shift_quant_bits = 16
    config.shift_frozen = False
    # Input gradient of the adder layers: "hardtanh" (CVPR eq. 7) or "lp" (journal eq. 27).
    config.input_grad = "hardtanh"
    # Filter gradient of the adder layers: "full_precision" (x - w, CVPR eq. 5) or "sign"
    # (sign(x - w), the true derivative: the ablation of the paper's Table 4; XLA path only).
    config.filter_grad = "full_precision"
    # None picks the fastest path for the backend ("pallas" on GPU, "xla" elsewhere).
    config.implementation = config_dict.placeholder(str)
    # With implementation="pallas": run the GPU kernels in Pallas interpret mode (any
    # backend, slowly; how CPU tests check the Pallas path of the trainer).
    config.interpret = False
    # Compute dtype of the model: "float32" or "bfloat16" (parameters stay float32).
    config.dtype = "float32"

    # l_p schedule (journal version): p falls linearly from p_init to p_final over
    # p_decay_epochs, then stays at p_final. p_init = p_final = 1 is the CVPR AdderNet.
    config.p_init = 1.0
    config.p_final = 1.0
    config.p_decay_epochs = 0

    # Data: a name of `train.data.sources.DATASETS`, read as "tfds" (by name, from
    # data_dir or ~/tensorflow_datasets), "idx" (MNIST-family files) or "cifar_pickle".
    config.dataset = "cifar10"
    config.data_format = "tfds"
    config.data_dir = config_dict.placeholder(str)
    # Training augmentation: "none", "cifar" (4-pixel padded random crop and flip) or
    # "imagenet" (random resized crop to image_size and flip; eval: resize, center crop).
    config.augment = "cifar"
    config.image_size = 224  # only used by the "imagenet" augmentation
    # Devices per group that split the parameters and optimizer state among themselves
    # (fully sharded data parallelism, for models too big to replicate); 1 replicates them.
    config.fsdp_size = 1
    # grain worker processes per host (0 reads in the main process).
    config.worker_count = 2

    # Optimisation: SGD with momentum, weight decay on every parameter, cosine learning
    # rate; AdderNet filters get the adaptive learning rate eta * sqrt(k) / ||g||.
    config.batch_size = 256  # global, over all devices and hosts
    config.eval_batch_size = 256
    config.num_epochs = 400
    config.learning_rate = 0.1
    # "cosine" (to 0 at the last step, after warmup) or "step" (the rate times lr_step_factor
    # at each epoch of lr_step_epochs, comma-separated: ShiftAddNet's "80,120" at 0.1).
    config.lr_schedule = "cosine"
    config.lr_step_epochs = ""
    config.lr_step_factor = 0.1
    config.warmup_epochs = 0
    config.momentum = 0.9
    config.nesterov = False
    config.weight_decay = 5e-4
    config.eta = 0.2
    # False turns the adaptive learning rate off (the ablation of the paper's Table 4).
    config.adaptive_lr = True
    # Label smoothing of the cross-entropy (0 in the reference recipes).
    config.label_smoothing = 0.0

    # Distillation from a CNN of the same network (`train.distillation`, `adderjax.distill`):
    # "none"; "pkkd" (PKKD: the CNN teacher trained from scratch alongside the AdderNet);
    # "kd" (a finished CNN teacher, the run in teacher_workdir, frozen).
    config.distill = "none"
    config.teacher_workdir = config_dict.placeholder(str)
    # What distilled layers compare: "kernel" (PKKD's Laplacian / Gaussian kernel maps),
    # "plain" (the layers' outputs standardised per channel) or "none" (logits only).
    config.distill_features = "kernel"
    # Comma-separated layer paths ("layer3_2/conv2"); "" is the model's stage outputs
    # (`adderjax.models.STAGE_OUTPUTS`).
    config.distill_layers = ""
    # Student loss: cross-entropy + kd_weight * T^2 KL(teacher || student at temperature T)
    # + feature_weight * the mean squared error of the aligned maps.
    config.kd_weight = 1.0
    config.kd_temperature = 4.0
    # 10: the kernel maps' squared error is small (0.02 at step 50 of LeNet-5-BN on
    # Fashion-MNIST, against a cross-entropy of 1.2), so at 1 it would hardly count.
    config.feature_weight = 10.0
    # Kernel widths per term of a patch: exp(-|x - f|_1 / (sigma_a n)) for the AdderNet,
    # exp(-|x - f|_2^2 / (2 sigma_c^2 n)) for the CNN (n: the layer's fan-in).
    config.sigma_a = 1.0
    config.sigma_c = 1.0

    # Run control (seed, num_train_steps, cadence, checkpoints kept, progress bar).
    run_control.add_run_control(config)
    # > 0 evaluates on only this many batches.
    config.steps_per_eval = -1
    # PNG plots (training curves, weight histograms) written at the end.
    config.plots = True
    return config
