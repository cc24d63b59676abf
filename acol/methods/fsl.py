"""The few-shot (FSL) baseline of "Evaluating Weakly Supervised Object Localization Methods Right"
(Choe et al., CVPR 2020): a fully supervised, class-agnostic foreground model trained on the few
images whose boxes or masks the val split holds (data.train_split = "val", data.val_per_class = k).

The model is the backbone and a 1x1 conv to one channel, the foreground logit map; the loss is the
per-pixel binary cross-entropy of that map, upsampled (bilinear) to the input, against the crop's
foreground mask (1 inside any GT box, or the GT mask; ignore pixels are left out), the mean over the
counted pixels. Its localization map is the foreground probability, the same for every class. It
has no classifier: its reports leave out the classification-dependent metrics, and the post-hoc
localizers, which explain class scores, do not apply to it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from acol.methods.base import METHODS, Method
from acol.models.wsol import WSOLModel

IGNORE = 255  # mask value of the pixels the loss leaves out


def foreground_loss(fg_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Float32 BCE of fg_logits (B, h, w), upsampled bilinearly to the masks' (B, H, W) grid, against
    the masks (1 foreground, 0 background, IGNORE left out): the mean over the counted pixels (0 when
    none is counted)."""
    logits = F.interpolate(fg_logits.float()[:, None], size=masks.shape[-2:], mode="bilinear",
                           align_corners=False)[:, 0]
    counted = masks != IGNORE
    per_pixel = F.binary_cross_entropy_with_logits(logits, (masks == 1).float(), reduction="none")
    return (per_pixel * counted).sum() / counted.sum().clamp_min(1)


class ForegroundModel(WSOLModel):
    """features -> Conv1x1 to one channel. Outputs: "fg" (B, h, w), the foreground logits, and "logits"
    (B, num_classes) zeros (no classifier: `classifies` is false; the interface's class scores)."""

    localizers = ("inforward",)
    classifies = False

    def __init__(self, backbone: nn.Module, num_classes: int, smooth_features: bool = True):
        super().__init__(backbone, smooth_features)
        self.num_classes = num_classes
        self.fg = nn.Conv2d(backbone.out_channels, 1, kernel_size=1)
        nn.init.xavier_uniform_(self.fg.weight)
        nn.init.zeros_(self.fg.bias)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        fg = self.fg(self.features(x))[:, 0]
        return {"fg": fg, "logits": fg.new_zeros(len(x), self.num_classes)}

    def loss(self, out: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """targets: (B, H, W) uint8 foreground masks (the training loop's masks)."""
        return {"loss": foreground_loss(out["fg"], targets)}

    def localization_map(self, out: dict, labels: torch.Tensor) -> torch.Tensor:
        """(B, h, w) float32: the foreground probability (any class)."""
        return torch.sigmoid(out["fg"].float())


@METHODS.register("fsl")
class FewShot(Method):
    """The few-shot baseline: trains on the foreground masks of its training split (`trains_on_masks`)."""

    trains_on_masks = True

    def build_model(self, backbone: nn.Module) -> ForegroundModel:
        return ForegroundModel(backbone, self.num_classes, self.cfg.model.smooth_features)
