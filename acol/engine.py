"""The training loop, the evaluation loop and checkpoints: one readable pass each."""
from __future__ import annotations

import contextlib
import errno
import os
import resource
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from acol import safeload
from acol.cams import Localizer, default_localizer
from acol.datasets.transforms import normalize_on_device
from acol.datasets.worker_streams import epoch_batches
from acol.dist import sync_buffers
from acol.evaluation import BoxEvaluator, MaskEvaluator, localization_only, resize_and_normalize, scoremap_file
from acol.evaluation.baselines import baseline_maps
from acol.progress import progress


class NonFiniteError(RuntimeError):
    """The loss or the weights became NaN or infinite."""


def unwrap(model: nn.Module) -> nn.Module:
    """The bare model under torch.compile and DistributedDataParallel."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for train.amp: None means float32. "auto" is bf16 on CUDA devices that
    support it; "bf16" and "fp16" force theirs (fp16 trains with a GradScaler, `grad_scaler`)."""
    if amp == "off":
        return None
    if amp in ("bf16", "fp16"):
        return torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None


def grad_scaler(device: torch.device, dtype: torch.dtype | None) -> torch.amp.GradScaler:
    """Loss scaling for fp16 autocast; a pass-through (enabled=False) for bf16 and float32."""
    return torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)


def to_memory_format(images: torch.Tensor, cfg) -> torch.Tensor:
    """The batch in the model's memory format (train.channels_last)."""
    return images.contiguous(memory_format=torch.channels_last) if cfg.train.channels_last else images


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def build_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """SGD with lr groups: backbone weights 1x, backbone biases bias_lr_mult x, head weights
    head_lr_mult x, head biases both (the official ACoL: 2x, 10x, 20x); which parameters are the
    head's is optim.lr_rule's choice (`WSOLModel.param_groups`)."""
    groups = []
    for role, params in unwrap(model).param_groups(cfg.optim.lr_rule).items():
        role_mult = cfg.optim.head_lr_mult if role == "head" else 1.0
        for is_bias in (False, True):
            chosen = [p for name, p in params if name.endswith("bias") == is_bias and p.requires_grad]
            if chosen:
                mult = role_mult * (cfg.optim.bias_lr_mult if is_bias else 1.0)
                groups.append({"params": chosen, "lr": cfg.optim.lr * mult,
                               "name": f"{role}_{'bias' if is_bias else 'weight'}"})
    return torch.optim.SGD(groups, lr=cfg.optim.lr, momentum=cfg.optim.momentum,
                           nesterov=cfg.optim.nesterov, weight_decay=cfg.optim.weight_decay)


