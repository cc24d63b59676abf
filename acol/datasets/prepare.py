"""Prepare CUB-200-2011, ILSVRC 2012 and OpenImages30k in the wsolevaluation format, and check them.

    python -m acol.datasets.prepare cub --source CUB_200_2011 [--val-source CUBV2 --val-metadata DIR]
    python -m acol.datasets.prepare ilsvrc --train ILSVRC2012_img_train --val ILSVRC2012_img_val
                                           --val-annotations VAL_XML_DIR
                                           [--val-source imagenetv2-threshold0.7 --val-metadata DIR]
    python -m acol.datasets.prepare openimages --source OpenImages --metadata wsolevaluation/metadata/OpenImages
    python -m acol.datasets.prepare check --dataset CUB [--split test] [--decode]

What a command writes (the format of acol/datasets/metadata.py; paths are relative to <data-root>/<DATASET>/):
    <metadata-root>/<DATASET>/<split>/image_ids.txt, class_labels.txt, image_sizes.txt, localization.txt
    <data-root>/<DATASET>/<path>    a symlink to the source file (--copy: a copy), for every listed image and mask
Splits are train, val and test. Files end with a newline; image_sizes.txt and localization.txt are
empty when there is nothing to list (wsolevaluation's OpenImages image_sizes.txt is empty too).
Source files are never moved, changed or deleted; a different file already at a target path is
reported and left alone. `--metadata DIR` (wsolevaluation's own metadata/<DATASET>/ folder) copies the
splits found there as they are instead of generating them. Every command ends with `check`: it
reports every problem at once, each naming its file and line, then prints the counts per split. Exit
status: 0 no problem, 1 problems, 2 the sources could not be read (a malformed file, named with its line).

Conventions
-----------
CUB (DATASET CUB). --source is the extracted CUB_200_2011/ folder. Ids are the images.txt paths
  (`<class folder>/<file>.jpg`, wsolevaluation's ids); label = image_class_labels.txt label - 1;
  train = is_train 1 and test = is_train 0, both in images.txt order; W,H are read from the image.
  Box: bounding_boxes.txt `x y w h` (floats) -> x0 = int(x), y0 = int(y), x1 = int(x + w),
  y1 = int(y + h), then clipped to the image (below). That is the conversion behind wsolevaluation's
  published CUB metadata: image 1, `60.0 27.0 325.0 304.0`, is
  `001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg,60,27,385,331` in its CUB/test/localization.txt.
  val is CUBV2 (wsolevaluation's train-fullsup split: 1,000 images, 5 per class): --val-source is the
  folder CUBV2.tar was extracted to (`<class folder>/<file>.jpg`) and its metadata is wsolevaluation's
  metadata/CUB/val/ (--val-metadata, else the val split of --metadata, else --val-source itself).
  --val-from-train K instead moves, per class, the K train images with the smallest SHA-1 of their
  path from train to val. That is deterministic, but it is NOT the wsolevaluation protocol, so the
  results are not comparable with papers that use CUBV2.
Boxes at the image edge (CUB and ILSVRC): x0, y0 are clipped to >= 0 and x1, y1 to <= W - 1, H - 1,
  wsolevaluation's convention (its CUB metadata ends boxes that reach the edge at W - 1 / H - 1, e.g.
  `004.Groove_billed_Ani/Groove_Billed_Ani_0005_1750.jpg,58,54,499,374` for a 500x375 image, as its
  evaluation clips predicted boxes to W - 1, H - 1). A box crossing the edge is clipped, not refused; one
  note counts the clipped boxes, with examples. A box with x1 < x0 or y1 < y0, or entirely outside the
  image, is an error naming its file and line.
ILSVRC (DATASET ILSVRC). The class index is the position of the wnid among the sorted train folder
  names (torchvision's ImageFolder order, which wsolevaluation uses), or in --synsets (the first word
  of each line, e.g. LOC_synset_mapping.txt).
  train: --train is ILSVRC2012_img_train extracted as <wnid>/<wnid>_<n>.JPEG; ids `train/<wnid>/<file>`;
  no boxes; sizes only with --train-sizes (reading 1.28M image headers takes minutes).
  test: --val is ILSVRC2012_img_val extracted flat and --val-annotations holds its PASCAL-VOC files
  ILSVRC2012_val_<n>.xml; ids `val/ILSVRC2012_val_<n>.JPEG`; label = the wnid of its objects; W,H =
  <size>; one box per <object>, in file order, with xmin,ymin,xmax,ymax copied (clipped at the edge). That is
  what wsolevaluation's ILSVRC/test/localization.txt holds: ILSVRC2012_val_00000001.xml has the box
  111,108,441,193 and the metadata `val/ILSVRC2012_val_00000001.JPEG,111,108,441,193`.
  val is ImageNetV2 threshold0.7 (--val-source: the folder imagenetv2-threshold0.7.tar.gz extracts to,
  <class index>/<file>.jpeg) with wsolevaluation's metadata/ILSVRC/val/ (ids `val2/<class>/<file>.jpeg`).
OpenImages (DATASET OpenImages). It exists only as wsolevaluation's release: --source is the folder its
  image and annotation zips were extracted to (`<split>/<class>/<image>.jpg`, with the instance masks
  `<image>_m<class>_<id>.png` and `<image>_ignore.png` beside the images), and --metadata is its
  metadata/OpenImages/ folder.
"""
from __future__ import annotations

import argparse
import filecmp
import hashlib
import itertools
import math
import os
import re
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from xml.parsers import expat

from PIL import Image

from acol.cli import OneLineParser, prog
from acol.datasets.images import DECODE_ERRORS, read_mask, read_rgb
from acol.datasets.metadata import MetadataError, box_problem, label_problem, no_ground_truth, read_metadata
from acol.textfile import read_utf8

SPLITS = ("train", "val", "test")
METADATA_FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
WSOLEVALUATION = "https://github.com/clovaai/wsolevaluation"


class PrepareError(MetadataError):
    """A source that cannot be prepared: the message names the file and line, or the options at fault."""


@dataclass
class FullSize:
    """Counts of the complete data set (wsolevaluation's metadata), to warn about partial sources."""
    classes: int
    images: dict[str, int]
    boxes: dict[str, int]


FULL_SIZE = {
    "CUB": FullSize(200, {"train": 5994, "val": 1000, "test": 5794}, {"train": 5994, "val": 1000, "test": 5794}),
    "ILSVRC": FullSize(1000, {"train": 1281167, "val": 10000, "test": 50000}, {"val": 18532, "test": 80477}),
    "OpenImages": FullSize(100, {"train": 29819, "val": 2500, "test": 5000}, {}),
}


