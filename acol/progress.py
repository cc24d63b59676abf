"""The progress bar every long loop uses (training, evaluation, many-forward localizers)."""
from __future__ import annotations

import sys

from tqdm import tqdm

from acol.dist import is_main_process


def progress(iterable, desc: str, total: int | None = None):
    """A tqdm bar on the main process when stderr is a terminal; plain iteration otherwise."""
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True,
                disable=not (is_main_process() and sys.stderr.isatty()))
