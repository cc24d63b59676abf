"""The cascading randomization test: rank correlation, SSIM, layer groups, and the caller's model untouched."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from acol.cams import build_localizer
from acol.config import load_config
from acol.evaluation import resize_and_normalize
from acol.evaluation.sanity import average_ranks, cascade, layer_groups, randomized_copies, spearman, ssim
from acol.methods import build_model


def tiny_model(name: str):
    torch.manual_seed(0)
    cfg = load_config(overrides=[f"model.name={name}", "model.backbone=smallcnn", "model.head_channels=8"])
    return build_model(cfg, 3)


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


@pytest.mark.parametrize("method, localizer", [("acol", "inforward"), ("cam", "gradcam")])
def test_cascade_randomizes_a_copy_step_by_step(method, localizer):
    model = tiny_model(method)
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
