"""ADL: Attention-based Dropout Layer (Choe & Shim, CVPR 2019), as wsolevaluation implements it.

ADL layers sit after fixed layers of the backbone (and, on Inception-v3, after the classifier's last
hidden layer). In training mode each layer takes the self-attention A = channel mean of its input
feature map F (B, C, h, w) and multiplies F by one of two maps, chosen by one draw per layer call
for the whole batch: the drop mask 1[A < threshold * max_hw A] (the most activated region erased),
with probability `drop_rate`, or the importance map sigmoid(A). In eval mode it is the identity, so
the localization map is the plain CAM classifier's (`model.cam_head`), trained with cross-entropy.
The layers have no parameters: the state dict, and the pretrained weights, keep the backbone's keys.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from acol.methods.base import METHODS, check_range
from acol.methods.cam import CAMClassifierMethod
from acol.models.wsol import WSOLModel

# Where the layers sit (wsolevaluation's placements: vgg.py's "adl" layouts, resnet.py's _ADL_POSITION,
# inception.py's InceptionAdl), as module names of the model; None stands for the classifier's last
# hidden features (the model's default_cam_layer: head_a.3, or the FC's conv).
POSITIONS = {
    "vgg16": ("backbone.features.16", "backbone.features.22", "backbone.features.29"),  # after pool3, conv4_3, conv5_3
    "resnet50": ("backbone.layer3.0", "backbone.layer4.0", "backbone.layer4.2"),
    "inception_v3": ("backbone.Mixed_5d", "backbone.Mixed_6e", None),
    "smallcnn": ("backbone.features.10", "backbone.features.13", "backbone.features.16"),  # after pool2, conv4, conv5
    "efficientnet_lite0": ("backbone.stage5.2", "backbone.stage7.0", "backbone.head.act"),  # ours: stage5, stage7, head
}


@dataclass
class ADLConfig:
    drop_rate: float = 0.75             # probability that a layer call applies the drop mask (else the importance map)
    threshold: float = 0.9              # gamma: the drop mask erases where A >= gamma x the image's maximum of A

    def check(self) -> None:
        for key in ("drop_rate", "threshold"):
            check_range(self, key, 0, 1)


def drop_mask(attention: torch.Tensor, threshold: float) -> torch.Tensor:
    """(B, 1, h, w) float: 0 where the attention is >= threshold x its per-image maximum, 1 elsewhere."""
    peak = attention.flatten(1).amax(dim=1).view(-1, 1, 1, 1)
    return (attention < threshold * peak).float()


class ADL(nn.Module):
    """The layer: identity in eval mode; in training F * (drop mask or sigmoid(A)), A = mean_c F, in
    float32. The choice is floor(U + drop_rate) with U from torch's global CPU generator (1: drop mask),
    one draw per call, as wsolevaluation; gradients flow through the importance map."""

    def __init__(self, drop_rate: float, threshold: float):
        super().__init__()
        self.drop_rate, self.threshold = drop_rate, threshold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        attention = x.float().mean(dim=1, keepdim=True)
        use_drop_mask = (torch.rand([]) + self.drop_rate).floor().item() == 1.0
        selected = drop_mask(attention, self.threshold) if use_drop_mask else torch.sigmoid(attention)
        return x * selected.to(x.dtype)

    def extra_repr(self) -> str:
        return f"drop_rate={self.drop_rate}, threshold={self.threshold}"


def _apply_adl(module: nn.Module, inputs, output: torch.Tensor) -> torch.Tensor:
    return module.adl(output)


def attach_adl(model: nn.Module, name: str, adl: ADL) -> None:
    """Run `adl` on the output of module `name` (of a Sequential: of its last layer): a child named
    `adl` of that module and a forward hook, so copies of the model carry their own."""
    module = model.get_submodule(name)
    while isinstance(module, nn.Sequential):
        module = module[-1]
    module.add_module("adl", adl)
    module.register_forward_hook(_apply_adl)


@METHODS.register("adl")
class ADLMethod(CAMClassifierMethod):
    """The CAM classifier with ADL layers at the backbone's positions (`POSITIONS`)."""

    Config = ADLConfig
    backbones = tuple(POSITIONS)

    def build_model(self, backbone: nn.Module) -> WSOLModel:
        model = super().build_model(backbone)
        for name in POSITIONS[backbone.name]:
            attach_adl(model, name or model.default_cam_layer, ADL(self.hparams.drop_rate, self.hparams.threshold))
        return model
