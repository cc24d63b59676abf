"""The fault matrix (issue 16): every bad input ends in ONE line naming its culprit (file and line, key,
value) and what to do, exit status 2 and no traceback, and loses nothing valid (the previous checkpoint
still loads, no run folder appears). One case per bad input: the command run in-process (`one_line_error`)
where the input goes through a command line, the function that raises where it does not, and a few
cases as real subprocesses (`python -m acol...`)."""
from __future__ import annotations

import errno
import json
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from acol import compare, engine, evaluate, train
from acol.config import ConfigError, load_config, to_dict, to_toml
from acol.datasets.check import check_data
from acol.datasets.dataset import build_dataset, collate, worker_error_line
from acol.datasets.images import ImageError
from acol.datasets.metadata import MetadataError, read_metadata
from acol.engine import (CheckpointError, CheckpointWriteError, check_resumable, load_checkpoint, load_weights,
                         save_checkpoint)
from acol.methods import build_model
from tests.conftest import TINY_SPEC
from tests.test_cli import one_line_error

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "experiments" / "synthetic_acol.toml")


# --------------------------------------------------------------------------------------------
# Fixtures: a run folder to evaluate, a copy of the tiny data set to corrupt
# --------------------------------------------------------------------------------------------
@pytest.fixture
def fake_run(tiny_overrides, tmp_path) -> Path:
    """A run folder as acol.train leaves it (config.toml, meta.json, checkpoints/last.pt) holding an
    untrained tiny acol / smallcnn model: evaluating it needs no training."""
    cfg = load_config(overrides=tiny_overrides)
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.toml").write_text(to_toml(cfg))
    (run / "meta.json").write_text(json.dumps({"num_classes": 3}))
    save_checkpoint(run / "checkpoints" / "last.pt", {"model": build_model(cfg, 3).state_dict(), "config": to_dict(cfg)})
    return run


@pytest.fixture
def tiny_copy(tiny_data, tmp_path) -> tuple[Path, Path, list[str]]:
    """(data root, metadata root, overrides) of a copy of the tiny benchmark as data set TINY (not
    SYNTHETIC: nothing regenerates it), free to corrupt."""
    data_root, metadata_root = tiny_data
    shutil.copytree(data_root / "SYNTHETIC", tmp_path / "copy" / "TINY")
    shutil.copytree(metadata_root / "SYNTHETIC", tmp_path / "copy" / "metadata" / "TINY")
    roots = tmp_path / "copy", tmp_path / "copy" / "metadata"
    return *roots, ["data.dataset=TINY", f"data.root={roots[0]}", f"data.metadata_root={roots[1]}"]


