"""The CUDA path (marked `cuda`; skipped without a device, run by scripts/gpu_check.sh): every localizer's
maps equal the CPU's, float32 under autocast, a CUDA run resumes bit-identically with deterministic
kernels, and its checkpoint evaluates on the CPU to the same report."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from acol import evaluate, train
from acol.cams import applicable_localizers, build_localizer
from acol.cams.ops import minmax_normalize
from acol.config import load_config
from acol.methods import METHODS, build_model

pytestmark = pytest.mark.cuda
ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "experiments" / "synthetic_acol.toml")
FAST = {"rise": {"n_masks": 16, "grid": 3}, "smoothgradcampp": {"samples": 4}, "integrated_gradients": {"steps": 8}}


def tiny(name):
    torch.manual_seed(0)
    cfg = load_config(overrides=[f"model.name={name}", "model.backbone=smallcnn", "model.head_channels=16"])
    return build_model(cfg, 4).eval()


@contextmanager
def full_float32():
    """No TF32 in convolutions and matrix products, so that CUDA computes what the CPU computes."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.mark.parametrize("model_name", METHODS.names())
def test_every_localizer_on_cuda_equals_the_cpu_and_stays_float32_under_autocast(model_name):
    model = tiny(model_name)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 3, 1])
    gpu_model = tiny(model_name).cuda()
    for name in applicable_localizers(model):
        localizer = build_localizer(name, **FAST.get(name, {}))
        _, on_cpu = localizer(model, x, y)
        with full_float32():
            _, on_gpu = localizer(gpu_model, x.cuda(), y.cuda())
        assert on_gpu.device.type == "cuda" and on_gpu.dtype == torch.float32, name
        torch.testing.assert_close(minmax_normalize(on_gpu).cpu(), minmax_normalize(on_cpu), atol=1e-4, rtol=1e-4,
                                   msg=name)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, half = localizer(gpu_model, x.cuda(), y.cuda())
        assert half.dtype == torch.float32 and torch.isfinite(half).all(), name


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True, map_location="cpu")["model"]


@pytest.mark.parametrize("name", ["acol", "has", "adl", "cutmix", "dawsol"])  # with random batch transforms
def test_a_cuda_run_resumes_bit_identically_and_evaluates_on_the_cpu(name, tiny_overrides, tmp_path):
    config = str(Path(CONFIG).with_name(f"synthetic_{name}.toml"))
    overrides = [*tiny_overrides, "train.global_batch_size=6", "train.device=cuda", "train.deterministic=true",
                 "train.amp=off"]
    train.main(["--config", config, "--name", "straight", *overrides, "train.epochs=2"])
    train.main(["--config", config, "--name", "resumed", *overrides, "train.epochs=2", "train.max_steps=2"])
    train.main(["--config", config, "--name", "resumed", *overrides, "train.epochs=2", "--resume", "auto"])
    straight, resumed = weights(tmp_path / "runs" / "straight"), weights(tmp_path / "runs" / "resumed")
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    reported = json.loads((tmp_path / "runs" / "straight" / "results.json").read_text())["test"]
    on_cpu = evaluate.main(["--run", str(tmp_path / "runs" / "straight"), "--out", str(tmp_path / "cpu"),
                            "train.device=cpu"])
    assert on_cpu["top1_cls"] == reported["top1_cls"]
    assert on_cpu["maxboxacc_v2"] == pytest.approx(reported["maxboxacc_v2"], abs=2.0)


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="needs a machine with exactly one GPU")
def test_more_processes_than_gpus_is_one_line(tiny_overrides):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                           "-m", "acol.train", "--config", CONFIG, *tiny_overrides], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert ("error: torchrun started 2 processes on this node but torch sees 1 CUDA device, and each process "
            "drives one: use --nproc-per-node=1, or train.device=cpu\n") in done.stderr, done.stderr[-3000:]
    assert done.stderr.count("error: torchrun started") == 1 and "invalid device ordinal" not in done.stderr
