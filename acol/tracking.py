"""The run directory's writers: log.txt + console, metrics.jsonl and TensorBoard (rank 0 only).

Other ranks get a tracker whose methods do nothing, so training code never branches on the rank.
"""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams as hparams_summary

LOGGER_NAME = "acol"


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


class Tracker:
    """Scalars, images, text and hparams to TensorBoard (events in the run dir itself, so
    `tensorboard --logdir runs` names each run by its folder), plus JSON lines to metrics.jsonl."""

    def __init__(self, run_dir: Path, enabled: bool, purge_step: int | None = None):
        self.enabled = enabled
        self.run_dir = run_dir
        self.writer = SummaryWriter(str(run_dir), purge_step=purge_step) if enabled else None

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        if self.writer:
            self.writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def curves(self, prefix: str, curves: dict[str, np.ndarray]) -> None:
        """Per-threshold curves (`BoxEvaluator.box_acc_curves`) as scalars `<prefix><name>`, the step
        being the threshold in thousandths (TensorBoard's x axis is an integer step)."""
        for i, tau in enumerate(curves["thresholds"]):
            self.scalars({f"{prefix}{name}": float(v[i]) for name, v in curves.items() if name != "thresholds"},
                         step=int(round(tau * 1000)))

    def text(self, tag: str, text: str) -> None:
        if self.writer:
            self.writer.add_text(tag, text)

    def jsonl(self, record: dict) -> None:
        if self.enabled:
            with open(self.run_dir / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    def hparams(self, hparams: dict, metrics: dict[str, float]) -> None:
        """HParams dashboard entry written into this run's own event file (no timestamped sub-run)."""
        if not self.writer:
            return
        clean = {k: (str(v) if isinstance(v, list) else v) for k, v in hparams.items()}
        for summary in hparams_summary(clean, metrics):
            self.writer.file_writer.add_summary(summary)
        for tag, value in metrics.items():
            self.writer.add_scalar(tag, value, 0)

    def flush(self) -> None:
        if self.writer:
            self.writer.flush()

    def close(self) -> None:
        if self.writer:
            self.writer.close()
