"""BAS: Background Activation Suppression (Wu, Zhai, Cao, CVPR 2022), as the authors' code does it.

The backbone is cut in two (`MidTail`): mid-level features M (conv4_3 / layer3 / Mixed_6e) and the
tail (conv5 block / layer4 / Mixed_7a-c). The classifier (Conv3x3 + ReLU, Conv3x3 + ReLU, Conv1x1 to C
maps + ReLU) on tail(M) gives the class maps F and logits = GAP(F) (score_1). The generator, a
Conv3x3 + sigmoid on M, gives one foreground map per class; the map of the label y is the foreground
prediction map S (B, 1, H, W). In training:

- erased: the tail and the classifier rerun on M.detach() * (1 - S) with their parameters detached and
  their BatchNorm statistics left alone (the authors' per-step deep copies): only the generator and
  the layers below M learn from it. e_y is its GAP score of y, s_y the full score of y (detached);
- the background activation ratio r = e_y / (s_y + 1e-8), set to 0 where e_y >= s_y (`ratio_cut`);
- the area term a = mean(S); the foreground guidance logits_fg = GAP(F * avgpool(S)) (score_2);
- loss = CE(logits) + fg_ce_weight CE(logits_fg) + mean(r) + area_weight mean(a).

The localization map is the mean of the foreground maps of the top-k predicted classes (or of the
label's map, `map_classes = "label"`, the authors' ILSVRC inference), min-max normalised.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from acol.cams.ops import minmax_normalize, select_class
from acol.methods.base import METHODS, Method, check_range
from acol.models.backbones import MID_TAIL_BACKBONES, MidTail, mid_tail_backbone
from acol.models.wsol import POST_HOC, WSOLModel, cross_entropy

AUTHORS = -1                            # a [bas] value of -1 (0 for top_k): the authors' CUB value for the backbone
CUB_AREA_WEIGHT = {"vgg16": 0.7, "resnet50": 1.2, "inception_v3": 1.0, "smallcnn": 1.0, "efficientnet_lite0": 1.0}
CUB_FG_CE_WEIGHT = {"vgg16": 0.0, "resnet50": 0.5, "inception_v3": 0.5, "smallcnn": 0.5, "efficientnet_lite0": 0.5}
CUB_TOP_K = {"vgg16": 80}               # other backbones: every class
RATIO_CUTS = ("ge", "gt")
MAP_CLASSES = ("top_k", "label")
EPS = 1e-8


@dataclass
class BASConfig:
    area_weight: float = AUTHORS        # weight of the area term; -1: CUB's (vgg16 0.7, resnet50 1.2,
                                        # inception_v3 1.0; smallcnn, efficientnet_lite0 1.0). ILSVRC: 1.0, 2.0, 2.5
    fg_ce_weight: float = AUTHORS       # weight of CE(logits_fg); -1: CUB's (vgg16 0, others 0.5). ILSVRC: 0.05, 1, 1
    ratio_cut: str = "ge"               # the ratio is 0 where erased >= full score (ge, CUB) or > (gt, ILSVRC)
    map_classes: str = "top_k"          # localization map: mean of the top_k predicted classes' maps | the label's
    top_k: int = 0                      # 0: CUB's (vgg16 80, others every class); larger than C: every class

    def check(self) -> None:
        for key in ("area_weight", "fg_ce_weight"):
            if getattr(self, key) != AUTHORS:
                check_range(self, key, 0, note=" (or -1: the authors' value for the backbone)")
        check_range(self, "top_k", 0, note=" (0: the authors' value for the backbone)")
        if self.ratio_cut not in RATIO_CUTS:
            raise ValueError(f"ratio_cut must be one of {', '.join(RATIO_CUTS)}; got {self.ratio_cut!r}")
        if self.map_classes not in MAP_CLASSES:
            raise ValueError(f"map_classes must be one of {', '.join(MAP_CLASSES)}; got {self.map_classes!r}")

    def resolved(self, backbone: str, num_classes: int) -> BASConfig:
        """The table with the authors' values in place of -1 / 0 and top_k at most `num_classes`."""
        area = CUB_AREA_WEIGHT[backbone] if self.area_weight == AUTHORS else self.area_weight
        fg_ce = CUB_FG_CE_WEIGHT[backbone] if self.fg_ce_weight == AUTHORS else self.fg_ce_weight
        top_k = min(self.top_k or CUB_TOP_K.get(backbone, num_classes), num_classes)
        return BASConfig(area, fg_ce, self.ratio_cut, self.map_classes, top_k)


def background_ratio(erased: torch.Tensor, full: torch.Tensor, cut: str = "ge") -> torch.Tensor:
    """(B,) erased / (full + 1e-8), 0 where erased >= full ("ge") or > full ("gt"); `full` is detached."""
    full = full.detach()
    drop = erased >= full if cut == "ge" else erased > full
    return torch.where(drop, torch.zeros_like(erased), erased / (full + EPS))


