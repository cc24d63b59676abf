"""The failure browser of `acol-compare --report`: one self-contained HTML page of every test image x map.

`FailureReport` takes, map by map, the test split's batches (images, GT boxes, score maps as the evaluator
sees them) and keeps per image and map a JPEG thumbnail of the overlay (`acol.visualize.overlay`), the
predicted box and its IoU; `html` lays them out under the comparison's metric table, one row per test
image, sortable in the page by any map's IoU or by IoU(A) - IoU(B), worst first by default.

Boxes follow the evaluator (`acol.evaluation.boxes`): the predicted box is the V1 box (largest contour) at the
map's box threshold (`acol.visualize.predicted_box`), its IoU the maximum over the image's GT boxes
(`compute_iou`, +1 pixel convention: x0..x1, y0..y1 are inclusive pixel ranges). They are drawn as SVG in
the image's pixel grid, each rectangle's edge on the outer boundary of its pixels, so they stay exact at any
thumbnail size. The page has no external reference: images are data: URIs, CSS and JS inline.

The page's URL hash sets the sort: `#sort=<map>` (IoU of that map), `&minus=<map>` (IoU(sort) - IoU(minus)),
`&order=best` (best first; default worst first); map names are `<run folder>/<localizer>` or
`baseline/<name>`, URL-encoded. Images without a GT box have no IoU: they come last in either order.
"""
from __future__ import annotations

import base64
import html
import json
import math

import cv2
import numpy as np

from acol.evaluation.boxes import compute_iou
from acol.visualize import GT_COLOR, PRED_COLOR, overlay, predicted_box

THUMB = 112        # the largest JPEG side, px (a larger image is scaled down, INTER_AREA)
MIN_SHOWN = 96     # a smaller thumbnail is shown enlarged by the least integer factor reaching this (nearest)
QUALITY = 80       # JPEG quality


def jpeg_uri(picture: np.ndarray) -> str:
    """(H, W, 3) uint8 RGB -> a data: URI of its JPEG thumbnail (largest side at most `THUMB`)."""
    height, width = picture.shape[:2]
    scale = min(1.0, THUMB / max(height, width))
    if scale < 1:
        picture = cv2.resize(picture, (max(1, round(width * scale)), max(1, round(height * scale))),
                             interpolation=cv2.INTER_AREA)
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, QUALITY])
    if not ok:
        raise ValueError(f"cannot encode a {picture.shape} image as JPEG")
    return "data:image/jpeg;base64," + base64.b64encode(data.tobytes()).decode("ascii")


def box_iou(box: np.ndarray, gt_boxes: np.ndarray) -> float:
    """IoU of a (4,) box with its best-matching GT box of (K, 4) (`compute_iou`); NaN when K = 0."""
    gt = np.asarray(gt_boxes, np.int64).reshape(-1, 4)
    return float(compute_iou(np.asarray(box)[None], gt).max()) if len(gt) else math.nan