# --------------------------------------------------------------------------------------------
# Checkpoints: code-running pickles, files without weights, corrupt files
# --------------------------------------------------------------------------------------------
class RunsShell:
    """Unpickling it would run `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class OpensFile(RunsShell):
    """Unpickling it would create <marker> with open()."""

    def __reduce__(self):
        return open, (str(self.marker), "w")


def write_truncated(path: Path, marker: Path) -> None:
    torch.save({"model": {"w": torch.ones(1000)}}, path)
    path.write_bytes(path.read_bytes()[:300])


CODE = "not a checkpoint written by acol (it would run code): {path}"
NO_WEIGHTS = "not a checkpoint written by acol (has no model weights): {path}"
CORRUPT = "checkpoint {path} cannot be read (truncated or corrupt: "
BAD_CHECKPOINTS = {  # case: (writer(path, marker), the message's start)
    "pickle calling os.system": (lambda p, m: torch.save({"model": RunsShell(m)}, p), CODE),
    "pickle calling open": (lambda p, m: torch.save({"model": {"w": OpensFile(m)}}, p), CODE),
    "bare pickle calling os.system": (lambda p, m: p.write_bytes(pickle.dumps(RunsShell(m), protocol=2)), CODE),
    "a tensor": (lambda p, m: torch.save(torch.zeros(3), p), NO_WEIGHTS),
    "a list": (lambda p, m: torch.save([torch.zeros(3)], p), NO_WEIGHTS),
    "a dict without model": (lambda p, m: torch.save({"state_dict": {"w": torch.zeros(3)}}, p), NO_WEIGHTS),
    "model is no state dict": (lambda p, m: torch.save({"model": [1, 2]}, p), NO_WEIGHTS),
    "truncated": (write_truncated, CORRUPT),
    "a text file": (lambda p, m: p.write_text("hello"), CORRUPT),
    "an empty file": (lambda p, m: p.write_bytes(b""), CORRUPT),
}


@pytest.mark.parametrize("case", BAD_CHECKPOINTS)
def test_a_bad_checkpoint_is_one_line_and_runs_no_code(case, fake_run, tmp_path, capsys):
    write, message = BAD_CHECKPOINTS[case]
    path, marker = tmp_path / "bad.pt", tmp_path / "PWNED"
    write(path, marker)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    expected = message.format(path=path)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value)
    assert message != CODE or str(error.value) == expected          # no advice to pass weights_only=False
    err = one_line_error(capsys, evaluate.main, ["--run", str(fake_run), "--checkpoint", str(path)])
    assert err.startswith(f"error: {expected}")
    assert "weights_only" not in err and not marker.exists()         # nothing ran
    assert load_checkpoint(fake_run / "checkpoints" / "last.pt")["model"]  # the run's own checkpoint is intact


def test_weights_of_another_model_name_the_keys_and_the_model_they_were_written_for(fake_run, tiny_overrides,
                                                                                      capsys):
    cfg = load_config(overrides=tiny_overrides + ["model.name=cam"])
    path = fake_run / "checkpoints" / "cam.pt"
    save_checkpoint(path, {"model": build_model(cfg, 3).state_dict(), "config": to_dict(cfg)})
    err = one_line_error(capsys, evaluate.main, ["--run", str(fake_run), "--checkpoint", str(path)])
    assert err.startswith(f"error: checkpoint {path} does not fit the acol / smallcnn model of {fake_run} "
                          "(missing keys: ")
    assert "unexpected keys: " in err and err.endswith("; it was written for model.name=cam, model.backbone=smallcnn\n")


def test_weights_of_another_shape_name_the_key_and_both_shapes(tmp_path):
    path = tmp_path / "w.pt"
    save_checkpoint(path, {"model": {"weight": torch.zeros(4, 2), "bias": torch.zeros(4)}})
    with pytest.raises(CheckpointError) as error:
        load_weights(torch.nn.Linear(2, 3), load_checkpoint(path), path, "the probe")
    assert str(error.value) == (f"checkpoint {path} does not fit the probe (shapes differ: weight (4, 2) in the "
                                "file, (3, 2) in the model, bias (4,) in the file, (3,) in the model); it holds "
                                "no config")


RESUMABLE = {"optimizer": {}, "epoch": 1, "step": 6, "best": {}, "rng": {"torch": torch.get_rng_state()}}


@pytest.mark.parametrize("state, missing", [({}, "optimizer, epoch, step, best, rng"),
                                            ({**RESUMABLE, "step": "6"}, "step"),
                                            ({k: v for k, v in RESUMABLE.items() if k != "rng"}, "rng")])
def test_a_checkpoint_without_a_training_state_cannot_resume(state, missing, tmp_path):
    path = tmp_path / "weights.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(2)}, **state})
    with pytest.raises(CheckpointError) as error:
        check_resumable(load_checkpoint(path), path)
    assert str(error.value) == (f"checkpoint {path} holds model weights but not a training state (no {missing}): it "
                                f"cannot resume a run; to start a new run from its backbone weights pass "
                                f"model.pretrained={path}")
    check_resumable(load_checkpoint(path) | RESUMABLE, path)   # complete: no error


@pytest.mark.parametrize("case", ["pickle calling os.system", "a dict without model"])
def test_train_resume_refuses_a_bad_checkpoint_before_making_the_run_folder(case, tiny_overrides, tmp_path, capsys):
    write, message = BAD_CHECKPOINTS[case]
    path, marker = tmp_path / "bad.pt", tmp_path / "PWNED"
    write(path, marker)
    err = one_line_error(capsys, train.main, ["--config", CONFIG, "--name", "r", *tiny_overrides, "--resume", str(path)])
    assert message.format(path=path) in err and not marker.exists()
    assert not (tmp_path / "runs" / "r").exists()


def test_train_resume_refuses_weights_without_a_training_state(tiny_overrides, tmp_path, capsys):
    path = tmp_path / "weights.pt"
    cfg = load_config(overrides=tiny_overrides)
    save_checkpoint(path, {"model": build_model(cfg, 3).state_dict()})
    err = one_line_error(capsys, train.main, ["--config", CONFIG, "--name", "r", *tiny_overrides, "--resume", str(path)])
    assert f"checkpoint {path} holds model weights but not a training state" in err
    assert not (tmp_path / "runs" / "r").exists()


# --------------------------------------------------------------------------------------------
# Checkpoint writes on a full disk
# --------------------------------------------------------------------------------------------
def no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def full_at_fsync(monkeypatch, tmp: Path) -> None:
    monkeypatch.setattr(os, "fsync", no_space)


def dev_full(monkeypatch, tmp: Path) -> None:
    """The temporary file is /dev/full (every write: ENOSPC), the real device, through the real code path."""
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    tmp.symlink_to("/dev/full")


def torch_writer_on_a_full_disk(monkeypatch, tmp: Path) -> None:
    """torch's zip writer loses the errno ("file write failed"); the disk's free space tells."""
    def save(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                           "data/0: file write failed")
    monkeypatch.setattr(engine.torch, "save", save)
    monkeypatch.setattr(engine.shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0))


@pytest.mark.parametrize("fill", [full_at_fsync, dev_full, torch_writer_on_a_full_disk])
def test_a_full_disk_keeps_the_previous_checkpoint_and_says_so(fill, monkeypatch, tmp_path):
    path = tmp_path / "checkpoints" / "last.pt"
    save_checkpoint(path, {"model": {"w": torch.ones(1000)}, "step": 1})
    fill(monkeypatch, path.with_name(f".{path.name}.tmp{os.getpid()}"))
    with pytest.raises(CheckpointWriteError) as error:
        save_checkpoint(path, {"model": {"w": torch.zeros(1000)}, "step": 2})
    monkeypatch.undo()
    assert str(error.value) == (f"cannot write checkpoint {path}: no space left on device (free space in "
                                f"{path.parent}, then continue with --resume auto); the previous last.pt is kept")
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.pt"]   # no temporary file left


def test_a_file_size_limit_stops_training_with_one_line(tiny_overrides, tmp_path):
    """`ulimit -f` (EFBIG; torch's zip writer reports it as "unexpected pos"): the limit is named."""
    command = shlex.join([sys.executable, "-m", "acol.train", "--config", CONFIG, *tiny_overrides, "--name", "r"])
    done = subprocess.run(["bash", "-c", f"ulimit -f 40; exec {command}"], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(Path(CONFIG).parents[1])))
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stdout + done.stderr, done.stderr[-3000:]
    # the first file past the limit: the TensorBoard events (heatmaps), said through the run's logger
    # (stdout and log.txt), or a checkpoint, refused before it is written (stderr)
    said = done.stdout + done.stderr
    assert ("error: file too large writing " in said and "raise the file size limit (ulimit -f)" in said
            or "the file size limit of this process (40960 bytes, ulimit -f) is below the checkpoint's size"
            in done.stderr), said[-2000:]


