"""ACoL's branch A alone: one 1x1-conv class-activation head, no erasing (the official vgg_v0)."""
from __future__ import annotations

from torch import nn

from acol.methods.base import METHODS, Method
from acol.models.wsol import SingleBranch


@METHODS.register("single")
class Single(Method):
    """The `SingleBranch` model; its in-forward map is its class map."""

    def build_model(self, backbone: nn.Module) -> SingleBranch:
        m = self.cfg.model
        return SingleBranch(backbone, self.num_classes, m.head_channels, m.smooth_features, m.head_dropout)
