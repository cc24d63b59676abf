"""Joint image / box / mask transforms on uint8 CHW tensors.

Images stay uint8 until they reach the device (`normalize_on_device`). Boxes are (K, 4) int64
x0, y0, x1, y1 in pixels; they are mapped as wsolevaluation does (float64 scale, int truncation),
then shifted by the crop offset, clipped to the crop and mirrored with the flip.
"""
from __future__ import annotations

import torch
from torchvision.transforms.v2 import functional as TF
from torchvision.transforms.v2 import InterpolationMode

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resized_shape(width: int, height: int, size: int, keep_aspect: bool) -> tuple[int, int]:
    """(new W, new H): shorter side -> size (keep_aspect, as torchvision Resize(int)) or size x size."""
    if not keep_aspect:
        return size, size
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def scale_boxes(boxes: torch.Tensor, old_wh: tuple[int, int], new_wh: tuple[int, int]) -> torch.Tensor:
    """(K, 4) x0y0x1y1 boxes of a W x H image -> the same on the new size: int(x * new_W / W), as
    wsolevaluation's resize_bbox computes it (multiply, then divide: x * (new_W / W) can fall 1 short)."""
    new = torch.tensor(list(new_wh) * 2, dtype=torch.float64)
    old = torch.tensor(list(old_wh) * 2, dtype=torch.float64)
    return (boxes.double() * new / old).long()


def _crop_boxes(boxes: torch.Tensor, left: int, top: int, width: int, height: int) -> torch.Tensor:
    shifted = boxes - torch.tensor([left, top, left, top])
    limit = torch.tensor([width - 1, height - 1] * 2)
    return torch.minimum(shifted.clamp_min(0), limit)


class WSOLTransform:
    """Resize -> crop (random or centre, or none) -> optional random horizontal flip.

    train: Resize(resize) -> RandomCrop(crop) -> flip.
    eval:  Resize((crop, crop)) (wsolevaluation) or, with center_crop, Resize(resize) -> CenterCrop(crop)
           (official ACoL).
    """

    def __init__(self, train: bool, resize_size: int, crop_size: int, keep_aspect: bool,
                 center_crop: bool = False):
        self.train = train
        self.crop_size = crop_size
        self.keep_aspect = keep_aspect
        # eval without centre crop resizes straight to the input size, as a square
        self.resize_size = resize_size if train or center_crop else crop_size
        self.crop = train or center_crop

    def __call__(self, image: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor | None = None,
                 generator: torch.Generator | None = None):
        """image (3, H, W) uint8, boxes (K, 4), mask (H, W) uint8 or None -> transformed triple."""
        image, boxes, mask = self.resize(image, boxes, mask)
        if not self.crop:
            return image.contiguous(), boxes, mask
        top, left, flip = self.crop_params(*image.shape[-2:], generator)
        return self.crop_and_flip(image, boxes, mask, top, left, flip)

    def resize(self, image: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor | None = None):
        """The deterministic first step (the part a cache can store)."""
        height, width = image.shape[-2:]
        keep_aspect = self.keep_aspect if self.crop else False
        new_w, new_h = resized_shape(width, height, self.resize_size, keep_aspect)
        image = TF.resize(image, [new_h, new_w], antialias=True)
        boxes = scale_boxes(boxes, (width, height), (new_w, new_h))
        if mask is not None:
            mask = TF.resize(mask[None], [new_h, new_w], interpolation=InterpolationMode.NEAREST)[0]
        return image, boxes, mask

    def crop_params(self, height: int, width: int, generator: torch.Generator | None = None) -> tuple[int, int, bool]:
        """(top, left, flip) for a resized (height, width) image: random in training, centred otherwise."""
        size = self.crop_size
        if not self.train:
            return int(round((height - size) / 2.0)), int(round((width - size) / 2.0)), False
        top = int(torch.randint(0, height - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, width - size + 1, (1,), generator=generator))
        return top, left, bool(torch.rand((), generator=generator) < 0.5)

    def crop_and_flip(self, image: torch.Tensor, boxes: torch.Tensor, mask: torch.Tensor | None, top: int,
                      left: int, flip: bool):
        """Crop a crop_size square at (top, left), then mirror it if `flip`; works on any device."""
        size = self.crop_size
        image = image[:, top:top + size, left:left + size]
        boxes = _crop_boxes(boxes, left, top, size, size)
        if mask is not None:
            mask = mask[top:top + size, left:left + size]
        if flip:
            image = image.flip(-1)
            boxes = torch.stack([size - 1 - boxes[:, 2], boxes[:, 1], size - 1 - boxes[:, 0], boxes[:, 3]], dim=1)
            if mask is not None:
                mask = mask.flip(-1)
        return image.contiguous(), boxes, mask


def normalize_on_device(images: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float32 ImageNet-normalised on `device` (4x fewer bytes to copy)."""
    images = images.to(device, non_blocking=True).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return images.sub_(mean).div_(std)