def test_an_unwritable_runs_folder_is_one_line(tiny_overrides, tmp_path, capsys):
    runs = tmp_path / "runs"
    runs.mkdir()
    if subprocess.run(["chattr", "+i", str(runs)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here")
    try:
        with pytest.raises(SystemExit) as stopped:
            train.main(["--config", CONFIG, *tiny_overrides, "--name", "r"])
    finally:
        subprocess.run(["chattr", "-i", str(runs)], check=True)
    assert stopped.value.code == 1
    assert capsys.readouterr().err == (f"error: operation not permitted writing {runs / 'r'} (during start-up); make the folder writable "
                   "(an immutable attribute?) or set log.runs_dir to one that is, then run the same command (with "
                   "--resume auto once a checkpoint exists)\n")
    assert not any(runs.iterdir())


@pytest.mark.parametrize("code", sorted(train.WRITE_ERRNOS), ids=lambda code: errno.errorcode[code])
def test_every_write_failure_is_one_line_naming_the_path_and_the_cause(code, monkeypatch, tiny_overrides, tmp_path,
                                                                        capsys):
    """A write of the run folder failing with any of these errors (here results.json, after the run's last
    checkpoint): one line naming the file, the cause and what to do; the checkpoint is kept."""
    import acol.run

    path = tmp_path / "runs" / "r" / "results.json"

    def fail(target, text):  # a read-only file system's error with the path as bytes, as TensorBoard's writer gives it
        raise OSError(code, os.strerror(code), os.fsencode(target) if code == errno.EROFS else str(target))
    monkeypatch.setattr(acol.run, "write_atomic", fail)
    with pytest.raises(SystemExit) as stopped:
        train.main(["--config", CONFIG, *tiny_overrides, "--name", "r"])
    assert stopped.value.code == 1
    what = "no space left on device" if code in (errno.ENOSPC, errno.EDQUOT) else os.strerror(code).lower()
    captured = capsys.readouterr()
    assert [line.split(" ", 1)[1] for line in captured.out.splitlines() if " error:" in line] == [(  # the log
        f"error: {what} writing {path} (during the final test); {train.WRITE_ERRNOS[code]}, then run the same "
        "command (with --resume auto once a checkpoint exists)")]
    assert not path.exists() and load_checkpoint(tmp_path / "runs" / "r" / "checkpoints" / "last.pt")["step"] > 0


def test_a_first_checkpoint_on_a_full_disk_says_there_was_none(monkeypatch, tmp_path):
    path = tmp_path / "best.pt"
    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(CheckpointWriteError, match=r"no space left on device .*; no earlier best.pt was there$"):
        save_checkpoint(path, {"model": {"w": torch.ones(2)}})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------------------------
# Config files and values
# --------------------------------------------------------------------------------------------
CONFIG_FILES = {  # case: ({file name: bytes}, the line after "config error: ", {stem}: that file's path)
    "not UTF-8": ({"exp.toml": b"[optim]\n# caf\xe9\nlr = 0.1\n"},
                  "{exp}:2: not UTF-8 text (byte 0xe9 at column 6); save the file as UTF-8"),
    "_base_ not UTF-8": ({"base.toml": b"[train]\nepochs = 2 # \xff\n", "exp.toml": b"_base_ = 'base.toml'\n"},
                         "{base}:2: not UTF-8 text (byte 0xff at column 14); save the file as UTF-8"),
    "TOML syntax": ({"exp.toml": b"[optim]\nlr = 0.1\nmomentum = = 3\n"},
                    "{exp}:3: invalid TOML: Invalid value (column 12)"),
    "_base_ TOML syntax": ({"base.toml": b"[optim\n", "exp.toml": b"_base_ = ['base.toml']\n"},
                           "{base}:1: invalid TOML: Expected ']' at the end of a table declaration (column 7)"),
    "_base_ = 5": ({"exp.toml": b"_base_ = 5\n"},
                   "{exp}: _base_ must be a path or a list of paths (strings); got 5"),
    "_base_ = [1]": ({"exp.toml": b"_base_ = [1]\n"},
                     "{exp}: _base_ must be a path or a list of paths (strings); got [1]"),
}


@pytest.mark.parametrize("case", CONFIG_FILES)
def test_a_bad_config_file_names_the_file_and_line(case, tiny_overrides, tmp_path, capsys):
    files, message = CONFIG_FILES[case]
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    err = one_line_error(capsys, train.main, ["--config", str(tmp_path / "exp.toml"), *tiny_overrides])
    assert err == "config error: " + message.format(**{Path(name).stem: tmp_path / name for name in files}) + "\n"
    assert not (tmp_path / "runs").exists()


BAD_VALUES = [  # (overrides, space-separated; the line after "config error: ")
    ("optim.lr=-1", "optim.lr must be > 0 and finite; got -1.0"),
    ("optim.lr=nan", "optim.lr must be > 0 and finite; got nan"),
    ("optim.lr=inf", "optim.lr must be > 0 and finite; got inf"),
    ("optim.lr=4e38", "optim.lr x optim.head_lr_mult x optim.bias_lr_mult = 4e+38 exceeds float32's range "
                      "(3.40282e+38); got optim.lr=4e+38"),
    ("optim.momentum=1.5", "optim.momentum must be in [0, 1); got 1.5"),
    ("optim.weight_decay=-1e-4", "optim.weight_decay must be >= 0 and finite; got -0.0001"),
    ("optim.head_lr_mult=nan", "optim.head_lr_mult must be >= 0 and finite (0 freezes the head); got nan"),
    ("optim.lr_decay_gamma=0", "optim.lr_decay_gamma must be > 0 and finite; got 0.0"),
    ("optim.warmup_steps=-1", "optim.warmup_steps and optim.warmup_epochs must be >= 0; got -1 and 0"),
    ("train.epochs=0", "train.epochs must be >= 1; got 0"),
    ("train.global_batch_size=0", "train.global_batch_size must be >= 1; got 0"),
    ("train.max_steps=-1", "train.max_steps must be >= 0 (0: no limit); got -1"),
    ("train.checkpoint_every_steps=-5", "train.checkpoint_every_steps must be >= 0 (0: at epoch ends only); got -5"),
    ("eval.every=0", "eval.every must be >= 1; got 0"),
    ("eval.batch_size=0", "eval.batch_size must be >= 1; got 0"),
    ("eval.fixed_threshold=1", "eval.fixed_threshold must be in [0, 1); got 1.0"),
    ("eval.iou_thresholds=[50,0]", "eval.iou_thresholds[1] must be in (0, 100]; got 0"),
    ("log.log_every=0", "log.log_every must be >= 1; got 0"),
    ("log.vis_every=0", "log.vis_every must be >= 1; got 0"),
    ("log.vis_num=-1", "log.vis_num must be >= 0; got -1"),
    ("data.num_workers=-2", "data.num_workers must be >= -1 (-1: from the core count); got -2"),
    ("optim.momentum=0", "optim.nesterov=true needs optim.momentum > 0; got optim.momentum=0 (set "
                         "optim.nesterov=false for plain SGD)"),
    ("acol.loss_weight_b=-1", "acol.loss_weight_b must be >= 0; got -1.0"),
    ("model.name=cutmix cutmix.beta=inf", "cutmix.beta must be >= 0 (0: no mixing); got inf"),
    ("model.name=spg spg.threshold_2l=nan", "spg.threshold_2l must be in [0, 1]; got nan"),
    ("model.name=cam acol.threshold=2", "acol.threshold must be in (0, 1]; got 2.0"),  # another method's table too
    ("train.global_batch_size=100000", "train.global_batch_size=100000 exceeds the {train} images of the train split "
                                       "(each epoch drops its last, incomplete batch, so it would train nothing); "
                                       "lower it"),
]


@pytest.mark.parametrize("override, message", BAD_VALUES, ids=[o for o, _ in BAD_VALUES])
def test_a_bad_value_names_the_key_the_value_and_the_range(override, message, tiny_overrides, tmp_path, capsys):
    err = one_line_error(capsys, train.main, ["--config", CONFIG, *tiny_overrides, *override.split()])
    assert err == f"config error: {message.format(train=TINY_SPEC['num_classes'] * TINY_SPEC['train_per_class'])}\n"
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../outside"])
def test_a_run_name_stays_one_folder_inside_the_runs_folder(name, tiny_overrides, tmp_path, capsys):
    err = one_line_error(capsys, train.main, ["--config", CONFIG, *tiny_overrides, "--name", name])
    assert err == (f"error: --name {name!r}: a run name is one folder inside log.runs_dir ({tmp_path / 'runs'}): no "
                   "'/', not '.' or '..'\n")
    assert not any(tmp_path.iterdir())  # no runs folder, nothing beside it


def test_a_bad_value_in_a_file_is_checked_as_an_override_is(tmp_path):
    (tmp_path / "exp.toml").write_text("[optim]\nlr = nan\n")
    with pytest.raises(ConfigError, match=r"^optim.lr must be > 0 and finite; got nan$"):
        load_config(tmp_path / "exp.toml")


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------
def break_utf8(path: Path, line: int) -> bytes:
    """Put a Latin-1 byte at the end of `line` (1-based) of the file; returns the byte."""
    lines = path.read_bytes().split(b"\n")
    lines[line - 1] += b"\xe9"
    path.write_bytes(b"\n".join(lines))
    return b"\xe9"


@pytest.mark.parametrize("name, line", [("class_labels.txt", 2), ("image_ids.txt", 5), ("localization.txt", 3)])
def test_metadata_that_is_not_utf8_names_the_file_and_line(name, line, tiny_copy, tiny_overrides, tmp_path, capsys):
    data_root, metadata_root, overrides = tiny_copy
    path = metadata_root / "TINY" / "train" / name
    column = len(path.read_bytes().split(b"\n")[line - 1]) + 1
    break_utf8(path, line)
    message = f"{path}:{line}: not UTF-8 text (byte 0xe9 at column {column}); save the file as UTF-8"
    with pytest.raises(MetadataError) as error:
        read_metadata(metadata_root, "TINY", "train")
    assert str(error.value) == message
    err = one_line_error(capsys, train.main, ["--config", CONFIG, *tiny_overrides, *overrides])
    assert err.startswith(f"data error: {message} (data.metadata_root=")
    assert not (tmp_path / "runs").exists()
    problems = check_data(load_config(CONFIG, tiny_overrides + overrides), summary=None)
    assert message in problems                                      # --check-data lists it too


# --------------------------------------------------------------------------------------------
# Images that fail in a DataLoader worker
# --------------------------------------------------------------------------------------------
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:60])


