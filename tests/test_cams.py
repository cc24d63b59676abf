"""Localizers: hand-computed Grad-CAM and Grad-CAM++, the CAM / Grad-CAM identities, and the
side-effect rules (hooks, modes, gradients, batch exactness, in-place ReLUs, guided gradients)."""
from __future__ import annotations

import contextlib
import copy

import pytest
import torch
from torch import nn

from acol.cams import LOCALIZERS, applicable_localizers, build_localizer
from acol.cams.hooks import capture, eval_mode, guided_relus
from acol.cams.ops import minmax_normalize
from acol.config import load_config
from acol.methods import METHODS, build_model

NUM_CLASSES = 4
FAST = {"rise": {"n_masks": 16, "grid": 3}}  # options that keep a test fast (RISE's default: 1000 masks)


class Quadratic(nn.Module):
    """logits_c = sum_k v_ck mean_ij(A_k^2) with A = features(x) = x: d logit_c / d A_kij = 2 v_ck A_kij / (hw)."""

    default_cam_layer = "features"

    def __init__(self):
        super().__init__()
        self.features = nn.Conv2d(2, 2, 1, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.eye(2).view(2, 2, 1, 1))
        self.register_buffer("v", torch.tensor([[1.0, -1.0], [0.5, 2.0]]))

    def forward(self, x, labels=None):
        a = self.features(x)
        return {"logits": (a ** 2).mean(dim=(2, 3)) @ self.v.T}


def quadratic_input():
    a0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    a1 = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    return torch.stack([a0, a1])[None], a0, a1


def test_gradcam_by_hand():
    # class 0: alpha_0 = mean(2 * 1 * A0 / 4) = 1.25, alpha_1 = mean(2 * -1 * A1 / 4) = -0.5
    x, a0, a1 = quadratic_input()
    logits, raw = build_localizer("gradcam").raw(Quadratic(), x, torch.tensor([0]))
    torch.testing.assert_close(raw[0], torch.tensor([[1.25, 1.5], [3.75, 4.0]]))
    torch.testing.assert_close(logits[0], torch.tensor([7.5 - 2.0, 3.75 + 4.0]))
    # class 1: alpha_0 = mean(A0) / 4 = 0.625, alpha_1 = mean(A1) = 1
    _, raw = build_localizer("gradcam").raw(Quadratic(), x, torch.tensor([1]))
    torch.testing.assert_close(raw[0], 0.625 * a0 + a1)


def test_gradcam_plus_plus_by_hand():
    # class 0: g0 = A0 / 2, sum(A0) = 10, so alpha_0 = 1 / (2 + 10 g0) = 1/7, 1/12, 1/17, 1/22;
    # g1 = -A1 / 2 <= 0, so relu(g1) = 0 and w_1 = 0
    x, a0, _ = quadratic_input()
    _, raw = build_localizer("gradcam_pp").raw(Quadratic(), x, torch.tensor([0]))
    w0 = 0.5 / 7 + 1 / 12 + 1.5 / 17 + 2 / 22
    torch.testing.assert_close(raw[0], w0 * a0)


def tiny(name, *extra):
    torch.manual_seed(0)
    cfg = load_config(overrides=[f"model.name={name}", "model.backbone=smallcnn", "model.head_channels=16", *extra])
    return build_model(cfg, NUM_CLASSES)


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 3, 1])


def test_cam_of_gap_fc_equals_gradcam_on_its_last_conv_up_to_relu(batch):
    model = tiny("cam").eval()
    x, y = batch
    _, cam = build_localizer("cam").raw(model, x, y)
    _, grad_cam = build_localizer("gradcam", layer="conv").raw(model, x, y)
    h, w = cam.shape[-2:]
    torch.testing.assert_close(grad_cam, torch.relu(cam) / (h * w), atol=1e-6, rtol=1e-5)
    assert (cam < 0).any()  # the identity needs the ReLU: CAM itself is signed


def test_gradcam_at_the_class_conv_equals_relu_of_the_inforward_map(batch):
    model = tiny("acol")
    x, y = batch
    _, a = build_localizer("inforward_a").raw(model, x, y)
    _, grad_cam = build_localizer("gradcam", layer="head_a.4")(model, x, y)
    torch.testing.assert_close(grad_cam, minmax_normalize(torch.relu(a)), atol=1e-5, rtol=1e-5)
    _, cam = build_localizer("cam")(model, x, y)  # the 1x1 head's CAM is its in-forward map
    torch.testing.assert_close(cam, minmax_normalize(a))


