"""PyTorch models laid out as the AdderNet reference's (huawei-noah/AdderNet ``adder.py``,
``resnet20.py``, ``resnet50.py``), for testing `train.convert_torch` against a PyTorch forward.

Written from the reference's structure and state-dict names, not copied: ``adder2d`` keeps its
filters in a parameter named ``adder`` of shape (O, C, kh, kw) and computes
``-sum |x_patch - w|`` over unfolded patches; ResNet-20 has a 3x3 conv stem, 1x1 adder +
BatchNorm downsample shortcuts, an 8x8 average pool, ``fc`` a 1x1 conv without bias and
``bn2`` a BatchNorm on the logits; ResNet-50 has the 7x7 stem, bottlenecks (stride on the 3x3)
and ``fc`` with a bias. ``adder=False`` gives the CNN of the same layout (``nn.Conv2d``).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class AdderGradients(torch.autograd.Function):
    """``-sum_k |x_k - w_k|`` of filters (O, K) and patches (N, K, L) -> (N, O, L), with the
    reference's backward (``adder.py``'s ``adder.backward``): the full-precision filter
    gradient ``sum (x - w) g`` rescaled to norm ``eta * sqrt(O * K)`` (the adaptive learning
    rate, applied inside the gradient, norm clamped at 1e-12), and the HardTanh input
    gradient ``sum -clamp(x - w, -1, 1) g``."""

    @staticmethod
    def forward(ctx, filters, cols, eta):
        ctx.save_for_backward(filters, cols)
        ctx.eta = eta
        return -(cols[:, None] - filters[None, :, :, None]).abs().sum(2)

    @staticmethod
    def backward(ctx, g):
        filters, cols = ctx.saved_tensors
        diff = cols[:, None] - filters[None, :, :, None]  # (N, O, K, L)
        dw = (diff * g[:, :, None]).sum((0, 3))
        dw = dw / dw.norm(p=2).clamp(min=1e-12) * math.sqrt(dw.numel()) * ctx.eta
        dx = (-diff.clamp(-1, 1) * g[:, :, None]).sum(1)
        return dw, dx, None


class Adder2d(nn.Module):
    def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
        super().__init__()
        self.stride, self.padding, self.kernel_size = stride, padding, kernel_size
        self.adder = nn.Parameter(torch.randn(cout, cin, kernel_size, kernel_size))
        self.eta = None  # `use_reference_gradients` sets it: then the reference's backward

    def forward(self, x):
        n, _, h, w = x.shape
        k, s, p = self.kernel_size, self.stride, self.padding
        ho, wo = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
        cols = F.unfold(x, k, padding=p, stride=s)  # (N, C*k*k, L)
        filters = self.adder.view(self.adder.shape[0], -1)  # (O, C*k*k)
        if self.eta is not None:
            return AdderGradients.apply(filters, cols, self.eta).view(n, -1, ho, wo)
        y = -(cols[:, None] - filters[None, :, :, None]).abs().sum(2)
        return y.view(n, -1, ho, wo)


def use_reference_gradients(model: nn.Module, eta: float = 0.2) -> nn.Module:
    """Every `Adder2d` of ``model`` with the reference's backward (`AdderGradients`), as the
    authors train: then ``torch.optim.SGD`` is their optimizer."""
    for m in model.modules():
        if isinstance(m, Adder2d):
            m.eta = eta
    return model


def _conv(adder, cin, cout, k, stride=1, padding=0):
    if adder:
        return Adder2d(cin, cout, k, stride, padding)
    return nn.Conv2d(cin, cout, k, stride, padding, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, adder, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv(adder, inplanes, planes, 3, stride, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(adder, planes, planes, 3, 1, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, adder, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1 = _conv(adder, inplanes, planes, 1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = _conv(adder, planes, planes, 3, stride, 1)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = _conv(adder, planes, planes * 4, 1)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.downsample = downsample

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class ResNet(nn.Module):
    def __init__(self, block, layers, num_classes, *, adder=True, cifar=True):
        super().__init__()
        self.adder, self.cifar = adder, cifar
        self.inplanes = 16 if cifar else 64
        if cifar:
            self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        base = self.inplanes
        for i, blocks in enumerate(layers):
            layer = self._make_layer(block, base * 2**i, blocks, 1 if i == 0 else 2)
            setattr(self, f"layer{i + 1}", layer)
        self.fc = nn.Conv2d(self.inplanes, num_classes, 1, bias=not cifar)
        self.bn2 = nn.BatchNorm2d(num_classes)

    def _make_layer(self, block, planes, blocks, stride):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                _conv(self.adder, self.inplanes, planes * block.expansion, 1, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.adder, self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.adder, self.inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        if not self.cifar:
            x = self.maxpool(x)
        x = (
            self.layer4(self.layer3(self.layer2(self.layer1(x))))
            if hasattr(self, "layer4")
            else (self.layer3(self.layer2(self.layer1(x))))
        )
        x = x.mean(dim=(2, 3), keepdim=True)  # the reference's AvgPool2d over the whole map
        return self.bn2(self.fc(x)).flatten(1)


def resnet20(num_classes=10, *, adder=True):
    return ResNet(BasicBlock, [3, 3, 3], num_classes, adder=adder, cifar=True)


def resnet50(num_classes=1000, *, adder=True):
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, adder=adder, cifar=False)


def calibrate(model: nn.Module, x: torch.Tensor, seed: int = 0) -> nn.Module:
    """Random BatchNorm scales and shifts, running statistics measured on ``x`` (so the
    activations stay in range, and every statistic shows in the logits), then eval mode."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.copy_(0.5 + torch.rand(m.num_features, generator=gen))
                m.bias.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: the statistics of x itself
    model.train()
    with torch.no_grad():
        model(x)
    return model.eval()
