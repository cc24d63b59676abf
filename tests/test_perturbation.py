"""Perturbation localizers: Score-CAM and Ablation-CAM against their closed forms on a linear-on-GAP
model, RISE against the paper's sum on a model whose class probability is a region's mean, and the
rules (batch exactness with label-dependent forwards, chunk-size invariance, hooks, modes, gradients)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from acol.cams import build_localizer
from acol.methods import METHODS
from tests.test_cams import FAST, hook_count, tiny

NAMES = ("scorecam", "ablationcam", "rise")


class LinearGAP(nn.Module):
    """logits = V mean_ij(A) + bias (+ 2 one_hot(labels) when labels are given), A = features(x) = x."""

    default_cam_layer = "features"

    def __init__(self, label_shift: float = 0.0):
        super().__init__()
        self.features = nn.Identity()
        self.fc = nn.Linear(3, 2)
        self.label_shift = label_shift
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[1.0, -2.0, 0.5], [0.3, 1.0, -1.0]]))
            self.fc.bias.copy_(torch.tensor([0.5, -0.25]))

    def forward(self, x, labels=None):
        logits = self.fc(self.features(x).mean(dim=(2, 3)))
        if labels is not None:
            logits = logits + self.label_shift * nn.functional.one_hot(labels, 2)
        return {"logits": logits}


def linear_input():
    a0 = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    a1 = torch.tensor([[0.0, 2.0], [0.0, 2.0]])
    a2 = torch.tensor([[4.0, 0.0], [0.0, 0.0]])
    return torch.stack([a0, a1, a2])[None]


def test_ablationcam_by_hand():
    # zeroing A^k lowers y^c by V_ck mean(A^k): w_k = V_ck mean(A^k) / y^c; means 2.5, 1, 1
    x = linear_input()
    logits, raw = build_localizer("ablationcam").raw(LinearGAP(), x, torch.tensor([0]))
    # y^0 = 2.5 - 2 + 0.5 + 0.5 = 1.5: (2.5 A0 - 2 A1 + 0.5 A2) / 1.5
    torch.testing.assert_close(logits[0, 0], torch.tensor(1.5))
    torch.testing.assert_close(raw[0], torch.tensor([[3.0, 2 / 3], [5.0, 4.0]]))
    # y^1 = 0.75 + 1 - 1 - 0.25 = 0.5: ReLU((0.75 A0 + A1 - A2) / 0.5)
    _, raw = build_localizer("ablationcam").raw(LinearGAP(), x, torch.tensor([1]))
    torch.testing.assert_close(raw[0], torch.tensor([[0.0, 7.0], [4.5, 10.0]]))


def masked_logits(model, x):
    """(K, C): the logits of x * H^k, H^k the min-max of channel k (the input's own size)."""
    a = x[0]
    lo, hi = a.amin(dim=(1, 2), keepdim=True), a.amax(dim=(1, 2), keepdim=True)
    h = (a - lo) / (hi - lo).clamp_min(1e-8)
    means = (a[None] * h[:, None]).mean(dim=(2, 3))  # (K masks, K channels)
    return means @ model.fc.weight.T + model.fc.bias


@pytest.mark.parametrize("label", [0, 1])
def test_scorecam_closed_forms(label):
    model, x = LinearGAP(), linear_input()
    a = x[0]
    scores = masked_logits(model, x)[:, label]
    _, raw = build_localizer("scorecam").raw(model, x, torch.tensor([label]))
    probs = masked_logits(model, x).softmax(dim=1)[:, label]
    torch.testing.assert_close(raw[0], torch.relu(torch.einsum("k,khw->hw", probs, a)))
    _, raw = build_localizer("scorecam", weights="softmax_logit").raw(model, x, torch.tensor([label]))
    torch.testing.assert_close(raw[0], torch.relu(torch.einsum("k,khw->hw", scores.softmax(0), a)))


def test_scorecam_gives_a_flat_channel_weight_zero():
    model, x = LinearGAP(), linear_input()
    x[0, 2] = 3.0  # its mask would be all zeros: the authors' code skips such a channel
    _, raw = build_localizer("scorecam").raw(model, x, torch.tensor([0]))
    probs = masked_logits(model, x).softmax(dim=1)[:2, 0]
    torch.testing.assert_close(raw[0], torch.relu(probs[0] * x[0, 0] + probs[1] * x[0, 1]))


def ablation_by_hand(model, x, y, layer):
    """Ablation-CAM's raw maps the slow way: every (image, channel) through the whole network, the
    channel zeroed by a hook on the layer's output."""
    model.eval()
    with torch.no_grad():
        act = {}
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: act.__setitem__("a", o.clone()))
        logits = model(x, y)["logits"]
        handle.remove()
        a = act["a"]
        maps = []
        for i in range(len(x)):
            y_c = logits[i, y[i]]
            divisor = y_c if y_c != 0 else 1.0  # the localizer's rule for a logit of exactly 0
            weights = []
            for k in range(a.shape[1]):
                def zero(m, inputs, output, k=k):
                    output = output.clone()
                    output[:, k] = 0
                    return output
                handle = model.get_submodule(layer).register_forward_hook(zero)
                weights.append((y_c - model(x[i:i + 1], y[i:i + 1])["logits"][0, y[i]]) / divisor)
                handle.remove()
            maps.append(torch.relu(torch.einsum("k,khw->hw", torch.stack(weights), a[i])))
    return torch.stack(maps)


