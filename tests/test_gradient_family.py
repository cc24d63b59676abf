"""Gradient-family localizers: each against its paper's formula on the hand-built quadratic model,
the identities with Grad-CAM / CAM / Grad-CAM++, IG completeness, the noise's reproducibility, the
side-effect rules, and every model of the synthetic setup."""
from __future__ import annotations

import math

import pytest
import torch

from acol.cams import build_localizer, gradient_family
from acol.cams.gradient_family import principal_projection
from acol.cams.ops import minmax_normalize
from acol.methods import METHODS
from tests.test_cams import Quadratic, hook_count, quadratic_input, tiny

NEW = ("hirescam", "xgradcam", "layercam", "eigencam", "smoothgradcampp", "integrated_gradients")
FAST = {"smoothgradcampp": {"samples": 3, "chunk": 4}, "integrated_gradients": {"steps": 4, "chunk": 5}}  # several chunks


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 32, 32, generator=g), torch.tensor([0, 3, 1])


# Quadratic, class 0: A = x, g0 = dy/dA0 = A0 / 2, g1 = -A1 / 2, with
# A0 = [[1, 2], [3, 4]] (sum 10, sum of squares 30), A1 = [[0, 2], [0, 2]] (sum 4, sum of squares 8).

def test_hirescam_by_hand():
    x, a0, a1 = quadratic_input()
    _, raw = build_localizer("hirescam").raw(Quadratic(), x, torch.tensor([0]))
    torch.testing.assert_close(raw[0], a0 ** 2 / 2 - a1 ** 2 / 2)  # [[0.5, 0], [4.5, 6]]: signed, no ReLU
    _, raw = build_localizer("hirescam").raw(Quadratic(), -x, torch.tensor([0]))
    torch.testing.assert_close(raw[0], a0 ** 2 / 2 - a1 ** 2 / 2)  # g and A both change sign


def test_hirescam_keeps_negative_values():
    x, a0, a1 = quadratic_input()
    _, raw = build_localizer("hirescam").raw(Quadratic(), x, torch.tensor([1]))  # g0 = A0 / 4, g1 = A1
    torch.testing.assert_close(raw[0], a0 ** 2 / 4 + a1 ** 2)
    x = torch.stack([x[0, 0], 3 * x[0, 1]])[None]  # A1 = 3 [[0, 2], [0, 2]]: class 0 goes negative there
    _, raw = build_localizer("hirescam").raw(Quadratic(), x, torch.tensor([0]))
    torch.testing.assert_close(raw[0], a0 ** 2 / 2 - 9 * a1 ** 2 / 2)
    assert (raw < 0).any()


def test_xgradcam_by_hand():
    # w0 = sum(A0 / 10 * A0 / 2) = 30 / 20 = 1.5, w1 = sum(A1 / 4 * -A1 / 2) = -8 / 8 = -1
    x, a0, a1 = quadratic_input()
    _, raw = build_localizer("xgradcam").raw(Quadratic(), x, torch.tensor([0]))
    torch.testing.assert_close(raw[0], torch.relu(1.5 * a0 - a1))  # [[1.5, 1], [4.5, 4]]


def test_xgradcam_weight_is_zero_where_the_activations_sum_to_zero():
    x, a0, _ = quadratic_input()
    x = torch.stack([x[0, 0], torch.tensor([[1.0, -1.0], [2.0, -2.0]])])[None]  # A1 sums to 0
    _, raw = build_localizer("xgradcam").raw(Quadratic(), x, torch.tensor([0]))
    torch.testing.assert_close(raw[0], 1.5 * a0)


def test_layercam_by_hand():
    x, a0, a1 = quadratic_input()
    _, raw = build_localizer("layercam").raw(Quadratic(), x, torch.tensor([0]))
    torch.testing.assert_close(raw[0], a0 ** 2 / 2)  # relu(g1) = 0
    _, raw = build_localizer("layercam").raw(Quadratic(), x, torch.tensor([1]))
    torch.testing.assert_close(raw[0], a0 ** 2 / 4 + a1 ** 2)