def top_k_map(maps: torch.Tensor, logits: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C, H, W) maps, (B, C) logits -> (B, H, W) float32: the mean of the maps of the k highest logits."""
    top = logits.topk(k, dim=1).indices
    return maps.float().gather(1, top[:, :, None, None].expand(-1, -1, *maps.shape[-2:])).mean(dim=1)


def detached_call(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """module(x) with its parameters detached (no gradient reaches them) and copies of its buffers
    (its BatchNorm running statistics stay as they are): the authors' pass through deep copies."""
    state = {name: p.detach() for name, p in module.named_parameters()}
    state |= {name: b.clone() for name, b in module.named_buffers()}
    return functional_call(module, state, (x,))


def _init_conv(conv: nn.Conv2d, backbone: str) -> None:
    """The authors' init: N(0, 0.02) weights and PyTorch's default bias on vgg16, else Xavier-uniform, zero bias."""
    if backbone == "vgg16":
        nn.init.normal_(conv.weight, 0.0, 0.02)
    else:
        nn.init.xavier_uniform_(conv.weight)
        nn.init.zeros_(conv.bias)


class BAS(WSOLModel):
    """The BAS model. Outputs: logits (B, C), logits_fg (B, C), fg_maps (B, C, H, W) (the generator's
    sigmoid maps at the mid level), fg (B, H, W) (the map of the labels, their argmax without) and, in
    training mode, erased_logits (B, C), the class scores of the erased features."""

    localizers = ("inforward",) + POST_HOC
    default_cam_layer = "classifier.3"  # Grad-CAM: the ReLU before the classifier's 1x1 class conv

    def __init__(self, backbone: MidTail, num_classes: int, head_channels: int = 1024,
                 hparams: BASConfig | None = None):
        super().__init__(backbone, smooth_features=False)
        self.hparams = (hparams or BASConfig()).resolved(backbone.name, num_classes)
        self.classifier = nn.Sequential(
            nn.Conv2d(backbone.out_channels, head_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(head_channels, head_channels, kernel_size=3, padding=1), nn.ReLU(inplace=True),
            nn.Conv2d(head_channels, num_classes, kernel_size=1), nn.ReLU(inplace=True))
        self.fg_head = nn.Sequential(nn.Conv2d(backbone.mid_channels, num_classes, kernel_size=3, padding=1),
                                     nn.Sigmoid())
        for m in (*self.classifier, *self.fg_head):
            if isinstance(m, nn.Conv2d):
                _init_conv(m, backbone.name)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        mid = self.backbone.mid(x)
        tail = self.backbone.tail()
        class_maps = self.classifier(tail(mid))
        logits = class_maps.mean(dim=(2, 3))
        fg_maps = self.fg_head(mid)
        fg = select_class(fg_maps, logits.argmax(dim=1) if labels is None else labels)[:, None]
        guided = class_maps * F.adaptive_avg_pool2d(fg, class_maps.shape[-2:])
        out = {"logits": logits, "logits_fg": guided.mean(dim=(2, 3)), "fg_maps": fg_maps, "fg": fg[:, 0]}
        if self.training:
            erased = detached_call(nn.Sequential(tail, self.classifier), mid.detach() * (1 - fg))
            out["erased_logits"] = erased.mean(dim=(2, 3))
        return out

    def loss(self, out: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """CE(logits) + fg_ce_weight CE(logits_fg) + mean ratio + area_weight mean area; each term
        (unweighted) as loss_cls, loss_fg_cls, loss_ratio, loss_area."""
        h = self.hparams
        rows = torch.arange(len(targets), device=targets.device)
        ratio = background_ratio(out["erased_logits"].float()[rows, targets], out["logits"].float()[rows, targets],
                                 h.ratio_cut)
        terms = {"loss_cls": cross_entropy(out["logits"], targets),
                 "loss_fg_cls": cross_entropy(out["logits_fg"], targets),
                 "loss_ratio": ratio.mean(), "loss_area": out["fg"].float().mean()}
        total = (terms["loss_cls"] + h.fg_ce_weight * terms["loss_fg_cls"] + terms["loss_ratio"]
                 + h.area_weight * terms["loss_area"])
        return {"loss": total, **terms}

    def class_maps(self, out: dict, labels: torch.Tensor) -> torch.Tensor:
        """The generator's foreground maps (B, h, w) float32 of `labels`."""
        return select_class(out["fg_maps"], labels).float()

    def localization_map(self, out: dict, labels: torch.Tensor) -> torch.Tensor:
        if self.hparams.map_classes == "label":
            return minmax_normalize(self.class_maps(out, labels))
        return minmax_normalize(top_k_map(out["fg_maps"], out["logits"], self.hparams.top_k))


@METHODS.register("bas")
class BASMethod(Method):
    """BAS on the mid/tail variant of any backbone; its hyperparameters are the [bas] table."""

    Config = BASConfig
    backbones = tuple(MID_TAIL_BACKBONES)

    def build_backbone(self, model_cfg) -> MidTail:
        return mid_tail_backbone(model_cfg)

    def build_model(self, backbone: MidTail) -> BAS:
        return BAS(backbone, self.num_classes, self.cfg.model.head_channels, self.hparams)