def image_size(path: Path) -> tuple[int, int]:
    """(W, H) from the image header (nothing is decoded); OSError when it is missing or unreadable."""
    with Image.open(path) as img:
        return img.size


# --------------------------------------------------------------------------------------------
# Reading the official sources (every error names the file and line)
# --------------------------------------------------------------------------------------------
@dataclass
class ImageRecord:
    """One image of a generated split."""
    path: str                                   # relative to <data_root>/<DATASET>/
    label: int                                  # 0-based class index
    size: tuple[int, int] | None = None         # (W, H)
    boxes: list[tuple[int, int, int, int]] = field(default_factory=list)


def metadata_lines(records: list[ImageRecord]) -> dict[str, list[str]]:
    """The lines of a split's four metadata files."""
    return {
        "image_ids.txt": [r.path for r in records],
        "class_labels.txt": [f"{r.path},{r.label}" for r in records],
        "image_sizes.txt": [f"{r.path},{r.size[0]},{r.size[1]}" for r in records if r.size is not None],
        "localization.txt": [f"{r.path},{x0},{y0},{x1},{y1}" for r in records for x0, y0, x1, y1 in r.boxes],
    }


def _source_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of the non-empty lines of a source file."""
    if not path.is_file():
        raise PrepareError(f"source file not found: {path}")
    return [(i, line.strip()) for i, line in enumerate(read_utf8(path, PrepareError).splitlines(), 1) if line.strip()]


def _read_size(path: Path, where: str) -> tuple[int, int]:
    try:
        return image_size(path)
    except FileNotFoundError:
        raise PrepareError(f"{where}: image not found: {path}") from None
    except OSError as e:
        raise PrepareError(f"{where}: cannot read image {path}: {e}") from None


@dataclass
class _Table:
    """A whitespace-separated CUB file of `id value...` lines: {id: (line number, values)}."""
    path: Path
    rows: dict[str, tuple[int, list[str]]]


def _read_table(path: Path, syntax: str, ids: _Table | None = None) -> _Table:
    """Parse lines of the form `syntax` (e.g. 'id x y w h'). With `ids`, each of its ids must have exactly
    one line and no other id may appear."""
    width = len(syntax.split())
    rows: dict[str, tuple[int, list[str]]] = {}
    for lineno, line in _source_lines(path):
        parts = line.split()
        if len(parts) != width:
            raise PrepareError(f"{path}:{lineno}: expected '{syntax}', got {line!r}")
        key = parts[0]
        if key in rows:
            raise PrepareError(f"{path}:{lineno}: duplicate id {key} (first on line {rows[key][0]})")
        if ids is not None and key not in ids.rows:
            raise PrepareError(f"{path}:{lineno}: id {key} is not in {ids.path}")
        rows[key] = (lineno, parts[1:])
    if ids is not None:
        for key, (lineno, _) in ids.rows.items():
            if key not in rows:
                raise PrepareError(f"{path}: no line for id {key} ({ids.path}:{lineno})")
    return _Table(path, rows)


def _number(text: str, path: Path, lineno: int, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise PrepareError(f"{path}:{lineno}: {what} {text!r} is not a number")
    return value


Box = tuple[int, int, int, int]


def clip_box(box: Box, size: tuple[int, int], where: str, clipped: list[tuple[str, Box, Box]]) -> Box:
    """`box` (x0, y0, x1, y1) clipped to the (W, H) image as wsolevaluation's metadata is: x0, y0 >= 0,
    x1 <= W - 1, y1 <= H - 1; a changed box is recorded in `clipped` as (where, before, after). A box with
    x1 < x0 or y1 < y0, or entirely outside the image, is a PrepareError at `where` (its file:line)."""
    x0, y0, x1, y1 = box
    width, height = size
    if x1 < x0 or y1 < y0:
        raise PrepareError(f"{where}: box ({x0},{y0},{x1},{y1}) does not have x0 <= x1 and y0 <= y1")
    if x0 > width - 1 or y0 > height - 1 or x1 < 0 or y1 < 0:
        raise PrepareError(f"{where}: box ({x0},{y0},{x1},{y1}) lies entirely outside the {width}x{height} image")
    inside = (max(x0, 0), max(y0, 0), min(x1, width - 1), min(y1, height - 1))
    if inside != tuple(box):
        clipped.append((where, tuple(box), inside))
    return inside


def clip_note(clipped: list[tuple[str, Box, Box]], examples: int = 3) -> str:
    """One line: how many boxes were clipped to the image, with the first few."""
    shown = "; ".join(f"{where} ({','.join(map(str, before))}) -> ({','.join(map(str, after))})"
                      for where, before, after in clipped[:examples])
    return (f"clipped {len(clipped)} boxes to the image (x0, y0 >= 0, x1 <= W - 1, y1 <= H - 1, wsolevaluation's "
            f"convention), e.g. {shown}")


def read_cub(source: Path, notes: list[str]) -> dict[str, list[ImageRecord]]:
    """The train and test records of an extracted CUB_200_2011/ folder (conventions: module docstring)."""
    images = _read_table(source / "images.txt", "id path")
    labels = _read_table(source / "image_class_labels.txt", "id label", images)
    boxes = _read_table(source / "bounding_boxes.txt", "id x y w h", images)
    is_train = _read_table(source / "train_test_split.txt", "id is_train", images)
    classes = _read_table(source / "classes.txt", "id name")
    if set(classes.rows) != {str(i) for i in range(1, len(classes.rows) + 1)}:
        raise PrepareError(f"{classes.path}: the class ids are not 1..{len(classes.rows)}")
    records: dict[str, list[ImageRecord]] = {"train": [], "test": []}
    clipped: list[tuple[str, Box, Box]] = []
    for image_id, (lineno, (path,)) in images.rows.items():
        label_line, (label,) = labels.rows[image_id]
        if label not in classes.rows:
            raise PrepareError(f"{labels.path}:{label_line}: class {label!r} is not in {classes.path}")
        split_line, (flag,) = is_train.rows[image_id]
        if flag not in ("0", "1"):
            raise PrepareError(f"{is_train.path}:{split_line}: is_train {flag!r} is not 0 or 1")
        box_line, xywh = boxes.rows[image_id]
        x, y, w, h = (_number(text, boxes.path, box_line, f"box {name}") for text, name in zip(xywh, "xywh"))
        size = _read_size(source / "images" / path, f"{images.path}:{lineno}")
        box = clip_box((int(x), int(y), int(x + w), int(y + h)), size, f"{boxes.path}:{box_line} ({path})", clipped)
        records["train" if flag == "1" else "test"].append(ImageRecord(path, int(label) - 1, size, [box]))
    if clipped:
        notes.append(clip_note(clipped))
    return records


def hold_out_val(train: list[ImageRecord], per_class: int) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(rest of train, val): per class, the `per_class` images with the smallest SHA-1 of their path go
    to val, in their train order. NOT the wsolevaluation protocol (its CUB val is CUBV2)."""
    by_class: dict[int, list[ImageRecord]] = {}
    for record in train:
        by_class.setdefault(record.label, []).append(record)
    chosen = set()
    for label, members in sorted(by_class.items()):
        if len(members) <= per_class:
            raise PrepareError(f"--val-from-train {per_class}: class {label} has only {len(members)} train "
                               f"images, and train must keep at least one")
        members = sorted(members, key=lambda r: hashlib.sha1(r.path.encode()).hexdigest())
        chosen.update(r.path for r in members[:per_class])
    return [r for r in train if r.path not in chosen], [r for r in train if r.path in chosen]


