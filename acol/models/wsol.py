"""The WSOL model interface and the two classifiers the methods share: a 1x1-conv class-map head
(`SingleBranch`) and GAP + FC (`GAPClassifierCAM`).

Every model's `forward(x, labels=None)` returns a dict with at least "logits" (B, C); models with a
1x1-conv class-map head also return its maps "cam_a" (B, C, h, w), raw (unnormalised). The rest of
the interface:

- `logits(x, labels=None)` -> (B, C): `forward(x, labels)["logits"]` alone, skipping work that does not
  feed the class scores (ACoL: branch B); what the post-hoc localizers run;
- `loss(out, targets)` -> {"loss", ...}: targets are (B,) class indices or (B, C) class probabilities
  (a batch mixed by CutMix); computed in float32;
- `class_maps(out, labels)` -> (B, h, w) float32: the raw CAM of each image's class;
- `localization_map(out, labels)` -> (B, h, w) float32 in [0, 1]: the model's own map;
- `localizers`: the names of the localizers (acol.cams) that apply to the model, declared by its class;
- `default_cam_layer`: the layer gradient localizers hook by default (the features the class scores
  are pooled from);
- `param_groups(rule)`: which parameters get the base and which the head learning rate;
- `set_epoch(epoch)`: the training loop's call before each training epoch (0-based), for a model
  whose loss changes with the epoch (DA-WSOL's start_epoch); default: nothing;
- `classifies`: false for a model without a classifier (the few-shot baseline's foreground model),
  whose reports leave out the classification-dependent metrics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from acol.cams.ops import minmax_normalize, select_class

POST_HOC = ("gradcam", "gradcam_pp", "guided_backprop", "guided_gradcam", "hirescam", "xgradcam", "layercam",
            "eigencam", "smoothgradcampp", "integrated_gradients", "scorecam", "ablationcam",
            "rise")  # localizers that apply to any model


class ClassActivationHead(nn.Sequential):
    """Conv3x3 + ReLU per hidden width, then a Conv1x1 to the C class maps (the official ACoL heads:
    widths (1024, 1024)). With `dropout` > 0, dropout before every conv (wsolevaluation's
    InceptionCam and InceptionSpg: 0.5); the indices of the layers stay those without it."""

    def __init__(self, in_channels: int, widths: tuple[int, ...], num_classes: int, dropout: float = 0.0):
        layers: list[nn.Module] = []
        for width in widths:
            layers += [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
            in_channels = width
        super().__init__(*layers, nn.Conv2d(in_channels, num_classes, kernel_size=1))
        self.dropout = dropout
        for m in self:
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    def hidden(self, x: torch.Tensor) -> torch.Tensor:
        """The features the final 1x1 conv sees (after the last dropout)."""
        for layer in list(self)[:-1]:
            x = layer(self._drop(x) if isinstance(layer, nn.Conv2d) else x)
        return self._drop(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self[-1](self.hidden(x))

    def _drop(self, x: torch.Tensor) -> torch.Tensor:
        return F.dropout(x, self.dropout, self.training) if self.dropout else x


def class_activation_head(in_channels: int, hidden: int, num_classes: int, dropout: float = 0.0) -> ClassActivationHead:
    """Conv3x3 in->hidden, ReLU, Conv3x3 hidden->hidden, ReLU, Conv1x1 hidden->C (official ACoL heads)."""
    return ClassActivationHead(in_channels, (hidden, hidden), num_classes, dropout)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Float32 cross-entropy against (B,) class indices or (B, C) class probabilities."""
    return F.cross_entropy(logits.float(), targets)