def test_eigencam_by_hand():
    # M (pixels x channels) = [[1, 0], [2, 2], [3, 0], [4, 2]], M^T M = [[30, 12], [12, 8]]:
    # lambda_1 = 19 + sqrt(265), v_1 ~ (12, lambda_1 - 30)
    x, a0, a1 = quadratic_input()
    lam = 19 + math.sqrt(265)
    v = torch.tensor([12.0, lam - 30])
    v = v / v.norm()
    expected = v[0] * a0 + v[1] * a1
    for sign in (1, -1):  # the singular vector's sign is fixed: A and -A give the same map
        for label in (0, 1):  # class-agnostic
            _, raw = build_localizer("eigencam").raw(Quadratic(), sign * x, torch.tensor([label]))
            torch.testing.assert_close(raw[0], expected)


def test_eigencam_is_not_centred():
    # Two channels, one constant: centring would remove it and leave only the varying one.
    x = torch.stack([torch.full((2, 2), 5.0), torch.tensor([[0.0, 1.0], [0.0, 1.0]])])[None]
    _, raw = build_localizer("eigencam").raw(Quadratic(), x, torch.tensor([0]))
    m = x[0].flatten(1).T
    v = torch.linalg.eigh(m.T @ m).eigenvectors[:, -1]
    torch.testing.assert_close(raw[0].flatten(), (m @ v).abs())
    assert raw[0].min() > 0  # the constant channel dominates: no negative pixels


def svd_projection(m: torch.Tensor) -> torch.Tensor:
    """(B, n, K) float64 -> M v_1 from torch's SVD, summing to >= 0 (Eigen-CAM's earlier computation)."""
    projection = (m @ torch.linalg.svd(m, full_matrices=False).Vh[:, 0, :, None])[..., 0]
    return projection * torch.where(projection.sum(dim=1, keepdim=True) < 0, -1.0, 1.0)


