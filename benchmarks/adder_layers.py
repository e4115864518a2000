"""The adder layer shapes of ResNet-20, VGG-small and ResNet-50, for the kernel checks and reports.

Each is ((H, W, Cin), (kh, kw), Cout, stride, pads) with explicit PyTorch-style padding; a
dense layer is (1, 1, din) 1x1 VALID. The first convolution and the classifier are full
precision in the models but listed too, since the kernels must handle their shapes.
"""

SAME, VALID = ((1, 1), (1, 1)), ((0, 0), (0, 0))

LAYERS = {
    "resnet20": {
        "conv1": ((32, 32, 3), (3, 3), 16, 1, SAME),
        "stage1": ((32, 32, 16), (3, 3), 16, 1, SAME),
        "stage2_down": ((32, 32, 16), (3, 3), 32, 2, SAME),
        "stage2": ((16, 16, 32), (3, 3), 32, 1, SAME),
        "stage2_shortcut": ((32, 32, 16), (1, 1), 32, 2, VALID),
        "stage3_down": ((16, 16, 32), (3, 3), 64, 2, SAME),
        "stage3": ((8, 8, 64), (3, 3), 64, 1, SAME),
        "stage3_shortcut": ((16, 16, 32), (1, 1), 64, 2, VALID),
        "fc": ((1, 1, 64), (1, 1), 10, 1, VALID),
    },
    "vgg_small": {
        "conv1": ((32, 32, 3), (3, 3), 128, 1, SAME),
        "conv2": ((32, 32, 128), (3, 3), 128, 1, SAME),
        "conv3": ((16, 16, 128), (3, 3), 256, 1, SAME),
        "conv4": ((16, 16, 256), (3, 3), 256, 1, SAME),
        "conv5": ((8, 8, 256), (3, 3), 512, 1, SAME),
        "conv6": ((8, 8, 512), (3, 3), 512, 1, SAME),
        "fc": ((1, 1, 8192), (1, 1), 10, 1, VALID),
    },
    "resnet50": {
        "stem": ((224, 224, 3), (7, 7), 64, 2, ((3, 3), (3, 3))),
        "s1_reduce_in": ((56, 56, 64), (1, 1), 64, 1, VALID),
        "s1_3x3": ((56, 56, 64), (3, 3), 64, 1, SAME),
        "s1_expand": ((56, 56, 64), (1, 1), 256, 1, VALID),
        "s1_reduce": ((56, 56, 256), (1, 1), 64, 1, VALID),
        "s2_reduce_in": ((56, 56, 256), (1, 1), 128, 1, VALID),
        "s2_3x3_down": ((56, 56, 128), (3, 3), 128, 2, SAME),
        "s2_expand": ((28, 28, 128), (1, 1), 512, 1, VALID),
        "s2_shortcut": ((56, 56, 256), (1, 1), 512, 2, VALID),
        "s2_reduce": ((28, 28, 512), (1, 1), 128, 1, VALID),
        "s2_3x3": ((28, 28, 128), (3, 3), 128, 1, SAME),
        "s3_reduce_in": ((28, 28, 512), (1, 1), 256, 1, VALID),
        "s3_3x3_down": ((28, 28, 256), (3, 3), 256, 2, SAME),
        "s3_expand": ((14, 14, 256), (1, 1), 1024, 1, VALID),
        "s3_shortcut": ((28, 28, 512), (1, 1), 1024, 2, VALID),
        "s3_reduce": ((14, 14, 1024), (1, 1), 256, 1, VALID),
        "s3_3x3": ((14, 14, 256), (3, 3), 256, 1, SAME),
        "s4_reduce_in": ((14, 14, 1024), (1, 1), 512, 1, VALID),
        "s4_3x3_down": ((14, 14, 512), (3, 3), 512, 2, SAME),
        "s4_expand": ((7, 7, 512), (1, 1), 2048, 1, VALID),
        "s4_shortcut": ((14, 14, 1024), (1, 1), 2048, 2, VALID),
        "s4_reduce": ((7, 7, 2048), (1, 1), 512, 1, VALID),
        "s4_3x3": ((7, 7, 512), (3, 3), 512, 1, SAME),
        "fc": ((1, 1, 2048), (1, 1), 1000, 1, VALID),
    },
}


def useful_terms(layer, batch: int) -> int:
    """N * Ho * Wo * Cout * kh * kw * Cin: the terms (multiply-adds for a convolution)."""
    (h, w, cin), (kh, kw), cout, s, ((top, bottom), (left, right)) = layer
    ho, wo = (h + top + bottom - kh) // s + 1, (w + left + right - kw) // s + 1
    return batch * ho * wo * cout * kh * kw * cin
