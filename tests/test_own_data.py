"""docs/own_data.md as a user runs it: its metadata examples parse, and its config and commands train,
evaluate and compare a model on a tiny data set of its own, from a folder outside the repository."""
from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
from acol.datasets.metadata import read_metadata

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "own_data.md"
MODULES = {"acol-train": "acol.train", "acol-evaluate": "acol.evaluate", "acol-compare": "acol.compare",
           "acol-ablate": "acol.ablate", "acol-prepare": "acol.datasets.prepare"}
# what makes the walkthrough's training take seconds: added to its acol-train commands
TINY = ["data.resize_size=36", "data.crop_size=32", "data.num_workers=0", "model.head_channels=8",
        "train.epochs=1", "train.global_batch_size=4", "eval.batch_size=4", "eval.cam_curve_interval=0.01",
        "log.vis_num=2"]


def block(after: str, language: str) -> str:
    """The first ```language block of the doc after the text `after`."""
    text = DOC.read_text()
    start = text.index(f"```{language}\n", text.index(after)) + len(language) + 4
    return text[start:text.index("```", start)]


def commands() -> list[str]:
    """The acol-* command lines of the doc's bash blocks, in order."""
    blocks = re.findall(r"```bash\n(.*?)```", DOC.read_text(), re.S)
    return [line for b in blocks for line in b.splitlines() if line.startswith("acol-")]


def argv(line: str) -> tuple[list[str], dict]:
    """The command and environment that run `line`: the console command installed beside this Python
    (pip install), else `python -m` with the repository on PYTHONPATH."""
    name, *args = shlex.split(line)
    console = Path(sys.executable).parent / name
    if console.is_file():
        return [str(console), *args], dict(os.environ)
    return [sys.executable, "-m", MODULES[name], *args], dict(os.environ, PYTHONPATH=str(REPO))


def test_the_metadata_examples_parse_as_one_split(tmp_path):
    split = tmp_path / "metadata" / "BIRDS" / "test"
    split.mkdir(parents=True)
    for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
        (split / name).write_text(block(f"`{name}`: ", "text"))
    meta = read_metadata(tmp_path / "metadata", "BIRDS", "test")
    assert meta.labels == {"test/cardinal/0001.jpg": 0, "test/cardinal/0002.jpg": 0, "test/sparrow/0001.jpg": 1}
    assert meta.sizes["test/cardinal/0002.jpg"] == (333, 500)
    assert meta.boxes["test/cardinal/0001.jpg"] == [(60, 27, 385, 331)]
    (split / "localization.txt").write_text(block("Boxes and masks together:", "text"))
    meta = read_metadata(tmp_path / "metadata", "BIRDS", "test")
    assert meta.masks["test/cardinal/0002.jpg"] == ["test/cardinal/0002_mask.png"]
    assert meta.ignore == {"test/cardinal/0001.jpg": "test/cardinal/0001_ignore.png"} and not meta.boxes


def make_birds(project: Path) -> None:
    """A two-class BIRDS data set in the doc's layout: a bright square (the bird: red for class 0,
    blue for class 1) on noise, its box as the ground truth; 6 / 2 / 2 images per class."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 6), ("val", 2), ("test", 2)):
        lines: dict[str, list[str]] = {"image_ids.txt": [], "class_labels.txt": [], "image_sizes.txt": [],
                                       "localization.txt": []}
        for label, name in enumerate(("cardinal", "sparrow")):
            for i in range(per_class):
                width, height = 40 + 4 * i, 36
                image = rng.integers(0, 90, (height, width, 3), dtype=np.uint8)
                x0, y0 = int(rng.integers(0, width - 20)), int(rng.integers(0, height - 20))
                image[y0:y0 + 16, x0:x0 + 16] = (40, 40, 230) if label == 0 else (230, 40, 40)  # BGR
                path = f"{split}/{name}/{i:04d}.png"
                (project / "images" / "BIRDS" / path).parent.mkdir(parents=True, exist_ok=True)
                assert cv2.imwrite(str(project / "images" / "BIRDS" / path), image)
                lines["image_ids.txt"].append(path)
                lines["class_labels.txt"].append(f"{path},{label}")
                lines["image_sizes.txt"].append(f"{path},{width},{height}")
                if split != "train":                        # train's boxes are not needed: left empty
                    lines["localization.txt"].append(f"{path},{x0},{y0},{x0 + 16},{y0 + 16}")
        folder = project / "metadata" / "BIRDS" / split
        folder.mkdir(parents=True)
        for name, content in lines.items():
            (folder / name).write_text("".join(line + "\n" for line in content))


def test_the_walkthrough_runs_from_a_project_folder_outside_the_repository(tmp_path):
    project = tmp_path / "birds"
    project.mkdir()
    make_birds(project)
    (project / "birds.toml").write_text(block("`birds.toml`:", "toml"))
    lines = commands()
    assert [line.split()[0] for line in lines] == ["acol-train", "acol-prepare", "acol-train", "acol-evaluate",
                                                    "acol-compare"]
    for line in lines:
        command, env = argv(line)
        if line.startswith("acol-train"):
            command += TINY
        done = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{line}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    run = project / "runs" / "birds-acol"
    results = json.loads((run / "results.json").read_text())
    assert 0 <= results["test"]["maxboxacc_v2"] <= 100
    assert json.loads((run / "meta.json").read_text())["num_classes"] == 2      # num_classes = 0: from train
    saved = (run / "config.toml").read_text()                                     # absolute: re-runnable anywhere
    assert f'root = "{project / "images"}"' in saved and f'runs_dir = "{project / "runs"}"' in saved
    assert (run / "eval" / "best" / "eval_test.json").is_file()  # --checkpoint best: a folder of its own
    assert (project / "runs" / "birds-compare" / "results.md").is_file()
    assert not (REPO / "runs" / "birds-acol").exists() and not (REPO / "data" / "BIRDS").exists()


def test_the_config_finds_its_data_from_another_folder(tmp_path):
    project = tmp_path / "birds"
    project.mkdir()
    make_birds(project)
    (project / "birds.toml").write_text(block("`birds.toml`:", "toml"))
    command, env = argv("acol-train --config birds/birds.toml --check-data")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"BIRDS: images in {project / 'images' / 'BIRDS'}, metadata in {project / 'metadata' / 'BIRDS'}" in done.stdout
    assert re.search(r"^train +12 +0 +0 +2$", done.stdout, re.M) and "no problems found" in done.stdout
