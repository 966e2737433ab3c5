"""The networks of the continual classification benchmarks: GEM's MLP for MNIST and its reduced ResNet-18 for images."""

from __future__ import annotations

from itertools import pairwise

import torch.nn.functional as F
from torch import Tensor, nn

from mclnf.signals.classification import Benchmark


def mlp(in_features: int = 784, hidden: int = 100, layers: int = 2, out_features: int = 10) -> nn.Sequential:
    """``layers`` hidden Linear+ReLU layers of width ``hidden``, then a Linear: the MNIST network of GEM and La-MAML."""
    widths = [in_features] + [hidden] * layers
    body = [m for a, b in pairwise(widths) for m in (nn.Linear(a, b), nn.ReLU())]
    return nn.Sequential(*body, nn.Linear(widths[-1], out_features))


def _conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride, padding=kernel // 2, bias=False), nn.BatchNorm2d(out_channels))


class BasicBlock(nn.Module):
    """Two 3×3 conv+BN with a ReLU between, plus the input (through a 1×1 conv+BN where the shape changes), then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = _conv_bn(in_channels, out_channels, 3, stride)
        self.conv2 = _conv_bn(out_channels, out_channels, 3, 1)
        self.shortcut = _conv_bn(in_channels, out_channels, 1, stride) if stride != 1 or in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(F.relu(self.conv1(x))) + self.shortcut(x))


class ReducedResNet18(nn.Module):
    """GEM's reduced ResNet-18 (Lopez-Paz & Ranzato 2017; A-GEM, ER and EMCL use it on split CIFAR/miniImageNet).

    ResNet-18 of basic blocks [2, 2, 2, 2] with ``nf``, 2nf, 4nf, 8nf feature maps (nf = 20: a third of
    the usual 64), a 3×3 stride-1 stem without max-pool, stage strides 1, 2, 2, 2, global average pooling
    (adaptive, so 32×32 and 84×84 inputs both work) and one linear classifier. In train mode BatchNorm
    updates its running statistics in place, so torch.func transforms must get the buffers as inputs too.
    """

    def __init__(self, num_classes: int = 100, nf: int = 20, in_channels: int = 3):
        super().__init__()
        self.stem = _conv_bn(in_channels, nf, 3, 1)
        blocks, width = [], nf
        for stage, stride in enumerate((1, 2, 2, 2)):
            out = nf * 2**stage
            blocks += [BasicBlock(width, out, stride), BasicBlock(out, out, 1)]
            width = out
        self.blocks = nn.Sequential(*blocks)
        self.linear = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        h = self.blocks(F.relu(self.stem(x)))
        return self.linear(F.adaptive_avg_pool2d(h, 1).flatten(1))


def build_model(benchmark: Benchmark) -> nn.Module:
    """The benchmark's network: the MLP for flat inputs (permuted MNIST), the reduced ResNet-18 for images."""
    if len(benchmark.input_shape) == 1:
        return mlp(benchmark.input_shape[0], out_features=benchmark.num_classes)
    return ReducedResNet18(benchmark.num_classes, in_channels=benchmark.input_shape[0])
