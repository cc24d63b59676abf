"""scripts/bench_pipeline.py on 3 tiny JPEGs: every row is there and its pixel checks are facts (computed
here again from the same generated files). No timing assertion: speed is what the script measures."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms.v2 import functional as TF

REPO = Path(__file__).resolve().parents[1]
# torchvision 0.29 deprecates its image decoding (the script measures decode_jpeg and prints that warning)
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities of TorchVision")


def load_script():
    spec = importlib.util.spec_from_file_location("bench_pipeline", REPO / "scripts" / "bench_pipeline.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pil_rgb(path: Path) -> Image.Image:
    return Image.open(path).convert("RGB")


def stated(a: torch.Tensor, b: torch.Tensor) -> str:
    """The script's wording of the difference of two (N, 3, H, W) uint8 stacks, computed here."""
    d = (a.int() - b.int()).abs()
    return f"max abs diff {int(d.max())}, {100 * float((d > 0).any(1).float().mean()):.2f} % pixels"


def test_every_row_and_true_pixel_checks(capsys, tmp_path):
    bench = load_script()
    table = bench.main(["--images", "3", "--size", "64x48", "--repeat", "1"])
    out = capsys.readouterr().out
    names = [row["name"] for row in table]
    assert len(names) == 6 and all(f"| {name} |" in out for name in names)
    checks = {name: row["check"] for name, row in zip(names, table)}

    data_root, _ = bench.write_images(tmp_path, 3, (64, 48))  # the same files again (fixed seed)
    paths = sorted((data_root / "CUB" / "images").glob("*.jpg"))
    pil = torch.stack([TF.pil_to_tensor(pil_rgb(p)) for p in paths])
    torchvision_decoded = torch.stack([decode_jpeg(read_file(str(p)), mode=ImageReadMode.RGB) for p in paths])
    acol_resized = TF.resize(pil, [256, 256], antialias=True)
    pil_resized = torch.stack([TF.pil_to_tensor(pil_rgb(p).resize((256, 256), Image.BILINEAR)) for p in paths])

    assert checks[names[1]] == f"resize vs the reference's PIL resize: {stated(pil_resized, acol_resized)}"
    torchvision_resized = TF.resize(torchvision_decoded, [256, 256], antialias=True)
    assert checks["acol, torchvision.io.decode_jpeg (uint8)"] == (
        f"decoded: {stated(pil, torchvision_decoded)}; resized: {stated(acol_resized, torchvision_resized)}")
    # 64x48 is below the 256x256 target: draft mode cannot reduce it, and the pixels are PIL's
    identical = "max abs diff 0, 0.00 % pixels"
    assert checks["acol, PIL draft mode (uint8)"] == f"decoded: {identical}; resized: {identical}"
    assert checks[names[-1]] == f"cached vs acol's resize: {identical}"

    acol_rate, cached_rate = table[1]["median"], table[-1]["median"]
    for rate in bench.GPU_RATES.values():
        for per_core in (acol_rate, cached_rate):
            n = math.ceil(rate / per_core)
            assert f"a GPU training at {rate} images/s needs about {n} core{'s' if n != 1 else ''} of" in out
    assert bench.cores(1264, 6001) == "1 core" and bench.cores(1628, 526) == "4 cores"
    assert "196608 bytes per image" in out


def test_draft_mode_decodes_a_large_jpeg_smaller(tmp_path):
    """Where the resize allows it (both sides at least twice the target) draft mode decodes at 1/2: fewer
    pixels, which the script reports as a size difference."""
    bench = load_script()
    path = tmp_path / "large.jpg"
    Image.fromarray(np.full((600, 520, 3), 128, np.uint8)).save(path, quality=90)
    assert bench.decode_pil_draft(path, (256, 256)).shape == (3, 300, 260)
    assert bench.difference([(torch.zeros(3, 600, 520), torch.zeros(3, 300, 260))]) == "260x300 instead of 520x600"
