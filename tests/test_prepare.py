"""acol.datasets.prepare on small copies of the official archives, built file by file with their exact syntax."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from acol.config import load_config
from acol.datasets.dataset import build_dataset
from acol.datasets.metadata import read_metadata
from acol.datasets.prepare import main

REPO = Path(__file__).resolve().parents[1]


def write_image(path: Path, width: int, height: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(width * 1000 + height).integers(0, 256, (height, width, 3), dtype=np.uint8)
    assert cv2.imwrite(str(path), pixels)


def write_mask(path: Path, width: int, height: int, x0: int, y0: int, x1: int, y1: int) -> None:
    mask = np.zeros((height, width), np.uint8)
    mask[y0:y1, x0:x1] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), mask)


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def run(args: list, capsys) -> tuple[int, str]:
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


# --------------------------------------------------------------------------------------------
# CUB-200-2011 (CUB_200_2011.tgz) and CUBV2
# --------------------------------------------------------------------------------------------
ALBATROSS, LAYSAN = "001.Black_footed_Albatross", "002.Laysan_Albatross"
CUB_IMAGES = [   # images.txt id, path, class id, is_train, (W, H), bounding_boxes.txt "x y w h"
    (1, f"{ALBATROSS}/Black_Footed_Albatross_0046_18.jpg", 1, 0, (40, 30), "6.0 2.0 30.0 25.0"),
    (2, f"{ALBATROSS}/Black_Footed_Albatross_0009_34.jpg", 1, 1, (32, 48), "3.7 4.2 10.6 20.9"),
    (3, f"{ALBATROSS}/Black_Footed_Albatross_0002_55.jpg", 1, 0, (48, 36), "0.0 0.0 48.0 36.0"),
    (4, f"{ALBATROSS}/Black_Footed_Albatross_0074_59.jpg", 1, 1, (36, 36), "10.0 11.0 5.0 6.0"),
    (5, f"{LAYSAN}/Laysan_Albatross_0002_1027.jpg", 2, 1, (44, 33), "1.0 1.0 20.0 20.0"),
    (6, f"{LAYSAN}/Laysan_Albatross_0003_1033.jpg", 2, 1, (30, 40), "2.5 3.5 27.4 36.4"),
    (7, f"{LAYSAN}/Laysan_Albatross_0082_524.jpg", 2, 0, (50, 20), "12.0 4.0 30.0 12.0"),
]


def make_cub(root: Path) -> Path:
    """An extracted CUB_200_2011/ with the official files (space-separated, one line per image)."""
    src = root / "CUB_200_2011"
    write_text(src / "classes.txt", f"1 {ALBATROSS}\n2 {LAYSAN}\n")
    write_text(src / "images.txt", "".join(f"{i} {p}\n" for i, p, *_ in CUB_IMAGES))
    write_text(src / "image_class_labels.txt", "".join(f"{i} {c}\n" for i, _, c, *_ in CUB_IMAGES))
    write_text(src / "train_test_split.txt", "".join(f"{i} {t}\n" for i, _, _, t, *_ in CUB_IMAGES))
    write_text(src / "bounding_boxes.txt", "".join(f"{i} {b}\n" for i, *_, b in CUB_IMAGES))
    write_text(src / "README", "CUB-200-2011\n")
    for _, path, _, _, (w, h), _ in CUB_IMAGES:
        write_image(src / "images" / path, w, h)
    return src


CUBV2_IMAGES = [(f"{ALBATROSS}/30107316117.jpg", 0, (60, 45), "12,13,50,40"),
                (f"{LAYSAN}/25513167677.jpg", 1, (45, 60), "9,17,40,54")]


def make_cubv2(root: Path, with_metadata: bool) -> Path:
    """CUBV2.tar extracted (<class folder>/<file>.jpg), optionally with wsolevaluation's metadata/CUB/val/
    files beside the images (no trailing newline, as in wsolevaluation)."""
    src = root / "CUBV2"
    for path, _, (w, h), _ in CUBV2_IMAGES:
        write_image(src / path, w, h)
    if with_metadata:
        write_wsol_split(src, CUBV2_IMAGES)
    return src


def write_wsol_split(split_dir: Path, images: list) -> None:
    write_text(split_dir / "image_ids.txt", "\n".join(p for p, *_ in images))
    write_text(split_dir / "class_labels.txt", "\n".join(f"{p},{c}" for p, c, *_ in images))
    write_text(split_dir / "image_sizes.txt", "\n".join(f"{p},{w},{h}" for p, _, (w, h), _ in images))
    write_text(split_dir / "localization.txt", "\n".join(f"{p},{b}" for p, *_, b in images))


CUB_TRAIN = {
    "image_ids.txt": [
        f"{ALBATROSS}/Black_Footed_Albatross_0009_34.jpg",
        f"{ALBATROSS}/Black_Footed_Albatross_0074_59.jpg",
        f"{LAYSAN}/Laysan_Albatross_0002_1027.jpg",
        f"{LAYSAN}/Laysan_Albatross_0003_1033.jpg",
    ],
    "class_labels.txt": [
        f"{ALBATROSS}/Black_Footed_Albatross_0009_34.jpg,0",
        f"{ALBATROSS}/Black_Footed_Albatross_0074_59.jpg,0",
        f"{LAYSAN}/Laysan_Albatross_0002_1027.jpg,1",
        f"{LAYSAN}/Laysan_Albatross_0003_1033.jpg,1",
    ],
    "image_sizes.txt": [
        f"{ALBATROSS}/Black_Footed_Albatross_0009_34.jpg,32,48",
        f"{ALBATROSS}/Black_Footed_Albatross_0074_59.jpg,36,36",
        f"{LAYSAN}/Laysan_Albatross_0002_1027.jpg,44,33",
        f"{LAYSAN}/Laysan_Albatross_0003_1033.jpg,30,40",
    ],
    "localization.txt": [   # x0 = int(x), y0 = int(y), x1 = int(x + w), y1 = int(y + h)
        f"{ALBATROSS}/Black_Footed_Albatross_0009_34.jpg,3,4,14,25",   # 3.7+10.6=14.3, 4.2+20.9=25.1
        f"{ALBATROSS}/Black_Footed_Albatross_0074_59.jpg,10,11,15,17",
        f"{LAYSAN}/Laysan_Albatross_0002_1027.jpg,1,1,21,21",
        f"{LAYSAN}/Laysan_Albatross_0003_1033.jpg,2,3,29,39",          # 2.5+27.4=29.9, 3.5+36.4=39.9
    ],
}
CUB_TEST = {
    "image_ids.txt": [
        f"{ALBATROSS}/Black_Footed_Albatross_0046_18.jpg",
        f"{ALBATROSS}/Black_Footed_Albatross_0002_55.jpg",
        f"{LAYSAN}/Laysan_Albatross_0082_524.jpg",
    ],
    "class_labels.txt": [
        f"{ALBATROSS}/Black_Footed_Albatross_0046_18.jpg,0",
        f"{ALBATROSS}/Black_Footed_Albatross_0002_55.jpg,0",
        f"{LAYSAN}/Laysan_Albatross_0082_524.jpg,1",
    ],
    "image_sizes.txt": [
        f"{ALBATROSS}/Black_Footed_Albatross_0046_18.jpg,40,30",
        f"{ALBATROSS}/Black_Footed_Albatross_0002_55.jpg,48,36",
        f"{LAYSAN}/Laysan_Albatross_0082_524.jpg,50,20",
    ],
    "localization.txt": [
        f"{ALBATROSS}/Black_Footed_Albatross_0046_18.jpg,6,2,36,27",
        f"{ALBATROSS}/Black_Footed_Albatross_0002_55.jpg,0,0,47,35",     # the whole image: x1 = W - 1, y1 = H - 1
        f"{LAYSAN}/Laysan_Albatross_0082_524.jpg,12,4,42,16",
    ],
}


def assert_split(split_dir: Path, expected: dict[str, list[str]]) -> None:
    for name, expected_lines in expected.items():
        assert lines(split_dir / name) == expected_lines, name


def data_config(dataset: str, data: Path):
    return load_config(overrides=[f"data.dataset={dataset}", f"data.root={data}",
                                  f"data.metadata_root={data / 'metadata'}"])


def test_cub_metadata_line_by_line_and_loadable(tmp_path, capsys):
    src = make_cub(tmp_path)
    data = tmp_path / "data"
    args = ["cub", "--source", src, "--data-root", data, "--metadata-root", data / "metadata"]
    code, out = run(args, capsys)
    assert code == 0, out
    assert_split(data / "metadata" / "CUB" / "train", CUB_TRAIN)
    assert_split(data / "metadata" / "CUB" / "test", CUB_TEST)
    assert not (data / "metadata" / "CUB" / "val").exists()
    assert "note: val not made" in out and "--val-from-train" in out and "CUBV2" in out
    assert "note: val is missing: no folder" in out
    assert re.search(r"train\s+4\s+4\s+0\s+2\s+5,994 images", out)
    assert re.search(r"test\s+3\s+3\s+0\s+2\s+5,794 images", out)
    assert "no problems found" in out and "not the full data set's 200" in out
    assert re.search(r"note: clipped 1 boxes to the image .*, e\.g\. .*bounding_boxes.txt:3 \(001.Black_footed_"
                     r"Albatross/Black_Footed_Albatross_0002_55.jpg\) \(0,0,48,36\) -> \(0,0,47,35\)\n", out)
    for _, path, *_ in CUB_IMAGES:           # symlinks to the untouched sources
        link = data / "CUB" / path
        assert link.is_symlink() and link.resolve() == (src / "images" / path).resolve()

    assert read_metadata(data / "metadata", "CUB", "test").boxes[CUB_TEST["image_ids.txt"][0]] == [(6, 2, 36, 27)]
    dataset = build_dataset(data_config("CUB", data), "test", train=False)
    sample = dataset[2]
    assert sample["image_id"] == f"{LAYSAN}/Laysan_Albatross_0082_524.jpg" and sample["label"] == 1
    assert sample["image"].shape == (3, 224, 224)
    assert sample["boxes"].tolist() == [[int(12 * 224 / 50), int(4 * 224 / 20), int(42 * 224 / 50), int(16 * 224 / 20)]]

    code, out = run(args, capsys)            # idempotent
    assert code == 0, out


def test_cub_with_cubv2_val_copied(tmp_path, capsys):
    src, cubv2 = make_cub(tmp_path), make_cubv2(tmp_path, with_metadata=True)
    data = tmp_path / "data"
    code, out = run(["cub", "--source", src, "--val-source", cubv2, "--copy",
                     "--data-root", data, "--metadata-root", data / "metadata"], capsys)
    assert code == 0, out
    val = data / "metadata" / "CUB" / "val"
    for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
        assert (val / name).read_bytes() == (cubv2 / name).read_bytes()   # as they are
    image = data / "CUB" / CUBV2_IMAGES[0][0]
    assert image.is_file() and not image.is_symlink()                    # --copy
    assert image.read_bytes() == (cubv2 / CUBV2_IMAGES[0][0]).read_bytes()
    assert re.search(r"val\s+2\s+2\s+0\s+2", out)
    dataset = build_dataset(data_config("CUB", data), "val", train=False)
    assert dataset[1]["label"] == 1 and dataset[1]["boxes"].shape == (1, 4)


def test_cub_val_from_train_holds_out_k_per_class(tmp_path, capsys):
    src = make_cub(tmp_path)
    data = tmp_path / "data"
    code, out = run(["cub", "--source", src, "--val-from-train", 1,
                     "--data-root", data, "--metadata-root", data / "metadata"], capsys)
    assert code == 0, out
    assert "NOT the wsolevaluation protocol" in out
    meta = data / "metadata" / "CUB"
    # per class, the train image with the smallest SHA-1 of its path (worked out by hand for these paths)
    assert lines(meta / "val" / "localization.txt") == [f"{ALBATROSS}/Black_Footed_Albatross_0009_34.jpg,3,4,14,25",
                                                        f"{LAYSAN}/Laysan_Albatross_0002_1027.jpg,1,1,21,21"]
    assert lines(meta / "train" / "image_ids.txt") == [f"{ALBATROSS}/Black_Footed_Albatross_0074_59.jpg",
                                                       f"{LAYSAN}/Laysan_Albatross_0003_1033.jpg"]
    assert_split(meta / "test", CUB_TEST)
    code, out = run(["cub", "--source", src, "--val-from-train", 2, "--data-root", data,
                     "--metadata-root", tmp_path / "other"], capsys)
    assert code == 2 and "class 0 has only 2 train images" in out


def test_cub_from_wsolevaluation_metadata(tmp_path, capsys):
    """--metadata copies wsolevaluation's own metadata/CUB/ (no trailing newlines) and links its images."""
    src, cubv2 = make_cub(tmp_path), make_cubv2(tmp_path, with_metadata=False)
    wsol = tmp_path / "wsolevaluation" / "metadata" / "CUB"
    for split, expected in (("train", CUB_TRAIN), ("test", CUB_TEST)):
        for name, expected_lines in expected.items():
            write_text(wsol / split / name, "\n".join(expected_lines))
    write_wsol_split(wsol / "val", CUBV2_IMAGES)
    data = tmp_path / "data"
    code, out = run(["cub", "--source", src, "--val-source", cubv2, "--metadata", wsol,
                     "--data-root", data, "--metadata-root", data / "metadata"], capsys)
    assert code == 0, out
    for split in ("train", "val", "test"):
        for name in ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt"):
            assert (data / "metadata" / "CUB" / split / name).read_bytes() == (wsol / split / name).read_bytes()
    assert (data / "CUB" / CUBV2_IMAGES[1][0]).resolve() == (cubv2 / CUBV2_IMAGES[1][0]).resolve()
    assert (data / "CUB" / CUB_TEST["image_ids.txt"][0]).is_symlink()


