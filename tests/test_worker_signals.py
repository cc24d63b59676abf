"""DataLoader workers leave stop signals to the main process, yet end when their parent terminates them."""
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from acol.dist import leave_signals_to_the_main_process

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not hasattr(signal, "sigwaitinfo"), reason="needs sigwaitinfo (Linux)")


def worker(ready) -> None:
    leave_signals_to_the_main_process(0)
    ready.set()
    while True:
        time.sleep(0.05)


def test_a_worker_ignores_signals_from_others_and_ends_on_its_parents_sigterm():
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    process = context.Process(target=worker, args=(ready,), daemon=True)
    process.start()
    try:
        assert ready.wait(30)
        for name in ("INT", "TERM"):  # sent by `kill` (a process group's signal comes from its sender too)
            subprocess.run(["kill", f"-{name}", str(process.pid)], check=True)
        os.kill(process.pid, signal.SIGINT)  # the parent's SIGINT as well
        time.sleep(0.5)
        assert process.is_alive()
        process.terminate()  # SIGTERM from the parent: DataLoader's shutdown, multiprocessing's exit handler
        process.join(30)
        assert process.exitcode == 0
    finally:
        if process.is_alive():
            process.kill()


def test_an_interpreter_with_persistent_workers_alive_exits():
    """multiprocessing's exit handler terminates daemonic children, then joins them: a worker that ignored
    its parent's SIGTERM kept the interpreter (pytest in CI, a script) waiting forever."""
    code = ("from torch.utils.data import DataLoader\n"
            "from acol.dist import leave_signals_to_the_main_process\n"
            "loader = DataLoader(list(range(8)), batch_size=2, num_workers=2, persistent_workers=True,\n"
            "                    worker_init_fn=leave_signals_to_the_main_process)\n"
            "print(next(iter(loader)).tolist())\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "[0, 1]\n"), done.stderr
