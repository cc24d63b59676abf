"""The synthetic WSOL benchmark: determinism, the on-disk format, caching, validation, and the phenomenon."""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from acol.datasets import synthetic as syn
from acol.datasets.synthetic import SyntheticSpec, ensure_synthetic, generate

SMALL = dict(num_classes=4, image_size=40, train_per_class=3, val_per_class=2, test_per_class=3)


def small_spec(**kw) -> SyntheticSpec:
    return SyntheticSpec(**{**SMALL, **kw})


def roots(tmp_path: Path, name: str = "a") -> tuple[Path, Path]:
    return tmp_path / name / "data", tmp_path / name / "data" / "metadata"


def read_png(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert img is not None, path
    return img


def all_files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def parse_split(meta_dir: Path, split: str) -> dict:
    d = meta_dir / "SYNTHETIC" / split
    for name in syn.METADATA_FILES:
        text = (d / name).read_text()
        assert text.endswith("\n"), name
    lines = {name: (d / name).read_text().splitlines() for name in syn.METADATA_FILES}
    ids = lines["image_ids.txt"]
    labels = dict(line.split(",") for line in lines["class_labels.txt"])
    sizes = {p: (int(w), int(h)) for p, w, h in (line.split(",") for line in lines["image_sizes.txt"])}
    boxes: dict[str, list] = {}
    for line in lines["localization.txt"]:
        p, *xyxy = line.split(",")
        boxes.setdefault(p, []).append(tuple(int(v) for v in xyxy))
    masks = {}
    for line in lines["mask_localization.txt"]:
        p, mask, ignore = line.split(",")
        assert ignore == "" and p not in masks
        masks[p] = mask
    parts: dict[str, list] = {}
    for line in lines["part_localization.txt"]:
        p, *xyxy = line.split(",")
        parts.setdefault(p, []).append(tuple(int(v) for v in xyxy))
    return dict(ids=ids, labels={k: int(v) for k, v in labels.items()}, sizes=sizes, boxes=boxes, masks=masks,
                parts=parts, lines=lines)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("field,value", [
    ("num_classes", 1), ("num_classes", syn.MAX_CLASSES + 1), ("num_classes", 2.5),
    ("image_size", 31), ("image_size", 0),
    ("train_per_class", 0), ("val_per_class", -1), ("test_per_class", 0),
    ("multi_object_fraction", -0.1), ("multi_object_fraction", 1.5), ("multi_object_fraction", "x"),
    ("seed", -1), ("seed", True),
])
def test_validation_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SyntheticSpec(**{field: value})


def test_targets_must_not_nest(tmp_path):
    with pytest.raises(ValueError, match="nested"):
        generate(small_spec(), tmp_path, tmp_path / "SYNTHETIC" / "meta")


# ---------------------------------------------------------------------------------------------
# Class definitions
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 3, 8, 9, 56])
def test_class_definitions(k):
    defs = syn.class_definitions(k)
    assert [d.label for d in defs] == list(range(k))
    parts = {(d.part_shape, d.part_colour) for d in defs}
    assert len(parts) == k, "each class has a unique part symbol"
    groups: dict[int, list[int]] = {}
    for d in defs:
        groups.setdefault(d.body_type, []).append(d.label)
    assert all(len(m) >= 2 for m in groups.values()), "every body type is shared by >= 2 classes"
    bodies = {(b.texture, b.cycles, b.angle, b.hsv_a) for b in map(syn.body_type, groups)}
    assert len(bodies) == len(groups), "body types differ"
    text = syn.describe(SyntheticSpec(num_classes=k))
    assert all(f"class {c:3d}:" in text for c in range(k))


# ---------------------------------------------------------------------------------------------
# Determinism
# ---------------------------------------------------------------------------------------------
def test_generation_is_deterministic(tmp_path):
    spec = small_spec(multi_object_fraction=0.5)
    a, b = roots(tmp_path, "a"), roots(tmp_path, "b")
    generate(spec, *a, workers=1)
    generate(spec, *b, workers=2)       # a different process layout must not change a byte
    fa, fb = all_files(a[0] / "SYNTHETIC"), all_files(b[0] / "SYNTHETIC")
    ma, mb = all_files(a[1] / "SYNTHETIC"), all_files(b[1] / "SYNTHETIC")
    assert fa.keys() == fb.keys() and len(fa) == 2 * 4 * 8 + 1
    assert fa == fb
    assert ma == mb and len(ma) == 3 * len(syn.METADATA_FILES)
    # order independence: rendering one image alone gives the written pixels
    for split, c, i in [("test", 3, 2), ("train", 0, 1), ("val", 2, 0)]:
        r = syn.render_image(spec, split, c, i)
        png = read_png(a[0] / "SYNTHETIC" / syn.image_path(split, c, i))
        np.testing.assert_array_equal(png[..., ::-1], r.image)
    # another seed gives other images
    c = small_spec(multi_object_fraction=0.5, seed=1)
    assert not np.array_equal(syn.render_image(c, "test", 3, 2).image, syn.render_image(spec, "test", 3, 2).image)


