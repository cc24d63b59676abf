"""Shared fixtures: a tiny synthetic benchmark generated once per session, and tiny-run overrides."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from acol.datasets.synthetic import SyntheticSpec, ensure_synthetic
from acol.evaluation.boxes import box_hits

TINY_SPEC = dict(num_classes=3, image_size=32, train_per_class=4, val_per_class=2, test_per_class=2,
                 multi_object_fraction=0.25, seed=0)


def pytest_collection_modifyitems(config, items):
    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs a CUDA device")
        for item in items:
            if "cuda" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session", autouse=True)
def compiled_box_evaluator():
    """The box evaluator compiled, and in numba's disk cache, before the first test: its once-per-machine
    notice would otherwise land in the stderr of whichever test evaluates first (a fresh machine, or a
    pytest-xdist worker), where some tests read stderr line by line."""
    box_hits(np.zeros((4, 4)), np.array([[0, 0, 1, 1]]), np.array([0.5]), np.array([0.5]))


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """(data_root, metadata_root) of a 3-class, 32-pixel synthetic benchmark (12/6/6 images)."""
    root = tmp_path_factory.mktemp("synthetic")
    ensure_synthetic(SyntheticSpec(**TINY_SPEC), root / "data", root / "data" / "metadata")
    return root / "data", root / "data" / "metadata"


@pytest.fixture
def tiny_overrides(tiny_data, tmp_path):
    """Overrides for a small, fast training run on the tiny benchmark, writing runs under tmp_path."""
    data_root, metadata_root = tiny_data
    synthetic = [f"data.synthetic.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY_SPEC.items()]
    return [f"data.root={data_root}", f"data.metadata_root={metadata_root}", *synthetic,
            "data.resize_size=36", "data.crop_size=32", "data.num_workers=0",
            "model.backbone=smallcnn", "model.head_channels=8", "optim.lr=0.01", "optim.head_lr_mult=1.0",
            "train.global_batch_size=4", "train.epochs=1", "eval.batch_size=4", "eval.cam_curve_interval=0.01",
            "log.log_every=1", "log.vis_num=2", f"log.runs_dir={tmp_path / 'runs'}"]
