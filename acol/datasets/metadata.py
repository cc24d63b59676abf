"""Reading wsolevaluation-format metadata.

`<metadata_root>/<DATASET>/<split>/`:
  image_ids.txt         path
  class_labels.txt      path,label
  image_sizes.txt       path,W,H                  (may be empty, as in OpenImages)
  localization.txt      path,x0,y0,x1,y1          one line per box
                     or path,mask.png,ignore.png  one line per mask (ignore given once per image)
  mask_localization.txt path,mask.png,ignore.png  optional masks next to box localization
Paths are relative to `<data_root>/<DATASET>/`. Every problem raises MetadataError naming the file
and the line. `acol.datasets.prepare.check_dataset` applies the same rules but reports every problem
at once.
"""
from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from acol.textfile import read_utf8


class MetadataError(ValueError):
    """Malformed or inconsistent metadata; the message names the file and line."""


@dataclass
class Metadata:
    split_dir: Path
    image_ids: list[str]
    labels: dict[str, int]
    sizes: dict[str, tuple[int, int]]                       # (W, H)
    boxes: dict[str, list[tuple[int, int, int, int]]] = field(default_factory=dict)
    masks: dict[str, list[str]] = field(default_factory=dict)  # instance mask paths
    ignore: dict[str, str] = field(default_factory=dict)       # ignore-region mask path

    @property
    def num_classes(self) -> int:
        return max(self.labels.values()) + 1


def box_problem(box, size: tuple[int, int] | None) -> str | None:
    """Why a box breaks 0 <= x0 <= x1 <= W and 0 <= y0 <= y1 <= H, or None when it does not."""
    x0, y0, x1, y1 = box
    if x0 < 0 or y0 < 0 or x1 < x0 or y1 < y0:
        return f"box ({x0},{y0},{x1},{y1}) does not have 0 <= x0 <= x1 and 0 <= y0 <= y1"
    if size is not None and (x1 > size[0] or y1 > size[1]):
        return f"box ({x0},{y0},{x1},{y1}) lies outside the {size[0]}x{size[1]} image"
    return None


def label_problem(label: int, num_classes: int) -> str | None:
    """Why a label is not a class index 0..num_classes-1, or None when it is."""
    if not 0 <= label < num_classes:
        return f"label {label} is out of range for {num_classes} classes (0..{num_classes - 1})"
    return None


def _lines(path: Path, required: bool = True):
    """(line number, stripped text) of the non-empty lines."""
    if not path.is_file():
        if required:
            raise MetadataError(f"metadata file not found: {path}")
        return []
    return [(i, line.strip()) for i, line in enumerate(read_utf8(path, MetadataError).splitlines(), 1) if line.strip()]