def ilsvrc_classes(train: Path | None, synsets: Path | None) -> list[str]:
    """The wnids in class-index order: those of --synsets, else the sorted train folder names."""
    folders = sorted(e.name for e in os.scandir(train) if e.is_dir()) if train is not None else []
    if synsets is None:
        if train is None:
            raise PrepareError("the class order comes from --train (its folder names) or --synsets; give one")
        if not folders:
            raise PrepareError(f"{train}: no class folders (expected ILSVRC2012_img_train extracted as "
                               f"<wnid>/<wnid>_<n>.JPEG)")
        return folders
    wnids: dict[str, int] = {}
    for lineno, line in _source_lines(synsets):
        wnid = line.split()[0]
        if wnid in wnids:
            raise PrepareError(f"{synsets}:{lineno}: duplicate wnid {wnid} (first on line {wnids[wnid]})")
        wnids[wnid] = lineno
    for name in folders:
        if name not in wnids:
            raise PrepareError(f"{train / name}: the folder name is not a wnid of {synsets}")
    return list(wnids)


def read_ilsvrc_train(train: Path, classes: list[str], with_sizes: bool, notes: list[str]) -> list[ImageRecord]:
    """Every image of every class folder of an extracted ILSVRC2012_img_train/, in sorted order."""
    entries = list(os.scandir(train))
    folders = {e.name for e in entries if e.is_dir()}
    stray = sorted(e.name for e in entries if not e.is_dir())
    if stray:
        notes.append(f"ignored {len(stray)} files at the top of {train} (e.g. {stray[0]}); the train images are "
                     f"those in its class folders")
    records = []
    for label, wnid in enumerate(classes):
        if wnid not in folders:
            raise PrepareError(f"{train / wnid}: no train folder for class {label} ({wnid})")
        for entry in sorted(os.scandir(train / wnid), key=lambda e: e.name):
            if not (entry.is_file() and entry.name.lower().endswith(IMAGE_SUFFIXES)):
                raise PrepareError(f"{entry.path}: not an image file (expected {wnid}/{wnid}_<n>.JPEG)")
            size = _read_size(Path(entry.path), str(train / wnid)) if with_sizes else None
            records.append(ImageRecord(f"train/{wnid}/{entry.name}", label, size))
    return records


@dataclass
class VocObject:
    name: str                                   # the wnid
    box: tuple[int, int, int, int]              # xmin, ymin, xmax, ymax as written
    line: int                                   # of <object>


@dataclass
class VocAnnotation:
    size: tuple[int, int]                       # (W, H) of <size>
    objects: list[VocObject]
    line: int                                   # of the root element


_BOX_TAGS = (("bndbox", "xmin"), ("bndbox", "ymin"), ("bndbox", "xmax"), ("bndbox", "ymax"))


def _xml_elements(path: Path) -> list[list]:
    """[tags from the root down, text, line] of every element, in document order. (expat, because it
    reports line numbers.)"""
    parser = expat.ParserCreate()
    elements: list[list] = []
    stack: list[str] = []
    open_elements: list[list] = []

    def start(tag, attributes):
        stack.append(tag)
        open_elements.append([tuple(stack), "", parser.CurrentLineNumber])
        elements.append(open_elements[-1])

    def end(tag):
        stack.pop()
        open_elements.pop()

    def text(data):
        open_elements[-1][1] += data

    parser.StartElementHandler, parser.EndElementHandler, parser.CharacterDataHandler = start, end, text
    try:
        with open(path, "rb") as f:
            parser.ParseFile(f)
    except expat.ExpatError as e:
        raise PrepareError(f"{path}:{e.lineno}: not well-formed XML ({expat.ErrorString(e.code)})") from None
    return elements


def read_voc_xml(path: Path) -> VocAnnotation:
    """<size><width>,<height> and each <object><name>, <bndbox><xmin>..<ymax> of a PASCAL-VOC file."""
    elements = _xml_elements(path)
    root, _, root_line = elements[0]
    if root != ("annotation",):
        raise PrepareError(f"{path}:{root_line}: the root element is <{root[0]}>, not <annotation>")
    size_fields: dict[tuple, tuple[str, int]] = {}
    objects: list[tuple[int, dict[tuple, tuple[str, int]]]] = []
    for tags, text, line in elements[1:]:
        tags = tags[1:]
        if tags in (("size", "width"), ("size", "height")):
            size_fields[tags] = (text.strip(), line)
        elif tags == ("object",):
            objects.append((line, {}))
        elif tags[0] == "object":
            objects[-1][1][tags[1:]] = (text.strip(), line)

    def integer(entry: tuple[str, int], tag: str) -> int:
        text, line = entry
        try:
            return int(text)
        except ValueError:
            raise PrepareError(f"{path}:{line}: <{tag}> {text!r} is not an integer") from None

    if len(size_fields) != 2:
        raise PrepareError(f"{path}:{root_line}: <annotation> has no <size> with <width> and <height>")
    size = (integer(size_fields[("size", "width")], "width"), integer(size_fields[("size", "height")], "height"))
    parsed = []
    for line, fields in objects:
        for tags in (("name",), *_BOX_TAGS):
            if tags not in fields:
                raise PrepareError(f"{path}:{line}: <object> has no <{'><'.join(tags)}>")
        box = tuple(integer(fields[tags], tags[-1]) for tags in _BOX_TAGS)
        parsed.append(VocObject(fields[("name",)][0], box, line))
    return VocAnnotation(size, parsed, root_line)