IMAGE_FAULTS = {  # case: (how the image is spoilt, the clean line's start)
    "truncated": (truncate, "cannot read image {path}: "),
    "not an image": (lambda p: p.write_text("not an image"), "cannot read image {path}: cannot identify image file"),
    "missing": (lambda p: p.unlink(), "image not found: {path}"),
    "another size": (lambda p: Image.new("RGB", (31, 32)).save(p), "{path}: image is 31x32 but image_sizes.txt says 32x32"),
}


@pytest.mark.parametrize("case", IMAGE_FAULTS)
def test_an_image_that_fails_in_a_worker_comes_back_as_one_line(case, tiny_copy, tiny_overrides):
    data_root, metadata_root, overrides = tiny_copy
    cfg = load_config(CONFIG, tiny_overrides + overrides)
    dataset = build_dataset(cfg, "val", train=False)
    path = data_root / "TINY" / dataset.meta.image_ids[3]
    spoil, message = IMAGE_FAULTS[case]
    spoil(path)
    loader = DataLoader(dataset, batch_size=2, num_workers=1, collate_fn=collate)
    with pytest.raises(ImageError) as error:
        list(loader)
    assert "Original Traceback" in str(error.value)                 # torch wrapped it: the case this undoes
    line = worker_error_line(error.value)
    assert line.startswith(message.format(path=path)) and "\n" not in line
    assert worker_error_line(ImageError(line)) == line              # an unwrapped error: its own line


