"""SYNTHETIC: the embedded, deterministic WSOL benchmark (written in the wsolevaluation format).

What it models
--------------
Every object is a textured BODY carrying a small PART. The part is strongly class-discriminative,
the body only weakly so; the ground-truth box covers the whole object (body + part). A classifier
trained with image-level labels can reach full accuracy from the part alone, so a plain CAM is
expected to concentrate on the part. That is the failure mode ACoL (adversarial complementary
learning) targets. Nothing here is tuned so that a particular method wins; the generator was
written before any model was trained on it.

- Classes. There are K classes (default 8, at most 56). Class c uses body type
  b(c) = min(c // 2, K // 2 - 1). Classes 2k and 2k+1 therefore share body type k; when K is odd,
  the last class joins the last pair. Each body type is shared by at least two classes. Class c's
  part is the symbol (PART_SHAPES[c % 8], PART_COLOURS[(c + c // 8) % 7]), and no other class has
  the same shape-colour pair. The two classes of a pair differ in both shape and colour. The class
  definitions depend only on c and K, not on the seed; `describe(spec)` lists them.
- Body. A wobbly ellipse. Its major diameter is 35-70% of the image side (28-38% in two-object
  images), its minor/major aspect ratio is 0.55-1, and its rotation and position are uniformly
  random. The whole object always lies inside the image. The body texture is drawn in the body's own
  frame and scales with the body. Each body type has a fixed family (stripes, checker, dots, rings
  or waves), a number of cycles, a pattern angle and a two-colour palette of muted colours. Every
  image jitters these: hue +-0.03, saturation and value +-0.08, angle +-12 degrees, cycles +-10%,
  plus a random phase. The body also gets radial shading. A body narrows the label down to its
  group of classes. It never identifies the class: for the same random stream, two classes that
  share a body type render the same image except inside the part's disk (tests/test_synthetic.py
  checks this pixel by pixel).
- Part. A saturated symbol drawn over the body: circle, square, triangle, diamond, plus, x-cross,
  star or ring. Its rotation jitters by +-15 degrees, its colour by about 0.05 per channel, and it
  has a thin darker rim of its own colour. Its diameter is 18-26% of the body's major diameter,
  with a floor of 9% of the image side (and of 3 px): 4-12 px wide at 64 px. Symbols are
  rasterised by coverage (4x4 supersampling), so a small part keeps its true area. The part covers
  about 3.5% of the GT box on average (at most about 9%) in one-object images. It covers about 5%
  (at most about 15%) in two-object images, whose smaller bodies make the floor matter. Its centre
  sits at a random angle, 35-100% of the way from the body centre to the body border, so
  some parts lie inside the body and some straddle the border.
- Background. All of it is independent of the class. It has:
  - a two-colour linear gradient;
  - low-frequency colour noise and fine grain noise;
  - 0-2 distractor blobs of body size (ellipses filled with cloud noise or a flat colour; never
    a body texture family);
  - 2-5 random polygons in random colours;
  - 2-6 random strokes;
  - 0-2 decoy symbols that use a part shape in a muted colour. A decoy never reproduces a class's
    shape-colour pair, so shape alone is not evidence.
  Objects are drawn over the clutter, so nothing occludes an object. Each image then gets global
  brightness, per-channel gain and offset jitter, and Gaussian pixel noise.
- Two-object images. In each split and class, round(multi_object_fraction * n) images (rounded
  half up), chosen at random, hold two objects of the same class with disjoint boxes. This follows
  ILSVRC, where one image can have several boxes.
- Ground truth. There is one box per object: `x0,y0,x1,y1`, inclusive pixel coordinates, tight
  around the object's foreground (body plus part). For a one-object image this is exactly the
  extent of the mask. Each image also has a foreground mask, the union of its objects, as 0/255.
  The part boxes (`part_localization.txt`) are written as well, for part-versus-body analyses.

Files (wsolevaluation's metadata format; paths are relative to `<data_root>/SYNTHETIC/`)
------------------------------------------------------------------
    <data_root>/SYNTHETIC/<split>/<class:03d>/<index:05d>.png        RGB image
    <data_root>/SYNTHETIC/<split>/<class:03d>/<index:05d>_mask.png   uint8 0/255 foreground
    <data_root>/SYNTHETIC/spec.json                                  written last; the cache key
    <metadata_root>/SYNTHETIC/<split>/image_ids.txt          path
                                     class_labels.txt        path,label
                                     image_sizes.txt         path,W,H
                                     localization.txt        path,x0,y0,x1,y1 (one line per box)
                                     mask_localization.txt   path,mask.png,   (empty ignore field)
                                     part_localization.txt   path,x0,y0,x1,y1 (one line per part)
The splits are `train` (weak labels, but the boxes are written as well), `val` (small, for
hyperparameters) and `test` (reported).

Determinism: each image has its own RNG, seeded from (seed, split, class, index) through
`np.random.SeedSequence`. The same spec therefore gives byte-identical files whatever the order of
generation, given the same numpy and OpenCV builds.
"""
from __future__ import annotations

import argparse
import colorsys
import dataclasses
import functools
import hashlib
import json
import math
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

GENERATOR_VERSION = 1   # bump when the drawing code changes; invalidates caches

DATASET_NAME = "SYNTHETIC"
SPLITS = ("train", "val", "test")
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_TAG_IMAGE, _TAG_MULTI = 1, 2          # SeedSequence domain tags (image RNG vs. multi-object selection)
METADATA_FILES = ("image_ids.txt", "class_labels.txt", "image_sizes.txt", "localization.txt",
                  "mask_localization.txt", "part_localization.txt")

