"""The learning-rate schedule: a linear warm-up, then step or cosine decay, set before every optimizer step.

The schedule lives in optimizer steps; keys given in epochs (`warmup_epochs`, `lr_decay_epochs`)
are converted with the run's steps per epoch. Every param group's lr is its base lr (optim.lr times
its head / bias multipliers) times the same factors, so the groups keep their ratios. The lr
depends on the step alone: a resumed run sets the same lrs without any scheduler state.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

SCHEDULES = ("step", "cosine")


def check_schedule(optim) -> None:
    """Value checks of the schedule keys of `optim` (an OptimCfg); a ValueError names the key."""
    if optim.warmup_steps < 0 or optim.warmup_epochs < 0:
        raise ValueError(f"optim.warmup_steps and optim.warmup_epochs must be >= 0; got {optim.warmup_steps} "
                         f"and {optim.warmup_epochs}")
    if optim.warmup_steps and optim.warmup_epochs:
        raise ValueError(f"set optim.warmup_steps ({optim.warmup_steps}) or optim.warmup_epochs "
                         f"({optim.warmup_epochs}), not both")
    if not 0.0 <= optim.warmup_start_factor <= 1.0:
        raise ValueError(f"optim.warmup_start_factor must be in [0, 1]; got {optim.warmup_start_factor}")
    for key in ("lr_decay_epochs", "lr_decay_steps"):
        milestones = getattr(optim, key)
        if any(m <= 0 for m in milestones) or any(a >= b for a, b in zip(milestones, milestones[1:])):
            raise ValueError(f"optim.{key} must be positive and increasing; got {milestones}")
    if optim.lr_decay_epochs and optim.lr_decay_steps:
        raise ValueError(f"set optim.lr_decay_epochs ({optim.lr_decay_epochs}) or optim.lr_decay_steps "
                         f"({optim.lr_decay_steps}), not both")
    if optim.schedule == "cosine" and (optim.lr_decay_epochs or optim.lr_decay_steps):
        key = "lr_decay_epochs" if optim.lr_decay_epochs else "lr_decay_steps"
        raise ValueError(f"optim.{key} are step-decay milestones; with optim.schedule=cosine set "
                         f"optim.{key}=[]")
    if not 0.0 <= optim.final_lr_factor <= 1.0:
        raise ValueError(f"optim.final_lr_factor must be in [0, 1]; got {optim.final_lr_factor}")
    if optim.schedule != "cosine" and optim.final_lr_factor:
        raise ValueError(f"optim.final_lr_factor ({optim.final_lr_factor}) is the end of a cosine decay; set "
                         "optim.schedule=cosine or leave it at 0")


@dataclass(frozen=True)
class LRSchedule:
    """A schedule in optimizer steps (`step` counts the steps done, so the run's first step is 0)."""
    kind: str = "step"                  # step | cosine
    warmup_steps: int = 0               # the factor rises linearly from warmup_start_factor (step 0) to 1 (this step)
    warmup_start_factor: float = 0.001
    milestones: tuple[int, ...] = ()    # step: the lr is multiplied by gamma from each of these steps on
    gamma: float = 0.1
    total_steps: int = 1                # cosine: from 1 at warmup_steps to final_factor at the last step
    final_factor: float = 0.0

    def lr(self, base: float, step: int) -> float:
        """The lr of a group with base lr `base` at step `step`. The factors multiply in turn (base x
        gamma x gamma ..., as torch's MultiStepLR does), so step decay reproduces it to the bit."""
        lr = base
        if step < self.warmup_steps:
            lr *= self.warmup_start_factor + (1.0 - self.warmup_start_factor) * step / self.warmup_steps
        if self.kind == "cosine":
            if step > self.warmup_steps:
                progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - 1 - self.warmup_steps))
                lr *= self.final_factor + (1.0 - self.final_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        else:
            for milestone in self.milestones:
                if step >= milestone:
                    lr *= self.gamma
        return lr

    def apply(self, optimizer, base_lrs: list[float], step: int) -> None:
        """Set every param group's lr for step `step` (`base_lrs`: the groups' lrs as built)."""
        for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
            group["lr"] = self.lr(base, step)


def build_schedule(cfg, steps_per_epoch: int) -> LRSchedule:
    """The run's schedule in steps. Its length is train.max_steps where that cuts the run short, else
    train.epochs x steps_per_epoch. A cosine run whose warm-up does not end before it is a ValueError
    naming the key."""
    optim = cfg.optim
    total = cfg.train.epochs * steps_per_epoch
    if cfg.train.max_steps:
        total = min(total, cfg.train.max_steps)
    warmup = optim.warmup_steps or optim.warmup_epochs * steps_per_epoch
    if optim.schedule == "cosine" and warmup and warmup >= total:
        key = "warmup_steps" if optim.warmup_steps else "warmup_epochs"
        raise ValueError(f"optim.{key}={getattr(optim, key)} ({warmup} steps) does not end before the run does "
                         f"({total} steps): no step is left for the cosine decay")
    milestones = optim.lr_decay_steps or [m * steps_per_epoch for m in optim.lr_decay_epochs]
    return LRSchedule(kind=optim.schedule, warmup_steps=warmup, warmup_start_factor=optim.warmup_start_factor,
                      milestones=tuple(milestones), gamma=optim.lr_decay_gamma, total_steps=total,
                      final_factor=optim.final_lr_factor)