def test_evaluate_names_an_image_that_fails_in_a_worker(fake_run, tiny_copy, capsys):
    data_root, metadata_root, overrides = tiny_copy
    path = data_root / "TINY" / read_metadata(metadata_root, "TINY", "val").image_ids[1]
    truncate(path)
    err = one_line_error(capsys, evaluate.main, ["--run", str(fake_run), *overrides, "data.num_workers=1"])
    assert err.startswith(f"data error: cannot read image {path}: ")


def test_compare_names_an_image_that_fails_in_a_worker(fake_run, tiny_copy, tmp_path, capsys):
    data_root, metadata_root, overrides = tiny_copy
    path = data_root / "TINY" / read_metadata(metadata_root, "TINY", "val").image_ids[1]
    truncate(path)
    err = one_line_error(capsys, compare.main, [str(fake_run), "--methods", "cam", "--out", str(tmp_path / "cmp"),
                                                *overrides, "data.num_workers=1"])
    assert err.startswith(f"data error: cannot read image {path}: ")
    assert not (tmp_path / "cmp").exists()


def test_train_names_an_image_that_fails_in_a_worker_and_the_same_command_works_once_fixed(tiny_copy, tiny_overrides,
                                                                                             tmp_path, capsys):
    data_root, metadata_root, overrides = tiny_copy
    path = data_root / "TINY" / read_metadata(metadata_root, "TINY", "train").image_ids[0]
    good = path.read_bytes()
    truncate(path)
    argv = ["--config", CONFIG, "--name", "r", *tiny_overrides, *overrides, "data.num_workers=1"]
    err = one_line_error(capsys, train.main, argv)
    assert err.startswith(f"data error: cannot read image {path}: ")
    assert err.rstrip().endswith("then run the same command with --resume auto")
    path.write_bytes(good)
    train.main(argv)  # no checkpoint was written: the same command starts the run again
    assert (tmp_path / "runs" / "r" / "results.json").is_file()


