"""`acol-compare --report`: the page (acol.report) on a hand-built case, exactly, and end to end on tiny runs,
with the sorting and the images checked in headless Chromium (skipped where `chromium` is not on PATH)."""
import base64
import html
import json
import math
import os
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import cv2
import numpy as np
import pytest

from acol import compare, train
from acol.report import FailureReport
from acol.visualize import overlay

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
CHROMIUM = shutil.which("chromium")
needs_chromium = pytest.mark.skipif(CHROMIUM is None,
                                    reason="needs `chromium` on PATH (Debian: apt-get install chromium)")


class Page(HTMLParser):
    """What a report page holds: `rows` ({"index": data-index, "image": the image cell's rects (class, x, y, w,
    h), "src": its img's, "maps": per map cell {"iou": data-iou, "text": IoU text, "rects", "src"}}), `maps` (the
    columns' map names), `metrics` (the metric table's cells) and `links` (every src / href: tag, key, value)."""

    def __init__(self, text: str):
        super().__init__()
        self.rows, self.maps, self.metrics, self.links = [], [], [], []
        self._table = self._cell = self._th = None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.links += [(tag, k, v) for k, v in attrs if k in ("src", "href")]
        if tag == "table":
            self._table = a.get("id")
        elif tag == "tr" and self._table == "metrics":
            self.metrics.append([])
        elif tag in ("td", "th") and self._table == "metrics":
            self._cell = self.metrics[-1]
            self._cell.append("")
        elif tag == "th" and a.get("class") == "map":
            self._th = ""
        elif tag == "small" and self._th is not None:  # the map's name ends
            self.maps.append(self._th)
            self._th = None
        elif tag == "tr" and self._table == "images" and "data-index" in a:
            self.rows.append({"index": int(a["data-index"]), "image": [], "maps": [], "src": None})
        elif tag == "td" and self.rows and a.get("class") == "map":
            self.rows[-1]["maps"].append({"iou": a["data-iou"], "text": "", "rects": [], "src": None})
        elif tag == "rect" and self.rows:
            rect = (a["class"], *(int(a[k]) for k in ("x", "y", "width", "height")))
            (self.rows[-1]["maps"][-1]["rects"] if self.rows[-1]["maps"] else self.rows[-1]["image"]).append(rect)
        elif tag == "img" and self.rows:
            (self.rows[-1]["maps"][-1] if self.rows[-1]["maps"] else self.rows[-1])["src"] = a["src"]
        elif tag == "div" and a.get("class") == "iou":
            self._cell = self.rows[-1]["maps"][-1]

    def handle_endtag(self, tag):
        if tag in ("td", "th", "div"):
            self._cell = None
        if tag == "table":
            self._table = None

    def handle_data(self, data):
        if isinstance(self._cell, list):
            self._cell[-1] += data
        elif isinstance(self._cell, dict):
            self._cell["text"] += data
        if self._th is not None:
            self._th += data


def inclusive_iou(a, b) -> float:
    """IoU of two x0y0x1y1 boxes whose corners are inclusive pixel indices (written out, not acol's)."""
    iw = max(0, min(a[2], b[2]) - max(a[0], b[0]) + 1)
    ih = max(0, min(a[3], b[3]) - max(a[1], b[1]) + 1)
    area = lambda box: (box[2] - box[0] + 1) * (box[3] - box[1] + 1)  # noqa: E731
    return iw * ih / (area(a) + area(b) - iw * ih)


def box_of(rect) -> tuple[int, int, int, int]:
    """An SVG rect (class, x, y, width, height) of the page as the inclusive box it draws."""
    _, x, y, w, h = rect
    return x, y, x + w - 1, y + h - 1


def expected_order(keys: list[float], best_first: bool = False) -> list[int]:
    """The rows' order for sort keys: worst (lowest) first, or best first; ties by index; no key (NaN) last."""
    return sorted(range(len(keys)), key=lambda i: (math.isnan(keys[i]), 0 if math.isnan(keys[i]) else
                                                   -keys[i] if best_first else keys[i], i))


# ---- a hand-built page: 32 px images, maps of 1 on known rectangles, threshold 0.5

SIZE = 32
GT = [[[10, 10, 19, 19]], [[0, 0, 9, 9], [20, 20, 29, 29]], [], [[0, 0, 31, 31]]]
ONES = {"A": [(10, 20, 10, 20), (20, 30, 20, 30), (0, 32, 0, 32), (0, 16, 0, 32)],   # rows y0:y1, cols x0:x1
        "B": [(0, 10, 0, 10), (0, 6, 0, 6), (0, 0, 0, 0), (0, 32, 0, 32)]}