class FailureReport:
    """Rows: the test images, in the order of the first map's batches; columns: the maps, in the order added.

    Every map must cover the same images in the same order at the same size (else ValueError)."""

    def __init__(self):
        self.image_ids: list[str] = []
        self.pictures: list[str] = []              # data: URIs of the images
        self.gt_boxes: list[np.ndarray] = []       # (K, 4) int64 each, x0y0x1y1 inclusive
        self.size: tuple[int, int] | None = None   # (H, W) of the images and maps
        self.maps: dict[str, dict] = {}            # name -> {"threshold", "boxes", "ious", "thumbs"}

    def add(self, name: str, threshold: float, image_ids: list[str], pictures: np.ndarray, gt_boxes: list,
            scoremaps: np.ndarray) -> None:
        """One batch of map `name`, boxed at `threshold`: image ids (B,), pictures (B, H, W, 3) uint8 RGB, GT
        boxes B arrays (K_i, 4) in the map's pixel grid, scoremaps (B, H, W) in [0, 1] (`resize_and_normalize`)."""
        column = self.maps.setdefault(name, {"threshold": float(threshold), "boxes": [], "ious": [], "thumbs": []})
        start = len(column["ious"])
        if self.size is None:
            self.size = tuple(pictures.shape[1:3])
        if tuple(pictures.shape[1:3]) != self.size or tuple(scoremaps.shape[1:]) != self.size:
            raise ValueError(f"{name}: test images / maps of {pictures.shape[1:3]} / {scoremaps.shape[1:]} px where "
                             f"the first map's are {self.size}: a report compares maps on one test split")
        for i, (image_id, picture, boxes, scoremap) in enumerate(zip(image_ids, pictures, gt_boxes, scoremaps)):
            row = start + i
            if row == len(self.image_ids):      # the first map to reach this image
                self.image_ids.append(image_id)
                self.pictures.append(jpeg_uri(picture))
                self.gt_boxes.append(np.asarray(boxes, np.int64).reshape(-1, 4))
            elif self.image_ids[row] != image_id:
                raise ValueError(f"{name}: test image {row} is {image_id!r} where the first map's is "
                                 f"{self.image_ids[row]!r}: a report compares maps on one test split")
            box = predicted_box(scoremap, threshold)
            column["boxes"].append(box)
            column["ious"].append(box_iou(box, self.gt_boxes[row]))
            column["thumbs"].append(jpeg_uri(overlay(picture, scoremap)))

    def check_complete(self) -> None:
        """Every map covers every image (ValueError naming the first that does not)."""
        for name, column in self.maps.items():
            if len(column["ious"]) != len(self.image_ids):
                raise ValueError(f"{name}: {len(column['ious'])} test images where the first map has "
                                 f"{len(self.image_ids)}: a report compares maps on one test split")

    def html(self, table: list[list[str]], title: str, notes: list[str]) -> str:
        """The page: `title`, `notes` (lines of text), the metric `table` (header row, then rows of cell text),
        then one row per test image (image with GT boxes, each map's overlay with its boxes and IoU)."""
        self.check_complete()
        shown = self._shown_size()
        names = list(self.maps)
        head = "".join(f"<th>{html.escape(t)}</th>" for t in table[0])
        body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in table[1:])
        options = "".join(f'<option value="{html.escape(n)}">{html.escape(n)}</option>' for n in names)
        columns = "".join(  # the name on two lines: run/, localizer
            f'<th class="map">{html.escape(n).replace("/", "/<br>")}<br><small>τ {c["threshold"]:.3f}<br>IoU ≥ 0.5: '
            f'{self._share(c["ious"]):.1f} %</small></th>' for n, c in self.maps.items())
        rows = []
        for row, (image_id, picture, gt) in enumerate(zip(self.image_ids, self.pictures, self.gt_boxes)):
            cells = [f'<td class="key"></td><td class="id">{row}<small>{html.escape(image_id)}</small></td>',
                     f'<td class="image">{self._tile(picture, shown, gt, None)}</td>']
            for column in self.maps.values():
                iou = column["ious"][row]
                text = "no GT box" if math.isnan(iou) else f"IoU {iou:.3f}"
                cells.append(f'<td class="map" data-iou="{"" if math.isnan(iou) else repr(iou)}">'
                             f'{self._tile(column["thumbs"][row], shown, gt, column["boxes"][row])}'
                             f'<div class="iou">{text}</div></td>')
            rows.append(f'<tr data-index="{row}">{"".join(cells)}</tr>')
        return PAGE.format(title=html.escape(title), notes="".join(f"<p>{html.escape(n)}</p>" for n in notes),
                           head=head, body=body, options=options, columns=columns, rows="\n".join(rows),
                           count=len(self.image_ids), maps=len(names), css=CSS, script=SCRIPT,
                           names=json.dumps(names).replace("</", "<\\/"))

    @staticmethod
    def _share(ious: list[float]) -> float:
        """The percentage of the boxed images whose IoU is at least 0.5 (the GT-known loc at the threshold)."""
        boxed = [v for v in ious if not math.isnan(v)]
        return 100.0 * sum(v >= 0.5 for v in boxed) / max(len(boxed), 1)

    def _shown_size(self) -> tuple[int, int]:
        """(width, height) in CSS px of every tile: the thumbnail, enlarged by an integer factor up to `MIN_SHOWN`."""
        height, width = self.size
        scale = min(1.0, THUMB / max(height, width))
        thumb = (max(1, round(width * scale)), max(1, round(height * scale)))
        factor = max(1, -(-MIN_SHOWN // max(thumb)))
        return thumb[0] * factor, thumb[1] * factor

    def _tile(self, uri: str, shown: tuple[int, int], gt: np.ndarray, predicted: np.ndarray | None) -> str:
        """An <img> under an SVG of the boxes in the image's pixel grid (box x0..x1 inclusive: width x1 - x0 + 1)."""
        height, width = self.size
        rects = [(box, GT_COLOR, "gt") for box in gt.tolist()]
        if predicted is not None:
            rects.append((np.asarray(predicted).tolist(), PRED_COLOR, "pred"))
        svg = "".join(f'<rect class="{kind}" x="{x0}" y="{y0}" width="{x1 - x0 + 1}" height="{y1 - y0 + 1}" '
                      f'stroke="rgb{tuple(color)}"/>' for (x0, y0, x1, y1), color, kind in rects)
        return (f'<div class="tile" style="width:{shown[0]}px;height:{shown[1]}px">'
                f'<img src="{uri}" width="{shown[0]}" height="{shown[1]}" alt="">'
                f'<svg viewBox="0 0 {width} {height}" preserveAspectRatio="none">{svg}</svg></div>')


CSS = """
body { font: 13px/1.35 system-ui, sans-serif; margin: 12px; color: #222; }
h1 { font-size: 18px; margin: 0 0 6px; } h2 { font-size: 15px; margin: 16px 0 6px; }
p { margin: 2px 0; max-width: 110ch; }
table { border-collapse: collapse; }
#metrics td, #metrics th { border: 1px solid #ccc; padding: 2px 6px; text-align: right; white-space: nowrap; }
#metrics td:nth-child(-n+2), #metrics th { text-align: left; }
.wrap { overflow-x: auto; max-width: 100%; }
#controls { position: sticky; top: 0; background: #fff; padding: 6px 0; height: 34px; box-sizing: border-box;
            z-index: 2; }
#notice { color: #b00; }
#images th { position: sticky; top: 34px; background: #f4f4f4; z-index: 1; font-weight: 600; padding: 3px;
             font-size: 12px; vertical-align: bottom; white-space: nowrap; }
#images td { padding: 3px; border-top: 1px solid #ddd; vertical-align: top; text-align: center; }
#images td.key { font-variant-numeric: tabular-nums; text-align: right; min-width: 5ch; }
#images td.id { text-align: left; color: #555; }
#images td.id small { display: block; width: 16ch; overflow-wrap: anywhere; }
.tile { position: relative; margin: 0 auto; }
.tile img, .tile svg { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
.tile img { image-rendering: pixelated; }
.tile rect { fill: none; stroke-width: 1.5; vector-effect: non-scaling-stroke; }
.iou { font-variant-numeric: tabular-nums; }
"""

SCRIPT = """
(function () {
  const names = JSON.parse(document.getElementById('map-names').textContent);
  const body = document.querySelector('#images tbody');
  const rows = Array.from(body.rows);
  const sortA = document.getElementById('sort-a'), sortB = document.getElementById('sort-b');
  const order = document.getElementById('order'), notice = document.getElementById('notice');
  const iou = (row, name) => {
    const text = row.querySelectorAll('td.map')[names.indexOf(name)].dataset.iou;
    return text === '' ? NaN : Number(text);
  };
  function sortRows() {
    const a = sortA.value, b = sortB.value, sign = order.value === 'best' ? -1 : 1;
    const keyed = rows.map(row => [b === '' ? iou(row, a) : iou(row, a) - iou(row, b), Number(row.dataset.index), row]);
    keyed.sort((p, q) => {
      if (isNaN(p[0]) !== isNaN(q[0])) return isNaN(p[0]) ? 1 : -1;
      if (!isNaN(p[0]) && p[0] !== q[0]) return sign * (p[0] - q[0]);
      return p[1] - q[1];
    });
    for (const [key, , row] of keyed) {
      const prefix = b === '' ? '' : key < 0 ? '−' : '+';
      row.cells[0].textContent = isNaN(key) ? '–' : prefix + Math.abs(key).toFixed(3);
      body.appendChild(row);
    }
  }
  function fromHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    const a = params.get('sort') || names[0], b = params.get('minus') || '';
    const unknown = [a, b].filter(n => n !== '' && !names.includes(n));
    notice.textContent = unknown.length ? `unknown map in the URL: ${unknown.join(', ')}; sorted by ${names[0]}` : '';
    sortA.value = unknown.length ? names[0] : a;
    sortB.value = unknown.length ? '' : b;
    order.value = params.get('order') === 'best' ? 'best' : 'worst';
    sortRows();
  }
  function toHash() {
    const params = new URLSearchParams({sort: sortA.value});
    if (sortB.value !== '') params.set('minus', sortB.value);
    if (order.value === 'best') params.set('order', 'best');
    location.hash = params.toString();
  }
  for (const control of [sortA, sortB, order]) control.addEventListener('change', toHash);
  window.addEventListener('hashchange', fromHash);
  fromHash();
})();
"""

PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title><style>{css}</style></head><body>
<h1>{title}</h1>
{notes}
<h2>Metrics</h2>
<div class="wrap"><table id="metrics"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>
<h2>Test images ({count}) × maps ({maps})</h2>
<p>Green: GT boxes; red: the map's predicted box (largest connected region) at its box threshold τ (under its
name); IoU: with the best-matching GT box. Boxes are drawn at the pixels the evaluator scores (inclusive corners).</p>
<div id="controls">sort by IoU of <select id="sort-a">{options}</select> minus IoU of
<select id="sort-b"><option value="">(nothing)</option>{options}</select>
<select id="order"><option value="worst">worst first</option><option value="best">best first</option></select>
<span id="notice"></span></div>
<table id="images"><thead><tr><th>sort key</th><th>#</th><th>image</th>{columns}</tr></thead>
<tbody>
{rows}
</tbody></table>
<script type="application/json" id="map-names">{names}</script>
<script>{script}</script>
</body></html>
"""
