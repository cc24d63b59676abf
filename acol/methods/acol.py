"""ACoL: Adversarial Complementary Learning (Zhang et al., CVPR 2018).

Two 1x1-conv class-activation heads on the shared features. Branch A's map of the erasing label is
min-max normalised per image; the shared feature map is zeroed where it is >= `threshold` (a hard
mask, no gradient through it) and branch B classifies what is left, so B learns the parts of the
object A did not use. Classification uses A's logits; the loss is CE(A) + loss_weight_b * CE(B); the
localization map fuses the normalised A and B maps (max, as the official code and wsolevaluation).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from acol.cams.ops import minmax_normalize, select_class
from acol.methods.base import METHODS, Method, check_range
from acol.models.wsol import POST_HOC, WSOLModel, class_activation_head, cross_entropy

ERASE_WITH = ("gt", "pred")
FUSE = ("max", "mean", "a", "b")


@dataclass
class ACoLConfig:
    threshold: float = 0.6              # erase where the normalised map of branch A is >= threshold
    erase_with: str = "gt"              # training label used for erasing: gt | pred (argmax of A)
    fuse: str = "max"                   # localization map: max | mean | a | b of the normalised A and B maps
    loss_weight_b: float = 1.0

    def check(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError(f"threshold must be in (0, 1]; got {self.threshold}")
        check_range(self, "loss_weight_b", 0)
        if self.erase_with not in ERASE_WITH:
            raise ValueError(f"erase_with must be one of {', '.join(ERASE_WITH)}; got {self.erase_with!r}")
        if self.fuse not in FUSE:
            raise ValueError(f"fuse must be one of {', '.join(FUSE)}; got {self.fuse!r}")


class ACoL(WSOLModel):
    """The two-branch model. The erasing label is the given label (erase_with="gt") or, without
    labels or with erase_with="pred", the argmax of A. Outputs: logits (A), logits_b, cam_a, cam_b
    (B, C, h, w) and "erased" (B, h, w), the erased positions."""

    localizers = ("inforward", "inforward_a", "inforward_b") + POST_HOC
    default_cam_layer = "head_a.3"  # Grad-CAM: branch A's ReLU before its 1x1 class conv
    he_init_backbones = ("resnet50",)  # wsolevaluation's ResNetAcol initialises its heads with Kaiming

    def __init__(self, backbone: nn.Module, num_classes: int, head_channels: int = 1024,
                 smooth_features: bool = True, threshold: float = 0.6, erase_with: str = "gt",
                 fuse: str = "max", loss_weight_b: float = 1.0, dropout: float = 0.0):
        super().__init__(backbone, smooth_features)
        self.head_a = class_activation_head(backbone.out_channels, head_channels, num_classes, dropout)
        self.head_b = class_activation_head(backbone.out_channels, head_channels, num_classes, dropout)
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

    def logits(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Branch A's class scores (`forward`'s "logits"), without the erasing and branch B."""
        return self.head_a(self.features(x)).mean(dim=(2, 3))

    def loss(self, out: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        loss_a = cross_entropy(out["logits"], targets)
        loss_b = cross_entropy(out["logits_b"], targets)
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


@METHODS.register("acol")
class ACoLMethod(Method):
    """ACoL on any backbone; its hyperparameters are the [acol] table."""

    Config = ACoLConfig

    def build_model(self, backbone: nn.Module) -> ACoL:
        m, h = self.cfg.model, self.hparams
        return ACoL(backbone, self.num_classes, m.head_channels, m.smooth_features, threshold=h.threshold,
                    erase_with=h.erase_with, fuse=h.fuse, loss_weight_b=h.loss_weight_b, dropout=m.head_dropout)