def duration(seconds: float) -> str:
    """'1h02m', '3m05s' or '42s'."""
    seconds = round(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                    device: torch.device, dtype: torch.dtype | None, epoch: int, step: int, tracker, cfg,
                    logger, skip: int = 0, after_step=None, transform=None, schedule=None, base_lrs=()) -> int:
    """One pass over `loader` from batch `skip` on (a run resumed mid-epoch); returns the global step
    after it (it stops early at train.max_steps). `schedule` (an `LRSchedule`) sets the groups' lrs
    from `base_lrs` before every step (None: they stay). `transform(images, labels) -> (images, targets)` is
    the method's batch transform (`Method.transform_batch`; default: targets = labels); the forward
    pass sees the labels, the loss the targets; a batch with masks (the training split of a method
    that `trains_on_masks`) has those (B, H, W) uint8 masks as its targets instead of the labels.
    `after_step(step, batches_done)` runs after every
    optimizer step (mid-epoch checkpoints, stop requests). `model` may be DDP-wrapped and compiled;
    the loss comes from the bare model, told the epoch first (`WSOLModel.set_epoch`). A non-finite loss
    raises NonFiniteError before the step."""
    model.train()
    batches = epoch_batches(loader, epoch, skip)
    core = unwrap(model)
    core.set_epoch(epoch)
    per_epoch = loader.sampler.num_samples // loader.batch_size
    total = cfg.train.epochs * per_epoch
    total = min(total, cfg.train.max_steps) if cfg.train.max_steps else total
    seen, window, tick = 0, 0, time.perf_counter()
    for batch_index, batch in enumerate(progress(batches, f"epoch {epoch + 1}/{cfg.train.epochs}",
                                                 total=per_epoch - skip), start=skip):
        images = normalize_on_device(batch["image"], device)
        labels = targets = batch["label"].to(device, non_blocking=True)
        if batch["mask"] is not None:
            targets = batch["mask"].to(device, non_blocking=True)
        if transform is not None:
            images, targets = transform(images, targets)
        with autocast(device, dtype):
            out = model(to_memory_format(images, cfg), labels)
        losses = core.loss(out, targets)
        if not torch.isfinite(losses["loss"]):
            raise NonFiniteError(f"non-finite loss {losses['loss'].item()} at step {step + 1} (epoch "
                                 f"{epoch + 1}, batch {batch_index + 1}); batch images: "
                                 f"{', '.join(batch['image_id'])}")
        optimizer.zero_grad(set_to_none=True)
        if schedule is not None:
            schedule.apply(optimizer, base_lrs, step)
        scaler.scale(losses["loss"]).backward()
        scaler.step(optimizer)
        scaler.update()
        step += 1
        seen, window = seen + len(labels), window + 1
        if step % cfg.log.log_every == 0:
            values = {f"train/{k}": v.item() for k, v in losses.items()}
            elapsed = time.perf_counter() - tick
            if core.classifies:
                values["train/cls_acc"] = (out["logits"].argmax(1) == labels).float().mean().item() * 100
            values["train/lr"] = optimizer.param_groups[0]["lr"]
            values["train/img_per_s"] = seen * int(os.environ.get("WORLD_SIZE", 1)) / elapsed
            tracker.scalars(values, step)
            logger.info(f"epoch {epoch + 1}/{cfg.train.epochs} step {step}/{total} " + " ".join(
                f"{k.split('/')[1]}={v:.4g}" for k, v in values.items())
                + f" train_eta={duration((total - step) * elapsed / window)}")
            seen, window, tick = 0, 0, time.perf_counter()
        if after_step is not None:
            after_step(step, batch_index + 1)
        if cfg.train.max_steps and step >= cfg.train.max_steps:
            break
    return step


def accumulate_split(model: nn.Module, loader, device: torch.device, dtype: torch.dtype | None, cfg,
                     scoremap_dir: Path | None = None,
                     localizer: Localizer | None = None,
                     desc: str = "eval", on_batch=None,
                     per_image: bool = False) -> tuple[BoxEvaluator, MaskEvaluator | None]:
    """Run a localizer over one split and return its evaluators (counts summed over all ranks).

    Maps are the GT class's maps (the WSOL protocol) from `localizer` (default: the model's own
    map, `default_localizer`), upsampled to the input size and normalised in float32. With
    `scoremap_dir`, each map is also saved as `<scoremap_dir>/<image_id>.npy`, extension kept
    (wsolevaluation's layout, `scoremap_file`). desc: the progress bar's label. `on_batch(batch, images,
    labels, logits, scoremaps)` runs after each batch's maps, e.g. `Faithfulness` on the same maps.
    per_image: the evaluators also keep per-image records (`acol.evaluation.bootstrap`; one process).
    """
    core = unwrap(model)  # no DDP forward: ranks may see different numbers of batches
    sync_buffers(core)
    localizer = localizer or default_localizer(core)
    boxes_eval, masks_eval = split_evaluators(cfg, loader, per_image)
    size = (cfg.data.crop_size, cfg.data.crop_size)
    for batch in progress(loader, desc):
        images = to_memory_format(normalize_on_device(batch["image"], device), cfg)
        labels = batch["label"].to(device, non_blocking=True)
        with autocast(device, dtype):
            logits, maps = localizer(core, images, labels)
        scoremaps = resize_and_normalize(maps.cpu(), size)
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = (top5 == labels[:, None]).cpu().numpy()
        accumulate_batch(boxes_eval, masks_eval, batch, scoremaps, hits[:, 0], hits.any(1))
        if on_batch is not None:
            on_batch(batch, images, labels, logits, scoremaps)
        if scoremap_dir is not None:
            for image_id, scoremap in zip(batch["image_id"], scoremaps):
                path = scoremap_file(scoremap_dir, image_id)
                path.parent.mkdir(parents=True, exist_ok=True)
                np.save(path, scoremap)
    boxes_eval.all_reduce()
    if masks_eval is not None:
        masks_eval.all_reduce()
    return boxes_eval, masks_eval