# ---------------------------------------------------------------------------------------------
# On-disk format
# ---------------------------------------------------------------------------------------------
def test_metadata_round_trip(tmp_path):
    spec = small_spec(image_size=48, train_per_class=4, multi_object_fraction=0.5)
    data_root, meta_root = roots(tmp_path)
    assert ensure_synthetic(spec, data_root, meta_root)
    base = data_root / "SYNTHETIC"
    for split in syn.SPLITS:
        m = parse_split(meta_root, split)
        n = spec.per_class(split)
        assert len(m["ids"]) == n * spec.num_classes == len(set(m["ids"]))
        assert m["ids"] == sorted(m["ids"])
        for name in ("localization.txt", "part_localization.txt"):
            rows = [(r[0], *map(int, r[1:])) for r in (line.split(",") for line in m["lines"][name])]
            assert rows == sorted(rows), name
        assert set(m["labels"]) == set(m["ids"]) == set(m["sizes"]) == set(m["boxes"]) == set(m["masks"])
        for c in range(spec.num_classes):
            assert sum(v == c for v in m["labels"].values()) == n
        n_multi = {c: 0 for c in range(spec.num_classes)}
        for path in m["ids"]:
            assert path.startswith(f"{split}/{m['labels'][path]:03d}/")
            img = read_png(base / path)
            mask = read_png(base / m["masks"][path])
            assert img.shape == (48, 48, 3) and img.dtype == np.uint8
            assert mask.shape == (48, 48) and set(np.unique(mask)) <= {0, 255}
            assert m["sizes"][path] == (img.shape[1], img.shape[0])
            boxes = m["boxes"][path]
            assert len(boxes) == len(m["parts"][path]) in (1, 2)
            fg = mask > 0
            for x0, y0, x1, y1 in boxes:
                assert 0 <= x0 <= x1 < 48 and 0 <= y0 <= y1 < 48
                inside = fg[y0:y1 + 1, x0:x1 + 1]   # the box is tight around that object's pixels
                assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            if len(boxes) == 1:
                ys, xs = np.nonzero(fg)
                assert boxes[0] == (xs.min(), ys.min(), xs.max(), ys.max())
            else:
                n_multi[m["labels"][path]] += 1
                (a0, b0, a1, b1), (c0, d0, c1, d1) = boxes
                assert a1 < c0 or c1 < a0 or b1 < d0 or d1 < b0, "the two boxes are disjoint"
                covered = np.zeros_like(fg)
                for x0, y0, x1, y1 in boxes:
                    covered[y0:y1 + 1, x0:x1 + 1] = True
                assert not (fg & ~covered).any()
            for (px0, py0, px1, py1), (x0, y0, x1, y1) in zip(sorted(m["parts"][path]), sorted(boxes)):
                assert x0 <= px0 <= px1 <= x1 and y0 <= py0 <= py1 <= y1
        expected = math.floor(spec.multi_object_fraction * n + 0.5)
        assert all(v == expected for v in n_multi.values()), n_multi
    record = json.loads((base / "spec.json").read_text())
    assert record["generator_version"] == syn.GENERATOR_VERSION and record["spec"] == spec.to_dict()


def test_multi_object_fraction_default_scale():
    spec = SyntheticSpec()
    for split in syn.SPLITS:
        n = spec.per_class(split)
        got = sum(len(syn.multi_object_indices(spec, split, c)) for c in range(spec.num_classes))
        assert got == math.floor(0.1 * n + 0.5) * spec.num_classes   # rounded half up
    assert not any(syn.multi_object_indices(small_spec(multi_object_fraction=0.0), "train", c) for c in range(4))
    assert all(syn.multi_object_indices(small_spec(multi_object_fraction=1.0), "train", c) == {0, 1, 2}
               for c in range(4))