def scorecam_by_hand(model, x, y, layer):
    """Score-CAM's raw maps (weights="prob") the slow way: one masked image per forward."""
    model.eval()
    with torch.no_grad():
        act = {}
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: act.__setitem__("a", o.clone()))
        model(x, y)
        handle.remove()
        maps = []
        for i, a in enumerate(act["a"]):
            weights = []
            for channel in a:
                up = nn.functional.interpolate(channel[None, None], size=x.shape[-2:], mode="bilinear")[0, 0]
                if channel.max() == channel.min():
                    weights.append(torch.tensor(0.0))
                    continue
                mask = (up - up.min()) / (up.max() - up.min())
                weights.append(model(x[i:i + 1] * mask, y[i:i + 1])["logits"].softmax(1)[0, y[i]])
            maps.append(torch.relu(torch.einsum("k,khw->hw", torch.stack(weights), a)))
    return torch.stack(maps)


@pytest.mark.parametrize("model_name", [name for name in METHODS.names() if name != "fsl"])
def test_ablation_and_score_cam_equal_the_whole_network_computation_on_every_model(model_name):
    # Ablation-CAM runs its copies from the layer on (ACoL's branch B and BAS's foreground head take
    # the features from before it); both must equal one image, one channel per whole forward.
    model = tiny(model_name)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3])
    layer = model.default_cam_layer
    _, ablation = build_localizer("ablationcam", chunk=5).raw(model, x, y)
    torch.testing.assert_close(ablation, ablation_by_hand(model, x, y, layer), atol=1e-5, rtol=1e-4)
    _, score = build_localizer("scorecam", chunk=5).raw(model, x, y)
    torch.testing.assert_close(score, scorecam_by_hand(model, x, y, layer), atol=1e-5, rtol=1e-4)


class Concatenating(nn.Module):
    """logits = fc(GAP(cat(x, relu(conv(x))))): the input reaches the logits past the hooked conv by
    a concatenation, which a batch-1 input cannot broadcast over the copies."""

    default_cam_layer = "conv"

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(7, 2)

    def forward(self, x, labels=None):
        return {"logits": self.fc(torch.cat([x, torch.relu(self.conv(x))], dim=1).mean(dim=(2, 3)))}


def test_ablationcam_runs_the_whole_network_where_the_model_does_not_broadcast():
    model = Concatenating()
    x, y = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1])
    _, raw = build_localizer("ablationcam", chunk=3).raw(model, x, y)
    torch.testing.assert_close(raw, ablation_by_hand(model, x, y, "conv"))