def read_ilsvrc_val(val: Path, annotations: Path, classes: list[str], notes: list[str]) -> list[ImageRecord]:
    """The test records: each ILSVRC2012_img_val image with ALL the boxes of its XML file."""
    images = {p.stem: p for p in sorted(val.iterdir()) if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES}
    xmls = {p.stem: p for p in sorted(annotations.iterdir()) if p.is_file() and p.suffix.lower() == ".xml"}
    if not images:
        raise PrepareError(f"{val}: no images (expected ILSVRC2012_img_val extracted flat: "
                           f"ILSVRC2012_val_00000001.JPEG, ...)")
    for stem, image in images.items():
        if stem not in xmls:
            raise PrepareError(f"{image}: no annotation file {annotations / (stem + '.xml')}")
    for stem, xml in xmls.items():
        if stem not in images:
            raise PrepareError(f"{xml}: no image {stem}.JPEG in {val}")
    index = {wnid: label for label, wnid in enumerate(classes)}
    records = []
    clipped: list[tuple[str, Box, Box]] = []
    for stem, image in images.items():
        xml = xmls[stem]
        annotation = read_voc_xml(xml)
        if not annotation.objects:
            raise PrepareError(f"{xml}:{annotation.line}: no <object>; every ILSVRC val image has a box")
        first = annotation.objects[0]
        if first.name not in index:
            raise PrepareError(f"{xml}:{first.line}: {first.name!r} is not one of the {len(classes)} classes")
        for obj in annotation.objects:
            if obj.name != first.name:
                raise PrepareError(f"{xml}:{obj.line}: class {obj.name} differs from {first.name} (line "
                                   f"{first.line}); an ILSVRC val image has one class")
        boxes = [clip_box(obj.box, annotation.size, f"{xml}:{obj.line}", clipped) for obj in annotation.objects]
        records.append(ImageRecord(f"val/{image.name}", index[first.name], annotation.size, boxes))
    if clipped:
        notes.append(clip_note(clipped))
    return records


# --------------------------------------------------------------------------------------------
# Check: every problem at once
# --------------------------------------------------------------------------------------------
@dataclass
class SplitScan:
    """One split's metadata as far as it parses. Problems are collected, not raised; each names its file
    and line."""
    split_dir: Path
    image_ids: dict[str, int] = field(default_factory=dict)                # id -> line in image_ids.txt
    labels: dict[str, int] = field(default_factory=dict)
    label_lines: dict[str, int] = field(default_factory=dict)              # id -> line in class_labels.txt
    sizes: dict[str, tuple[int, int, int]] = field(default_factory=dict)   # id -> (W, H, line)
    boxes: int = 0
    masks: int = 0
    files: dict[str, str] = field(default_factory=dict)     # every listed image and mask -> "file:line"
    mask_images: dict[str, str] = field(default_factory=dict)   # mask (instance or ignore) -> its image id
    problems: list[str] = field(default_factory=list)


def _scan_text(scan: SplitScan, path: Path) -> str:
    """The text of a metadata file; one that is not UTF-8 is a problem (naming the line) and reads as empty."""
    try:
        return read_utf8(path, MetadataError)
    except MetadataError as e:
        scan.problems.append(str(e))
        return ""


def _rows(scan: SplitScan, name: str, widths: tuple[int, ...], syntax: str, required: bool = False):
    """(line number, fields) of each line of a metadata file whose first field is a listed image id."""
    path = scan.split_dir / name
    if not path.is_file():
        if required:
            scan.problems.append(f"{path}: file not found")
        return
    for lineno, line in enumerate(_scan_text(scan, path).splitlines(), 1):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        if len(fields) not in widths:
            scan.problems.append(f"{path}:{lineno}: expected '{syntax}', got {line.strip()!r}")
        elif fields[0] not in scan.image_ids:
            scan.problems.append(f"{path}:{lineno}: {fields[0]!r} is not listed in image_ids.txt")
        else:
            yield lineno, fields


def _ints(texts: list[str], where: str, what: str, problems: list[str]) -> list[int] | None:
    values = []
    for text in texts:
        try:
            values.append(int(text))
        except ValueError:
            problems.append(f"{where}: {what} {text!r} is not an integer")
            return None
    return values


def _few(items: list, shown: int = 10) -> str:
    text = ", ".join(str(i) for i in items[:shown])
    return text + (f" (and {len(items) - shown} more)" if len(items) > shown else "")


def _uncovered(scan: SplitScan, name: str, covered) -> None:
    missing = [i for i in scan.image_ids if i not in covered]
    if missing:
        examples = [f"{i!r} (image_ids.txt:{scan.image_ids[i]})" for i in missing]
        scan.problems.append(f"{scan.split_dir / name}: no line for {len(missing)} of the {len(scan.image_ids)} "
                             f"images: {_few(examples, 3)}")


def scan_split(split_dir: Path) -> SplitScan:
    """Parse a split's metadata files, collecting every problem (no file is opened but the metadata)."""
    scan = SplitScan(split_dir)
    if _scan_image_ids(scan):
        _scan_labels(scan)
        _scan_sizes(scan)
        for name in ("localization.txt", "mask_localization.txt"):
            _scan_localization(scan, name)
    return scan


def _scan_image_ids(scan: SplitScan) -> bool:
    path = scan.split_dir / "image_ids.txt"
    if not path.is_file():
        scan.problems.append(f"{path}: file not found")
        return False
    for lineno, line in enumerate(_scan_text(scan, path).splitlines(), 1):
        image_id = line.strip()
        if not image_id:
            continue
        if image_id in scan.image_ids:
            scan.problems.append(f"{path}:{lineno}: duplicate image id {image_id!r} "
                                 f"(first on line {scan.image_ids[image_id]})")
        else:
            scan.image_ids[image_id] = lineno
            scan.files[image_id] = f"{path}:{lineno}"
    if not scan.image_ids:
        scan.problems.append(f"{path}: no images")
    return True


def _scan_labels(scan: SplitScan) -> None:
    path = scan.split_dir / "class_labels.txt"
    for lineno, (image_id, label) in _rows(scan, "class_labels.txt", (2,), "path,label", required=True):
        value = _ints([label], f"{path}:{lineno}", "label", scan.problems)
        if image_id in scan.label_lines:
            scan.problems.append(f"{path}:{lineno}: a second label for {image_id!r} (first on line "
                                 f"{scan.label_lines[image_id]})")
        elif value is not None and value[0] < 0:
            scan.problems.append(f"{path}:{lineno}: negative label {value[0]}")
        elif value is not None:
            scan.label_lines[image_id] = lineno
            scan.labels[image_id] = value[0]
    if path.is_file():
        _uncovered(scan, "class_labels.txt", scan.labels)


