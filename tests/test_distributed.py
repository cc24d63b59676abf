"""torchrun with 2 gloo processes: training, sharded evaluation, per-rank seeds, rank-0-only files."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from acol import evaluate, train

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "experiments" / "synthetic_acol.toml")


def torchrun(*args, timeout=300) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", *args]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def test_two_process_training_and_evaluation_equal_one_process(tiny_overrides, tmp_path):
    proc = torchrun("-m", "acol.train", "--config", CONFIG, "--name", "ddp", *tiny_overrides,
                    "train.global_batch_size=6", "train.device=cpu")  # gloo, also where a GPU is present
    run_dir = tmp_path / "runs" / "ddp"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["step"] == 2                                   # 12 images / global batch 6
    assert json.loads((run_dir / "meta.json").read_text())["world_size"] == 2
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # rank 0 alone writes
    assert proc.stdout.count("| test |") == 1                     # one final table
    # the 2-process run's final report == a 1-process evaluation of its checkpoint (with the
    # ranks' one thread: CPU convolutions round differently with other thread counts)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        one = evaluate.main(["--run", str(run_dir), "--out", str(tmp_path / "one")])
    finally:
        torch.set_num_threads(threads)
    assert one == results["test"]
    # a 2-process evaluation == the 1-process one, exactly (counts are summed, shards do not pad)
    torchrun("-m", "acol.evaluate", "--run-dir", str(run_dir), "--out", str(tmp_path / "two"))
    assert json.loads((tmp_path / "two" / "eval_test.json").read_text()) == one
    assert len(list((tmp_path / "two").glob("events.out.tfevents.*"))) == 1


def test_ranks_draw_from_different_seeds():
    proc = torchrun(str(ROOT / "tests" / "ddp_seed_probe.py"), "7", timeout=120)
    rank0, rank1 = json.loads(proc.stdout.strip().splitlines()[-1])
    assert rank0 != rank1
    train.seed_everything(7, deterministic=False)  # one process is rank 0: the same stream as rank 0
    assert torch.rand(4).tolist() == pytest.approx(rank0)
