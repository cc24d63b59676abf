"""The WSOL methods (acol.methods): each method's defining mechanism on hand-built inputs, the method
interface (config tables, a new method as one class), wsolevaluation's options, and every method on
every backbone training a step and evaluating on tiny data."""
import copy
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from acol import train
from acol.config import ConfigError, load_config, to_toml
from acol.engine import build_optimizer
from acol.methods import METHODS, build_method, build_model
from acol.methods.adl import ADL, POSITIONS, drop_mask
from acol.methods.cutmix import cut_box, mixed_targets, paste
from acol.methods.has import hide_cells
from acol.methods.spg import masked_bce, seed_mask, upsample
from acol.models.backbones import BACKBONES
from acol.models.wsol import cam_classifier

NUM_CLASSES = 4
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
METHODS_DOC = Path(__file__).resolve().parents[1] / "docs" / "methods.md"


def config(name, backbone="smallcnn", *extra):
    return load_config(overrides=[f"model.name={name}", f"model.backbone={backbone}", "model.head_channels=16", *extra])


def method(name, backbone="smallcnn", *extra, num_classes=NUM_CLASSES):
    torch.manual_seed(0)
    return build_method(config(name, backbone, *extra), num_classes)


# --- HaS ---------------------------------------------------------------------------------------------

def test_hide_cells_zeroes_exactly_the_hidden_cells_in_every_channel():
    images = torch.arange(1, 2 * 3 * 5 * 7 + 1, dtype=torch.float32).view(2, 3, 5, 7)
    hidden = torch.zeros(2, 3, 4, dtype=torch.bool)  # cells of 2 px: ceil(5/2) x ceil(7/2)
    hidden[0, 0, 0] = True   # rows 0-1, columns 0-1
    hidden[0, 2, 3] = True   # the corner cell cut by the border: row 4, column 6
    hidden[1, 1, 2] = True   # rows 2-3, columns 4-5
    out = hide_cells(images, 2, hidden)
    expected = images.clone()
    expected[0, :, 0:2, 0:2] = 0
    expected[0, :, 4:5, 6:7] = 0
    expected[1, :, 2:4, 4:6] = 0
    assert torch.equal(out, expected)
    assert images.min() > 0  # the input is not modified


def test_has_hides_cells_with_its_drop_rate_at_train_time_only(tiny_overrides, tmp_path):
    has = method("has", "smallcnn", "has.grid_size=4", "has.drop_rate=0.5")
    torch.manual_seed(1)
    images, labels = torch.randn(64, 3, 32, 32) + 10, torch.zeros(64, dtype=torch.long)
    hidden, targets = has.transform_batch(images, labels)
    assert targets is labels
    cells = (hidden == 0).view(64, 3, 8, 4, 8, 4)
    per_cell = cells.all(dim=(1, 3, 5))
    assert torch.equal(per_cell, cells.any(dim=(1, 3, 5)))  # whole cells, all channels
    assert abs(per_cell.float().mean().item() - 0.5) < 0.03  # 4,096 cells
    never = method("has", "smallcnn", "has.drop_rate=0").transform_batch(images, labels)[0]
    always = method("has", "smallcnn", "has.drop_rate=1").transform_batch(images, labels)[0]
    assert torch.equal(never, images) and torch.equal(always, torch.zeros_like(images))
    assert method("has", "smallcnn", "has.grid_size=0").transform_batch(images, labels)[0] is images

    # the training loop hides every pixel (drop rate 1); the evaluation of the same run sees the images
    seen = []

    def record(module, args):
        if type(module).__name__ == "GAPClassifierCAM":
            seen.append((module.training, args[0].abs().sum().item()))

    handle = nn.modules.module.register_module_forward_pre_hook(record)
    try:
        train.main(["--config", str(EXPERIMENTS / "synthetic_has.toml"), "--name", "has", "has.drop_rate=1.0",
                    *tiny_overrides])
    finally:
        handle.remove()
    assert {total for training, total in seen if training} == {0.0}
    assert seen and all(total > 0 for training, total in seen if not training)


# --- ADL ---------------------------------------------------------------------------------------------