# the V1 box of a rectangle of ones at rows y0:y1, cols x0:x1 is (x0, y0, x1, y1) clipped to 31: cv2.boundingRect's
# x + w is one past the last column (wsolevaluation's convention, kept by the evaluator); no pixel: (0, 0, 0, 0)
PREDICTED = {"A": [(10, 10, 20, 20), (20, 20, 30, 30), (0, 0, 31, 31), (0, 0, 31, 16)],
             "B": [(0, 0, 10, 10), (0, 0, 6, 6), (0, 0, 0, 0), (0, 0, 31, 31)]}
IOU = {"A": [100 / 121, 100 / 121, math.nan, 32 * 17 / 1024], "B": [1 / 220, 49 / 100, math.nan, 1.0]}


def hand_built() -> tuple[FailureReport, np.ndarray, dict]:
    ramp = np.linspace(0, 1, SIZE)  # smooth pictures (JPEG keeps them close): channel ramps, one per image
    pictures = np.stack([np.stack([ramp[None, :] * np.ones((SIZE, 1)), ramp[:, None] * np.ones((1, SIZE)),
                                   np.full((SIZE, SIZE), k / 4)], -1) for k in range(4)])
    pictures = (pictures * 255).round().astype(np.uint8)
    maps = {}
    report = FailureReport()
    for name, rects in ONES.items():
        maps[name] = np.zeros((4, SIZE, SIZE), np.float32)
        for m, (y0, y1, x0, x1) in zip(maps[name], rects):
            m[y0:y1, x0:x1] = 1
        for start in (0, 3):  # two batches
            stop = 3 if start == 0 else 4
            report.add(name, 0.5, ["a.png", "b.png", "c.png", "d.png"][start:stop], pictures[start:stop],
                       [np.array(b, np.int64).reshape(-1, 4) for b in GT[start:stop]], maps[name][start:stop])
    return report, pictures, maps


@pytest.fixture(scope="module")
def hand_page(tmp_path_factory) -> Path:
    report, _, _ = hand_built()
    path = tmp_path_factory.mktemp("report") / "report.html"
    path.write_text(report.html([["run group", "n"], ["g", "1"]], "hand-built", ["a note"]))
    return path


def decode(uri: str) -> np.ndarray:
    prefix = "data:image/jpeg;base64,"
    assert uri.startswith(prefix)
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(base64.b64decode(uri[len(prefix):]), np.uint8), cv2.IMREAD_COLOR),
                        cv2.COLOR_BGR2RGB)


def assert_self_contained(text: str, page: Page) -> None:
    bare = re.sub(r"data:image/jpeg;base64,[A-Za-z0-9+/=]+", "", text)
    assert not re.search(r"[a-z]+://|//|@import|url\(|<(link|iframe|object|embed)\b", bare, re.I)  # no address at all
    assert all(tag == "img" and key == "src" and v.startswith("data:image/jpeg;base64,") for tag, key, v in page.links)


def test_page_is_self_contained_with_one_row_per_image_and_exact_boxes_and_ious(hand_page):
    text = hand_page.read_text()
    page = Page(text)
    report, pictures, maps = hand_built()
    assert_self_contained(text, page)
    assert page.maps == ["A", "B"] and page.metrics == [["run group", "n"], ["g", "1"]]
    assert [r["index"] for r in page.rows] == [0, 1, 2, 3] and all(len(r["maps"]) == 2 for r in page.rows)
    for i, row in enumerate(page.rows):
        gt_rects = [box_of(r) for r in row["image"]]
        assert np.abs(decode(row["src"]).astype(float) - pictures[i]).mean() < 3  # the image, JPEG q80
        assert gt_rects == [tuple(b) for b in GT[i]] and {r[0] for r in row["image"]} <= {"gt"}
        for name, cell in zip("AB", row["maps"]):
            (pred,) = [box_of(r) for r in cell["rects"] if r[0] == "pred"]
            assert pred == PREDICTED[name][i]
            assert [box_of(r) for r in cell["rects"] if r[0] == "gt"] == gt_rects
            if math.isnan(IOU[name][i]):
                assert cell["iou"] == "" and cell["text"] == "no GT box"
                continue
            assert float(cell["iou"]) == IOU[name][i]  # exact: the page holds the float's repr
            assert float(cell["iou"]) == max(inclusive_iou(pred, g) for g in gt_rects)  # from the drawn boxes
            assert cell["text"] == f"IoU {IOU[name][i]:.3f}"
            thumb = decode(cell["src"]).astype(float)  # the overlay, at the image's size (<= 112 px), JPEG q80
            assert thumb.shape == (SIZE, SIZE, 3)
            assert np.abs(thumb - overlay(pictures[i], maps[name][i])).mean() < 6
    # the share of IoU >= 0.5 over the 3 boxed images
    assert "τ 0.500<br>IoU ≥ 0.5: 100.0 %" in text and "τ 0.500<br>IoU ≥ 0.5: 33.3 %" in text


