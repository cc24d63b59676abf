"""A training loader for small data sets (synthetic, CUB) that decodes and resizes every image once.

`data.cache = "memory"` keeps the resized uint8 images in RAM, `"device"` on the training device
(a GPU), where each batch is then cropped, flipped and stacked without a host-to-device copy. The
images are decoded once by DataLoader workers; the batches are the same as `build_loader`'s in
every respect but the random stream of the crops and flips: the order is DistributedSampler's
(seed, epoch) order, and each crop and flip comes from a generator seeded by (seed, epoch, rank).
Memory: images x 3 x resize_size^2 bytes (CUB at 256 px, aspect kept: about 1.6 GB).
"""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from acol.dist import get_rank, leave_signals_to_the_main_process


def _first(samples: list[dict]) -> dict:
    return samples[0]


class CachedTrainLoader:
    """Iterates batches {"image": (B, 3, crop, crop) uint8 on the cache's device, "label", "boxes",
    "mask" ((B, crop, crop) uint8 for a `foreground` dataset, else None), "image_id", "index"} like the
    training DataLoader (`sampler.set_epoch` as usual)."""

    def __init__(self, dataset, sampler, batch_size: int, seed: int, store: torch.device, workers: int):
        """dataset: the training WSOLDataset (its transform's random crop and flip are done here);
        sampler: its `ResumableSampler`."""
        self.transform = dataset.transform
        self.batch_size = batch_size
        self.seed = seed
        self.sampler = sampler
        resized = type(dataset)(dataset.image_root.parent, dataset.meta, self.transform.resize,
                                foreground=dataset.foreground)
        decode = DataLoader(resized, batch_size=1, num_workers=workers, collate_fn=_first,
                            worker_init_fn=leave_signals_to_the_main_process)
        self.images, self.masks, self.boxes, self.labels, self.ids = [], [], [], [], []
        for sample in decode:
            self.images.append(sample["image"].to(store))
            self.masks.append(sample["mask"].to(store) if sample["mask"] is not None else None)
            self.boxes.append(sample["boxes"])
            self.labels.append(sample["label"])
            self.ids.append(sample["image_id"])

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size

    def __iter__(self):
        """The epoch's batches from the sampler's start on; the crops and flips of the skipped
        samples are drawn too, so that a resumed epoch continues the same random stream."""
        generator = torch.Generator().manual_seed(hash((self.seed, self.sampler.epoch, get_rank())) % 2**63)
        order = self.sampler.full_order()
        for b in range(len(order) // self.batch_size):
            chosen = order[b * self.batch_size:(b + 1) * self.batch_size]
            params = [self.transform.crop_params(*self.images[i].shape[-2:], generator) for i in chosen]
            if (b + 1) * self.batch_size <= self.sampler.start:
                continue
            images, boxes, masks = [], [], []
            for i, (top, left, flip) in zip(chosen, params):
                image, box, mask = self.transform.crop_and_flip(self.images[i], self.boxes[i], self.masks[i], top,
                                                                left, flip)
                images.append(image)
                boxes.append(box)
                masks.append(mask)
            yield {"image": torch.stack(images), "label": torch.tensor([self.labels[i] for i in chosen]),
                   "boxes": boxes, "mask": torch.stack(masks) if masks[0] is not None else None,
                   "image_id": [self.ids[i] for i in chosen],
                   "index": torch.tensor(chosen)}
