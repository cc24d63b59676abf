"""A Dataset for any data set in wsolevaluation metadata format, its collate, and its loaders."""
from __future__ import annotations

import functools
import itertools
import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from acol.config import ConfigError
from acol.datasets.cache import CachedTrainLoader
from acol.datasets.images import ImageError, read_mask, read_rgb
from acol.datasets.metadata import Metadata, MetadataError, per_class_subset, read_metadata
from acol.datasets.transforms import WSOLTransform
from acol.datasets.worker_streams import WorkerStreams, collate_with_stream
from acol.dist import InferenceSampler, get_rank, get_world_size, leave_signals_to_the_main_process


def load_rgb(path: Path) -> torch.Tensor:
    """(3, H, W) uint8 (`images.read_rgb`: other 8-bit modes converted, errors name the file)."""
    return torch.from_numpy(read_rgb(path)).permute(2, 0, 1)


def load_mask(path: Path, size: tuple[int, int] | None = None) -> torch.Tensor:
    """(H, W) uint8 in {0, 1} (`images.read_mask`); size: its image's (W, H), which it must have."""
    return torch.from_numpy(read_mask(path, size))


def box_mask(boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """(H, W) uint8: 1 inside any of the (K, 4) x0y0x1y1 boxes, corners included (wsolevaluation's
    box convention: a box covers x0..x1 and y0..y1), 0 elsewhere."""
    mask = torch.zeros(height, width, dtype=torch.uint8)
    for x0, y0, x1, y1 in boxes.tolist():
        mask[y0:y1 + 1, x0:x1 + 1] = 1
    return mask


class WSOLDataset(Dataset):
    """Samples of one split: {"image": (3, H, W) uint8, "label": int, "boxes": (K, 4) int64,
    "mask": (H, W) uint8 (1 foreground, 0 background, 255 ignore) or None, "image_id": str, "index": int}.

    Boxes and masks are in the transformed image's pixel grid. The mask is the GT masks' union with
    `load_masks` (when the split has masks); with `foreground` it is always there: the boxes filled
    in (`box_mask`, drawn at the image's own size, so it is resized, cropped and flipped with it) or,
    for a split without boxes, the GT masks.
    """

    def __init__(self, data_root: str | Path, metadata: Metadata, transform: WSOLTransform,
                 load_masks: bool = False, foreground: bool = False):
        self.image_root = Path(data_root) / metadata.split_dir.parent.name
        self.meta = metadata
        self.transform = transform
        self.foreground = foreground
        if foreground and not (metadata.boxes or metadata.masks):
            raise MetadataError(f"{metadata.split_dir}: no boxes or masks (localization.txt) to train a "
                                "localizer on")
        self.box_masks = foreground and bool(metadata.boxes)
        self.load_masks = (load_masks or foreground) and not self.box_masks and bool(metadata.masks)

    def __len__(self) -> int:
        return len(self.meta.image_ids)

    def missing_files(self) -> list[Path]:
        """The listed images (and masks, when loaded) that are not files under image_root."""
        listed = list(self.meta.image_ids)
        if self.load_masks:
            listed += [rel for rels in self.meta.masks.values() for rel in rels] + list(self.meta.ignore.values())
        return [self.image_root / rel for rel in listed if not (self.image_root / rel).is_file()]

    def _mask(self, image_id: str, height: int, width: int) -> torch.Tensor:
        mask = torch.zeros(height, width, dtype=torch.uint8)
        for rel in self.meta.masks.get(image_id, []):
            mask |= load_mask(self.image_root / rel, (width, height))
        if image_id in self.meta.ignore:
            ignore = load_mask(self.image_root / self.meta.ignore[image_id], (width, height)).bool() & (mask == 0)
            mask[ignore] = 255
        return mask

    def __getitem__(self, index: int) -> dict:
        image_id = self.meta.image_ids[index]
        image = load_rgb(self.image_root / image_id)
        height, width = image.shape[-2:]
        if image_id in self.meta.sizes and self.meta.sizes[image_id] != (width, height):
            raise ImageError(f"{self.image_root / image_id}: image is {width}x{height} but image_sizes.txt "
                             f"says {self.meta.sizes[image_id][0]}x{self.meta.sizes[image_id][1]}")
        boxes = torch.tensor(self.meta.boxes.get(image_id, []), dtype=torch.int64).reshape(-1, 4)
        mask = box_mask(boxes, height, width) if self.box_masks else \
            self._mask(image_id, height, width) if self.load_masks else None
        image, boxes, mask = self.transform(image, boxes, mask)
        return {"image": image, "label": self.meta.labels[image_id], "boxes": boxes, "mask": mask,
                "image_id": image_id, "index": index}


def worker_error_line(error: BaseException) -> str:
    """The one-line message of an error raised in a DataLoader worker (an `ImageError`, say). torch
    re-raises it in the main process as `type(error)(text)` with the worker's traceback in the text,
    whose last line is `<module>.<Type>: <message>`; other errors give their own first line."""
    text = str(error).strip()
    if "Original Traceback" not in text:
        return text.splitlines()[0] if text else type(error).__name__
    return text.splitlines()[-1].partition(": ")[2]


class ResumableSampler(torch.utils.data.DistributedSampler):
    """DistributedSampler (shuffled, drop_last; the order depends on (seed, epoch) only) whose epoch
    can begin after its first `start` samples: a run resumed mid-epoch sees the batches it had not
    seen yet, in the same order."""

    start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        super().set_epoch(epoch)
        self.start = start

    def full_order(self) -> list[int]:
        """This rank's indices of the whole epoch."""
        return list(super().__iter__())

    def __iter__(self):
        return itertools.islice(self.full_order(), self.start, None)

    def __len__(self) -> int:
        return self.num_samples - self.start


def collate(samples: list[dict]) -> dict:
    """Stack images, labels and masks; boxes (variable count per image) and ids stay lists."""
    masks = [s["mask"] for s in samples]
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "label": torch.tensor([s["label"] for s in samples], dtype=torch.int64),
        "boxes": [s["boxes"] for s in samples],
        "mask": torch.stack(masks) if all(m is not None for m in masks) else None,
        "image_id": [s["image_id"] for s in samples],
        "index": torch.tensor([s["index"] for s in samples], dtype=torch.int64),
    }


