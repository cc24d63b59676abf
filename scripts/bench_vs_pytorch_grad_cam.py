"""Our gradient-family maps against pytorch-grad-cam's on the same model, layer, batch and targets.

    pip install grad-cam==1.5.7            # the reference library (not a dependency of acol)
    python scripts/bench_vs_pytorch_grad_cam.py                        # VGG16-ACoL at 224 px, batch 4
    python scripts/bench_vs_pytorch_grad_cam.py --model cam --backbone resnet50

For each method both implementations run in the same process on the same random-init model and
random images (seed 0), after one untimed warm-up call each, alternating, `--steps` timed calls
each. Printed: maps/s of each, our speed-up (the library's time over ours), and the largest
absolute difference between the two maps after the library's own post-processing (min-max scaling
with its 1e-7 epsilon, cv2 bilinear resizing to the input, min-max scaling again), applied to our
maps as well.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from acol.cams import build_localizer  # noqa: E402
from acol.config import load_config  # noqa: E402
from acol.methods import build_model  # noqa: E402

METHODS = {"gradcam": "GradCAM", "gradcam_pp": "GradCAMPlusPlus", "hirescam": "HiResCAM",
           "xgradcam": "XGradCAM", "layercam": "LayerCAM"}


class Logits(nn.Module):
    """The model as pytorch-grad-cam expects it: images in, logits out (the forward sees the labels)."""

    def __init__(self, model: nn.Module, labels: torch.Tensor):
        super().__init__()
        self.model, self.labels = model, labels

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images, self.labels)["logits"]


def scale(m: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's min-max: x - min, / (1e-7 + max)."""
    m = m - m.min()
    return m / (1e-7 + m.max())


def library_post_processing(maps: np.ndarray, size: int) -> np.ndarray:
    """What pytorch-grad-cam does to a layer's map: scale, cv2 bilinear resize to the input, and
    (aggregating its target layers) scale again."""
    return np.stack([scale(cv2.resize(scale(m).astype(np.float32), (size, size))) for m in maps])


def timed(fn, steps: int) -> float:
    fn()
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    return (time.perf_counter() - start) / steps


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python scripts/bench_vs_pytorch_grad_cam.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="acol", choices=("acol", "cam"))
    p.add_argument("--backbone", default="vgg16", choices=("vgg16", "resnet50", "inception_v3", "smallcnn"))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    args = p.parse_args(argv)
    try:
        import pytorch_grad_cam
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    except ImportError:
        p.error("needs the reference library: pip install grad-cam==1.5.7")
    unknown = [m for m in args.methods.split(",") if m not in METHODS]
    if unknown:
        p.error(f"argument --methods: unknown method {unknown[0]!r}; valid: {', '.join(METHODS)}")

    torch.manual_seed(0)
    cfg = load_config(overrides=[f"model.name={args.model}", f"model.backbone={args.backbone}"])
    model = build_model(cfg, 200).eval()
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 200, (args.batch,))
    layer_name = model.default_cam_layer
    wrapped = Logits(model, labels)
    targets = [ClassifierOutputTarget(int(c)) for c in labels]
    print(f"{args.model} on {args.backbone}, {args.size} px, batch {args.batch}, layer {layer_name}, CPU "
          f"({torch.get_num_threads()} threads), {args.steps} timed calls each, pytorch-grad-cam "
          f"{getattr(pytorch_grad_cam, '__version__', '1.5.7')}")
    print("| method | ours maps/s | pytorch-grad-cam maps/s | our speed-up | max abs difference |\n"
          "|---|---:|---:|---:|---:|")
    for name in args.methods.split(","):
        ours = build_localizer(name, layer=layer_name)
        theirs = getattr(pytorch_grad_cam, METHODS[name])(model=wrapped, target_layers=[model.get_submodule(layer_name)])

        def run_ours():
            return ours(model, images, labels)[1]

        def run_theirs():
            return theirs(input_tensor=images, targets=targets)

        ours_s, theirs_s = timed(run_ours, args.steps), timed(run_theirs, args.steps)
        difference = np.abs(library_post_processing(run_ours().numpy(), args.size) - run_theirs()).max()
        print(f"| {name} | {args.batch / ours_s:.2f} | {args.batch / theirs_s:.2f} | {theirs_s / ours_s:.2f}x | "
              f"{difference:.1e} |", flush=True)


if __name__ == "__main__":
    main()