def test_the_shell_wrapper_reads_relative_paths_from_where_the_user_stands(tmp_path):
    make_cub(tmp_path)
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", str(REPO / "scripts" / "prepare_cub.sh"), "--source", "CUB_200_2011"],
                          cwd=tmp_path, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    data = tmp_path / "data"                                    # the default --data-root: the cwd's data/
    assert lines(data / "metadata" / "CUB" / "test" / "localization.txt") == CUB_TEST["localization.txt"]
    assert (data / "CUB" / CUB_TEST["image_ids.txt"][0]).resolve() == tmp_path / "CUB_200_2011" / "images" / CUB_TEST["image_ids.txt"][0]
    usage = subprocess.run(["bash", str(REPO / "scripts" / "prepare_cub.sh")], env=env, capture_output=True, text=True)
    assert usage.returncode == 2 and "https://www.vision.caltech.edu/datasets/cub_200_2011/" in usage.stdout


@pytest.mark.parametrize("layout", ["the archive", "a folder holding it"])
def test_an_archive_not_extracted_gets_one_line_with_the_command(tmp_path, capsys, monkeypatch, layout):
    (tmp_path / "downloads").mkdir()
    (tmp_path / "downloads" / "CUB_200_2011.tgz").write_bytes(b"\x1f\x8b")
    monkeypatch.chdir(tmp_path)
    source = "downloads/CUB_200_2011.tgz" if layout == "the archive" else "downloads"
    code, out = run(["cub", "--source", source, "--val-from-train", 1], capsys)
    expected = {"the archive": "--source downloads/CUB_200_2011.tgz is an archive: extract it first "
                               "(tar xzf downloads/CUB_200_2011.tgz -C downloads)",
                "a folder holding it": "--source downloads holds only the archive downloads/CUB_200_2011.tgz: "
                                       "extract it first (tar xzf downloads/CUB_200_2011.tgz -C downloads)"}[layout]
    assert code == 2 and out == f"error: {expected}\n"
    assert not (tmp_path / "data").exists()


