"""DA-WSOL (acol.methods.dawsol): the MMD and the k-means on hand-built points, the target-sample
assigner's caches and sampling rule, the start_epoch gate through the training loop, the caches in
the checkpoint, the lr groups, and a step with the DA losses on every backbone."""
import math
from pathlib import Path

import pytest
import torch

from acol import train
from acol.config import ConfigError, load_config
from acol.methods import build_model
from acol.methods.dawsol import TargetSampleAssigner, kmeans, mmd_linear
from acol.models.backbones import BACKBONES

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def gaussian_sum(distance: float, base: float) -> float:
    """sum_j exp(-d / (base 2^j)), j = 0..4: the MMD kernel with kernel_mul 2, kernel_num 5."""
    return sum(math.exp(-distance / (base * 2 ** j)) for j in range(5))


def test_mmd_of_a_unit_square_by_hand():
    # s = (0,0), (1,0); t = (0,1), (1,1). Ordered pair distances sum to 16 over 4 points: bandwidth
    # 16 / 12, divided by 2^2: base 1/3. Both i give k(s0,s1) + k(t0,t1) - k(s0,t1) - k(s1,t0).
    source = torch.tensor([[[0.0, 0.0], [1.0, 0.0]]])
    target = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    expected = 2 * gaussian_sum(1, 1 / 3) - 2 * gaussian_sum(2, 1 / 3)
    assert mmd_linear(source, target).item() == pytest.approx(expected, rel=1e-6)
    # a batch of pairs: one MMD each; swapping the sets leaves it unchanged
    both = mmd_linear(torch.cat([source, target]), torch.cat([target, source]))
    assert both.tolist() == pytest.approx([expected, expected], rel=1e-6)


def test_mmd_tiles_the_smaller_set():
    # s = (0,0) tiled to two copies; t = (0,1), (1,1): pair distances 2 x (1 + 2) + 1 = 7 unordered,
    # bandwidth 14 / 12, base 7 / 24. Terms: k(s,s) = 5 exactly, k(t0,t1) = k(1), minus k(2) and k(1).
    source = torch.tensor([[[0.0, 0.0]]])
    target = torch.tensor([[[0.0, 1.0], [1.0, 1.0]]])
    expected = 5 + gaussian_sum(1, 7 / 24) - gaussian_sum(1, 7 / 24) - gaussian_sum(2, 7 / 24)
    assert mmd_linear(source, target).item() == pytest.approx(expected, rel=1e-6)
    assert mmd_linear(target, source).item() == pytest.approx(expected, rel=1e-6)


def line(*xs: float) -> torch.Tensor:
    """Points on the x axis, as (N, 2)."""
    return torch.tensor([[x, 0.0] for x in xs])


def test_kmeans_runs_lloyd_to_strict_convergence():
    # init (0, 2, 3): labels [0,1,2,2,2,2] -> centres (0, 2, 12.25); then [0,1,1,1,2,2] -> (0, 3, 21);
    # then the same labels again: strict convergence after three iterations
    labels, centers = kmeans(line(0, 2, 3, 4, 20, 22), line(0, 2, 3))
    assert labels.tolist() == [0, 1, 1, 1, 2, 2]
    assert torch.allclose(centers, line(0, 3, 21), atol=1e-5)


def test_kmeans_relocates_an_empty_cluster_to_the_farthest_sample():
    # the centre at 100 gets nothing: the sample farthest from its own centre (1, 1 from 0) moves to it
    labels, centers = kmeans(line(0, 1, 10, 11), line(0, 100, 10.5))
    assert labels.tolist() == [0, 1, 2, 2]
    assert torch.allclose(centers, line(0, 1, 10.5), atol=1e-5)


def test_kmeans_stops_on_the_tolerance_and_relabels_with_the_final_centres():
    # with tol huge the first iteration stops it (shift <= tol), and the labels come from the new centres
    labels, centers = kmeans(line(0, 2, 3, 4, 20, 22), line(0, 2, 3), tol=1e9)
    assert torch.allclose(centers, line(0, 2, 12.25), atol=1e-5)
    assert labels.tolist() == [0, 1, 1, 1, 2, 2]


def pixels_of(*points) -> torch.Tensor:
    """(1, 2, 1, N): an image's pixel features (2 channels, one row) from 2-D points."""
    return torch.tensor(points).T.reshape(1, 2, 1, len(points))


def rows(samples: torch.Tensor) -> list[tuple]:
    """The rows of (N, 2) samples, sorted: a set drawn in random order."""
    return sorted(map(tuple, samples.tolist()))


