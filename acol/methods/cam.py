"""CAM (Zhou et al., CVPR 2016): a plain classifier whose class activation maps localize.

The classifier is `model.cam_head`: GAP + FC (wsolevaluation's VggCam, with `model.cam_conv`, and
ResNetCam, without) or a 1x1-conv class-map head (its InceptionCam). HaS, CutMix and ADL train the
same classifier (`CAMClassifierMethod`).
"""
from __future__ import annotations

from torch import nn

from acol.methods.base import METHODS, Method
from acol.models.wsol import WSOLModel, cam_classifier


class CAMClassifierMethod(Method):
    """A method whose model is the plain CAM classifier (`cam_classifier`): cam, has, cutmix, adl."""

    def build_model(self, backbone: nn.Module) -> WSOLModel:
        return cam_classifier(backbone, self.num_classes, self.cfg.model)


@METHODS.register("cam")
class CAM(CAMClassifierMethod):
    """The CAM baseline: plain cross-entropy training of the classifier."""