def test_a_folder_of_archives_and_an_archived_val_source_are_named(tmp_path, capsys):
    train = tmp_path / "ILSVRC2012_img_train"
    for wnid in ("n01440764", "n01443537"):
        write_text(train / f"{wnid}.tar", "")
    code, out = run(["ilsvrc", "--train", train], capsys)
    assert code == 2 and out == (f"error: --train {train} holds only archives (2, e.g. n01440764.tar): extract them "
                                 f"first (e.g. tar xf {train / 'n01440764.tar'} -C {train})\n")
    src = make_cub(tmp_path)
    write_text(tmp_path / "CUBV2.tar", "")
    code, out = run(["cub", "--source", src, "--val-source", tmp_path / "CUBV2.tar"], capsys)
    assert code == 2 and out == (f"error: --val-source {tmp_path / 'CUBV2.tar'} is an archive: extract it first "
                                 f"(tar xf {tmp_path / 'CUBV2.tar'} -C {tmp_path})\n")


def test_an_existing_different_target_is_reported_and_kept(tmp_path, capsys):
    src = make_cub(tmp_path)
    data = tmp_path / "data"
    target = write_text(data / "CUB" / CUB_TEST["image_ids.txt"][1], "not the image")
    code, out = run(["cub", "--source", src, "--data-root", data, "--metadata-root", data / "metadata"], capsys)
    assert code == 1
    assert f"{target}: exists and is not {src / 'images' / CUB_TEST['image_ids.txt'][1]}; left unchanged" in out
    assert target.read_text() == "not the image"
    assert "cannot read image" in out     # and check then finds that it is not an image


