"""DA-WSOL: WSOL as domain adaptation (Zhu et al., CVPR 2022), as the authors' code does it.

The model is a CAM classifier split as the authors split it: an extractor to the pixel features F
(B, K, h, w) and a 1x1-conv classifier on their GAP, the image features f = GAP(F) (B, K):
logits = W f + b. The image features are the source domain, the pixel features the target domain.
For each image the target-sample assigner (`TargetSampleAssigner`) clusters its h*w pixel features
into three sets by k-means started from [the universum centre cache, f, the class centre cache]:
cluster 0 the universum (background), cluster 1 the source-like pixels, cluster 2 the target pixels.
From the second epoch after `start_epoch` on the loss is

    L = CE(logits, y) + beta * MMD(source, target) + univer * mean(universum pixel features)

with source = [f, sample_num_source - 1 random pixels of cluster 1] and target = sample_num_target
random pixels of cluster 2 of each image that has that many (`count` images; the others are
skipped), the MMD averaged over them (`mmd_linear`), and the universum term the mean of every
element of every universum pixel of the batch. The localization map is the classifier applied to
every pixel, at the image's class, min-max normalised (the authors' `return_cam`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from acol.methods.base import METHODS, Method, check_range
from acol.models.wsol import POST_HOC, ClassActivationHead, WSOLModel, cross_entropy


@dataclass
class DAWSOLConfig:
    beta: float = 0.3                   # weight of the MMD between the source and target samples
    univer: float = 0.3                 # weight of the universum regulariser
    start_epoch: int = 0                # the DA losses are on in the 0-based epochs > start_epoch (the authors'
                                        # flag): start_epoch + 1 epochs of plain CE first; -1: on from the start
    sample_num_source: int = 32         # source samples per image: its image feature + this - 1 source-like pixels
    sample_num_target: int = 32         # target samples per image (one of the two sample numbers divides the other)
    kernel_mul: float = 2.0             # the MMD's Gaussian bandwidths: bandwidth x kernel_mul^(j - kernel_num // 2)
    kernel_num: int = 5                 # ... for j = 0 .. kernel_num - 1

    def check(self) -> None:
        for key in ("beta", "univer"):
            check_range(self, key, 0)
        check_range(self, "start_epoch", -1)
        for key in ("sample_num_source", "sample_num_target", "kernel_num"):
            check_range(self, key, 1)
        check_range(self, "kernel_mul", 1, note=" and finite")
        small, large = sorted((self.sample_num_source, self.sample_num_target))
        if large % small:
            raise ValueError(f"sample_num_source and sample_num_target: one must divide the other (the MMD tiles the "
                             f"smaller set); got {self.sample_num_source} and {self.sample_num_target}")


def mmd_linear(source: torch.Tensor, target: torch.Tensor, kernel_mul: float = 2.0,
               kernel_num: int = 5) -> torch.Tensor:
    """The linear-time multi-kernel MMD of each of K pairs of sets: source (K, n_s, D), target (K, n_t, D)
    -> (K,) float32. The smaller set is tiled to the larger one's size n (one size must divide the
    other). Over the 2n points x of a pair, the bandwidth is sum_ij |x_i - x_j|^2 / (4n^2 - 2n) (no
    gradient) divided by kernel_mul^(kernel_num // 2), k(a, b) = sum_j exp(-|a - b|^2 / (bandwidth
    kernel_mul^j)), and MMD = mean_i k(s_i, s_i') + k(t_i, t_i') - k(s_i, t_i') - k(s_i', t_i), i' = i + 1 mod n."""
    source, target = source.float(), target.float()
    n_source, n_target = source.shape[1], target.shape[1]
    if n_source < n_target:
        source = source.repeat(1, n_target // n_source, 1)
    elif n_target < n_source:
        target = target.repeat(1, n_source // n_target, 1)
    n = source.shape[1]
    with torch.no_grad():  # sum_ij |x_i - x_j|^2 = 2N sum_i |x_i - mean|^2 over the N = 2n points
        points = torch.cat([source, target], dim=1)
        spread = (points - points.mean(dim=1, keepdim=True)).pow(2).sum(dim=(1, 2)) * (2 * 2 * n)
        bandwidth = spread / ((2 * n) ** 2 - 2 * n) / kernel_mul ** (kernel_num // 2)
    bandwidths = [(bandwidth * kernel_mul ** j).unsqueeze(1) for j in range(kernel_num)]

    def kernel(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        distance = (a - b).pow(2).sum(dim=2)
        return sum(torch.exp(-distance / width) for width in bandwidths)

    following = torch.roll(torch.arange(n, device=source.device), -1)
    source_next, target_next = source[:, following], target[:, following]
    terms = kernel(source, source_next) + kernel(target, target_next)
    terms = terms - (kernel(source, target_next) + kernel(source_next, target))
    return terms.mean(dim=1)


def _assign(samples: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    """(N,) the nearest centre of each sample (the first on ties), from |c|^2 - 2 x.c as sklearn."""
    scores = torch.addmm(centers.pow(2).sum(dim=1).expand(len(samples), -1), samples, centers.T, alpha=-2.0)
    return scores.argmin(dim=1)


def kmeans(samples: torch.Tensor, init: torch.Tensor, max_iter: int = 300, tol: float = 1e-4
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from the centres `init` (k, D): samples (N, D) -> (labels (N,), centres (k, D)),
    step for step sklearn's `k_means(samples, k, init=init, n_init=1)` (its `_kmeans_single_lloyd`):
    in the samples' dtype, on the samples minus their mean; every iteration assigns labels with the
    old centres and averages them into new ones, an empty cluster taking the sample farthest from
    its centre (`_relocate_empty_clusters_dense`); it stops when the labels repeat (strict
    convergence) or the squared centre shift is <= tol x the mean per-feature variance, and in the
    second case assigns the labels once more with the final centres."""
    mean = samples.mean(dim=0)
    samples = samples - mean
    centers = init.to(samples.dtype) - mean
    threshold = samples.var(dim=0, unbiased=False).mean() * tol
    labels_old = torch.full((len(samples),), -1, dtype=torch.long, device=samples.device)
    strict = False
    for _ in range(max_iter):
        labels = _assign(samples, centers)
        sums = torch.zeros_like(centers).index_add_(0, labels, samples)
        counts = torch.bincount(labels, minlength=len(centers)).to(samples.dtype)
        empty = (counts == 0).nonzero().flatten().tolist()
        if empty:
            distances = (samples - centers[labels]).pow(2).sum(dim=1)
            if distances.max() > 0:
                for cluster, far in zip(empty, distances.topk(len(empty)).indices.tolist()):
                    sums[labels[far]] -= samples[far]
                    sums[cluster] = samples[far]
                    counts[labels[far]] -= 1
                    counts[cluster] = 1
        new_centers = torch.where(counts.unsqueeze(1) > 0, sums / counts.clamp(min=1).unsqueeze(1), sums)
        shift = (new_centers - centers).pow(2).sum()
        centers = new_centers
        if torch.equal(labels, labels_old):
            strict = True
            break
        if shift <= threshold:
            break
        labels_old = labels
    if not strict:
        labels = _assign(samples, centers)
    return labels, centers + mean


class TargetSampleAssigner(nn.Module):
    """The TSA: the class centre and universum centre caches (float64 running means, buffers, so in
    the state dict) and the per-image split of the pixel features into source, target and universum
    samples. Images go one by one: each image's k-means starts from the caches its predecessors
    updated. The sampling permutations come from torch's global CPU generator (target first, then
    source, two per image whether or not the image is kept)."""

    def __init__(self, num_classes: int, channels: int, sample_num_source: int, sample_num_target: int):
        super().__init__()
        self.sample_num_source, self.sample_num_target = sample_num_source, sample_num_target
        self.register_buffer("class_centers", torch.zeros(num_classes, channels, dtype=torch.float64))
        self.register_buffer("class_counts", torch.zeros(num_classes, dtype=torch.float64))
        self.register_buffer("universum_center", torch.zeros(channels, dtype=torch.float64))
        self.register_buffer("universum_count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def cluster(self, image_feature: torch.Tensor, pixels: torch.Tensor, label: int) -> torch.Tensor:
        """One image: image_feature (K,), pixels (h*w, K) -> the (h*w,) cluster of each pixel; updates the
        caches with the k-means centres (a class seen for the first time starts at the image feature)."""
        if self.class_counts[label] == 0:
            self.class_counts[label] = 1
            self.class_centers[label] = image_feature.double()
        init = torch.stack([self.universum_center, image_feature.double(), self.class_centers[label]])
        clusters, centers = kmeans(pixels.float(), init.float())
        self.class_counts[label] += 1
        self.class_centers[label] = _running_mean(self.class_centers[label], centers[1], self.class_counts[label])
        self.universum_count += 1
        self.universum_center.copy_(_running_mean(self.universum_center, centers[0], self.universum_count))
        return clusters

    def forward(self, image_features: torch.Tensor, pixel_features: torch.Tensor, labels: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """image_features (B, K), pixel_features (B, K, h, w), labels (B,) -> source (count, n_s, K), target
        (count, n_t, K) of the kept images and the universum pixels (N_u, K) of all images, with gradients."""
        pixels = pixel_features.flatten(2).transpose(1, 2)
        if pixels.shape[1] < 3:
            raise ValueError(f"dawsol clusters each image's pixel features into 3 clusters: its feature maps need at "
                             f"least 3 pixels; got {tuple(pixel_features.shape[2:])} (a larger data.crop_size)")
        sources, targets, universum = [], [], []
        for feature, image_pixels, label in zip(image_features, pixels, labels.tolist()):
            clusters = self.cluster(feature.detach(), image_pixels.detach(), label)
            source_like, target = image_pixels[clusters == 1], image_pixels[clusters == 2]
            target_order, source_order = torch.randperm(len(target)), torch.randperm(len(source_like))
            if len(target) >= self.sample_num_target and len(source_like) >= self.sample_num_source - 1:
                picked = source_like[source_order[:self.sample_num_source - 1].to(source_like.device)]
                sources.append(torch.cat([feature.unsqueeze(0), picked]))
                targets.append(target[target_order[:self.sample_num_target].to(target.device)])
            universum.append(image_pixels[clusters == 0])
        channels = pixels.shape[2]
        if not sources:
            return pixels.new_zeros(0, 1, channels), pixels.new_zeros(0, 1, channels), torch.cat(universum)
        return torch.stack(sources), torch.stack(targets), torch.cat(universum)


def _running_mean(mean: torch.Tensor, value: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """The cache update value / count + mean (count - 1) / count, in float64."""
    return value.double() / count + mean * ((count - 1) / count)


class DAWSOLModel(WSOLModel):
    """The authors' extractor + CAMClassifier: backbone -> the hidden convs of a class-activation head
    (Conv3x3 + ReLU per width, dropout before each with `dropout`; none: the backbone features) = the
    pixel features F; logits = the head's 1x1 conv on GAP(F); cam_a = that conv on every pixel."""

    localizers = ("inforward",) + POST_HOC

    def __init__(self, backbone: nn.Module, num_classes: int, widths: tuple[int, ...], hparams: DAWSOLConfig,
                 smooth_features: bool = False, dropout: float = 0.0):
        super().__init__(backbone, smooth_features)
        self.head = ClassActivationHead(backbone.out_channels, widths, num_classes, dropout)
        self.hparams = hparams
        self.tsa = TargetSampleAssigner(num_classes, widths[-1] if widths else backbone.out_channels,
                                        hparams.sample_num_source, hparams.sample_num_target)
        self.default_cam_layer = f"head.{2 * len(widths) - 1}" if widths else "smoothing"  # the ReLU giving F
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    @property
    def adapting(self) -> bool:
        """Whether the DA losses are on: in the 0-based epochs after `start_epoch`."""
        return self.epoch > self.hparams.start_epoch

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> dict:
        pixel_features = self.head.hidden(self.features(x))
        image_features = F.adaptive_avg_pool2d(pixel_features, 1)
        classifier = self.head[-1]
        return {"logits": classifier(image_features).flatten(1), "cam_a": classifier(pixel_features),
                "pixel_features": pixel_features, "image_features": image_features.flatten(1)}

    def loss(self, out: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"loss", "loss_cls", "loss_mmd", "loss_universum"}, float32; the DA terms are 0 before they start,
        and each is 0 when its set is empty (no image kept / no universum pixel)."""
        loss_cls = cross_entropy(out["logits"], targets)
        zero = loss_cls.new_zeros(())
        loss_mmd = loss_universum = zero
        if self.training and self.adapting:
            hp = self.hparams
            source, target, universum = self.tsa(out["image_features"].float(), out["pixel_features"].float(), targets)
            if len(source):
                loss_mmd = mmd_linear(source, target, hp.kernel_mul, hp.kernel_num).mean()
            if universum.numel():
                loss_universum = universum.mean()
        loss = loss_cls + self.hparams.beta * loss_mmd + self.hparams.univer * loss_universum
        return {"loss": loss, "loss_cls": loss_cls, "loss_mmd": loss_mmd, "loss_universum": loss_universum}


@METHODS.register("dawsol")
class DAWSOL(Method):
    """DA-WSOL on the CAM classifier of `model.cam_head`: conv1x1 (two Conv3x3 + ReLU of head_channels,
    with head_dropout: the authors' inception_v3 extractor), fc with cam_conv (one: our wsolevaluation
    VGG16 CAM's conv6), fc without (the backbone features: the authors' resnet50 extractor)."""

    Config = DAWSOLConfig

    def build_model(self, backbone: nn.Module) -> DAWSOLModel:
        model_cfg = self.cfg.model
        hidden = {"conv1x1": 2, "fc": 1 if model_cfg.cam_conv else 0}[model_cfg.cam_head]
        return DAWSOLModel(backbone, self.num_classes, (model_cfg.head_channels,) * hidden, self.hparams,
                           model_cfg.smooth_features, model_cfg.head_dropout)
