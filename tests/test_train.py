"""End-to-end training runs on the tiny synthetic benchmark (the real entry point, the real model)."""
import json
from pathlib import Path

import pytest
import torch

from acol import train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "experiments" / "synthetic_acol.toml")


def run(overrides, *flags):
    return train.main(["--config", CONFIG, *flags, *overrides])


def test_two_step_run_writes_the_run_directory(tiny_overrides, tmp_path):
    results = run(tiny_overrides + ["train.global_batch_size=6"], "--name", "two")  # 12 images: 2 steps
    run_dir = tmp_path / "runs" / "two"
    assert results["step"] == 2 and results["epoch"] == 1
    for name in ("config.toml", "meta.json", "log.txt", "metrics.jsonl", "results.json"):
        assert (run_dir / name).is_file(), name
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records] == ["val", "test"]
    assert 0 <= records[1]["top1_cls"] <= 100
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # their content: tests/test_tensorboard.py
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert ckpt["step"] == 2 and ckpt["epoch"] == 1 and set(ckpt) >= {"model", "optimizer", "rng"}
    assert (run_dir / "checkpoints" / "best.pt").is_file()
    steps = [line.split(" loss=")[0].split(" ", 1)[-1] for line in (run_dir / "log.txt").read_text().splitlines()
             if " loss=" in line]
    assert steps == ["epoch 1/1 step 1/2", "epoch 1/1 step 2/2"]  # log.log_every=1: where the run is, of how much
    assert "train_eta=0s" in (run_dir / "log.txt").read_text()
    # the saved config re-runs as it is
    again = train.main(["--config", str(run_dir / "config.toml"), "--print-config"])
    assert again == {}


@pytest.mark.parametrize("seconds, text", [(0.4, "0s"), (59.6, "1m00s"), (185, "3m05s"), (3600, "1h00m"),
                                           (7322, "2h02m")])
def test_durations_read_at_a_glance(seconds, text):
    from acol.engine import duration
    assert duration(seconds) == text