@pytest.mark.parametrize("name, line, text, message", [
    ("images.txt", 2, "2", r"images.txt:2: expected 'id path', got '2'"),
    ("images.txt", 1, f"1 {ALBATROSS}/missing.jpg", r"images.txt:1: image not found: .*missing.jpg"),
    ("bounding_boxes.txt", 3, "3 0.0 zero 48.0 36.0", r"bounding_boxes.txt:3: box y 'zero' is not a number"),
    ("bounding_boxes.txt", 1, "1 40.0 2.0 5.0 25.0",
     r"bounding_boxes.txt:1 \(.*0046_18.jpg\): box \(40,2,45,27\) lies entirely outside the 40x30 image"),
    ("bounding_boxes.txt", 4, "4 10.0 11.0 -6.0 6.0",
     r"bounding_boxes.txt:4 \(.*0074_59.jpg\): box \(10,11,4,17\) does not have x0 <= x1 and y0 <= y1"),
    ("image_class_labels.txt", 8, "8 1", r"image_class_labels.txt:8: id 8 is not in .*images.txt"),
    ("image_class_labels.txt", 5, "5 3", r"image_class_labels.txt:5: class '3' is not in .*classes.txt"),
    ("image_class_labels.txt", 6, "5 2", r"image_class_labels.txt:6: duplicate id 5 \(first on line 5\)"),
    ("train_test_split.txt", 2, "2 yes", r"train_test_split.txt:2: is_train 'yes' is not 0 or 1"),
    ("train_test_split.txt", 7, "", r"train_test_split.txt: no line for id 7 \(.*images.txt:7\)"),
])
def test_malformed_cub_sources_name_the_file_and_line(tmp_path, capsys, name, line, text, message):
    src = make_cub(tmp_path)
    rows = lines(src / name)
    rows[line - 1:line] = [text]
    (src / name).write_text("\n".join(rows) + "\n")
    code, out = run(["cub", "--source", src, "--data-root", tmp_path / "data",
                     "--metadata-root", tmp_path / "data" / "metadata"], capsys)
    assert code == 2
    assert re.search(message, out), out
    assert not (tmp_path / "data" / "metadata").exists()       # nothing is written from a broken source


