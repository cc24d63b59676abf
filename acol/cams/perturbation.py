"""Perturbation localizers: maps from the class scores of masked or ablated copies of each image,
forward passes only (no gradients). The interface and rules are those of acol.cams.localizers.

| name | map | forwards per image |
|---|---|---|
| scorecam | ReLU(sum_k a_k A^k), a_k = P(c | x * H^k), H^k = min-max of A^k upsampled to the input | 1 + K, less with flat channels |
| ablationcam | ReLU(sum_k w_k A^k), w_k = (y^c - y^c_k) / y^c, y^c_k: the logit with channel k zeroed | 1 + K (the K from the layer on), less with zero channels |
| rise | sum_i P(c | x * M_i) M_i / (N p) over N random smooth masks M_i, input resolution | 1 + N |

K is the hooked layer's channel count (`layer`, default the model's `default_cam_layer`). The copies
(image-major for the K-methods, mask-major for RISE) are forwarded `chunk` at a time under
`torch.no_grad()`, each with its image's forward labels, so a map does not depend on the batch or
the chunk size; a call of many chunks shows a progress bar on a terminal. Masks multiply the
normalised image (a masked pixel is the dataset mean colour). `forwards_per_image` gives a call's
cost in forward passes (set by the last call for the K-methods). The `chunk` defaults (Score-CAM
8, Ablation-CAM 64, RISE 8) are the largest whose peak memory stays within 2x one forward and
backward of a batch of 2 (VGG16 CAM at 224 px; `scripts/bench_chunks.py`, docs/performance.md).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from acol.cams.hooks import capture, eval_mode, substitute
from acol.cams.localizers import LOCALIZERS, Localizer, class_logits, cpu_channels_last
from acol.cams.ops import minmax_normalize
from acol.progress import progress

PROGRESS_MIN_CHUNKS = 10  # fewer chunks than this: no progress bar


class Perturbation(Localizer):
    """Chunked forward passes of image copies; the class scores they give."""

    def __init__(self, target: str, layer: str | None, chunk: int):
        super().__init__(target, layer)
        if chunk < 1:
            raise ValueError(f"chunk (masked images per forward) must be >= 1; got {chunk}")
        self.chunk = chunk
        self.forwards_per_image: int | None = None

    def chunks(self, copies: torch.Tensor, group: int | None = None):
        """`copies` (n,) CPU indices in pieces of at most `chunk`; with `group`, a piece holds only
        copies of one value of copies // group (one image's, for image-major copies of `group`)."""
        groups = [copies] if group is None else copies.split(torch.unique_consecutive(
            copies.div(group, rounding_mode="floor"), return_counts=True)[1].tolist())
        pieces = [piece for g in groups for piece in g.split(self.chunk)]
        if len(pieces) >= PROGRESS_MIN_CHUNKS:
            pieces = progress(pieces, f"{type(self).__name__} chunks")
        yield from pieces

    def class_scores(self, model, copies, labels, classes, prob: bool) -> torch.Tensor:
        """(n,) float32: each copy's logit of its class, or its softmax probability."""
        logits = class_logits(model, cpu_channels_last(copies), self.forward_labels(labels)).float()
        if prob:
            logits = logits.softmax(dim=1)
        return logits.gather(1, classes[:, None])[:, 0]

    def activation(self, model, images, labels):
        """The plain forward: (logits, classes, the hooked layer's output (B, K, h, w) as computed)."""
        with capture(self.target_layer(model)) as activation:
            logits = class_logits(model, images, self.forward_labels(labels))
        if activation.value.dim() != 4:
            raise ValueError(f"layer output must be (B, K, h, w); got {tuple(activation.value.shape)}")
        return logits, self.classes(logits, labels), activation.value.detach()


SCORECAM_WEIGHTS = ("prob", "softmax_logit")


