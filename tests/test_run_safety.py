"""One writer per run folder, signals in every phase, metrics.jsonl after resumes, weights that are
never saved non-finite: in-process runs on the tiny benchmark, with real signals sent at chosen points."""
import json
import os
import signal
from pathlib import Path

import pytest
import torch

from acol import train
from acol.engine import NonFiniteError, load_checkpoint
from acol.run import covered_by, finite_weights
from acol.runlock import LOCK_FILE, RunLock, RunLocked

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "experiments" / "synthetic_acol.toml")


def run(overrides, *flags, name="r"):
    return train.main(["--config", CONFIG, "--name", name, *flags, *overrides])


def records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def signal_on_call(monkeypatch, name: str, when=lambda *a, **k: True, signum=signal.SIGTERM):
    """train.<name> sends `signum` to this process on its first call for which `when(*args)` holds."""
    original, sent = getattr(train, name), []

    def wrapped(*args, **kwargs):
        if not sent and when(*args, **kwargs):
            sent.append(True)
            os.kill(os.getpid(), signum)
        return original(*args, **kwargs)
    monkeypatch.setattr(train, name, wrapped)
    return sent


def test_the_lock_names_its_holder_is_released_and_a_dead_holder_is_taken_over(tmp_path):
    first, second = RunLock(tmp_path / "run"), RunLock(tmp_path / "run")
    assert first.acquire() == {}
    with pytest.raises(RunLocked, match=rf"run folder .*run is in use by another process \(host .*, pid {os.getpid()}, "
                                        r"since \d{4}-.*\); wait for it to finish, stop it, or pass --name NEW"):
        second.acquire()
    first.release()
    assert (tmp_path / "run" / LOCK_FILE).read_text() == ""  # released cleanly: no holder left
    assert second.acquire() == {}
    second.release()
    # a holder that died keeps its record but not the kernel's lock: the next one takes over and is told
    dead = {"host": "elsewhere", "pid": 999999, "start_time": "2026-01-01T00:00:00", "argv": []}
    (tmp_path / "run" / LOCK_FILE).write_text(json.dumps(dead))
    with RunLock(tmp_path / "run") as lock:
        assert lock.acquire() == dead
        assert json.loads((tmp_path / "run" / LOCK_FILE).read_text())["pid"] == os.getpid()


def test_a_run_takes_over_a_dead_processs_lock(tiny_overrides, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "r"
    run_dir.mkdir(parents=True)
    (run_dir / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 999999, "start_time": "T0"}))
    run(tiny_overrides)
    assert "took over the lock of a process that ended without releasing it (host elsewhere, pid 999999, since T0)" \
        in capsys.readouterr().err
    assert (run_dir / "results.json").is_file() and (run_dir / LOCK_FILE).read_text() == ""


def test_a_locked_run_is_refused_with_its_holder_and_nothing_is_touched(tiny_overrides, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "r"
    with RunLock(run_dir) as holder:
        holder.acquire()
        with pytest.raises(SystemExit) as refused:
            run(tiny_overrides)
    assert refused.value.code == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line and f"is in use by another process (host {os.uname().nodename}, pid {os.getpid()}" in line
    assert sorted(p.name for p in run_dir.iterdir()) == [LOCK_FILE]


def test_a_signal_at_start_up_exits_128_plus_n_with_nothing_written(tiny_overrides, tmp_path, monkeypatch, capsys):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}  # SIG_IGN in a background job
    sent = signal_on_call(monkeypatch, "build_method", signum=signal.SIGINT)
    with pytest.raises(SystemExit) as stopped:
        run(tiny_overrides)
    assert sent and stopped.value.code == 128 + signal.SIGINT
    assert "stopped by signal 2 during start-up: nothing was written; the same command starts again" in \
        capsys.readouterr().err
    assert not (tmp_path / "runs" / "r").exists()
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored


@pytest.mark.parametrize("at", ["evaluate", "heatmap_strips"])
def test_a_signal_during_validation_keeps_the_epochs_training(at, tiny_overrides, tmp_path, monkeypatch, capsys):
    """At `evaluate` the val loader has not started; at `heatmap_strips` it has drawn its base seed from
    the global RNG (which the training crops use too): the checkpoint keeps the RNG of the epoch's end."""
    overrides = [*tiny_overrides, "train.epochs=2"]
    run(overrides, name="straight")
    sent = signal_on_call(monkeypatch, at)  # the first call: validation after epoch 1
    with pytest.raises(SystemExit) as stopped:
        run(overrides)
    assert sent and stopped.value.code == 128 + signal.SIGTERM
    run_dir = tmp_path / "runs" / "r"
    assert "stopped by signal 15 during validation after epoch 1: the epoch's training is saved in " \
           f"{run_dir / 'checkpoints' / 'last.pt'}" in capsys.readouterr().out
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert (ckpt["epoch"], ckpt["batch"], ckpt["step"]) == (0, 3, 3)  # after epoch 1's 3 batches, before its val
    written = records(run_dir) if (run_dir / "metrics.jsonl").exists() else []
    assert [r["split"] for r in written] == ([] if at == "evaluate" else ["val"])  # the resume drops that one
    monkeypatch.undo()
    run(overrides, "--resume", "auto")
    assert records(run_dir) == records(tmp_path / "runs" / "straight")  # one line per evaluation, same values
    for key, value in load_checkpoint(tmp_path / "runs" / "straight" / "checkpoints" / "last.pt")["model"].items():
        assert torch.equal(value, load_checkpoint(run_dir / "checkpoints" / "last.pt")["model"][key]), key


def test_a_signal_during_the_final_test_then_resume_finishes_the_report(tiny_overrides, tmp_path, monkeypatch, capsys):
    sent = signal_on_call(monkeypatch, "evaluate", when=lambda *a, threshold=None, **k: threshold is not None)
    with pytest.raises(SystemExit) as stopped:
        run(tiny_overrides)
    run_dir = tmp_path / "runs" / "r"
    assert sent and stopped.value.code == 128 + signal.SIGTERM
    assert f"during the final test: training is complete ({run_dir / 'checkpoints' / 'last.pt'}); --resume auto " \
           "finishes the report" in capsys.readouterr().out
    assert not (run_dir / "results.json").exists()
    monkeypatch.undo()
    results = run(tiny_overrides, "--resume", "auto")
    assert [(r["split"], r["epoch"]) for r in records(run_dir)] == [("val", 1), ("test", 1)]
    assert json.loads((run_dir / "results.json").read_text()) == json.loads(json.dumps(results))


def test_a_signal_while_writing_results_waits_for_them_and_exits_0(tiny_overrides, tmp_path, monkeypatch, capsys):
    sent = signal_on_call(monkeypatch, "final_report")
    results = run(tiny_overrides)  # returns: exit status 0
    run_dir = tmp_path / "runs" / "r"
    assert sent and json.loads((run_dir / "results.json").read_text()) == json.loads(json.dumps(results))
    assert f"signal 15 arrived while the results were written; they are complete ({run_dir / 'results.json'})" in \
        capsys.readouterr().out


def test_a_resume_drops_the_metrics_lines_its_checkpoint_does_not_cover():
    lines = [{"split": "val", "epoch": 1, "step": 3}, {"split": "val", "epoch": 2, "step": 6},
             {"split": "test", "epoch": 2, "step": 6}]
    end_of_epoch_2 = covered_by({"step": 6, "batch": 0})  # written after epoch 2's val
    assert [r for r in lines if end_of_epoch_2(r)] == lines[:2]
    last_batch_of_epoch_2 = covered_by({"step": 6, "batch": 3})  # written before epoch 2's val
    assert [r for r in lines if last_batch_of_epoch_2(r)] == lines[:1]
    mid_epoch_2 = covered_by({"step": 4, "batch": 1})
    assert [r for r in lines if mid_epoch_2(r)] == lines[:1]


def test_a_resume_between_validation_and_checkpoint_keeps_one_line_per_evaluation(tiny_overrides, tmp_path):
    """A process killed after epoch 2's val line but before epoch 2's checkpoint: simulated by putting
    epoch 1's checkpoint back as last.pt after a finished 2-epoch run (its metrics.jsonl then holds
    lines the checkpoint does not cover: val 2 and test)."""
    overrides = [*tiny_overrides, "train.epochs=2"]
    run(overrides, "train.epochs=1", name="one")  # epoch 1's end-of-epoch checkpoint, as the 2-epoch run has it
    run(overrides)
    run_dir = tmp_path / "runs" / "r"
    reference = records(run_dir)
    (run_dir / "results.json").unlink()
    (run_dir / "checkpoints" / "last.pt").write_bytes((tmp_path / "runs" / "one" / "checkpoints" / "last.pt").read_bytes())
    run(overrides, "--resume", "auto")
    assert records(run_dir) == reference


