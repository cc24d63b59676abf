"""The learning-rate schedule: hand-computed factors, the official recipes' lrs as before (per-epoch
MultiStepLR), the config checks, and tiny runs whose logged lr follows a schedule cut by train.max_steps."""
import math
from pathlib import Path

import pytest
import torch

from acol import train
from acol.config import ConfigError, load_config
from acol.schedule import LRSchedule, build_schedule
from tests.test_tensorboard import events

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "experiments"
CONFIG = str(EXPERIMENTS / "synthetic_acol.toml")
RECIPES = sorted(p for p in EXPERIMENTS.glob("**/*.toml") if p.parent.name != "ablations")


def test_warmup_then_step_decay_by_hand():
    schedule = LRSchedule(kind="step", warmup_steps=4, warmup_start_factor=0.2, milestones=(6, 8), gamma=0.5)
    lrs = [schedule.lr(2.0, step) for step in range(10)]
    assert lrs == pytest.approx([0.4, 0.8, 1.2, 1.6, 2.0, 2.0, 1.0, 1.0, 0.5, 0.5])
    assert lrs[4:] == [2.0, 2.0, 1.0, 1.0, 0.5, 0.5]  # exact once the warm-up is over


def test_warmup_then_cosine_by_hand():
    schedule = LRSchedule(kind="cosine", warmup_steps=2, warmup_start_factor=0.0, total_steps=6, final_factor=0.1)
    # after the warm-up the cosine runs over steps 2..5: progress 0, 1/3, 2/3, 1
    expected = [0.0, 0.5, 1.0, 0.1 + 0.9 * 0.75, 0.1 + 0.9 * 0.25, 0.1]
    assert [schedule.lr(1.0, step) for step in range(6)] == pytest.approx(expected)


def test_epoch_keys_become_steps_and_max_steps_sets_the_cosine_length():
    cfg = load_config(overrides=["optim.warmup_epochs=1", "optim.lr_decay_epochs=[2, 3]", "train.epochs=4"])
    assert build_schedule(cfg, steps_per_epoch=5) == LRSchedule(
        kind="step", warmup_steps=5, warmup_start_factor=0.001, milestones=(10, 15), gamma=0.1, total_steps=20)
    cfg = load_config(overrides=["optim.schedule=cosine", "optim.warmup_steps=3", "train.epochs=4",
                                 "train.max_steps=7"])
    assert build_schedule(cfg, steps_per_epoch=5).total_steps == 7  # max_steps cuts the 20-step run
    cfg = load_config(overrides=["optim.schedule=cosine", "train.epochs=4", "train.max_steps=100"])
    assert build_schedule(cfg, steps_per_epoch=5).total_steps == 20  # the epochs end the run first


def test_every_group_scales_by_the_same_factor():
    params = [torch.zeros(1, requires_grad=True) for _ in range(3)]
    optimizer = torch.optim.SGD([{"params": [p], "lr": lr} for p, lr in zip(params, (0.01, 0.1, 0.2))], lr=0.01)
    schedule = LRSchedule(kind="cosine", warmup_steps=3, total_steps=10, final_factor=0.0)
    for step in (0, 2, 5, 9):
        schedule.apply(optimizer, [0.01, 0.1, 0.2], step)
        lrs = [group["lr"] for group in optimizer.param_groups]
        assert lrs == pytest.approx([lr / 0.01 * lrs[0] for lr in (0.01, 0.1, 0.2)], abs=1e-12)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_recipes_keep_their_per_epoch_learning_rates(recipe):
    """Every group's lr at every step equals the former per-epoch MultiStepLR's, to the bit."""
    cfg = load_config(recipe)
    optim, steps_per_epoch = cfg.optim, 3
    bases = [optim.lr * head * bias for head in (1.0, optim.head_lr_mult) for bias in (1.0, optim.bias_lr_mult)]
    old = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": b} for b in bases], lr=optim.lr)
    old_scheduler = torch.optim.lr_scheduler.MultiStepLR(old, optim.lr_decay_epochs, optim.lr_decay_gamma)
    schedule = build_schedule(cfg, steps_per_epoch)
    for epoch in range(cfg.train.epochs):
        by_hand = list(bases)  # lr x gamma per milestone passed, multiplied in turn
        for milestone in optim.lr_decay_epochs:
            if epoch >= milestone:
                by_hand = [lr * optim.lr_decay_gamma for lr in by_hand]
        assert [group["lr"] for group in old.param_groups] == by_hand
        for step in range(epoch * steps_per_epoch, (epoch + 1) * steps_per_epoch):
            assert [schedule.lr(base, step) for base in bases] == by_hand, (epoch, step)
        old.step()
        old_scheduler.step()


def test_some_recipes_decay():  # so that the test above covers milestones
    assert load_config(EXPERIMENTS / "synthetic_acol.toml").optim.lr_decay_epochs == [12]


