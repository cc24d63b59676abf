"""Images/s per CPU core of the training input pipeline: acol's per-sample path against wsolevaluation's
PIL + torchvision one, other JPEG decoders in acol's path, and the decoded-image cache (data.cache).

    python scripts/bench_pipeline.py                         # 64 CUB-sized JPEGs (500x375, quality 90), 1 thread
    python scripts/bench_pipeline.py --images 200 --repeat 9
    python scripts/bench_pipeline.py --size 1000x750         # large enough for PIL's draft mode to decode at 1/2

The JPEGs are generated with a fixed seed (smooth random colour fields plus mild noise, so that they
compress like photographs) into a temporary folder with the wsolevaluation metadata of a train split
(one box per image; an empty image_sizes.txt, as OpenImages has, so that a draft-decoded smaller image
passes), and read with the training transform of the wsolevaluation CUB recipe (`RECIPE`: Resize((256,
256)) ignoring the aspect ratio, RandomCrop(224), flip). The rows, all in this process:
- reference: wsolevaluation's training sample: Image.open(p).convert('RGB'), then torchvision's v1
  Resize((256, 256)), RandomCrop(224), RandomHorizontalFlip(), ToTensor(), Normalize -> float32;
- acol: `WSOLDataset.__getitem__` of the training set, a DataLoader worker's work per sample (PIL decode,
  antialiased resize of the uint8 tensor, crop, flip) -> uint8. acol normalises on the device
  (`normalize_on_device`); the next row adds that normalisation on the CPU, like for like;
- acol with another decoder in place of `load_rgb`: torchvision.io.decode_jpeg, and PIL's draft mode
  asked for the resize target (a JPEG decoded at 1/2, 1/4 or 1/8 scale while both sides stay that large);
- cached: acol's `CachedTrainLoader` (data.cache=memory) over images it decoded and resized once: per
  image, the crop, flip and stack of its batches (in the training process: the cache uses no workers).
Each round times one pass of every row over all the images, in a rotating order, after one untimed pass
each; a row's rate is its median round (and its best). Pixel checks: a decoder's image against PIL's
full decode (`load_rgb`) and after acol's resize; acol's resize against the reference's PIL resize; the
cached images against acol's resize. A pixel differs when any of its channels does.
"""
from __future__ import annotations

import argparse
import functools
import math
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from unittest import mock

import cv2
import numpy as np
import torch
from PIL import Image
from torchvision import transforms
from torchvision.io import ImageReadMode, decode_jpeg, read_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a file: the repository is importable
from acol.config import load_config  # noqa: E402
from acol.datasets import dataset as acol_dataset  # noqa: E402
from acol.datasets.cache import CachedTrainLoader  # noqa: E402
from acol.datasets.dataset import ResumableSampler, build_dataset, load_rgb  # noqa: E402
from acol.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD, normalize_on_device  # noqa: E402

RECIPE = ROOT / "experiments" / "wsolevaluation" / "cub_acol_vgg16.toml"
# VGG16-ACoL training images/s on an H200 at 224 px, batch 64, bf16 (scripts/gpu_check.sh)
GPU_RATES = {"NCHW": 1264, "channels_last": 1628}
CUB_TRAIN_IMAGES = 5994
NO_BOXES = torch.zeros(0, 4, dtype=torch.int64)