# --------------------------------------------------------------------------------------------
# Score maps given to acol.evaluate --scoremaps
# --------------------------------------------------------------------------------------------
def nan_at(row: int, col: int) -> np.ndarray:
    scoremap = np.full((32, 32), 0.5, np.float32)
    scoremap[row, col] = np.nan
    return scoremap


GOOD_MAP = np.full((32, 32), 0.5, np.float32)
BAD_MAPS = {  # case: (index of the bad map among the 6 test images, its array, the line after "<file>: ")
    "NaN": (2, nan_at(3, 4), r"score map values must lie in \[0, 1\]; it has NaN or infinite values "
                             r"\(1 NaN, 0 inf; the first at row 3, column 4\)"),
    "inf": (2, np.full((32, 32), np.inf), r"score map values must lie in \[0, 1\]; it has NaN or infinite values "
                                          r"\(0 NaN, 1024 inf; the first at row 0, column 0\)"),
    "above 1": (2, np.full((32, 32), 1.5, np.float32), r"score map values must lie in \[0, 1\] \(min 1.5, max 1.5\)"),
    "int": (2, np.ones((32, 32), np.int64), r"a score map must be a 2-D float array; got int64 \(32, 32\)"),
    "bool": (2, np.ones((32, 32), bool), r"a score map must be a 2-D float array; got bool \(32, 32\)"),
    "complex": (2, np.ones((32, 32), np.complex64), r"a score map must be a 2-D float array; got complex64 \(32, 32\)"),
    "object": (2, np.full((32, 32), None, object),
               r"a score map must be a 2-D float array; got Python objects \(dtype object\)"),
    "3-D": (2, np.zeros((1, 32, 32), np.float32), r"a score map must be a 2-D float array; got float32 \(1, 32, 32\)"),
    "scalar": (2, np.float32(0.5), r"a score map must be a 2-D float array; got float32 \(\)"),
    "wrong shape, first map": (0, np.zeros((16, 16), np.float32),
                               r"the score map's shape is \(16, 16\), expected \(32, 32\) \(the shape of 5 of the "
                               r"6 maps, e\.g\. .*\.npy\)"),
    "wrong shape, last map": (5, np.zeros((32, 16), np.float32),
                              r"the score map's shape is \(32, 16\), expected \(32, 32\) \(the shape of 5 of the "
                              r"6 maps, e\.g\. .*\.npy\)"),
}


