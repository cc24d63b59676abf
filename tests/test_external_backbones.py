"""timm:<name> and torchvision:<name> backbones (acol/models/external.py): end-to-end runs, map sizes,
every localizer, lr groups, state dicts in the models' own key layout, and one-line errors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from torch import nn

from acol import train
from acol.cams import applicable_localizers, build_localizer
from acol.config import ConfigError, load_config
from acol.methods import METHODS, build_model
from acol.models.backbones import WeightsError
from acol.models.external import BackboneError

ROOT = Path(__file__).resolve().parents[1]
NUM_CLASSES = 3
FAST = {"rise": {"n_masks": 8, "grid": 3}}  # RISE's default: 1000 masks
INPUT_RESOLUTION = {"guided_backprop", "guided_gradcam", "integrated_gradients", "rise"}  # the other maps: the layer's


def cfg_for(backbone: str, *extra: str):
    return load_config(overrides=[f"model.backbone={backbone}", "model.head_channels=8", *extra])


def randomize_batchnorm(model: nn.Module) -> nn.Module:
    """Random running statistics, so that loaded buffers differ from fresh ones."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model


@pytest.mark.parametrize("backbone, extra", [
    ("timm:resnet18", []),
    ("torchvision:mobilenet_v3_small", ["model.large_feature_map=false", "data.resize_size=72", "data.crop_size=64"]),
])
def test_training_and_evaluation_run_end_to_end(backbone, extra, tiny_overrides, tmp_path):
    results = train.main(["--config", str(ROOT / "experiments" / "synthetic_acol.toml"), *tiny_overrides,
                          f"model.backbone={backbone}", *extra, "--name", "external"])
    run_dir = tmp_path / "runs" / "external"
    assert results["step"] == 3 and results["epoch"] == 1  # 12 images, batch 4
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["split"] for r in records] == ["val", "test"]
    assert 0 <= records[1]["top1_cls"] <= 100
    ckpt = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert any(k.startswith("backbone.body.") for k in ckpt["model"])


