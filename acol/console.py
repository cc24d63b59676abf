"""The console commands of `pip install` (pyproject.toml [project.scripts]): acol-train, acol-evaluate,
acol-compare, acol-ablate, acol-prepare.

Each runs its module's `main` on the command line's arguments. The `main`s return their results (a
dict, a list, the summary text) for callers in Python; a console entry point would print such a value
as an error and exit 1, so these return the exit status instead. Each module is imported only when its
command runs (torch is slow to import).
"""
from __future__ import annotations


def train() -> int:
    from acol.train import main
    main()
    return 0


def evaluate() -> int:
    from acol.evaluate import main
    main()
    return 0


def compare() -> int:
    from acol.compare import main
    main()
    return 0


def ablate() -> int:
    from acol.ablate import main
    main()
    return 0


def prepare() -> int:
    from acol.datasets.prepare import main
    return main()  # its exit status: 0 no problem, 1 problems found, 2 unreadable sources
