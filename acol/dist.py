"""torchrun environment -> process group; rank helpers; a non-padding inference sampler; DataLoader
workers that leave stop signals to the main process.

Without torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK) everything runs in one process.
NCCL is used when the processes drive CUDA devices, gloo otherwise (CPU runs, tests).
"""
from __future__ import annotations

import os
import signal
import sys
import threading

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def leave_signals_to_the_main_process(worker_id: int) -> None:
    """A DataLoader `worker_init_fn`. Ctrl-C in a terminal, `timeout` and schedulers signal the whole
    process group; the main process acts on the signal (it finishes its step, writes a checkpoint, says
    so) and shuts its workers down, which a worker killed by the signal would turn into a "DataLoader
    worker exited unexpectedly" traceback. So the worker ignores SIGINT, and SIGTERM from anyone but its
    parent. The parent's own SIGTERM (`Process.terminate`, as DataLoader's shutdown and multiprocessing's
    exit handler send it) still ends the worker at once, as torch's worker handler does, so an interpreter
    that exits with persistent workers alive does not wait for them forever. Where the system cannot say
    who sent a signal (no `sigwaitinfo`: macOS, Windows), SIGTERM keeps its default."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if not hasattr(signal, "sigwaitinfo"):
        return
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # threads started from here inherit the mask
    threading.Thread(target=_exit_on_the_parents_sigterm, args=(os.getppid(),), daemon=True,
                     name="sigterm-from-parent").start()


def _exit_on_the_parents_sigterm(parent: int) -> None:
    """Take every SIGTERM the worker is sent (blocked in all its threads); exit on the parent's."""
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(0)


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def device_type(setting: str) -> str:
    """train.device -> "cuda" or "cpu"; "auto" picks CUDA when a GPU is present."""
    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return setting


def check_one_gpu_per_process() -> None:
    """torchrun's processes on this node (LOCAL_WORLD_SIZE) each drive their own GPU: more processes than
    GPUs ends every one of them with exit status 2, one line said by the node's first."""
    processes, gpus = int(os.environ.get("LOCAL_WORLD_SIZE", 1)), torch.cuda.device_count()
    if processes > gpus:
        from acol import cli

        if int(os.environ.get("LOCAL_RANK", 0)) == 0:
            print(f"error: torchrun started {processes} processes on this node but torch sees {gpus} CUDA "
                  f"device{'s' if gpus != 1 else ''}, and each process drives one: use --nproc-per-node={gpus}, "
                  "or train.device=cpu", file=sys.stderr, flush=True)
        sys.exit(cli.USER_ERROR)


def init_distributed(device_type: str) -> torch.device:
    """Join the torchrun process group if launched by torchrun; return this process's device."""
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if device_type == "cuda":
        check_one_gpu_per_process()
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_distributed():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device_type == "cuda" else None)
    return device


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def sync_buffers(module: torch.nn.Module) -> None:
    """Rank 0's buffers (BatchNorm running statistics) on every rank. DDP broadcasts them only at
    the start of each training forward, so after the last step every rank holds its own; an
    evaluation that shards the data must use one model, the one rank 0 saves."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


PEER_ENDED = ("Connection closed by peer", "Connection reset by peer")  # gloo's, when another rank's process ended


def peer_ended(error: BaseException) -> bool:
    """Whether `error` is a collective failing because another rank's process ended (under torchrun a
    signal stops rank 0 while this rank waits in a collective: rank 0's line says what the run kept)."""
    return is_distributed() and get_rank() != 0 and (
        isinstance(error, dist.DistNetworkError) or any(text in str(error) for text in PEER_ENDED))


def any_rank(flag: bool) -> bool:
    """True on every rank if `flag` is True on any (one small all-reduce), so all ranks act together."""
    if not is_distributed():
        return flag
    value = torch.tensor([int(flag)], device="cuda" if dist.get_backend() == dist.Backend.NCCL else "cpu")
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


def broadcast_object(obj):
    """Rank 0's `obj` on every rank."""
    if not is_distributed():
        return obj
    holder = [obj]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


class InferenceSampler(Sampler[int]):
    """Contiguous shards of range(size), one per rank, without padding or repeats (detectron2's idea):
    summed per-rank counts are exactly the one-process counts."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        per_rank, extra = divmod(size, world_size)
        start = rank * per_rank + min(rank, extra)
        self.indices = range(start, start + per_rank + (rank < extra))

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
