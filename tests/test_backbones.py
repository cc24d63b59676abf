"""Backbones: documented map sizes, wsolevaluation's resnet50 / inception_v3 variants on every model,
loading torchvision-layout state dicts by key, and lr groups by module role."""
from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from acol.config import ModelCfg, load_config
from acol.engine import build_optimizer
from acol.methods import build_model
from acol.models.backbones import BACKBONES, WeightsError

NUM_CLASSES = 3

# (h, w) of the feature maps at a 224x224 input, by (backbone, large_feature_map), as documented
MAP_SIZE_224 = {("vgg16", True): 28, ("vgg16", False): 14, ("resnet50", True): 28, ("resnet50", False): 14,
                ("inception_v3", True): 28, ("inception_v3", False): 14,
                ("smallcnn", True): 56, ("smallcnn", False): 28,
                ("efficientnet_lite0", True): 14, ("efficientnet_lite0", False): 7}

TORCHVISION_BUILDERS = {
    "resnet50": lambda: torchvision.models.resnet50(weights=None),
    "inception_v3": lambda: torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False),
}
DROPPED_MODULES = {"resnet50": ("fc.",), "inception_v3": ("AuxLogits.", "Mixed_7", "fc.")}


def cfg_for(backbone: str, *extra: str):
    return load_config(overrides=[f"model.backbone={backbone}", "model.head_channels=16", *extra])


@pytest.mark.parametrize("large", [True, False])
@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_feature_maps_at_224_have_the_documented_size(backbone, large):
    with torch.device("meta"):  # shapes only: the meta device runs no arithmetic
        model = BACKBONES.get(backbone)(ModelCfg(large_feature_map=large)).eval()
        feat = model(torch.empty(1, 3, 224, 224))
    side = MAP_SIZE_224[(backbone, large)]
    assert feat.shape == (1, model.out_channels, side, side)


