"""Benchmark the box evaluator: component-tree method vs one cv2.findContours per CAM threshold.

Builds CAM-like maps deterministically (1-3 Gaussian blobs plus a little noise on a 28x28 grid,
upsampled by bicubic interpolation and min-max normalised, as CAMs are), accumulates them with
both methods of `BoxEvaluator`, checks that every count tensor is identical and prints the
throughput of each and the speed-up.

    python scripts/bench_eval.py --num-images 100 --size 224 --interval 0.001   # from the repo root
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the repository is importable
from acol import cli  # noqa: E402
from acol.evaluation import BoxEvaluator, resize_and_normalize  # noqa: E402


def cam_like_maps(num: int, size: int, low: int, noise: float, seed: int):
    """(maps (num, size, size) float32, GT boxes, top-1 hits, top-5 hits), deterministic in `seed`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:low, 0:low].astype(np.float64)
    scale = size / low
    lows, boxes = [], []
    for _ in range(num):
        cam = noise * rng.random((low, low))
        image_boxes = []
        for k in range(rng.integers(1, 4)):
            cy, cx = rng.uniform(0.15 * low, 0.85 * low, 2)
            sy, sx = rng.uniform(0.06 * low, 0.22 * low, 2)
            amp = 1.0 if k == 0 else rng.uniform(0.3, 1.0)
            cam += amp * np.exp(-0.5 * (((yy - cy) / sy) ** 2 + ((xx - cx) / sx) ** 2))
            if amp > 0.5:  # an object: about two standard deviations around the blob, jittered
                box = np.array([cx - 2 * sx, cy - 2 * sy, cx + 2 * sx, cy + 2 * sy]) * scale
                box += rng.normal(0, 0.03 * size, 4)
                x0, y0 = np.clip(box[:2], 0, size - 1).astype(int)
                x1, y1 = np.clip(box[2:], 0, size - 1).astype(int)
                image_boxes.append([x0, y0, max(x0, x1), max(y0, y1)])
        lows.append(cam)
        boxes.append(np.array(image_boxes, np.int64))
    maps = resize_and_normalize(np.stack(lows).astype(np.float32), size)
    top1 = rng.random(num) < 0.7
    return maps, boxes, top1, top1 | (rng.random(num) < 0.6)


def timed_accumulate(evaluator: BoxEvaluator, data) -> float:
    start = time.perf_counter()
    evaluator.accumulate(*data)
    return time.perf_counter() - start


def main(argv=None) -> None:
    p = cli.Parser("python scripts/bench_eval.py", __doc__, "--num-images 20 --interval 0.01")
    p.add_argument("--num-images", type=int, default=100)
    p.add_argument("--size", type=int, default=224, help="score map side (the evaluation size)")
    p.add_argument("--low", type=int, default=28, help="side of the low-resolution CAM grid")
    p.add_argument("--noise", type=float, default=0.02, help="uniform noise amplitude on the low-res grid")
    p.add_argument("--interval", type=float, default=0.001, help="cam_curve_interval (0.001: 1000 thresholds)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    for name in ("num_images", "size", "low"):
        if getattr(args, name) < 1:
            p.error(f"argument --{name.replace('_', '-')}: must be >= 1, got {getattr(args, name)}")
    if not 0 < args.interval < 1:
        p.error(f"argument --interval: must be in (0, 1), got {args.interval}")

    data = cam_like_maps(args.num_images, args.size, args.low, args.noise, args.seed)
    fast = BoxEvaluator(args.interval, method="fast")
    reference = BoxEvaluator(args.interval, method="reference")
    fast.accumulate(*(x[:1] for x in data))  # warm-up: numba compiles (or loads its cache) on first use
    fast.load_state_dict({k: torch.zeros_like(v) for k, v in fast.state.items()})
    t_fast = timed_accumulate(fast, data)
    t_ref = timed_accumulate(reference, data)
    for name, counts in fast.state.items():
        if not torch.equal(counts, reference.state[name]):
            raise SystemExit(f"MISMATCH in {name}")
    n = args.num_images
    print(f"{n} CAM-like maps {args.size}x{args.size} (from {args.low}x{args.low}, noise {args.noise}), "
          f"{len(fast.thresholds)} thresholds: all {len(fast.state)} count tensors identical")
    print(f"reference (cv2.findContours per threshold): {n / t_ref:8.1f} images/s  ({1e3 * t_ref / n:6.2f} ms/image)")
    print(f"component tree (this evaluator):            {n / t_fast:8.1f} images/s  ({1e3 * t_fast / n:6.2f} ms/image)")
    print(f"speed-up: {t_ref / t_fast:.1f}x   (CPU; the reference with OpenCV's {cv2.getNumThreads()} threads, this evaluator on one; "
          "it has no GPU path)")
    metrics = fast.compute()
    print("metrics: " + ", ".join(f"{k}={metrics[k]:.2f}" for k in ("maxboxacc", "maxboxacc_v2", "gt_known_loc@fixed")))


if __name__ == "__main__":
    main()
