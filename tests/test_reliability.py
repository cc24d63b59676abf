"""Interrupted runs and numerical faults: SIGKILL mid-epoch and SIGTERM, then --resume auto, reach the
uninterrupted run's weights; checkpoint writes are atomic; a non-finite loss stops the run cleanly."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from acol import train
from acol.engine import load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "experiments" / "synthetic_acol.toml")
# 12 train images, batch 2: 6 steps an epoch, a checkpoint after every step
LONG = ["train.global_batch_size=2", "train.epochs=5", "train.checkpoint_every_steps=1", "train.deterministic=true",
        "model.head_channels=32"]


def start(overrides, name, *flags) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.Popen([sys.executable, "-m", "acol.train", "--config", CONFIG, "--name", name, *flags,
                             *overrides], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def finish(overrides, name, *flags) -> str:
    proc = start(overrides, name, *flags)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, ready) -> dict:
    """Poll last.pt until `ready(checkpoint)` holds; the checkpoint."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        try:
            ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
            if ready(ckpt):
                return ckpt
        except (FileNotFoundError, RuntimeError):
            pass
        time.sleep(0.01)
    raise AssertionError("no such checkpoint appeared")


def wait_for_mid_epoch_checkpoint(run_dir: Path, proc: subprocess.Popen, min_step: int = 4) -> dict:
    """Poll last.pt until it is a mid-epoch checkpoint at min_step or later."""
    return wait_for_checkpoint(run_dir, proc, lambda ckpt: ckpt["batch"] > 0 and ckpt["step"] >= min_step)


@pytest.fixture(scope="module")
def long_run(tiny_data, tmp_path_factory):
    """The overrides of a 5-epoch run on the tiny benchmark (LONG), and the folder its runs go to."""
    runs = tmp_path_factory.mktemp("reference")
    data_root, metadata_root = tiny_data
    from tests.conftest import TINY_SPEC
    synthetic = [f"data.synthetic.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY_SPEC.items()]
    overrides = [f"data.root={data_root}", f"data.metadata_root={metadata_root}", *synthetic, "data.resize_size=36",
                 "data.crop_size=32", "data.num_workers=0", "model.backbone=smallcnn", "optim.lr=0.01",
                 "optim.head_lr_mult=1.0", "eval.batch_size=4", "eval.cam_curve_interval=0.01", "log.log_every=1",
                 "log.vis_num=2", f"log.runs_dir={runs}", *LONG]
    return overrides, runs


@pytest.fixture(scope="module")
def uninterrupted(long_run):
    """The reference: the same run without interruption (its final weights, and the overrides)."""
    overrides, runs = long_run
    finish(overrides, "straight")
    return overrides, torch.load(runs / "straight" / "checkpoints" / "last.pt", weights_only=True)["model"], runs


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key, value in a.items():
        assert torch.equal(value, b[key]), key


def test_sigkill_mid_epoch_then_resume_reaches_the_same_weights(uninterrupted):
    overrides, reference, runs = uninterrupted
    proc = start(overrides, "killed")
    seen = wait_for_mid_epoch_checkpoint(runs / "killed", proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert not (runs / "killed" / "results.json").exists()
    assert seen["batch"] > 0  # it died inside an epoch
    out = finish(overrides, "killed", "--resume", "auto")
    assert "resumed from" in out and "of the epoch" in out
    assert_same_weights(torch.load(runs / "killed" / "checkpoints" / "last.pt", weights_only=True)["model"], reference)
    assert not list((runs / "killed" / "checkpoints").glob(".*tmp*"))  # no temporary file left behind


def test_sigterm_writes_a_checkpoint_and_exits_then_resumes(uninterrupted):
    overrides, reference, runs = uninterrupted
    proc = start(overrides, "termed")
    wait_for_mid_epoch_checkpoint(runs / "termed", proc)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
    assert "stopped by signal 15" in out and "--resume auto" in out
    ckpt = load_checkpoint(runs / "termed" / "checkpoints" / "last.pt")
    assert ckpt["step"] > 0
    finish(overrides, "termed", "--resume", "auto")
    assert_same_weights(torch.load(runs / "termed" / "checkpoints" / "last.pt", weights_only=True)["model"], reference)


@pytest.mark.slow
def test_sigterm_mid_warmup_and_mid_cosine_then_resume_reaches_the_same_weights(long_run):
    """30 steps: a 12-step warm-up, then the cosine; stopped after step 3 or so (in the warm-up) and
    after step 18 or so (in the cosine), resumed each time."""
    overrides, runs = long_run
    overrides = [*overrides, "optim.schedule=cosine", "optim.lr_decay_epochs=[]", "optim.warmup_steps=12",
                 "optim.final_lr_factor=0.01"]
    finish(overrides, "cosine")
    for min_step, flags in ((3, ()), (18, ("--resume", "auto"))):
        proc = start(overrides, "cosine_termed", *flags)
        wait_for_mid_epoch_checkpoint(runs / "cosine_termed", proc, min_step)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
    finish(overrides, "cosine_termed", "--resume", "auto")
    assert_same_weights(*(torch.load(runs / run / "checkpoints" / "last.pt", weights_only=True)["model"]
                          for run in ("cosine_termed", "cosine")))


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


def test_a_failed_checkpoint_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"step": 1, "model": {"w": torch.ones(1000)}})
    with pytest.raises(RuntimeError, match="cannot pickle"):  # the write dies half way
        save_checkpoint(path, {"step": 2, "model": {"w": torch.zeros(1000)}, "bad": Unpicklable()})
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]