def test_maps_of_other_images_or_sizes_are_refused():
    report, pictures, maps = hand_built()
    boxes = [np.zeros((0, 4), np.int64)] * 2
    with pytest.raises(ValueError, match=r"C: test image 0 is 'x.png' where the first map's is 'a.png'"):
        report.add("C", 0.5, ["x.png", "b.png"], pictures[:2], boxes, maps["A"][:2])
    with pytest.raises(ValueError, match=r"D: test images / maps of \(16, 16\)"):
        report.add("D", 0.5, ["a.png"], pictures[:1, :16, :16], boxes[:1], maps["A"][:1, :16, :16])
    report = FailureReport()
    report.add("A", 0.5, ["a.png", "b.png"], pictures[:2], boxes, maps["A"][:2])
    report.add("B", 0.5, ["a.png"], pictures[:1], boxes[:1], maps["B"][:1])
    with pytest.raises(ValueError, match="B: 1 test images where the first map has 2"):
        report.html([["x"]], "t", [])


# ---- in headless Chromium

CHECK = """<script>
window.addEventListener('load', () => {
  const state = () => ({hash: decodeURIComponent(location.hash),
    order: Array.from(document.querySelectorAll('#images tbody tr')).map(row => Number(row.dataset.index)),
    keys: Array.from(document.querySelectorAll('#images tbody td.key')).map(cell => cell.textContent),
    controls: ['sort-a', 'sort-b', 'order'].map(id => document.getElementById(id).value),
    notice: document.getElementById('notice').textContent});
  const out = document.createElement('pre');
  out.id = 'check';
  const result = {loaded: state(), widths: Array.from(document.images).map(image => image.naturalWidth)};
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
  const b = document.getElementById('sort-b');  // as a user picks B (nothing, else the last map): the hash
  window.addEventListener('hashchange', () => { result.changed = state(); out.textContent = JSON.stringify(result); });
  b.value = b.value === '' ? b.options[b.options.length - 1].value : '';  // follows, then the order
  b.dispatchEvent(new Event('change'));
});
</script>
"""


