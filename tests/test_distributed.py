"""torchrun with 2 gloo processes: training, sharded evaluation, per-rank seeds, rank-0-only files."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from acol import dist, evaluate, train
from acol.engine import load_checkpoint

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


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_a_torchrun_group_is_one_line_and_128_plus_n(signum, tiny_overrides, tmp_path):
    """Ctrl-C (or a scheduler's SIGTERM) reaches torchrun's agent and every worker: through acol.launch the
    command ends with 128 + n, rank 0's line and the launcher's, no traceback from the agent or rank 1."""
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "acol.launch", "--standalone", "--nproc-per-node=2", "-m", "acol.train", "--config",
           CONFIG, "--name", "sig", *tiny_overrides, "train.device=cpu", "train.global_batch_size=2", "train.epochs=40"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    last = tmp_path / "runs" / "sig" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.is_file() and proc.poll() is None and time.monotonic() < deadline:  # epoch 1 is done
        time.sleep(0.2)
    os.killpg(proc.pid, signum)
    out = proc.communicate(timeout=120)[0]
    assert proc.returncode == 128 + signum, out[-3000:]
    assert "Traceback" not in out and "death signal" not in out, out[-3000:]
    assert out.count(f"stopped by signal {int(signum)} during ") == 1, out[-3000:]
    assert f"torchrun: stopped by signal {int(signum)}: the workers were shut down" in out
    assert load_checkpoint(last)["step"] >= 6


def test_only_a_later_rank_treats_a_closed_connection_as_its_peer_ending(monkeypatch):
    monkeypatch.setattr(dist, "is_distributed", lambda: True)
    closed = RuntimeError("[../gloo/transport/tcp/pair.cc:561] Connection closed by peer [127.0.0.1]:64231")
    monkeypatch.setattr(dist, "get_rank", lambda: 1)
    assert dist.peer_ended(closed) and not dist.peer_ended(RuntimeError("out of memory"))
    monkeypatch.setattr(dist, "get_rank", lambda: 0)  # rank 0's own failure is never hidden
    assert not dist.peer_ended(closed)