def _scan_sizes(scan: SplitScan) -> None:
    path = scan.split_dir / "image_sizes.txt"
    for lineno, (image_id, *wh) in _rows(scan, "image_sizes.txt", (3,), "path,W,H"):
        values = _ints(wh, f"{path}:{lineno}", "size", scan.problems)
        if image_id in scan.sizes:
            scan.problems.append(f"{path}:{lineno}: a second size for {image_id!r} (first on line "
                                 f"{scan.sizes[image_id][2]})")
        elif values is not None and min(values) <= 0:
            scan.problems.append(f"{path}:{lineno}: size {values[0]}x{values[1]} is not positive")
        elif values is not None:
            scan.sizes[image_id] = (values[0], values[1], lineno)
    if scan.sizes:                  # may be empty (OpenImages), else it lists every image
        _uncovered(scan, "image_sizes.txt", scan.sizes)


def _scan_localization(scan: SplitScan, name: str) -> None:
    path = scan.split_dir / name
    covered = set()
    for lineno, fields in _rows(scan, name, (5, 3), "path,x0,y0,x1,y1' or 'path,mask.png,ignore.png"):
        where = f"{path}:{lineno}"
        image_id = fields[0]
        covered.add(image_id)
        if len(fields) == 3:
            mask, ignore = fields[1:]
            if not mask:
                scan.problems.append(f"{where}: empty mask path")
            else:
                scan.masks += 1
            for rel in filter(None, (mask, ignore)):
                scan.files.setdefault(rel, where)
                scan.mask_images.setdefault(rel, image_id)
            continue
        box = _ints(fields[1:], where, "box coordinate", scan.problems)
        if box is None:
            continue
        scan.boxes += 1
        size = scan.sizes.get(image_id)
        problem = box_problem(box, size[:2] if size else None)
        if problem:
            scan.problems.append(f"{where}: {problem}")
    if covered:
        _uncovered(scan, name, covered)


def check_files(scan: SplitScan, image_root: Path, check_sizes: bool = True, decode: bool = False) -> None:
    """Every listed image and mask must exist under image_root. With check_sizes, the image headers must
    match image_sizes.txt; with decode, every image and mask is decoded in full instead, as training
    reads it: truncated and unreadable files are found, the decoded sizes must match image_sizes.txt,
    and each mask must have its image's size."""
    present = set()
    for rel, where in scan.files.items():
        path = image_root / rel
        if path.is_file():
            present.add(rel)
        else:
            scan.problems.append(f"{where}: {'broken link' if path.is_symlink() else 'file not found'}: {path}")
    if decode:
        sizes = _decoded_sizes(scan, image_root, present)
    elif check_sizes:
        sizes = _header_sizes(scan, image_root, present)
    else:
        return
    sizes_path = scan.split_dir / "image_sizes.txt"
    for image_id, (w, h, lineno) in scan.sizes.items():
        actual = sizes.get(image_id)
        if actual is not None and actual != (w, h):
            scan.problems.append(f"{sizes_path}:{lineno}: says {w}x{h} but {image_root / image_id} is "
                                 f"{actual[0]}x{actual[1]}")


def _header_sizes(scan: SplitScan, image_root: Path, present: set[str]) -> dict[str, tuple[int, int]]:
    """(W, H) from the header of each present image listed in image_sizes.txt."""
    sizes = {}
    for image_id, (_, _, lineno) in scan.sizes.items():
        if image_id in present:
            path = image_root / image_id
            try:
                sizes[image_id] = image_size(path)
            except DECODE_ERRORS as e:
                scan.problems.append(f"{scan.split_dir / 'image_sizes.txt'}:{lineno}: cannot read image {path}: {e}")
    return sizes


def _decoded_size(path: Path) -> tuple[int, int] | str:
    """(W, H) of the image decoded in full, or why it cannot be."""
    try:
        height, width = read_rgb(path).shape[:2]
    except DECODE_ERRORS as e:
        return str(e)
    return width, height


def _mask_problem(path: Path, size: tuple[int, int] | None) -> str | None:
    """Why the mask cannot be decoded or does not have its image's size (W, H), or None."""
    try:
        read_mask(path, size)
    except DECODE_ERRORS as e:
        return str(e)
    return None


def _decoded_sizes(scan: SplitScan, image_root: Path, present: set[str]) -> dict[str, tuple[int, int]]:
    """Decode every present image, then every present mask against its image's size (in threads: PIL
    decodes without the GIL). Returns the images' (W, H)."""
    images = [i for i in scan.image_ids if i in present]
    masks = [m for m in scan.mask_images if m in present]
    sizes = {}
    with ThreadPoolExecutor(min(16, os.cpu_count() or 1)) as pool:
        for image_id, size in zip(images, pool.map(_decoded_size, [image_root / i for i in images])):
            if isinstance(size, str):
                scan.problems.append(f"{scan.files[image_id]}: {size}")
            else:
                sizes[image_id] = size
        expected = [sizes.get(scan.mask_images[m]) for m in masks]
        for mask, problem in zip(masks, pool.map(_mask_problem, [image_root / m for m in masks], expected)):
            if problem:
                scan.problems.append(f"{scan.files[mask]}: {problem}")
    return sizes


@dataclass
class SplitCounts:
    images: int
    boxes: int
    masks: int
    classes: int


SHOWN_PROBLEMS = 20     # more problems than this are summarized by kind
EXAMPLES_PER_KIND = 3


def problem_kind(problem: str) -> str:
    """A problem's message without its location and particulars: `<file>[:<line>]: <message>` with
    paths, quoted values and numbers in the message replaced by placeholders."""
    message = re.sub(r"^\S+?(:\d+)?: ", "", problem, count=1)
    message = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", message)
    message = re.sub(r"[^\s:]*/[^\s:]*", "<path>", message)
    return re.sub(r"\d+", "N", message)