def test_resume_auto_continues_to_the_same_weights(tiny_overrides, tmp_path, capsys):
    overrides = tiny_overrides + ["train.global_batch_size=6"]
    run(overrides + ["train.epochs=2"], "--name", "straight")
    run(overrides + ["train.epochs=1"], "--name", "resumed")
    # a resume that would train something else is refused with the differing keys, and nothing is touched
    run_dir = tmp_path / "runs" / "resumed"
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    with pytest.raises(SystemExit, match=r"error: --resume: .*resumed was trained with another config \(optim.lr: "
                                         r"0.01 -> 0.5\); resume it with its own config.toml, or pass --name NEW"):
        run(overrides + ["train.epochs=2", "optim.lr=0.5"], "--name", "resumed", "--resume", "auto")
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    results = run(overrides + ["train.epochs=2"], "--name", "resumed", "--resume", "auto")
    assert results["step"] == 4
    assert "resumed from" in (tmp_path / "runs" / "resumed" / "log.txt").read_text()
    straight = torch.load(tmp_path / "runs" / "straight" / "checkpoints" / "last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "runs" / "resumed" / "checkpoints" / "last.pt", weights_only=True)
    assert straight["model"].keys() == resumed["model"].keys()
    for key, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    with pytest.raises(SystemExit, match=r"holds a finished run of another config \(train.epochs: 2 -> 1\)"):
        run(overrides, "--name", "resumed")
    with pytest.raises(SystemExit, match=r"another config \(acol.threshold: 0.6 -> 0.7\)"):
        run(overrides + ["train.epochs=2", "acol.threshold=0.7"], "--name", "resumed", "--resume", "auto")
    # --resume auto on the finished run with its own config, or only run settings changed: its report
    # again, nothing re-tested or written
    before = {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
    for settings in ([], ["train.threads=1", "log.log_every=5"]):
        capsys.readouterr()
        assert run(overrides + ["train.epochs=2", *settings], "--name", "resumed", "--resume", "auto") == results
        assert "this run has finished" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before


def test_missing_data_stops_before_the_run_directory_exists(tiny_overrides, tmp_path):
    with pytest.raises(SystemExit, match=r"data error: metadata folder not found: .*NOPE/train"):
        run(tiny_overrides + ["data.dataset=NOPE"], "--name", "nodata")
    assert not (tmp_path / "runs" / "nodata").exists()


def test_bf16_autocast_run_on_the_cpu(tiny_overrides, tmp_path):
    """The autocast path end to end: losses, float32 maps and the evaluator under bf16."""
    results = run(tiny_overrides + ["train.global_batch_size=6", "train.amp=bf16"], "--name", "bf16")
    assert json.loads((tmp_path / "runs" / "bf16" / "meta.json").read_text())["amp"] == "torch.bfloat16"
    assert 0 <= results["test"]["maxboxacc_v2"] <= 100


@pytest.mark.cuda
def test_cuda_bf16_run(tiny_overrides, tmp_path):
    results = run(tiny_overrides + ["train.global_batch_size=6", "train.device=cuda"], "--name", "gpu")
    meta = json.loads((tmp_path / "runs" / "gpu" / "meta.json").read_text())
    assert meta["device"].startswith("cuda")
    assert meta["amp"] == ("torch.bfloat16" if torch.cuda.is_bf16_supported() else "None")  # train.amp=auto
    assert results["step"] == 2


def final_weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["model"]


def test_fp16_autocast_trains_with_a_grad_scaler(tiny_overrides, tmp_path):
    results = run(tiny_overrides + ["train.global_batch_size=6", "train.amp=fp16"], "--name", "fp16")
    run_dir = tmp_path / "runs" / "fp16"
    assert json.loads((run_dir / "meta.json").read_text())["amp"] == "torch.float16"
    scaler = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)["scaler"]
    assert scaler["scale"] > 0 and scaler["_growth_tracker"] >= 0  # the scaler's state is checkpointed
    assert 0 <= results["test"]["maxboxacc_v2"] <= 100


def test_channels_last_trains_as_nchw(tiny_overrides, tmp_path):
    overrides = tiny_overrides + ["train.global_batch_size=6", "train.device=cpu"]  # CPU kernels (CUDA: bf16)
    run(overrides, "--name", "nchw")
    run(overrides + ["train.channels_last=true"], "--name", "nhwc")
    nchw, nhwc = final_weights(tmp_path / "runs" / "nchw"), final_weights(tmp_path / "runs" / "nhwc")
    conv = "backbone.features.0.weight"  # the model really ran in NHWC: its conv weights are stored so
    assert nhwc[conv].is_contiguous(memory_format=torch.channels_last) and not nhwc[conv].is_contiguous()
    for key, value in nchw.items():
        torch.testing.assert_close(nhwc[key], value, atol=1e-4, rtol=1e-4, msg=key)


@pytest.mark.slow
def test_compiled_training_matches_eager(tiny_overrides, tmp_path):
    overrides = tiny_overrides + ["train.global_batch_size=6"]
    run(overrides, "--name", "eager")
    run(overrides + ["train.compile=true"], "--name", "compiled")
    eager, compiled = final_weights(tmp_path / "runs" / "eager"), final_weights(tmp_path / "runs" / "compiled")
    for key, value in eager.items():
        torch.testing.assert_close(compiled[key], value, atol=1e-3, rtol=1e-3, msg=key)


def test_sync_bn_on_the_cpu_is_refused(tiny_overrides):
    with pytest.raises(SystemExit, match="train.sync_bn needs CUDA"):
        run(tiny_overrides + ["train.sync_bn=true", "train.device=cpu"], "--name", "syncbn")


def test_check_data_flag_reports_and_exits(tiny_overrides, capsys):
    with pytest.raises(SystemExit) as done:
        run(tiny_overrides, "--check-data")
    assert done.value.code == 0 and "no problems found" in capsys.readouterr().out
    with pytest.raises(SystemExit) as failed:
        run(tiny_overrides + ["model.num_classes=2"], "--check-data")  # the tiny set has labels 0..2
    assert failed.value.code == 1 and "class_labels.txt:" in capsys.readouterr().out
