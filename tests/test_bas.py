"""BAS (acol.methods.bas): the background activation ratio, the area term, the top-k inference map on
hand-built tensors; the erased pass through the detached tail (no gradient to the tail or the classifier,
no BatchNorm statistics); the mid/tail backbones; the authors' learning-rate groups; the [bas] table."""
import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision

from acol.config import ConfigError, load_config
from acol.engine import build_optimizer
from acol.methods import build_method
from acol.methods.bas import BASConfig, background_ratio, top_k_map
from acol.models.backbones import (EfficientNetLite0MidTail, InceptionV3MidTail, ResNet50MidTail, SmallCNNMidTail,
                                   VGG16MidTail, mid_tail_backbone)
from acol.schedule import build_schedule

NUM_CLASSES = 4
EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def bas(backbone="smallcnn", *extra):
    torch.manual_seed(0)
    cfg = load_config(overrides=["model.name=bas", f"model.backbone={backbone}", "model.head_channels=16", *extra])
    return build_method(cfg, NUM_CLASSES).model()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(2, 3, 32, 32, generator=g), torch.tensor([1, 3])


def test_background_ratio_is_zero_where_the_erased_score_is_not_lower():
    erased = torch.tensor([0.5, 2.0, 1.0, 0.0, 0.0], requires_grad=True)
    full = torch.tensor([1.0, 1.0, 1.0, 0.0, 4.0], requires_grad=True)
    ge = background_ratio(erased, full, "ge")
    assert torch.equal(ge, torch.tensor([0.5 / (1 + 1e-8), 0.0, 0.0, 0.0, 0.0]))
    gt = background_ratio(erased, full, "gt")  # the ILSVRC rule keeps a tie: 1 / (1 + 1e-8)
    assert torch.equal(gt, torch.tensor([0.5 / (1 + 1e-8), 0.0, 1 / (1 + 1e-8), 0.0, 0.0]))
    ge.sum().backward()
    assert full.grad is None  # the full score is a constant
    assert torch.allclose(erased.grad, torch.tensor([1.0, 0.0, 0.0, 0.0, 0.25]))


def test_loss_terms_and_their_weights_on_a_hand_built_output():
    model = bas("smallcnn", "bas.area_weight=0.3", "bas.fg_ce_weight=0.25")
    targets = torch.tensor([0, 2])
    logits = torch.tensor([[2.0, 1.0, 0.0, 0.0], [0.0, 1.0, 4.0, 0.0]])
    erased = torch.tensor([[1.0, 0, 0, 0], [0, 0, 5.0, 0]])
    out = {"logits": logits, "logits_fg": logits.flip(1), "erased_logits": erased,
           "fg": torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[0.0, 0.0], [0.0, 1.0]]])}
    losses = model.loss(out, targets)
    assert losses["loss_area"] == pytest.approx((0.5 + 0.25) / 2)
    assert losses["loss_ratio"] == pytest.approx((0.5 + 0.0) / 2)  # image 2: erased 5 >= full 4 -> 0
    assert losses["loss_cls"] == pytest.approx(F.cross_entropy(logits, targets).item())
    assert losses["loss_fg_cls"] == pytest.approx(F.cross_entropy(logits.flip(1), targets).item())
    expected = losses["loss_cls"] + 0.25 * losses["loss_fg_cls"] + losses["loss_ratio"] + 0.3 * losses["loss_area"]
    assert losses["loss"] == pytest.approx(expected.item())


def test_authors_values_per_backbone_and_top_k_bounded_by_the_classes():
    assert BASConfig().resolved("vgg16", 200) == BASConfig(0.7, 0.0, "ge", "top_k", 80)
    assert BASConfig().resolved("resnet50", 200) == BASConfig(1.2, 0.5, "ge", "top_k", 200)
    assert BASConfig().resolved("inception_v3", 1000) == BASConfig(1.0, 0.5, "ge", "top_k", 1000)
    assert BASConfig().resolved("vgg16", 10).top_k == 10
    assert BASConfig(area_weight=2.0, fg_ce_weight=1.0, top_k=3).resolved("vgg16", 10) == BASConfig(2.0, 1.0, "ge",
                                                                                                   "top_k", 3)