BLOBS = ((0.0, 0.0), (0.2, 0.0), (5.0, 5.0), (5.0, 5.4), (10.0, 0.0), (10.0, 0.4))  # universum, source, target


def test_assigner_clusters_from_its_caches_and_updates_them():
    tsa = TargetSampleAssigner(num_classes=2, channels=2, sample_num_source=3, sample_num_target=2)
    feature = torch.tensor([[5.0, 5.0]])
    # the first image of class 1: the class cache starts at its image feature, so the init is
    # (universum 0, image feature, class cache = image feature); cluster 2 gets nothing (ties go to 1) and
    # takes the sample farthest from its centre, (10, 0); k-means ends at universum (0.1, 0),
    # source-like (5, 5.2), target (10, 0.2)
    source, target, universum = tsa(feature, pixels_of(*BLOBS), torch.tensor([1]))
    assert tsa.class_counts.tolist() == [0, 2] and tsa.universum_count.item() == 1
    assert tsa.class_centers[1].tolist() == pytest.approx([5.0, 5.1], abs=1e-6)  # (5, 5.2) / 2 + (5, 5) / 2
    assert tsa.universum_center.tolist() == pytest.approx([0.1, 0.0], abs=1e-6)
    assert torch.equal(universum, torch.tensor([[0.0, 0.0], [0.2, 0.0]]))
    # kept: 2 source-like pixels >= 3 - 1 and 2 target pixels >= 2; the source set starts with the image feature
    assert source.shape == (1, 3, 2) and source[0, 0].tolist() == [5.0, 5.0]
    assert rows(source[0, 1:]) == rows(torch.tensor([[5.0, 5.0], [5.0, 5.4]]))
    assert rows(target[0]) == rows(torch.tensor([[10.0, 0.0], [10.0, 0.4]]))
    # a second image of class 1 starts from the caches, (0.1, 0), (5, 5), (5, 5.1): now (5, 5.4) goes to
    # the class cache's cluster and the (10, .) blob to the image feature's, which ends at (10, 0.2);
    # the running means with counts 3 and 2
    _, target, _ = tsa(feature, pixels_of(*BLOBS), torch.tensor([1]))
    assert rows(target[0]) == rows(torch.tensor([[5.0, 5.0], [5.0, 5.4]]))
    assert tsa.class_counts.tolist() == [0, 3] and tsa.universum_count.item() == 2
    assert tsa.class_centers[1].tolist() == pytest.approx([10 / 3 + 5 * 2 / 3, 0.2 / 3 + 5.1 * 2 / 3], abs=1e-6)
    assert tsa.universum_center.tolist() == pytest.approx([0.1, 0.0], abs=1e-6)


def test_assigner_skips_images_with_too_few_samples_but_keeps_their_universum():
    few_targets = TargetSampleAssigner(num_classes=1, channels=2, sample_num_source=3, sample_num_target=3)
    source, target, universum = few_targets(torch.tensor([[5.0, 5.0]]), pixels_of(*BLOBS), torch.tensor([0]))
    assert source.shape[0] == target.shape[0] == 0 and universum.shape == (2, 2)
    few_sources = TargetSampleAssigner(num_classes=1, channels=2, sample_num_source=4, sample_num_target=2)
    source, target, universum = few_sources(torch.tensor([[5.0, 5.0]]), pixels_of(*BLOBS), torch.tensor([0]))
    assert source.shape[0] == target.shape[0] == 0 and universum.shape == (2, 2)


def test_assigner_needs_three_pixels_per_image():
    tsa = TargetSampleAssigner(num_classes=1, channels=2, sample_num_source=1, sample_num_target=1)
    with pytest.raises(ValueError, match=r"need at least 3 pixels; got \(1, 2\)"):
        tsa(torch.tensor([[5.0, 5.0]]), pixels_of((0.0, 0.0), (1.0, 1.0)), torch.tensor([0]))


def dawsol_model(backbone="smallcnn", *extra):
    cfg = load_config(overrides=["model.name=dawsol", f"model.backbone={backbone}", "model.head_channels=8",
                                 "dawsol.sample_num_source=2", "dawsol.sample_num_target=2", *extra])
    torch.manual_seed(0)
    return build_model(cfg, 3)