PART_SHAPES = ("circle", "square", "triangle", "diamond", "plus", "cross", "star", "ring")
PART_COLOURS = {                       # saturated palette; no other drawing uses these exactly
    "red": (1.00, 0.12, 0.10),
    "orange": (1.00, 0.55, 0.00),
    "yellow": (1.00, 0.95, 0.10),
    "green": (0.10, 0.85, 0.15),
    "cyan": (0.00, 0.90, 0.95),
    "blue": (0.15, 0.30, 1.00),
    "magenta": (0.95, 0.10, 0.90),
}
_PART_COLOUR_NAMES = tuple(PART_COLOURS)
BODY_TEXTURES = ("stripes", "checker", "dots", "rings", "waves")
MAX_CLASSES = len(PART_SHAPES) * len(PART_COLOURS)    # 56; unique pairs since gcd(8 + 1, 7) == 1

_SINGLE_SCALE = (0.35, 0.70)     # body major diameter / image side
_MULTI_SCALE = (0.28, 0.38)
_ASPECT = (0.55, 1.0)            # minor / major
_PART_FRAC = (0.18, 0.26)        # part diameter / body major diameter
_PART_MIN_FRAC = 0.09            # part diameter floor / image side
_PART_MIN_PX = 3.0               # and in pixels
_PART_RADIAL = (0.35, 1.0)       # part centre: fraction of the way from body centre to border


# --------------------------------------------------------------------------------------------
# Spec
# --------------------------------------------------------------------------------------------
@dataclass
class SyntheticSpec:
    """The generator's parameters; also the `[data.synthetic]` table of the experiment config."""
    num_classes: int = 8
    image_size: int = 64
    train_per_class: int = 150
    val_per_class: int = 25
    test_per_class: int = 50
    multi_object_fraction: float = 0.1
    seed: int = 0

    def __post_init__(self):
        validate_spec(self)

    def per_class(self, split: str) -> int:
        return {"train": self.train_per_class, "val": self.val_per_class, "test": self.test_per_class}[split]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def validate_spec(spec: SyntheticSpec) -> None:
    """Raise ValueError naming the offending field."""
    for name in ("num_classes", "image_size", "train_per_class", "val_per_class", "test_per_class", "seed"):
        if not _is_int(getattr(spec, name)):
            raise ValueError(f"SyntheticSpec.{name} must be an integer, got {getattr(spec, name)!r}")
    if not 2 <= spec.num_classes <= MAX_CLASSES:
        raise ValueError(f"SyntheticSpec.num_classes must be in [2, {MAX_CLASSES}], got {spec.num_classes}")
    if spec.image_size < 32:
        raise ValueError(f"SyntheticSpec.image_size must be >= 32, got {spec.image_size}")
    for name in ("train_per_class", "val_per_class", "test_per_class"):
        if getattr(spec, name) < 1:
            raise ValueError(f"SyntheticSpec.{name} must be >= 1, got {getattr(spec, name)}")
    f = spec.multi_object_fraction
    if isinstance(f, bool) or not isinstance(f, (int, float, np.integer, np.floating)) or not 0.0 <= f <= 1.0:
        raise ValueError(f"SyntheticSpec.multi_object_fraction must be a number in [0, 1], got {f!r}")
    if spec.seed < 0:
        raise ValueError(f"SyntheticSpec.seed must be >= 0, got {spec.seed}")


# --------------------------------------------------------------------------------------------
# Class definitions
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class BodyType:
    index: int
    texture: str                         # one of BODY_TEXTURES
    cycles: float                        # pattern cycles per body semi-major axis
    angle: float                         # pattern angle in the body frame, degrees
    hsv_a: tuple[float, float, float]    # the two palette colours (HSV in [0, 1])
    hsv_b: tuple[float, float, float]


@dataclass(frozen=True)
class ClassDef:
    label: int
    body_type: int
    part_shape: str
    part_colour: str


