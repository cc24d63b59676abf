"""Every real-benchmark recipe in experiments/ trains for a step on a fake data tree of its data set.

The tree is the tiny synthetic benchmark copied under the recipe's data-set name (CUB, ILSVRC,
OpenImages): the same metadata format and code path a prepared benchmark takes. Overrides shrink
the input, switch off the ImageNet download (and with it the ImageNet classifier of the ILSVRC
ResNet50 CAM-family recipes, tested in test_methods.py) and shorten training and evaluation.
"""
import shutil
from pathlib import Path

import pytest

from acol import train
from acol.config import load_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
PARTIAL = ("base", "cub", "ilsvrc", "openimages")  # experiments/wsolevaluation's shared bases
RECIPES = sorted(p for p in EXPERIMENTS.glob("**/*.toml")
                 if p.parent.name != "ablations" and p.stem not in PARTIAL
                 and load_config(p).data.dataset != "SYNTHETIC")


@pytest.fixture(scope="module")
def fake_trees(tiny_data, tmp_path_factory):
    """data_root, metadata_root with CUB, ILSVRC and OpenImages copies of the tiny benchmark."""
    data_root, metadata_root = tiny_data
    root = tmp_path_factory.mktemp("fake_benchmarks")
    for name in ("CUB", "ILSVRC", "OpenImages"):
        shutil.copytree(data_root / "SYNTHETIC", root / "data" / name)
        shutil.copytree(metadata_root / "SYNTHETIC", root / "metadata" / name)
    for split in (root / "metadata" / "OpenImages").iterdir():  # as OpenImages: masks only, no sizes
        (split / "mask_localization.txt").replace(split / "localization.txt")
        (split / "image_sizes.txt").write_text("")
    return root / "data", root / "metadata"


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_recipe_trains_a_step(recipe, fake_trees, tmp_path):
    data_root, metadata_root = fake_trees
    size = 64
    results = train.main(["--config", str(recipe), "--name", "smoke", f"data.root={data_root}",
                          f"data.metadata_root={metadata_root}", 'model.pretrained=""', "model.pretrained_classifier=false",
                          "model.head_channels=8",
                          f"data.resize_size={size + 8}", f"data.crop_size={size}", "data.num_workers=0",
                          "train.global_batch_size=2", "train.epochs=1", "train.max_steps=1", "eval.batch_size=6",
                          "eval.cam_curve_interval=0.05", "log.vis_num=1", f"log.runs_dir={tmp_path}"])
    assert results["step"] == 1
    if load_config(recipe).data.dataset == "OpenImages":  # masks only: PxAP, no box metrics
        assert 0 <= results["test"]["pxap"] <= 100 and "maxboxacc_v2" not in results["test"]
    else:
        assert 0 <= results["test"]["maxboxacc_v2"] <= 100
    assert (tmp_path / "smoke" / "checkpoints" / "last.pt").is_file()
