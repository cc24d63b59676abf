"""Peak memory and time of the many-forward localizers by `chunk` (copies per forward), against one
forward and backward pass of the same batch: the measurement the `chunk` defaults come from.

    python scripts/bench_chunks.py                              # VGG16 CAM model, 224 px, batch 2
    python scripts/bench_chunks.py --localizers rise --chunks 8,16,32,64 --copies 64

Each row runs in a fresh process on the same random-init model and images (seed 0): one forward
and backward of the batch as a warm-up, then freed heap memory is returned (malloc_trim), the RSS
high-water mark reset (/proc/self/clear_refs) and the RSS read; the row's work follows, and its peak
is the high-water mark's rise over that RSS (Linux only). The reference row is one forward and
backward of the batch (eval mode, the gradients of the parameters included). A localizer row is one
call on `--copies` perturbed copies (at least `chunk`, so that a whole chunk runs): Integrated
Gradients with steps = copies / batch, Smooth Grad-CAM++ with samples = copies / batch, RISE with
n_masks = copies / batch, Score-CAM and Ablation-CAM on the first `copies` (image, channel) pairs
of the layer's K (a map needs batch x K). s / copy is the call's time over its copies (the call's
one clean pass included), so a full map costs about that times the copies of a map. A localizer's
sweep stops after its first chunk over `--limit` times the reference peak.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from acol.cams import build_localizer  # noqa: E402
from acol.cams.perturbation import Perturbation  # noqa: E402
from acol.config import load_config  # noqa: E402
from acol.methods import build_model  # noqa: E402
from benchmark import reset_peak_memory, rss_mib  # noqa: E402  (scripts/ is on the path of a script)

LOCALIZERS = ("integrated_gradients", "smoothgradcampp", "scorecam", "ablationcam", "rise")
REPEATS = {"integrated_gradients": "steps", "smoothgradcampp": "samples", "rise": "n_masks"}  # copies = it x batch


def first_copies(localizer: Perturbation, copies: int) -> None:
    """Make a Score-CAM / Ablation-CAM call run only its first `copies` copies (its first chunks)."""
    chunks = localizer.chunks

    def limited(*args, **kwargs):
        total = 0
        for piece in chunks(*args, **kwargs):
            if total >= copies:
                return
            total += len(piece)
            yield piece

    localizer.chunks = limited


def row(args, name: str | None, chunk: int) -> dict:
    """In this process: the peak RSS rise (MiB) and seconds of the row's work (see the docstring)."""
    torch.manual_seed(0)
    model = build_model(load_config(overrides=[f"model.name={args.model}", f"model.backbone={args.backbone}"]), 200)
    model.eval()
    images = torch.randn(args.batch, 3, args.size, args.size)
    labels = torch.randint(0, 200, (args.batch,))

    def forward_backward():
        model(images, labels)["logits"].gather(1, labels[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)

    forward_backward()
    copies = max(args.copies, chunk)
    if name is None:
        work = forward_backward
    else:
        options = {"chunk": chunk}
        if name in REPEATS:
            options[REPEATS[name]] = copies // args.batch
        localizer = build_localizer(name, **options)
        if name not in REPEATS:
            first_copies(localizer, copies)

        def work():
            localizer(model, images, labels)
    if not reset_peak_memory(torch.device("cpu")):
        raise SystemExit("the peak memory needs Linux (/proc/self/clear_refs)")
    ctypes.CDLL("libc.so.6").malloc_trim(0)
    start_mib, start = rss_mib("VmRSS"), time.perf_counter()
    work()
    seconds = time.perf_counter() - start
    return {"peak_mib": rss_mib() - start_mib, "seconds": seconds, "copies": copies}


def measured(args, name: str | None, chunk: int) -> dict:
    """`row` in a fresh process."""
    command = [sys.executable, __file__, *args.forwarded, "--row", f"{name or 'reference'}:{chunk}"]
    out = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="python scripts/bench_chunks.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="cam", choices=("acol", "cam"))
    p.add_argument("--backbone", default="vgg16", choices=("vgg16", "resnet50", "inception_v3", "smallcnn"))
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--localizers", default=",".join(LOCALIZERS), help="comma-separated subset of the default")
    p.add_argument("--chunks", default="2,4,8,16,32,64", help="chunk sizes to try, ascending")
    p.add_argument("--copies", type=int, default=16, help="perturbed copies per measured call (at least chunk)")
    p.add_argument("--limit", type=float, default=2.0, help="stop a sweep after a peak over this x the reference")
    p.add_argument("--row", help=argparse.SUPPRESS)  # NAME:CHUNK, the subprocess of `measured`
    args = p.parse_args(argv)
    args.forwarded = list(sys.argv[1:] if argv is None else argv)
    if args.row:
        name, chunk = args.row.split(":")
        print(json.dumps(row(args, None if name == "reference" else name, int(chunk))))
        return
    if args.copies % args.batch:
        p.error(f"argument --copies: a multiple of --batch {args.batch}; got {args.copies}")
    names, chunks = args.localizers.split(","), [int(c) for c in args.chunks.split(",")]
    unknown = [n for n in names if n not in LOCALIZERS]
    if unknown:
        p.error(f"argument --localizers: unknown {unknown[0]!r}; valid: {', '.join(LOCALIZERS)}")

    reference = measured(args, None, 1)
    print(f"{args.model} on {args.backbone}, {args.size} px, batch {args.batch}, CPU ({torch.get_num_threads()} "
          f"threads); one forward + backward: {reference['peak_mib']:.0f} MiB peak, {reference['seconds']:.2f} s")
    print("| localizer | chunk | copies | peak MiB | x forward+backward | s / copy |\n|---|---:|---:|---:|---:|---:|")
    for name in names:
        for chunk in chunks:
            result = measured(args, name, chunk)
            ratio = result["peak_mib"] / reference["peak_mib"]
            print(f"| {name} | {chunk} | {result['copies']} | {result['peak_mib']:.0f} | {ratio:.2f} | "
                  f"{result['seconds'] / result['copies']:.3f} |", flush=True)
            if ratio > args.limit:
                break

if __name__ == "__main__":
    main()
