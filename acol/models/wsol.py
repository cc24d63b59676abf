"""WSOL models: ACoL (two 1x1-conv class-activation branches with erasing), its single-branch
variant, and the GAP + FC CAM model.

Every model's `forward(x, labels=None)` returns a dict with at least "logits" (B, C); the 1x1-conv
models also return their class activation maps computed in the forward pass, "cam_a" (and "cam_b"),
(B, C, h, w) raw (unnormalised). `loss(out, labels)` returns {"loss", ...}; `localization_map(out,
labels)` returns (B, h, w) float32 maps in [0, 1] for the given classes. Parameters are split by
module role: `backbone` vs everything else (the heads), see `param_groups`.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from acol.cams.ops import minmax_normalize, select_class


def class_activation_head(in_channels: int, hidden: int, num_classes: int) -> nn.Sequential:
    """Conv3x3 in->hidden, ReLU, Conv3x3 hidden->hidden, ReLU, Conv1x1 hidden->C (official ACoL heads)."""
    head = nn.Sequential(
        nn.Conv2d(in_channels, hidden, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, hidden, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, num_classes, kernel_size=1),
    )
    for m in head:
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return head


class WSOLModel(nn.Module):
    """Shared plumbing: backbone, then `smoothing` (AvgPool(3, 1, 1) as the official ACoL with
    smooth_features, else Identity; a module so its output can be hooked), and param groups."""

    def __init__(self, backbone: nn.Module, smooth_features: bool):
        super().__init__()
        self.backbone = backbone
        self.smoothing = nn.AvgPool2d(kernel_size=3, stride=1, padding=1) if smooth_features else nn.Identity()

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, out_channels, h, w): the (smoothed) backbone features the heads see."""
        return self.smoothing(self.backbone(x))

    def param_groups(self) -> dict[str, list[tuple[str, nn.Parameter]]]:
        """{"backbone": [(name, p)], "head": [(name, p)]} by module role, not by name substring."""
        backbone_ids = {id(p) for p in self.backbone.parameters()}
        groups: dict[str, list] = {"backbone": [], "head": []}
        for name, p in self.named_parameters():
            groups["backbone" if id(p) in backbone_ids else "head"].append((name, p))
        return groups

    def loss(self, out: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        loss = F.cross_entropy(out["logits"].float(), labels)
        return {"loss": loss}


class SingleBranch(WSOLModel):
    """One 1x1-conv class-activation head (ACoL with erasing off; the official vgg_v0).

    logits = GAP of the C-channel map, so the class map *is* the CAM of this model.
    """

    default_cam_layer = "head_a.3"  # Grad-CAM: the ReLU before the 1x1 class conv

    def __init__(self, backbone: nn.Module, num_classes: int, head_channels: int = 1024,
                 smooth_features: bool = True):
        super().__init__(backbone, smooth_features)
        self.head_a = class_activation_head(backbone.out_channels, head_channels, num_classes)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        cam_a = self.head_a(self.features(x))
        return {"logits": cam_a.mean(dim=(2, 3)), "cam_a": cam_a}

    def localization_map(self, out: dict, labels: torch.Tensor) -> torch.Tensor:
        return minmax_normalize(select_class(out["cam_a"], labels))


class ACoL(WSOLModel):
    """Adversarial Complementary Learning (Zhang et al., CVPR 2018), DESIGN.md §2.

    Branch A's map of the erasing label is min-max normalised per image; the shared feature map is
    zeroed where it is >= threshold (a hard mask, no gradient through it) and branch B classifies
    what is left. Classification uses A's logits; the loss is CE(A) + loss_weight_b * CE(B).
    The erasing label is the given label (erase_with="gt") or, without labels or with
    erase_with="pred", the argmax of A.
    """

    default_cam_layer = "head_a.3"  # Grad-CAM: branch A's ReLU before its 1x1 class conv

    def __init__(self, backbone: nn.Module, num_classes: int, head_channels: int = 1024,
                 smooth_features: bool = True, threshold: float = 0.6, erase_with: str = "gt",
                 fuse: str = "max", loss_weight_b: float = 1.0):
        super().__init__(backbone, smooth_features)
        self.head_a = class_activation_head(backbone.out_channels, head_channels, num_classes)
        self.head_b = class_activation_head(backbone.out_channels, head_channels, num_classes)
        self.threshold = threshold
        self.erase_with = erase_with
        self.fuse = fuse
        self.loss_weight_b = loss_weight_b

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        feat = self.features(x)
        cam_a = self.head_a(feat)
        logits = cam_a.mean(dim=(2, 3))
        if labels is None or self.erase_with == "pred":
            labels = logits.argmax(dim=1)
        attention = minmax_normalize(select_class(cam_a.detach(), labels))  # float32, (B, h, w)
        keep = (attention < self.threshold).unsqueeze(1)
        erased = feat * keep.to(feat.dtype)
        cam_b = self.head_b(erased)
        return {"logits": logits, "logits_b": cam_b.mean(dim=(2, 3)), "cam_a": cam_a, "cam_b": cam_b,
                "erased": ~keep.squeeze(1)}

    def loss(self, out: dict, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        loss_a = F.cross_entropy(out["logits"].float(), labels)
        loss_b = F.cross_entropy(out["logits_b"].float(), labels)
        return {"loss": loss_a + self.loss_weight_b * loss_b, "loss_a": loss_a, "loss_b": loss_b}

    def branch_maps(self, out: dict, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised A and B maps of `labels`, each (B, h, w) float32."""
        return (minmax_normalize(select_class(out["cam_a"], labels)),
                minmax_normalize(select_class(out["cam_b"], labels)))

    def localization_map(self, out: dict, labels: torch.Tensor) -> torch.Tensor:
        a, b = self.branch_maps(out, labels)
        if self.fuse == "max":
            return torch.maximum(a, b)
        if self.fuse == "mean":
            return (a + b) / 2
        return a if self.fuse == "a" else b


class GAPClassifierCAM(WSOLModel):
    """The CAM baseline (Zhou et al., CVPR 2016): features -> [Conv3x3 -> ReLU] -> GAP -> Linear.

    With `cam_conv` the Conv3x3 (to head_channels) + ReLU is there (wsolevaluation's VggCam);
    without it the FC pools the backbone features directly (its ResNetCam). CAM_c = sum_k w_k^c
    f_k(x, y) over the pooled features f ("features" in the output), no bias, no ReLU, then min-max.
    `default_cam_layer` is the module whose output the FC pools ("conv", or "smoothing" without
    it), so CAM equals Grad-CAM there up to the ReLU and a 1/(h w) scale.
    """

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

    def localization_map(self, out: dict, labels: torch.Tensor) -> torch.Tensor:
        return minmax_normalize(self.class_maps(out, labels))
