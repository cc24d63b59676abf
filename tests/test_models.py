import re
import urllib.error

import pytest
import torch
import torchvision
from torch import nn

from acol.cams import build_localizer
from acol.cams.ops import minmax_normalize, select_class
from acol.config import load_config
from acol.methods import METHODS, build_model
from acol.models.backbones import BACKBONES, WeightsError
from acol.engine import build_optimizer

NUM_CLASSES = 5


def small_cfg(name="acol", backbone="smallcnn", *extra):
    return load_config(overrides=[f"model.name={name}", f"model.backbone={backbone}", "model.head_channels=16",
                                  *extra])


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 64, 64, generator=g), torch.tensor([0, 3, 4])


# expected (h, w) of the maps at a 64x64 input, by (backbone, large_feature_map)
MAP_SIZE = {("vgg16", True): 8, ("vgg16", False): 4, ("resnet50", True): 8, ("resnet50", False): 4,
            ("inception_v3", True): 8, ("inception_v3", False): 4, ("smallcnn", True): 16, ("smallcnn", False): 8,
            ("efficientnet_lite0", True): 4, ("efficientnet_lite0", False): 2}
BAS_MAP_SIZE = {"vgg16": 8, "resnet50": 8, "inception_v3": 8, "smallcnn": 32, "efficientnet_lite0": 4}  # its mid-level maps, fixed per backbone

# every registered model, and the cam model also without its conv (GAP + FC on the backbone)
MODEL_VARIANTS = [pytest.param(name, [], id=name) for name in METHODS.names()] + [
    pytest.param("cam", ["model.cam_conv=false"], id="cam-no-conv")]


@pytest.mark.parametrize("large", [True, False])
@pytest.mark.parametrize("backbone", BACKBONES.names())
@pytest.mark.parametrize("name, variant", MODEL_VARIANTS)
def test_forward_shapes_for_every_model(name, variant, backbone, large, batch):
    torch.manual_seed(0)
    model = build_model(small_cfg(name, backbone, f"model.large_feature_map={str(large).lower()}", *variant),
                        NUM_CLASSES)
    x, y = batch
    out = model(x, y)
    side = BAS_MAP_SIZE[backbone] if name == "bas" else MAP_SIZE[(backbone, large)]
    assert out["logits"].shape == (3, NUM_CLASSES)
    for key in ("cam_a", "cam_b"):
        if key in out:
            assert out[key].shape == (3, NUM_CLASSES, side, side)
    loc = model.localization_map(out, y)
    assert loc.shape == (3, side, side) and loc.dtype == torch.float32
    assert loc.min() >= 0 and loc.max() <= 1
    masks = torch.randint(0, 2, (3, *x.shape[-2:]), dtype=torch.uint8)  # the targets of the few-shot baseline
    losses = model.loss(out, masks if METHODS.get(name).trains_on_masks else y)
    losses["loss"].backward()
    assert all(p.grad is not None for p in model.parameters())
    expected_keys = {"acol": {"loss", "loss_a", "loss_b"},
                     "spg": {"loss", "loss_cls", "loss_b1", "loss_b2", "loss_c"},
                     "bas": {"loss", "loss_cls", "loss_fg_cls", "loss_ratio", "loss_area"},
                     "dawsol": {"loss", "loss_cls", "loss_mmd", "loss_universum"}}.get(name, {"loss"})
    assert set(losses) == expected_keys


def erasing_model(threshold):
    torch.manual_seed(1)
    return build_model(small_cfg("acol", "smallcnn", f"acol.threshold={threshold}"), NUM_CLASSES).eval()


@pytest.mark.parametrize("threshold", [0.3, 0.6, 0.9])
def test_erasing_zeroes_exactly_the_positions_at_or_above_the_threshold(threshold, batch):
    model = erasing_model(threshold)
    x, y = batch
    seen = {}
    model.head_b.register_forward_pre_hook(lambda m, args: seen.setdefault("b_input", args[0].clone()))
    with torch.no_grad():
        out = model(x, y)
        feat = model.features(x)
    a = select_class(out["cam_a"], y)
    lo, hi = a.amin(dim=(1, 2), keepdim=True), a.amax(dim=(1, 2), keepdim=True)
    erase = (a - lo) / (hi - lo) >= threshold  # (B, h, w), computed independently of the model
    assert erase.any() and (~erase).any()
    b_input = seen["b_input"]
    assert torch.equal(b_input * erase[:, None], torch.zeros_like(b_input))   # erased: all channels zero
    assert torch.equal(b_input[~erase[:, None].expand_as(b_input)], feat[~erase[:, None].expand_as(feat)])
    assert torch.equal(out["erased"], erase)