# --------------------------------------------------------------------------------------------
# check: every problem at once
# --------------------------------------------------------------------------------------------
def test_check_reports_every_problem_with_file_and_line(tmp_path, capsys):
    src = make_cub(tmp_path)
    data = tmp_path / "data"
    roots = ["--data-root", data, "--metadata-root", data / "metadata"]
    assert run(["cub", "--source", src, *roots], capsys)[0] == 0
    test = data / "metadata" / "CUB" / "test"
    train = data / "metadata" / "CUB" / "train"
    test_ids = CUB_TEST["image_ids.txt"]
    write_text(test / "localization.txt", "\n".join([CUB_TEST["localization.txt"][0], f"{test_ids[1]},0,0,49,36",
                                                    f"{test_ids[2]},12,4,x,16"]))
    write_text(test / "class_labels.txt", "\n".join([f"{test_ids[0]},0", f"{test_ids[1]},zero", f"{test_ids[2]},1",
                                                    "nowhere.jpg,1"]))
    write_text(test / "image_sizes.txt", "\n".join([f"{test_ids[0]},41,30", f"{test_ids[1]},48,36"]))
    write_text(test / "image_ids.txt", "\n".join([*test_ids, CUB_TRAIN["image_ids.txt"][0]]))
    write_text(train / "image_ids.txt", "\n".join([*CUB_TRAIN["image_ids.txt"], CUB_TRAIN["image_ids.txt"][2]]))
    (data / "CUB" / CUB_TRAIN["image_ids.txt"][3]).unlink()
    (data / "CUB" / CUB_TRAIN["image_ids.txt"][1]).unlink()
    (data / "CUB" / CUB_TRAIN["image_ids.txt"][1]).symlink_to(tmp_path / "moved_away.jpg")

    code, out = run(["check", "--dataset", "CUB", *roots], capsys)
    assert code == 1
    expected = [
        f"{test / 'localization.txt'}:2: box (0,0,49,36) lies outside the 48x36 image",
        f"{test / 'localization.txt'}:3: box coordinate 'x' is not an integer",
        f"{test / 'class_labels.txt'}:2: label 'zero' is not an integer",
        f"{test / 'class_labels.txt'}:4: 'nowhere.jpg' is not listed in image_ids.txt",
        f"{test / 'class_labels.txt'}: no line for 2 of the 4 images: '{test_ids[1]}' (image_ids.txt:2), "
        f"'{CUB_TRAIN['image_ids.txt'][0]}' (image_ids.txt:4)",
        f"{test / 'image_sizes.txt'}: no line for 2 of the 4 images",
        f"{test / 'image_sizes.txt'}:1: says 41x30 but {data / 'CUB' / test_ids[0]} is 40x30",
        f"{test / 'localization.txt'}: no line for 1 of the 4 images: '{CUB_TRAIN['image_ids.txt'][0]}'",
        f"{train / 'image_ids.txt'}:5: duplicate image id '{CUB_TRAIN['image_ids.txt'][2]}' (first on line 3)",
        f"{train / 'image_ids.txt'}:4: file not found: {data / 'CUB' / CUB_TRAIN['image_ids.txt'][3]}",
        f"{train / 'image_ids.txt'}:2: broken link: {data / 'CUB' / CUB_TRAIN['image_ids.txt'][1]}",
        f"{test / 'image_ids.txt'}:4: '{CUB_TRAIN['image_ids.txt'][0]}' is also in train (image_ids.txt:1)",
    ]
    for message in expected:
        assert message in out, message
    assert f"{len(out.split(' problems:')[1].strip().splitlines())} problems:" in out

    code, out = run(["check", "--dataset", "CUB", "--split", "train", "--skip-size-check", *roots], capsys)
    assert code == 1 and "broken link" in out and str(test) not in out


def test_check_accepts_the_synthetic_benchmark(tiny_data, capsys):
    data_root, metadata_root = tiny_data
    code, out = run(["check", "--dataset", "SYNTHETIC", "--data-root", data_root, "--metadata-root", metadata_root],
                    capsys)
    assert code == 0, out
    assert re.search(r"train\s+12\s+\d+\s+12\s+3", out)


# --------------------------------------------------------------------------------------------
# ILSVRC 2012 (ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar, the val bounding-box XML files)
# and ImageNetV2
# --------------------------------------------------------------------------------------------
TENCH, GOLDFISH = "n01440764", "n01443537"


def voc_xml(stem: str, size: tuple[int, int], objects: list[tuple[str, tuple[int, int, int, int]]]) -> str:
    """An ILSVRC 2012 val annotation in the official layout (one element per line, tab-indented):
    <annotation> is on line 1, the first <object> on line 13, the second on line 25."""
    head = ("<annotation>\n"
            "\t<folder>val</folder>\n"
            f"\t<filename>{stem}</filename>\n"
            "\t<source>\n"
            "\t\t<database>ILSVRC_2012</database>\n"
            "\t</source>\n"
            "\t<size>\n"
            f"\t\t<width>{size[0]}</width>\n"
            f"\t\t<height>{size[1]}</height>\n"
            "\t\t<depth>3</depth>\n"
            "\t</size>\n"
            "\t<segmented>0</segmented>\n")
    body = "".join("\t<object>\n"
                   f"\t\t<name>{name}</name>\n"
                   "\t\t<pose>Unspecified</pose>\n"
                   "\t\t<truncated>0</truncated>\n"
                   "\t\t<difficult>0</difficult>\n"
                   "\t\t<bndbox>\n"
                   f"\t\t\t<xmin>{x0}</xmin>\n"
                   f"\t\t\t<ymin>{y0}</ymin>\n"
                   f"\t\t\t<xmax>{x1}</xmax>\n"
                   f"\t\t\t<ymax>{y1}</ymax>\n"
                   "\t\t</bndbox>\n"
                   "\t</object>\n" for name, (x0, y0, x1, y1) in objects)
    return head + body + "</annotation>\n"


ILSVRC_VAL = [   # stem, (W, H), objects
    ("ILSVRC2012_val_00000001", (50, 40), [(GOLDFISH, (11, 10, 44, 19))]),
    ("ILSVRC2012_val_00000002", (50, 40), [(TENCH, (4, 5, 49, 16)), (TENCH, (0, 6, 43, 39))]),
    ("ILSVRC2012_val_00000003", (40, 50), [(TENCH, (3, 1, 38, 37))]),
]
IMAGENETV2 = [("val2/0/a31041fd31109279f69ba5827fe508eee00abd75.jpeg", 0, (30, 20), "5,6,25,19"),
              ("val2/1/c6006866ff066ef85e82e2f62bd8766fbf8ce8ab.jpeg", 1, (20, 30), "3,6,14,29\n"
               "val2/1/c6006866ff066ef85e82e2f62bd8766fbf8ce8ab.jpeg,0,0,7,9")]