class RegionProbability(nn.Module):
    """P(class 0 | x) = mean of x's channel 0 over rows 2:8, columns 4:10; P(class 1) = 1 - that."""

    def forward(self, x, labels=None):
        q = x[:, 0, 2:8, 4:10].mean(dim=(1, 2)).clamp(1e-6, 1 - 1e-6)
        return {"logits": torch.stack([q.log(), (1 - q).log()], dim=1)}


def test_rise_is_the_papers_sum_and_concentrates_on_the_region():
    rise = build_localizer("rise", n_masks=300, grid=4, p=0.5, chunk=64)
    x = torch.ones(1, 3, 16, 16)
    masks = rise.all_masks((16, 16)).numpy().astype(np.float64)  # (N, 16, 16)
    inside = np.zeros((16, 16), bool)
    inside[2:8, 4:10] = True
    probability = masks[:, inside].mean(axis=1)
    for label, p_class in ((0, probability), (1, 1 - probability)):
        _, raw = rise.raw(RegionProbability(), x, torch.tensor([label]))
        expected = (p_class[:, None, None] * masks).sum(axis=0) / (300 * 0.5)
        np.testing.assert_allclose(raw[0].numpy(), expected, rtol=1e-5, atol=1e-6)
        gap = raw[0][torch.from_numpy(inside)].mean() - raw[0][~torch.from_numpy(inside)].mean()
        assert (gap > 0.05) if label == 0 else (gap < -0.05), (label, gap)


def test_rise_masks():
    rise = build_localizer("rise", n_masks=2000, grid=7, p=0.5, seed=3)
    masks = rise.all_masks((20, 30))
    assert masks.shape == (2000, 20, 30) and masks.dtype == torch.float32
    assert masks.min() >= 0 and masks.max() <= 1
    assert abs(masks.mean() - 0.5) < 0.02  # bilinear upsampling keeps the keep probability on average
    torch.testing.assert_close(masks, rise.all_masks((20, 30)))  # seeded: the same every call
    assert not torch.equal(masks, build_localizer("rise", n_masks=2000, seed=4).all_masks((20, 30)))
    torch.testing.assert_close(build_localizer("rise", n_masks=5, p=1.0).all_masks((20, 30)), torch.ones(5, 20, 30))


@pytest.mark.parametrize("name", NAMES)
def test_batch_exact_with_label_dependent_forwards_and_chunk_invariant(name):
    model = LinearGAP(label_shift=2.0)  # copies forwarded with the wrong labels would change the scores
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(3, 3, 6, 6, generator=g), torch.tensor([0, 1, 1])
    localizer = build_localizer(name, chunk=64, **FAST.get(name, {}))
    _, maps = localizer.raw(model, x, y)
    _, one_by_one = build_localizer(name, chunk=1, **FAST.get(name, {})).raw(model, x, y)
    torch.testing.assert_close(one_by_one, maps, atol=1e-6, rtol=1e-5)
    for i in range(3):
        torch.testing.assert_close(localizer.raw(model, x[i:i + 1], y[i:i + 1])[1][0], maps[i], atol=1e-6, rtol=1e-5)
    shifted = LinearGAP(label_shift=0.0)
    if name != "ablationcam":  # y^c - y^c_k cancels a label's constant shift
        assert not torch.allclose(localizer.raw(shifted, x, y)[1], maps)