def test_the_wsolevaluation_recipes_decay_where_its_code_does():
    """wsolevaluation's main loop calls adjust_learning_rate(epoch + 1) before training 0-based epoch
    `epoch`, which decays when that number is a multiple of --lr_decay_frequency (default 30, 40 epochs)."""
    def its_decays(frequency: int, epochs: int) -> list[int]:
        return [epoch for epoch in range(epochs) if (epoch + 1) % frequency == 0]

    cfg = load_config(EXPERIMENTS / "wsolevaluation" / "cub_cam_vgg16.toml")
    assert cfg.optim.lr_decay_epochs == its_decays(30, cfg.train.epochs) == [29]


@pytest.mark.parametrize("overrides, message", [
    (["optim.schedule=linear"], "optim.schedule must be one of step, cosine; got 'linear'"),
    (["optim.warmup_steps=5", "optim.warmup_epochs=1"], r"set optim.warmup_steps \(5\) or optim.warmup_epochs"),
    (["optim.warmup_steps=-1"], "optim.warmup_steps and optim.warmup_epochs must be >= 0"),
    (["optim.lr_decay_epochs=[20, 10]"], r"optim.lr_decay_epochs must be positive and increasing; got \[20, 10\]"),
    (["optim.lr_decay_steps=[0, 10]"], r"optim.lr_decay_steps must be positive and increasing"),
    (["optim.lr_decay_steps=[10]", "optim.lr_decay_epochs=[1]"], "set optim.lr_decay_epochs .* or optim.lr_decay_steps"),
    (["optim.schedule=cosine", "optim.lr_decay_epochs=[3]"], "with optim.schedule=cosine set optim.lr_decay_epochs=\\[\\]"),
    (["optim.final_lr_factor=0.1"], "optim.final_lr_factor .* is the end of a cosine decay"),
    (["optim.schedule=cosine", "optim.final_lr_factor=2"], r"optim.final_lr_factor must be in \[0, 1\]"),
    (["optim.warmup_start_factor=1.5"], r"optim.warmup_start_factor must be in \[0, 1\]"),
    (["optim.lr_decay_steps=[1.5]"], r"optim.lr_decay_steps\[0\] must be int"),
])
def test_bad_schedule_keys_are_one_line_errors(overrides, message):
    with pytest.raises(ConfigError, match=message) as error:
        load_config(overrides=overrides)
    assert "\n" not in str(error.value)


def test_a_cosine_warmup_as_long_as_the_run_is_refused_before_the_run_directory(tiny_overrides, tmp_path):
    overrides = [*tiny_overrides, "optim.schedule=cosine", "optim.lr_decay_epochs=[]", "optim.warmup_steps=3"]
    with pytest.raises(SystemExit, match=r"config error: optim.warmup_steps=3 \(3 steps\) does not end before the "
                                         r"run does \(3 steps\)"):
        train.main(["--config", CONFIG, "--name", "long_warmup", *overrides])  # 12 images, batch 4: 3 steps
    assert not (tmp_path / "runs" / "long_warmup").exists()


def logged_lrs(run_dir: Path) -> list[float]:
    return [event.value for event in events(run_dir).Scalars("train/lr")]


def test_cosine_cut_by_max_steps_ends_at_the_final_factor(tiny_overrides, tmp_path):
    """5 epochs of 3 steps, cut at step 4: the cosine runs over those 4 steps."""
    train.main(["--config", CONFIG, "--name", "cosine", *tiny_overrides, "train.epochs=5", "train.max_steps=4",
                "optim.schedule=cosine", "optim.lr_decay_epochs=[]", "optim.final_lr_factor=0.1"])
    factors = [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * k / 3)) for k in range(4)]
    assert logged_lrs(tmp_path / "runs" / "cosine") == pytest.approx([0.01 * f for f in factors], rel=1e-6)
    assert factors[-1] == pytest.approx(0.1)


def test_step_milestones_in_steps_decay_inside_the_first_epoch(tiny_overrides, tmp_path):
    train.main(["--config", CONFIG, "--name", "steps", *tiny_overrides, "optim.lr_decay_epochs=[]",
                "optim.lr_decay_steps=[1, 2]", "optim.lr_decay_gamma=0.5"])  # one epoch of 3 steps
    assert logged_lrs(tmp_path / "runs" / "steps") == pytest.approx([0.01, 0.005, 0.0025], rel=1e-6)


def test_resume_mid_warmup_with_step_decay_reaches_the_same_weights(tiny_overrides, tmp_path):
    """12 images, batch 2: 6 steps an epoch; the warm-up (8 steps) spans the resume at step 6."""
    common = ["--config", CONFIG, *tiny_overrides, "train.global_batch_size=2", "optim.lr_decay_epochs=[]",
              "optim.warmup_steps=8", "optim.warmup_start_factor=0.1", "optim.lr_decay_steps=[10]"]
    train.main([*common, "train.epochs=2", "--name", "straight"])
    train.main([*common, "train.epochs=1", "--name", "resumed"])
    train.main([*common, "train.epochs=2", "--name", "resumed", "--resume", "auto"])
    straight, resumed = (torch.load(tmp_path / "runs" / run / "checkpoints" / "last.pt", weights_only=True)
                         for run in ("straight", "resumed"))
    assert resumed["step"] == 12
    assert all(torch.equal(value, resumed["model"][key]) for key, value in straight["model"].items())
