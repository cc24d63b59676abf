"""Time the commands whose durations the documentation states, on this machine, and print a table.

    python scripts/time_commands.py                      # every command below
    python scripts/time_commands.py quickstart tests     # some of them

Each command runs from the repository root with its output hidden, writing its runs into a
temporary folder (the synthetic data set included, so its generation is part of the first
timing). Times are wall-clock seconds. They mean something only on an idle machine: the share of
CPU time left idle in the second before each command is printed beside it, with a warning when other
work was running.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def commands(work: Path) -> dict[str, list[str]]:
    """name -> the command as the documentation gives it, pointed at `work` for its outputs."""
    data = [f"data.root={work / 'data'}", f"data.metadata_root={work / 'data' / 'metadata'}"]
    runs = f"log.runs_dir={work / 'runs'}"
    python = sys.executable
    return {
        "quickstart": ["bash", "scripts/train_acol.sh", *data, runs, "--name", "synthetic_acol-s0"],
        "evaluate": [python, "-m", "acol.evaluate", "--run", str(work / "runs" / "synthetic_acol-s0"),
                     "--localizer", "gradcam"],
        "compare": [python, "-m", "acol.compare", str(work / "runs" / "synthetic_acol-s0"), "--methods",
                    "inforward,inforward_a,inforward_b,gradcam,gradcam_pp,guided_backprop,guided_gradcam",
                    "--out", str(work / "compare")],
        "tests": [python, "-m", "pytest", "-q", "-p", "no:cacheprovider"],
    }


def idle_share(seconds: float = 1.0) -> float:
    """The share of all cores' time spent idle over the next `seconds` (Linux /proc/stat; 1.0 elsewhere)."""
    def sample() -> tuple[int, int]:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total

    try:
        idle0, total0 = sample()
        time.sleep(seconds)
        idle1, total1 = sample()
    except OSError:
        return 1.0
    return (idle1 - idle0) / max(1, total1 - total0)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python scripts/time_commands.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", help="commands to time (default: all, in order; evaluate and "
                                            "compare need quickstart's run)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="acol-timing-") as tmp:
        table = commands(Path(tmp))
        unknown = [n for n in args.names if n not in table]
        if unknown:
            p.error(f"unknown command {unknown[0]!r}; valid: {', '.join(table)}")
        cores = os.cpu_count()
        print(f"{cpu_model()}, {cores} cores, Python {platform.python_version()}")
        print("| command | seconds | CPU idle before |\n|---|---:|---:|")
        for name in args.names or list(table):
            idle = idle_share()
            start = time.perf_counter()
            done = subprocess.run(table[name], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True)
            seconds = time.perf_counter() - start
            if done.returncode != 0:
                print(f"{name} failed (exit {done.returncode}):\n{done.stderr[-2000:]}", file=sys.stderr)
                return 1
            print(f"| {name} | {seconds:.0f} | {idle:.0%} |", flush=True)
            if idle < 0.9:
                print(f"warning: the CPUs were {idle:.0%} idle before {name}: other work was running",
                      file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
