"""Run by tests/test_reliability.py in a session of its own: `python -m tests.group_signal_probe WHEN SIGNUM
ARGS...` runs `python -m acol.train ARGS...` and sends SIGNUM to its whole process group (DataLoader workers
included), as Ctrl-C or a scheduler does, at WHEN: `LABEL:N` (after the first batch of the N-th progress loop
labelled LABEL: "epoch 2/2:1", "eval:1" for the first validation, "eval:3" for the final test of a 2-epoch
run), `results` (while the results are written) or `after` (once the command has returned, while the
process ends: an atexit callback)."""
import atexit
import collections
import os
import subprocess
import sys
import time

from acol import cli, engine, train

when, signum, argv = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
loops = collections.Counter()


def signal_the_group() -> None:
    """From another process, as a terminal, `timeout` or a scheduler sends it (workers end on their
    parent's own SIGTERM)."""
    subprocess.run(["kill", f"-{signum}", "--", f"-{os.getpgid(0)}"], check=False)


def progress(iterable, desc, total=None):
    loops[desc] += 1
    for index, item in enumerate(plain_progress(iterable, desc, total)):
        yield item
        if index == 0 and when == f"{desc}:{loops[desc]}":
            signal_the_group()


def final_report(*args):
    text = plain_final_report(*args)
    if when == "results":
        signal_the_group()
    return text


def signal_while_ending() -> None:
    signal_the_group()
    time.sleep(30)  # the handler ends the process


plain_progress, engine.progress = engine.progress, progress
plain_final_report, train.final_report = train.final_report, final_report
if when == "after":  # run by `cli.end_process`, after the command returned
    atexit.register(signal_while_ending)
cli.run_command(lambda: train.main(argv))