class WSOLModel(nn.Module):
    """Shared plumbing: backbone, then `smoothing` (AvgPool(3, 1, 1) as the official ACoL with
    smooth_features, else Identity; a module so its output can be hooked), lr groups and the loss."""

    localizers: tuple[str, ...] = ()
    default_cam_layer: str = ""
    he_init_backbones: tuple[str, ...] = ()  # wsolevaluation's init: Kaiming-normal new convs on these backbones
    classifies: bool = True

    def __init__(self, backbone: nn.Module, smooth_features: bool):
        super().__init__()
        self.backbone = backbone
        self.smoothing = nn.AvgPool2d(kernel_size=3, stride=1, padding=1) if smooth_features else nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, out_channels, h, w): the (smoothed) backbone features the heads see."""
        return self.smoothing(self.backbone(x))

    def logits(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(B, C): the class scores of `forward(x, labels)`, bit for bit."""
        return self(x, labels)["logits"]

    def param_groups(self, rule: str = "role") -> dict[str, list[tuple[str, nn.Parameter]]]:
        """{"backbone": [(name, p)], "head": [(name, p)]}: the parameters at the base and at the head
        learning rate. rule "role": the backbone's parameters vs the rest, by module. rule
        "wsolevaluation": its name rule (`wsolevaluation_head_rate`)."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        groups: dict[str, list] = {"backbone": [], "head": []}
        for name, p in self.named_parameters():
            head = self.wsolevaluation_head_rate(name) if rule == "wsolevaluation" else id(p) not in backbone_ids
            groups["head" if head else "backbone"].append((name, p))
        return groups

    def wsolevaluation_head_rate(self, name: str) -> bool:
        """wsolevaluation's lr rule (main.py, parameter-name substrings) in our names: on resnet50 the
        parameters of layer4 and of an `fc` get the head rate (so ResNet's ACoL and SPG heads get the
        base rate); on the other backbones every parameter outside the pretrained backbone does."""
        if self.backbone.name == "resnet50":
            return name.startswith(("backbone.layer4.", "fc."))
        return not name.startswith("backbone.")

    def init_like_wsolevaluation(self) -> None:
        """wsolevaluation's `initialize_weights` on the new layers (everything outside the backbone):
        Conv2d Kaiming-normal (fan_out, ReLU) on `he_init_backbones`, Xavier-uniform otherwise, zero
        bias; Linear N(0, 0.01), zero bias."""
        he = self.backbone.name in self.he_init_backbones
        for name, m in self.named_modules():
            if name == "backbone" or name.startswith("backbone."):
                continue
            if isinstance(m, nn.Conv2d):
                if he:
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                else:
                    nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def set_epoch(self, epoch: int) -> None:
        """Before training epoch `epoch` (0-based; also when a run resumes in it)."""

    def loss(self, out: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"loss": cross_entropy(out["logits"], targets)}

    def class_maps(self, out: dict, labels: torch.Tensor) -> torch.Tensor:
        """Raw CAMs (B, h, w) float32 of `labels`: for a 1x1-conv head its class map (by linearity the CAM)."""
        return select_class(out["cam_a"], labels).float()

    def localization_map(self, out: dict, labels: torch.Tensor) -> torch.Tensor:
        return minmax_normalize(self.class_maps(out, labels))


class SingleBranch(WSOLModel):
    """One 1x1-conv class-activation head: ACoL with erasing off (the official vgg_v0), and
    wsolevaluation's InceptionCam (with `dropout` 0.5).

    logits = GAP of the C-channel map, so the class map *is* the CAM of this model.
    """

    localizers = ("inforward",) + POST_HOC
    default_cam_layer = "head_a.3"  # Grad-CAM: the ReLU before the 1x1 class conv

    def __init__(self, backbone: nn.Module, num_classes: int, head_channels: int = 1024,
                 smooth_features: bool = True, dropout: float = 0.0):
        super().__init__(backbone, smooth_features)
        self.head_a = class_activation_head(backbone.out_channels, head_channels, num_classes, dropout)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        cam_a = self.head_a(self.features(x))
        return {"logits": cam_a.mean(dim=(2, 3)), "cam_a": cam_a}


class GAPClassifierCAM(WSOLModel):
    """The CAM baseline (Zhou et al., CVPR 2016): features -> [Conv3x3 -> ReLU] -> GAP -> Linear.

    With `cam_conv` the Conv3x3 (to head_channels) + ReLU is there (wsolevaluation's VggCam);
    without it the FC pools the backbone features directly (its ResNetCam). CAM_c = sum_k w_k^c
    f_k(x, y) over the pooled features f ("features" in the output), no bias, no ReLU, then min-max.
    `default_cam_layer` is the module whose output the FC pools ("conv", or "smoothing" without
    it), so CAM equals Grad-CAM there up to the ReLU and a 1/(h w) scale.
    """

    localizers = ("cam",) + POST_HOC
    he_init_backbones = ("vgg16",)  # wsolevaluation's VggCam initialises its conv6 with Kaiming

    def __init__(self, backbone: nn.Module, num_classes: int, head_channels: int = 1024,
                 smooth_features: bool = True, cam_conv: bool = True):
        super().__init__(backbone, smooth_features)
        self.conv = nn.Sequential(nn.Conv2d(backbone.out_channels, head_channels, 3, padding=1),
                                  nn.ReLU(inplace=True)) if cam_conv else None
        self.fc = nn.Linear(head_channels if cam_conv else backbone.out_channels, num_classes)
        if self.conv is not None:
            nn.init.xavier_uniform_(self.conv[0].weight)
            nn.init.zeros_(self.conv[0].bias)
        self.default_cam_layer = "conv" if cam_conv else "smoothing"  # Grad-CAM: the features the FC pools

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        feat = self.features(x)
        if self.conv is not None:
            feat = self.conv(feat)
        return {"logits": self.fc(feat.mean(dim=(2, 3))), "features": feat}

    def class_maps(self, out: dict, labels: torch.Tensor) -> torch.Tensor:
        """Raw CAMs (B, h, w) float32 of `labels` from the FC weights."""
        weights = self.fc.weight[labels].float()  # (B, K)
        return torch.einsum("bk,bkhw->bhw", weights, out["features"].float())


def cam_classifier(backbone: nn.Module, num_classes: int, model_cfg) -> WSOLModel:
    """The plain classifier of the CAM-family methods (cam, has, cutmix, adl), by `model.cam_head`:
    GAP + FC (`fc`) or a 1x1-conv class-map head (`conv1x1`)."""
    if model_cfg.cam_head == "conv1x1":
        return SingleBranch(backbone, num_classes, model_cfg.head_channels, model_cfg.smooth_features,
                            model_cfg.head_dropout)
    return GAPClassifierCAM(backbone, num_classes, model_cfg.head_channels, model_cfg.smooth_features,
                            cam_conv=model_cfg.cam_conv)