def body_type_of(label: int, num_classes: int) -> int:
    return min(label // 2, num_classes // 2 - 1)


@functools.lru_cache(maxsize=None)
def body_type(index: int) -> BodyType:
    """The fixed appearance of body type `index` (independent of the seed)."""
    texture = BODY_TEXTURES[index % len(BODY_TEXTURES)]
    rnd = index // len(BODY_TEXTURES)
    cycles = (2.0, 2.6, 1.6, 2.3)[(index + rnd) % 4]
    angle = (20.0, 80.0, 140.0, 50.0, 110.0, 170.0)[(index + 2 * rnd) % 6]
    hue = (0.07 + index * 0.381966) % 1.0        # golden-angle hues
    hsv_a = (hue, 0.45, 0.80)
    hsv_b = ((hue + 0.10) % 1.0, 0.60, 0.38)
    return BodyType(index, texture, cycles, angle, hsv_a, hsv_b)


def class_definitions(num_classes: int) -> list[ClassDef]:
    return list(_class_definitions(num_classes))


@functools.lru_cache(maxsize=None)
def _class_definitions(num_classes: int) -> tuple[ClassDef, ...]:
    if not 2 <= num_classes <= MAX_CLASSES:
        raise ValueError(f"num_classes must be in [2, {MAX_CLASSES}], got {num_classes}")
    n_s, n_c = len(PART_SHAPES), len(PART_COLOURS)
    return tuple(ClassDef(c, body_type_of(c, num_classes), PART_SHAPES[c % n_s],
                          _PART_COLOUR_NAMES[(c + c // n_s) % n_c]) for c in range(num_classes))


_HUE_NAMES = ((0.0, "red"), (0.06, "orange"), (0.13, "yellow"), (0.22, "lime"), (0.33, "green"),
              (0.45, "teal"), (0.5, "cyan"), (0.58, "azure"), (0.66, "blue"), (0.75, "violet"),
              (0.83, "magenta"), (0.92, "rose"), (1.0, "red"))


def _hue_name(h: float) -> str:
    return min(_HUE_NAMES, key=lambda t: abs(t[0] - h))[1]


def describe(spec: SyntheticSpec | None = None) -> str:
    """A short human description of the classes (for the README and logs)."""
    spec = spec or SyntheticSpec()
    defs = class_definitions(spec.num_classes)
    lines = [
        f"SYNTHETIC v{GENERATOR_VERSION}: {spec.num_classes} classes, {spec.image_size}x{spec.image_size} px, "
        f"{spec.train_per_class}/{spec.val_per_class}/{spec.test_per_class} images per class (train/val/test), "
        f"{spec.multi_object_fraction:.0%} two-object images, seed {spec.seed}.",
        "Each object = a textured body (weak evidence: shared by a group of classes) + a small part "
        "(strong evidence: unique to the class). GT box = body + part.",
        "Body types:",
    ]
    for b in sorted({d.body_type for d in defs}):
        bt = body_type(b)
        members = ", ".join(str(d.label) for d in defs if d.body_type == b)
        lines.append(f"  body {b}: {_hue_name(bt.hsv_a[0])}/dark-{_hue_name(bt.hsv_b[0])} {bt.texture} "
                     f"({bt.cycles:g} cycles, {bt.angle:g} deg) -> classes {members}")
    lines.append("Classes:")
    for d in defs:
        lines.append(f"  class {d.label:3d}: {d.part_colour} {d.part_shape} part on body {d.body_type} "
                     f"({body_type(d.body_type).texture})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Drawing helpers
# --------------------------------------------------------------------------------------------
_SHIFT = 4                      # cv2 fixed-point bits for sub-pixel polygon vertices
_SS = 4                         # supersampling factor of part and decoy symbols
_ONE = 1 << _SHIFT


def _fill(mask: np.ndarray, pts: np.ndarray, value=1) -> None:
    cv2.fillPoly(mask, [np.round(pts * _ONE).astype(np.int32).reshape(-1, 1, 2)], value,
                 lineType=cv2.LINE_8, shift=_SHIFT)


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)), np.float32)


def _rot(theta: float) -> np.ndarray:
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, -s], [s, c]])


def _shape_polys(shape: str, cx: float, cy: float, r: float, theta: float) -> tuple[list, list]:
    """(filled polygons, hole polygons) of a symbol with circumradius r, rotated by theta."""
    def circle(rad, n=24):
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([rad * np.cos(t), rad * np.sin(t)], 1)

    def regular(n, rad, phase):
        t = phase + np.linspace(0, 2 * np.pi, n, endpoint=False)
        return np.stack([rad * np.cos(t), rad * np.sin(t)], 1)

    w = 0.38 * r   # half arm width of plus / cross
    plus = np.array([[-w, -r], [w, -r], [w, -w], [r, -w], [r, w], [w, w], [w, r], [-w, r], [-w, w],
                     [-r, w], [-r, -w], [-w, -w]]) * (1.0 / math.hypot(1.0, 0.38))
    holes = []
    if shape == "circle":
        polys = [circle(r)]
    elif shape == "square":
        polys = [regular(4, r, np.pi / 4)]
    elif shape == "triangle":
        polys = [regular(3, r, -np.pi / 2)]
    elif shape == "diamond":
        polys = [regular(4, r, 0.0) * np.array([0.75, 1.0])]
    elif shape == "plus":
        polys = [plus]
    elif shape == "cross":
        polys = [plus @ _rot(np.pi / 4).T]
    elif shape == "star":
        t = -np.pi / 2 + np.linspace(0, 2 * np.pi, 10, endpoint=False)
        rad = np.where(np.arange(10) % 2 == 0, r, 0.45 * r)
        polys = [np.stack([rad * np.cos(t), rad * np.sin(t)], 1)]
    elif shape == "ring":
        polys, holes = [circle(r)], [circle(0.5 * r)]
    else:
        raise ValueError(f"unknown part shape {shape!r}")
    R = _rot(theta)
    off = np.array([cx, cy])
    return [p @ R.T + off for p in polys], [p @ R.T + off for p in holes]


def _symbol_mask(shape: str, size: tuple[int, int], cx, cy, r, theta) -> np.ndarray:
    """0/1 uint8 mask of a symbol on an (h, w) grid.

    A pixel belongs to the symbol when at least half of it is covered (4x4 supersampling), so small
    symbols keep their true area and shape instead of growing by a rasterised outline.
    """
    h, w = size
    mask = np.zeros(size, np.uint8)
    x0, x1 = max(math.floor(cx - r) - 1, 0), min(math.ceil(cx + r) + 2, w)
    y0, y1 = max(math.floor(cy - r) - 1, 0), min(math.ceil(cy + r) + 2, h)
    if x1 <= x0 or y1 <= y0:
        return mask
    sub = np.zeros(((y1 - y0) * _SS, (x1 - x0) * _SS), np.uint8)
    polys, holes = _shape_polys(shape, cx - x0, cy - y0, r, theta)
    for p in polys:
        _fill(sub, (p + 0.5) * _SS - 0.5, 255)
    for p in holes:
        _fill(sub, (p + 0.5) * _SS - 0.5, 0)
    cover = cv2.resize(sub, (x1 - x0, y1 - y0), interpolation=cv2.INTER_AREA)
    mask[y0:y1, x0:x1] = cover >= 128
    return mask


def _extent(mask: np.ndarray) -> tuple[int, int, int, int]:
    ys = np.flatnonzero(mask.any(1))
    xs = np.flatnonzero(mask.any(0))
    return int(xs[0]), int(ys[0]), int(xs[-1]), int(ys[-1])


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cells: int, channels: int) -> np.ndarray:
    grid = rng.random((cells, cells, channels)).astype(np.float32)
    out = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)
    return out.reshape(h, w, channels)


