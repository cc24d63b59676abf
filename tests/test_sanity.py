"""The cascading randomization test: rank correlation, SSIM, layer groups, and the caller's model untouched."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from acol.cams import build_localizer
from acol.cams.ops import minmax_normalize
from acol.config import load_config
from acol.evaluation import resize_and_normalize
from acol.evaluation.sanity import average_ranks, cascade, layer_groups, randomized_copies, spearman, ssim
from acol.methods import build_model


def tiny_model(name: str, trained: bool = False):
    """A smallcnn model of `name`, 3 classes; `trained`: BatchNorm away from its init (weight 2, bias
    0.5, running mean 0.1, variance 2), as training leaves it, so re-initialising it changes the model."""
    torch.manual_seed(0)
    cfg = load_config(overrides=[f"model.name={name}", "model.backbone=smallcnn", "model.head_channels=8"])
    model = build_model(cfg, 3)
    if trained:
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.data.fill_(2.0)
                m.bias.data.fill_(0.5)
                m.running_mean.fill_(0.1)
                m.running_var.fill_(2.0)
    return model


class Probe(nn.Module):
    """conv -> ReLU -> GAP -> fc, and a 1x1 conv the forward calls first whose output goes nowhere
    (without `conv`: logits = the images' channel means)."""

    def __init__(self, classifier: bool = True):
        super().__init__()
        self.probe = nn.Conv2d(3, 1, 1)
        self.conv, self.fc = (nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4, 3)) if classifier else (None, None)

    def forward(self, x, labels=None):
        self.probe(x)
        if self.conv is None:
            return {"logits": x.mean(dim=(2, 3))}
        return {"logits": self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))}


def brightness(model, images, labels):
    """A map blind to the weights: the images' channel mean (min-max normalised), with the logits."""
    return model(images, labels)["logits"], minmax_normalize(images.mean(dim=1))


def test_spearman_of_identical_reversed_and_flat_maps():
    a = np.random.default_rng(0).random((16, 16))
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, 1 - a) == pytest.approx(-1.0)
    assert spearman(a, a ** 3) == pytest.approx(1.0)  # ranks only
    assert spearman(a, np.zeros_like(a)) == 0.0
    assert average_ranks(np.array([10, 20, 20, 30, 20.0])).tolist() == [1, 3, 3, 5, 3]
    x, y = np.array([1, 2, 3, 4.0]), np.array([1, 3, 2, 4.0])  # 1 - 6 * 2 / (4 * 15)
    assert spearman(x, y) == pytest.approx(0.8)


def test_ssim_of_identical_and_different_maps():
    rng = np.random.default_rng(0)
    a = rng.random((32, 32))
    assert ssim(a, a) == pytest.approx(1.0, abs=1e-12)
    assert ssim(a, rng.random((32, 32))) < 0.2
    assert ssim(np.zeros((16, 16)), np.zeros((16, 16))) == pytest.approx(1.0)
    # a constant offset keeps the structure and contrast terms: luminance only, (2 m1 m2 + C1) / (m1^2 + m2^2 + C1)
    flat1, flat2 = np.full((11, 11), 0.2), np.full((11, 11), 0.6)
    c1 = 0.01 ** 2
    assert ssim(flat1, flat2) == pytest.approx((2 * 0.2 * 0.6 + c1) / (0.04 + 0.36 + c1))
    with pytest.raises(ValueError, match="each side >= 11"):
        ssim(np.zeros((8, 8)), np.zeros((8, 8)))


def test_layer_groups_in_reverse_forward_order():
    model = tiny_model("acol")
    images = torch.randn(1, 3, 32, 32)
    groups = layer_groups(model, images, torch.tensor([0]))
    with_params = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    assert sorted(n for _, (n,) in groups) == sorted(with_params)  # every parametrised module, one per group
    names = [name for name, _ in groups]
    assert names[0] == "head_b.4" and names[-1] == "backbone.features.0"  # B's class conv runs last
    assert names.index("head_b.0") < names.index("head_a.4")
    coarse = layer_groups(model, images, torch.tensor([0]), depth=1)
    assert [name for name, _ in coarse] == ["head_b", "head_a", "backbone"]


