"""The random streams of a training DataLoader's workers, carried through a checkpoint, so that a run
resumed mid-epoch with `data.num_workers > 0` draws the crops and flips the uninterrupted run drew.

A worker draws its augmentation from torch's global RNG, seeded once (persistent workers) from the
loader's generator, and its stream runs on across epochs. Within an epoch the loader hands batch b
to worker b % W (round robin, restarted every epoch). So what a resume needs is, per worker, the RNG
state after its last trained batch, and a restart at a batch that worker 0 takes: a resume at batch k
restarts at k0 = k - k % W, and the workers w < k % W, whose last batch (k0 + w) was already trained,
get the state before it and draw it again; those k - k0 batches are dropped, not trained.

Every training batch carries its worker's id and RNG state after the batch (`collate_with_stream`,
in the worker); the main process keeps the last two states of each worker (`WorkerStreams.batches`). A
worker that has drawn nothing yet needs no state: the resumed loader's generator seeds it as before.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.data import get_worker_info

from acol.dist import leave_signals_to_the_main_process


def collate_with_stream(samples: list[dict], collate: Callable[[list[dict]], dict]) -> dict:
    """`collate(samples)`, plus "stream": (worker id, RNG state after the batch) when it runs in a worker."""
    batch = collate(samples)
    info = get_worker_info()
    if info is not None:
        batch["stream"] = (info.id, torch.get_rng_state())
    return batch


def streams_of(loader) -> WorkerStreams | None:
    """The training loader's `WorkerStreams` (None: no workers, or the decoded-image cache's loader)."""
    streams = getattr(loader, "worker_init_fn", None)
    return streams if isinstance(streams, WorkerStreams) else None


def epoch_batches(loader, epoch: int, skip: int = 0):
    """The training batches of `epoch` (0-based) from batch `skip` on. A loader whose workers got their
    streams back (`WorkerStreams.load_state_dict`) restarts the epoch at the round of `skip` and drops the
    batches redrawn before it."""
    streams = streams_of(loader)
    if streams is None:
        loader.sampler.set_epoch(epoch, start=skip * loader.batch_size)
        return loader
    loader.sampler.set_epoch(epoch, start=(skip - streams.redraw) * loader.batch_size)
    return streams.batches(loader)


class WorkerStreams:
    """The training loader's `worker_init_fn` (workers leave stop signals to the main process and start
    from a restored state, if any) and the main process's record of the workers' streams."""

    def __init__(self, workers: int):
        self.workers = workers
        self.history: dict[int, list[torch.Tensor]] = {}  # worker -> its RNG states after its last 2 batches
        self.restore: dict[int, torch.Tensor] = {}        # worker -> the state it starts from
        self.redraw = 0                                   # leading batches of the next epoch to draw, not train

    def __call__(self, worker_id: int) -> None:
        leave_signals_to_the_main_process(worker_id)
        if worker_id in self.restore:
            torch.set_rng_state(self.restore[worker_id])

    def batches(self, loader):
        """Iterate `loader`, recording each batch's stream and dropping the `redraw` leading ones."""
        redraw, self.redraw = self.redraw, 0
        for index, batch in enumerate(loader):
            if "stream" in batch:
                worker, state = batch.pop("stream")
                self.history[worker] = [*self.history.get(worker, [])[-1:], state]
            if index >= redraw:
                yield batch

    def state_dict(self, batches: int) -> dict:
        """What a resume after `batches` trained batches of the epoch needs (module docstring)."""
        states = {}
        for worker in range(self.workers):
            back = 2 if worker < batches % self.workers else 1  # its last batch is redrawn: the state before it
            history = self.history.get(worker, [])
            if len(history) >= back:
                states[worker] = history[-back]
        return {"workers": self.workers, "start": batches - batches % self.workers, "states": states}

    def load_state_dict(self, saved: dict, batches: int) -> None:
        """Restore the streams of `state_dict(batches)` (the same worker count) for a resume after `batches`
        trained batches of the epoch: the resumed epoch (`epoch_batches`) redraws from saved["start"] on."""
        self.restore = dict(saved["states"])
        self.history = {worker: [state] for worker, state in self.restore.items()}
        self.redraw = batches - saved["start"]
