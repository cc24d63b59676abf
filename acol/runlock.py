"""One writer per run folder: an exclusive lock on `<run>/.lock`, held for the training process's life.

The lock is `flock` on the file: the kernel drops it when its process ends, however it ends, so a
lock left by a killed process is free again and is simply taken over (the file still names the dead
holder, which is reported). While held, the file names its holder as JSON (host, pid, start time,
command line); a clean release empties it. The file itself is never removed: removing it while a
second process waits to open it would let two processes lock two different files of one name.
Over NFS, Linux implements `flock` with the server's byte-range locks, so the lock also holds
between machines.
"""
from __future__ import annotations

import fcntl
import json
import os
import platform
import sys
import time
from pathlib import Path

LOCK_FILE = ".lock"


class RunLocked(Exception):
    """Another process holds the run folder's lock; str() is the one-line message naming it."""


def describe(holder: dict) -> str:
    """'host H, pid P, since T' from a lock file's record."""
    return f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}, since {holder.get('start_time', '?')}"


def read_holder(path: Path) -> dict:
    """The record in a lock file ({} when empty, released or unreadable)."""
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


class RunLock:
    """`acquire()` creates the run folder if needed and locks it, or raises RunLocked; `release()`
    (also on exit from a `with` block) unlocks it."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_FILE
        self.file = None

    def acquire(self) -> dict:
        """Lock, write this process's record, and return the previous holder's record when it was
        left by a process that ended without releasing (a takeover), else {}."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        file = open(self.path, "a+")
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.close()
            holder = read_holder(self.path)
            who = describe(holder) if holder else "a process that has not written its name yet"
            raise RunLocked(f"error: run folder {self.path.parent} is in use by another process ({who}); wait "
                            "for it to finish, stop it, or pass --name NEW") from None
        previous = read_holder(self.path)
        file.seek(0)
        file.truncate()
        file.write(json.dumps({"host": platform.node(), "pid": os.getpid(),
                               "start_time": time.strftime("%Y-%m-%dT%H:%M:%S"), "argv": sys.argv}))
        file.flush()
        self.file = file
        return previous

    def release(self) -> None:
        if self.file is not None:
            self.file.seek(0)
            self.file.truncate()
            self.file.flush()
            fcntl.flock(self.file, fcntl.LOCK_UN)
            self.file.close()
            self.file = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()