def test_a_truncated_checkpoint_is_named_and_resume_refuses_it(tiny_overrides, tmp_path):
    overrides = tiny_overrides + ["train.global_batch_size=6"]
    train.main(["--config", CONFIG, "--name", "cut", *overrides])
    last = tmp_path / "runs" / "cut" / "checkpoints" / "last.pt"
    data = last.read_bytes()
    last.write_bytes(data[: len(data) // 2])
    with pytest.raises(RuntimeError, match=r"last.pt cannot be read \(truncated or corrupt"):
        load_checkpoint(last)
    with pytest.raises(SystemExit, match="cannot resume: checkpoint .*last.pt cannot be read"):
        train.main(["--config", CONFIG, "--name", "cut", *overrides, "train.epochs=2", "--resume", "auto"])
    assert load_checkpoint(tmp_path / "runs" / "cut" / "checkpoints" / "best.pt")["step"] == 2  # the other one loads


def test_a_non_finite_loss_stops_with_the_step_and_images_and_keeps_the_last_checkpoint(tiny_overrides, tmp_path):
    overrides = tiny_overrides + ["train.global_batch_size=2", "train.epochs=3", "optim.lr=1e12",
                                  "train.checkpoint_every_steps=1"]
    with pytest.raises(SystemExit) as stopped:
        train.main(["--config", CONFIG, "--name", "nan", *overrides])
    message = str(stopped.value)
    assert "non-finite loss" in message and "at step" in message and "batch images: " in message
    assert "train/" in message  # the batch's image ids (paths under the split's folder)
    last = tmp_path / "runs" / "nan" / "checkpoints" / "last.pt"
    assert f"the last good checkpoint, {last}, is kept" in message
    failed_step = int(message.split("at step ")[1].split(" ")[0])
    assert load_checkpoint(last)["step"] == failed_step - 1


def test_two_concurrent_starts_of_one_run_one_trains_the_other_is_refused(long_run):
    overrides, runs = long_run
    procs = [start(overrides, "twice") for _ in range(2)]
    outs = [proc.communicate(timeout=300)[0] for proc in procs]
    codes = sorted(proc.returncode for proc in procs)
    assert codes == [0, 2], outs
    winner, loser = (procs[0], procs[1]) if procs[0].returncode == 0 else (procs[1], procs[0])
    refusal = outs[procs.index(loser)].strip()
    assert "\n" not in refusal and "Traceback" not in refusal
    assert f"{runs / 'twice'} is in use by another process (host {os.uname().nodename}, pid {winner.pid}, since " \
        in refusal
    lines = [json.loads(line) for line in (runs / "twice" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["split"], r["epoch"]) for r in lines] == [("val", e) for e in range(1, 6)] + [("test", 5)]
    assert len(list((runs / "twice").glob("events.out.tfevents.*"))) == 1


def test_kills_at_random_steps_then_resume_reach_the_same_weights_and_metrics_lines(uninterrupted):
    """SIGKILL at seeded random moments: once the checkpoint of a random step is on disk, after a random
    further delay (mid-step, mid-checkpoint, mid-validation); after each, --resume auto. The end: the
    uninterrupted run's weights and exactly its metrics.jsonl records."""
    overrides, reference, runs = uninterrupted
    rng = random.Random(0)
    for kill, step in enumerate(sorted(rng.sample(range(2, 21), 3))):  # the run has 30 steps
        proc = start(overrides, "random_kills", *(("--resume", "auto") if kill else ()))
        wait_for_checkpoint(runs / "random_kills", proc, lambda ckpt: ckpt["step"] >= step)
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
        assert not (runs / "random_kills" / "results.json").exists()
    finish(overrides, "random_kills", "--resume", "auto")
    read = lambda run: (runs / run / "metrics.jsonl").read_text().splitlines()  # noqa: E731
    assert [json.loads(line) for line in read("random_kills")] == [json.loads(line) for line in read("straight")]
    assert_same_weights(torch.load(runs / "random_kills" / "checkpoints" / "last.pt", weights_only=True)["model"],
                        reference)


def straight_with_workers(overrides: list[str], runs: Path, name: str = "straight_workers") -> str:
    """`name`: the uninterrupted run with these overrides (trained once)."""
    if not (runs / name / "results.json").is_file():
        finish(overrides, name)
    return name


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_process_group_with_workers_stops_the_run_with_one_line(signum, long_run):
    """Ctrl-C in a terminal, `timeout` and schedulers signal the whole group, DataLoader workers included:
    the workers leave the signal to the main process, which finishes its step, checkpoints and says so."""
    overrides, runs = long_run
    overrides = [*overrides, "data.num_workers=2"]
    name = f"group{signum}"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, "-m", "acol.train", "--config", CONFIG, "--name", name, *overrides],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    wait_for_mid_epoch_checkpoint(runs / name, proc, min_step=8)  # the second epoch: the workers' streams ran on
    os.killpg(proc.pid, signum)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signum, out[-2000:]
    assert "Traceback" not in out and "DataLoader worker" not in out, out[-2000:]
    stopped = [line for line in out.splitlines() if "stopped by signal" in line]
    assert len(stopped) == 1 and f"stopped by signal {int(signum)} during " in stopped[0], stopped
    ckpt = load_checkpoint(runs / name / "checkpoints" / "last.pt")
    if "during training epoch" in stopped[0]:
        assert f"checkpoint of step {ckpt['step']} written" in stopped[0]  # the step it was in, not an earlier one
    else:  # on a loaded machine the epoch can end before the signal lands
        assert "during validation after epoch" in stopped[0] and "the epoch's training is saved in" in stopped[0]
    assert "resumed from" in finish(overrides, name, "--resume", "auto")
    assert_same_weights(*(torch.load(runs / run / "checkpoints" / "last.pt", weights_only=True)["model"]
                          for run in (name, straight_with_workers(overrides, runs))))


# Where a signal to the whole group (2 workers) lands in a 2-epoch run, and what the command then says
PHASES = {
    "epoch 2/2:1": (None, "during training epoch 2: checkpoint of step"),
    "eval:1": (None, "during validation after epoch 1: the epoch's training is saved in"),
    "eval:3": (None, "during the final test: training is complete"),
    "results": (0, "arrived while the results were written; they are complete"),
    "after": (0, "after the command had finished: its results are complete; exit 0"),
}


@pytest.mark.parametrize("signum", [signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)])
@pytest.mark.parametrize("when", PHASES)
def test_a_group_signal_in_every_phase_with_workers_is_one_line_then_resumes_exactly(when, signum, long_run):
    """The line, the status (128 + n, or 0 once the results are complete), and `--resume auto` ending with
    the uninterrupted run's weights, metrics.jsonl and results.json."""
    overrides, runs = long_run
    overrides = [*overrides, "data.num_workers=2", "train.epochs=2", "train.checkpoint_every_steps=0"]
    name = f"phase_{when.replace(' ', '_').replace('/', '_').replace(':', '_')}_{int(signum)}"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, "-m", "tests.group_signal_probe", when, str(int(signum)), "--config",
                           CONFIG, "--name", name, *overrides], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300, start_new_session=True)
    status, line = PHASES[when]
    out = proc.stdout + proc.stderr
    assert proc.returncode == (128 + signum if status is None else status), out[-2000:]
    assert "Traceback" not in out and "DataLoader worker" not in out, out[-2000:]
    said = [text for text in out.splitlines() if f"signal {int(signum)}" in text]
    assert len(said) == 1 and line in said[0], said
    if status is None:
        assert "resumed from" in finish(overrides, name, "--resume", "auto")
    reference = straight_with_workers(overrides, runs, "straight_2_epochs")
    assert_same_weights(*(torch.load(runs / run / "checkpoints" / "last.pt", weights_only=True)["model"]
                          for run in (name, reference)))
    for record in ("metrics.jsonl", "results.json"):
        assert (runs / name / record).read_text() == (runs / reference / record).read_text(), record