def make_ilsvrc(root: Path) -> dict[str, Path]:
    train = root / "ILSVRC2012_img_train"
    for name, (w, h) in [(f"{TENCH}/{TENCH}_10026.JPEG", (40, 30)), (f"{TENCH}/{TENCH}_10027.JPEG", (30, 40)),
                         (f"{GOLDFISH}/{GOLDFISH}_1000.JPEG", (20, 20))]:
        write_image(train / name, w, h)
    write_text(train / f"{TENCH}.tar", "left over by the extraction")
    val, xml = root / "ILSVRC2012_img_val", root / "ILSVRC2012_bbox_val" / "val"
    for stem, (w, h), objects in ILSVRC_VAL:
        write_image(val / f"{stem}.JPEG", w, h)
        write_text(xml / f"{stem}.xml", voc_xml(stem, (w, h), objects))
    v2, v2_meta = root / "imagenetv2-threshold0.7", root / "wsolevaluation" / "metadata" / "ILSVRC" / "val"
    for path, _, (w, h), _ in IMAGENETV2:
        write_image(v2 / path.removeprefix("val2/"), w, h)
    write_wsol_split(v2_meta, IMAGENETV2)
    return {"train": train, "val": val, "xml": xml, "v2": v2, "v2_meta": v2_meta}


def test_ilsvrc_metadata_line_by_line_with_every_box(tmp_path, capsys):
    src = make_ilsvrc(tmp_path)
    data = tmp_path / "data"
    code, out = run(["ilsvrc", "--train", src["train"], "--val", src["val"], "--val-annotations", src["xml"],
                     "--val-source", src["v2"], "--val-metadata", src["v2_meta"],
                     "--data-root", data, "--metadata-root", data / "metadata"], capsys)
    assert code == 0, out
    meta = data / "metadata" / "ILSVRC"
    assert_split(meta / "train", {
        "image_ids.txt": [f"train/{TENCH}/{TENCH}_10026.JPEG", f"train/{TENCH}/{TENCH}_10027.JPEG",
                          f"train/{GOLDFISH}/{GOLDFISH}_1000.JPEG"],
        "class_labels.txt": [f"train/{TENCH}/{TENCH}_10026.JPEG,0", f"train/{TENCH}/{TENCH}_10027.JPEG,0",
                             f"train/{GOLDFISH}/{GOLDFISH}_1000.JPEG,1"],
        "image_sizes.txt": [], "localization.txt": []})
    assert_split(meta / "test", {
        "image_ids.txt": ["val/ILSVRC2012_val_00000001.JPEG", "val/ILSVRC2012_val_00000002.JPEG",
                          "val/ILSVRC2012_val_00000003.JPEG"],
        "class_labels.txt": ["val/ILSVRC2012_val_00000001.JPEG,1", "val/ILSVRC2012_val_00000002.JPEG,0",
                             "val/ILSVRC2012_val_00000003.JPEG,0"],
        "image_sizes.txt": ["val/ILSVRC2012_val_00000001.JPEG,50,40", "val/ILSVRC2012_val_00000002.JPEG,50,40",
                            "val/ILSVRC2012_val_00000003.JPEG,40,50"],
        "localization.txt": ["val/ILSVRC2012_val_00000001.JPEG,11,10,44,19",      # the XML values, unchanged
                             "val/ILSVRC2012_val_00000002.JPEG,4,5,49,16",
                             "val/ILSVRC2012_val_00000002.JPEG,0,6,43,39",
                             "val/ILSVRC2012_val_00000003.JPEG,3,1,38,37"]})
    assert (meta / "val" / "localization.txt").read_bytes() == (src["v2_meta"] / "localization.txt").read_bytes()
    assert f"ignored 1 files at the top of {src['train']} (e.g. {TENCH}.tar)" in out
    assert re.search(r"test\s+3\s+4\s+0\s+2\s+50,000 images, 80,477 boxes", out)
    assert (data / "ILSVRC" / "train" / TENCH / f"{TENCH}_10027.JPEG").is_symlink()
    assert (data / "ILSVRC" / "val2" / "1" / "c6006866ff066ef85e82e2f62bd8766fbf8ce8ab.jpeg").is_symlink()

    test = build_dataset(data_config("ILSVRC", data), "test", train=False)
    assert test.meta.boxes["val/ILSVRC2012_val_00000002.JPEG"] == [(4, 5, 49, 16), (0, 6, 43, 39)]
    assert test[1]["boxes"].shape == (2, 4)
    assert build_dataset(data_config("ILSVRC", data), "val", train=False)[1]["boxes"].shape == (2, 4)

    synsets = write_text(tmp_path / "synsets.txt",     # LOC_synset_mapping.txt syntax, in another order
                         f"{GOLDFISH} goldfish, Carassius auratus\n{TENCH} tench, Tinca tinca\n")
    code, out = run(["ilsvrc", "--train", src["train"], "--synsets", synsets, "--train-sizes",
                     "--data-root", data, "--metadata-root", tmp_path / "by_synsets"], capsys)
    assert code == 0, out
    assert lines(tmp_path / "by_synsets" / "ILSVRC" / "train" / "class_labels.txt") == [
        f"train/{GOLDFISH}/{GOLDFISH}_1000.JPEG,0", f"train/{TENCH}/{TENCH}_10026.JPEG,1",
        f"train/{TENCH}/{TENCH}_10027.JPEG,1"]
    assert lines(tmp_path / "by_synsets" / "ILSVRC" / "train" / "image_sizes.txt")[1] == \
        f"train/{TENCH}/{TENCH}_10026.JPEG,40,30"
    assert "test not made" in out and "val not made" in out and "ImageNetV2" in out


