"""Text files: reading what a user writes (config TOML, metadata) as UTF-8, or one error naming the line;
writing what acol writes atomically."""
from __future__ import annotations

import os
from pathlib import Path


def read_utf8(path: Path, error: type[Exception] = ValueError) -> str:
    """The text of `path`; bytes that are not UTF-8 raise `error("<path>:<line>: ...")` naming the first
    bad byte's line and column (1-based)."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line, column = data.count(b"\n", 0, e.start) + 1, e.start - line_start + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); save the "
                    "file as UTF-8") from None


def write_atomic(path: Path, text: str) -> None:
    """`path` with `text`, written to a temporary file renamed over it (readers never see half a file)."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)