# ---------------------------------------------------------------------------------------------
# Cache and atomicity
# ---------------------------------------------------------------------------------------------
def _mtimes(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_cache_behaviour(tmp_path, monkeypatch):
    spec = small_spec()
    data_root, meta_root = roots(tmp_path)
    assert ensure_synthetic(spec, data_root, meta_root) is True
    before = _mtimes(data_root)
    assert ensure_synthetic(spec, data_root, meta_root) is False
    assert _mtimes(data_root) == before, "an up-to-date data set is not rewritten"

    # a changed spec regenerates and replaces the old files (fewer images: the stale ones are gone)
    smaller = small_spec(train_per_class=2)
    assert ensure_synthetic(smaller, data_root, meta_root) is True
    assert not (data_root / "SYNTHETIC" / syn.image_path("train", 0, 2)).exists()
    assert len(parse_split(meta_root, "train")["ids"]) == 2 * 4
    assert ensure_synthetic(smaller, data_root, meta_root) is False

    # a new generator version regenerates
    monkeypatch.setattr(syn, "GENERATOR_VERSION", syn.GENERATOR_VERSION + 1)
    assert ensure_synthetic(smaller, data_root, meta_root) is True
    assert json.loads((data_root / "SYNTHETIC" / "spec.json").read_text())["generator_version"] == \
        syn.GENERATOR_VERSION
    # damaged metadata or a damaged spec.json regenerates
    (meta_root / "SYNTHETIC" / "val" / "localization.txt").write_text("oops\n")
    assert ensure_synthetic(smaller, data_root, meta_root) is True
    (data_root / "SYNTHETIC" / "spec.json").write_text("{not json")
    assert ensure_synthetic(smaller, data_root, meta_root) is True
    assert ensure_synthetic(smaller, data_root, meta_root) is False
    # no temporary or old folders are left behind
    leftovers = [p.name for parent in (data_root, meta_root) for p in parent.iterdir() if ".tmp-" in p.name
                 or ".old-" in p.name]
    assert leftovers == []


def test_interrupted_generation_leaves_no_complete_looking_set(tmp_path, monkeypatch):
    spec = small_spec()
    data_root, meta_root = roots(tmp_path)
    real = syn._render_unit

    def crash_midway(spec_, split, label, data_dir):
        if split == "val":
            raise KeyboardInterrupt("simulated interruption")
        return real(spec_, split, label, data_dir)

    monkeypatch.setattr(syn, "_render_unit", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        ensure_synthetic(spec, data_root, meta_root, workers=1)
    assert not (data_root / "SYNTHETIC").exists() and not (meta_root / "SYNTHETIC").exists()
    assert not syn.is_current(spec, data_root, meta_root)
    assert [p for p in data_root.iterdir() if p.is_dir() and p.name != "metadata"] == []
    monkeypatch.setattr(syn, "_render_unit", real)
    assert ensure_synthetic(spec, data_root, meta_root) is True

    # an interrupted regeneration keeps the previous complete data set valid
    monkeypatch.setattr(syn, "_render_unit", crash_midway)
    with pytest.raises(KeyboardInterrupt):
        generate(small_spec(seed=5), data_root, meta_root, workers=1)
    assert syn.is_current(spec, data_root, meta_root)
    monkeypatch.setattr(syn, "_render_unit", real)
    assert ensure_synthetic(spec, data_root, meta_root) is False


def test_worker_failure_is_reported(tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("")
    spec = small_spec()
    units = [(spec, "test", 0, str(blocker))]
    with pytest.raises(RuntimeError, match="worker failed"):
        syn._run_workers(spec, units * 2, str(blocker), 2)


def test_stale_leftovers_of_dead_processes_are_removed(tmp_path):
    import socket
    import subprocess
    import sys
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    data_root, meta_root = roots(tmp_path)
    data_root.mkdir(parents=True)
    stale = data_root / f".SYNTHETIC.tmp-{socket.gethostname()}-{dead.pid}-abcd"
    (stale / "train").mkdir(parents=True)
    alive = data_root / f".SYNTHETIC.tmp-{socket.gethostname()}-{os.getpid()}-abcd"
    alive.mkdir()
    assert ensure_synthetic(small_spec(), data_root, meta_root)
    assert not stale.exists() and alive.exists()


def test_same_root_for_images_and_metadata(tmp_path):
    spec = small_spec()
    assert ensure_synthetic(spec, tmp_path, tmp_path)
    assert (tmp_path / "SYNTHETIC" / "test" / "image_ids.txt").is_file()
    assert (tmp_path / "SYNTHETIC" / syn.image_path("test", 3, 2)).is_file()
    assert ensure_synthetic(spec, tmp_path, tmp_path) is False


def test_cli(tmp_path, capsys):
    args = ["--data-root", str(tmp_path / "d"), "--metadata-root", str(tmp_path / "m"), "--num-classes", "2",
            "--image-size", "32", "--train-per-class", "2", "--val-per-class", "1", "--test-per-class", "1"]
    assert syn.main(args) == 0
    out = capsys.readouterr().out
    assert "wrote 8 images" in out and "class   1:" in out
    assert syn.main(args) == 0
    assert "up to date" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        syn.main(args + ["--image-size", "8"])
    assert "image_size" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------
# The phenomenon: a small discriminative part on a larger, weakly discriminative body
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("size", [32, 64])
def test_part_is_small_and_inside_the_box(size):
    spec = SyntheticSpec(num_classes=8, image_size=size, test_per_class=12, multi_object_fraction=0.25)
    ratios, body_to_part = [], []
    for c in range(8):
        for i in range(12):
            r = syn.render_image(spec, "test", c, i)
            assert len(r.objects) in (1, 2)
            d = syn.class_definitions(8)[c]
            fg = r.mask > 0
            for o in r.objects:
                assert (o.label, o.body_type, o.part_shape, o.part_colour) == \
                       (c, d.body_type, d.part_shape, d.part_colour)
                x0, y0, x1, y1 = o.box
                px0, py0, px1, py1 = o.part_box
                assert 0 <= x0 <= px0 <= px1 <= x1 < size and 0 <= y0 <= py0 <= py1 <= y1 < size
                assert o.part_area > 0 and o.body_area > 0
                assert o.part_area + o.body_area <= fg[y0:y1 + 1, x0:x1 + 1].sum()
                ratios.append(o.part_area / o.box_area)
                body_to_part.append(o.body_area / o.part_area)
    assert max(ratios) < 0.25, "the part is a small fraction of the GT box"
    assert np.mean(ratios) < 0.1
    assert min(body_to_part) >= 2 and np.median(body_to_part) >= 5, "the body is the larger region"


def test_body_does_not_identify_the_class():
    """Two classes sharing a body type, rendered from the same random stream, differ only in the part.

    So the body and background carry no evidence that separates them; only the part does.
    """
    size = 48
    yy, xx = np.mgrid[0:size, 0:size]
    for k in (8, 5):
        for seed in range(6):
            for n_obj in (1, 2):
                for group in range(k // 2):
                    members = [c for c in range(k) if syn.body_type_of(c, k) == group]
                    assert len(members) >= 2
                    renders = [syn.render_from_rng(np.random.default_rng(seed), size, c, n_obj, k) for c in members]
                    allowed = np.zeros((size, size), bool)
                    for r in renders:
                        for o in r.objects:
                            cx, cy, rad = o.part_disk
                            allowed |= (xx - cx) ** 2 + (yy - cy) ** 2 <= (rad + 1.0) ** 2
                    for r in renders[1:]:
                        diff = (r.image != renders[0].image).any(-1)
                        assert diff.any(), "the parts differ"
                        assert not (diff & ~allowed).any(), "pixels outside the parts are identical"
    # whereas classes of different body types differ in their body pixels, far from any part
    a = syn.render_from_rng(np.random.default_rng(0), size, 0, 1, 8)
    b = syn.render_from_rng(np.random.default_rng(0), size, 2, 1, 8)
    body = (a.mask > 0) & (b.mask > 0)
    assert (a.image[body] != b.image[body]).any(-1).mean() > 0.5


def test_background_is_class_agnostic():
    """The background stream does not depend on the label: with the same RNG, pixels outside objects match."""
    size = 40
    r0 = syn.render_from_rng(np.random.default_rng(3), size, 0, 1, 8)
    for c in range(1, 8):
        rc = syn.render_from_rng(np.random.default_rng(3), size, c, 1, 8)
        outside = (r0.mask == 0) & (rc.mask == 0)
        np.testing.assert_array_equal(r0.image[outside], rc.image[outside])
