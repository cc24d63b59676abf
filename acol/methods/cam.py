"""CAM (Zhou et al., CVPR 2016): a plain classifier whose class activation maps localize.

The classifier is `model.cam_head`: GAP + FC (wsolevaluation's VggCam, with `model.cam_conv`, and
ResNetCam, without) or a 1x1-conv class-map head (its InceptionCam).
"""
from __future__ import annotations

from torch import nn

from acol.methods.base import METHODS, Method
from acol.models.wsol import WSOLModel, cam_classifier


@METHODS.register("cam")
class CAM(Method):
    """The CAM baseline: plain cross-entropy training of `cam_classifier`."""

    def build_model(self, backbone: nn.Module) -> WSOLModel:
        return cam_classifier(backbone, self.num_classes, self.cfg.model)