@pytest.mark.parametrize("method, localizer", [("acol", "inforward"), ("acol", "inforward_b"), ("cam", "gradcam")])
def test_cascade_randomizes_a_copy_step_by_step(method, localizer):
    """Every group changes these maps: one step each (ACoL's fused and B maps are computed from
    branch B; B's map depends on A through the erased positions)."""
    model = tiny_model(method, trained=True)
    before = copy.deepcopy(model.state_dict())
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    rng = torch.get_rng_state()
    result = cascade(model, build_localizer(localizer), images, labels, seed=3)
    assert torch.equal(torch.get_rng_state(), rng)  # the caller's RNG goes on as before
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the caller's model untouched
    groups = layer_groups(model, images, labels)
    assert result["groups"] == [name for name, _ in groups]
    assert len(result["spearman"]) == len(result["ssim"]) == len(groups) == result["maps"].shape[0] - 1
    assert result["maps"].shape[1:] == (2, 32, 32)
    _, trained = build_localizer(localizer)(model, images, labels)
    assert np.array_equal(result["maps"][0], resize_and_normalize(trained, (32, 32)))
    assert all(-1 <= s <= 1 for s in result["spearman"])
    again = cascade(model, build_localizer(localizer), images, labels, seed=3)
    assert again["spearman"] == result["spearman"] and np.array_equal(again["maps"], result["maps"])


def test_randomizing_every_group_changes_every_parameter():
    """The fully randomized copy (the cascade's last step) differs from the trained model in every
    parameter; the first step re-initialises the top group alone."""
    model = tiny_model("cam")
    with torch.no_grad():  # a 'trained' model: BatchNorm away from its init too
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.fill_(2.0)
                m.bias.fill_(0.5)
    groups = layer_groups(model, torch.randn(1, 3, 32, 32), None)
    trained = {name: p.clone() for name, p in model.named_parameters()}
    copies = randomized_copies(model, groups)
    first = next(copies)
    changed = {name for name, p in first.named_parameters() if not torch.equal(p, trained[name])}
    assert changed == {"fc.weight", "fc.bias"}  # the top group: the classifier
    for randomized in copies:
        pass
    for name, p in randomized.named_parameters():
        assert not torch.equal(p, trained[name]), name
    assert all(torch.equal(p, trained[name]) for name, p in model.named_parameters())


def test_groups_that_change_neither_logits_nor_map_join_the_next_step():
    """Grad-CAM on ACoL explains the logits, which come from branch A alone: randomizing head_b leaves
    logits and map bitwise equal, so the old cascade scored those 3 of its 16 steps exactly 1; now
    they are randomized with head_a.4, the first step."""
    model = tiny_model("acol", trained=True)
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    localizer = build_localizer("gradcam")
    groups = layer_groups(model, images, labels)
    names = [name for name, _ in groups]
    assert names[:4] == ["head_b.4", "head_b.2", "head_b.0", "head_a.4"] and len(names) == 16
    logits = model.eval()(images, labels)["logits"]
    params = dict(model.named_parameters())
    grads = torch.autograd.grad(logits.sum(), list(params.values()), allow_unused=True)
    assert {name.rsplit(".", 1)[0] for name, g in zip(params, grads) if g is None} == set(names[:3])

    result = cascade(model, localizer, images, labels, seed=3)
    assert result["groups"] == ["head_b.4+head_b.2+head_b.0+head_a.4"] + names[4:]
    # the old cascade: one step per group, each map against the trained one
    trained_logits, trained = localizer(model, images, labels)
    per_group = [localizer(net, images, labels) for net in randomized_copies(model, groups, seed=3)]
    for step_logits, step_maps in per_group[:3]:
        assert torch.equal(step_logits, trained_logits) and torch.equal(step_maps, trained)
    old = [float(np.mean([spearman(a, b) for a, b in zip(resize_and_normalize(trained, (32, 32)),
                                                             resize_and_normalize(m, (32, 32)))]))
           for _, m in per_group]
    assert old[:3] == [1.0, 1.0, 1.0] and not torch.equal(per_group[3][0], trained_logits)
    assert result["spearman"] == old[3:]
    depth1 = cascade(model, localizer, images, labels, seed=3, depth=1)
    assert depth1["groups"] == ["head_b+head_a", "backbone"]


def test_a_map_blind_to_the_weights_still_scores_1_at_every_step():
    """Steps are the groups that change the logits, whatever the map does; a bottom group that
    changes nothing joins the last step, or makes the only one."""
    images, labels = torch.randn(2, 3, 16, 16), torch.tensor([0, 1])
    torch.manual_seed(0)
    result = cascade(Probe(), brightness, images, labels)
    assert result["groups"] == ["fc", "conv+probe"]
    assert result["spearman"] == [1.0, 1.0] and result["maps"].shape == (3, 2, 16, 16)
    alone = cascade(Probe(classifier=False), brightness, images, labels)
    assert alone["groups"] == ["probe"] and alone["spearman"] == [1.0] and alone["maps"].shape == (2, 2, 16, 16)