def _paint(img: np.ndarray, mask: np.ndarray, colour: np.ndarray) -> None:
    img[mask.astype(bool)] = colour


# --------------------------------------------------------------------------------------------
# Background and clutter (all class-agnostic)
# --------------------------------------------------------------------------------------------
def _background(rng: np.random.Generator, S: int) -> np.ndarray:
    c0 = _hsv(rng.random(), rng.uniform(0.05, 0.5), rng.uniform(0.25, 0.85))
    c1 = _hsv(rng.random(), rng.uniform(0.05, 0.5), rng.uniform(0.25, 0.85))
    phi = rng.uniform(0, 2 * np.pi)
    yy, xx = _unit_grid(S)
    t = (xx - 0.5) * math.cos(phi) + (yy - 0.5) * math.sin(phi)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    cells = int(rng.integers(3, 7))
    img += (_smooth_noise(rng, S, S, cells, 3) - 0.5) * np.float32(rng.uniform(0.2, 0.5))
    img += rng.standard_normal((S, S, 3), dtype=np.float32) * np.float32(rng.uniform(0.02, 0.06))
    return img


@functools.lru_cache(maxsize=8)
def _unit_grid(S: int) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:S, 0:S].astype(np.float32) / np.float32(S - 1)
    return yy, xx


def _random_polygon(rng, cx, cy, rad) -> np.ndarray:
    n = int(rng.integers(4, 8))
    t = np.sort(rng.uniform(0, 2 * np.pi, n))
    rr = rad * rng.uniform(0.5, 1.0, n)
    return np.stack([cx + rr * np.cos(t), cy + rr * np.sin(t)], 1)


def _clutter(rng: np.random.Generator, img: np.ndarray) -> None:
    S = img.shape[0]
    # distractor blobs: body-sized ellipses without any body texture family
    for _ in range(int(rng.integers(0, 3))):
        d = rng.uniform(0.2, 0.5) * S
        a, b = d / 2, d / 2 * rng.uniform(0.5, 1.0)
        th = rng.uniform(0, np.pi)
        t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
        pts = np.stack([a * np.cos(t), b * np.sin(t)], 1) @ _rot(th).T + rng.uniform(0, S, 2)
        m = np.zeros((S, S), np.uint8)
        _fill(m, pts)
        ca = _hsv(rng.random(), rng.uniform(0.1, 0.7), rng.uniform(0.3, 0.9))
        cb = _hsv(rng.random(), rng.uniform(0.1, 0.7), rng.uniform(0.2, 0.8))
        sel = m.astype(bool)
        if rng.random() < 0.5:     # cloud texture: two colours mixed by smooth noise
            mix = _smooth_noise(rng, S, S, int(rng.integers(3, 6)), 1)[sel]
        else:                      # flat colour
            mix = np.float32(0.25 * rng.random())
        img[sel] = ca + (cb - ca) * mix
    # random polygons in random colours
    for _ in range(int(rng.integers(2, 6))):
        pts = _random_polygon(rng, *rng.uniform(0, S, 2), rng.uniform(0.04, 0.12) * S)
        _fill(img, pts, _hsv(rng.random(), rng.random(), rng.uniform(0.2, 1.0)).tolist())
    # random strokes
    for _ in range(int(rng.integers(2, 7))):
        n = int(rng.integers(2, 4))
        pts = np.round(rng.uniform(-0.1 * S, 1.1 * S, (n, 2)) * _ONE).astype(np.int32)
        colour = _hsv(rng.random(), rng.random(), rng.random())
        thick = int(rng.integers(1, 3))
        cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, colour.tolist(), thick, cv2.LINE_8, _SHIFT)
    # decoys: part shapes in muted colours (never a class's saturated part colour)
    for _ in range(int(rng.integers(0, 3))):
        shape = PART_SHAPES[int(rng.integers(len(PART_SHAPES)))]
        r = rng.uniform(0.04, 0.09) * S
        cx, cy = rng.uniform(0, S, 2)
        m = _symbol_mask(shape, (S, S), cx, cy, r, rng.uniform(-np.pi / 12, np.pi / 12))
        _paint(img, m, _hsv(rng.random(), rng.uniform(0.0, 0.35), rng.uniform(0.15, 0.95)))


# --------------------------------------------------------------------------------------------
# Objects
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectRecord:
    """What the generator drew for one object (coordinates inclusive, in image pixels)."""
    label: int
    body_type: int
    part_shape: str
    part_colour: str
    box: tuple[int, int, int, int]         # tight around body + part (the GT box)
    part_box: tuple[int, int, int, int]    # tight around the part
    part_disk: tuple[float, float, float]  # (cx, cy, r): the part's bounding disk
    body_area: int                         # visible body pixels (body minus part)
    part_area: int                         # part pixels

    @property
    def box_area(self) -> int:
        x0, y0, x1, y1 = self.box
        return (x1 - x0 + 1) * (y1 - y0 + 1)


@dataclass
class Rendered:
    image: np.ndarray                      # H x W x 3 uint8, RGB
    mask: np.ndarray                       # H x W uint8, 0 / 255 (union of the objects)
    objects: list[ObjectRecord]


@dataclass
class _Geometry:
    """Class-independent geometry of one object in a 2S x 2S local canvas."""
    body_pts: np.ndarray
    centre: np.ndarray
    a: float
    b: float
    theta: float
    part_c: np.ndarray
    part_r: float
    part_rot: float
    extent: tuple[int, int, int, int]      # conservative: body mask + part disk, local canvas
    body: np.ndarray                       # body mask (bool) cropped to `extent`