def split_evaluators(cfg, loader, per_image: bool = False) -> tuple[BoxEvaluator, MaskEvaluator | None]:
    """The empty evaluators of a split's loader: boxes always, masks (PxAP) when its dataset loads them."""
    boxes_eval = BoxEvaluator(cfg.eval.cam_curve_interval, tuple(cfg.eval.iou_thresholds),
                              cfg.eval.fixed_threshold, per_image=per_image)
    masks_eval = MaskEvaluator(cfg.eval.cam_curve_interval, per_image=per_image) if loader.dataset.load_masks else None
    return boxes_eval, masks_eval


def accumulate_batch(boxes_eval: BoxEvaluator, masks_eval: MaskEvaluator | None, batch: dict,
                     scoremaps: np.ndarray, top1, top5) -> None:
    """Add one loader batch's (B, H, W) score maps (at the input size, in [0, 1]) to the evaluators, with
    each image's (B,) top-1 / top-5 classification hits."""
    boxes_eval.accumulate(scoremaps, [b.numpy() for b in batch["boxes"]], top1, top5)
    if masks_eval is not None:
        masks = batch["mask"].numpy()
        masks_eval.accumulate(scoremaps, masks == 1, masks == 255)


def accumulate_baseline(name: str, loader, cfg, desc: str = "eval",
                        per_image: bool = False) -> tuple[BoxEvaluator, MaskEvaluator | None]:
    """`accumulate_split` for a class-agnostic baseline map (`acol.evaluation.baselines`): no model, no
    classification (every hit counted false: report its metrics through `localization_only`, and its
    per-image records through `run_records(..., classifies=False)`)."""
    boxes_eval, masks_eval = split_evaluators(cfg, loader, per_image)
    for batch in progress(loader, desc):
        scoremaps = baseline_maps(name, batch["image"])
        misses = np.zeros(len(scoremaps), bool)
        accumulate_batch(boxes_eval, masks_eval, batch, scoremaps, misses, misses)
    boxes_eval.all_reduce()
    if masks_eval is not None:
        masks_eval.all_reduce()
    return boxes_eval, masks_eval


def evaluate(model: nn.Module, loader, device: torch.device, dtype: torch.dtype | None, cfg,
             threshold: float | None = None, localizer: Localizer | None = None) -> dict[str, float]:
    """Classification and localization metrics of one split; `threshold` is a box threshold
    chosen elsewhere (on `val`) to report at (the `@val` keys)."""
    boxes_eval, masks_eval = accumulate_split(model, loader, device, dtype, cfg, localizer=localizer)
    return split_metrics(unwrap(model).classifies, boxes_eval, masks_eval, threshold)


def split_metrics(classifies: bool, boxes_eval: BoxEvaluator, masks_eval: MaskEvaluator | None,
                  threshold: float | None = None) -> dict[str, float]:
    """The metrics of a split's evaluators; for maps without a classifier (`classifies` false: the few-shot
    baseline's model, a class-agnostic baseline map) without the classification-dependent ones
    (`localization_only`)."""
    metrics = boxes_eval.compute(threshold)
    if not classifies:
        metrics = localization_only(metrics)
    if masks_eval is not None:
        metrics.update(masks_eval.compute())
    return metrics


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read or used; the message (one line) names the file."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint write that failed (a full disk, ...); the previous file at the path is kept."""


RESUME_KEYS = {"optimizer": dict, "epoch": int, "step": int, "best": dict, "rng": dict}  # besides "model"
FULL_DISK = 1 << 20  # bytes free below which a failed write is blamed on a full disk


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic: write a temporary file in the same folder, fsync, then rename over `path`. A write
    that fails leaves `path` as it was (and no temporary file); a failure of the file system (a full
    disk, ...) is a CheckpointWriteError naming `path`."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        if isinstance(e, RuntimeError) and "inline_container" not in str(e):
            raise  # not the file system's doing (torch's zip writer failed: its messages name inline_container)
        raise CheckpointWriteError(write_failure(path, e)) from None
    finally:
        tmp.unlink(missing_ok=True)