@pytest.mark.parametrize("stem, edit, message", [
    ("ILSVRC2012_val_00000001", lambda t: re.sub(r"\t<size>.*</size>\n", "", t, flags=re.S),
     r"ILSVRC2012_val_00000001.xml:1: <annotation> has no <size> with <width> and <height>"),
    ("ILSVRC2012_val_00000002", lambda t: t.replace("<xmax>43</xmax>", "<xmax>4x3</xmax>"),
     r"ILSVRC2012_val_00000002.xml:33: <xmax> '4x3' is not an integer"),
    ("ILSVRC2012_val_00000002",
     lambda t: t.replace("<ymin>6</ymin>", "<ymin>40</ymin>").replace("<ymax>39", "<ymax>45"),
     r"ILSVRC2012_val_00000002.xml:25: box \(0,40,43,45\) lies entirely outside the 50x40 image"),
    ("ILSVRC2012_val_00000002", lambda t: t.replace(f"<name>{TENCH}</name>\n\t\t<pose>Unspecified</pose>\n\t\t"
                                                    f"<truncated>0</truncated>\n\t\t<difficult>0</difficult>\n\t\t"
                                                    f"<bndbox>\n\t\t\t<xmin>0</xmin>", f"<name>{GOLDFISH}</name>\n"
                                                    f"\t\t<bndbox>\n\t\t\t<xmin>0</xmin>"),
     rf"ILSVRC2012_val_00000002.xml:25: class {GOLDFISH} differs from {TENCH} \(line 13\)"),
    ("ILSVRC2012_val_00000003", lambda t: t.replace("<name>", "<name>x"),
     rf"ILSVRC2012_val_00000003.xml:13: 'x{TENCH}' is not one of the 2 classes"),
    ("ILSVRC2012_val_00000003", lambda t: t.replace("</size>", ""),
     r"ILSVRC2012_val_00000003.xml:\d+: not well-formed XML \(mismatched tag\)"),
    ("ILSVRC2012_val_00000003", lambda t: t.replace("\t\t\t<ymin>1</ymin>\n", ""),
     r"ILSVRC2012_val_00000003.xml:13: <object> has no <bndbox><ymin>"),
    ("ILSVRC2012_val_00000003", None,
     r"ILSVRC2012_val_00000003.JPEG: no annotation file .*ILSVRC2012_val_00000003.xml"),
])
def test_malformed_ilsvrc_annotations_name_the_file_and_line(tmp_path, capsys, stem, edit, message):
    src = make_ilsvrc(tmp_path)
    xml = src["xml"] / f"{stem}.xml"
    if edit is None:
        xml.unlink()
    else:
        xml.write_text(edit(xml.read_text()))
    code, out = run(["ilsvrc", "--train", src["train"], "--val", src["val"], "--val-annotations", src["xml"],
                     "--data-root", tmp_path / "data", "--metadata-root", tmp_path / "data" / "metadata"], capsys)
    assert code == 2
    assert re.search(message, out), out


def test_boxes_crossing_the_edge_are_clipped_and_counted(tmp_path, capsys):
    """wsolevaluation's convention: x0, y0 >= 0 and x1 <= W - 1, y1 <= H - 1; crossing boxes are clipped."""
    src = make_cub(tmp_path)
    rows = lines(src / "bounding_boxes.txt")
    rows[0] = "1 6.0 2.0 40.0 25.0"         # 40x30 image: x + w = 46 crosses the right edge
    rows[4] = "5 -2.0 1.0 20.0 40.0"        # 44x33 image: left of it and past the bottom
    (src / "bounding_boxes.txt").write_text("\n".join(rows) + "\n")
    data = tmp_path / "data"
    code, out = run(["cub", "--source", src, "--data-root", data, "--metadata-root", data / "metadata"], capsys)
    assert code == 0, out
    assert lines(data / "metadata" / "CUB" / "test" / "localization.txt")[:2] == [
        f"{ALBATROSS}/Black_Footed_Albatross_0046_18.jpg,6,2,39,27",
        f"{ALBATROSS}/Black_Footed_Albatross_0002_55.jpg,0,0,47,35"]           # x + w = W: W - 1
    assert lines(data / "metadata" / "CUB" / "train" / "localization.txt")[2] == \
        f"{LAYSAN}/Laysan_Albatross_0002_1027.jpg,0,1,18,32"
    note = [line for line in out.splitlines() if "clipped" in line]
    assert len(note) == 1 and note[0].startswith("note: clipped 3 boxes to the image"), out
    assert "bounding_boxes.txt:1 (001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg) (6,2,46,27) -> " \
           "(6,2,39,27)" in note[0] and "bounding_boxes.txt:5 " in note[0] and "no problems found" in out

    src_ilsvrc = make_ilsvrc(tmp_path / "ilsvrc")  # the same rule for ILSVRC's boxes
    xml = src_ilsvrc["xml"] / "ILSVRC2012_val_00000001.xml"
    xml.write_text(xml.read_text().replace("<xmax>44</xmax>", "<xmax>50</xmax>"))   # 50x40 image
    code, out = run(["ilsvrc", "--train", src_ilsvrc["train"], "--val", src_ilsvrc["val"], "--val-annotations",
                     src_ilsvrc["xml"], "--data-root", data, "--metadata-root", tmp_path / "meta_ilsvrc"], capsys)
    assert code == 0, out
    assert lines(tmp_path / "meta_ilsvrc" / "ILSVRC" / "test" / "localization.txt")[0] == \
        "val/ILSVRC2012_val_00000001.JPEG,11,10,49,19"
    assert re.search(r"note: clipped 1 boxes .*ILSVRC2012_val_00000001.xml:13 \(11,10,50,19\) -> \(11,10,49,19\)", out)