def write_images(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> tuple[Path, Path]:
    """`count` JPEGs of size (W, H), quality 90, in folder/data/CUB/images, and the metadata of their train
    split in folder/metadata (2 classes, the centre half of each image as its box). -> (data root, metadata root)."""
    rng = np.random.default_rng(seed)
    width, height = size
    data_root, metadata_root = folder / "data", folder / "metadata"
    split = metadata_root / "CUB" / "train"
    (data_root / "CUB" / "images").mkdir(parents=True)
    split.mkdir(parents=True)
    ids = [f"images/{i:04d}.jpg" for i in range(count)]
    for image_id in ids:
        field = Image.fromarray(rng.integers(0, 256, (9, 12, 3), dtype=np.uint8)).resize(size, Image.BICUBIC)
        noisy = np.asarray(field, dtype=np.int16) + rng.normal(0, 14, (height, width, 3)).astype(np.int16)
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(data_root / "CUB" / image_id, quality=90)
    box = f"{width // 4},{height // 4},{3 * width // 4},{3 * height // 4}"
    (split / "image_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (split / "class_labels.txt").write_text("".join(f"{i},{n % 2}\n" for n, i in enumerate(ids)))
    (split / "image_sizes.txt").write_text("")
    (split / "localization.txt").write_text("".join(f"{i},{box}\n" for i in ids))
    return data_root, metadata_root


def decode_torchvision(path: Path) -> torch.Tensor:
    """(3, H, W) uint8 by torchvision.io.decode_jpeg (grayscale and CMYK converted to RGB)."""
    return decode_jpeg(read_file(str(path)), mode=ImageReadMode.RGB)


def decode_pil_draft(path: Path, size: tuple[int, int]) -> torch.Tensor:
    """(3, H, W) uint8 by PIL in draft mode: a JPEG decoded at the smallest 1/1, 1/2, 1/4 or 1/8 scale
    that keeps it at least size (W, H)."""
    with Image.open(path) as img:
        img.draft("RGB", size)
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def cores(rate: float, per_core: float) -> str:
    """'N core(s)' that keep up with `rate` images/s at `per_core` images/s each."""
    n = math.ceil(rate / per_core)
    return f"{n} core{'s' if n != 1 else ''}"


def difference(pairs) -> str:
    """'max abs diff M, P % pixels' over (a, b) pairs of (3, H, W) uint8 images, or how their sizes differ."""
    worst, differing, total = 0, 0, 0
    for a, b in pairs:
        if a.shape != b.shape:
            return f"{b.shape[-1]}x{b.shape[-2]} instead of {a.shape[-1]}x{a.shape[-2]}"
        d = (a.int() - b.int()).abs()
        worst, differing, total = max(worst, int(d.max())), differing + int((d > 0).any(0).sum()), total + d[0].numel()
    return f"max abs diff {worst}, {100 * differing / total:.2f} % pixels"


def acol_pass(dataset, decode=load_rgb, normalize: bool = False):
    """One pass of `WSOLDataset.__getitem__` over `dataset` with `decode` as its image decoder (acol's:
    `load_rgb`); normalize: then `normalize_on_device` on the CPU."""
    def run():
        with mock.patch.object(acol_dataset, "load_rgb", decode):
            for i in range(len(dataset)):
                image = dataset[i]["image"]
                if normalize:
                    normalize_on_device(image[None], torch.device("cpu"))
    return run


def reference_pass(paths: list[Path], transform):
    """One pass of wsolevaluation's training sample (PIL decode, then `transform`) over `paths`."""
    def run():
        for path in paths:
            transform(Image.open(path).convert("RGB"))
    return run


def rates(passes: dict, rounds: int) -> dict[str, tuple[float, float]]:
    """{name: (median, best) images/s} of passes {name: (run, images per run)}: one untimed run each, then
    `rounds` rounds of one timed run each, in an order that rotates by one each round."""
    for run, _ in passes.values():
        run()
    seconds = {name: [] for name in passes}
    names = list(passes)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            run, _ = passes[name]
            start = time.perf_counter()
            run()
            seconds[name].append(time.perf_counter() - start)
    return {name: (passes[name][1] / statistics.median(s), passes[name][1] / min(s)) for name, s in seconds.items()}


def size_arg(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH, e.g. 500x375; got {text!r}") from None
    return width, height


def main(argv=None) -> list[dict]:
    """Print the table and the cores lines; return the rows {"name", "median", "best", "ratio", "check"}."""
    p = argparse.ArgumentParser(prog="python scripts/bench_pipeline.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=64, help="JPEGs generated and read per pass")
    p.add_argument("--size", type=size_arg, default=(500, 375), help="their W x H (CUB-like: 500x375)")
    p.add_argument("--threads", type=int, default=1, help="torch and cv2 threads")
    p.add_argument("--repeat", type=int, default=5, help="timed rounds (one pass of every row each)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    cv2.setNumThreads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings():
        data_root, metadata_root = write_images(Path(folder), args.images, args.size)
        cfg = load_config(RECIPE, [f"data.root={data_root}", f"data.metadata_root={metadata_root}"])
        dataset = build_dataset(cfg, "train", train=True)
        transform = dataset.transform
        paths = [dataset.image_root / i for i in dataset.meta.image_ids]
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            decode_torchvision(paths[0])
        warnings.simplefilter("ignore")  # torchvision 0.29 warns at every decode_jpeg call (printed below)
        resize = (cfg.data.resize_size, cfg.data.resize_size)
        draft = functools.partial(decode_pil_draft, size=resize)
        reference = transforms.Compose([transforms.Resize(resize), transforms.RandomCrop(cfg.data.crop_size),
                                        transforms.RandomHorizontalFlip(), transforms.ToTensor(),
                                        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
        batch = min(cfg.train.global_batch_size, args.images)
        sampler = ResumableSampler(dataset, 1, 0, shuffle=True, seed=0, drop_last=True)
        sampler.set_epoch(0)
        cache = CachedTrainLoader(dataset, sampler, batch, seed=0, store=torch.device("cpu"), workers=0)

        def resized(decode):
            return [transform.resize(decode(path), NO_BOXES)[0] for path in paths]

        def decoder_check(decode) -> str:
            return (f"decoded: {difference((load_rgb(path), decode(path)) for path in paths)}; "
                    f"resized: {difference(zip(resized(load_rgb), resized(decode)))}")

        pil_resized = [transforms.functional.pil_to_tensor(transforms.Resize(resize)(Image.open(path).convert("RGB")))
                       for path in paths]
        rows = {  # name: (one pass, images per pass, pixel check)
            "reference: PIL + torchvision v1 (float32)": (reference_pass(paths, reference), len(paths), "-"),
            "acol: load_rgb (PIL) + WSOLTransform (uint8)": (
                acol_pass(dataset), len(paths),
                f"resize vs the reference's PIL resize: {difference(zip(pil_resized, resized(load_rgb)))}"),
            "acol + normalize_on_device on the CPU (float32)": (acol_pass(dataset, normalize=True), len(paths), "-"),
            "acol, torchvision.io.decode_jpeg (uint8)": (acol_pass(dataset, decode_torchvision), len(paths),
                                                         decoder_check(decode_torchvision)),
            "acol, PIL draft mode (uint8)": (acol_pass(dataset, draft), len(paths), decoder_check(draft)),
            "acol, data.cache=memory: crop, flip, stack (uint8)": (
                lambda: list(cache), len(cache) * batch,
                f"cached vs acol's resize: {difference(zip(resized(load_rgb), cache.images))}"),
        }
        measured = rates({name: (run, count) for name, (run, count, _) in rows.items()}, args.repeat)
        kilobytes = sum(path.stat().st_size for path in paths) / len(paths) / 1000
    print(f"{args.images} JPEGs of {args.size[0]}x{args.size[1]}, quality 90, {kilobytes:.0f} KB on average; "
          f"{args.threads} thread(s); {args.repeat} rounds; transform of {RECIPE.relative_to(ROOT)} "
          f"(Resize({resize}), RandomCrop({cfg.data.crop_size}), flip)")
    print("acol's rows end at the uint8 tensor a DataLoader worker returns: acol normalises on the device "
          "(normalize_on_device)\n")
    print("| variant | images/s per core (median) | best | x reference | pixel check |\n|---|---:|---:|---:|---|")
    table = []
    base = measured[next(iter(rows))][0]
    for name, (_, _, check) in rows.items():
        median, best = measured[name]
        table.append({"name": name, "median": median, "best": best, "ratio": median / base, "check": check})
        print(f"| {name} | {median:.0f} | {best:.0f} | {median / base:.2f}x | {check} |")
    acol_rate, cached_rate = table[1]["median"], table[-1]["median"]
    print()
    for layout, rate in GPU_RATES.items():
        print(f"a GPU training at {rate} images/s needs about {cores(rate, acol_rate)} of this kind for "
              f"decoding (VGG16-ACoL, H200, {layout}; acol uncached, {acol_rate:.0f} images/s per core)")
    for layout, rate in GPU_RATES.items():
        print(f"a GPU training at {rate} images/s needs about {cores(rate, cached_rate)} of this kind for "
              f"its batches with data.cache=memory (VGG16-ACoL, H200, {layout}; {cached_rate:.0f} images/s per core)")
    per_image = sum(image.numel() for image in cache.images) / len(cache.images)
    print(f"data.cache=memory holds {per_image:.0f} bytes per image (uint8, 3 x {resize[1]} x {resize[0]}): "
          f"{per_image * CUB_TRAIN_IMAGES / 1e9:.2f} GB for CUB's {CUB_TRAIN_IMAGES} training images")
    for message in sorted({str(w.message).split(". ")[0] for w in caught}):
        print(f"torchvision.io.decode_jpeg warns: {message}")
    return table


if __name__ == "__main__":
    main()