def adl_input():
    """Two channels whose mean is the attention A = [[1, 2], [3, 4]] (image 0) and [[0, 8], [6, 2]] (image 1)."""
    a = torch.tensor([[[1.0, 2.0], [3.0, 4.0]], [[0.0, 8.0], [6.0, 2.0]]])
    x = torch.stack([a + 1, a - 1], dim=1)  # (2, 2, 2, 2), mean over channels = a
    return x, a[:, None]


def test_adl_drop_mask_and_importance_map_from_a_known_attention():
    x, attention = adl_input()
    # gamma 0.7: image 0 erases A >= 2.8 (3, 4), image 1 erases A >= 5.6 (8, 6)
    assert torch.equal(drop_mask(attention, 0.7), torch.tensor([[[[1.0, 1.0], [0.0, 0.0]]], [[[1.0, 0.0], [0.0, 1.0]]]]))
    assert torch.equal(drop_mask(attention, 1.0), torch.tensor([[[[1.0, 1.0], [1.0, 0.0]]], [[[1.0, 0.0], [1.0, 1.0]]]]))
    adl = ADL(drop_rate=1.0, threshold=0.7).train()
    assert torch.equal(adl(x), x * drop_mask(attention, 0.7))
    adl.drop_rate = 0.0
    torch.testing.assert_close(adl(x), x * torch.sigmoid(attention))
    adl.eval()
    assert adl(x) is x


def test_adl_chooses_the_drop_mask_with_its_drop_rate_one_draw_per_call():
    x, attention = adl_input()
    adl = ADL(drop_rate=0.25, threshold=0.7).train()
    torch.manual_seed(0)
    outputs = [adl(x) for _ in range(2000)]
    dropped = [torch.equal(o, x * drop_mask(attention, 0.7)) for o in outputs]
    assert all(d or torch.allclose(o, x * torch.sigmoid(attention)) for d, o in zip(dropped, outputs))
    assert abs(sum(dropped) / 2000 - 0.25) < 0.03
    torch.manual_seed(0)
    draws = [(torch.rand([]) + 0.25).floor().item() == 1 for _ in range(2000)]
    assert dropped == draws  # floor(U + drop_rate), U from the global generator


