"""EfficientNet-Lite0 (Tan & Le, 2019; the TF "lite" variant): image (B, 3, H, W) -> (B, 1280, h, w).

EfficientNet-B0's layout without squeeze-and-excitation, with ReLU6 everywhere and the stem (32) and
head (1280) widths fixed. Built to take TensorFlow-trained weights unchanged: BatchNorm eps 1e-3 and
TF "same" padding (a stride-2 conv pads (total // 2, total - total // 2) per side, total = max((ceil(i / s)
- 1) s + k - i, 0), so even inputs get the extra pixel at the bottom / right; stride-1 convs pad k // 2).

Children, in order (keys `stem.conv.weight`, `stage3.1.dw.bn.running_var`, `head.bn.bias`, ...):

| child | block | expand | kernel | stride | out | repeats | stride so far |
|---|---|---|---|---|---|---|---|
| rescale | ImageNet mean/std input -> (255 x pixel - 127) / 128, the TF weights' input | | | | 3 | | 1 |
| stem | conv + BN + ReLU6 | | 3 | 2 | 32 | 1 | 2 |
| stage1 | MBConv | 1 | 3 | 1 | 16 | 1 | 2 |
| stage2 | MBConv | 6 | 3 | 2 | 24 | 2 | 4 |
| stage3 | MBConv | 6 | 5 | 2 | 40 | 2 | 8 |
| stage4 | MBConv | 6 | 3 | 2 | 80 | 3 | 16 |
| stage5 | MBConv | 6 | 5 | 1 | 112 | 3 | 16 |
| stage6 | MBConv | 6 | 5 | 2 (1 with large_feature_map) | 192 | 4 | 32 (16) |
| stage7 | MBConv | 6 | 3 | 1 | 320 | 1 | 32 (16) |
| head | 1x1 conv + BN + ReLU6 | | 1 | 1 | 1280 | 1 | 32 (16) |

MBConv: [1x1 expand conv + BN + ReLU6] (when expand > 1), depthwise conv + BN + ReLU6, 1x1 project conv
+ BN (no activation), plus the input when the stride is 1 and the widths match. Every conv is bias-free.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from acol.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD

# (expand ratio, kernel, stride, out channels, repeats) of stage1..stage7
STAGES = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
          (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))
STEM_CHANNELS, HEAD_CHANNELS = 32, 1280
BN_EPS = 1e-3                           # TF's BatchNormalization default, which the weights were trained with
TF_MEAN, TF_STD = 127.0 / 255, 128.0 / 255  # the TF-lite input: (pixel - 127) / 128, pixels in 0..255


class SamePadConv2d(nn.Conv2d):
    """Conv2d with TF "same" padding for stride 2 (module docstring), computed per input size."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return self._conv_forward(F.pad(x, pads), self.weight, self.bias)


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    if stride == 1:
        return nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, groups=groups, bias=False)
    return SamePadConv2d(in_channels, out_channels, kernel, stride, groups=groups, bias=False)


def conv_bn(in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1,
            activation: bool = True) -> nn.Sequential:
    """conv (bias-free) + BN (eps 1e-3) [+ ReLU6]: keys conv.weight, bn.*."""
    layers = [("conv", _conv(in_channels, out_channels, kernel, stride, groups)),
              ("bn", nn.BatchNorm2d(out_channels, eps=BN_EPS))]
    if activation:
        layers.append(("act", nn.ReLU6(inplace=True)))
    return nn.Sequential(OrderedDict(layers))


class MBConv(nn.Module):
    """Inverted residual without SE (module docstring): children expand (an Identity at ratio 1), dw, project."""

    def __init__(self, in_channels: int, out_channels: int, expand: int, kernel: int, stride: int):
        super().__init__()
        hidden = in_channels * expand
        self.expand = conv_bn(in_channels, hidden, 1) if expand != 1 else nn.Identity()
        self.dw = conv_bn(hidden, hidden, kernel, stride, groups=hidden)
        self.project = conv_bn(hidden, out_channels, 1, activation=False)
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.dw(self.expand(x)))
        return out + x if self.residual else out


class TFInputScale(nn.Module):
    """(B, 3, H, W) ImageNet mean/std normalised (acol's input) -> (255 x pixel - 127) / 128 per channel,
    the input the TF weights were trained on. No parameters or saved buffers."""

    def __init__(self):
        super().__init__()
        std, mean = torch.tensor(IMAGENET_STD), torch.tensor(IMAGENET_MEAN)
        self.register_buffer("scale", (std / TF_STD).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", ((mean - TF_MEAN) / TF_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale + self.shift


class EfficientNetLite0(nn.Sequential):
    """The network up to its head conv (module docstring): stride 32, or 16 with `large_feature_map`
    (stage6 at stride 1): 7x7 / 14x14 maps at 224, 2x2 / 4x4 at 64. Convs Kaiming-normal (fan_out) at
    random init, BN weight 1 and bias 0."""

    out_channels = HEAD_CHANNELS

    def __init__(self, large_feature_map: bool = True):
        layers = [("rescale", TFInputScale()), ("stem", conv_bn(3, STEM_CHANNELS, 3, stride=2))]
        in_channels = STEM_CHANNELS
        for i, (expand, kernel, stride, out_channels, repeats) in enumerate(STAGES, start=1):
            if i == 6 and large_feature_map:
                stride = 1
            blocks = [MBConv(in_channels if j == 0 else out_channels, out_channels, expand, kernel,
                             stride if j == 0 else 1) for j in range(repeats)]
            layers.append((f"stage{i}", nn.Sequential(*blocks)))
            in_channels = out_channels
        layers.append(("head", conv_bn(in_channels, HEAD_CHANNELS, 1)))
        super().__init__(OrderedDict(layers))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")


def from_efficientnet_pytorch(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A state dict in efficientnet_pytorch's naming (`_conv_stem`, `_blocks.<i>._expand_conv`, ...,
    `_conv_head`, `_bn1`) renamed to the keys of `own` (EfficientNetLite0's state dict), by position:
    both list the same tensors in the same order (stem, each block's expand / depthwise / project conv and
    BN, head). The classifier `_fc.*` is dropped. ValueError naming the first key whose last name part or
    shape differs, or the counts when they do."""
    theirs = [(k, v) for k, v in state.items() if not k.startswith("_fc.")]
    if len(theirs) != len(own):
        raise ValueError(f"{len(theirs)} tensors besides _fc.*, EfficientNet-Lite0 has {len(own)}")
    renamed = {}
    for (key, value), (own_key, own_value) in zip(theirs, own.items()):
        if key.rsplit(".", 1)[-1] != own_key.rsplit(".", 1)[-1] or value.shape != own_value.shape:
            raise ValueError(f"{key} {tuple(value.shape)} does not match EfficientNet-Lite0's {own_key} "
                             f"{tuple(own_value.shape)} at the same position")
        renamed[own_key] = value
    return renamed
