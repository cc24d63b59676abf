"""CutMix (Yun et al., ICCV 2019), as wsolevaluation implements it.

With probability `prob` a training batch is mixed: lambda ~ Beta(beta, beta); a box with sides
floor(H sqrt(1 - lambda)) x floor(W sqrt(1 - lambda)), centred on a uniformly drawn pixel and clipped to
the image, is cut from a permutation of the batch and pasted in; the targets are the labels mixed by
the pasted area, lambda' = 1 - box area / (H W), so the loss is lambda' CE(y) + (1 - lambda') CE(y_perm)
(cross-entropy against the mixed one-hot targets). The forward pass and the training accuracy see
the image's own labels. Test images are not mixed; the model is the plain CAM classifier.

Every draw (the gate, lambda, the permutation, the centre) comes from torch's global CPU generator,
which the checkpoints save, so a resumed run mixes exactly as an uninterrupted one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from acol.methods.base import METHODS, check_range
from acol.methods.cam import CAMClassifierMethod


@dataclass
class CutMixConfig:
    beta: float = 1.0                   # lambda ~ Beta(beta, beta) (0: no mixing)
    prob: float = 1.0                   # probability that a batch is mixed

    def check(self) -> None:
        check_range(self, "beta", 0, note=" (0: no mixing)")
        check_range(self, "prob", 0, 1)


def cut_box(height: int, width: int, lam: float, centre_y: int, centre_x: int) -> tuple[int, int, int, int]:
    """(y0, y1, x0, x1) of the pasted box: cut sides floor(H s) x floor(W s) with s = sqrt(1 - lam),
    [c - cut // 2, c + cut // 2) along each axis, clipped to the image (wsolevaluation's rand_bbox)."""
    scale = math.sqrt(1.0 - lam)
    cut_h, cut_w = int(height * scale), int(width * scale)
    y0, y1 = min(max(centre_y - cut_h // 2, 0), height), min(max(centre_y + cut_h // 2, 0), height)
    x0, x1 = min(max(centre_x - cut_w // 2, 0), width), min(max(centre_x + cut_w // 2, 0), width)
    return y0, y1, x0, x1


def paste(images: torch.Tensor, permutation: torch.Tensor, box: tuple[int, int, int, int]) -> tuple[torch.Tensor, float]:
    """(images with the box of images[permutation] pasted in, lambda' = 1 - box area / (H W)). A new tensor."""
    y0, y1, x0, x1 = box
    mixed = images.clone()
    mixed[:, :, y0:y1, x0:x1] = images[permutation, :, y0:y1, x0:x1]
    height, width = images.shape[-2:]
    return mixed, 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def mixed_targets(labels: torch.Tensor, permutation: torch.Tensor, lam: float, num_classes: int) -> torch.Tensor:
    """(B, C) class probabilities: lam one_hot(y) + (1 - lam) one_hot(y[permutation])."""
    own = F.one_hot(labels, num_classes).float()
    return lam * own + (1.0 - lam) * own[permutation]


@METHODS.register("cutmix")
class CutMix(CAMClassifierMethod):
    """CutMix: the CAM classifier trained on box-mixed batches with area-mixed targets."""

    Config = CutMixConfig

    def transform_batch(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        beta, prob = self.hparams.beta, self.hparams.prob
        if beta <= 0 or not torch.rand(()).item() < prob:
            return images, labels
        lam = torch.distributions.Beta(beta, beta).sample().item()
        permutation = torch.randperm(len(images))
        height, width = images.shape[-2:]
        box = cut_box(height, width, lam, int(torch.randint(height, ())), int(torch.randint(width, ())))
        permutation = permutation.to(images.device)
        mixed, lam = paste(images, permutation, box)
        return mixed, mixed_targets(labels, permutation, lam, self.num_classes)
