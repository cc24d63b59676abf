"""Our post-hoc maps against pytorch-grad-cam's: speed, peak memory and map difference, every method both have.

    pip install grad-cam==1.5.7            # the reference library (not a dependency of acol)
    python scripts/bench_vs_pytorch_grad_cam.py                        # VGG16-ACoL, batch 2
    python scripts/bench_vs_pytorch_grad_cam.py --model cam --methods scorecam,ablationcam
    python scripts/bench_vs_pytorch_grad_cam.py --run runs/synthetic_acol_lite0-s0   # a trained model

Methods: Grad-CAM, Grad-CAM++, HiResCAM, XGrad-CAM, LayerCAM and Eigen-CAM on the model as
configured at `--size` px; Score-CAM and Ablation-CAM (one forward per channel of the layer) on
the same model with `--perturbation-channels` hidden channels in its head (the layer's K) at
`--perturbation-size` px, so that a CPU manages them. Both implementations get the same random-init
model (seed 0), layer (the model's `default_cam_layer`), images and target classes, and run with
their own defaults (pytorch-grad-cam: Score-CAM 16 and Ablation-CAM 32 copies per forward; ours:
the `chunk` of each localizer); our Score-CAM uses the library's weights (weights="softmax_logit").
With `--run`, every method runs on that training run's model (its last checkpoint) and layer, on
`--batch` of its test images spread over the split (their labels the targets), at the run's input
size: a trained network has flat and all-zero channels, which a random one hardly has (acol.cams.
perturbation: Score-CAM and Ablation-CAM skip what they need not forward). Run it from the folder
the run was trained in (the data set's path is relative to it).

- speed: both in this process, after one untimed warm-up call each, `--steps` timed calls each,
  ours then theirs; the ratio is their time over ours.
- peak memory: each implementation of each method in a fresh subprocess (the same model, images
  and arguments), which makes one warm-up call, returns freed heap memory to the system
  (malloc_trim), resets the RSS high-water mark (/proc/self/clear_refs) and reads its RSS, then
  makes the measured call: the peak is the high-water mark's rise over that RSS. It sees every
  allocation, torch's and numpy's alike (tracemalloc sees neither torch's allocator nor a
  library's C buffers), and counts the model, the images and the warm-up's caches for neither.
  Linux only; the ratio is ours over theirs.
- Score-CAM's bound: both implementations run the same 1 + K forwards of the whole network, so
  ours can be at most as much faster as its forward of a chunk of copies (channels_last on the CPU)
  is than the library's (NCHW). After the table the script times both forwards of 16 copies and
  gives ours in GFLOP/s (torch's FLOP counter) beside a float32 2048x2048 matrix product's, the
  rate this CPU reaches at all.
- difference: the largest absolute difference between the two maps after the library's own
  post-processing (ReLU, min-max with its 1e-7 epsilon, cv2 bilinear resizing to the input,
  min-max again), applied to ours as well. Where we follow the paper and the library does not,
  the maps differ by design (acol/cams docstrings): Grad-CAM++ (the library's epsilon), HiResCAM
  (its clipping), Eigen-CAM (its centring) and Score-CAM (its align_corners=True upsampling).
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
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

GRADIENT = {"gradcam": "GradCAM", "gradcam_pp": "GradCAMPlusPlus", "hirescam": "HiResCAM", "xgradcam": "XGradCAM",
            "layercam": "LayerCAM", "eigencam": "EigenCAM"}
PERTURBATION = {"scorecam": "ScoreCAM", "ablationcam": "AblationCAM"}
METHODS = {**GRADIENT, **PERTURBATION}
os.environ.setdefault("TQDM_DISABLE", "1")  # the library's progress bars
OPTIONS = {"scorecam": {"weights": "softmax_logit"}}  # ours as the library weighs


class Logits(nn.Module):
    """The model as pytorch-grad-cam expects it: images in, logits out. The forward gets no labels
    (ACoL erases with its prediction): the logits are branch A's, which erasing does not touch, and
    the library forwards copies in batches the labels would not match."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)["logits"]


def scale(m: np.ndarray) -> np.ndarray:
    """pytorch-grad-cam's min-max: x - min, / (1e-7 + max)."""
    m = m - m.min()
    return m / (1e-7 + m.max())


def library_post_processing(maps: np.ndarray, size: int) -> np.ndarray:
    """What pytorch-grad-cam does to a layer's map: ReLU, scale, cv2 bilinear resize to the input,
    and (aggregating its target layers) scale again."""
    return np.stack([scale(cv2.resize(scale(np.maximum(m, 0)).astype(np.float32), (size, size))) for m in maps])


def trained_setting(run: str, batch: int):
    """(model, images, labels, size): the run's model and `batch` test images spread over the split."""
    from acol.datasets.dataset import build_dataset
    from acol.datasets.transforms import normalize_on_device
    from acol.evaluate import load_run, spread_batch
    cfg, model = load_run(Path(run), overrides=["train.device=cpu"])[:2]
    samples = spread_batch(build_dataset(cfg, "test", train=False), batch)
    images = normalize_on_device(samples["image"], torch.device("cpu"))
    return model.eval(), images, samples["label"], images.shape[-1]


def setting(method: str, args):
    """(model, images, labels, size) for `method`: the perturbation methods on the narrow head, or the
    run's (`--run`)."""
    if args.run:
        return trained_setting(args.run, args.batch)
    perturbation = method in PERTURBATION
    size = args.perturbation_size if perturbation else args.size
    overrides = [f"model.name={args.model}", f"model.backbone={args.backbone}"]
    if perturbation:
        overrides.append(f"model.head_channels={args.perturbation_channels}")
    torch.manual_seed(0)
    model = build_model(load_config(overrides=overrides), 200).eval()
    images = torch.randn(args.batch, 3, size, size)
    labels = torch.randint(0, 200, (args.batch,))
    return model, images, labels, size


