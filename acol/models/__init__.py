"""Model registry: `build_model(cfg, num_classes)` builds `cfg.model.name` on `cfg.model.backbone`."""
from __future__ import annotations

from torch import nn

from acol.models.backbones import BACKBONES
from acol.models.wsol import ACoL, GAPClassifierCAM, SingleBranch
from acol.registry import Registry

MODELS = Registry("model")


@MODELS.register("acol")
def acol(backbone: nn.Module, num_classes: int, cfg) -> ACoL:
    return ACoL(backbone, num_classes, cfg.model.head_channels, cfg.model.smooth_features,
                threshold=cfg.acol.threshold, erase_with=cfg.acol.erase_with, fuse=cfg.acol.fuse,
                loss_weight_b=cfg.acol.loss_weight_b)


@MODELS.register("single")
def single(backbone: nn.Module, num_classes: int, cfg) -> SingleBranch:
    return SingleBranch(backbone, num_classes, cfg.model.head_channels, cfg.model.smooth_features)


@MODELS.register("cam")
def cam(backbone: nn.Module, num_classes: int, cfg) -> GAPClassifierCAM:
    return GAPClassifierCAM(backbone, num_classes, cfg.model.head_channels, cfg.model.smooth_features,
                            cam_conv=cfg.model.cam_conv)


def build_model(cfg, num_classes: int) -> nn.Module:
    """The model named by cfg.model (pretrained backbone weights loaded when asked for)."""
    backbone = BACKBONES.get(cfg.model.backbone)(large_feature_map=cfg.model.large_feature_map)
    if cfg.model.pretrained:
        backbone.load_pretrained(cfg.model.pretrained)
    return MODELS.get(cfg.model.name)(backbone, num_classes, cfg)