@pytest.mark.parametrize("backbone, large, channels, stride", [
    ("timm:resnet18", True, 512, 16), ("timm:resnet18", False, 512, 32),
    ("timm:convnext_atto", True, 320, 16), ("timm:convnext_atto", False, 320, 32),
    ("torchvision:resnet50", True, 2048, 16), ("torchvision:resnet50", False, 2048, 32),
    ("torchvision:mobilenet_v3_small", False, 576, 32),
])
def test_feature_maps_have_the_documented_channels_and_stride(backbone, large, channels, stride):
    model = build_model(cfg_for(backbone, f"model.large_feature_map={str(large).lower()}"), NUM_CLASSES)
    assert model.backbone.name == backbone and model.backbone.out_channels == channels
    with torch.no_grad():
        feat = model.backbone.eval()(torch.randn(2, 3, 64, 64))
    assert feat.shape == (2, channels, 64 // stride, 64 // stride)


# the methods without a fixed per-backbone layout (adl, spg and bas have one: see the config test below)
ANY_BACKBONE = [name for name in METHODS.names() if METHODS.get(name).backbones is None]


@pytest.mark.parametrize("model_name", ANY_BACKBONE)
def test_every_localizer_gives_finite_maps_of_the_right_shape(model_name):
    torch.manual_seed(0)
    model = build_model(cfg_for("timm:resnet18", f"model.name={model_name}"), NUM_CLASSES)
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    names = applicable_localizers(model)
    assert {"gradcam", "guided_backprop"} <= set(names) if model.classifies else names == ["inforward"]
    for name in names:
        logits, maps = build_localizer(name, **FAST.get(name, {}))(model, x, y)
        side = 32 if name in INPUT_RESOLUTION else 2  # timm:resnet18 at stride 16
        assert maps.shape == (2, side, side), name
        assert maps.dtype == torch.float32 and torch.isfinite(maps).all(), name
        assert maps.min() >= 0 and maps.max() <= 1, name
        assert logits.shape == (2, NUM_CLASSES)


@pytest.mark.parametrize("rule", ["role", "wsolevaluation"])
@pytest.mark.parametrize("backbone, reference", [
    ("timm:convnext_atto", lambda: timm.create_model("convnext_atto", features_only=True, out_indices=(-1,))),
    ("torchvision:mobilenet_v3_small", lambda: torchvision.models.mobilenet_v3_small().features),
])
def test_backbone_parameters_get_the_base_lr_and_the_new_layers_the_head_lr(backbone, reference, rule):
    model = build_model(cfg_for(backbone, "model.name=acol", "model.large_feature_map=false"), NUM_CLASSES)
    groups = model.param_groups(rule)
    ref = list(reference().parameters())
    assert len(groups["backbone"]) == len(ref)
    assert sum(p.numel() for _, p in groups["backbone"]) == sum(p.numel() for p in ref)
    assert {id(p) for _, p in groups["backbone"]} == {id(p) for p in model.backbone.parameters()}
    heads = [p for head in (model.head_a, model.head_b) for p in head.parameters()]
    assert [id(p) for _, p in groups["head"]] == [id(p) for p in heads]


@pytest.mark.parametrize("arch", ["resnet18", "convnext_atto"])  # convnext: timm's features_only renames the keys
def test_a_timm_state_dict_loads_by_timms_own_keys(arch, tmp_path):
    torch.manual_seed(0)
    whole = randomize_batchnorm(timm.create_model(arch)).eval()
    torch.save(whole.state_dict(), tmp_path / "w.pth")
    cfg = cfg_for(f"timm:{arch}", "model.large_feature_map=false", f"model.pretrained={tmp_path / 'w.pth'}")
    torch.manual_seed(1)
    model = build_model(cfg, NUM_CLASSES).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.backbone(x), whole.forward_features(x))  # the last stage's output
        torch.manual_seed(1)
        again = build_model(cfg, NUM_CLASSES).eval()
        assert torch.equal(again(x)["logits"], model(x)["logits"])
    classifier = whole.pretrained_cfg["classifier"]
    state = {k: v for k, v in whole.state_dict().items() if not k.startswith(classifier)}
    torch.save(state, tmp_path / "no_fc.pth")  # the classifier is ignored: present or not
    build_model(cfg_for(f"timm:{arch}", f"model.pretrained={tmp_path / 'no_fc.pth'}"), NUM_CLASSES)
    missing = next(k for k in sorted(state) if k.endswith(".weight"))
    torch.save({k: v for k, v in state.items() if k != missing}, tmp_path / "missing.pth")
    with pytest.raises(WeightsError, match=rf"missing timm:{arch} keys \['{missing}'\]"):
        build_model(cfg_for(f"timm:{arch}", f"model.pretrained={tmp_path / 'missing.pth'}"), NUM_CLASSES)
    torch.save({**state, "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=rf"unexpected timm:{arch} keys \['extra.weight'\]"):
        build_model(cfg_for(f"timm:{arch}", f"model.pretrained={tmp_path / 'extra.pth'}"), NUM_CLASSES)


def test_a_torchvision_state_dict_loads_by_its_own_keys(tmp_path):
    torch.manual_seed(0)
    whole = randomize_batchnorm(torchvision.models.mobilenet_v3_small()).eval()
    torch.save(whole.state_dict(), tmp_path / "w.pth")
    torch.manual_seed(1)
    model = build_model(cfg_for("torchvision:mobilenet_v3_small", "model.large_feature_map=false",
                                f"model.pretrained={tmp_path / 'w.pth'}"), NUM_CLASSES).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.backbone(x), whole.features(x))
    torch.save({**whole.state_dict(), "extra.weight": torch.zeros(1)}, tmp_path / "extra.pth")
    with pytest.raises(WeightsError, match=r"unexpected torchvision:mobilenet_v3_small keys \['extra.weight'\]"):
        build_model(cfg_for("torchvision:mobilenet_v3_small", "model.large_feature_map=false",
                            f"model.pretrained={tmp_path / 'extra.pth'}"), NUM_CLASSES)


def run_python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **env})


