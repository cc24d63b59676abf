"""A training run's folder while it trains: the lock, the log and tracker, the start records
(config.toml, meta.json), the checkpoints, the results, and what a stop signal leaves behind in each
phase (`Signals`: the phase and what to do now). `acol.train` drives a `Run` through its epochs.
"""
from __future__ import annotations

import contextlib
import json
import logging
import platform
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from acol import cli, dist
from acol.config import Config, flatten, to_dict, to_toml
from acol.datasets.worker_streams import streams_of
from acol.engine import CheckpointWriteError, NonFiniteError, rng_state, save_checkpoint, set_rng_state, unwrap
from acol.evaluation.report import SUMMARY
from acol.runlock import RunLock, RunLocked, describe
from acol.textfile import write_atomic
from acol.tracking import Tracker, setup_logging, to_log_file

HPARAM_METRICS = ("top1_cls", "top1_loc@val", "gt_known_loc@val", "maxboxacc_v2", "pxap")  # test, in HParams
FINAL_TEST = "the test split after training (@val: at the box threshold chosen on val), written once at the last step"


def git_sha() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10,
                             cwd=Path(__file__).resolve().parent)
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True, timeout=10,
                               cwd=Path(__file__).resolve().parent).stdout.strip()
        return out.stdout.strip() + ("-dirty" if dirty else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


class Interrupted(Exception):
    """SIGTERM or SIGINT arrived (outside a deferred section, or acted on at the end of one)."""

    def __init__(self, signum: int):
        super().__init__(f"signal {signum}")
        self.signum = signum


class Signals:
    """SIGTERM and SIGINT for a whole run. Outside `deferred()` a signal raises Interrupted at once;
    inside, it is only recorded (`signum`) and the code acts on it at a safe point: the training loop
    after its step (it writes a checkpoint), a write once it is complete. `phase` and `note` say what
    the run was doing and what to do now; the message on exit is built from them."""

    def __init__(self):
        self.signum: int | None = None
        self.depth = 0
        self.phase, self.note = "start-up", "nothing was written; the same command starts again"
        self.logger: logging.Logger | None = None  # the run's, once it is set up: messages go to log.txt too

    def __call__(self, signum, frame) -> None:
        if cli.results_are_complete():  # the rest is clean-up: the command has succeeded
            cli.end_finished(signum)
        self.signum = signum
        if self.depth == 0:
            raise Interrupted(signum)

    def check(self) -> None:
        """Raise Interrupted for a signal recorded in a deferred section."""
        if self.signum is not None:
            raise Interrupted(self.signum)

    @contextlib.contextmanager
    def deferred(self):
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1

    @contextlib.contextmanager
    def installed(self):
        cli.results_complete(False)
        previous = {s: signal.signal(s, self) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def say(message: str, logger: logging.Logger | None = None) -> None:
    """A line for the user: through the run's logger (console and log.txt) once it is set up, else stderr."""
    if logger is not None:
        logger.info(message)
    elif dist.is_main_process():
        print(message, file=sys.stderr, flush=True)


def finite_weights(model: nn.Module, step: int) -> None:
    """Raise NonFiniteError if a weight or buffer is NaN or infinite (never saved as last or best)."""
    for name, value in unwrap(model).state_dict().items():
        if value.is_floating_point() and not torch.isfinite(value).all():
            raise NonFiniteError(f"non-finite weights after step {step} ({name})")


def resume_streams(loader, ckpt: dict, logger: logging.Logger) -> None:
    """Give the training loader's workers the random streams of the checkpoint's run (rank 0's: other
    ranks, and another worker count, start fresh streams, which the log says)."""
    streams, saved = streams_of(loader), ckpt.get("worker_streams")
    if streams is None:
        return
    if saved is None or saved["workers"] != streams.workers or dist.get_rank() != 0:
        logger.info(f"the {streams.workers} data workers start fresh random streams (the checkpoint has none for "
                    "them): the crops and flips after the resume differ from an uninterrupted run's")
        return
    streams.load_state_dict(saved, ckpt.get("batch", 0))


def covered_by(ckpt: dict):
    """Whether a metrics.jsonl record was written before checkpoint `ckpt`: the records of earlier
    steps, and at its own step the val record of an epoch-end checkpoint (written just before it)."""
    def keep(record: dict) -> bool:
        step = record.get("step", -1)
        return step < ckpt["step"] or (step == ckpt["step"] and ckpt.get("batch", 0) == 0
                                       and record.get("split") == "val")
    return keep


def open_run(run_dir: Path, resume: str | None, held: contextlib.ExitStack, report_finished: bool = True) -> str:
    """Lock the run folder (rank 0) and decide, under the lock, what this start does: "finished"
    (results.json exists and `report_finished`), "resume" (auto and checkpoints/last.pt exists, or an
    explicit checkpoint),
    or "fresh" (no checkpoint: files of an earlier start that failed before its first checkpoint are
    cleared, log.txt kept). Refusals (locked, an unfinished run without --resume) exit with one line.
    The lock is released when `held` closes."""
    verdict = None
    if dist.is_main_process():
        lock = RunLock(run_dir)
        try:
            previous = lock.acquire()
        except RunLocked as e:
            verdict = f"refuse:{e}"
        else:
            held.callback(lock.release)
            has_last = (run_dir / "checkpoints" / "last.pt").is_file()
            if (run_dir / "results.json").is_file() and report_finished:
                verdict = "finished"
            elif resume == "auto" and has_last or resume not in (None, "auto"):
                verdict = "resume"
            elif has_last:  # a dead holder is named here: the refusal's release empties the lock file
                left = f", left by a process that ended without releasing it ({describe(previous)})" if previous else ""
                verdict = (f"refuse:error: run folder {run_dir} holds an unfinished run (checkpoints/last.pt{left}): "
                           "continue it with --resume auto, or pass --name NEW to start another")
            else:
                verdict = "fresh"
                for leftover in [run_dir / "metrics.jsonl", run_dir / "meta.json", *run_dir.glob("events.out.tfevents.*")]:
                    leftover.unlink(missing_ok=True)
            if previous and not verdict.startswith("refuse:"):
                say(f"run folder {run_dir}: took over the lock of a process that ended without releasing it "
                    f"({describe(previous)})")
    verdict = dist.broadcast_object(verdict)
    if verdict.startswith("refuse:"):
        cli.fail(verdict.removeprefix("refuse:"))
    return verdict


class Run:
    """The locked folder of a run while it trains (rank 0 writes, every rank calls): its logger and
    tracker, the training objects a checkpoint keeps (`track`), and the signal state (`signals`)."""

    def __init__(self, cfg: Config, run_dir: Path, signals: Signals, resume_step: int | None = None):
        self.cfg, self.dir, self.signals = cfg, run_dir, signals
        self.main = dist.is_main_process()
        self.logger = setup_logging(run_dir if self.main else None, self.main)
        signals.logger = self.logger
        self.tracker = Tracker(run_dir, self.main, purge_step=resume_step)
        self.last = run_dir / "checkpoints" / "last.pt"
        self.batches_done = 0  # of the current epoch: where a checkpoint during validation resumes
        self.model = self.optimizer = self.scaler = self.train_loader = None
        if self.main:  # a process killed while writing (SIGKILL, power loss) leaves its temporary file
            for stale in (run_dir / "checkpoints").glob(".*.pt.tmp*"):
                stale.unlink()

    def track(self, model: nn.Module, optimizer, scaler, train_loader) -> None:
        """The objects whose state a checkpoint keeps."""
        self.model, self.optimizer, self.scaler, self.train_loader = model, optimizer, scaler, train_loader

    def resume(self, ckpt: dict, path: Path) -> tuple[int, int, int, dict]:
        """Restore the tracked objects, RNGs and workers' streams from `ckpt` (the weights are loaded
        already) and drop the metrics.jsonl records written after it; (epoch, batch, step, best)."""
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt.get("scaler", {}))
        epoch, batch, step, best = ckpt["epoch"], ckpt.get("batch", 0), ckpt["step"], ckpt["best"]
        set_rng_state(ckpt["rng"])
        resume_streams(self.train_loader, ckpt, self.logger)
        dropped = self.tracker.keep_jsonl(covered_by(ckpt))
        self.logger.info(f"resumed from {path} at epoch {epoch + (batch > 0)}, step {step}"
                         + (f" (batch {batch} of the epoch)" if batch else "")
                         + (f"; dropped {dropped} metrics.jsonl record(s) written after that checkpoint" if dropped
                            else ""))
        self.batches_done = batch
        return epoch, batch, step, best

    def record_start(self, meta: dict, resumed: bool) -> None:
        """config.toml (re-runnable), meta.json (`meta` plus where and with what it runs; a resume keeps the
        first start's record and adds its own as last_resume) and the config in TensorBoard."""
        if not self.main:
            return
        (self.dir / "config.toml").write_text(to_toml(self.cfg))
        meta = {"argv": sys.argv, "git": git_sha(), "torch": torch.__version__, "python": platform.python_version(),
                "host": platform.node(), **meta, "start_time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        if resumed and (self.dir / "meta.json").is_file():
            meta = json.loads((self.dir / "meta.json").read_text()) | {"last_resume": meta}
        (self.dir / "meta.json").write_text(json.dumps(meta, indent=2))
        self.tracker.text("config", "```toml\n" + to_toml(self.cfg) + "\n```\n\ngit: " + git_sha())

    def phase(self, phase: str, note: str | None = None) -> None:
        """What the run does now, and (when given) what a signal from now on should tell the user."""
        self.signals.phase = phase
        if note is not None:
            self.signals.note = note

    def checkpoint(self, epochs_done: int, batches: int, step: int, best: dict, also_best: bool = False,
                   rng: dict | None = None) -> None:
        """checkpoints/last.pt (and best.pt): everything a resume needs; `batches` > 0 mid-epoch; `rng`:
        the RNG states to resume with (default: the current ones). Weights that are not finite are never saved."""
        finite_weights(self.model, step)
        if not self.main:
            return
        state = {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scaler": self.scaler.state_dict(), "epoch": epochs_done, "batch": batches, "step": step,
                 "best": best, "config": to_dict(self.cfg), "rng": rng or rng_state()}
        streams = streams_of(self.train_loader)
        if streams is not None:
            state["worker_streams"] = streams.state_dict(batches)
        with self.signals.deferred():
            if also_best:
                save_checkpoint(self.dir / "checkpoints" / "best.pt", state)
            save_checkpoint(self.last, state)

    def after_step(self, epoch: int, best: dict) -> Callable[[int, int], None]:
        """The training loop's `after_step` in `epoch`: a stop signal (on any rank) checkpoints the step and
        ends the run; train.checkpoint_every_steps checkpoints."""
        def step_done(step: int, batches: int) -> None:
            self.batches_done = batches
            if dist.any_rank(self.signals.signum is not None):
                self.checkpoint(epoch, batches, step, best)
                self.signals.note = f"checkpoint of step {step} written to {self.last}; continue with --resume auto"
                raise Interrupted(self.signals.signum or signal.SIGTERM)
            every = self.cfg.train.checkpoint_every_steps
            if every and step % every == 0:
                self.checkpoint(epoch, batches, step, best)
        return step_done

    @contextlib.contextmanager
    def stops_cleanly(self):
        """Non-finite weights or a failed checkpoint write end the run with one line; the last good
        checkpoint is kept."""
        try:
            yield
        except NonFiniteError as e:
            kept = f"the last good checkpoint, {self.last}, is kept" if self.last.is_file() else \
                "no checkpoint had been written yet"
            to_log_file(self.logger, f"stopped: {e}; {kept}")
            sys.exit(f"training stopped: {e}; {kept}. Lower optim.lr, or check the batch's images.")
        except CheckpointWriteError as e:
            to_log_file(self.logger, f"stopped: {e}")
            sys.exit(f"training stopped: {e}")

    def write_results(self, results: dict, report: Callable[[], str]) -> None:
        """The test records (metrics.jsonl, TensorBoard's z_test scalars and HParams), results.json and the
        printed `report()`, with any signal held until they are complete (then said: the run succeeded)."""
        test, step = results["test"], results["step"]
        with self.signals.deferred():
            self.tracker.jsonl({"epoch": results["epoch"], "step": step, "split": "test", **test})
            self.tracker.scalars({f"z_test/{k}": v for k, v in test.items()}, step, description=FINAL_TEST)
            self.tracker.hparams(flatten(self.cfg), {f"z_test/{k}": f"test {dict(SUMMARY).get(k, k)}"
                                                     for k in HPARAM_METRICS if k in test})
            self.tracker.close()
            if self.main:
                write_atomic(self.dir / "results.json", json.dumps(results, indent=2))
                print(report(), flush=True)
            if self.signals.signum is not None:
                say(f"signal {self.signals.signum} arrived while the results were written; they are complete "
                    f"({self.dir / 'results.json'})", self.logger)
            dist.cleanup()
        cli.results_complete()  # a signal from now on ends the process with exit 0 (the rest is clean-up)
