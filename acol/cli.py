"""What every command line shares: its program name, its parser, one-line errors, its device and threads.

Grammar of `acol-train`, `acol-evaluate`, `acol-compare` and `acol-ablate` (or `python -m acol.X`):
flags, then `key=value` config overrides as positional arguments (TOML values: `optim.lr=1e-3`,
`eval.iou_thresholds=[30,50]`). An argument `dotted.key=...` is an override unless a file or folder of
that name exists; any other positional argument is what the command works on (compare's run folders,
ablate's ablation name; ablation run folders such as `runs/ablations/X/acol.threshold=0.5-s0` hold `=`
after a `/`, so they are paths).
A user mistake ends the command with one line on stderr naming the bad value and the valid ones,
and exit status 2 (as argparse does for a bad flag).
"""
from __future__ import annotations

import argparse
import atexit
import multiprocessing
import os
import re
import signal
import sys
import threading
from pathlib import Path
from typing import NoReturn

USER_ERROR = 2  # exit status of a user mistake (argparse's)


def prog(module: str) -> str:
    """The program name for --help and errors: `acol-train` when run as the console command (whose
    argv[0] is `.../acol-train`), `python -m acol.train` otherwise. module: e.g. "train"."""
    command = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return command if command.startswith("acol-") else f"python -m acol.{module}"


class UserError(SystemExit):
    """Exit with status 2 after printing one line; str() is the line (pytest.raises(match=...) reads it)."""

    def __init__(self, message: str):
        super().__init__(USER_ERROR)
        self.message = message

    def __str__(self) -> str:
        return self.message


def fail(message: str) -> NoReturn:
    """Print `message` (one line: what is wrong, the bad value, the valid ones) on stderr and exit 2."""
    print(message, file=sys.stderr, flush=True)
    raise UserError(message)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose mistakes (its own and its subcommands') end in one line naming --help, exit 2."""

    def error(self, message: str) -> NoReturn:
        fail(f"{self.prog}: error: {message} (see {self.prog} --help)")


class Parser(OneLineParser):
    """argparse with the program name `name` (e.g. `prog("train")`), the module docstring as description,
    an example line at the end of --help, and one-line errors."""

    def __init__(self, name: str, doc: str | None, example: str, **kwargs):
        super().__init__(prog=name, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                         epilog=f"example:\n  {name} {example}", **kwargs)

    def parse_args(self, args=None, namespace=None) -> argparse.Namespace:
        """Positional arguments may come between flags (`RUN --methods cam RUN key=value`)."""
        return self.parse_intermixed_args(args, namespace)


def add_overrides(parser: argparse.ArgumentParser, example: str, metavar: str = "key=value",
                  help: str = "config overrides") -> None:
    """Positional arguments `items` (`metavar`: overrides, and for some commands what they work on) and
    `--override KEY=VALUE` (repeatable), an alias of a positional override."""
    parser.add_argument("items", nargs="*", metavar=metavar, help=f"{help}, e.g. {example}")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE",
                        help="the same as a positional key=value (repeatable)")


def overrides_of(args: argparse.Namespace, others: bool = False) -> tuple[list[str], list[str]]:
    """(the positional arguments that are not overrides, every override in order) of `add_overrides`'s
    arguments; others=False: any such argument is a mistake."""
    rest, overrides = split_overrides(args.items)
    if rest and not others:
        fail(f"error: {rest[0]!r} is not a key=value config override (e.g. optim.lr=1e-3)")
    return rest, overrides + args.override


OVERRIDE = re.compile(r"[A-Za-z_][\w.]*=.*", re.DOTALL)


def is_override(item: str) -> bool:
    return bool(OVERRIDE.fullmatch(item)) and not Path(item).exists()


def split_overrides(items: list[str]) -> tuple[list[str], list[str]]:
    """(the other positional arguments, the overrides), by the grammar's rule (`is_override`)."""
    return [a for a in items if not is_override(a)], [a for a in items if is_override(a)]


def check_device(setting: str, key: str = "train.device") -> None:
    """A CUDA device asked for on a machine without one is a user mistake, named with its setting."""
    import torch  # here: `acol-prepare` uses this module without torch

    if setting == "cuda" and not torch.cuda.is_available():
        fail(f"error: {key}=cuda but torch sees no CUDA device (torch {torch.__version__}, "
             f"{'a CPU-only build' if torch.version.cuda is None else 'CUDA ' + torch.version.cuda}); "
             f"use {key}=cpu or {key}=auto")


def set_threads(threads: int) -> None:
    """train.threads: torch's intra-op CPU threads of this process (0: leave torch's default, which
    OMP_NUM_THREADS sets when given)."""
    if threads > 0:
        import torch

        torch.set_num_threads(threads)


def stop_quietly_during_start_up() -> None:
    """Until a command installs its own handlers: SIGINT and SIGTERM end the process with one line and
    128 + n, not a KeyboardInterrupt traceback from inside torch's import (seconds on a busy machine).
    For command-line processes only (it would take over Ctrl-C of a Python session)."""
    def stop(signum, frame) -> NoReturn:
        if _results_complete:  # back in place after the command's own handlers, once its results are out
            end_finished(signum)
        print(f"stopped by signal {signum} during start-up: nothing was written; the same command starts again",
              file=sys.stderr, flush=True)
        os._exit(128 + signum)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)


_results_complete = False  # the running command's results are written and printed (`results_complete`)


def results_complete(complete: bool = True) -> None:
    """Say that the command's results are (or, at a command's start, are not yet) written and printed; from
    then on every acol handler of SIGINT and SIGTERM (the command's own, the start-up one) ends the
    process with `end_finished`."""
    global _results_complete
    _results_complete = complete


def results_are_complete() -> bool:
    return _results_complete


def end_finished(signum: int) -> NoReturn:
    """A signal after the results: one line, exit status 0 (the command succeeded). DataLoader workers
    end on their parent's SIGTERM (acol.dist), so they do not outlive it."""
    print(f"signal {signum} after the command had finished: its results are complete; exit 0",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    for child in multiprocessing.active_children():
        child.terminate()
    os._exit(0)


def finish_on_signals() -> None:
    """Once a command's work is done (its results written and printed): SIGINT and SIGTERM from now on
    end the process at once with a line and exit status 0, not 130 / 143 and a traceback from the
    interpreter's teardown (worker shutdown, flushes), which a user cannot tell from a failed run."""
    results_complete()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda received, frame: end_finished(received))


def end_process() -> NoReturn:
    """Exit 0 now, without the interpreter's teardown: its last garbage collection (torch's and numba's
    objects, seconds) runs after the signal handlers are reset to the defaults, where a signal would end a
    finished command with 130 / 143 and no word. Other threads are joined and the atexit callbacks
    (DataLoader workers, log handlers) run first, under `finish_on_signals`."""
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_command(main) -> NoReturn:
    """`main()` as a command: exit status 0 once it returns, also for a signal after that."""
    main()
    finish_on_signals()
    end_process()