def write_maps(root: Path, image_ids: list[str], bad_index: int, bad: np.ndarray) -> Path:
    """A score map per image id (GOOD_MAP, `bad` at bad_index); returns the bad one's file."""
    for i, image_id in enumerate(image_ids):
        path = root / f"{image_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, bad if i == bad_index else GOOD_MAP, allow_pickle=True)
    return root / f"{image_ids[bad_index]}.npy"


@pytest.mark.parametrize("case", BAD_MAPS)
def test_a_bad_score_map_is_named(case, tiny_data, tmp_path, capsys):
    data_root, metadata_root = tiny_data
    index, array, message = BAD_MAPS[case]
    bad = write_maps(tmp_path / "maps", read_metadata(metadata_root, "SYNTHETIC", "test").image_ids, index, array)
    err = one_line_error(capsys, evaluate.main, ["--scoremaps", str(tmp_path / "maps"), "--dataset", "SYNTHETIC",
                                                 "--metadata-root", str(metadata_root), "--data-root", str(data_root)])
    assert re.fullmatch(rf"error: {re.escape(str(bad))}: {message}\n", err), err
    assert not (tmp_path / "maps_eval").exists()


# --------------------------------------------------------------------------------------------
# The same through real command lines: one line on stderr, no traceback
# --------------------------------------------------------------------------------------------
def cli_config_not_utf8(tmp_path, tiny_overrides, **_):
    (tmp_path / "exp.toml").write_bytes(b"[optim]\nlr = 0.1 # \xff\n")
    return ["acol.train", "--config", str(tmp_path / "exp.toml"), *tiny_overrides], f"{tmp_path / 'exp.toml'}:2: "


def cli_lr_nan(tmp_path, tiny_overrides, **_):
    return ["acol.train", "--config", CONFIG, *tiny_overrides, "optim.lr=nan"], "optim.lr must be > 0 and finite; got nan"


def cli_code_checkpoint(tmp_path, fake_run, **_):
    torch.save({"model": RunsShell(tmp_path / "PWNED")}, tmp_path / "bad.pt")
    return (["acol.evaluate", "--run", str(fake_run), "--checkpoint", str(tmp_path / "bad.pt")],
            f"(it would run code): {tmp_path / 'bad.pt'}")


