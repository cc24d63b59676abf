"""The method interface: a WSOL method is a `Method` subclass registered by name.

    @METHODS.register("has")
    class HaS(Method):
        Config = HaSConfig                     # the [has] config table (a dataclass), or None
        def build_model(self, backbone): ...   # its model on any backbone (a WSOLModel)
        def build_backbone(self, model_cfg): ...  # optional: a variant of the backbone (BAS: cut in two)
        def transform_batch(self, images, labels): ...  # optional: what it does to a training batch

The training loop calls `transform_batch` on every training batch (after normalisation, before the
forward pass) and `model.loss(out, targets)`; evaluation and the localizers use the model alone. A
method that `trains_on_masks` (the few-shot baseline) gets each training image's foreground mask,
cropped and flipped with it, as its targets instead of the labels.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from acol.config import ConfigError
from acol.models.backbones import BACKBONES
from acol.models.external import external_backbone, is_external
from acol.models.wsol import WSOLModel
from acol.registry import Registry

METHODS = Registry("method")


class Method:
    """A WSOL method for one config and number of classes.

    Subclasses set `Config`, the dataclass of the method's `[<name>]` config table (typed fields with
    defaults and a `check()` that raises ValueError naming the field for a bad value), or None for a
    method without hyperparameters; they implement `build_model` and may override `transform_batch`.
    `self.hparams` is the method's table (an instance of `Config`), `self.cfg` the whole config.
    """

    Config: type | None = None
    backbones: tuple[str, ...] | None = None  # the model.backbone values it has a layout for (None: any)
    trains_on_masks = False  # True: the targets are (B, H, W) uint8 foreground masks (1 in, 0 out, 255 ignore)

    def __init__(self, cfg, num_classes: int):
        self.cfg = cfg
        self.hparams = cfg.method
        self.num_classes = num_classes

    def build_model(self, backbone: nn.Module) -> WSOLModel:
        """The method's model on `backbone` (built from cfg.model, pretrained weights loaded)."""
        raise NotImplementedError

    def build_backbone(self, model_cfg) -> nn.Module:
        """The backbone of model.backbone before its pretrained weights load (default: the registry's, or
        timm's / torchvision's for a timm: / torchvision: name: acol.models.external)."""
        if is_external(model_cfg.backbone):
            return external_backbone(model_cfg)
        return BACKBONES.get(model_cfg.backbone)(model_cfg)

    def transform_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Train time only: images (B, 3, H, W), normalised, and labels (B,) (with `trains_on_masks`: the
        masks) -> (images, targets): the batch the model sees and the loss's targets, (B,) class indices
        or (B, C) class probabilities (or the masks).
        The forward pass and the training accuracy still use `labels`. Default: the batch unchanged."""
        return images, labels

    def model(self) -> WSOLModel:
        """The model of this config: the backbone (pretrained weights loaded), the method's layers on
        it, new layers initialised as `model.head_init` says and, with `model.pretrained_classifier`,
        the ImageNet classifier loaded into the FC."""
        model_cfg = self.cfg.model
        backbone = self.build_backbone(model_cfg)
        if model_cfg.pretrained:
            backbone.load_pretrained(model_cfg.pretrained)
        model = self.build_model(backbone)
        if model_cfg.head_init == "wsolevaluation":
            model.init_like_wsolevaluation()
        if model_cfg.pretrained_classifier:
            load_pretrained_classifier(model, model_cfg)
        return model


def check_range(table, key: str, low: float, high: float | None = None, note: str = "") -> None:
    """For a `Config.check()`: ValueError "<key> must be in [low, high]; got v" (">= low" without `high`);
    NaN and infinity are never in range."""
    value = getattr(table, key)
    if not (low <= value < math.inf and (high is None or value <= high)):
        bound = f"in [{low:g}, {high:g}]" if high is not None else f">= {low:g}"
        raise ValueError(f"{key} must be {bound}{note}; got {value}")


def load_pretrained_classifier(model: WSOLModel, model_cfg) -> None:
    """The ImageNet FC of `model_cfg.pretrained` into `model.fc` (wsolevaluation keeps it for its
    ILSVRC ResNet50 CAM-family models); anything it cannot apply to is a ConfigError saying why."""
    fc = getattr(model, "fc", None)
    if not isinstance(fc, nn.Linear) or fc.in_features != 2048:
        raise ConfigError(f"model.pretrained_classifier needs a GAP + FC straight on the resnet50 features (a cam, "
                          f"has, cutmix or adl model with model.cam_head=fc, model.cam_conv=false); the "
                          f"{model_cfg.name} model is a {type(model).__name__}")
    state = model.backbone.pretrained_classifier(model_cfg.pretrained)
    if fc.out_features != state["weight"].shape[0]:
        raise ConfigError(f"model.pretrained_classifier: the ImageNet classifier has {state['weight'].shape[0]} "
                          f"classes, the model {fc.out_features}")
    fc.load_state_dict(state)


def build_method(cfg, num_classes: int) -> Method:
    """The method named by cfg.model.name."""
    return METHODS.get(cfg.model.name)(cfg, num_classes)


def build_model(cfg, num_classes: int) -> WSOLModel:
    """The model of cfg.model.name on cfg.model.backbone (see `Method.model`)."""
    return build_method(cfg, num_classes).model()
