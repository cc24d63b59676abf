"""Bad input fails loudly, early and precisely: each error names its culprit (file and line, key or
value), and `check_data` reports every problem of a data set in one call."""
from __future__ import annotations

import io
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from acol import evaluate
from acol.cams import build_localizer
from acol.config import ConfigError, load_config
from acol.datasets import prepare
from acol.datasets.check import check_data
from acol.datasets.dataset import WSOLDataset, load_mask, load_rgb
from acol.datasets.images import ImageError
from acol.datasets.metadata import MetadataError, check_labels, read_metadata
from acol.datasets.transforms import WSOLTransform
from acol.methods import METHODS
from acol.models.backbones import BACKBONES
from tests.conftest import TINY_SPEC
from tests.test_data import GOOD, write_split


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG")
    return buffer.getvalue()


def noise(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)


def truncate(path: Path) -> None:
    """Keep the first half of the file's bytes."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


# --------------------------------------------------------------------------------------------
# Images and masks
# --------------------------------------------------------------------------------------------
def test_missing_image_is_named(tmp_path):
    with pytest.raises(ImageError, match=rf"image not found: {re.escape(str(tmp_path / 'gone.jpg'))}"):
        load_rgb(tmp_path / "gone.jpg")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image_is_an_error_naming_it(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    Image.fromarray(noise(64, 64)).save(path)
    truncate(path)
    with pytest.raises(ImageError, match=rf"cannot read image {re.escape(str(path))}: image file is truncated"):
        load_rgb(path)


def test_truncated_images_are_not_loaded_as_grey_even_when_pil_is_told_to(tmp_path, monkeypatch):
    path = tmp_path / "cut.jpg"
    path.write_bytes(jpeg_bytes(noise(64, 64))[:-400])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(ImageError, match=rf"LOAD_TRUNCATED_IMAGES is set.*\(reading {re.escape(str(path))}\)"):
        load_rgb(path)


def test_a_file_that_is_no_image_is_named(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("not an image")
    with pytest.raises(ImageError, match=rf"cannot read image {re.escape(str(path))}: cannot identify image file"):
        load_rgb(path)


def test_sixteen_bit_images_are_rejected_not_clipped(tmp_path):
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 40000, np.uint16)).save(path)
    with pytest.raises(ImageError, match=rf"image {re.escape(str(path))} has I;16 pixels"):
        load_rgb(path)


def palette_image() -> Image.Image:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 64, 255] + [0] * 762)
    image.putdata([0, 1])
    return image


@pytest.mark.parametrize("name, image, expected, tolerance", [
    ("gray.png", Image.new("L", (2, 1), 50), [[50, 50, 50], [50, 50, 50]], 0),
    ("gray_alpha.png", Image.new("LA", (2, 1), (90, 0)), [[90, 90, 90], [90, 90, 90]], 0),
    ("palette.png", palette_image(), [[255, 0, 0], [0, 64, 255]], 0),
    ("rgba.png", Image.new("RGBA", (2, 1), (10, 20, 30, 0)), [[10, 20, 30], [10, 20, 30]], 0),   # alpha dropped
    ("cmyk.jpg", Image.new("CMYK", (2, 1), (0, 255, 255, 0)), [[255, 0, 0], [255, 0, 0]], 2),     # pure red
    ("cmyk_grey.jpg", Image.new("CMYK", (2, 1), (0, 0, 0, 102)), [[153, 153, 153], [153, 153, 153]], 2),
])
def test_other_image_modes_are_converted_to_rgb(tmp_path, name, image, expected, tolerance):
    image.save(tmp_path / name)
    with Image.open(tmp_path / name) as stored:
        assert stored.mode == image.mode                   # the file really is in that mode
    rgb = load_rgb(tmp_path / name)
    assert rgb.shape == (3, 1, 2)
    assert np.abs(rgb.permute(1, 2, 0).numpy().astype(int) - np.array([expected])).max() <= tolerance


def test_bad_masks_are_named(tmp_path):
    with pytest.raises(ImageError, match=rf"mask not found: {re.escape(str(tmp_path / 'm.png'))}"):
        load_mask(tmp_path / "m.png")
    Image.fromarray(noise(32, 32)[..., 0]).save(tmp_path / "m.png")
    with pytest.raises(ImageError, match=rf"mask {re.escape(str(tmp_path / 'm.png'))} is 32x32 but its image is 40x30"):
        load_mask(tmp_path / "m.png", (40, 30))
    truncate(tmp_path / "m.png")
    with pytest.raises(ImageError, match=rf"cannot read mask {re.escape(str(tmp_path / 'm.png'))}: image file is truncated"):
        load_mask(tmp_path / "m.png")


def toy_dataset(tmp_path: Path, files: dict[str, str] = GOOD, masks: bool = False) -> WSOLDataset:
    """The 2-image TOY split of test_data (40x30 and 20x20 images) with its images written."""
    meta = read_metadata(write_split(tmp_path, files), "TOY", "train")
    (tmp_path / "TOY" / "a").mkdir(parents=True)
    Image.new("RGB", (40, 30)).save(tmp_path / "TOY" / "a" / "1.png")
    Image.new("RGB", (20, 20)).save(tmp_path / "TOY" / "a" / "2.png")
    return WSOLDataset(tmp_path, meta, WSOLTransform(False, 16, 16, False), load_masks=masks)


def test_the_dataset_names_a_truncated_image(tmp_path):
    dataset = toy_dataset(tmp_path)
    Image.fromarray(noise(20, 20)).save(tmp_path / "TOY" / "a" / "2.png")
    truncate(tmp_path / "TOY" / "a" / "2.png")
    dataset[0]
    with pytest.raises(ImageError, match=r"cannot read image .*TOY/a/2.png: image file is truncated"):
        dataset[1]


def test_the_dataset_names_an_image_whose_size_differs_from_image_sizes(tmp_path):
    dataset = toy_dataset(tmp_path)
    Image.new("RGB", (20, 21)).save(tmp_path / "TOY" / "a" / "2.png")
    with pytest.raises(ImageError, match=r"TOY/a/2.png: image is 20x21 but image_sizes.txt says 20x20"):
        dataset[1]


def test_the_dataset_names_a_mask_of_the_wrong_size(tmp_path):
    files = dict(GOOD, **{"mask_localization.txt": "a/1.png,a/1_m.png,\na/2.png,a/2_m.png,\n"})
    dataset = toy_dataset(tmp_path, files, masks=True)
    Image.new("L", (40, 30)).save(tmp_path / "TOY" / "a" / "1_m.png")
    Image.new("L", (30, 40)).save(tmp_path / "TOY" / "a" / "2_m.png")
    assert dataset[0]["mask"].shape == (16, 16)
    with pytest.raises(ImageError, match=r"mask .*TOY/a/2_m.png is 30x40 but its image is 20x20"):
        dataset[1]


# --------------------------------------------------------------------------------------------
# Metadata
# --------------------------------------------------------------------------------------------


def test_a_box_with_a_negative_corner_is_an_error_without_image_sizes(tmp_path):
    files = dict(GOOD, **{"image_sizes.txt": "", "localization.txt": "a/1.png,-1,2,10,12\na/2.png,0,0,5,5\n"})
    with pytest.raises(MetadataError, match=r"localization.txt:1: box \(-1,2,10,12\) does not have 0 <= x0"):
        read_metadata(write_split(tmp_path, files), "TOY", "train")


def splits_with_labels(tmp_path: Path, train: str, val: str):
    """The train and val Metadata of TOY with these class_labels.txt texts."""
    write_split(tmp_path, dict(GOOD, **{"class_labels.txt": train}), "train")
    root = write_split(tmp_path, dict(GOOD, **{"class_labels.txt": val}), "val")
    return read_metadata(root, "TOY", "train"), read_metadata(root, "TOY", "val")


def test_check_labels_names_a_label_out_of_range(tmp_path):
    train, val = splits_with_labels(tmp_path, "a/1.png,0\na/2.png,2\n", "a/1.png,0\na/2.png,0\n")
    check_labels(train, [val], 3)
    with pytest.raises(MetadataError, match=r"train/class_labels.txt:2: label 2 is out of range for 2 classes \(0..1\)"):
        check_labels(train, [val], 2)


def test_check_labels_names_a_val_label_that_train_does_not_have(tmp_path):
    train, val = splits_with_labels(tmp_path, "a/1.png,0\na/2.png,2\n", "a/1.png,2\na/2.png,1\n")
    with pytest.raises(MetadataError, match=r"val/class_labels.txt:2: label 1, which no train image has "
                                            r"\(.*train/class_labels.txt\)"):
        check_labels(train, [val], 3)


# --------------------------------------------------------------------------------------------
# Score maps
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("array, shape, message", [
    (np.zeros(16, np.float32), None, r"must be a 2-D float array; got float32 \(16,\)"),
    (np.zeros((1, 4, 4), np.float32), None, r"must be a 2-D float array; got float32 \(1, 4, 4\)"),
    (np.zeros((4, 4), bool), None, r"must be a 2-D float array; got bool"),
    (np.zeros((4, 4), np.float32), (4, 5), r"the score map's shape is \(4, 4\), expected \(4, 5\)"),
    (np.full((4, 4), -0.1, np.float32), None, r"must lie in \[0, 1\] \(min -0.1, max -0.1\)"),
    (np.full((4, 4), 1.01, np.float64), None, r"must lie in \[0, 1\] \(min 1.01, max 1.01\)"),
    (np.full((4, 4), np.nan, np.float16), None, r"must lie in \[0, 1\]; it has NaN"),
])
def test_bad_score_maps_are_named(tmp_path, array, shape, message):
    path = tmp_path / "map.npy"
    np.save(path, array)
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))}: .*{message}"):
        evaluate.load_scoremap(path, shape)


def test_unreadable_score_maps_are_named(tmp_path):
    (tmp_path / "text.npy").write_text("0.5")
    with pytest.raises(ValueError, match=rf"{re.escape(str(tmp_path / 'text.npy'))}: not a readable .npy"):
        evaluate.load_scoremap(tmp_path / "text.npy")
    np.savez(tmp_path / "maps.npz", a=np.zeros((4, 4)))
    with pytest.raises(ValueError, match=r"maps.npz: a score map must be one .npy array"):
        evaluate.load_scoremap(tmp_path / "maps.npz")


def test_score_maps_of_a_split_must_share_one_shape(tiny_data, tmp_path):
    data_root, metadata_root = tiny_data
    ids = read_metadata(metadata_root, "SYNTHETIC", "test").image_ids
    for i, image_id in enumerate(ids):
        path = tmp_path / "maps" / f"{image_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.zeros((32, 32) if i != 3 else (16, 16), np.float32))
    odd = tmp_path / "maps" / f"{ids[3]}.npy"
    with pytest.raises(SystemExit, match=rf"^error: {re.escape(str(odd))}: the score map's shape is \(16, 16\), "
                                         r"expected \(32, 32\) \(the shape of 5 of the 6 maps, e.g. .*\)$"):
        evaluate.main(["--scoremaps", str(tmp_path / "maps"), "--dataset", "SYNTHETIC", "--metadata-root",
                       str(metadata_root), "--data-root", str(data_root), "--out", str(tmp_path / "out")])


# --------------------------------------------------------------------------------------------
# Config and registered names
# --------------------------------------------------------------------------------------------
def test_config_errors_name_the_key_and_the_file(tmp_path):
    path = tmp_path / "exp.toml"
    path.write_text("[train]\nepochs = 3\nepoch = 4\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: unknown key 'train.epoch' \(valid keys here: "
                                          r"train.epochs,"):
        load_config(path)
    path.write_text("[optim]\nlr = '0.1'\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}: optim.lr must be float, got '0.1'"):
        load_config(path)


@pytest.mark.parametrize("override, message", [
    ("model.name=resnet", r"model.name must be one of acol, adl, bas, cam, cutmix, dawsol, fsl, has, single, spg; got 'resnet'"),
    ("model.backbone=vgg19", r"model.backbone must be one of efficientnet_lite0, inception_v3, resnet50, smallcnn, vgg16; got 'vgg19'"),
])
def test_unknown_model_and_backbone_names_in_a_config(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


@pytest.mark.parametrize("lookup, message", [
    (lambda: METHODS.get("resnet"), "unknown method 'resnet'; valid names: acol, adl, bas, cam, cutmix, dawsol, fsl, has, single, spg"),
    (lambda: BACKBONES.get("vgg19"), "unknown backbone 'vgg19'; valid names: efficientnet_lite0, inception_v3, resnet50, smallcnn, "
                                           "vgg16"),
    (lambda: build_localizer("gradcamx"), "unknown localizer 'gradcamx'; valid names: ablationcam, cam, eigencam, gradcam, "),
])
def test_unknown_registered_names_list_the_valid_ones(lookup, message):
    with pytest.raises(KeyError) as error:
        lookup()
    assert str(error.value).startswith(message)            # printed without a KeyError's quotes


# --------------------------------------------------------------------------------------------
# check_data: every problem of a data set in one call
# --------------------------------------------------------------------------------------------
def synthetic_config(data_root: Path, *overrides: str):
    spec = [f"data.synthetic.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in TINY_SPEC.items()]
    return load_config(overrides=[f"data.root={data_root}", f"data.metadata_root={data_root / 'metadata'}", *spec,
                                  *overrides])


@pytest.fixture
def data_copy(tiny_data, tmp_path) -> Path:
    """A copy of the tiny synthetic benchmark (images, masks and metadata), free to corrupt."""
    data_root, metadata_root = tiny_data
    assert metadata_root == data_root / "metadata"
    shutil.copytree(data_root, tmp_path / "data")
    return tmp_path / "data"


def edit_lines(path: Path, edit) -> None:
    lines = path.read_text().splitlines()
    edit(lines)
    path.write_text("\n".join(lines) + "\n")


def test_check_data_accepts_the_synthetic_benchmark(data_copy, capsys):
    assert check_data(synthetic_config(data_copy, "model.num_classes=3")) == []
    out = capsys.readouterr().out
    assert re.search(r"train\s+12\s+15\s+12\s+3\n", out) and "no problems found" in out
    assert "note:" not in out                       # the copy is the config's current synthetic set


def test_check_data_reports_every_injected_problem_at_once(data_copy, capsys):
    images, meta = data_copy / "SYNTHETIC", data_copy / "metadata" / "SYNTHETIC"
    truncate(images / "train/000/00001.png")                                    # image_ids.txt:2
    (images / "train/001/00000.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # image_ids.txt:5
    (images / "train/002/00003.png").unlink()                                   # image_ids.txt:12
    Image.new("RGB", (30, 32)).save(images / "val/000/00001.png")               # image_sizes.txt:2 says 32x32
    Image.new("L", (16, 16)).save(images / "val/001/00001_mask.png")            # mask_localization.txt:4
    truncate(images / "test/000/00000_mask.png")                                # mask_localization.txt:1
    edit_lines(meta / "train/class_labels.txt", lambda lines: lines.pop(6))     # no label for train/001/00002.png
    edit_lines(meta / "val/image_ids.txt", lambda lines: lines.append(lines[2]))          # line 7 repeats line 3
    edit_lines(meta / "test/localization.txt", lambda lines: lines.__setitem__(0, "test/000/00000.png,10,7,26,33"))
    edit_lines(meta / "test/class_labels.txt", lambda lines: lines.__setitem__(4, "test/002/00000.png,7"))
    edit_lines(meta / "test/image_sizes.txt", lambda lines: lines.append("test/009/00000.png,32,32"))

    problems = check_data(synthetic_config(data_copy, "model.num_classes=3"))
    train, val, test = (meta / split for split in ("train", "val", "test"))
    expected = [
        rf"{train}/image_ids.txt:2: cannot read image {images}/train/000/00001.png: image file is truncated",
        rf"{train}/image_ids.txt:5: cannot read image {images}/train/001/00000.png: ",
        rf"{train}/image_ids.txt:12: file not found: {images}/train/002/00003.png",
        rf"{train}/class_labels.txt: no line for 1 of the 12 images: 'train/001/00002.png' \(image_ids.txt:7\)",
        rf"{val}/image_ids.txt:7: duplicate image id 'val/001/00000.png' \(first on line 3\)",
        rf"{val}/image_sizes.txt:2: says 32x32 but {images}/val/000/00001.png is 30x32",
        rf"{val}/mask_localization.txt:4: mask {images}/val/001/00001_mask.png is 16x16 but its image is 32x32",
        rf"{test}/mask_localization.txt:1: cannot read mask {images}/test/000/00000_mask.png: image file is truncated",
        rf"{test}/localization.txt:1: box \(10,7,26,33\) lies outside the 32x32 image",
        rf"{test}/class_labels.txt:5: label 7 is out of range for 3 classes \(0..2\) \(model.num_classes\)",
        rf"{test}/image_sizes.txt:7: 'test/009/00000.png' is not listed in image_ids.txt",
        rf"{meta}: labels must be 0..C-1 without gaps; the largest is 7, but no split has label 3, 4, 5, 6",
        rf"{test}/class_labels.txt:5: label 7, which no train image has",
        rf"{train}/class_labels.txt: no image of class 7, which other splits have",
    ]
    for pattern in expected:
        assert sum(bool(re.fullmatch(pattern + ".*", p)) for p in problems) == 1, (pattern, problems)
    out = capsys.readouterr().out
    assert f"{len(problems)} problems:" in out and re.search(r"val\s+6\s+9\s+6\s+3\n", out)
    assert "training generates it again" in out     # the changed copy is no longer the config's synthetic set


def test_check_data_reports_a_missing_split(data_copy, capsys):
    shutil.rmtree(data_copy / "metadata" / "SYNTHETIC" / "val")
    problems = check_data(synthetic_config(data_copy), summary=None)
    assert problems == [f"val is missing: no folder {data_copy / 'metadata' / 'SYNTHETIC' / 'val'}"]
    assert capsys.readouterr().out == ""


def test_prepare_check_decode_finds_a_truncated_image(data_copy, capsys):
    truncate(data_copy / "SYNTHETIC" / "test" / "001" / "00001.png")
    roots = ["--dataset", "SYNTHETIC", "--data-root", str(data_copy), "--metadata-root", str(data_copy / "metadata")]
    assert prepare.main(["check", *roots]) == 0             # the header alone looks fine
    assert prepare.main(["check", "--decode", *roots]) == 1
    assert "test/image_ids.txt:4: cannot read image" in capsys.readouterr().out