def cli_first_scoremap(tmp_path, tiny_data, **_):
    data_root, metadata_root = tiny_data
    bad = write_maps(tmp_path / "maps", read_metadata(metadata_root, "SYNTHETIC", "test").image_ids, 0, nan_at(0, 0))
    return (["acol.evaluate", "--scoremaps", str(tmp_path / "maps"), "--dataset", "SYNTHETIC", "--metadata-root",
             str(metadata_root), "--data-root", str(data_root)], f"{bad}: score map values must lie in [0, 1]")


@pytest.mark.parametrize("command", [cli_config_not_utf8, cli_lr_nan, cli_code_checkpoint, cli_first_scoremap])
def test_the_command_line_prints_one_line(command, tmp_path, tiny_overrides, tiny_data, fake_run):
    argv, culprit = command(tmp_path=tmp_path, tiny_overrides=tiny_overrides, tiny_data=tiny_data, fake_run=fake_run)
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert culprit in proc.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "PWNED").exists()


# --------------------------------------------------------------------------------------------
# Pretrained weights (model.pretrained)
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("case, message", [
    ("code", "{path}: not a weights file (it would run code); pass a state dict saved with torch.save("),
    ("text", "{path}: cannot be read as a torch file ("),
    ("missing", "pretrained weights file not found: {path}"),
])
def test_bad_pretrained_weights_are_one_line_before_the_run_folder(case, message, tiny_overrides, tmp_path, capsys):
    path, marker = tmp_path / "w.pt", tmp_path / "PWNED"
    if case == "code":
        BAD_CHECKPOINTS["pickle calling os.system"][0](path, marker)
    elif case == "text":
        path.write_text("not weights")
    err = one_line_error(capsys, train.main, ["--config", CONFIG, "--name", "r", *tiny_overrides,
                                              f"model.pretrained={path}"])
    assert err.startswith("config error: model.pretrained: ") and message.format(path=path) in err
    assert not marker.exists() and not (tmp_path / "runs" / "r").exists()


def test_evaluating_a_run_needs_no_pretrained_file(fake_run, tmp_path):
    """The checkpoint holds every weight: a run whose model.pretrained file is gone (or "imagenet", offline)
    still evaluates."""
    config = fake_run / "config.toml"
    config.write_text(config.read_text().replace('pretrained = ""', f'pretrained = "{tmp_path / "gone.pt"}"'))
    assert str(tmp_path / "gone.pt") in config.read_text()
    metrics = evaluate.main(["--run", str(fake_run), "--out", str(tmp_path / "ev")])
    assert 0 <= metrics["maxboxacc_v2"] <= 100


def test_an_image_in_two_splits_is_refused_unless_allowed(tiny_copy, tiny_overrides, tmp_path, capsys):
    """A train image listed in test too: one line naming both image_ids.txt lines, before the run folder
    exists; `data.allow_split_overlap=true` trains anyway."""
    data_root, metadata_root, overrides = tiny_copy
    train_dir, test_dir = metadata_root / "TINY" / "train", metadata_root / "TINY" / "test"
    image_id = (train_dir / "image_ids.txt").read_text().split()[0]
    for path in train_dir.glob("*.txt"):
        lines = [line for line in path.read_text().splitlines() if line.split(",")[0] == image_id]
        with (test_dir / path.name).open("a") as out:
            out.write("".join(f"{line}\n" for line in lines))
    n = len((test_dir / "image_ids.txt").read_text().split())
    err = one_line_error(capsys, train.main, ["--config", CONFIG, *tiny_overrides, *overrides, "--name", "r"])
    assert err == (f"data error: {test_dir / 'image_ids.txt'}:{n}: {image_id!r} is also in "
                   f"{train_dir / 'image_ids.txt'}:1; a run must not evaluate on an image it trained on or chose its "
                   f"thresholds on (data.allow_split_overlap=true runs anyway) (data.metadata_root={metadata_root}, "
                   "data.dataset=TINY)\n")
    assert not (tmp_path / "runs").exists()
    results = train.main(["--config", CONFIG, *tiny_overrides, *overrides, "data.allow_split_overlap=true",
                          "--name", "r"])
    assert results["step"] > 0