@LOCALIZERS.register("scorecam")
class ScoreCAM(Perturbation):
    """Score-CAM (Wang et al., CVPR-W 2020). Each channel A^k, upsampled to the input (bilinear,
    align_corners=False) and min-max normalised to H^k, masks the image; the weight of A^k is the
    score of the masked image x * H^k. weights="prob" (default): a_k = P(c | x * H^k), the softmax
    probability, as the authors' code (haofanwang/Score-CAM, cam/scorecam.py) computes the paper's
    increase of confidence, without the baseline term and giving flat channels weight 0.
    weights="softmax_logit": a = softmax over k of the raw logits of class c (what pytorch-grad-cam
    and torchcam compute; their baseline term cancels in the softmax). map = ReLU(sum_k a_k A^k)
    at the layer's resolution. A flat channel's mask is all zeros: with weights="prob" it gets no
    forward (its weight is 0), with "softmax_logit" the logit of the zero image, one forward per image
    for all its flat channels. The cost is up to K forwards of the whole network for both weightings:
    the masked images differ from the input on."""

    def __init__(self, target: str = "gt", layer: str | None = None, chunk: int = 16, weights: str = "prob"):
        super().__init__(target, layer, chunk)
        if weights not in SCORECAM_WEIGHTS:
            raise ValueError(f"scorecam weights must be one of {', '.join(SCORECAM_WEIGHTS)}; got {weights!r}")
        self.weights = weights

    def raw(self, model, images, labels):
        with eval_mode(model), torch.no_grad():
            logits, classes, act = self.activation(model, images, labels)
            act = act.float()
            b, k = act.shape[:2]
            varies = (act.amax(dim=(2, 3)) > act.amin(dim=(2, 3))).flatten().cpu()  # (B K,), image-major
            copies = torch.arange(b * k)
            scores = torch.zeros(b * k, device=act.device)
            prob = self.weights == "prob"
            for idx in self.chunks(copies[varies]):
                image = idx // k
                up = F.interpolate(act.flatten(0, 1)[idx, None], size=images.shape[-2:], mode="bilinear",
                                   align_corners=False)
                masks = minmax_normalize(up).to(images.dtype)
                scores[idx] = self.class_scores(model, images[image] * masks, labels[image], classes[image], prob)
            flat = copies[~varies]
            if not prob and len(flat):
                scores[flat] = self.zero_image_scores(model, images, labels, classes, flat // k)
        scores = scores.view(b, k)
        weights = scores if prob else scores.softmax(dim=1)  # prob: 0 where flat
        self.forwards_per_image = 1 + k
        return logits, F.relu(torch.einsum("bk,bkhw->bhw", weights, act))

    def zero_image_scores(self, model, images, labels, classes, owners: torch.Tensor) -> torch.Tensor:
        """(n,) the class logit of the all-zero image for each of n flat channels, `owners` (n,) their
        images: a flat channel's mask is all zeros, so its copy is the zero image whatever the channel,
        and one forward per image (with its labels) scores all of that image's flat channels."""
        unique, which = torch.unique(owners, return_inverse=True)
        scores = torch.empty(len(unique), device=images.device)
        for idx in self.chunks(torch.arange(len(unique))):
            image = unique[idx]
            scores[idx] = self.class_scores(model, torch.zeros_like(images[image]), labels[image], classes[image],
                                            prob=False)
        return scores[which]


@LOCALIZERS.register("ablationcam")
class AblationCAM(Perturbation):
    """Ablation-CAM (Desai & Ramaswamy, WACV 2020): w_k = (y^c - y^c_k) / y^c with y^c the raw logit
    of class c and y^c_k the logit with channel k of the layer set to zero (a forward hook, one
    channel per copy), map = ReLU(sum_k w_k A^k) at the layer's resolution. A logit of exactly 0
    divides by 1 instead (the same map after min-max). A channel that is zero everywhere gets no
    forward: zeroing it leaves the logit as it is, so its weight is 0.

    The K forwards run from the layer on: each forward holds one image's copies, the layers before
    the hooked one run on the image alone (batch 1), and the layer's output is replaced by the
    copies of its recorded activation, one channel zeroed in each; what the model takes from before
    the layer broadcasts over the copies (ACoL's branch B, a residual sum). A model where it does
    not (a concatenation across the layer) runs every copy through the whole network instead."""

    def __init__(self, target: str = "gt", layer: str | None = None, chunk: int = 64):
        super().__init__(target, layer, chunk)

    def raw(self, model, images, labels):
        with eval_mode(model), torch.no_grad():
            logits, classes, act = self.activation(model, images, labels)
            b, k = act.shape[:2]
            y = logits.float().gather(1, classes[:, None])  # (B, 1)
            ablated = y.expand(b, k).flatten().clone()  # an all-zero channel: zeroing it changes nothing
            live = act.flatten(2).ne(0).any(dim=2).flatten().cpu()  # (B K,), image-major
            from_layer = True
            with substitute(self.target_layer(model)) as layer:
                for idx in self.chunks(torch.arange(b * k)[live], group=k):
                    if from_layer:
                        try:
                            ablated[idx] = self.ablated_scores(model, layer, images, labels, classes, act, idx, k, True)
                            continue
                        except RuntimeError:  # the model does not broadcast a batch-1 input over the copies
                            from_layer = False
                    ablated[idx] = self.ablated_scores(model, layer, images, labels, classes, act, idx, k, False)
        weights = (y - ablated.view(b, k)) / torch.where(y == 0, 1, y)
        self.forwards_per_image = 1 + k
        return logits, F.relu(torch.einsum("bk,bkhw->bhw", weights, act.float()))

    def ablated_scores(self, model, layer, images, labels, classes, act, idx, k, from_layer: bool):
        """(n,) the class logits of one image's n copies `idx` (image-major over K channels), copy j
        with channel idx[j] % k of the layer zeroed; the input is the image once (`from_layer`) or n times."""
        image = idx // k
        layer.value = act[image]  # a fresh (n, K, h, w) tensor: in-place ops downstream change only it
        layer.value[torch.arange(len(idx)), idx % k] = 0
        return self.class_scores(model, images[image[:1] if from_layer else image], labels[image], classes[image],
                                 prob=False)


@LOCALIZERS.register("rise")
class RISE(Perturbation):
    """RISE (Petsiuk et al., BMVC 2018): saliency = sum_i P(c | x * M_i) M_i / (N p), at the input
    resolution. Mask i: an s x s grid of cells kept with probability p, upsampled bilinearly
    (align_corners=False) to (s + 1) * ceil(H / s) x (s + 1) * ceil(W / s), then cropped to H x W
    at a random shift in [0, cell). The N masks come from a CPU generator seeded with `seed`: the
    same masks for every image, call and device. Paper defaults N = 4000-8000, s = 7, p = 0.5;
    here N = 1000 so that CPUs manage (1000 forwards per image)."""

    def __init__(self, target: str = "gt", layer: str | None = None, chunk: int = 16, n_masks: int = 1000,
                 grid: int = 7, p: float = 0.5, seed: int = 0):
        super().__init__(target, layer, chunk)
        if n_masks < 1 or grid < 1:
            raise ValueError(f"rise n_masks and grid must be >= 1; got n_masks={n_masks}, grid={grid}")
        if not 0 < p <= 1:
            raise ValueError(f"rise p (probability of keeping a cell) must be in (0, 1]; got {p}")
        self.n_masks, self.grid, self.p, self.seed = n_masks, grid, p, seed
        self.forwards_per_image = 1 + n_masks

    def mask_parameters(self, size: tuple[int, int]):
        """The N binary grids (N, 1, s, s) and the crop offsets (N, 2) for an input of `size`."""
        g = torch.Generator().manual_seed(self.seed)
        grids = (torch.rand(self.n_masks, 1, self.grid, self.grid, generator=g) < self.p).float()
        offsets = [torch.randint(0, math.ceil(n / self.grid), (self.n_masks,), generator=g) for n in size]
        return grids, torch.stack(offsets, dim=1)

    def masks(self, grids: torch.Tensor, offsets: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        """(n, H, W) float32 masks in [0, 1] from n grids and their offsets."""
        h, w = size
        cells = [math.ceil(n / self.grid) for n in size]
        up = F.interpolate(grids, size=[(self.grid + 1) * c for c in cells], mode="bilinear", align_corners=False)
        return torch.stack([m[0, y:y + h, x:x + w] for m, (y, x) in zip(up, offsets.tolist())])

    def all_masks(self, size: tuple[int, int]) -> torch.Tensor:
        """The N masks (N, H, W) a call on an input of `size` uses."""
        return self.masks(*self.mask_parameters(size), size)

    def raw(self, model, images, labels):
        size = tuple(images.shape[-2:])
        grids, offsets = self.mask_parameters(size)
        b = len(images)
        saliency = torch.zeros(b, *size, device=images.device)
        with eval_mode(model), torch.no_grad():
            logits = class_logits(model, images, self.forward_labels(labels))
            classes = self.classes(logits, labels)
            for idx in self.chunks(torch.arange(self.n_masks * b)):
                mask, image = idx // b, idx % b  # mask-major
                unique, which = torch.unique(mask, return_inverse=True)
                masks = self.masks(grids[unique], offsets[unique], size).to(images.device)[which]
                scores = self.class_scores(model, images[image] * masks[:, None].to(images.dtype), labels[image],
                                           classes[image], prob=True)
                saliency.index_add_(0, image.to(images.device), scores[:, None, None] * masks)
        return logits, saliency / (self.n_masks * self.p)