def test_the_da_losses_start_after_start_epoch_in_training_only():
    model = dawsol_model("smallcnn", "dawsol.start_epoch=1", "dawsol.beta=0.5", "dawsol.univer=2")
    images, labels = torch.randn(2, 3, 32, 32), torch.tensor([0, 2])
    model.train()
    for epoch in (0, 1):
        model.set_epoch(epoch)
        losses = model.loss(model(images), labels)
        assert losses["loss_mmd"].item() == losses["loss_universum"].item() == 0.0
        assert torch.equal(losses["loss"], losses["loss_cls"]) and model.tsa.universum_count.item() == 0
    model.set_epoch(2)
    losses = model.loss(model(images), labels)
    assert losses["loss_universum"].item() > 0 and model.tsa.universum_count.item() == 2
    assert losses["loss"].item() == pytest.approx((losses["loss_cls"] + 0.5 * losses["loss_mmd"]
                                                   + 2 * losses["loss_universum"]).item())
    model.eval()
    assert model.loss(model(images), labels)["loss_universum"].item() == 0.0 and model.tsa.universum_count.item() == 2


def test_the_training_loop_tells_the_model_the_epoch(tiny_overrides, tmp_path):
    # start_epoch 0: epoch 1 (index 0) is plain CE, epoch 2 adapts: the universum cache counts every
    # training image of epoch 2 only (12 images), and the caches are in the checkpoint
    train.main(["--config", str(EXPERIMENTS / "synthetic_dawsol.toml"), "--name", "gate", *tiny_overrides,
                "train.epochs=2", "dawsol.sample_num_source=2", "dawsol.sample_num_target=2"])
    state = torch.load(tmp_path / "runs" / "gate" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert state["tsa.universum_count"].item() == 12 and state["tsa.class_counts"].sum().item() == 12 + 3
    assert state["tsa.class_centers"].dtype == torch.float64 and state["tsa.class_centers"].abs().sum() > 0


def test_caches_are_state_and_restore():
    model = dawsol_model("smallcnn", "dawsol.start_epoch=-1")
    model.train()
    model.loss(model(torch.randn(2, 3, 32, 32)), torch.tensor([1, 1]))
    state = model.state_dict()
    assert {"tsa.class_centers", "tsa.class_counts", "tsa.universum_center", "tsa.universum_count"} <= set(state)
    fresh = dawsol_model("smallcnn", "dawsol.start_epoch=-1")
    fresh.load_state_dict(state)
    assert fresh.tsa.class_counts.tolist() == [0, 3, 0] and torch.equal(fresh.tsa.class_centers, model.tsa.class_centers)
    assert torch.equal(fresh.tsa.universum_center, model.tsa.universum_center)


@pytest.mark.parametrize("backbone, extra, head", [
    ("resnet50", ["model.cam_head=fc", "model.cam_conv=false"], ["head.0.bias", "head.0.weight"]),
    ("inception_v3", ["model.cam_head=conv1x1"], [f"head.{i}.{p}" for i in (0, 2, 4) for p in ("bias", "weight")]),
    ("vgg16", ["model.cam_head=fc"], [f"head.{i}.{p}" for i in (0, 2) for p in ("bias", "weight")]),
])
def test_the_authors_lr_groups_are_the_role_rule(backbone, extra, head):
    # the authors' _set_optimizer: resnet50 -- every extractor parameter (layer4 too) at lr, the classifier
    # at lr x 10; inception_v3 -- the pretrained layers at lr, SPG_A3_1b / 2b and the classifier at lr x 10
    groups = dawsol_model(backbone, *extra).param_groups("role")
    assert sorted(name for name, _ in groups["head"]) == sorted(head)
    assert all(name.startswith("backbone.") for name, _ in groups["backbone"])


def test_bad_dawsol_keys_are_one_line_errors():
    with pytest.raises(ConfigError, match=r"dawsol.start_epoch must be >= -1; got -2"):
        load_config(overrides=["model.name=dawsol", "dawsol.start_epoch=-2"])
    with pytest.raises(ConfigError, match="sample_num_source and sample_num_target: one must divide the other"):
        load_config(overrides=["model.name=dawsol", "dawsol.sample_num_source=3", "dawsol.sample_num_target=4"])


@pytest.mark.parametrize("backbone", BACKBONES.names())
def test_dawsol_adapts_for_a_step_on_every_backbone(backbone, tiny_overrides, tmp_path):
    results = train.main(["--config", str(EXPERIMENTS / "synthetic_dawsol.toml"), "--name", "run", *tiny_overrides,
                          f"model.backbone={backbone}", "train.max_steps=1", "dawsol.start_epoch=-1",
                          "dawsol.sample_num_source=1", "dawsol.sample_num_target=1"])
    assert results["step"] == 1 and 0 <= results["test"]["maxboxacc_v2"] <= 100
    state = torch.load(tmp_path / "runs" / "run" / "checkpoints" / "last.pt", weights_only=True)["model"]
    assert state["tsa.universum_count"].item() == 4  # one batch of 4 images went through the assigner