def _object_geometry(rng: np.random.Generator, S: int, scale_range) -> _Geometry:
    L = 2 * S
    D = rng.uniform(*scale_range) * S
    a = D / 2
    b = a * rng.uniform(*_ASPECT)
    theta = rng.uniform(0, np.pi)
    w1, w2 = rng.uniform(0, 0.08, 2)
    p1, p2 = rng.uniform(0, 2 * np.pi, 2)
    phi = rng.uniform(0, 2 * np.pi)
    rho = rng.uniform(*_PART_RADIAL)
    part_d = max(rng.uniform(*_PART_FRAC) * D, _PART_MIN_FRAC * S, _PART_MIN_PX)
    part_rot = rng.uniform(-np.pi / 12, np.pi / 12)

    def wobble(t):
        return 1 + w1 * np.sin(2 * t + p1) + w2 * np.sin(3 * t + p2)

    t = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    R = _rot(theta)
    centre = np.array([S, S], float)
    body_pts = np.stack([a * wobble(t) * np.cos(t), b * wobble(t) * np.sin(t)], 1) @ R.T + centre
    edge = np.array([a * wobble(phi) * math.cos(phi), b * wobble(phi) * math.sin(phi)])
    part_c = rho * edge @ R.T + centre
    m = np.zeros((L, L), np.uint8)
    _fill(m, body_pts)
    body = m.copy()
    cv2.circle(m, tuple(int(v) for v in np.round(part_c * _ONE)), int(math.ceil(part_d / 2 * _ONE)), 1, -1,
               cv2.LINE_8, _SHIFT)
    x0, y0, x1, y1 = ext = _extent(m)
    return _Geometry(body_pts, centre, a, b, theta, part_c, part_d / 2, part_rot, ext,
                     body[y0:y1 + 1, x0:x1 + 1].astype(bool))


def _place(rng: np.random.Generator, S: int, geoms: list[_Geometry]) -> list[tuple[int, int]]:
    """Integer offsets (local canvas -> image) keeping every object inside, boxes disjoint."""
    def sample(g):
        x0, y0, x1, y1 = g.extent
        return (int(rng.integers(0, S - (x1 - x0))) - x0, int(rng.integers(0, S - (y1 - y0))) - y0)

    def box(g, off):
        x0, y0, x1, y1 = g.extent
        return x0 + off[0], y0 + off[1], x1 + off[0], y1 + off[1]

    def disjoint(p, q):     # no shared pixel
        return p[2] < q[0] or q[2] < p[0] or p[3] < q[1] or q[3] < p[1]

    offsets = [sample(geoms[0])]
    for g in geoms[1:]:
        for _ in range(200):
            off = sample(g)
            if all(disjoint(box(g, off), box(h, o)) for h, o in zip(geoms, offsets)):
                break
        else:   # deterministic fallback: the two objects side by side along the longer free axis
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = geoms[0].extent, g.extent
            wa, ha, wb, hb = ax1 - ax0 + 1, ay1 - ay0 + 1, bx1 - bx0 + 1, by1 - by0 + 1
            if wa + wb <= S:
                offsets[0] = (-ax0, int(rng.integers(0, S - ha + 1)) - ay0)
                off = (S - wb - bx0, int(rng.integers(0, S - hb + 1)) - by0)
            else:
                offsets[0] = (int(rng.integers(0, S - wa + 1)) - ax0, -ay0)
                off = (int(rng.integers(0, S - wb + 1)) - bx0, S - hb - by0)
        offsets.append(off)
    return offsets


