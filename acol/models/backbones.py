"""Backbones: image (B, 3, H, W) -> feature map (B, out_channels, h, w).

Each builder takes `large_feature_map` and returns a module with an `out_channels` attribute and a
`load_pretrained(source)` method, where source is "imagenet" (torchvision weights API) or the path of
a local state dict in the same key layout.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from acol.registry import Registry

BACKBONES = Registry("backbone")


def _conv_stack(cfg: list, batch_norm: bool) -> nn.Sequential:
    """VGG-style layers: an int is a 3x3 conv (+BN) + ReLU; 'M' is MaxPool(3, 2, 1); 'N' is MaxPool(3, 1, 1)."""
    layers: list[nn.Module] = []
    in_ch = 3
    for item in cfg:
        if item == "M":
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))
        elif item == "N":
            layers.append(nn.MaxPool2d(kernel_size=3, stride=1, padding=1))
        else:
            layers.append(nn.Conv2d(in_ch, item, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU(inplace=True))
            in_ch = item
    return nn.Sequential(*layers)


def _load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    if not Path(path).is_file():
        raise FileNotFoundError(f"pretrained weights file not found: {path}")
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(state).__name__}")
    if isinstance(state.get("model"), dict):  # one of our checkpoints: take its model weights
        state = state["model"]
    return state


class VGG16Features(nn.Module):
    """VGG16 convolutions as in the official ACoL (models/vgg/vgg_v1.py).

    Pools after blocks 1-3 are MaxPool(3, s2, p1); with `large_feature_map` the pools after blocks 4-5
    are MaxPool(3, s1, p1) (stride 8: 28x28 at 224), otherwise block 4's pool has stride 2 (14x14).
    `features.<i>` indices equal torchvision's vgg16.features, so ImageNet weights load by key.
    """

    def __init__(self, large_feature_map: bool = True):
        super().__init__()
        cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512]
        cfg += ["N", 512, 512, 512, "N"] if large_feature_map else ["M", 512, 512, 512, "N"]
        self.features = _conv_stack(cfg, batch_norm=False)
        self.out_channels = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def load_pretrained(self, source: str) -> None:
        if source == "imagenet":
            from torchvision.models import VGG16_Weights

            weights = VGG16_Weights.IMAGENET1K_V1
            try:
                state = weights.get_state_dict(progress=True)
            except OSError as e:  # URLError and socket errors are OSErrors
                raise RuntimeError(
                    f"could not download the ImageNet VGG16 weights from {weights.url} ({e}). "
                    "Download that file on a machine with internet access and set "
                    "model.pretrained=<path to the .pth file>."
                ) from e
            source_name = weights.url
        else:
            state = _load_state_dict_file(source)
            source_name = source
        own = {k: v for k, v in state.items() if k.startswith("features.")}
        expected = set(self.state_dict())
        missing = sorted(expected - set(own))
        if missing:
            raise KeyError(f"{source_name}: missing VGG16 keys {missing[:4]}{'...' if len(missing) > 4 else ''}")
        self.load_state_dict({k: own[k] for k in expected})


class SmallCNN(nn.Module):
    """A small CPU-friendly VGG-style net with BatchNorm: stride 4 (16x16 maps at 64x64 input).

    With `large_feature_map=False` a third stride-2 pool gives stride 8.
    """

    def __init__(self, large_feature_map: bool = True, width: int = 16):
        super().__init__()
        w = width
        cfg = [w, "M", 2 * w, 2 * w, "M", 4 * w, 4 * w]
        if not large_feature_map:
            cfg += ["M"]
        self.features = _conv_stack(cfg, batch_norm=True)
        self.out_channels = 4 * w
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def load_pretrained(self, source: str) -> None:
        if source == "imagenet":
            raise ValueError("smallcnn has no ImageNet weights; set model.pretrained to a local state dict path")
        state = _load_state_dict_file(source)
        if any(k.startswith("backbone.") for k in state):  # a whole model's state dict
            state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
        self.load_state_dict(state)


@BACKBONES.register("vgg16")
def vgg16(large_feature_map: bool = True) -> VGG16Features:
    return VGG16Features(large_feature_map)


@BACKBONES.register("smallcnn")
def smallcnn(large_feature_map: bool = True) -> SmallCNN:
    return SmallCNN(large_feature_map)