def implementations(method: str, model, images, labels) -> dict:
    """{"ours": call, "theirs": call}, each giving (B, h, w) maps (ours at the layer's resolution)."""
    import pytorch_grad_cam
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    layer = model.default_cam_layer
    ours = build_localizer(method, layer=layer, **OPTIONS.get(method, {}))
    theirs = getattr(pytorch_grad_cam, METHODS[method])(model=Logits(model), target_layers=[model.get_submodule(layer)])
    targets = [ClassifierOutputTarget(int(c)) for c in labels]
    return {"ours": lambda: ours(model, images, labels)[1].numpy(),
            "theirs": lambda: theirs(input_tensor=images, targets=targets)}


def peak_mib(method: str, which: str, args) -> float:
    """Run in a fresh process: the RSS rise (MiB) of one call after a warm-up call (see the docstring)."""
    command = [sys.executable, __file__, "--memory-of", f"{method}:{which}", *args.forwarded]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_mib"]


def measure_memory(method: str, which: str, args) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from benchmark import reset_peak_memory, rss_mib
    call = implementations(method, *setting(method, args)[:3])[which]
    call()
    if not reset_peak_memory(torch.device("cpu")):
        raise SystemExit("peak memory needs Linux (/proc/self/clear_refs)")
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    start = rss_mib("VmRSS")
    call()
    print(json.dumps({"peak_mib": rss_mib() - start}))


def forward_bound(args) -> str:
    """One line: the forward of 16 Score-CAM copies in NCHW and in channels_last, the ratio, and ours
    in GFLOP/s beside a float32 matrix product's (the docstring's bound)."""
    from torch.utils.flop_counter import FlopCounterMode

    from acol.cams.localizers import class_logits, cpu_channels_last
    model = setting("scorecam", args)[0]
    copies = torch.randn(16, 3, args.perturbation_size, args.perturbation_size)
    ours = cpu_channels_last(copies)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            class_logits(model, ours)
        nchw, cl = (timed(lambda: class_logits(model, x), args.steps) for x in (copies, ours))
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    gemm = 2 * 2048 ** 3 / timed(lambda: a @ b, 5)
    return (f"Score-CAM's bound (both run 1 + K forwards): a forward of 16 copies takes {nchw * 1e3:.1f} ms in NCHW "
            f"(theirs) and {cl * 1e3:.1f} ms in channels_last (ours), {nchw / cl:.2f}x; ours runs "
            f"{counter.get_total_flops() / cl / 1e9:.0f} GFLOP/s, a float32 2048x2048 matrix product "
            f"{gemm / 1e9:.0f} GFLOP/s on this CPU")


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
    p.add_argument("--size", type=int, default=224, help="input side of the gradient methods and Eigen-CAM")
    p.add_argument("--perturbation-size", type=int, default=112, help="input side of Score-CAM and Ablation-CAM")
    p.add_argument("--perturbation-channels", type=int, default=32,
                   help="model.head_channels for Score-CAM and Ablation-CAM: the K forwards per image")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--run", help="a training run: its model and test images instead of a random-init model")
    p.add_argument("--steps", type=int, default=2, help="timed calls of each implementation")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {','.join(METHODS)}")
    p.add_argument("--memory-of", help=argparse.SUPPRESS)  # METHOD:ours|theirs, the subprocess of peak_mib
    args = p.parse_args(argv)
    args.forwarded = list(sys.argv[1:] if argv is None else argv)
    try:
        import pytorch_grad_cam
    except ImportError:
        p.error("needs the reference library: pip install grad-cam==1.5.7")
    if args.memory_of:
        measure_memory(*args.memory_of.split(":"), args)
        return
    methods = args.methods.split(",")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        p.error(f"argument --methods: unknown method {unknown[0]!r}; valid: {', '.join(METHODS)}")

    subject = (f"the model of {args.run} (last checkpoint), {args.batch} of its test images" if args.run else
               f"{args.model} on {args.backbone}, batch {args.batch}; gradient methods and Eigen-CAM at {args.size} "
               f"px, Score-CAM and Ablation-CAM at {args.perturbation_size} px with K = {args.perturbation_channels}")
    print(f"{subject}; CPU ({torch.get_num_threads()} threads), {args.steps} timed calls each, pytorch-grad-cam "
          f"{getattr(pytorch_grad_cam, '__version__', '1.5.7')}")
    print("| method | ours s/call | theirs s/call | speed-up | ours peak MiB | theirs peak MiB | memory ratio | "
          "max abs difference |\n|---|---:|---:|---:|---:|---:|---:|---:|")
    for method in methods:
        model, images, labels, size = setting(method, args)
        run = implementations(method, model, images, labels)
        ours_s, theirs_s = timed(run["ours"], args.steps), timed(run["theirs"], args.steps)
        difference = np.abs(library_post_processing(run["ours"](), size) - run["theirs"]()).max()
        ours_mib, theirs_mib = peak_mib(method, "ours", args), peak_mib(method, "theirs", args)
        print(f"| {method} | {ours_s:.3g} | {theirs_s:.3g} | {theirs_s / ours_s:.2f}x | {ours_mib:.0f} | "
              f"{theirs_mib:.0f} | {ours_mib / theirs_mib:.2f} | {difference:.1e} |", flush=True)
    if "scorecam" in methods and not args.run:
        print(forward_bound(args))


if __name__ == "__main__":
    main()
