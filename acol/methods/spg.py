"""SPG: Self-Produced Guidance (Zhang et al., ECCV 2018), as wsolevaluation implements it.

A: the backbone, the convs of `LAYOUTS` and a 1x1 conv to C class maps S, GAP -> logits (the
classifier; its class map is the localization map). B1 and B2: side branches on a middle and a later
backbone layer (each a Conv3x3 + ReLU, then a shared Conv3x3 + ReLU + Conv1x1 to one logit map).
C: a branch on A's last hidden features (Conv3x3 + ReLU + Conv1x1 to one logit map). In training,
with U = bilinear upsampling to the input size, each branch learns a seed mask made from another's map:

- B2 from the class attention a = minmax(U(S_y)) of the label y, thresholds (1h, 1l);
- B1 from sigmoid(U(B2)), thresholds (2h, 2l);
- C from the fused map (sigmoid(U(B1)) + sigmoid(U(B2))) / 2, thresholds (3h, 3l).

A seed mask is foreground (1) where the map is > h (or, for an image with fewer than 30 such pixels,
> 0.7 x its maximum), background (0) where it is < l (background wins), ignored elsewhere; each branch's
loss is the binary cross-entropy over the pixels not ignored (the batch's mean), and the total is
CE(logits, y) + the three. The masks come from detached maps. Where wsolevaluation divides by zero
(a flat class map) the attention here is 0, and a branch without any pixel to learn adds 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from acol.cams.ops import minmax_normalize, select_class
from acol.methods.base import METHODS, Method, check_range
from acol.models.wsol import POST_HOC, ClassActivationHead, WSOLModel, cross_entropy

MIN_FOREGROUND = 30                     # fewer foreground pixels than this: threshold at FALLBACK x the maximum
FALLBACK = 0.7


@dataclass
class Layout:
    """SPG on one backbone (wsolevaluation's placement). Widths are those at model.head_channels =
    1024 (wsolevaluation's) and scale with it."""

    b1_tap: str                         # module whose output feeds B1
    b1_channels: int
    b2_tap: str                         # module whose output feeds B2
    b2_channels: int
    head: tuple[int, ...]               # widths of A's Conv3x3 + ReLU layers between the backbone and the 1x1 conv
    side: int                           # width of B1, B2 and their shared layer


LAYOUTS = {
    # conv4_3 (+ pool4, MaxPool(3, 2, 1) without the large map) | conv5_3 | two new convs (SPG_A_3)
    "vgg16": Layout("backbone.features.23", 512, "backbone.features.29", 512, (512, 512), 512),
    # layer3.0 | the rest of layer3 | layer4, straight into the 1x1 conv
    "resnet50": Layout("backbone.layer3.0", 1024, "backbone.layer3", 1024, (), 1024),
    # Mixed_5d (+ its pool) | Mixed_6d | Mixed_6e, then SPG_A3_1b and SPG_A3_2b
    "inception_v3": Layout("backbone.maxpool_5d", 288, "backbone.Mixed_6d", 768, (1024, 1024), 512),
    # conv4 | conv5 | two new convs (as VGG)
    "smallcnn": Layout("backbone.features.13", 64, "backbone.features.16", 64, (1024, 1024), 1024),
    # ours: stage5 (stride 16) | stage7 | the head conv, then two new convs (as VGG)
    "efficientnet_lite0": Layout("backbone.stage5", 112, "backbone.stage7", 320, (1024, 1024), 512),
}
C_HIDDEN = 512                          # SPG_C's Conv3x3 width at head_channels = 1024


@dataclass
class SPGConfig:
    threshold_1h: float = 0.7           # B2's mask from the class attention: foreground above
    threshold_1l: float = 0.01          # ... background below (the official code: 0.05)
    threshold_2h: float = 0.5           # B1's mask from sigmoid(B2)
    threshold_2l: float = 0.05
    threshold_3h: float = 0.7           # C's mask from the fused B1 and B2 maps
    threshold_3l: float = 0.1

    def check(self) -> None:
        for key in vars(self):
            check_range(self, key, 0, 1)

    def stages(self) -> tuple[tuple[float, float], ...]:
        return ((self.threshold_1h, self.threshold_1l), (self.threshold_2h, self.threshold_2l),
                (self.threshold_3h, self.threshold_3l))


def seed_mask(maps: torch.Tensor, high: float, low: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(target, valid), both (B, H, W), from maps (B, H, W): target 1 on the foreground (> high, or > 0.7 x
    the image's maximum where fewer than 30 pixels pass), 0 elsewhere; valid on the foreground and the
    background (< low; background wins where both hold)."""
    maps = maps.float()
    count = (maps > high).flatten(1).sum(dim=1)
    fallback = FALLBACK * maps.flatten(1).amax(dim=1)
    threshold = torch.where(count < MIN_FOREGROUND, fallback, torch.full_like(fallback, high))
    foreground = maps > threshold.view(-1, 1, 1)
    background = maps < low
    return (foreground & ~background).float(), foreground | background


def masked_bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy with logits, averaged over the valid pixels (0 when there are none)."""
    losses = F.binary_cross_entropy_with_logits(logits.float(), target, reduction="none")
    return (losses * valid).sum() / valid.sum().clamp_min(1)


def upsample(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, 1, h, w) -> (B, H, W) float32, bilinear (align_corners=False), outside autocast."""
    with torch.autocast(maps.device.type, enabled=False):
        return F.interpolate(maps.float(), size=size, mode="bilinear", align_corners=False)[:, 0]


def _branch(in_channels: int, width: int, out_channels: int | None = None) -> nn.Sequential:
    """Conv3x3 + ReLU, and a Conv1x1 to `out_channels` when given; Xavier-initialised."""
    layers = [nn.Conv2d(in_channels, width, kernel_size=3, padding=1), nn.ReLU(inplace=True)]
    if out_channels is not None:
        layers.append(nn.Conv2d(width, out_channels, kernel_size=1))
    branch = nn.Sequential(*layers)
    for m in branch:
        if isinstance(m, nn.Conv2d):
            nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    return branch


class SPG(WSOLModel):
    """The SPG model. Outputs: logits, cam_a (B, C, h, w), the branch logit maps b1, b2, c (B, 1, h', w')
    and, in training mode, "attention" (B, H, W): minmax(U(S_y)) for the labels (their argmax without)."""

    localizers = ("inforward",) + POST_HOC

    def __init__(self, backbone: nn.Module, num_classes: int, layout: Layout, head_channels: int = 1024,
                 smooth_features: bool = False, dropout: float = 0.0, thresholds: SPGConfig | None = None):
        super().__init__(backbone, smooth_features)
        scale = lambda width: max(1, width * head_channels // 1024)  # noqa: E731
        self.taps = (layout.b1_tap, layout.b2_tap)
        self.head_a = ClassActivationHead(backbone.out_channels, tuple(scale(w) for w in layout.head), num_classes,
                                          dropout)
        hidden = scale(layout.head[-1]) if layout.head else backbone.out_channels
        self.branch_b1 = _branch(layout.b1_channels, scale(layout.side))
        self.branch_b2 = _branch(layout.b2_channels, scale(layout.side))
        self.branch_b_shared = _branch(scale(layout.side), scale(layout.side), 1)
        self.branch_c = _branch(hidden, scale(C_HIDDEN), 1)
        self.thresholds = thresholds or SPGConfig()
        self.default_cam_layer = f"head_a.{len(layout.head) * 2 - 1}" if layout.head else "smoothing"

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        taps: dict[str, torch.Tensor] = {}
        handles = [self.get_submodule(name).register_forward_hook(
            lambda module, inputs, output, name=name: taps.__setitem__(name, output)) for name in self.taps]
        try:
            feat = self.features(x)
        finally:
            for handle in handles:
                handle.remove()
        hidden = self.head_a.hidden(feat)
        cam_a = self.head_a[-1](hidden)
        logits = cam_a.mean(dim=(2, 3))
        out = {"logits": logits, "cam_a": cam_a, "b1": self.branch_b_shared(self.branch_b1(taps[self.taps[0]])),
               "b2": self.branch_b_shared(self.branch_b2(taps[self.taps[1]])), "c": self.branch_c(hidden)}
        if self.training:
            labels = logits.argmax(dim=1) if labels is None else labels
            out["attention"] = minmax_normalize(upsample(select_class(cam_a.detach(), labels)[:, None], x.shape[-2:]))
        return out

    def loss(self, out: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """CE + BCE(U(b2), mask(attention)) + BCE(U(b1), mask(sigmoid U(b2))) + BCE(U(c), mask(fused))."""
        size = out["attention"].shape[-2:]
        b1, b2, c = (upsample(out[k], size) for k in ("b1", "b2", "c"))
        (h1, l1), (h2, l2), (h3, l3) = self.thresholds.stages()
        fused = (torch.sigmoid(b1.detach()) + torch.sigmoid(b2.detach())) / 2
        losses = {"loss_cls": cross_entropy(out["logits"], targets),
                  "loss_b2": masked_bce(b2, *seed_mask(out["attention"], h1, l1)),
                  "loss_b1": masked_bce(b1, *seed_mask(torch.sigmoid(b2.detach()), h2, l2)),
                  "loss_c": masked_bce(c, *seed_mask(fused, h3, l3))}
        return {"loss": sum(losses.values()), **losses}

    def wsolevaluation_head_rate(self, name: str) -> bool:
        """As every model, and on vgg16 also conv4 and conv5 (its SPG_A_1 and SPG_A_2 escape the
        `features.` pattern)."""
        conv45 = self.backbone.name == "vgg16" and name.startswith(tuple(f"backbone.features.{i}." for i in range(17, 29)))
        return conv45 or super().wsolevaluation_head_rate(name)


@METHODS.register("spg")
class SPGMethod(Method):
    """SPG on any backbone of `LAYOUTS`; its thresholds are the [spg] table."""

    Config = SPGConfig
    backbones = tuple(LAYOUTS)

    def build_model(self, backbone: nn.Module) -> SPG:
        pool4 = backbone.features[23] if backbone.name == "vgg16" else None
        if isinstance(pool4, nn.MaxPool2d) and pool4.kernel_size == 2:  # wsolevaluation's VggSpg: MaxPool(3, 2, 1)
            backbone.features[23] = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        m = self.cfg.model
        return SPG(backbone, self.num_classes, LAYOUTS[backbone.name], m.head_channels, m.smooth_features,
                   m.head_dropout, self.hparams)