@dataclass
class CheckReport:
    """What `check` found: counts per split, problems (each naming its file and line), warnings, notes."""
    dataset: str
    image_root: Path
    metadata_dir: Path
    counts: dict[str, SplitCounts] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def format(self, verbose: bool = False) -> str:
        """Counts per split, notes, warnings and the problems: every one when verbose or when there are
        at most SHOWN_PROBLEMS, else a summary by kind (`problem_kind`) with a few examples of each."""
        full = FULL_SIZE.get(self.dataset)
        lines = [f"{self.dataset}: images in {self.image_root}, metadata in {self.metadata_dir}",
                 f"{'split':<6}{'images':>11}{'boxes':>11}{'masks':>11}{'classes':>9}"
                 + ("   full data set" if full else "")]
        for split in SPLITS:
            c = self.counts.get(split)
            row = (f"{split:<6}{c.images:>11,}{c.boxes:>11,}{c.masks:>11,}{c.classes:>9,}" if c
                   else f"{split:<6}{'-':>11}{'-':>11}{'-':>11}{'-':>9}")
            if full:
                boxes = f", {full.boxes[split]:,} boxes" if split in full.boxes else ""
                row += f"   {full.images[split]:,} images{boxes}, {full.classes:,} classes"
            lines.append(row)
        lines += [f"note: {n}" for n in self.notes] + [f"warning: {w}" for w in self.warnings]
        if self.problems and (verbose or len(self.problems) <= SHOWN_PROBLEMS):
            lines.append(f"{len(self.problems)} problem{'s' if len(self.problems) > 1 else ''}:")
            lines += [f"  {p}" for p in self.problems]
        elif self.problems:
            kinds: dict[str, list[str]] = {}
            for p in self.problems:
                kinds.setdefault(problem_kind(p), []).append(p)
            lines.append(f"{len(self.problems):,} problems of {len(kinds)} kind{'s' if len(kinds) > 1 else ''} "
                         "(the full list: --verbose):")
            for kind, problems in sorted(kinds.items(), key=lambda item: -len(item[1])):
                lines.append(f"  {len(problems):,} x {kind}, e.g.")
                lines += [f"      {p}" for p in problems[:EXAMPLES_PER_KIND]]
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def check_dataset(dataset: str, data_root, metadata_root, splits=SPLITS, check_sizes: bool = True,
                  decode: bool = False, num_classes: int = 0, required: bool = False) -> CheckReport:
    """Validate the metadata and files of a data set, collecting every problem. decode: decode every
    image and mask in full (`check_files`); num_classes: the model's class count, which every label
    must be below (0: not checked); required: a missing split is a problem, not a note."""
    report = CheckReport(dataset, Path(data_root) / dataset, Path(metadata_root) / dataset)
    scans = {}
    for split in splits:
        if (report.metadata_dir / split).is_dir():
            scans[split] = scan_split(report.metadata_dir / split)
            check_files(scans[split], report.image_root, check_sizes, decode)
        else:
            (report.problems if required else report.notes).append(
                f"{split} is missing: no folder {report.metadata_dir / split}")
    if not scans:
        report.problems.append(f"{report.metadata_dir}: no split folder ({', '.join(splits)})")
    for split, scan in scans.items():
        report.problems += scan.problems
        if not scan.problems:         # the reader the training code uses must accept it too
            try:
                read_metadata(metadata_root, dataset, split)
            except MetadataError as e:
                report.problems.append(str(e))
        report.counts[split] = SplitCounts(len(scan.image_ids), scan.boxes, scan.masks,
                                           len(set(scan.labels.values())))
    for split in ("val", "test"):
        scan = scans.get(split)
        if scan and scan.image_ids and not scan.boxes and not scan.masks:
            report.problems.append(no_ground_truth(scan.split_dir, len(scan.image_ids)))
    if num_classes:
        _check_num_classes(scans, report, num_classes)
    _check_across_splits(scans, report)
    _compare_with_full_size(report)
    return report


def _check_num_classes(scans: dict[str, SplitScan], report: CheckReport, num_classes: int) -> None:
    """Every label below the model's class count."""
    for scan in scans.values():
        for image_id, label in scan.labels.items():
            problem = label_problem(label, num_classes)
            if problem:
                report.problems.append(f"{scan.split_dir / 'class_labels.txt'}:{scan.label_lines[image_id]}: "
                                       f"{problem} (model.num_classes)")


def _check_across_splits(scans: dict[str, SplitScan], report: CheckReport) -> None:
    """Labels 0..C-1, the same classes in every split (a val or test label no train image has named by its
    line), and no image in two splits."""
    classes = {split: set(scan.labels.values()) for split, scan in scans.items()}
    union = set().union(*classes.values())
    if union != set(range(len(union))):
        gaps = sorted(set(range(max(union) + 1)) - union)
        report.problems.append(f"{report.metadata_dir}: labels must be 0..C-1 without gaps; the largest is "
                               f"{max(union)}, but no split has label {_few(gaps)}")
    trained = classes.get("train")
    for split, scan in scans.items():
        for image_id, label in scan.labels.items() if trained and split != "train" else ():
            if label not in trained:  # what training refuses, named by its line
                report.problems.append(f"{scan.split_dir / 'class_labels.txt'}:{scan.label_lines[image_id]}: "
                                       f"label {label}, which no train image has")
        absent = sorted(union - classes[split])
        if absent and scan.labels:
            report.problems.append(f"{scan.split_dir / 'class_labels.txt'}: no image of class {_few(absent)}, "
                                   f"which other splits have")
    for (a, scan_a), (b, scan_b) in itertools.combinations(scans.items(), 2):
        for image_id in sorted(scan_a.image_ids.keys() & scan_b.image_ids.keys()):
            report.problems.append(f"{scan_b.split_dir / 'image_ids.txt'}:{scan_b.image_ids[image_id]}: "
                                   f"{image_id!r} is also in {a} (image_ids.txt:{scan_a.image_ids[image_id]})")


def _compare_with_full_size(report: CheckReport) -> None:
    full = FULL_SIZE.get(report.dataset)
    if full is None or not report.counts:
        return
    classes = max(c.classes for c in report.counts.values())
    if classes != full.classes:
        report.notes.append(f"{classes} classes, not the full data set's {full.classes}: the counts are not "
                            f"compared with it")
        return
    for split, c in report.counts.items():
        for what, got, want in (("images", c.images, full.images.get(split)),
                                ("boxes", c.boxes, full.boxes.get(split))):
            if want is not None and got != want:
                report.warnings.append(f"{split} has {got:,} {what}; the full data set has {want:,}")


# --------------------------------------------------------------------------------------------
# Prepare: write the metadata, put the files in place, check
# --------------------------------------------------------------------------------------------
@dataclass
class SplitPlan:
    """How one split is made. Its metadata is generated (`lines`) or copied from a wsolevaluation split
    folder (`copy_from`); the files it lists come from `files_from` (listed path = prefix + path there)."""
    files_from: Path
    prefix: str = ""
    lines: dict[str, list[str]] | None = None
    copy_from: Path | None = None


def write_split_metadata(split_dir: Path, plan: SplitPlan) -> None:
    """Write (or copy) the four metadata files; an optional one the source lacks is written empty."""
    split_dir.mkdir(parents=True, exist_ok=True)
    for name in METADATA_FILES:
        target = split_dir / name
        if plan.copy_from is None:
            target.write_text("".join(line + "\n" for line in plan.lines[name]))
        elif (plan.copy_from / name).is_file():
            if not (target.exists() and os.path.samefile(plan.copy_from / name, target)):
                shutil.copyfile(plan.copy_from / name, target)
        else:
            target.write_text("")