# --------------------------------------------------------------------------------------------
# OpenImages30k (wsolevaluation's OpenImages_images.zip + OpenImages_annotations.zip + metadata/OpenImages)
# --------------------------------------------------------------------------------------------
def make_openimages(root: Path) -> tuple[Path, Path]:
    src, meta = root / "OpenImages", root / "wsolevaluation" / "metadata" / "OpenImages"
    images = {"train": ["train/01226z/0a9b7df4d832baf7.jpg", "train/0138tl/0abee225b2418fe7.jpg"],
              "val": ["val/01226z/32fdab44f6e415f1.jpg", "val/0138tl/d6fc94e452045cd7.jpg"],
              "test": ["test/01226z/7af766bd43da900b.jpg", "test/0138tl/0493e6c7cc0d4658.jpg"]}
    for split, paths in images.items():
        for path in paths:
            write_image(src / path, 32, 24)
        write_text(meta / split / "image_ids.txt", "\n".join(paths))
        write_text(meta / split / "class_labels.txt", "\n".join(f"{p},{label}" for label, p in enumerate(paths)))
    write_text(meta / "test" / "image_sizes.txt", "")
    localization = {   # one line per instance mask; the ignore mask only on an image's first line
        "val": ["val/01226z/32fdab44f6e415f1.jpg,val/01226z/32fdab44f6e415f1_m01226z_7dab3053.png,"
                "val/01226z/32fdab44f6e415f1_ignore.png",
                "val/0138tl/d6fc94e452045cd7.jpg,val/0138tl/d6fc94e452045cd7_m0138tl_685f8420.png,"
                "val/0138tl/d6fc94e452045cd7_ignore.png",
                "val/0138tl/d6fc94e452045cd7.jpg,val/0138tl/d6fc94e452045cd7_m0138tl_5e9f8cb2.png,"],
        "test": ["test/01226z/7af766bd43da900b.jpg,test/01226z/7af766bd43da900b_m01226z_6554d965.png,"
                 "test/01226z/7af766bd43da900b_ignore.png",
                 "test/01226z/7af766bd43da900b.jpg,test/01226z/7af766bd43da900b_m01226z_8856c605.png,",
                 "test/0138tl/0493e6c7cc0d4658.jpg,test/0138tl/0493e6c7cc0d4658_m0138tl_0a1b2c3d.png,"
                 "test/0138tl/0493e6c7cc0d4658_ignore.png"]}
    for split, rows in localization.items():
        write_text(meta / split / "localization.txt", "\n".join(rows))
        for row in rows:
            _, mask, ignore = row.split(",")
            write_mask(src / mask, 32, 24, 4, 4, 12, 12)
            if ignore:
                write_mask(src / ignore, 32, 24, 0, 0, 20, 20)
    return src, meta


def test_openimages_masks_linked_and_loadable(tmp_path, capsys):
    src, meta = make_openimages(tmp_path)
    data = tmp_path / "data"
    roots = ["--data-root", data, "--metadata-root", data / "metadata"]
    code, out = run(["openimages", "--source", src, "--metadata", meta, *roots], capsys)
    assert code == 0, out
    assert re.search(r"val\s+2\s+0\s+3\s+2\s+2,500 images", out)
    out_meta = data / "metadata" / "OpenImages"
    assert (out_meta / "test" / "localization.txt").read_bytes() == (meta / "test" / "localization.txt").read_bytes()
    assert lines(out_meta / "val" / "image_sizes.txt") == [] and lines(out_meta / "train" / "localization.txt") == []
    assert (data / "OpenImages" / "val/0138tl/d6fc94e452045cd7_m0138tl_5e9f8cb2.png").is_symlink()
    sample = build_dataset(data_config("OpenImages", data), "test", train=False)[0]
    assert set(sample["mask"].unique().tolist()) == {0, 1, 255}

    (src / "test/0138tl/0493e6c7cc0d4658_ignore.png").unlink()
    (data / "OpenImages" / "test/0138tl/0493e6c7cc0d4658_ignore.png").unlink()
    code, out = run(["check", "--dataset", "OpenImages", *roots], capsys)
    assert code == 1
    assert (f"{out_meta / 'test' / 'localization.txt'}:3: file not found: "
            f"{data / 'OpenImages' / 'test/0138tl/0493e6c7cc0d4658_ignore.png'}") in out