def write_failure(path: Path, error: Exception) -> str:
    """The one line of a failed checkpoint write: "no space left on device" when errno says so or the
    folder has under FULL_DISK bytes free (torch's own writer loses the errno), else the OS's words."""
    try:
        free = shutil.disk_usage(path.parent).free
    except OSError:
        free = None
    size_limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if getattr(error, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or (free is not None and free < FULL_DISK):
        why = f"no space left on device (free space in {path.parent}, then continue with --resume auto)"
    elif getattr(error, "errno", None) == errno.EFBIG or (size_limit != resource.RLIM_INFINITY
                                                           and isinstance(error, RuntimeError)):
        why = (f"the file size limit of this process ({size_limit} bytes, ulimit -f) is below the checkpoint's size; "
               "raise it, then continue with --resume auto")
    else:
        why = error.strerror if isinstance(error, OSError) and error.strerror else str(error).splitlines()[0]
    kept = f"the previous {path.name} is kept" if path.is_file() else f"no earlier {path.name} was there"
    return f"cannot write checkpoint {path}: {why}; {kept}"


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by `save_checkpoint`, loaded safely (`weights_only=True`: tensors and plain
    containers only): a dict whose "model" holds the weights. Else a CheckpointError naming the file
    (FileNotFoundError when there is none)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        ckpt = safeload.load(path)
    except safeload.RefusedFile as e:
        if e.runs_code:  # an object that only unpickling code could make
            raise CheckpointError(f"not a checkpoint written by acol (it would run code): {path}") from None
        raise CheckpointError(unreadable(path, e.reason)) from None
    weights = ckpt.get("model") if isinstance(ckpt, dict) else None
    if not (isinstance(weights, dict) and weights and all(isinstance(v, torch.Tensor) for v in weights.values())):
        raise CheckpointError(f"not a checkpoint written by acol (has no model weights): {path}")
    return ckpt


def unreadable(path: Path, reason: str) -> str:
    """The one line of a checkpoint torch cannot read."""
    return (f"checkpoint {path} cannot be read (truncated or corrupt: {reason}); the run's other checkpoint "
            "(best.pt / last.pt) may still load: pass it with --resume PATH")


def check_resumable(ckpt: dict, path: Path) -> None:
    """A loaded checkpoint (`load_checkpoint`) holds everything a resume needs (RESUME_KEYS, of those
    types); else a CheckpointError naming the file and the missing keys."""
    missing = [key for key, typ in RESUME_KEYS.items() if not isinstance(ckpt.get(key), typ)]
    if missing:
        raise CheckpointError(f"checkpoint {path} holds model weights but not a training state (no "
                              f"{', '.join(missing)}): it cannot resume a run; to start a new run from its "
                              f"backbone weights pass model.pretrained={path}")


def load_weights(model: nn.Module, ckpt: dict, path: Path, expected: str = "the model") -> None:
    """Load ckpt["model"] into the bare `model` (`expected` says which, e.g. "the acol / vgg16 model");
    weights that do not fit are a CheckpointError naming the file, the first missing, unexpected and
    mis-shaped keys, and the model the checkpoint's config names."""
    state, own = ckpt["model"], model.state_dict()
    problems = {"missing keys": [k for k in own if k not in state],
                "unexpected keys": [k for k in state if k not in own],
                "shapes differ": [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model"
                                  for k, v in own.items() if k in state and state[k].shape != v.shape]}
    found = [f"{what}: {', '.join(keys[:3])}{f', ... ({len(keys)} in all)' if len(keys) > 3 else ''}"
             for what, keys in problems.items() if keys]
    if found:
        saved = ckpt["config"].get("model", {}) if isinstance(ckpt.get("config"), dict) else {}
        origin = (f"it was written for model.name={saved.get('name')}, model.backbone={saved.get('backbone')}"
                  if saved else "it holds no config")
        raise CheckpointError(f"checkpoint {path} does not fit {expected} ({'; '.join(found)}); {origin}")
    model.load_state_dict(state)