def default_num_workers() -> int:
    """Workers per process: the cores this process may use, split over local ranks, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local = int(os.environ.get("LOCAL_WORLD_SIZE", 1))
    return max(0, min(8, cores // local - 1))


def build_dataset(cfg, split: str, train: bool, foreground: bool = False) -> WSOLDataset:
    """`split` with the training (random crop and flip) or the evaluation transform; val restricted
    to data.val_per_class images per class (`per_class_subset`, drawn with train.seed). Evaluation
    sets load GT masks; `foreground`: every sample has its foreground mask (see `WSOLDataset`)."""
    meta = read_metadata(cfg.data.metadata_root, cfg.data.dataset, split)
    if split == "val":
        meta = per_class_subset(meta, cfg.data.val_per_class, cfg.train.seed)
    transform = WSOLTransform(train, cfg.data.resize_size, cfg.data.crop_size, cfg.data.keep_aspect,
                              center_crop=cfg.data.eval_center_crop)
    return WSOLDataset(cfg.data.root, meta, transform, load_masks=not train, foreground=foreground)


def build_loader(cfg, dataset: WSOLDataset, train: bool, seed: int = 0) -> DataLoader | CachedTrainLoader:
    """Train: shuffled, drop_last, per-process batch = global batch / world size (with data.cache,
    from decoded images kept in memory or on the GPU, `CachedTrainLoader`).
    Eval: contiguous shards without padding (evaluator counts are all-reduced)."""
    world = get_world_size()
    workers = cfg.data.num_workers if cfg.data.num_workers >= 0 else default_num_workers()
    common = dict(num_workers=workers, collate_fn=collate, pin_memory=torch.cuda.is_available(),
                  persistent_workers=workers > 0, worker_init_fn=leave_signals_to_the_main_process)
    if not train:
        return DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False,
                          sampler=InferenceSampler(len(dataset), get_rank(), world), **common)
    if cfg.train.global_batch_size % world:
        raise ConfigError(f"train.global_batch_size={cfg.train.global_batch_size} is not divisible by the {world} "
                          f"processes; make it a multiple of {world}")
    # One sampler for 1 or N processes: the order depends on (seed, epoch) only (set_epoch), so a
    # resumed run sees the same batches. Worker RNGs are seeded from the loader's generator.
    sampler = ResumableSampler(dataset, world, get_rank(), shuffle=True, seed=seed, drop_last=True)
    if cfg.data.cache != "off":
        on_gpu = cfg.data.cache == "device" and torch.cuda.is_available()
        store = torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu")
        return CachedTrainLoader(dataset, sampler, cfg.train.global_batch_size // world, seed, store, workers)
    if workers:  # the workers' random streams go into checkpoints (acol.datasets.worker_streams)
        common |= dict(worker_init_fn=WorkerStreams(workers), collate_fn=functools.partial(collate_with_stream,
                                                                                         collate=collate))
    return DataLoader(dataset, batch_size=cfg.train.global_batch_size // world, sampler=sampler,
                      drop_last=True, generator=torch.Generator().manual_seed(seed), **common)