def test_erasing_label_gt_pred_and_none(batch):
    x, y = batch
    model = erasing_model(0.5)
    with torch.no_grad():
        pred = model(x)["logits"].argmax(1)
        other = (pred + 1) % NUM_CLASSES
        by_gt = model(x, other)
        by_pred = model(x)
        model.erase_with = "pred"
        ignoring_labels = model(x, other)
    assert torch.equal(by_pred["cam_b"], ignoring_labels["cam_b"])  # "pred" ignores the given labels
    assert not torch.equal(by_gt["erased"], by_pred["erased"])       # "gt" erases with the given labels


def test_fused_map_is_the_elementwise_max_of_normalised_branch_maps(batch):
    x, y = batch
    model = erasing_model(0.6)
    out = model(x, y)
    a = minmax_normalize(out["cam_a"][torch.arange(3), y])
    b = minmax_normalize(out["cam_b"][torch.arange(3), y])
    fused = model.localization_map(out, y)
    assert torch.equal(fused, torch.maximum(a, b))
    assert not torch.equal(fused, a) and not torch.equal(fused, b)
    model.fuse = "mean"
    assert torch.allclose(model.localization_map(out, y), (a + b) / 2)


@pytest.mark.parametrize("name", ["single", "acol"])
def test_in_forward_map_of_a_1x1_head_is_the_cam_of_its_weights(name, batch):
    """Conv1x1 then GAP == GAP then FC with the same weights (linearity): the class map is the CAM."""
    x, y = batch
    torch.manual_seed(2)
    model = build_model(small_cfg(name), NUM_CLASSES).eval()
    hidden = {}
    classifier = model.head_a[-1]
    classifier.register_forward_pre_hook(lambda m, args: hidden.setdefault("h", args[0]))
    with torch.no_grad():
        out = model(x, y)
    h = hidden["h"]                                        # (B, K, h, w)
    w = classifier.weight[:, :, 0, 0]                      # (C, K)
    cam = torch.einsum("bk,bkhw->bhw", w[y], h)            # CAM: sum_k w_k^c f_k, no bias
    assert torch.allclose(select_class(out["cam_a"], y), cam + classifier.bias[y, None, None], atol=1e-5)
    assert torch.allclose(minmax_normalize(cam), minmax_normalize(select_class(out["cam_a"], y)), atol=1e-5)
    gap_fc = h.mean(dim=(2, 3)) @ w.T + classifier.bias   # the GAP + FC classifier with the same weights
    assert torch.allclose(out["logits"], gap_fc, atol=1e-5)


@pytest.mark.parametrize("cam_conv", ["true", "false"])
def test_cam_model_maps_average_to_its_logits(cam_conv, batch):
    x, y = batch
    torch.manual_seed(3)
    model = build_model(small_cfg("cam", "smallcnn", f"model.cam_conv={cam_conv}"), NUM_CLASSES).eval()
    with torch.no_grad():
        out = model(x, y)
    for c in range(NUM_CLASSES):
        labels = torch.full((3,), c)
        mean_map = model.class_maps(out, labels).mean(dim=(1, 2))
        assert torch.allclose(mean_map + model.fc.bias[c], out["logits"][:, c], atol=1e-5)


@pytest.mark.parametrize("smooth", ["true", "false"])
@pytest.mark.parametrize("backbone", ["smallcnn", "resnet50"])
def test_cam_without_conv_equals_gradcam_at_its_default_layer_up_to_relu(backbone, smooth, batch):
    """GAP + FC straight on the (smoothed) backbone features (wsolevaluation's ResNetCam)."""
    torch.manual_seed(4)
    model = build_model(small_cfg("cam", backbone, "model.cam_conv=false", f"model.smooth_features={smooth}"),
                        NUM_CLASSES)
    assert model.conv is None and model.fc.in_features == model.backbone.out_channels
    x, y = batch
    _, cam = build_localizer("cam").raw(model, x, y)
    _, grad_cam = build_localizer("gradcam").raw(model, x, y)  # at model.default_cam_layer
    h, w = cam.shape[-2:]
    torch.testing.assert_close(grad_cam, torch.relu(cam) / (h * w), atol=1e-6, rtol=1e-5)
    assert (cam < 0).any()


def test_flat_maps_normalise_to_zero_not_nan():
    maps = torch.stack([torch.full((4, 4), 3.0), torch.arange(16.0).view(4, 4)])
    out = minmax_normalize(maps)
    assert torch.equal(out[0], torch.zeros(4, 4))
    assert out[1].min() == 0 and out[1].max() == 1


def test_any_positive_range_is_stretched_to_exactly_zero_one():
    tiny = minmax_normalize(torch.tensor([[0.0, 5e-9, 1e-9]]))  # a range below any fixed epsilon
    assert tiny[0, 0] == 0 and tiny[0, 1] == 1
    torch.testing.assert_close(tiny, torch.tensor([[0.0, 1.0, 0.2]]))
    subnormal = minmax_normalize(torch.tensor([[0.0, 2.8e-45]]))  # two float32 steps above zero
    assert torch.equal(subnormal, torch.tensor([[0.0, 1.0]]))
    unit = torch.tensor([[0.0, 1.0], [0.25, 0.5]])
    assert torch.equal(minmax_normalize(unit), unit)
    assert torch.equal(minmax_normalize(torch.tensor([[-2.0, 2.0], [0.0, 6.0]])), torch.tensor([[0.0, 0.5], [0.25, 1.0]]))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = minmax_normalize(torch.tensor([[1.0, 3.0], [2.0, 2.0]], dtype=torch.bfloat16) * 1e-6)
    assert half.dtype == torch.float32 and half.min() == 0 and half.max() == 1