def test_top_k_map_averages_the_maps_of_the_highest_logits():
    maps = torch.arange(4.0)[None, :, None, None].expand(2, 4, 2, 3).clone()  # class c's map is c everywhere
    maps[1, 0, 0, 0] = 8.0
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.2], [0.9, 0.0, 0.8, 0.1]])
    top2 = top_k_map(maps, logits, 2)
    assert torch.equal(top2[0], torch.full((2, 3), 1.5))  # classes 1 and 2
    assert top2[1, 0, 0] == 5.0 and top2[1, 1, 2] == 1.0  # classes 0 and 2
    assert torch.equal(top_k_map(maps, logits, 4)[0], torch.full((2, 3), 1.5))


def test_localization_map_top_k_or_the_label(batch):
    x, y = batch
    model = bas("smallcnn", "bas.top_k=2").eval()
    with torch.no_grad():
        out = model(x, y)
    top = out["logits"].topk(2, dim=1).indices
    by_hand = torch.stack([out["fg_maps"][i, top[i]].mean(0) for i in range(2)])
    lo, hi = by_hand.amin(dim=(1, 2), keepdim=True), by_hand.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(model.localization_map(out, y), (by_hand - lo) / (hi - lo))
    model.hparams.map_classes = "label"
    label_maps = out["fg_maps"][torch.arange(2), y]
    lo, hi = label_maps.amin(dim=(1, 2), keepdim=True), label_maps.amax(dim=(1, 2), keepdim=True)
    torch.testing.assert_close(model.localization_map(out, y), (label_maps - lo) / (hi - lo))


def test_the_erased_pass_trains_the_generator_and_the_layers_below_only(batch):
    x, y = batch
    model = bas("smallcnn").train()
    out = model(x, y)
    out["erased_logits"][torch.arange(2), y].sum().backward()
    tail = {id(p) for p in model.backbone.tail().parameters()} | {id(p) for p in model.classifier.parameters()}
    for name, p in model.named_parameters():
        if id(p) in tail:
            assert p.grad is None, name
        else:
            assert p.grad is not None and p.grad.abs().sum() > 0, name  # the generator, the mid layers


def test_the_erased_pass_leaves_the_batchnorm_statistics_alone(batch):
    x, y = batch
    model = bas("smallcnn").train()
    once = copy.deepcopy(model)
    once.classifier(once.backbone.tail()(once.backbone.mid(x)))  # the main pass alone
    before = copy.deepcopy(model.state_dict())
    model(x, y)
    changed = [k for k in before if not torch.equal(before[k], model.state_dict()[k])]
    assert any("backbone.features.12" in k for k in changed)  # a tail BN did update, from the main pass
    for key, value in once.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), key


