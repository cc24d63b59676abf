"""Print a markdown table of finished runs' results (mean ± std over runs that share a group).

    python scripts/summarize_runs.py runs/synthetic_acol-s0 runs/synthetic_cam-s0 ...
    python scripts/summarize_runs.py --group-by-seed runs/synthetic_*-s*

Each run directory must hold results.json (written at the end of `python -m acol.train`). With
--group-by-seed, runs whose names differ only in the trailing `-s<seed>` are averaged.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a file: the repository is importable
from acol.evaluation.report import mean_std, seed_group  # noqa: E402

COLUMNS = [
    ("val", "top1_cls", "val top-1 cls"),
    ("val", "maxboxacc_v2", "val MaxBoxAccV2"),
    ("test", "top1_cls", "top-1 cls"),
    ("test", "gt_known_loc@fixed", "GT-known @0.2"),
    ("test", "top1_loc@fixed", "top-1 loc @0.2"),
    ("test", "gt_known_loc@val", "GT-known @val τ"),
    ("test", "top1_loc@val", "top-1 loc @val τ"),
    ("test", "maxboxacc_v2", "MaxBoxAccV2"),
]


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path, help="run directories")
    p.add_argument("--group-by-seed", action="store_true", help="average runs that differ only in -s<seed>")
    args = p.parse_args(argv)
    groups: dict[str, list[dict]] = {}
    for run in args.runs:
        path = run / "results.json"
        if not path.is_file():
            raise SystemExit(f"{path} not found: is the run finished?")
        name = seed_group(run.name) if args.group_by_seed else run.name
        groups.setdefault(name, []).append(json.loads(path.read_text()))
    lines = ["| run | n | " + " | ".join(title for _, _, title in COLUMNS) + " |",
             "|---|---:|" + "---:|" * len(COLUMNS)]
    for name, results in groups.items():
        cells = [mean_std([r[split][key] for r in results]) for split, key, _ in COLUMNS]
        lines.append(f"| {name} | {len(results)} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    print(table)
    return table


if __name__ == "__main__":
    main()