def hook_count(model):
    return sum(len(m._forward_hooks) + len(m._backward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


@pytest.mark.parametrize("model_name", ["acol", "adl", "spg"])  # adl: the model's own hooks stay
@pytest.mark.parametrize("name", ["gradcam", "gradcam_pp", "guided_backprop", "guided_gradcam"])
def test_no_hooks_modes_or_parameter_gradients_left_behind(name, model_name, batch):
    model = tiny(model_name)
    model.train()
    model.backbone.features[1].eval()  # a mixed state must come back as it was
    flags = [m.training for m in model.modules()]
    model.backbone.features[0].weight.requires_grad_(False)  # so must a partly frozen model
    requires_grad = [p.requires_grad for p in model.parameters()]
    hooks = hook_count(model)
    x, y = batch
    logits, maps = build_localizer(name)(model, x, y)
    assert hook_count(model) == hooks
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert maps.dtype == torch.float32 and maps.min() >= 0 and maps.max() <= 1
    with pytest.raises(RuntimeError):  # a forward that fails inside the hooks
        build_localizer(name)(model, x[:, :2], y)
    assert hook_count(model) == hooks
    assert [m.training for m in model.modules()] == flags
    assert [p.requires_grad for p in model.parameters()] == requires_grad


@pytest.mark.parametrize("model_name", METHODS.names())
def test_every_localizer_is_batch_exact_detached_and_works_under_no_grad(model_name, batch):
    model = tiny(model_name)
    x, y = batch
    names = applicable_localizers(model)
    # the few-shot baseline has no class scores to explain: its own map only
    expected = {"gradcam", "gradcam_pp", "guided_backprop", "guided_gradcam"} if model.classifies else {"inforward"}
    assert expected <= set(names)
    for name in names:
        localizer = build_localizer(name, **FAST.get(name, {}))
        with torch.no_grad():
            logits, maps = localizer(model, x, y)
        for i in range(len(x)):
            single_logits, single = localizer(model, x[i:i + 1], y[i:i + 1])
            assert not single.requires_grad and not single_logits.requires_grad, name  # .numpy() works on them
            torch.testing.assert_close(single[0], maps[i], atol=1e-5, rtol=1e-4, msg=name)
            torch.testing.assert_close(single_logits[0], logits[i], atol=1e-5, rtol=1e-5)


def graph_leaves(tensor):
    """The tensors an autograd graph accumulates gradients into (its leaves that require grad)."""
    leaves, seen, stack = [], set(), [tensor.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


@pytest.mark.parametrize("model_name, layer", [("acol", None), ("acol", "smoothing"), ("acol", "head_a.2"),
                                               ("cam", None), ("spg", None), ("adl", None), ("single", None),
                                               ("dawsol", None)])
def test_the_graph_starts_at_the_layer_with_the_full_graphs_gradients(model_name, layer, batch):
    """The gradient localizers record no graph before their layer (the only leaf is the activation, no
    parameter is in the graph) and return what a full graph through the whole model gives."""
    model = tiny(model_name)
    x, y = batch
    localizer = build_localizer("gradcam", layer=layer)
    seen = []

    def recorded(*args, logits=model.logits):  # the localizer's forward: the model's class scores
        seen.append(logits(*args))
        return seen[-1]

    model.logits = recorded
    logits, act, grad = localizer.gradients(model, x, y)
    (leaf,) = graph_leaves(seen[0])
    assert leaf.shape == act.shape and leaf.is_leaf and all(leaf is not p for p in model.parameters())
    with eval_mode(model), capture(localizer.target_layer(model)) as full:  # the whole model's graph
        full_logits = model(x, y)["logits"]
        full_grad = torch.autograd.grad(full_logits.gather(1, y[:, None]).sum(), full.value)[0]
    assert any(leaf is p for leaf in graph_leaves(full_logits) for p in model.backbone.parameters())
    assert torch.equal(logits, full_logits.detach()) and torch.equal(act, full.value.detach())
    assert torch.equal(grad, full_grad)


GRADIENT_LOCALIZERS = ["gradcam", "gradcam_pp", "guided_backprop", "guided_gradcam"]


@pytest.mark.parametrize("model_name", METHODS.names())
def test_model_logits_are_the_forwards_and_acol_skips_branch_b(model_name, batch):
    """What the post-hoc localizers run (`model.logits`) gives the forward's "logits" bit for bit;
    ACoL's leaves out the erasing and branch B, which do not feed them."""
    model = tiny(model_name).eval()
    x, y = batch
    calls = []
    handles = [m.register_forward_hook(lambda *_, name=name: calls.append(name)) for name, m in model.named_children()]
    try:
        for labels in (y, None):
            with torch.no_grad():
                scores, in_logits = model.logits(x, labels), list(calls)
                calls.clear()
                full, in_forward = model(x, labels)["logits"], list(calls)
                calls.clear()
            assert torch.equal(scores, full) and set(in_logits) <= set(in_forward)
            assert ("head_b" in in_forward and "head_b" not in in_logits) == (model_name == "acol")
    finally:
        for handle in handles:
            handle.remove()


@pytest.mark.parametrize("name", GRADIENT_LOCALIZERS)
def test_inference_mode_is_one_clear_error_and_inference_tensors_work(name, batch):
    model = tiny("acol")
    x, y = batch
    with torch.inference_mode(), pytest.raises(ValueError) as error:
        build_localizer(name)(model, x, y)
    assert str(error.value) == (f"{name} needs gradients: called under torch.inference_mode(); "
                                "use torch.no_grad() instead")
    with torch.inference_mode():
        frozen_input = x.clone()  # an inference tensor, used outside the mode
    torch.testing.assert_close(build_localizer(name)(model, frozen_input, y), build_localizer(name)(model, x, y))


class Unused(Quadratic):
    """Quadratic with a branch whose output is computed but unused, and a layer that never runs."""

    def __init__(self):
        super().__init__()
        self.side = nn.Conv2d(2, 2, 1)
        self.never = nn.Conv2d(2, 2, 1)

    def forward(self, x, labels=None):
        self.side(x)
        return super().forward(x, labels)


@pytest.mark.parametrize("name", ["gradcam", "gradcam_pp", "guided_gradcam"])
def test_a_layer_off_the_path_to_the_logits_is_one_clear_error(name, batch):
    x, y = batch
    cases = [(tiny("acol"), x, y, "head_b.3", "ACoL"),  # branch B runs after the logits (branch A's)
             (Unused(), *quadratic_input()[:1], torch.tensor([0]), "side", "Unused"),
             (Unused(), *quadratic_input()[:1], torch.tensor([0]), "never", "Unused")]
    for model, images, labels, layer, model_name in cases:
        with pytest.raises(ValueError) as error:
            build_localizer(name, layer=layer)(model, images, labels)
        assert str(error.value) == (f"{name}: layer {layer!r} of {model_name} does not lead to the logits; "
                                    "pick a layer on the path to the class scores")
        assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_applicable_localizers_per_model():
    assert applicable_localizers(tiny("acol")) == ["inforward", "inforward_a", "inforward_b", "gradcam",
                                                   "gradcam_pp", "guided_backprop", "guided_gradcam", "hirescam",
                                                   "xgradcam", "layercam", "eigencam", "smoothgradcampp",
                                                   "integrated_gradients", "scorecam", "ablationcam", "rise"]
    assert applicable_localizers(tiny("single"))[0] == "inforward"
    assert "inforward_b" not in applicable_localizers(tiny("single"))
    assert applicable_localizers(tiny("cam"))[0] == "cam"
    assert not any(n.startswith("inforward") for n in applicable_localizers(tiny("cam")))
    assert applicable_localizers(tiny("fsl")) == ["inforward"]


def test_inplace_relu_after_the_target_layer_does_not_corrupt_the_map(batch):
    model = tiny("acol").eval()
    assert model.head_a[3].inplace  # head_a.2 (a conv) feeds an in-place ReLU
    safe = copy.deepcopy(model)
    for m in safe.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    x, y = batch
    localizer = build_localizer("gradcam", layer="head_a.2")
    _, maps = localizer.raw(model, x, y)
    _, expected = localizer.raw(safe, x, y)
    torch.testing.assert_close(maps, expected)
    with capture(model.head_a[2]) as activation:
        model(x, y)
    assert (activation.value < 0).any()  # the recorded conv output kept its negative values


def class_gradient_at(layer: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor, guided: bool) -> torch.Tensor:
    """d(sum of the logits of classes y)/d(layer's output), through guided ReLUs or plain ones."""
    with capture(layer) as activation, torch.enable_grad():
        with guided_relus(model) if guided else contextlib.nullcontext():
            logits = model(x)["logits"]
        return torch.autograd.grad(logits.gather(1, y[:, None]).sum(), activation.value)[0]


def test_guided_backprop_gradients_through_relus_are_non_negative(batch):
    model = tiny("cam").eval()
    x, y = batch
    guided = class_gradient_at(model.conv[0], model, x, y, True)  # conv[0] feeds the in-place ReLU conv[1]
    plain = class_gradient_at(model.conv[0], model, x, y, False)
    assert (guided >= 0).all() and (guided > 0).any()
    assert (plain < 0).any()  # the plain gradient is signed: the rule is what makes it non-negative
    torch.testing.assert_close(guided, plain.clamp_min(0))  # after the last ReLU there is only the FC
    assert hook_count(model) == 0


def test_guided_gradcam_is_guided_backprop_times_upsampled_gradcam(batch):
    model = tiny("acol")
    x, y = batch
    _, guided = build_localizer("guided_backprop").raw(model, x, y)
    _, cam = build_localizer("gradcam").raw(model, x, y)
    _, product = build_localizer("guided_gradcam").raw(model, x, y)
    assert guided.shape == product.shape == (3, 32, 32) and cam.shape == (3, 8, 8)
    up = torch.nn.functional.interpolate(cam[:, None], size=(32, 32), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(product, guided * up)


def test_predicted_target_and_frozen_model(batch):
    model = tiny("cam").requires_grad_(False)
    x, _ = batch
    logits, maps = build_localizer("gradcam", target="pred")(model, x, torch.zeros(3, dtype=torch.long))
    _, expected = build_localizer("gradcam")(model, x, logits.argmax(1))
    torch.testing.assert_close(maps, expected)


def test_maps_are_float32_under_bf16_autocast(batch):
    model = tiny("acol")
    x, y = batch
    for name in applicable_localizers(model):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, maps = build_localizer(name, **FAST.get(name, {}))(model, x, y)
        assert maps.dtype == torch.float32 and torch.isfinite(maps).all(), name


def test_unknown_names_list_the_valid_ones():
    with pytest.raises(KeyError, match="gradcam_pp"):
        build_localizer("gradcam_ppp")
    with pytest.raises(ValueError, match="target"):
        build_localizer("gradcam", target="top5")
    with pytest.raises(ValueError, match="head_a.3"):
        build_localizer("gradcam", layer="head_z")(tiny("acol"), torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))
    assert set(LOCALIZERS.names()) == {"inforward", "inforward_a", "inforward_b", "cam", "gradcam", "gradcam_pp",
                                       "guided_backprop", "guided_gradcam", "hirescam", "xgradcam", "layercam",
                                       "eigencam", "smoothgradcampp", "integrated_gradients", "scorecam",
                                       "ablationcam", "rise"}


def test_bf16_maps_and_boxes_stay_close_to_float32():
    """The documented tolerance (README): on a fixed model, bf16 autocast moves the branch-A and
    Grad-CAM maps by at most 0.05 and keeps the fixed-threshold boxes at IoU >= 0.85 (mean >= 0.95)
    with the float32 ones."""
    from acol.evaluation import compute_iou, resize_and_normalize
    from acol.visualize import predicted_box

    model = tiny("acol").eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 64, 64, generator=g), torch.randint(0, NUM_CLASSES, (16,), generator=g)
    for name in ("inforward_a", "gradcam"):
        _, full = build_localizer(name)(model, x, y)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            _, half = build_localizer(name)(model, x, y)
        assert half.dtype == torch.float32
        full, half = resize_and_normalize(full, 64), resize_and_normalize(half, 64)
        assert abs(full - half).max() <= 0.05, name
        ious = [compute_iou(predicted_box(a, 0.2)[None], predicted_box(b, 0.2)[None])[0, 0] for a, b in zip(full, half)]
        assert min(ious) >= 0.85 and sum(ious) / len(ious) >= 0.95, (name, ious)