def test_the_authors_lr_groups():
    """get_optimizer: weights lr, biases 2 lr, their `classifier*` modules (our classifier and
    fg_head) 10 lr and 20 lr; the tail of the backbone at the backbone's rates."""
    model = bas("resnet50")
    cfg = load_config(overrides=["model.name=bas", "optim.lr=0.001", "optim.head_lr_mult=10", "optim.bias_lr_mult=2",
                                 "optim.lr_rule=role"])
    optimizer = build_optimizer(model, cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    by_lr = {round(g["lr"], 9): {names[id(p)] for p in g["params"]} for g in optimizer.param_groups}
    head = lambda n: n.startswith(("classifier.", "fg_head."))  # noqa: E731
    expected = {0.001: {n for n in names.values() if not head(n) and not n.endswith("bias")},
                0.002: {n for n in names.values() if not head(n) and n.endswith("bias")},
                0.01: {n for n in names.values() if head(n) and not n.endswith("bias")},
                0.02: {n for n in names.values() if head(n) and n.endswith("bias")}}
    assert by_lr == expected
    assert "backbone.layer4.2.conv3.weight" in by_lr[0.001] and "fg_head.0.bias" in by_lr[0.02]


@pytest.mark.parametrize("recipe, decay_epoch", [("cub_bas_vgg16", 80), ("ilsvrc_bas_resnet50", 3)])
def test_recipe_schedules_are_the_authors_decay(recipe, decay_epoch):
    """Their scheduler multiplies every group's lr by 0.1 at the start of each epoch that is a nonzero
    multiple of decay_epoch."""
    cfg = load_config(EXPERIMENTS / "bas" / f"{recipe}.toml")
    schedule = build_schedule(cfg, steps_per_epoch=2)
    for epoch in range(cfg.train.epochs):
        for step in (2 * epoch, 2 * epoch + 1):
            assert schedule.lr(0.001, step) == pytest.approx(0.001 * 0.1 ** (epoch // decay_epoch), rel=1e-12)


def test_new_layers_initialised_as_the_authors():
    vgg = bas("vgg16")
    for conv in (vgg.classifier[0], vgg.fg_head[0]):  # N(0, 0.02), PyTorch's default bias
        assert abs(conv.weight.std().item() - 0.02) < 0.002 and conv.bias.abs().sum() > 0
    model = bas("smallcnn")
    for conv in (model.classifier[0], model.classifier[4], model.fg_head[0]):  # Xavier-uniform, zero bias
        fan_in, fan_out = conv.weight[0].numel(), conv.weight[:, 0].numel()
        assert conv.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out)) and not conv.bias.any()


@pytest.mark.parametrize("builder, mid, out, keys", [
    (VGG16MidTail, (512, 4, 4), (512, 2, 2), lambda: torchvision.models.vgg16().state_dict()),
    (ResNet50MidTail, (1024, 4, 4), (2048, 2, 2), lambda: torchvision.models.resnet50().state_dict()),
    (InceptionV3MidTail, (768, 4, 4), (2048, 2, 2),
     lambda: torchvision.models.inception_v3(weights=None, aux_logits=True, init_weights=False).state_dict()),
    (SmallCNNMidTail, (32, 16, 16), (64, 8, 8), None),
    (EfficientNetLite0MidTail, (112, 2, 2), (1280, 1, 1), None)])  # its weights: test_efficientnet_lite.py
def test_mid_tail_backbones(builder, mid, out, keys):
    torch.manual_seed(0)
    backbone = builder().eval()
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        m = backbone.mid(x)
        assert m.shape[1:] == mid and backbone.mid_channels == mid[0] and backbone.out_channels == out[0]
        torch.testing.assert_close(backbone(x), backbone.tail()(m), rtol=0, atol=0)
    assert backbone(x).shape[1:] == out
    if keys is not None:  # ImageNet weights load by key, every layer of the two parts
        expected = {k for k in keys() if not k.startswith(("fc.", "AuxLogits.", "classifier."))}
        assert set(backbone.state_dict()) == expected


def test_mid_tail_backbone_by_name():
    cfg = load_config(overrides=["model.backbone=smallcnn", "model.large_feature_map=false"]).model
    assert isinstance(mid_tail_backbone(cfg), SmallCNNMidTail)
    assert mid_tail_backbone(cfg)(torch.zeros(1, 3, 32, 32)).shape[-1] == 4  # the extra pool of large=false
    cfg.backbone = "alexnet"
    with pytest.raises(ValueError, match="model.backbone 'alexnet' has no mid/tail split"):
        mid_tail_backbone(cfg)


@pytest.mark.parametrize("override, message", [
    ("bas.area_weight=-0.5", r"bas.area_weight must be >= 0 \(or -1"),
    ("bas.fg_ce_weight=-2", r"bas.fg_ce_weight must be >= 0 \(or -1"),
    ("bas.top_k=-1", r"bas.top_k must be >= 0"),
    ("bas.ratio_cut=le", "bas.ratio_cut must be one of ge, gt"),
    ("bas.map_classes=pred", "bas.map_classes must be one of top_k, label")])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=["model.name=bas", override])