@pytest.mark.parametrize("large, smallest", [(True, 11), (False, 15)])
def test_inception_v3_acol_trains_at_the_smallest_input(large, smallest):
    """Every model on every backbone runs at 64x64 in test_models; here the smallest inception input."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 3, smallest, smallest), torch.tensor([0, 2])
    model = build_model(cfg_for("inception_v3", "model.name=acol", "model.smooth_features=false",
                                f"model.large_feature_map={str(large).lower()}"), NUM_CLASSES)
    out = model(x, y)
    assert out["cam_a"].shape == out["cam_b"].shape == (2, NUM_CLASSES, 1, 1)
    assert model.localization_map(out, y).shape == (2, 1, 1)
    model.loss(out, y)["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    with pytest.raises(RuntimeError):  # one pixel less: some layer's input is smaller than its window
        model.backbone(torch.randn(2, 3, smallest - 1, smallest - 1))


@pytest.mark.parametrize("backbone", ["resnet50", "inception_v3"])
def test_smooth_features_switches_the_3x3_average_pooling_of_the_backbone_output(backbone):
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    plain = build_model(cfg_for(backbone, "model.smooth_features=false"), NUM_CLASSES).eval()
    smoothed = build_model(cfg_for(backbone, "model.smooth_features=true"), NUM_CLASSES).eval()
    smoothed.backbone.load_state_dict(plain.backbone.state_dict())
    with torch.no_grad():
        feat = plain.backbone(x)
        assert torch.equal(plain.features(x), feat)
        assert torch.equal(smoothed.features(x), F.avg_pool2d(feat, kernel_size=3, stride=1, padding=1))


@pytest.fixture(scope="module")
def torchvision_state_dicts(tmp_path_factory):
    """{backbone: (state dict, path)} of a randomly initialised torchvision model saved with torch.save,
    with random BatchNorm statistics so that loaded buffers differ from fresh ones."""
    root = tmp_path_factory.mktemp("torchvision")
    saved = {}
    torch.manual_seed(0)
    for name, builder in TORCHVISION_BUILDERS.items():
        reference = builder()
        for m in reference.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
        state = reference.state_dict()
        torch.save(state, root / f"{name}.pth")
        saved[name] = (state, root / f"{name}.pth")
    return saved


@pytest.mark.parametrize("backbone", list(TORCHVISION_BUILDERS))
def test_loads_a_local_torchvision_state_dict_by_key(backbone, torchvision_state_dicts):
    state, path = torchvision_state_dicts[backbone]
    model = build_model(cfg_for(backbone, "model.name=acol", f"model.pretrained={path}"), NUM_CLASSES)
    loaded = model.backbone.state_dict()
    assert set(loaded) == {k for k in state if not k.startswith(DROPPED_MODULES[backbone])}
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("backbone, key", [("resnet50", "layer4.2.bn3.weight"),
                                           ("inception_v3", "Mixed_6a.branch3x3.conv.weight")])
def test_missing_unexpected_or_misshapen_keys_are_named(backbone, key, torchvision_state_dicts, tmp_path):
    state, _ = torchvision_state_dicts[backbone]
    without = {k: v for k, v in state.items() if k != key}
    torch.save(without, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=rf"missing .* keys \['{re.escape(key)}'\]"):
        build_model(cfg_for(backbone, f"model.pretrained={tmp_path / 'missing.pth'}"), NUM_CLASSES)
    torch.save({**state, "layer5.0.conv1.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected .* keys \['layer5\.0\.conv1\.weight'\]"):
        build_model(cfg_for(backbone, f"model.pretrained={tmp_path / 'extra.pth'}"), NUM_CLASSES)
    torch.save({**state, key: torch.zeros(1)}, tmp_path / "wrong_shape.pth")
    with pytest.raises(WeightsError, match=f"size mismatch for {re.escape(key)}: "):
        build_model(cfg_for(backbone, f"model.pretrained={tmp_path / 'wrong_shape.pth'}"), NUM_CLASSES)


def test_state_dicts_without_batchnorm_counters_load(torchvision_state_dicts, tmp_path):
    """Older torchvision files (e.g. inception_v3_google) have no num_batches_tracked entries."""
    state, _ = torchvision_state_dicts["inception_v3"]
    torch.save({k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}, tmp_path / "old.pth")
    model = build_model(cfg_for("inception_v3", f"model.pretrained={tmp_path / 'old.pth'}"), NUM_CLASSES)
    assert torch.equal(model.backbone.Mixed_6e.branch_pool.bn.running_var,
                       state["Mixed_6e.branch_pool.bn.running_var"])


@pytest.mark.parametrize("wrap", [False, True])
def test_a_whole_model_state_dict_or_checkpoint_loads_its_backbone(wrap, tmp_path):
    torch.manual_seed(0)
    source = build_model(cfg_for("smallcnn"), NUM_CLASSES)
    state = source.state_dict()
    torch.save({"model": state, "epoch": 3} if wrap else state, tmp_path / "model.pt")
    torch.manual_seed(1)
    model = build_model(cfg_for("smallcnn", f"model.pretrained={tmp_path / 'model.pt'}"), NUM_CLASSES)
    for key, value in model.backbone.state_dict().items():
        assert torch.equal(value, state[f"backbone.{key}"]), key


def test_resnet50_acol_heads_get_the_head_lr_and_layer4_the_backbone_lr():
    """By module role, not wsolevaluation's name substrings (which give layer4 10x and the heads 1x)."""
    cfg = cfg_for("resnet50", "model.name=acol", "optim.lr=0.01", "optim.head_lr_mult=10", "optim.bias_lr_mult=2")
    model = build_model(cfg, NUM_CLASSES)
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
    ids = {role: {id(p) for name, g in groups.items() if name.startswith(role) for p in g["params"]}
           for role in ("backbone", "head")}
    assert ids["head"] == {id(p) for head in (model.head_a, model.head_b) for p in head.parameters()}
    assert ids["backbone"] == {id(p) for p in model.backbone.parameters()}
    assert {name: g["lr"] for name, g in groups.items()} == pytest.approx(
        {"backbone_weight": 0.01, "backbone_bias": 0.02, "head_weight": 0.1, "head_bias": 0.2})
    assert id(model.backbone.layer4[2].conv3.weight) in {id(p) for p in groups["backbone_weight"]["params"]}