def test_non_finite_weights_are_named_and_stop_the_run_before_any_save(tiny_overrides):
    from acol.config import load_config
    from acol.methods import build_method
    model = build_method(load_config(CONFIG, tiny_overrides), 3).model()
    finite_weights(model, 7)  # a fresh model passes
    with torch.no_grad():
        next(p for n, p in model.named_parameters() if n.startswith("head_b")).view(-1)[0] = float("inf")
    with pytest.raises(NonFiniteError, match=r"non-finite weights after step 7 \(head_b\..*\)"):
        finite_weights(model, 7)


def test_a_start_that_failed_before_its_first_checkpoint_is_started_again(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, "train.global_batch_size=2", "optim.lr=1e12"]
    with pytest.raises(SystemExit, match="non-finite loss nan at step 2 .*; no checkpoint had been written yet"):
        run(overrides)  # fails in its first epoch: nothing saved, the attempt's files left
    run_dir = tmp_path / "runs" / "r"
    assert (run_dir / "log.txt").is_file() and (run_dir / "metrics.jsonl").exists() is False
    assert not (run_dir / "checkpoints" / "last.pt").exists() and list(run_dir.glob("events.out.tfevents.*"))
    run(tiny_overrides)  # the same name without --resume: starts again instead of "an unfinished run"
    assert [(r["split"], r["epoch"]) for r in records(run_dir)] == [("val", 1), ("test", 1)]
    assert len(list(run_dir.glob("events.out.tfevents.*"))) == 1  # the failed attempt's events are gone
    assert "non-finite loss" in (run_dir / "log.txt").read_text()  # the log keeps the failed attempt


def test_a_full_disk_at_a_checkpoint_stops_with_one_line_and_the_previous_one_resumes(tiny_overrides, tmp_path,
                                                                                       monkeypatch, capsys):
    """Simulated ENOSPC (no tmpfs without root): every fsync after epoch 1's two checkpoint files fails."""
    import errno
    real_fsync, calls = os.fsync, []

    def fsync(fd):
        calls.append(fd)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_fsync(fd)
    monkeypatch.setattr(os, "fsync", fsync)
    overrides = [*tiny_overrides, "train.epochs=2"]
    with pytest.raises(SystemExit) as stopped:
        run(overrides)
    last = tmp_path / "runs" / "r" / "checkpoints" / "last.pt"
    assert str(stopped.value).startswith("training stopped: cannot write checkpoint ")
    assert "no space left on device" in str(stopped.value) and "continue with --resume auto" in str(stopped.value)
    assert "cannot write checkpoint" not in capsys.readouterr().out  # said once: the exit's line (stderr)
    assert "stopped: cannot write checkpoint" in (tmp_path / "runs" / "r" / "log.txt").read_text()  # and logged
    monkeypatch.undo()
    assert load_checkpoint(last)["epoch"] == 1 and not list(last.parent.glob(".*tmp*"))
    run(overrides, "--resume", "auto")
    assert [(r["split"], r["epoch"]) for r in records(tmp_path / "runs" / "r")] == [("val", 1), ("val", 2), ("test", 2)]


def test_a_finished_run_saved_before_a_key_existed_is_still_the_same_run(tiny_overrides, tmp_path, capsys):
    results = run(tiny_overrides)
    saved = tmp_path / "runs" / "r" / "config.toml"
    lines = saved.read_text().splitlines()
    saved.write_text("\n".join(line for line in lines if not line.startswith(("momentum =", "train_split ="))))
    assert run(tiny_overrides) == results  # its keys' defaults: the same config, the table again
    assert "this run has finished" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"holds a finished run of another config \(optim.momentum: 0.9 -> 0.8\)"):
        run([*tiny_overrides, "optim.momentum=0.8"])


def test_an_unfinished_run_refused_names_the_dead_holder_it_found(tiny_overrides, tmp_path, capsys):
    run_dir = tmp_path / "runs" / "r"
    (run_dir / "checkpoints").mkdir(parents=True)
    (run_dir / "checkpoints" / "last.pt").write_bytes(b"")  # a run killed (SIGKILL) after a checkpoint
    (run_dir / LOCK_FILE).write_text(json.dumps({"host": "elsewhere", "pid": 999999, "start_time": "T0"}))
    with pytest.raises(SystemExit) as refused:
        run(tiny_overrides)
    assert refused.value.code == 2
    assert ("holds an unfinished run (checkpoints/last.pt, left by a process that ended without releasing it (host "
            "elsewhere, pid 999999, since T0)): continue it with --resume auto") in capsys.readouterr().err