def test_erasing_is_scale_invariant_as_wsolevaluations_normalize_tensor(batch):
    """ACoL erases with minmax_normalize, which is wsolevaluation's normalize_tensor (x - min) / (max - min)
    without an epsilon: class maps scaled by 2^-40 (exactly, ranges ~1e-12) erase the same positions."""
    model = erasing_model(0.6)
    small = erasing_model(0.6)
    with torch.no_grad():
        small.head_a[-1].weight.mul_(2.0 ** -40)
        small.head_a[-1].bias.mul_(2.0 ** -40)
        x, y = batch
        out, out_small = model(x, y), small(x, y)
    a = select_class(out_small["cam_a"], y)
    assert torch.equal(a, select_class(out["cam_a"], y) * 2.0 ** -40) and (a.amax((1, 2)) - a.amin((1, 2))).max() < 1e-8
    lo, hi = a.amin(dim=(1, 2), keepdim=True), a.amax(dim=(1, 2), keepdim=True)
    assert torch.equal(out_small["erased"], (a - lo) / (hi - lo) >= 0.6)
    assert torch.equal(out_small["erased"], out["erased"]) and out["erased"].any()


def test_maps_are_float32_under_bf16_autocast(batch):
    x, y = batch
    model = erasing_model(0.6)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(x, y)
    assert out["cam_a"].dtype == torch.bfloat16
    assert model.localization_map(out, y).dtype == torch.float32
    assert model.loss(out, y)["loss"].dtype == torch.float32


def test_vgg16_loads_a_local_torchvision_state_dict(tmp_path):
    reference = torchvision.models.vgg16(weights=None)
    path = tmp_path / "vgg16.pth"
    torch.save(reference.state_dict(), path)
    cfg = small_cfg("acol", "vgg16", f"model.pretrained={path}")
    model = build_model(cfg, NUM_CLASSES)
    for i, layer in enumerate(reference.features):
        if isinstance(layer, nn.Conv2d):
            assert torch.equal(model.backbone.features[i].weight, layer.weight)
            assert torch.equal(model.backbone.features[i].bias, layer.bias)


def test_bad_pretrained_sources_give_clear_errors(tmp_path):
    with pytest.raises(WeightsError, match="missing.pth"):
        build_model(small_cfg("acol", "vgg16", f"model.pretrained={tmp_path / 'missing.pth'}"), 2)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "partial.pth")
    with pytest.raises(WeightsError, match="missing VGG16 keys"):
        build_model(small_cfg("acol", "vgg16", f"model.pretrained={tmp_path / 'partial.pth'}"), 2)
    with pytest.raises(WeightsError, match="smallcnn has no ImageNet weights"):
        build_model(small_cfg("acol", "smallcnn", "model.pretrained=imagenet"), 2)


@pytest.mark.parametrize("backbone, weights, arch", [
    ("vgg16", torchvision.models.VGG16_Weights, "VGG16"),
    ("resnet50", torchvision.models.ResNet50_Weights, "ResNet-50"),
    ("inception_v3", torchvision.models.Inception_V3_Weights, "Inception-v3"),
])
def test_imagenet_weights_offline_say_where_to_get_them(backbone, weights, arch, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(weights, "get_state_dict", offline)  # only this backbone's weights enum
    url = re.escape(weights.IMAGENET1K_V1.url)
    with pytest.raises(WeightsError, match=f"could not download the ImageNet {arch} weights from {url}.*"
                                           "model.pretrained=<path"):
        build_model(small_cfg("acol", backbone, "model.pretrained=imagenet"), 2)


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(KeyError, match="valid names: efficientnet_lite0, inception_v3, resnet50, smallcnn, vgg16"):
        BACKBONES.get("resnet9")


def test_optimizer_lr_groups_follow_module_roles():
    cfg = small_cfg("acol", "smallcnn", "optim.lr=0.01", "optim.head_lr_mult=10", "optim.bias_lr_mult=2")
    model = build_model(cfg, NUM_CLASSES)
    optimizer = build_optimizer(model, cfg)
    lrs = {g["name"]: g["lr"] for g in optimizer.param_groups}
    assert lrs == pytest.approx({"backbone_weight": 0.01, "backbone_bias": 0.02, "head_weight": 0.1,
                                 "head_bias": 0.2})
    head_ids = {id(p) for g in optimizer.param_groups if g["name"].startswith("head") for p in g["params"]}
    expected = {id(p) for m in (model.head_a, model.head_b) for p in m.parameters()}
    assert head_ids == expected
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
