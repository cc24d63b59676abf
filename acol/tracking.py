"""The run directory's writers: log.txt + console, metrics.jsonl and TensorBoard (rank 0 only).

Other ranks get a tracker whose methods do nothing, so training code never branches on the rank.

TensorBoard tags: Time Series and Scalars sort tag groups (the part before the first '/') by name
and open the first two, so the curves of training come first: `train/...` (per step) and `val/...`
(per evaluation). Then `vis/heatmaps/<k>` (a heatmap strip per fixed val image), and what is written
once after training starts with `z_`: `z_test/...` (the final test report, also the HParams
dashboard's metric columns), `z_eval/<split>/...` (`acol.evaluate`, in its own run folder) and
`z_compare/...` (`acol.compare`). Curves over the box threshold (`curves`) are tagged
`.../threshold_x1000/<curve>`: their step is the threshold x 1000 (`THRESHOLD_AXIS`).
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

from acol.textfile import write_atomic

LOGGER_NAME = "acol"
THRESHOLD_AXIS = ("x axis: the box threshold x 1000 (TensorBoard steps are integers): step 250 is threshold "
                  "0.25; y axis: accuracy in %")


def setup_logging(run_dir: Path | None, enabled: bool) -> logging.Logger:
    """Console + `<run_dir>/log.txt` on the main process; silent elsewhere."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if enabled else logging.ERROR)
    fmt = logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(fmt)
    logger.addHandler(console)
    if enabled and run_dir is not None:
        file_handler = logging.FileHandler(run_dir / "log.txt")
        file_handler.setFormatter(fmt)
        logger.addHandler(file_handler)
    return logger


def to_log_file(logger: logging.Logger, message: str) -> None:
    """`message` into log.txt only: the caller says it once on the console (stderr)."""
    record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logger.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _record(line: str) -> dict | None:
    """One metrics.jsonl line, or None for a line cut short (a process killed while writing it)."""
    try:
        return json.loads(line)
    except ValueError:
        return None


class Tracker:
    """Scalars, images, text and hparams to TensorBoard (events in the run dir itself, so
    `tensorboard --logdir runs` names each run by its folder), plus JSON lines to metrics.jsonl."""

    def __init__(self, run_dir: Path, enabled: bool, purge_step: int | None = None):
        self.enabled = enabled
        self.run_dir = run_dir
        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step) if enabled else None

    def scalars(self, values: dict[str, float], step: int, description: str = "") -> None:
        """`add_scalar` for each tag, with `description` (shown with the card) when one is given."""
        if self.writer:
            metadata = SummaryMetadata(summary_description=description) if description else None
            for tag, value in values.items():
                value = Summary.Value(tag=tag, simple_value=float(value), metadata=metadata)
                self.writer.file_writer.add_summary(Summary(value=[value]), step)

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        if self.writer:
            self.writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def curves(self, prefix: str, curves: dict[str, np.ndarray]) -> None:
        """Per-threshold curves (`BoxEvaluator.box_acc_curves`) as scalars `<prefix>threshold_x1000/<name>`,
        the step being the threshold in thousandths (`THRESHOLD_AXIS`, also the cards' description)."""
        for i, tau in enumerate(curves["thresholds"]):
            self.scalars({f"{prefix}threshold_x1000/{name}": float(v[i]) for name, v in curves.items()
                          if name != "thresholds"}, step=int(round(tau * 1000)), description=THRESHOLD_AXIS)

    def text(self, tag: str, text: str) -> None:
        if self.writer:
            self.writer.add_text(tag, text)

    def jsonl(self, record: dict) -> None:
        if self.enabled:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def keep_jsonl(self, keep) -> int:
        """Rewrite metrics.jsonl with only the records `keep(record)` accepts (a resumed run drops
        what its checkpoint does not cover, so each evaluation keeps one line); atomic: a temporary
        file renamed over it. Returns how many records were dropped."""
        path = self.run_dir / "metrics.jsonl"
        if not (self.enabled and path.is_file()):
            return 0
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if (record := _record(line)) is not None and keep(record)]
        write_atomic(path, "".join(line + "\n" for line in kept))
        return len(lines) - len(kept)

    def hparams(self, hparams: dict, metrics: dict[str, str]) -> None:
        """HParams dashboard entry in this run's own event file: the hparams and, as metric columns,
        `metrics` {tag: column title}: tags of scalars the run writes itself (the dashboard shows each
        one's last value). Unlike `SummaryWriter.add_hparams`: no timestamped sub-run, no extra cards."""
        if not self.writer:
            return
        clean = {k: (str(v) if isinstance(v, list) else v) for k, v in hparams.items()}
        experiment, start, end = hparams_summary(clean, dict.fromkeys(metrics, 0.0))
        plugin = experiment.value[0].metadata.plugin_data
        content = HParamsPluginData.FromString(plugin.content)
        for info in content.experiment.metric_infos:
            info.display_name = metrics[info.name.tag]
        plugin.content = content.SerializeToString()
        for summary in (experiment, start, end):
            self.writer.file_writer.add_summary(summary)

    def flush(self) -> None:
        if self.writer:
            self.writer.flush()

    def close(self) -> None:
        if self.writer:
            self.writer.close()