def place_files(scan: SplitScan, plan: SplitPlan, image_root: Path, copy: bool, notes: list[str]) -> list[str]:
    """Symlink (or copy) every file the split lists from plan.files_from to image_root. Returns the
    problems: listed paths outside the prefix, and different files already at a target."""
    problems, missing, folders = [], [], set()
    for rel, where in scan.files.items():
        if not rel.startswith(plan.prefix):
            problems.append(f"{where}: {rel!r} does not start with {plan.prefix!r}, the prefix of the files "
                            f"in {plan.files_from}")
            continue
        source = plan.files_from / rel[len(plan.prefix):]
        target = image_root / rel
        if not source.is_file():
            missing.append(source)
        elif os.path.lexists(target):
            if not (target.is_file() and (os.path.samefile(source, target) or filecmp.cmp(source, target))):
                problems.append(f"{target}: exists and is not {source}; left unchanged (remove it to replace it)")
        else:
            if target.parent not in folders:
                target.parent.mkdir(parents=True, exist_ok=True)
                folders.add(target.parent)
            if copy:
                shutil.copy2(source, target)
            else:
                os.symlink(os.path.abspath(source), target)
    if missing:
        notes.append(f"{scan.split_dir.name}: {len(missing)} listed files are not in {plan.files_from} "
                     f"(e.g. {missing[0]})")
    return problems


def prepare(dataset: str, plans: dict[str, SplitPlan], data_root, metadata_root, copy: bool = False,
            check_sizes: bool = True, notes: list[str] | None = None) -> CheckReport:
    """Write each split's metadata, put its files under <data_root>/<dataset>/, then check the data set."""
    notes = [] if notes is None else notes
    image_root = Path(data_root) / dataset
    problems = []
    for split, plan in plans.items():
        split_dir = Path(metadata_root) / dataset / split
        write_split_metadata(split_dir, plan)
        problems += place_files(scan_split(split_dir), plan, image_root, copy, notes)
    report = check_dataset(dataset, data_root, metadata_root, check_sizes=check_sizes)
    report.problems[:0] = problems
    report.notes[:0] = notes
    return report


def wsolevaluation_splits(metadata: Path | None) -> dict[str, Path]:
    """The split folders of a wsolevaluation metadata/<DATASET>/ folder ({} without one)."""
    if metadata is None:
        return {}
    found = {split: metadata / split for split in SPLITS if (metadata / split / "image_ids.txt").is_file()}
    if not found:
        raise PrepareError(f"--metadata {metadata}: no <split>/image_ids.txt (expected wsolevaluation's "
                           f"metadata/<DATASET>/ folder)")
    return found


ARCHIVES = {".tar.gz": "tar xzf {} -C {}", ".tgz": "tar xzf {} -C {}", ".tar": "tar xf {} -C {}",
            ".zip": "unzip {} -d {}"}  # name ending -> the command that extracts it beside itself


def _extract_command(path: Path) -> str | None:
    """The command that extracts the archive `path` into its folder; None when the name is no archive's."""
    return next((command.format(path, path.parent) for suffix, command in ARCHIVES.items()
                 if path.name.lower().endswith(suffix)), None)


def _folder(path: Path | None, option: str) -> Path | None:
    """`path` (relative: to the cwd) when it is a folder that is not just archives; else PrepareError."""
    if path is None:
        return None
    entries = sorted(path.iterdir()) if path.is_dir() else [path] if path.exists() else []
    if entries and all(_extract_command(e) for e in entries):
        command = _extract_command(entries[0])
        if entries[0] == path:
            raise PrepareError(f"{option} {path} is an archive: extract it first ({command})")
        if len(entries) == 1:
            raise PrepareError(f"{option} {path} holds only the archive {entries[0]}: extract it first ({command})")
        raise PrepareError(f"{option} {path} holds only archives ({len(entries)}, e.g. {entries[0].name}): extract "
                           f"them first (e.g. {command})")
    if not path.is_dir():
        raise PrepareError(f"{option} {path}: folder not found")
    return path


def _split_plan(split: str, files_from: Path, prefix: str, copied: dict[str, Path],
                generate: Callable[[], list[ImageRecord]]) -> SplitPlan:
    """Copy the split from --metadata when it has it, else generate it from the sources."""
    if split in copied:
        return SplitPlan(files_from, prefix, copy_from=copied[split])
    return SplitPlan(files_from, prefix, lines=metadata_lines(generate()))


def _val_plan(args, copied: dict[str, Path], prefix: str, missing_note: str, notes: list[str]) -> dict[str, SplitPlan]:
    """The val split (CUBV2 or ImageNetV2) from --val-source, with wsolevaluation's val metadata."""
    if args.val_source is None:
        if args.val_metadata is not None or "val" in copied:
            raise PrepareError("the val metadata is given, but its images need --val-source")
        notes.append(missing_note)
        return {}
    val_source = _folder(args.val_source, "--val-source")
    metadata = args.val_metadata or copied.get("val") or val_source
    if not (metadata / "image_ids.txt").is_file():
        raise PrepareError(f"{metadata}: no image_ids.txt; give wsolevaluation's metadata/<DATASET>/val/ folder "
                           f"with --val-metadata")
    return {"val": SplitPlan(val_source, prefix, copy_from=metadata)}


CUB_VAL_MISSING = (f"val not made: wsolevaluation's CUB val is CUBV2 (1,000 images). To add it, get CUBV2.tar (links "
                   f"in {WSOLEVALUATION}, README and dataset/prepare_cub.sh), extract it and rerun with --val-source "
                   f"DIR --val-metadata wsolevaluation/metadata/CUB/val; or hold out train images with "
                   f"--val-from-train K (not the wsolevaluation protocol)")
ILSVRC_VAL_MISSING = ("val not made: wsolevaluation's ILSVRC val is ImageNetV2 threshold0.7 (10,000 images) with its "
                      "own boxes. To add it, extract imagenetv2-threshold0.7.tar.gz (https://huggingface.co/datasets/"
                      "vaishaal/ImageNetV2/resolve/main/imagenetv2-threshold0.7.tar.gz) and rerun with --val-source "
                      f"DIR --val-metadata wsolevaluation/metadata/ILSVRC/val ({WSOLEVALUATION})")


def plan_cub(args, notes: list[str]) -> dict[str, SplitPlan]:
    source = _folder(args.source, "--source")
    images = _folder(source / "images", "--source")
    copied = wsolevaluation_splits(args.metadata)
    if args.val_from_train and (copied or args.val_metadata):
        raise PrepareError("--val-from-train goes with neither --metadata nor --val-metadata")
    records = read_cub(source, notes) if not {"train", "test"} <= copied.keys() else {}
    if not args.val_from_train:
        plans = {split: _split_plan(split, images, "", copied, lambda split=split: records[split])
                 for split in ("train", "test")}
        return plans | _val_plan(args, copied, "", CUB_VAL_MISSING, notes)
    records["train"], records["val"] = hold_out_val(records["train"], args.val_from_train)
    notes.append(f"val holds {args.val_from_train} train images per class, removed from train: NOT the "
                 f"wsolevaluation protocol (its val is CUBV2)")
    return {split: SplitPlan(images, lines=metadata_lines(records[split])) for split in SPLITS}