def browse(page: Path, fragment: str = "", screenshot: Path | None = None) -> tuple[dict, list[str]]:
    """Open a copy of `page` with the CHECK script in headless Chromium at `#fragment`: (what CHECK found: the row
    order and sort keys after loading and after picking the last map as B, each <img>'s naturalWidth; the console
    messages, which a page that works has none of: each a line on Chromium's stderr). Virtual time lets the
    hash change's event run before the DOM is dumped."""
    checked = page.with_name(f"checked_{page.name}")
    checked.write_text(page.read_text().replace("</body>", CHECK + "</body>"))
    options = [f"--screenshot={screenshot}", "--window-size=1280,900"] if screenshot else ["--dump-dom"]
    done = subprocess.run([CHROMIUM, "--headless=new", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr",
                           "--v=0", "--virtual-time-budget=2000", *options, checked.as_uri() + fragment],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    if screenshot:
        return {}, console
    found = re.search(r'<pre id="check">(.*?)</pre>', done.stdout, re.S)
    assert found, done.stdout[-2000:]
    return json.loads(html.unescape(found.group(1))), console


@needs_chromium
def test_a_script_error_is_caught_by_the_console_check(hand_page, tmp_path):
    broken = tmp_path / "report.html"
    broken.write_text(hand_page.read_text().replace("names.indexOf(name)", "names.indexOff(name)"))
    _, console = browse(broken)
    assert console and all("TypeError: names.indexOff is not a function" in line for line in console)
    _, console = browse(hand_page)
    assert console == []


@needs_chromium
@pytest.mark.parametrize("fragment, keys, best_first", [
    ("", lambda a, b: a, False),                                     # default: the first map, worst first
    ("#sort=B", lambda a, b: b, False),
    ("#sort=A&order=best", lambda a, b: a, True),
    ("#sort=A&minus=B", lambda a, b: a - b, False),
    ("#sort=B&minus=A&order=best", lambda a, b: b - a, True),
])
def test_rows_come_sorted_as_the_url_asks_and_follow_the_controls(hand_page, fragment, keys, best_first):
    found, console = browse(hand_page, fragment)
    assert console == [] and found["loaded"]["notice"] == ""
    order = expected_order([keys(a, b) for a, b in zip(IOU["A"], IOU["B"])], best_first)
    assert found["loaded"]["order"] == order
    assert found["widths"] == [SIZE] * 12  # 4 images + 4 x 2 overlays, all decoded
    shown = [keys(IOU["A"][i], IOU["B"][i]) for i in order]
    differs = "minus" in fragment
    assert found["loaded"]["keys"] == ["–" if math.isnan(k) else f"{'−' if k < 0 else '+' if differs else ''}"
                                       f"{abs(k):.3f}" for k in shown]
    a = found["loaded"]["controls"][0]  # then B picked: the last map where there was none, else none
    assert found["changed"]["hash"] == f"#sort={a}" + "&minus=B" * (not differs) + "&order=best" * best_first
    changed = [IOU[a][i] - IOU["B"][i] if not differs else IOU[a][i] for i in range(4)]
    assert found["changed"]["order"] == expected_order(changed, best_first)


@needs_chromium
def test_an_unknown_map_in_the_url_is_said_and_the_default_order_kept(hand_page):
    found, console = browse(hand_page, "#sort=nope&minus=B")
    assert console == [] and found["loaded"]["notice"] == "unknown map in the URL: nope; sorted by A"
    assert found["loaded"]["order"] == expected_order(IOU["A"]) and found["loaded"]["controls"] == ["A", "", "worst"]


# ---- end to end: acol-compare --report on tiny runs


def test_compare_report_end_to_end_on_tiny_runs(tiny_overrides, tmp_path):
    runs = []
    for config in ("synthetic_acol", "synthetic_cam"):
        train.main(["--config", str(EXPERIMENTS / f"{config}.toml"), "--name", f"{config}-s0", *tiny_overrides,
                    "train.global_batch_size=6"])
        runs.append(tmp_path / "runs" / f"{config}-s0")
    out = tmp_path / "compare"
    done = subprocess.run([sys.executable, "-m", "acol.compare", *map(str, runs), "--methods", "inforward,cam,gradcam",
                           "--out", str(out), "--num-images", "2", "--replicates", "20", "--report"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    assert "report.html" in done.stdout.splitlines()[-1]
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    names = [f"{Path(r['run']).name}/{r['method']}" for r in records]
    assert names == ["synthetic_acol-s0/inforward", "synthetic_acol-s0/gradcam", "synthetic_cam-s0/cam",
                     "synthetic_cam-s0/gradcam", "baseline/centre", "baseline/brightness"]
    text = (out / "report.html").read_text()
    page = Page(text)
    assert_self_contained(text, page)
    markdown = (out / "results.md").read_text().splitlines()
    assert page.metrics == [line.strip("| ").split(" | ") for line in markdown if "---" not in line]
    assert page.maps == names and len(page.rows) == 6 and all(len(row["maps"]) == 6 for row in page.rows)
    for r, name, column in zip(records, names, zip(*[row["maps"] for row in page.rows])):
        ious = [float(cell["iou"]) for cell in column]  # every tiny image has a GT box
        for cell, row, iou in zip(column, page.rows, ious):  # the IoU of the drawn boxes
            (pred,) = [box_of(rect) for rect in cell["rects"] if rect[0] == "pred"]
            assert iou == max(inclusive_iou(pred, box_of(rect)) for rect in row["image"])
        # the evaluator's per-image hits at the val-chosen threshold: IoU >= 0.5, image by image
        stem = "baseline__" + r["method"] if r["group"] == "baseline" else f"{Path(r['run']).name}__{r['method']}"
        with np.load(out / "per_image" / f"{stem}.npz") as kept:
            tau = r["test"]["val_cam_threshold"]
            hits = kept["gt_known"][:, int(np.argmin(np.abs(kept["thresholds"] - tau)))]
        assert [iou >= 0.5 for iou in ious] == hits.tolist(), name
        share = r["test"]["gt_known_loc@val"]  # the column's share of IoU >= 0.5 is the run's GT-known @val τ
        assert f">{name.replace('/', '/<br>')}<br><small>τ {tau:.3f}<br>IoU ≥ 0.5: {share:.1f} %</small>" in text

    if CHROMIUM is None:  # the page's contents were checked; its behaviour needs a browser
        pytest.skip("the browser half needs `chromium` on PATH (Debian: apt-get install chromium)")
    found, console = browse(out / "report.html", "#sort=" + names[3].replace("/", "%2F"))
    assert console == []
    assert found["loaded"]["order"] == expected_order([float(row["maps"][3]["iou"]) for row in page.rows])
    assert len(found["widths"]) == 6 * 7 and all(width == 32 for width in found["widths"])
    _, console = browse(out / "report.html", screenshot=tmp_path / "shot.png")
    shot = cv2.imread(str(tmp_path / "shot.png"))
    assert console == [] and shot.shape == (900, 1280, 3) and shot.std() > 20  # not a blank page


def test_a_map_without_a_val_chosen_threshold_is_refused_in_one_line():
    records = [{"run": "runs/x-s0", "group": "x", "method": "cam", "test": {"num_images": 6.0}}]  # no GT boxes
    with pytest.raises(ValueError, match=r"^x-s0/cam has no val-chosen box threshold \(no GT boxes on val or test"):
        compare.report_page(records, "gt", "last", [], {}, None)
