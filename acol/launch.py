"""torchrun, stopped the way a terminal or a scheduler stops it: `python -m acol.launch ARGS` is
`torchrun ARGS` (torch.distributed.run, the same options), except on SIGINT or SIGTERM.

Ctrl-C in a terminal, and the SIGTERM of `timeout` or a scheduler, reach the whole process group:
each worker (acol.train) finishes its step, checkpoints and rank 0 says what it kept, while torchrun's
agent shuts the workers down and would end in its SignalException traceback with exit status 1. Here
the agent's shutdown is the same, its two warnings about it are left out, and the command ends with
one line and 128 + the signal, as a single-process run does. Any other failure is torchrun's own
report (`record`). scripts/train_acol.sh launches through it.
"""
from __future__ import annotations

import logging
import sys

from torch.distributed import run as torchrun
from torch.distributed.elastic.multiprocessing import SignalException
from torch.distributed.elastic.multiprocessing.errors import record

# the agent's own account of a shutdown by signal (torch.distributed.elastic: agent/server/api.py,
# multiprocessing/api.py), which the workers' line and this command's line replace
SHUTDOWN_WARNINGS = ("death signal, shutting down workers", "Got termination signal", "closing signal")
AGENT_LOGGERS = ("torch.distributed.elastic.agent.server.api", "torch.distributed.elastic.multiprocessing.api")


class WithoutShutdownWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in SHUTDOWN_WARNINGS)


@record
def main(argv: list[str] | None = None) -> None:
    args = torchrun.parse_args(sys.argv[1:] if argv is None else argv)
    for name in AGENT_LOGGERS:
        logging.getLogger(name).addFilter(WithoutShutdownWarnings())
    try:
        torchrun.run(args)
    except SignalException as e:
        print(f"torchrun: stopped by signal {int(e.sigval)}: the workers were shut down (rank 0's line above "
              "says what the run kept)", file=sys.stderr, flush=True)
        sys.exit(128 + int(e.sigval))


if __name__ == "__main__":
    main()