def _body_texture(rng: np.random.Generator, bt: BodyType, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Texture value in [0, 1] at body-frame coordinates (u, v) normalised by the semi-major axis."""
    n = bt.cycles * rng.uniform(0.9, 1.1)
    alpha = math.radians(bt.angle + rng.uniform(-12, 12))
    ph1, ph2 = rng.uniform(0, 2 * np.pi, 2)
    s1 = u * math.cos(alpha) + v * math.sin(alpha)
    s2 = -u * math.sin(alpha) + v * math.cos(alpha)
    tau = 2 * np.pi
    if bt.texture == "stripes":
        t = 0.5 + 0.5 * np.sin(tau * n * s1 + ph1)
    elif bt.texture == "checker":
        t = 0.5 + 0.5 * np.tanh(3.0 * np.sin(tau * n * s1 + ph1) * np.sin(tau * n * s2 + ph2))
    elif bt.texture == "dots":
        fx = np.mod(n * 1.3 * s1 + ph1 / tau, 1.0) - 0.5
        fy = np.mod(n * 1.3 * s2 + ph2 / tau, 1.0) - 0.5
        t = np.clip((0.3 - np.hypot(fx, fy)) / 0.08 + 0.5, 0.0, 1.0)
    elif bt.texture == "rings":
        t = 0.5 + 0.5 * np.sin(tau * n * np.hypot(u, v) + ph1)
    elif bt.texture == "waves":
        t = 0.5 + 0.5 * np.sin(tau * n * (s1 + 0.15 * np.sin(tau * 1.2 * s2 + ph2)) + ph1)
    else:
        raise ValueError(f"unknown body texture {bt.texture!r}")
    return t


def _jitter_hsv(rng, hsv) -> np.ndarray:
    dh, ds, dv = rng.uniform(-0.03, 0.03), rng.uniform(-0.08, 0.08), rng.uniform(-0.08, 0.08)
    return _hsv(hsv[0] + dh, hsv[1] + ds, hsv[2] + dv)


def _draw_object(rng, img, mask, cdef: ClassDef, g: _Geometry, off) -> ObjectRecord:
    ox, oy = off
    lx0, ly0, lx1, ly1 = g.extent
    iwin = (slice(ly0 + oy, ly1 + oy + 1), slice(lx0 + ox, lx1 + ox + 1))
    body = g.body

    # body texture in the body frame (scales and rotates with the body)
    yy, xx = np.mgrid[ly0:ly1 + 1, lx0:lx1 + 1].astype(np.float64)
    dx, dy = xx - g.centre[0], yy - g.centre[1]
    c, s = math.cos(g.theta), math.sin(g.theta)
    u = (dx * c + dy * s) / g.a
    v = (-dx * s + dy * c) / g.a
    bt = body_type(cdef.body_type)
    col_a, col_b = _jitter_hsv(rng, bt.hsv_a), _jitter_hsv(rng, bt.hsv_b)
    t = _body_texture(rng, bt, u, v)[..., None]
    shade = 1.0 - 0.3 * np.clip(np.hypot(u, v * g.a / g.b), 0, 1)[..., None] ** 2
    body_rgb = ((col_a * (1 - t) + col_b * t) * shade).astype(np.float32)

    # part: a fixed number of draws whatever the class (see the pixel-equality test)
    part_col = np.clip(np.array(PART_COLOURS[cdef.part_colour]) + rng.normal(0, 0.05, 3), 0, 1).astype(np.float32)
    part = _symbol_mask(cdef.part_shape, body.shape, g.part_c[0] - lx0, g.part_c[1] - ly0, g.part_r, g.part_rot)
    inner = cv2.erode(part, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT, borderValue=0)
    if not part.any():                      # degenerate (never seen): keep the centre pixel
        part[int(round(g.part_c[1])) - ly0, int(round(g.part_c[0])) - lx0] = 1
    part, inner = part.astype(bool), inner.astype(bool)
    if inner.sum() < 0.4 * part.sum():      # too small for a rim
        inner = part

    region = img[iwin]
    region[body] = body_rgb[body]
    region[part] = part_col * 0.45          # darker rim of the same colour
    region[inner] = part_col
    obj = body | part
    mask[iwin][obj] = 255

    def to_img(e):
        return e[0] + lx0 + ox, e[1] + ly0 + oy, e[2] + lx0 + ox, e[3] + ly0 + oy

    return ObjectRecord(
        label=cdef.label, body_type=cdef.body_type, part_shape=cdef.part_shape, part_colour=cdef.part_colour,
        box=to_img(_extent(obj)), part_box=to_img(_extent(part)),
        part_disk=(float(g.part_c[0] + ox), float(g.part_c[1] + oy), float(g.part_r)),
        body_area=int((body & ~part).sum()), part_area=int(part.sum()))


def render_from_rng(rng: np.random.Generator, image_size: int, label: int, num_objects: int,
                    num_classes: int) -> Rendered:
    """Draw one image with `num_objects` (1 or 2) objects of class `label`.

    The number and order of random draws do not depend on `label`: the label only selects the body
    type's palette and texture and the part's symbol. Two classes sharing a body type therefore give
    the same image from the same stream, except inside the parts.
    """
    if num_objects not in (1, 2):
        raise ValueError(f"num_objects must be 1 or 2, got {num_objects}")
    S = image_size
    cdef = class_definitions(num_classes)[label]
    img = _background(rng, S)
    _clutter(rng, img)
    scale = _SINGLE_SCALE if num_objects == 1 else _MULTI_SCALE
    geoms = [_object_geometry(rng, S, scale) for _ in range(num_objects)]
    offsets = _place(rng, S, geoms)
    mask = np.zeros((S, S), np.uint8)
    objects = [_draw_object(rng, img, mask, cdef, g, o) for g, o in zip(geoms, offsets)]
    # global photometric jitter
    gain = (rng.uniform(0.8, 1.15) * rng.uniform(0.92, 1.08, 3)).astype(np.float32)
    img = img * gain + rng.uniform(-0.05, 0.05, 3).astype(np.float32)
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(rng.uniform(0.01, 0.03))
    image = np.clip(np.round(img * np.float32(255.0)), 0, 255).astype(np.uint8)
    objects.sort(key=lambda o: o.box)
    return Rendered(image, mask, objects)


def _image_rng(spec: SyntheticSpec, split: str, label: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([spec.seed, _TAG_IMAGE, _SPLIT_IDS[split], label, index]))


def multi_object_indices(spec: SyntheticSpec, split: str, label: int) -> set[int]:
    """Which indices of (split, class) hold two objects: round(fraction * n) of them, at random."""
    n = spec.per_class(split)
    k = int(math.floor(spec.multi_object_fraction * n + 0.5))
    rng = np.random.default_rng(np.random.SeedSequence([spec.seed, _TAG_MULTI, _SPLIT_IDS[split], label]))
    return {int(i) for i in rng.permutation(n)[:k]}


def render_image(spec: SyntheticSpec, split: str, label: int, index: int) -> Rendered:
    """The image (split, class, index) exactly as `generate` writes it."""
    if split not in _SPLIT_IDS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    n_obj = 2 if index in multi_object_indices(spec, split, label) else 1
    return render_from_rng(_image_rng(spec, split, label, index), spec.image_size, label, n_obj, spec.num_classes)


def image_path(split: str, label: int, index: int) -> str:
    return f"{split}/{label:03d}/{index:05d}.png"


# --------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------
def _write_png(path: Path, array: np.ndarray) -> None:
    if array.ndim == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", array, [cv2.IMWRITE_PNG_COMPRESSION, 1])
    if not ok:
        raise OSError(f"cv2 could not encode {path}")
    path.write_bytes(buf.tobytes())


def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines))


def _render_unit(spec: SyntheticSpec, split: str, label: int, data_dir: str) -> tuple[list[list[str]], int]:
    """Render and write all images of one (split, class); return its metadata lines and multi count."""
    out = Path(data_dir)
    (out / split / f"{label:03d}").mkdir(parents=True, exist_ok=True)
    multi = multi_object_indices(spec, split, label)
    ids, labels, sizes, boxes, masks, parts = [], [], [], [], [], []
    for i in range(spec.per_class(split)):
        r = render_from_rng(_image_rng(spec, split, label, i), spec.image_size, label, 2 if i in multi else 1,
                            spec.num_classes)
        path = image_path(split, label, i)
        mask_path = path[:-4] + "_mask.png"
        _write_png(out / path, r.image)
        _write_png(out / mask_path, r.mask)
        ids.append(path)
        labels.append(f"{path},{label}")
        sizes.append(f"{path},{spec.image_size},{spec.image_size}")
        boxes += [f"{path},{o.box[0]},{o.box[1]},{o.box[2]},{o.box[3]}" for o in r.objects]
        parts += [f"{path},{b[0]},{b[1]},{b[2]},{b[3]}" for b in sorted(o.part_box for o in r.objects)]
        masks.append(f"{path},{mask_path},")
    return [ids, labels, sizes, boxes, masks, parts], len(multi)


def _auto_workers(spec: SyntheticSpec) -> int:
    total = spec.num_classes * (spec.train_per_class + spec.val_per_class + spec.test_per_class)
    if total < 1000 or not sys.executable:
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, min(cores, 8))


def _worker() -> None:
    """Entry point of a rendering subprocess: JSON job on stdin, JSON results on stdout."""
    job = json.loads(sys.stdin.read())
    spec = SyntheticSpec(**job["spec"])
    results = [_render_unit(spec, split, label, job["data_dir"]) for split, label in job["units"]]
    sys.stdout.write(json.dumps(results))


def _run_workers(spec: SyntheticSpec, units: list, data_dir: str, workers: int) -> list:
    """Render `units` in `workers` fresh interpreters that import only this module.

    They are plain subprocesses, not multiprocessing: spawn would re-import the caller's __main__
    (e.g. acol.train, so torch), and fork is unsafe after torch/OpenMP threads have started.
    """
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])           # the folder holding the acol package
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    cmd = [sys.executable, "-c", "from acol.datasets.synthetic import _worker; _worker()"]
    chunks = [list(range(w, len(units), workers)) for w in range(workers)]
    procs = []
    try:
        for chunk in chunks:
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")   # files: no pipe deadlocks
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=out, stderr=err, env=env, text=True)
            procs.append((p, out, err))
            job = {"spec": spec.to_dict(), "data_dir": data_dir, "units": [units[i][1:3] for i in chunk]}
            try:
                p.stdin.write(json.dumps(job))
                p.stdin.close()
            except BrokenPipeError:     # the worker died at start-up; its stderr is reported below
                pass
        results: list = [None] * len(units)
        for (p, out, err), chunk in zip(procs, chunks):
            if p.wait() != 0:
                err.seek(0)
                raise RuntimeError(f"synthetic rendering worker failed (exit {p.returncode}):\n{err.read()[-3000:]}")
            out.seek(0)
            for i, (lines, multi) in zip(chunk, json.loads(out.read())):
                results[i] = (lines, multi)
        return results
    finally:
        for p, out, err in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
            out.close()
            err.close()


def _write_dataset(spec: SyntheticSpec, data_dir: Path, meta_dir: Path, workers: int | None = None) -> dict:
    """Render every split into data_dir (images) and meta_dir (metadata). Returns a summary.

    workers > 1 renders (split, class) units in subprocesses; the files do not depend on it.
    """
    workers = _auto_workers(spec) if workers is None else workers
    units = [(spec, split, c, str(data_dir)) for split in SPLITS for c in range(spec.num_classes)]
    workers = max(1, min(workers, len(units)))
    if workers > 1:
        results = _run_workers(spec, units, str(data_dir), workers)
    else:
        results = [_render_unit(*u) for u in units]
    summary = {}
    for split in SPLITS:
        columns = [[] for _ in METADATA_FILES]
        n_multi = 0
        for (spec_, s, _, _), (lines, multi) in zip(units, results):
            if s == split:
                for col, part in zip(columns, lines):
                    col += part
                n_multi += multi
        out = meta_dir / split
        out.mkdir(parents=True, exist_ok=True)
        for name, lines in zip(METADATA_FILES, columns):
            _write_lines(out / name, lines)
        summary[split] = {"images": len(columns[0]), "boxes": len(columns[3]), "multi_object_images": n_multi}
    return summary


def _metadata_digest(meta_dir: Path) -> dict:
    return {f"{split}/{name}": hashlib.sha256((meta_dir / split / name).read_bytes()).hexdigest()
            for split in SPLITS for name in METADATA_FILES}


def _spec_record(spec: SyntheticSpec) -> dict:
    return {"generator_version": GENERATOR_VERSION, "dataset": DATASET_NAME, "spec": spec.to_dict()}


def _targets(data_root, metadata_root) -> tuple[Path, Path]:
    data_dir = Path(data_root) / DATASET_NAME
    meta_dir = Path(metadata_root) / DATASET_NAME
    rd, rm = data_dir.resolve(), meta_dir.resolve()
    if rd != rm and (rd in rm.parents or rm in rd.parents):
        raise ValueError(f"the image folder {data_dir} and the metadata folder {meta_dir} must not be "
                         f"nested inside one another (they may be the same folder)")
    return data_dir, meta_dir


def is_current(spec: SyntheticSpec, data_root, metadata_root) -> bool:
    """True when the stored data set was made by this generator version from this spec and is complete."""
    data_dir, meta_dir = _targets(data_root, metadata_root)
    try:
        stored = json.loads((data_dir / "spec.json").read_text())
        if {k: stored.get(k) for k in ("generator_version", "dataset", "spec")} != _spec_record(spec):
            return False
        return stored.get("metadata_sha256") == _metadata_digest(meta_dir)
    except (OSError, ValueError, AttributeError):
        return False


@contextmanager
def _lock(root: Path):
    """Serialise generation between processes on this machine (e.g. DDP ranks)."""
    root.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:      # not POSIX: no inter-process lock
        yield
        return
    with open(root / f".{DATASET_NAME}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_leftovers(parent: Path) -> None:
    """Remove temporary/old folders left by an interrupted generation of a dead process on this host."""
    host = socket.gethostname()
    for p in parent.glob(f".{DATASET_NAME}.*-*"):
        name = p.name[len(DATASET_NAME) + 2:]              # "tmp-<host>-<pid>-<hex>" / "old-..."
        kind, _, rest = name.partition("-")
        try:
            rest_host, pid, _ = rest.rsplit("-", 2)
            pid = int(pid)
        except ValueError:
            continue
        if kind in ("tmp", "old") and rest_host == host and not _pid_alive(pid) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)


def _generate_locked(spec: SyntheticSpec, data_dir: Path, meta_dir: Path, verbose: bool,
                     workers: int | None) -> dict:
    token = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    same = data_dir.resolve() == meta_dir.resolve()
    targets = [data_dir] if same else [data_dir, meta_dir]
    for t in targets:
        t.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(t.parent)
    tmps = [t.with_name(f".{DATASET_NAME}.tmp-{token}") for t in targets]
    olds = []
    start = time.perf_counter()
    try:
        for tmp in tmps:
            tmp.mkdir()
        summary = _write_dataset(spec, tmps[0], tmps[-1], workers)
        digest = _metadata_digest(tmps[-1])
        (data_dir / "spec.json").unlink(missing_ok=True)      # invalidate the old data set first
        for tmp, target in zip(tmps, targets):
            if target.exists():
                old = target.with_name(f".{DATASET_NAME}.old-{token}")
                os.replace(target, old)
                olds.append(old)
            os.replace(tmp, target)
        record = _spec_record(spec) | {"metadata_sha256": digest, "summary": summary}
        tmp_json = data_dir / f".spec.json.tmp-{token}"
        tmp_json.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        os.replace(tmp_json, data_dir / "spec.json")          # written last: marks the set complete
    finally:
        for p in tmps + olds:
            if p.exists():
                shutil.rmtree(p, ignore_errors=True)
    if verbose:
        total = sum(s["images"] for s in summary.values())
        print(f"SYNTHETIC: wrote {total} images to {data_dir} and metadata to {meta_dir} "
              f"in {time.perf_counter() - start:.1f}s")
        for split, s in summary.items():
            print(f"  {split}: {s['images']} images, {s['boxes']} boxes, {s['multi_object_images']} two-object images")
    return summary


def generate(spec: SyntheticSpec, data_root, metadata_root, verbose: bool = False,
             workers: int | None = None) -> None:
    """(Re)write the whole data set, atomically: temp folders are renamed into place, spec.json last.

    workers: processes to render with (None: the usable cores, up to 8, for 1,000+ images; else 1).
    The files are the same for any number of workers.
    """
    validate_spec(spec)
    data_dir, meta_dir = _targets(data_root, metadata_root)
    with _lock(Path(data_root)):
        _generate_locked(spec, data_dir, meta_dir, verbose, workers)


def ensure_synthetic(spec: SyntheticSpec, data_root, metadata_root, verbose: bool = False,
                     workers: int | None = None) -> bool:
    """Generate the data set unless an up-to-date, complete copy exists. True when it (re)generated."""
    validate_spec(spec)
    data_dir, meta_dir = _targets(data_root, metadata_root)
    if is_current(spec, data_root, metadata_root):
        return False
    with _lock(Path(data_root)):
        if is_current(spec, data_root, metadata_root):     # another process finished it meanwhile
            return False
        _generate_locked(spec, data_dir, meta_dir, verbose, workers)
    return True


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    defaults = SyntheticSpec()
    p = argparse.ArgumentParser(prog="python -m acol.datasets.synthetic",
                                description="Write the SYNTHETIC WSOL benchmark in the wsolevaluation format.")
    p.add_argument("--data-root", default="data", help="images go to <data-root>/SYNTHETIC/")
    p.add_argument("--metadata-root", default="data/metadata", help="metadata goes to <metadata-root>/SYNTHETIC/")
    for f in dataclasses.fields(SyntheticSpec):
        p.add_argument("--" + f.name.replace("_", "-"), type=type(getattr(defaults, f.name)),
                       default=getattr(defaults, f.name))
    p.add_argument("--workers", type=int, default=None, help="rendering processes (default: auto)")
    p.add_argument("--force", action="store_true", help="regenerate even if an up-to-date copy exists")
    p.add_argument("--describe", action="store_true", help="only print the class descriptions")
    args = p.parse_args(argv)
    try:
        spec = SyntheticSpec(**{f.name: getattr(args, f.name) for f in dataclasses.fields(SyntheticSpec)})
    except ValueError as e:
        p.error(str(e))
    print(describe(spec))
    if args.describe:
        return 0
    if args.force:
        generate(spec, args.data_root, args.metadata_root, verbose=True, workers=args.workers)
    elif not ensure_synthetic(spec, args.data_root, args.metadata_root, verbose=True, workers=args.workers):
        print(f"SYNTHETIC: up to date in {Path(args.data_root) / DATASET_NAME} (spec.json matches)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
