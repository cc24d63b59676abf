"""Throughput of one model in one run: training, evaluation and map extraction, with FLOPs and memory.

    python scripts/benchmark.py                                   # ACoL on VGG16 at 224 px, batch 2, 1 step
    python scripts/benchmark.py --localizers all --steps 3        # every localizer but the many-forward ones
    python scripts/benchmark.py --backbone resnet50 --batch 8 --device cuda --amp bf16
    python scripts/benchmark.py --model cam --size 448 --steps 10

Measures, on random input of the given size (the model alone: no data loading, no box evaluation):
- training images/s: forward, loss, backward and SGD step (the train loop's work per batch);
- evaluation images/s: a no-grad forward;
- maps/s of each localizer (`acol.cams`; by default the model's own map and Grad-CAM, so that the
  default run stays under a minute on 2 CPU cores; `--localizers all`: every one the model
  declares but the many-forward ones, `MANY_FORWARD`; or `--localizers a,b`), with
  its time in forward-pass equivalents (evaluation images/s over its maps/s): about 1 for the
  in-forward maps and CAM, 2-3 for the Grad-CAM family, hundreds for the perturbation methods;
- FLOPs per image of a training step and of an evaluation forward (torch's FlopCounterMode: matrix
  products and convolutions), and on a GPU the model FLOPs utilisation of training (FLOP/s over the
  GPU's dense bf16 peak: `DENSE_BF16_TFLOPS`, or `--peak-tflops`);
- peak memory of each phase on its own: allocated CUDA memory on a GPU; on the CPU the process's peak
  RSS during the phase (Linux: freed heap memory is returned and the RSS high-water mark reset
  before each phase; elsewhere only the process's lifetime peak is known, and every row repeats it).
Every figure comes from the same process, after one untimed warm-up step of each phase.
"""
from __future__ import annotations

import ctypes
import re
import resource
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the repository is importable
from acol import cli  # noqa: E402
from acol.cams import applicable_localizers, build_localizer, default_localizer_name  # noqa: E402
from acol.cams.localizers import MANY_FORWARD  # noqa: E402
from acol.config import ConfigError, load_config  # noqa: E402
from acol.dist import device_type  # noqa: E402
from acol.engine import amp_dtype, autocast, build_optimizer  # noqa: E402
from acol.methods import METHODS, build_method  # noqa: E402
from acol.models.backbones import BACKBONES  # noqa: E402



def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, steps: int, device: torch.device) -> float:
    """Seconds per call of `fn` over `steps` calls, after one untimed call."""
    fn()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    sync(device)
    return (time.perf_counter() - start) / steps


def flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def reset_peak_memory(device: torch.device) -> bool:
    """Start a phase's peak; False where only the process's lifetime peak can be read."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:  # Linux: give freed heap memory back, then reset VmHWM to the current RSS
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def rss_mib(field: str = "VmHWM") -> float:
    """Linux: the process's peak RSS since the last `reset_peak_memory` (VmHWM), or its RSS now (VmRSS), in MiB."""
    return int(re.search(rf"{field}:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) / 2**10


def peak_memory(device: torch.device, since_reset: bool) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB allocated"
    if since_reset:
        return f"{rss_mib():.0f} MiB peak RSS"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10:.0f} MiB process peak RSS"


def main(argv=None) -> dict:
    p = cli.Parser("python scripts/benchmark.py", __doc__, "--backbone resnet50 --batch 8")
    p.add_argument("--model", default="acol", choices=METHODS.names(), help="the method (model.name)")
    p.add_argument("--backbone", default="vgg16", choices=BACKBONES.names())
    p.add_argument("--size", type=int, default=224, help="input side in pixels")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--classes", type=int, default=200)
    p.add_argument("--steps", type=int, default=1, help="timed calls per phase (after one untimed call)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--amp", default="auto", choices=("auto", "bf16", "fp16", "off"),
                   help="auto (bf16 on CUDA when supported)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (training and evaluation)")
    p.add_argument("--localizers", help="comma-separated localizers to time, or all: every one the model declares "
                                        "but the many-forward ones (acol.cams.localizers.MANY_FORWARD); default: "
                                        "the model's own map and gradcam")
    p.add_argument("--peak-tflops", type=float, help="the device's dense peak in TFLOP/s for the model FLOPs "
                                                     "utilisation (default on CUDA: bf16 tensor-core peaks of known "
                                                     "GPUs, DENSE_BF16_TFLOPS)")
    cli.add_overrides(p, "model.large_feature_map=false")
    args = p.parse_args(argv)
    _, overrides = cli.overrides_of(args)
    for name in ("size", "batch", "classes", "steps"):
        if getattr(args, name) < 1:
            p.error(f"argument --{name}: must be >= 1, got {getattr(args, name)}")

    try:
        cfg = load_config(overrides=[f"model.name={args.model}", f"model.backbone={args.backbone}",
                                     f"train.amp={args.amp}", *overrides])
    except ConfigError as e:
        cli.fail(f"config error: {e}")
    cli.check_device(args.device, "--device")
    cli.set_threads(cfg.train.threads)
    device = torch.device(device_type(args.device))
    dtype = amp_dtype(cfg.train.amp, device)
    torch.manual_seed(0)
    method = build_method(cfg, args.classes)
    model = method.model().to(device)
    if args.localizers == "all":
        names = [n for n in applicable_localizers(model) if n not in MANY_FORWARD]
    else:
        names = args.localizers.split(",") if args.localizers else [default_localizer_name(model), "gradcam"]
    left_out = [n for n in applicable_localizers(model) if n not in names]
    if left_out:
        print(f"not timed: {', '.join(left_out)} (--localizers all: every one but the many-forward ones; or name them)")
    unknown = [n for n in names if n not in model.localizers]
    if unknown:
        p.error(f"argument --localizers: {unknown[0]!r} does not apply to the {args.model} model; "
                f"its localizers: {', '.join(applicable_localizers(model))}")
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    runner = torch.compile(model) if args.compile else model
    optimizer = build_optimizer(model, cfg)
    images = torch.randn(args.batch, 3, args.size, args.size, device=device).to(memory_format=memory_format)
    labels = torch.randint(0, args.classes, (args.batch,), device=device)

    def train_step():
        batch, targets = method.transform_batch(images, labels)
        with autocast(device, dtype):
            out = runner(batch, labels)
        loss = model.loss(out, targets)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def eval_step():
        with torch.no_grad(), autocast(device, dtype):
            runner(images, labels)

    rows = []

    def phase(name, fn, count_flops: bool):
        flop = flops(fn) / args.batch if count_flops else None
        since_reset = reset_peak_memory(device)
        seconds = timed(fn, args.steps, device)
        rows.append((name, args.batch / seconds, flop, peak_memory(device, since_reset)))

    model.train()
    phase("training", train_step, count_flops=True)
    model.eval()
    phase("evaluation", eval_step, count_flops=True)
    for name in names:
        localizer = build_localizer(name)

        def extract(localizer=localizer):
            with autocast(device, dtype):
                localizer(model, images, labels)

        phase(f"maps: {name}", extract, count_flops=False)

    print(f"{args.model} on {args.backbone}, {args.size}x{args.size}, batch {args.batch}, {args.classes} classes, "
          f"device {device} ({torch.get_num_threads()} threads), autocast {dtype}, "
          f"{'channels_last' if args.channels_last else 'NCHW'}{', compiled' if args.compile else ''}; "
          f"{args.steps} timed steps per phase")
    forward = next(rate for name, rate, _, _ in rows if name == "evaluation")
    print("| phase | images/s | GFLOP / image | time in forward passes | peak memory |\n|---|---:|---:|---:|---:|")
    for name, rate, flop, memory in rows:
        ratio = f"{forward / rate:.1f}" if name.startswith("maps") else ""
        gflop = f"{flop / 1e9:.1f}" if flop is not None else ""
        print(f"| {name} | {rate:.2f} | {gflop} | {ratio} | {memory} |")
    if device.type == "cuda" or args.peak_tflops:
        _, rate, flop, _ = rows[0]
        print(utilisation(rate, flop, torch.cuda.get_device_name(device) if device.type == "cuda" else "",
                          args.peak_tflops))
    return {name: rate for name, rate, _, _ in rows}


# dense bf16 tensor-core peaks in TFLOP/s (no sparsity), from the vendors' data sheets; the first name
# contained in torch.cuda.get_device_name() counts, so the specific ones come first
DENSE_BF16_TFLOPS = {"H200": 989.0, "H100 PCIe": 756.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                     "A10G": 70.0, "A10": 125.0, "RTX 4090": 165.0, "RTX 3090": 71.0, "V100": 125.0}


def utilisation(images_per_s: float, flop_per_image: float, device_name: str, peak_tflops: float | None = None) -> str:
    """The line 'model FLOPs utilisation (training): X % of P TFLOP/s' (training FLOP/s over the peak:
    `peak_tflops`, else the device's from DENSE_BF16_TFLOPS), or one saying the peak is unknown."""
    peak = peak_tflops or next((v for k, v in DENSE_BF16_TFLOPS.items() if k in device_name), None)
    if peak is None:
        return f"model FLOPs utilisation (training): unknown peak for {device_name!r}; pass --peak-tflops"
    return (f"model FLOPs utilisation (training): {100 * images_per_s * flop_per_image / (peak * 1e12):.1f} % of "
            f"{peak:g} TFLOP/s")


if __name__ == "__main__":
    main()