def test_adl_importance_map_passes_gradients():
    x, _ = adl_input()
    x.requires_grad_(True)
    ADL(drop_rate=0.0, threshold=0.9).train()(x).sum().backward()
    a = x.detach().mean(dim=1, keepdim=True)
    s = torch.sigmoid(a)
    expected = s + (x.detach() * s * (1 - s)).sum(dim=1, keepdim=True) / 2  # d/dx_c of sum_c' x_c' sigmoid(mean x)
    torch.testing.assert_close(x.grad, expected.expand_as(x))


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_adl_layers_sit_at_their_positions_and_leave_the_state_dict_alone(backbone):
    adl_model = method("adl", backbone).model()
    torch.manual_seed(0)
    plain = cam_classifier(BACKBONES.get(backbone)(config("cam", backbone).model), NUM_CLASSES, config("cam", backbone).model)
    assert adl_model.state_dict().keys() == plain.state_dict().keys()
    names = [n.removesuffix(".adl") for n, m in adl_model.named_modules() if isinstance(m, ADL)]
    expected = [p or adl_model.default_cam_layer for p in POSITIONS[backbone]]
    expected = [e + (".1" if e == "conv" else "") for e in expected]  # a Sequential's ADL sits on its last layer
    assert names == expected
    # in eval mode the ADL model is the plain classifier; in training each layer changes its input
    plain.load_state_dict(adl_model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(adl_model.eval()(x)["logits"], plain.eval()(x)["logits"])
        calls = []
        for m in adl_model.modules():
            if isinstance(m, ADL):
                m.register_forward_hook(lambda module, i, o: calls.append(not torch.equal(i[0], o)))
        adl_model.train()(x)
    assert calls == [True, True, True]


def test_a_copied_adl_model_runs_its_own_layers():
    model = method("adl", "smallcnn", "adl.drop_rate=1.0").model().train()
    twin = copy.deepcopy(model)
    for m in model.modules():
        if isinstance(m, ADL):
            m.threshold = 0.0  # erases everything, in the original only
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert not torch.equal(model(x)["logits"], twin(x)["logits"])


# --- CutMix ------------------------------------------------------------------------------------------

def test_cutmix_box_pixels_and_lambda_from_a_fixed_box():
    # lam 0.75: s = 0.5, cuts 5 x 4 on an 10 x 8 image; centre (1, 6): rows [-1, 3) -> [0, 3), columns [4, 8)
    assert cut_box(10, 8, 0.75, 1, 6) == (0, 3, 4, 8)
    assert cut_box(10, 8, 0.75, 5, 3) == (3, 7, 1, 5)  # odd cut 5: 2 * (5 // 2) = 4 rows
    images = torch.arange(3, dtype=torch.float32).view(3, 1, 1, 1).expand(3, 2, 10, 8).clone()
    permutation = torch.tensor([2, 0, 1])
    mixed, lam = paste(images, permutation, (0, 3, 4, 8))
    assert lam == pytest.approx(1 - 12 / 80)
    for i, j in enumerate(permutation.tolist()):
        inside = mixed[i, :, 0:3, 4:8]
        assert torch.equal(inside, torch.full_like(inside, j))
        outside = mixed[i].clone()
        outside[:, 0:3, 4:8] = i
        assert torch.equal(outside, torch.full_like(outside, i))
    assert torch.equal(images[:, 0, 0, 0], torch.tensor([0.0, 1.0, 2.0]))  # the batch is not modified


def test_cutmix_loss_is_the_area_mixed_cross_entropy():
    logits = torch.randn(3, 5, generator=torch.Generator().manual_seed(0))
    labels, permutation, lam = torch.tensor([0, 3, 4]), torch.tensor([1, 2, 0]), 0.85
    targets = mixed_targets(labels, permutation, lam, 5)
    assert torch.equal(targets.sum(1), torch.ones(3)) and targets[0, 0] == pytest.approx(0.85)
    expected = lam * F.cross_entropy(logits, labels) + (1 - lam) * F.cross_entropy(logits, labels[permutation])
    model = method("cutmix").model()
    torch.testing.assert_close(model.loss({"logits": logits}, targets)["loss"], expected)


def test_cutmix_transform_draws_and_its_gate():
    cutmix = method("cutmix", "smallcnn", "cutmix.beta=1.0", "cutmix.prob=1.0")
    images, labels = torch.randn(4, 3, 16, 16), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(5)
    mixed, targets = cutmix.transform_batch(images, labels)
    torch.manual_seed(5)  # the same draws, in the documented order
    assert torch.rand(()).item() < 1.0
    lam = torch.distributions.Beta(1.0, 1.0).sample().item()
    permutation = torch.randperm(4)
    box = cut_box(16, 16, lam, int(torch.randint(16, ())), int(torch.randint(16, ())))
    expected, lam = paste(images, permutation, box)
    assert torch.equal(mixed, expected)
    torch.testing.assert_close(targets, mixed_targets(labels, permutation, lam, NUM_CLASSES))
    off = method("cutmix", "smallcnn", "cutmix.prob=0").transform_batch(images, labels)
    assert off[0] is images and off[1] is labels


# --- SPG ---------------------------------------------------------------------------------------------

def test_spg_seed_masks_from_known_maps():
    maps = torch.zeros(2, 8, 8)
    maps[0, :5, :8] = 0.9    # 40 pixels > 0.7: foreground
    maps[0, 5, :] = 0.4      # ignored (between low and high)
    maps[1, 0, :3] = 0.8     # only 3 pixels > 0.7: fall back to 0.7 x max = 0.63
    maps[1, 1, :] = 0.65     # > 0.63: foreground by the fallback
    maps[1, 2, :] = 0.5      # ignored
    target, valid = seed_mask(maps, high=0.7, low=0.1)
    assert torch.equal(target[0], (maps[0] > 0.7).float())
    assert torch.equal(valid[0], (maps[0] > 0.7) | (maps[0] < 0.1))
    assert torch.equal(target[1], (maps[1] > 0.63).float())
    assert torch.equal(valid[1], (maps[1] > 0.63) | (maps[1] < 0.1))
    # background wins where a pixel is both (low above high)
    target, valid = seed_mask(torch.full((1, 8, 8), 0.9), high=0.5, low=0.95)
    assert not target.any() and valid.all()


def test_spg_masked_bce_averages_over_the_valid_pixels_only():
    logits = torch.tensor([[[2.0, -1.0], [0.5, 3.0]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    valid = torch.tensor([[[True, True], [False, True]]])
    expected = (F.softplus(-torch.tensor(2.0)) + F.softplus(torch.tensor(-1.0)) + F.softplus(torch.tensor(3.0))) / 3
    torch.testing.assert_close(masked_bce(logits, target, valid), expected)
    assert masked_bce(logits, target, torch.zeros_like(valid)) == 0


def test_spg_loss_wires_each_branch_to_its_guidance():
    spg = method("spg", "smallcnn", "spg.threshold_1h=0.6", "spg.threshold_1l=0.2", "spg.threshold_2h=0.55",
                 "spg.threshold_2l=0.3", "spg.threshold_3h=0.52", "spg.threshold_3l=0.45")
    model = spg.model().train()
    x, y = torch.randn(2, 3, 32, 32), torch.tensor([1, 3])
    out = model(x, y)
    size = (32, 32)
    a = upsample(out["cam_a"].detach()[torch.arange(2), y][:, None], size)
    lo, hi = a.amin(dim=(1, 2), keepdim=True), a.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(out["attention"], (a - lo) / (hi - lo))
    b1, b2, c = (F.interpolate(out[k], size=size, mode="bilinear", align_corners=False)[:, 0] for k in ("b1", "b2", "c"))
    fused = (torch.sigmoid(b1) + torch.sigmoid(b2)) / 2
    expected = {"loss_cls": F.cross_entropy(out["logits"], y),
                "loss_b2": masked_bce(b2, *seed_mask(out["attention"], 0.6, 0.2)),
                "loss_b1": masked_bce(b1, *seed_mask(torch.sigmoid(b2), 0.55, 0.3)),
                "loss_c": masked_bce(c, *seed_mask(fused, 0.52, 0.45))}
    losses = model.loss(out, y)
    for key, value in expected.items():
        torch.testing.assert_close(losses[key], value, msg=key)
    torch.testing.assert_close(losses["loss"], sum(expected.values()))
    # the masks are targets: the side losses send no gradient into the class maps' guidance
    losses["loss_b2"].backward()
    assert model.head_a[-1].weight.grad is None or not model.head_a[-1].weight.grad.any()
    assert model.branch_b2[0].weight.grad.any()
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert "attention" not in out  # no guidance at eval: the localization map is A's class map
    cam = out["cam_a"][torch.arange(2), y]
    lo, hi = cam.amin(dim=(1, 2), keepdim=True), cam.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(model.localization_map(out, y), (cam - lo) / (hi - lo))


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_spg_branches_read_their_taps(backbone):
    model = method("spg", backbone).model().eval()
    seen = {}
    model.branch_b1.register_forward_pre_hook(lambda m, args: seen.setdefault("b1", args[0]))
    model.branch_b2.register_forward_pre_hook(lambda m, args: seen.setdefault("b2", args[0]))
    for name in model.taps:
        model.get_submodule(name).register_forward_hook(lambda m, i, o, name=name: seen.setdefault(name, o))
    with torch.no_grad():
        model(torch.randn(1, 3, 64, 64))
    assert seen["b1"] is seen[model.taps[0]] and seen["b2"] is seen[model.taps[1]]


# --- wsolevaluation's options ------------------------------------------------------------------------

def head_names(model, rule):
    return {name for name, _ in model.param_groups(rule)["head"]}


def test_wsolevaluation_lr_rule_per_backbone_and_method():
    vgg_cam = method("cam", "vgg16").model()
    assert head_names(vgg_cam, "wsolevaluation") == head_names(vgg_cam, "role") == {
        "conv.0.weight", "conv.0.bias", "fc.weight", "fc.bias"}
    resnet_cam = method("cam", "resnet50", "model.cam_conv=false").model()
    assert head_names(resnet_cam, "wsolevaluation") == {n for n, _ in resnet_cam.named_parameters()
                                                       if n.startswith(("backbone.layer4.", "fc."))}
    resnet_acol = method("acol", "resnet50").model()
    layer4 = {n for n, _ in resnet_acol.named_parameters() if n.startswith("backbone.layer4.")}
    assert head_names(resnet_acol, "wsolevaluation") == layer4  # its heads get the base rate
    vgg_spg = method("spg", "vgg16").model()
    conv45 = {f"backbone.features.{i}.{p}" for i in (17, 19, 21, 24, 26, 28) for p in ("weight", "bias")}
    assert head_names(vgg_spg, "wsolevaluation") == head_names(vgg_spg, "role") | conv45
    inception_spg = method("spg", "inception_v3").model()
    assert head_names(inception_spg, "wsolevaluation") == head_names(inception_spg, "role")
    cfg = config("acol", "resnet50", "optim.lr_rule=wsolevaluation", "optim.lr=0.01", "optim.head_lr_mult=10",
                 "optim.bias_lr_mult=1")
    model = build_model(cfg, NUM_CLASSES)
    groups = {g["name"]: g for g in build_optimizer(model, cfg).param_groups}
    assert {id(p) for p in groups["head_weight"]["params"] + groups["head_bias"]["params"]} == {
        id(p) for n, p in model.named_parameters() if n.startswith("backbone.layer4.")}
    assert groups["head_weight"]["lr"] == pytest.approx(0.1) and groups["backbone_weight"]["lr"] == pytest.approx(0.01)


def test_wsolevaluation_init_of_new_layers():
    torch.manual_seed(0)
    cam = build_model(config("cam", "vgg16", "model.head_init=wsolevaluation", "model.head_channels=256"), 1000)
    fan_out = cam.conv[0].out_channels * 9
    assert cam.conv[0].weight.std().item() == pytest.approx(math.sqrt(2 / fan_out), rel=0.05)   # Kaiming (VggCam)
    assert cam.fc.weight.std().item() == pytest.approx(0.01, rel=0.05) and not cam.fc.bias.any()  # N(0, 0.01)
    acol = build_model(config("acol", "vgg16", "model.head_init=wsolevaluation", "model.head_channels=256"), 10)
    bound = math.sqrt(6 / (512 * 9 + 256 * 9))
    weight = acol.head_a[0].weight  # Xavier-uniform (VggAcol)
    assert weight.abs().max().item() <= bound * (1 + 1e-6)
    assert weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.05)
    resnet_acol = build_model(config("acol", "resnet50", "model.head_init=wsolevaluation", "model.head_channels=256"), 10)
    assert resnet_acol.head_a[0].weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.05)  # Kaiming
    before = copy.deepcopy(resnet_acol.backbone.state_dict())
    resnet_acol.init_like_wsolevaluation()
    assert all(torch.equal(v, before[k]) for k, v in resnet_acol.backbone.state_dict().items())  # backbone untouched


def test_pretrained_classifier_loads_the_imagenet_fc(tmp_path):
    reference = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50.pth"
    torch.save(reference.state_dict(), path)
    cfg = config("has", "resnet50", f"model.pretrained={path}", "model.pretrained_classifier=true",
                 "model.cam_conv=false", "model.head_init=wsolevaluation")
    model = build_model(cfg, 1000)
    assert torch.equal(model.fc.weight, reference.fc.weight) and torch.equal(model.fc.bias, reference.fc.bias)
    assert torch.equal(model.backbone.layer4[2].conv3.weight, reference.layer4[2].conv3.weight)
    with pytest.raises(ValueError, match="has 1000 classes, the model 10"):
        build_model(cfg, 10)
    with pytest.raises(ValueError, match="a GAP \\+ FC straight on the resnet50 features"):
        build_model(config("acol", "resnet50", f"model.pretrained={path}", "model.pretrained_classifier=true"), 1000)
    with pytest.raises(ConfigError, match="model.pretrained_classifier needs model.backbone=resnet50"):
        config("cam", "vgg16", f"model.pretrained={path}", "model.pretrained_classifier=true")


@pytest.mark.parametrize("large, side", [(False, 14), (True, 28)])
def test_vgg16_with_torchvision_pools(large, side, tmp_path):
    cfg = config("cam", "vgg16", "model.vgg_pool=2x2", f"model.large_feature_map={str(large).lower()}").model
    with torch.device("meta"):
        backbone = BACKBONES.get("vgg16")(cfg)
        assert backbone(torch.empty(1, 3, 224, 224)).shape == (1, 512, side, side)
    pools = [m for m in backbone.features if isinstance(m, nn.MaxPool2d)]
    assert [p.kernel_size for p in pools] == [2] * (3 if large else 4)
    reference = torchvision.models.vgg16(weights=None)
    torch.save(reference.state_dict(), tmp_path / "vgg16.pth")
    backbone = BACKBONES.get("vgg16")(cfg)
    backbone.load_pretrained(str(tmp_path / "vgg16.pth"))
    assert torch.equal(backbone.features[28].weight, reference.features[28].weight)
    spg = method("spg", "vgg16", "model.vgg_pool=2x2", f"model.large_feature_map={str(large).lower()}").model()
    pool4 = spg.backbone.features[23]  # wsolevaluation's VggSpg pools conv4_3 with MaxPool(3, 2, 1)
    if large:
        assert isinstance(pool4, nn.Identity)
    else:
        assert (pool4.kernel_size, pool4.stride, pool4.padding) == (3, 2, 1)


def test_head_dropout_before_every_conv_in_training_only():
    model = method("cam", "smallcnn", "model.cam_head=conv1x1", "model.head_dropout=0.5").model()
    before, inputs = [], []  # each conv's input without and with the dropout
    model.head_a.register_forward_pre_hook(lambda module, args: before.append(args[0].clone()))
    for i, m in enumerate(model.head_a):
        if isinstance(m, nn.Conv2d):
            m.register_forward_pre_hook(lambda module, args: inputs.append(args[0]))
        elif i < len(model.head_a) - 1:
            m.register_forward_hook(lambda module, args, out: before.append(out.clone()))
    x = torch.randn(2, 3, 32, 32)
    model.train()(x)
    assert len(inputs) == len(before) == 3
    for plain, dropped in zip(before, inputs):
        kept = dropped != 0
        torch.testing.assert_close(dropped[kept], 2 * plain[kept])  # survivors scaled by 1 / (1 - p)
        assert 0.4 < kept[plain != 0].float().mean() < 0.6
    plain = method("cam", "smallcnn", "model.cam_head=conv1x1").model()
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.equal(model.eval()(x)["cam_a"], plain.eval()(x)["cam_a"])


# --- the interface -----------------------------------------------------------------------------------

def test_method_tables_are_typed_checked_and_printed(tmp_path):
    cfg = load_config("experiments/synthetic_has.toml")
    assert cfg.method is cfg.has and cfg.has.grid_size == 16
    assert "[has]\ngrid_size = 16\ndrop_rate = 0.5\n" in to_toml(cfg)
    with pytest.raises(ConfigError, match=r"unknown key 'has.grid' \(valid keys here: has.grid_size, has.drop_rate\)"):
        load_config(overrides=["model.name=has", "has.grid=3"])
    with pytest.raises(ConfigError, match="has.grid_size must be int, got 2.5"):
        load_config(overrides=["model.name=has", "has.grid_size=2.5"])
    with pytest.raises(ConfigError, match=r"has.drop_rate must be in \[0, 1\]; got 1.5"):
        load_config(overrides=["model.name=has", "has.drop_rate=1.5"])
    with pytest.raises(ConfigError, match=r"spg.threshold_2l must be in \[0, 1\]"):
        load_config(overrides=["model.name=spg", "spg.threshold_2l=-0.1"])
    # another method's table is checked, then dropped
    other = load_config(overrides=["model.name=cam", "acol.threshold=0.9"])
    assert other.method is None and "[acol]" not in to_toml(other)
    with pytest.raises(ConfigError, match="unknown key 'cutmix.alpha'"):
        load_config(overrides=["model.name=cam", "cutmix.alpha=1"])


def doc_block(after: str, language: str) -> str:
    """The first ```language block of docs/methods.md after the line `after`."""
    text = METHODS_DOC.read_text()
    start = text.index(f"```{language}\n", text.index(after)) + len(language) + 4
    return text[start:text.index("```", start)]


@pytest.fixture
def cutout(tmp_path):
    """The docs' example method, imported from docs/methods.md's own text (registered while the test runs)."""
    path = tmp_path / "cutout.py"
    path.write_text(doc_block("`acol/methods/cutout.py`:", "python"))
    spec = importlib.util.spec_from_file_location("cutout_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module
    del METHODS._builders["cutout"]


def test_the_readme_example_method_is_one_module_and_one_experiment_file(cutout, tiny_overrides, tmp_path):
    experiment = tmp_path / "synthetic_cutout.toml"
    base = json.dumps(str(EXPERIMENTS / "synthetic_base.toml"))
    experiment.write_text(doc_block("`experiments/synthetic_cutout.toml`:", "toml").replace('"synthetic_base.toml"', base))
    cfg = load_config(experiment)
    assert cfg.cutout.size == 16 and "[cutout]\nsize = 16\n" in to_toml(cfg)
    with pytest.raises(ConfigError, match="cutout.size must be >= 1; got 0"):
        load_config(experiment, ["cutout.size=0"])
    torch.manual_seed(0)
    images, labels = torch.ones(64, 3, 40, 40), torch.zeros(64, dtype=torch.long)
    hidden, targets = build_method(cfg, NUM_CLASSES).transform_batch(images, labels)
    assert targets is labels
    for image in hidden:  # one square of 16 px, cut where it crosses the border, in every channel
        rows, cols = torch.nonzero(image[0] == 0, as_tuple=True)
        height, width = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
        assert len(rows) == height * width and height <= 16 and width <= 16 and torch.equal(image[0] == 0, image[2] == 0)
        assert (height == 16 or rows.min() == 0 or rows.max() == 39) and (width == 16 or cols.min() == 0 or cols.max() == 39)
    results = train.main(["--config", str(experiment), "--name", "cutout", *tiny_overrides])
    assert 0 <= results["test"]["maxboxacc_v2"] <= 100
    assert "[cutout]\nsize = 16" in (tmp_path / "runs" / "cutout" / "config.toml").read_text()


# --- every method on every backbone --------------------------------------------------------------------

@pytest.mark.parametrize("backbone", BACKBONES.names())
@pytest.mark.parametrize("name", METHODS.names())
def test_every_method_on_every_backbone_trains_a_step_and_evaluates(name, backbone, tiny_overrides, tmp_path):
    results = train.main(["--config", str(EXPERIMENTS / "synthetic_base.toml"), "--name", "run", f"model.name={name}",
                          *tiny_overrides, f"model.backbone={backbone}", "train.max_steps=1"])
    assert results["step"] == 1
    for split in ("val", "test"):
        assert 0 <= results[split]["maxboxacc_v2"] <= 100 and 0 <= results[split]["pxap"] <= 100


@pytest.mark.parametrize("name", ["has", "adl", "cutmix", "dawsol"])
def test_resume_is_exact_with_random_batch_transforms_and_layers(name, tiny_overrides, tmp_path):
    common = ["--config", str(EXPERIMENTS / f"synthetic_{name}.toml"), *tiny_overrides, "train.global_batch_size=6",
              "train.device=cpu"]  # on CUDA: tests/test_cuda.py, with deterministic kernels
    train.main([*common, "train.epochs=2", "--name", "straight"])
    train.main([*common, "train.epochs=1", "--name", "resumed"])
    train.main([*common, "train.epochs=2", "--name", "resumed", "--resume", "auto"])
    straight, resumed = (torch.load(tmp_path / "runs" / run / "checkpoints" / "last.pt", weights_only=True)["model"]
                         for run in ("straight", "resumed"))
    assert all(torch.equal(value, resumed[key]) for key, value in straight.items())
