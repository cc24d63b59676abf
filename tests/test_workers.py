"""DataLoader workers: they leave stop signals to the main process yet end when their parent terminates
them, and their random streams survive a resume mid-epoch."""
import functools
import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from acol.datasets.dataset import ResumableSampler, collate
from acol.datasets.worker_streams import WorkerStreams, collate_with_stream, epoch_batches
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


class Draws(Dataset):
    """12 samples whose images are draws from the worker's torch RNG (as the random crops are)."""

    def __len__(self) -> int:
        return 12

    def __getitem__(self, index: int) -> dict:
        return {"image": torch.rand(3), "label": 0, "boxes": torch.zeros(0, 4), "mask": None,
                "image_id": str(index), "index": index}


def draws_loader(workers: int) -> DataLoader:
    """A training loader as `build_loader` makes one: shuffled by (seed, epoch), persistent workers."""
    dataset = Draws()
    return DataLoader(dataset, batch_size=2, sampler=ResumableSampler(dataset, 1, 0, shuffle=True, seed=0,
                                                                      drop_last=True),
                      drop_last=True, generator=torch.Generator().manual_seed(0), num_workers=workers,
                      persistent_workers=True, worker_init_fn=WorkerStreams(workers),
                      collate_fn=functools.partial(collate_with_stream, collate=collate))


def images(loader, epoch: int, skip: int = 0, stop: int | None = None) -> list[torch.Tensor]:
    return [batch["image"] for batch in itertools.islice(epoch_batches(loader, epoch, skip), stop)]


@pytest.mark.filterwarnings("ignore:This DataLoader will create")  # 3 workers on 2 cores
@pytest.mark.parametrize("workers", [2, 3])
def test_a_resume_mid_epoch_draws_what_the_uninterrupted_run_drew(workers):
    """Stopped after k batches of the second epoch (every k, so every worker's place in its round), the
    resumed loader draws the rest of that epoch and the next as the uninterrupted one did."""
    straight = draws_loader(workers)
    expected = [images(straight, epoch) for epoch in range(3)]
    assert not torch.equal(expected[1][0], expected[2][0])  # the streams run on across epochs
    for k in range(6):
        first = draws_loader(workers)
        assert torch.equal(torch.stack(images(first, 0)), torch.stack(expected[0]))
        trained = images(first, 1, stop=k)
        saved = first.worker_init_fn.state_dict(k)
        del first
        resumed = draws_loader(workers)
        resumed.worker_init_fn.load_state_dict(saved, k)
        rest = images(resumed, 1, skip=k)
        assert len(rest) == 6 - k and torch.equal(torch.stack(trained + rest), torch.stack(expected[1])), k
        assert torch.equal(torch.stack(images(resumed, 2)), torch.stack(expected[2])), k


def test_a_resume_in_the_first_epoch_draws_what_the_uninterrupted_run_drew():
    """Some workers have drawn nothing yet: the resumed loader's generator seeds them as before."""
    expected = images(draws_loader(2), 0)
    first = draws_loader(2)
    trained = images(first, 0, stop=1)
    saved = first.worker_init_fn.state_dict(1)
    assert saved == {"workers": 2, "start": 0, "states": {}}  # worker 0 redraws batch 0 from its seed
    resumed = draws_loader(2)
    resumed.worker_init_fn.load_state_dict(saved, 1)
    assert torch.equal(torch.stack(trained + images(resumed, 0, skip=1)), torch.stack(expected))