def _int(text: str, path: Path, lineno: int, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise MetadataError(f"{path}:{lineno}: {what} {text!r} is not an integer") from None


def _fields(line: str, count: int, path: Path, lineno: int, syntax: str) -> list[str]:
    parts = line.split(",")
    if len(parts) != count:
        raise MetadataError(f"{path}:{lineno}: expected '{syntax}', got {line!r}")
    return parts


def _known(image_id: str, ids: set[str], path: Path, lineno: int) -> None:
    if image_id not in ids:
        raise MetadataError(f"{path}:{lineno}: {image_id!r} is not listed in image_ids.txt")


def _once(image_id: str, first_lines: dict[str, int], path: Path, lineno: int, what: str) -> None:
    """Record the line of `image_id`'s `what`; a second one is an error."""
    if image_id in first_lines:
        raise MetadataError(f"{path}:{lineno}: a second {what} for {image_id!r} (first on line "
                            f"{first_lines[image_id]})")
    first_lines[image_id] = lineno


def _every(image_ids: list[str], covered, path: Path, what: str) -> None:
    """Every image must have a line in the file at `path`."""
    missing = [i for i in image_ids if i not in covered]
    if missing:
        raise MetadataError(f"{path}: no {what} for {len(missing)} images, e.g. {missing[0]!r}")


def read_metadata(metadata_root: str | Path, dataset: str, split: str) -> Metadata:
    """Parse and cross-check one split's metadata files."""
    split_dir = Path(metadata_root) / dataset / split
    if not split_dir.is_dir():
        raise MetadataError(f"metadata folder not found: {split_dir}")

    path = split_dir / "image_ids.txt"
    image_ids = []
    seen: dict[str, int] = {}
    for lineno, line in _lines(path):
        if line in seen:
            raise MetadataError(f"{path}:{lineno}: duplicate image id {line!r} (first on line {seen[line]})")
        seen[line] = lineno
        image_ids.append(line)
    if not image_ids:
        raise MetadataError(f"{path}: the split {split!r} has no images")
    ids = set(image_ids)

    path = split_dir / "class_labels.txt"
    labels = {}
    label_lines: dict[str, int] = {}
    for lineno, line in _lines(path):
        image_id, label = _fields(line, 2, path, lineno, "path,label")
        _known(image_id, ids, path, lineno)
        _once(image_id, label_lines, path, lineno, "label")
        labels[image_id] = _int(label, path, lineno, "label")
        if labels[image_id] < 0:
            raise MetadataError(f"{path}:{lineno}: negative label {labels[image_id]}")
    _every(image_ids, labels, path, "label")

    path = split_dir / "image_sizes.txt"
    sizes = {}
    size_lines: dict[str, int] = {}
    for lineno, line in _lines(path, required=False):
        image_id, w, h = _fields(line, 3, path, lineno, "path,W,H")
        _known(image_id, ids, path, lineno)
        _once(image_id, size_lines, path, lineno, "size")
        sizes[image_id] = (_int(w, path, lineno, "width"), _int(h, path, lineno, "height"))
        if min(sizes[image_id]) <= 0:
            raise MetadataError(f"{path}:{lineno}: size {w}x{h} is not positive")
    if sizes:                   # may be empty (OpenImages), else it lists every image
        _every(image_ids, sizes, path, "size")

    meta = Metadata(split_dir, image_ids, labels, sizes)
    _read_localization(meta, split_dir / "localization.txt", ids)
    _read_localization(meta, split_dir / "mask_localization.txt", ids)
    return meta


def _read_localization(meta: Metadata, path: Path, ids: set[str]) -> None:
    """Boxes or masks; when the file lists any image, it must list every one."""
    covered = set()
    for lineno, line in _lines(path, required=False):
        parts = line.split(",")
        image_id = parts[0]
        if len(parts) == 5:
            _known(image_id, ids, path, lineno)
            box = tuple(_int(v, path, lineno, "box coordinate") for v in parts[1:])
            problem = box_problem(box, meta.sizes.get(image_id))
            if problem:
                raise MetadataError(f"{path}:{lineno}: {problem}")
            meta.boxes.setdefault(image_id, []).append(box)
        elif len(parts) == 3:
            _, mask, ignore = parts
            _known(image_id, ids, path, lineno)
            if not mask:
                raise MetadataError(f"{path}:{lineno}: empty mask path")
            meta.masks.setdefault(image_id, []).append(mask)
            if ignore:
                meta.ignore[image_id] = ignore
        else:
            raise MetadataError(f"{path}:{lineno}: expected 'path,x0,y0,x1,y1' or 'path,mask,ignore', "
                                f"got {line!r}")
        covered.add(image_id)
    if covered:
        _every(meta.image_ids, covered, path, "box or mask")


def per_class_subset(meta: Metadata, k: int, seed: int) -> Metadata:
    """The split restricted to k images per class (k = 0: all of it), drawn as wsolevaluation's
    `--num_val_sample_per_class k --seed seed` draws its val split (data_loaders.py,
    `_adjust_samples_per_class`, right after main.py's `np.random.seed(seed)`): for each label in
    ascending order, `choice(that label's positions in image_ids.txt, k, replace=False)` from one
    legacy `RandomState(seed)`; the ids come grouped by label, in draw order. A class with fewer than k
    images keeps them all, in file order, and draws nothing (wsolevaluation refuses it)."""
    if k == 0:
        return meta
    labels = np.array([meta.labels[i] for i in meta.image_ids])
    rng = np.random.RandomState(seed)
    chosen = []
    for label in np.unique(labels):
        positions = np.where(labels == label)[0]
        chosen += positions.tolist() if len(positions) < k else rng.choice(positions, k, replace=False).tolist()
    ids = [meta.image_ids[i] for i in chosen]
    keep = lambda table: {i: table[i] for i in ids if i in table}  # noqa: E731
    return Metadata(meta.split_dir, ids, keep(meta.labels), keep(meta.sizes), keep(meta.boxes), keep(meta.masks),
                    keep(meta.ignore))


def check_labels(train: Metadata, evaluated: Iterable[Metadata], num_classes: int) -> None:
    """Every label of train and of the `evaluated` splits (val, test) must be in 0..num_classes-1, and
    every evaluated label must be one that some train image has; else MetadataError naming
    class_labels.txt and the line."""
    train_classes = set(train.labels.values())
    for meta in (train, *evaluated):
        for image_id in meta.image_ids:
            label = meta.labels[image_id]
            problem = label_problem(label, num_classes)
            if problem is None and meta is not train and label not in train_classes:
                problem = f"label {label}, which no train image has ({train.split_dir / 'class_labels.txt'})"
            if problem:
                path = meta.split_dir / "class_labels.txt"
                raise MetadataError(f"{path}:{_line_of(path, image_id)}: {problem}")


def no_ground_truth(split_dir: Path, images: int) -> str:
    """The problem of an evaluated split (val, test) whose images have neither boxes nor masks."""
    return (f"{split_dir}: no boxes (localization.txt) and no masks (mask_localization.txt) for any of its {images} "
            "images; the localization metrics need one or the other for every val and test image")


def check_ground_truth(evaluated: Iterable[Metadata]) -> None:
    """Every evaluated split (val, test) has boxes or masks; else MetadataError naming its folder."""
    for meta in evaluated:
        if meta.image_ids and not any(meta.boxes.values()) and not any(meta.masks.values()):
            raise MetadataError(no_ground_truth(meta.split_dir, len(meta.image_ids)))


def check_disjoint(splits: Iterable[Metadata]) -> None:
    """No image in two of `splits` (a split given twice, as the few-shot baseline's val is also its train
    split, counts once); else MetadataError naming both image_ids.txt lines."""
    first: dict[str, Metadata] = {}
    for meta in {m.split_dir: m for m in splits}.values():
        for image_id in meta.image_ids:
            other = first.setdefault(image_id, meta)
            if other is not meta:
                here, there = meta.split_dir / "image_ids.txt", other.split_dir / "image_ids.txt"
                raise MetadataError(f"{here}:{_line_of(here, image_id)}: {image_id!r} is also in "
                                    f"{there}:{_line_of(there, image_id)}; a run must not evaluate on an image it "
                                    "trained on or chose its thresholds on (data.allow_split_overlap=true runs anyway)")


def _line_of(path: Path, image_id: str) -> int:
    """The line of a metadata file that starts with `image_id` (looked up for an error message only)."""
    return next(lineno for lineno, line in _lines(path) if line.split(",")[0] == image_id)