def test_without_timm_a_timm_backbone_is_one_line_naming_the_install():
    result = run_python("import sys; sys.modules['timm'] = None\n"  # import timm raises ImportError
                        "from acol.config import ConfigError, load_config\n"
                        "try: load_config(overrides=['model.backbone=timm:resnet18'])\n"
                        "except ConfigError as e: print(e)\n"
                        "load_config(overrides=['model.backbone=torchvision:resnet18'])")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("model.backbone=timm:resnet18 needs timm, an optional dependency: pip install -e .[timm] "
                             "(or pip install 'timm>=1.0')\n")


def test_imagenet_weights_offline_say_how_to_pass_a_file(tmp_path):
    result = run_python("from acol.config import load_config\n"
                        "from acol.methods import build_model\n"
                        "from acol.models.backbones import WeightsError\n"
                        "cfg = load_config(overrides=['model.backbone=timm:resnet18', 'model.pretrained=imagenet'])\n"
                        "try: build_model(cfg, 3)\n"
                        "except WeightsError as e: print(e)",
                        HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path), TORCH_HOME=str(tmp_path))
    assert result.returncode == 0, result.stderr
    line = result.stdout
    assert line.count("\n") == 1 and line.startswith("could not download the ImageNet weights of timm:resnet18")
    assert ("python -c \"import timm, torch; torch.save(timm.create_model('resnet18', pretrained=True).state_dict(), "
            "'resnet18.pth')\" and set model.pretrained=<path to resnet18.pth>") in line


@pytest.mark.parametrize("backbone, message", [
    ("timm:resnet99", r"model.backbone=timm:resnet99: unknown model 'resnet99' \(close: .*resnet\d.*\); list the valid "
                      r"names with python -c \"import timm; print\(timm.list_models\('convnext\*'\)\)\" \(a glob; "
                      r"pretrained=True: those with ImageNet weights\)$"),
    ("torchvision:resnet99", r"model.backbone=torchvision:resnet99: unknown model 'resnet99' \(close: .*\); list the "
                             r"valid names with python -c \"import torchvision; "
                             r"print\(torchvision.models.list_models\(torchvision.models\)\)\""),
    ("vgg19", r"model.backbone must be one of .*; got 'vgg19' \(or timm:<name> / torchvision:<name>"),
])
def test_unknown_names_say_how_to_find_the_valid_ones(backbone, message):
    with pytest.raises(ConfigError, match=f"^{message}"):
        load_config(overrides=[f"model.backbone={backbone}"])


@pytest.mark.parametrize("method", ["adl", "spg", "bas"])
def test_methods_with_a_per_backbone_layout_refuse_other_backbones(method):
    layouts = ", ".join(METHODS.get(method).backbones)
    with pytest.raises(ConfigError, match=rf"^model.name={method} has a layout for model.backbone {layouts} only; "
                                          r"got 'timm:resnet18'$"):
        load_config(overrides=["model.backbone=timm:resnet18", f"model.name={method}"])


@pytest.mark.parametrize("backbone, message", [
    ("timm:ese_vovnet19b_slim_dw", r"model.backbone=timm:ese_vovnet19b_slim_dw: timm cannot build it with "
                                   r"output_stride=16 \(model.large_feature_map=true; set it false"),
    ("torchvision:resnet18", r"model.backbone=torchvision:resnet18: model.large_feature_map=true dilates layer4 of "
                             r"torchvision's Bottleneck ResNets only"),
])
def test_large_feature_map_where_unsupported_is_one_clear_error(backbone, message, tiny_overrides, tmp_path, capsys):
    with pytest.raises(BackboneError, match=f"^{message}"):
        build_model(cfg_for(backbone), NUM_CLASSES)
    with pytest.raises(SystemExit):  # acol-train: one line, before the run folder exists
        train.main(["--config", str(ROOT / "experiments" / "synthetic_acol.toml"), *tiny_overrides,
                    f"model.backbone={backbone}", "--name", "large"])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"config error: {message.split(':')[0]}")
    assert not (tmp_path / "runs" / "large").exists()


def test_a_torchvision_model_without_a_global_pool_is_refused():
    with pytest.raises(BackboneError, match=r"^model.backbone=torchvision:squeezenet1_0: no global average pool"):
        build_model(cfg_for("torchvision:squeezenet1_0", "model.large_feature_map=false"), NUM_CLASSES)