def plan_ilsvrc(args, notes: list[str]) -> dict[str, SplitPlan]:
    train = _folder(args.train, "--train")
    val = _folder(args.val, "--val")
    annotations = _folder(args.val_annotations, "--val-annotations")
    copied = wsolevaluation_splits(args.metadata)
    for split, folder, option in (("train", train, "--train"), ("test", val, "--val")):
        if split in copied and folder is None:
            raise PrepareError(f"--metadata has a {split} split; its images need {option}")
    if val is not None and "test" not in copied and annotations is None:
        raise PrepareError("--val needs --val-annotations (the ILSVRC 2012 val bounding-box XML files)")
    generated = (train is not None and "train" not in copied) or (val is not None and "test" not in copied)
    classes = ilsvrc_classes(train, args.synsets) if generated else []
    plans = {}
    if train is None:
        notes.append("train not made: give --train (ILSVRC2012_img_train, extracted)")
    else:
        plans["train"] = _split_plan("train", train, "train/", copied,
                                     lambda: read_ilsvrc_train(train, classes, args.train_sizes, notes))
    if val is None:
        notes.append("test not made: give --val (ILSVRC2012_img_val, extracted) and --val-annotations")
    else:
        plans["test"] = _split_plan("test", val, "val/", copied,
                                    lambda: read_ilsvrc_val(val, annotations, classes, notes))
    return plans | _val_plan(args, copied, "val2/", ILSVRC_VAL_MISSING, notes)


def plan_openimages(args, notes: list[str]) -> dict[str, SplitPlan]:
    source = _folder(args.source, "--source")
    copied = wsolevaluation_splits(args.metadata)
    return {split: SplitPlan(source, copy_from=folder) for split, folder in copied.items()}


DATASETS = {"cub": ("CUB", plan_cub), "ilsvrc": ("ILSVRC", plan_ilsvrc), "openimages": ("OpenImages", plan_openimages)}


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog=prog("datasets.prepare"), formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Prepare the WSOL benchmarks in the wsolevaluation format, or check a prepared one.",
        epilog=__doc__.split("\n\n", 1)[1])
    commands = parser.add_subparsers(dest="command", required=True)
    roots = argparse.ArgumentParser(add_help=False)
    roots.add_argument("--data-root", type=Path, default=Path("data"), help="images are at <data-root>/<DATASET>/")
    roots.add_argument("--metadata-root", type=Path, default=Path("data/metadata"),
                       help="metadata is at <metadata-root>/<DATASET>/<split>/")
    roots.add_argument("--skip-size-check", action="store_true",
                       help="do not open the images to compare them with image_sizes.txt")
    roots.add_argument("--verbose", action="store_true",
                       help=f"list every problem (default: a summary by kind when there are more than {SHOWN_PROBLEMS})")
    making = argparse.ArgumentParser(add_help=False, parents=[roots])
    making.add_argument("--copy", action="store_true", help="copy the files instead of symlinking them")

    cub = commands.add_parser("cub", parents=[making], help="CUB-200-2011, with CUBV2 as val")
    cub.add_argument("--source", type=Path, required=True, help="the extracted CUB_200_2011/ folder")
    cub.add_argument("--metadata", type=Path, help="wsolevaluation's metadata/CUB/: copy its splits as they are")
    val = cub.add_mutually_exclusive_group()
    val.add_argument("--val-source", type=Path,
                     help="the folder CUBV2.tar was extracted to (<class folder>/<file>.jpg)")
    val.add_argument("--val-from-train", type=_positive_int, metavar="K",
                     help="hold out K train images per class as val instead (NOT the wsolevaluation protocol)")
    cub.add_argument("--val-metadata", type=Path,
                     help="wsolevaluation's metadata/CUB/val/ (default: --metadata's val, else --val-source)")

    ilsvrc = commands.add_parser("ilsvrc", parents=[making], help="ILSVRC 2012, with ImageNetV2 as val")
    ilsvrc.add_argument("--train", type=Path, help="ILSVRC2012_img_train extracted as <wnid>/<wnid>_<n>.JPEG")
    ilsvrc.add_argument("--val", type=Path, help="ILSVRC2012_img_val extracted flat (ILSVRC2012_val_<n>.JPEG)")
    ilsvrc.add_argument("--val-annotations", type=Path,
                        help="the folder of the val bounding-box files ILSVRC2012_val_<n>.xml")
    ilsvrc.add_argument("--synsets", type=Path,
                        help="the class order: one wnid per line (default: the sorted --train folders)")
    ilsvrc.add_argument("--train-sizes", action="store_true", help="also write train/image_sizes.txt (slow)")
    ilsvrc.add_argument("--metadata", type=Path, help="wsolevaluation's metadata/ILSVRC/: copy its splits as they are")
    ilsvrc.add_argument("--val-source", type=Path,
                        help="the folder imagenetv2-threshold0.7.tar.gz extracts to (<class index>/<file>.jpeg)")
    ilsvrc.add_argument("--val-metadata", type=Path,
                        help="wsolevaluation's metadata/ILSVRC/val/ (default: --metadata's val, else --val-source)")

    openimages = commands.add_parser("openimages", parents=[making], help="OpenImages30k (wsolevaluation's release)")
    openimages.add_argument("--source", type=Path, required=True,
                            help="the folder OpenImages_images.zip and OpenImages_annotations.zip were extracted to")
    openimages.add_argument("--metadata", type=Path, required=True, help="wsolevaluation's metadata/OpenImages/")

    check = commands.add_parser("check", parents=[roots], help="validate a prepared data set and count it")
    check.add_argument("--dataset", required=True, help="CUB, ILSVRC, OpenImages, SYNTHETIC, ...")
    check.add_argument("--split", choices=SPLITS, help="only this split (default: all three)")
    check.add_argument("--decode", action="store_true",
                       help="decode every image and mask in full (finds truncated files; slower)")

    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            report = check_dataset(args.dataset, args.data_root, args.metadata_root,
                                   (args.split,) if args.split else SPLITS, not args.skip_size_check, args.decode)
        else:
            dataset, plan = DATASETS[args.command]
            notes: list[str] = []
            report = prepare(dataset, plan(args, notes), args.data_root, args.metadata_root, args.copy,
                             not args.skip_size_check, notes)
    except MetadataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report.format(verbose=args.verbose))
    return 1 if report.problems else 0


if __name__ == "__main__":
    sys.exit(main())