@pytest.mark.parametrize("direct_gram_size", [gradient_family.DIRECT_GRAM_SIZE, 0])
@pytest.mark.parametrize("shape", [(3, 50, 8), (3, 8, 50), (2, 16, 16), (1, 1, 5)])
def test_principal_projection_is_the_svds(shape, direct_gram_size, monkeypatch):
    monkeypatch.setattr(gradient_family, "DIRECT_GRAM_SIZE", direct_gram_size)
    g = torch.Generator().manual_seed(0)
    m = torch.relu(torch.randn(*shape, generator=g, dtype=torch.float64))
    torch.testing.assert_close(principal_projection(m), svd_projection(m), atol=1e-10, rtol=1e-10)
    torch.testing.assert_close(principal_projection(-m), svd_projection(m), atol=1e-10, rtol=1e-10)  # sign fixed
    float32 = svd_projection(m.float().double())  # the maps as the float32 SVD gave them, normalised
    torch.testing.assert_close(minmax_normalize(principal_projection(m.float())), minmax_normalize(float32),
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("direct_gram_size", [gradient_family.DIRECT_GRAM_SIZE, 0])  # 0: Lanczos at any size
@pytest.mark.parametrize("transpose", [False, True])
def test_principal_projection_near_degenerate(transpose, direct_gram_size, monkeypatch):
    # s_1 / s_2 = 1 + 1e-6: v_1 is still determined, and found to float64 precision over the gap
    monkeypatch.setattr(gradient_family, "DIRECT_GRAM_SIZE", direct_gram_size)
    g = torch.Generator().manual_seed(1)
    u, _ = torch.linalg.qr(torch.randn(40, 6, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(6, 6, generator=g, dtype=torch.float64))
    s = torch.tensor([3.0, 3.0 * (1 - 1e-6), 1.0, 0.5, 0.1, 0.0], dtype=torch.float64)
    m = (u * s) @ v.T
    m = (m.T if transpose else m)[None]
    expected = 3.0 * (v[:, 0] if transpose else u[:, 0])  # s_1 u_1, or for M^T: s_1 v_1
    expected = expected * (1.0 if expected.sum() >= 0 else -1.0)
    torch.testing.assert_close(principal_projection(m)[0], expected, atol=1e-7, rtol=0)


def test_top_eigenpair_is_eighs():
    g = torch.Generator().manual_seed(2)
    m = torch.relu(torch.randn(300, 200, generator=g, dtype=torch.float64))
    gram = m.T @ m
    value, vector = gradient_family.top_eigenpair(lambda x: gram @ x, 200, steps=64)
    values, vectors = torch.linalg.eigh(gram)
    assert abs(value - values[-1]) <= 1e-12 * values[-1]
    torch.testing.assert_close(vector * torch.sign(vector @ vectors[:, -1]), vectors[:, -1], atol=1e-10, rtol=0)
    assert gradient_family.top_eigenpair(lambda x: gram @ x, 200, steps=2) is None  # not there yet: the caller's eigh


@pytest.mark.parametrize("steps", [gradient_family.LANCZOS_STEPS, 1])  # 1: Lanczos gives up, eigh decides
def test_principal_projection_of_an_activation_sized_matrix_is_the_svds(steps, monkeypatch):
    monkeypatch.setattr(gradient_family, "LANCZOS_STEPS", steps)
    g = torch.Generator().manual_seed(3)
    for shape in ((1, 196, 512), (1, 512, 196)):  # a 14 x 14 map of 512 channels, and K < n
        m = torch.relu(torch.randn(*shape, generator=g, dtype=torch.float64))
        torch.testing.assert_close(principal_projection(m), svd_projection(m), atol=1e-9, rtol=1e-9)


def test_principal_projection_of_zeros_is_zero():
    for shape in ((2, 9, 4), (2, 4, 9)):
        assert torch.equal(principal_projection(torch.zeros(shape)), torch.zeros(shape[:2], dtype=torch.float64))


def test_principal_projection_restores_the_thread_count():
    threads = torch.get_num_threads()
    principal_projection(torch.rand(1, 6, 3))
    assert torch.get_num_threads() == threads


def grad_cam_pp_weights(g1, g2, g3, act):
    denominator = 2 * g2 + act.sum(dim=(-2, -1), keepdim=True) * g3
    alpha = torch.where(denominator != 0, g2 / torch.where(denominator != 0, denominator, 1), 0)
    return (alpha * torch.relu(g1)).sum(dim=(-2, -1), keepdim=True)


def test_smoothgradcampp_by_hand():
    # For the quadratic model dy^c/dA_k(x + e) = v_ck (x_k + e_k) / 2, for each noisy copy.
    x, a0, a1 = quadratic_input()
    localizer = build_localizer("smoothgradcampp", samples=5, sigma=0.2, chunk=2, seed=3)
    _, raw = localizer.raw(Quadratic(), x, torch.tensor([0]))
    noisy = x[0] + 0.2 * (4 - 0) * localizer.noise(x)  # (5, 2, 2, 2): the image's range is 4
    v = torch.tensor([1.0, -1.0]).view(1, 2, 1, 1)
    g = v * noisy / 2
    weights = grad_cam_pp_weights(g.mean(0), g.pow(2).mean(0), g.pow(3).mean(0), x[0])
    torch.testing.assert_close(raw[0], torch.relu((weights * x[0]).sum(0)))
    assert not torch.allclose(raw, build_localizer("gradcam_pp").raw(Quadratic(), x, torch.tensor([0]))[1])


# ACoL's head_a.1 (the first ReLU of the head): the gradient there depends on the input, unlike at the
# features a GAP-linear head pools, where it is constant and noise would change nothing.

def test_smoothgradcampp_without_noise_is_gradcam_pp(batch):
    model = tiny("acol")
    x, y = batch
    _, smooth = build_localizer("smoothgradcampp", layer="head_a.1", samples=3, sigma=0.0).raw(model, x, y)
    _, plain = build_localizer("gradcam_pp", layer="head_a.1").raw(model, x, y)
    torch.testing.assert_close(smooth, plain, atol=1e-6, rtol=1e-5)
    _, noisy = build_localizer("smoothgradcampp", layer="head_a.1", samples=3).raw(model, x, y)
    assert not torch.allclose(noisy, plain, atol=1e-4)


def test_smoothgradcampp_says_once_where_the_noise_changes_nothing(batch, capsys, monkeypatch):
    """At the features a GAP-linear head pools, the gradient is the same for every input: the map is
    Grad-CAM++'s at (samples + 1)x the cost, said once per layer and process (acol-compare builds a
    localizer for each use); inside the head it is not said."""
    monkeypatch.setattr(gradient_family, "NOTED_LAYERS", set())  # as in a fresh process
    model, (x, y) = tiny("cam"), batch
    localizer = build_localizer("smoothgradcampp", samples=3)
    smooth = localizer.raw(model, x, y)[1]
    torch.testing.assert_close(smooth, build_localizer("gradcam_pp").raw(model, x, y)[1], atol=1e-6, rtol=1e-5)
    err = capsys.readouterr().err
    assert err.startswith(f"note: smoothgradcampp at {model.default_cam_layer}: the gradient there is the same for "
                          "every input") and "gradcam_pp's at 4x its cost" in err
    localizer.raw(model, x, y)
    build_localizer("smoothgradcampp", samples=3).raw(model, x, y)  # another localizer, the same layer
    assert capsys.readouterr().err == ""
    build_localizer("smoothgradcampp", layer="head_a.1", samples=3).raw(tiny("acol"), x, y)
    build_localizer("smoothgradcampp", samples=3, sigma=0.0).raw(model, x, y)  # no noise: nothing to say
    assert capsys.readouterr().err == ""


def test_smoothgradcampp_noise_is_reproducible_and_seeded(batch):
    model = tiny("acol")
    x, y = batch
    first = build_localizer("smoothgradcampp", layer="head_a.1", samples=4, chunk=5)(model, x, y)[1]
    again = build_localizer("smoothgradcampp", layer="head_a.1", samples=4, chunk=3)(model, x, y)[1]
    other = build_localizer("smoothgradcampp", layer="head_a.1", samples=4, seed=1)(model, x, y)[1]
    torch.testing.assert_close(first, again, atol=1e-6, rtol=1e-5)  # chunking changes nothing
    assert not torch.allclose(first, other, atol=1e-3)


def test_integrated_gradients_by_hand():
    # y_0 = mean(x0^2) - mean(x1^2), baseline 0: the right Riemann sum of m steps gives
    # x * mean_k 2 v x (k/m) / 4 = v x^2 / 4 * (m + 1) / m, per channel.
    x, a0, a1 = quadratic_input()
    for steps, chunk in ((1, 1), (4, 3), (10, 64)):
        localizer = build_localizer("integrated_gradients", steps=steps, chunk=chunk, baseline=(0.0, 0.0))
        _, attributions = localizer.attributions(Quadratic(), x, torch.tensor([0]))
        factor = (steps + 1) / steps
        torch.testing.assert_close(attributions[0], torch.stack([a0 ** 2, -a1 ** 2]) / 4 * factor)
        _, raw = localizer.raw(Quadratic(), x, torch.tensor([0]))
        torch.testing.assert_close(raw[0], (a0 ** 2 - a1 ** 2).abs() / 4 * factor)


def test_integrated_gradients_completeness(batch):
    """sum of attributions = y(x) - y(black) up to the Riemann error, on a real (ReLU) model."""
    model = tiny("cam").eval()
    x, y = batch
    localizer = build_localizer("integrated_gradients", steps=256, chunk=256)
    logits, attributions = localizer.attributions(model, x, y)
    black = torch.tensor(localizer.baseline).view(1, 3, 1, 1).expand_as(x)
    gap = (logits - model(black)["logits"]).gather(1, y[:, None])[:, 0]
    assert gap.abs().min() > 0.05  # a real test: the difference is not 0
    torch.testing.assert_close(attributions.sum(dim=(1, 2, 3)), gap, atol=0.02 * gap.abs().max().item(), rtol=0)
    coarse = build_localizer("integrated_gradients", steps=2).attributions(model, x, y)[1].sum(dim=(1, 2, 3))
    assert (coarse - gap).abs().max() > (attributions.sum(dim=(1, 2, 3)) - gap).abs().max()


def test_integrated_gradients_default_baseline_is_normalised_black():
    from acol.datasets.transforms import IMAGENET_MEAN, IMAGENET_STD
    black = (torch.zeros(3) - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(torch.tensor(build_localizer("integrated_gradients").baseline), black)


def test_hirescam_on_gap_fc_is_cam_over_hw_and_gradcam_is_its_relu(batch):
    # GAP + FC: dy^c/dA^k = w_ck / (hw) everywhere, so HiResCAM = CAM / (hw) (signed),
    # XGrad-CAM's weights are w_ck / (hw) as Grad-CAM's, LayerCAM keeps the positive w_ck only.
    model = tiny("cam").eval()
    x, y = batch
    _, cam = build_localizer("cam").raw(model, x, y)
    h, w = cam.shape[-2:]
    _, hires = build_localizer("hirescam", layer="conv").raw(model, x, y)
    _, grad_cam = build_localizer("gradcam", layer="conv").raw(model, x, y)
    _, xgrad = build_localizer("xgradcam", layer="conv").raw(model, x, y)
    torch.testing.assert_close(hires, cam / (h * w), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(grad_cam, torch.relu(hires), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(xgrad, grad_cam, atol=1e-6, rtol=1e-5)


def test_layercam_is_gradcam_when_the_gradient_is_constant_and_positive(batch):
    model = tiny("cam").eval()
    with torch.no_grad():
        model.fc.weight.abs_()  # every w_ck > 0: the gradient at "conv" is w_ck / (hw) > 0
    x, y = batch
    _, layer_cam = build_localizer("layercam", layer="conv").raw(model, x, y)
    _, grad_cam = build_localizer("gradcam", layer="conv").raw(model, x, y)
    torch.testing.assert_close(layer_cam, grad_cam, atol=1e-6, rtol=1e-5)
    model = tiny("cam").eval()  # signed weights: LayerCAM drops the negative ones, Grad-CAM does not
    assert not torch.allclose(build_localizer("layercam", layer="conv").raw(model, x, y)[1],
                              build_localizer("gradcam", layer="conv").raw(model, x, y)[1], atol=1e-4)


@pytest.mark.parametrize("model_name", ["acol", "cam"])
@pytest.mark.parametrize("name", NEW)
def test_rules_on_smallcnn_models(name, model_name, batch):
    """Maps in [0, 1], float32, batch-exact under no_grad; hooks, modes and .grad left as found."""
    model = tiny(model_name)
    model.train()
    model.backbone.features[1].eval()
    flags = [m.training for m in model.modules()]
    hooks = hook_count(model)
    x, y = batch
    localizer = build_localizer(name, **FAST.get(name, {}))
    with torch.no_grad():
        logits, maps = localizer(model, x, y)
    assert maps.dtype == torch.float32 and maps.shape == (3, *((32, 32) if name == "integrated_gradients" else (8, 8)))
    peaks = maps.flatten(1).amax(1)
    assert maps.min() >= 0 and ((peaks == 1) | (peaks == 0)).all() and (peaks == 1).any()  # 0: a map ReLU zeroed
    for i in range(len(x)):
        single_logits, single = localizer(model, x[i:i + 1], y[i:i + 1])
        torch.testing.assert_close(single[0], maps[i], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(single_logits[0], logits[i], atol=1e-5, rtol=1e-5)
    assert hook_count(model) == hooks
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())
    if name == "integrated_gradients":
        localizer = build_localizer(name, baseline=(0.0, 0.0))  # gets past its own check of the input
    with pytest.raises(RuntimeError):  # a forward that fails inside the hooks
        localizer(model, x[:, :2], y)
    assert hook_count(model) == hooks
    assert [m.training for m in model.modules()] == flags


def test_every_model_declares_the_new_localizers():
    for model_name in METHODS.names():
        model = tiny(model_name)
        assert set(NEW) <= set(model.localizers) if model.classifies else model.localizers == ("inforward",), model_name


def test_options_are_checked():
    assert build_localizer("integrated_gradients", steps=5).steps == 5
    with pytest.raises(ValueError, match="options: steps, chunk, baseline"):
        build_localizer("integrated_gradients", samples=5)
    with pytest.raises(ValueError, match="options: none"):
        build_localizer("gradcam", steps=5)
    with pytest.raises(ValueError, match="samples must be >= 1"):
        build_localizer("smoothgradcampp", samples=0)
    with pytest.raises(ValueError, match="sigma must be >= 0"):
        build_localizer("smoothgradcampp", sigma=-0.1)
    with pytest.raises(ValueError, match="3 input channels"):
        build_localizer("integrated_gradients", baseline=(0.0,))(tiny("cam"), torch.zeros(1, 3, 32, 32), torch.zeros(1, dtype=torch.long))


def test_predicted_target_keeps_the_clean_class(batch):
    """With target="pred" the noisy / interpolated copies use the clean image's predicted class."""
    model = tiny("cam")
    x, _ = batch
    for name, options in (("smoothgradcampp", {"samples": 3}), ("integrated_gradients", {"steps": 4})):
        logits, maps = build_localizer(name, target="pred", **options)(model, x, torch.zeros(3, dtype=torch.long))
        _, expected = build_localizer(name, **options)(model, x, logits.argmax(1))
        torch.testing.assert_close(maps, expected)
