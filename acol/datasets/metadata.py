"""Reading wsolevaluation-format metadata (DESIGN.md §5).

`<metadata_root>/<DATASET>/<split>/`:
  image_ids.txt         path
  class_labels.txt      path,label
  image_sizes.txt       path,W,H                  (may be empty, as in OpenImages)
  localization.txt      path,x0,y0,x1,y1          one line per box
                     or path,mask.png,ignore.png  one line per mask (ignore given once per image)
  mask_localization.txt path,mask.png,ignore.png  optional masks next to box localization
Paths are relative to `<data_root>/<DATASET>/`. Every problem raises MetadataError naming the file
and the line.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


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


def _lines(path: Path, required: bool = True):
    """(line number, stripped text) of the non-empty lines."""
    if not path.is_file():
        if required:
            raise MetadataError(f"metadata file not found: {path}")
        return []
    return [(i, line.strip()) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]


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
    for lineno, line in _lines(path):
        image_id, label = _fields(line, 2, path, lineno, "path,label")
        _known(image_id, ids, path, lineno)
        labels[image_id] = _int(label, path, lineno, "label")
        if labels[image_id] < 0:
            raise MetadataError(f"{path}:{lineno}: negative label {labels[image_id]}")
    missing = [i for i in image_ids if i not in labels]
    if missing:
        raise MetadataError(f"{path}: no label for {len(missing)} images, e.g. {missing[0]!r}")

    path = split_dir / "image_sizes.txt"
    sizes = {}
    for lineno, line in _lines(path, required=False):
        image_id, w, h = _fields(line, 3, path, lineno, "path,W,H")
        _known(image_id, ids, path, lineno)
        sizes[image_id] = (_int(w, path, lineno, "width"), _int(h, path, lineno, "height"))

    meta = Metadata(split_dir, image_ids, labels, sizes)
    _read_localization(meta, split_dir / "localization.txt", ids)
    _read_localization(meta, split_dir / "mask_localization.txt", ids)
    return meta


def _read_localization(meta: Metadata, path: Path, ids: set[str]) -> None:
    for lineno, line in _lines(path, required=False):
        parts = line.split(",")
        if len(parts) == 5:
            image_id = parts[0]
            _known(image_id, ids, path, lineno)
            x0, y0, x1, y1 = (_int(v, path, lineno, "box coordinate") for v in parts[1:])
            if x1 < x0 or y1 < y0:
                raise MetadataError(f"{path}:{lineno}: box ({x0},{y0},{x1},{y1}) has x1 < x0 or y1 < y0")
            if image_id in meta.sizes:
                w, h = meta.sizes[image_id]
                if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
                    raise MetadataError(f"{path}:{lineno}: box ({x0},{y0},{x1},{y1}) lies outside the "
                                        f"{w}x{h} image")
            meta.boxes.setdefault(image_id, []).append((x0, y0, x1, y1))
        elif len(parts) == 3:
            image_id, mask, ignore = parts
            _known(image_id, ids, path, lineno)
            meta.masks.setdefault(image_id, []).append(mask)
            if ignore:
                meta.ignore[image_id] = ignore
        else:
            raise MetadataError(f"{path}:{lineno}: expected 'path,x0,y0,x1,y1' or 'path,mask,ignore', "
                                f"got {line!r}")