@pytest.mark.parametrize("model_name", ["acol", "cam"])
@pytest.mark.parametrize("name", NAMES)
def test_rules_on_smallcnn_models(name, model_name):
    model = tiny(model_name)
    model.train()
    model.backbone.features[1].eval()  # a mixed state must come back as it was
    flags = [m.training for m in model.modules()]
    hooks = hook_count(model)
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 1])
    localizer = build_localizer(name, chunk=16, **FAST.get(name, {}))
    logits, maps = localizer(model, x, y)
    assert hook_count(model) == hooks
    assert [m.training for m in model.modules()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert maps.dtype == torch.float32 and maps.min() >= 0 and maps.max() <= 1 and maps.max() > 0
    assert maps.shape == ((3, 32, 32) if name == "rise" else (3, 8, 8))
    assert localizer.forwards_per_image == (17 if name == "rise" else 1 + 16)  # 16 = head_channels
    with torch.no_grad():
        torch.testing.assert_close(localizer(model, x, y)[1], maps)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert localizer(model, x, y)[1].dtype == torch.float32
    with pytest.raises(RuntimeError):  # a forward that fails inside the hooks
        localizer(model, x[:, :2], y)
    assert hook_count(model) == hooks
    assert [m.training for m in model.modules()] == flags


def test_predicted_target_uses_the_argmax_and_no_forward_labels():
    model = LinearGAP(label_shift=2.0)
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    for name in NAMES:
        options = FAST.get(name, {})
        logits, maps = build_localizer(name, target="pred", **options)(model, x, torch.zeros(2, dtype=torch.long))
        _, expected = build_localizer(name, **options)(LinearGAP(), x, logits.argmax(1))
        torch.testing.assert_close(maps, expected, msg=name)


def test_bad_options_name_the_option_and_value():
    with pytest.raises(ValueError, match="chunk .* got 0"):
        build_localizer("scorecam", chunk=0)
    with pytest.raises(ValueError, match="prob, softmax_logit; got 'logit'"):
        build_localizer("scorecam", weights="logit")
    with pytest.raises(ValueError, match=r"\(0, 1\]; got 0"):
        build_localizer("rise", p=0)
    with pytest.raises(ValueError, match="n_masks=0"):
        build_localizer("rise", n_masks=0)


def rows_scored(model: LinearGAP) -> list[int]:
    """A list that gathers the batch size of every call of the model's classifier (the copies scored)."""
    rows = []
    model.fc.register_forward_pre_hook(lambda module, inputs: rows.append(len(inputs[0])))
    return rows


def test_scorecam_softmax_logit_scores_flat_channels_by_one_zero_image_per_image():
    # channel 2 is flat in both images: its mask is all zeros, so its score is the zero image's logit,
    # bias + 2 one_hot(label) (the labels reach the forward), one forward per image for all flat channels
    model = LinearGAP(label_shift=2.0)
    rows = rows_scored(model)
    x = torch.cat([linear_input(), linear_input().flip(-1)])
    x[:, 2] = torch.tensor([3.0, -1.0])[:, None, None]
    x[1, 1] = 0.5  # and channel 1 of the second image
    y = torch.tensor([0, 1])
    _, raw = build_localizer("scorecam", weights="softmax_logit").raw(model, x, y)
    assert sum(rows) == 2 + 3 + 2  # the plain forward, the 3 varying channels, one zero image per image
    for i, (label, flat) in enumerate(((0, [2]), (1, [1, 2]))):
        scores = masked_logits(model, x[i:i + 1])[:, label] + 2.0
        zero_image = model.fc.bias[label] + 2.0
        scores[flat] = zero_image
        torch.testing.assert_close(raw[i], torch.relu(torch.einsum("k,khw->hw", scores.softmax(0), x[i])))


def test_ablationcam_gives_a_zero_channel_weight_zero_without_a_forward():
    model = LinearGAP()
    rows = rows_scored(model)
    x = linear_input()
    x[0, 1] = 0.0  # zero everywhere: no forward, weight 0
    x[0, 2] = 2.0  # flat but not zero: zeroing it moves the logit, so it is forwarded
    _, raw = build_localizer("ablationcam").raw(model, x, torch.tensor([0]))
    assert sum(rows) == 1 + 2
    torch.testing.assert_close(raw, ablation_by_hand(model, x, torch.tensor([0]), "features"))
    # w_k = V_0k mean(A^k) / y^0, y^0 = 2.5 + 0 + 0.5 * 2 + 0.5 = 4: (2.5 A0 + 1 A2) / 4, A1 weight 0
    torch.testing.assert_close(raw[0], (2.5 * x[0, 0] + x[0, 2]) / 4)
