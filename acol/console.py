"""The console commands of `pip install` (pyproject.toml [project.scripts]): acol-train, acol-evaluate,
acol-compare, acol-ablate, acol-prepare.

Each runs its module's `main` on the command line's arguments. The `main`s return their results (a
dict, a list, the summary text) for callers in Python; a console entry point would print such a value
as an error and exit 1, so these end the process with status 0 themselves once `main` returns
(`cli.run_command`: not for calling from Python). Each module is imported only when its command runs
(torch is slow to import).
"""
from __future__ import annotations

import importlib
from typing import Callable, NoReturn


def _command(module: str) -> Callable[[], NoReturn]:
    """The entry point of `module`: import it when the command runs, call its main, exit 0."""
    def run() -> NoReturn:
        from acol.cli import run_command, stop_quietly_during_start_up
        stop_quietly_during_start_up()
        run_command(importlib.import_module(module).main)
    return run


train = _command("acol.train")
evaluate = _command("acol.evaluate")
compare = _command("acol.compare")
ablate = _command("acol.ablate")


def prepare() -> int:
    from acol.datasets.prepare import main
    return main()  # its exit status: 0 no problem, 1 problems found, 2 unreadable sources
