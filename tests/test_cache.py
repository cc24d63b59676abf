"""data.cache: the training batches of the decode-once loader against the images they come from."""
import itertools
from pathlib import Path

import torch

from acol import train
from acol.config import load_config
from acol.datasets.cache import CachedTrainLoader
from acol.datasets.dataset import build_dataset, build_loader, load_rgb

CONFIG = str(Path(__file__).resolve().parents[1] / "experiments" / "synthetic_acol.toml")


def test_cached_batches_are_crops_of_the_resized_images_in_sampler_order(tiny_overrides):
    cfg = load_config(overrides=tiny_overrides + ["data.cache=memory", "train.global_batch_size=4"])
    dataset = build_dataset(cfg, "train", train=True)
    cached = build_loader(cfg, dataset, train=True, seed=3)
    plain = build_loader(load_config(overrides=tiny_overrides + ["train.global_batch_size=4"]), dataset, train=True,
                         seed=3)
    assert isinstance(cached, CachedTrainLoader) and len(cached) == len(plain) == 3
    for epoch in (0, 1):
        cached.sampler.set_epoch(epoch)
        plain.sampler.set_epoch(epoch)
        batches = list(cached)
        assert [b["index"].tolist() for b in batches] == [b["index"].tolist() for b in plain]  # same order
        for batch in batches:
            assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (4, 3, 32, 32)
            for image, boxes, index, label in zip(batch["image"], batch["boxes"], batch["index"], batch["label"]):
                image_id = dataset.meta.image_ids[index]
                assert label == dataset.meta.labels[image_id]
                full, full_boxes, _ = dataset.transform.resize(
                    load_rgb(dataset.image_root / image_id), torch.tensor(dataset.meta.boxes[image_id]))
                height, width = full.shape[-2:]
                matches = [(top, left, flip) for top, left, flip in itertools.product(
                           range(height - 31), range(width - 31), (False, True))
                           if torch.equal(dataset.transform.crop_and_flip(full, full_boxes, None, top, left, flip)[0],
                                          image)]
                assert matches, image_id  # the batch image is a crop (maybe mirrored) of the resized image
                assert any(torch.equal(dataset.transform.crop_and_flip(full, full_boxes, None, *m)[1], boxes)
                           for m in matches)
    cached.sampler.set_epoch(1)
    again = list(cached)
    assert all(torch.equal(a["image"], b["image"]) for a, b in zip(again, batches))  # (seed, epoch) decide


def test_training_with_the_cache(tiny_overrides, tmp_path):
    results = train.main(["--config", CONFIG, "--name", "cached", *tiny_overrides, "train.global_batch_size=6", "data.cache=device"])
    assert results["step"] == 2 and 0 <= results["test"]["maxboxacc_v2"] <= 100
