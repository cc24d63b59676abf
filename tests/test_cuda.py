"""The CUDA path (marked `cuda`; skipped without a device, run by scripts/gpu_check.sh): every localizer's
maps equal the CPU's, float32 under autocast, a CUDA run resumes bit-identically with deterministic
kernels, and its checkpoint evaluates on the CPU to the same report."""
from __future__ import annotations

import json
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
CONFIG = str(Path(__file__).resolve().parents[1] / "experiments" / "synthetic_acol.toml")
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


def test_a_cuda_run_resumes_bit_identically_and_evaluates_on_the_cpu(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, "train.global_batch_size=6", "train.device=cuda", "train.deterministic=true",
                 "train.amp=off"]
    train.main(["--config", CONFIG, "--name", "straight", *overrides, "train.epochs=2"])
    train.main(["--config", CONFIG, "--name", "resumed", *overrides, "train.epochs=2", "train.max_steps=2"])
    train.main(["--config", CONFIG, "--name", "resumed", *overrides, "train.epochs=2", "--resume", "auto"])
    straight, resumed = weights(tmp_path / "runs" / "straight"), weights(tmp_path / "runs" / "resumed")
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    reported = json.loads((tmp_path / "runs" / "straight" / "results.json").read_text())["test"]
    on_cpu = evaluate.main(["--run", str(tmp_path / "runs" / "straight"), "--out", str(tmp_path / "cpu"),
                            "train.device=cpu"])
    assert on_cpu["top1_cls"] == reported["top1_cls"]
    assert on_cpu["maxboxacc_v2"] == pytest.approx(reported["maxboxacc_v2"], abs=2.0)
