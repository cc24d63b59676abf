"""The model-parameter randomization test (Adebayo et al., "Sanity checks for saliency maps", NeurIPS
2018), cascading from the logits down, for any localizer `localizer(model, images, labels) -> (logits, maps)`.

Layer groups: the modules holding parameters of their own (each conv, linear, batch norm), in the order
a forward pass first calls them, or with `depth` d those sharing the first d parts of their name
(`depth=2`: e.g. `backbone.features`, `head_a.0`), a group placed at its last-called member. The
groups are re-initialised one after another, in reverse forward order, in a deep copy of the model
(the caller's is never touched): each module's own `reset_parameters()` (BatchNorm: weight 1, bias 0,
running statistics reset; a module without one gets N(0, 0.01) parameters), drawn under
`torch.manual_seed(seed)` inside a forked RNG, so the cascade is reproducible and the caller's RNG
unchanged. A cascade step is a group that changes what is explained: the logits or the localizer's
maps of the images, compared bitwise with those before it. A group that changes neither (ACoL's
branch B, BAS's foreground head, SPG's auxiliary branches under a post-hoc localizer: they do not
feed the logits) is randomized with the next step and named in it (`head_b.4+...+head_a.4`), or,
at the bottom, joins the last step; a step where nothing changed would score 1 however faithful the
map. A localizer or device that is not deterministic counts every group. At every step the maps
of the same images are compared with the trained model's map of that image, both as the box
evaluator sees them (upsampled to the input, min-max normalised, [0, 1]):

- Spearman rank correlation of the flattened maps (average ranks for ties; 0 when either map is
  flat). The maps are non-negative, so the paper's absolute-value variant is the same number.
- SSIM (Wang et al., IEEE TIP 2004): 11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03, data
  range 1, 'valid' filtering, the mean of the SSIM map (the paper's reference implementation).

Per step: the mean over images. A faithful map decorrelates as layers are randomized; one that stays
similar does not depend on what the model learned. Cost: one localizer call on the images per step.
"""
from __future__ import annotations

import copy
from collections.abc import Iterator

import numpy as np
import torch
from torch import nn

from acol.cams.hooks import eval_mode
from acol.engine import autocast
from acol.evaluation.maps import resize_and_normalize
from acol.visualize import heatmap_rows, plot_curves, small_multiples, titled_grid

SSIM_WINDOW, SSIM_SIGMA, SSIM_K1, SSIM_K2 = 11, 1.5, 0.01, 0.03


def layer_groups(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None,
                 depth: int | None = None) -> list[tuple[str, list[str]]]:
    """[(group name, [module names])], the group holding the last-called module first (reverse
    forward order). Modules with parameters the forward never calls are left out."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, name=name: order.append(name) if name not in order else None)
             for name, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    try:
        with eval_mode(model), torch.no_grad():
            model(images, labels)
    finally:
        for hook in hooks:
            hook.remove()
    groups: dict[str, list[str]] = {}
    for name in order:
        groups.setdefault(name if depth is None else ".".join(name.split(".")[:depth]), []).append(name)
    last = {key: max(order.index(n) for n in names) for key, names in groups.items()}
    return sorted(groups.items(), key=lambda item: -last[item[0]])


def reinitialize(module: nn.Module) -> None:
    """`module.reset_parameters()`, or N(0, 0.01) for each of its own parameters without one."""
    if hasattr(module, "reset_parameters"):
        module.reset_parameters()
    else:
        with torch.no_grad():
            for p in module.parameters(recurse=False):
                p.normal_(0, 0.01)


def average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a 1-D array, ties sharing their mean rank (scipy's rankdata 'average')."""
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps (flattened); 0 when either is constant."""
    ra, rb = average_ranks(np.ravel(a)), average_ranks(np.ravel(b))
    ra, rb = ra - ra.mean(), rb - rb.mean()
    norm = np.sqrt((ra ** 2).sum() * (rb ** 2).sum())
    return float((ra * rb).sum() / norm) if norm > 0 else 0.0


def _gaussian_window(size: int = SSIM_WINDOW, sigma: float = SSIM_SIGMA) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return (torch.outer(g, g) / torch.outer(g, g).sum())[None, None]


def ssim(a, b, data_range: float = 1.0) -> float:
    """Mean SSIM of two grayscale maps (H, W >= 11), Gaussian 11x11 window (sigma 1.5), 'valid'."""
    x = torch.as_tensor(np.asarray(a), dtype=torch.float64)[None, None]
    y = torch.as_tensor(np.asarray(b), dtype=torch.float64)[None, None]
    if x.shape != y.shape or min(x.shape[-2:]) < SSIM_WINDOW:
        raise ValueError(f"SSIM needs two maps of one shape, each side >= {SSIM_WINDOW}; got "
                         f"{tuple(x.shape[-2:])} and {tuple(y.shape[-2:])}")
    window = _gaussian_window()
    filt = lambda t: torch.nn.functional.conv2d(t, window)  # noqa: E731
    mu_x, mu_y = filt(x), filt(y)
    var_x, var_y = filt(x * x) - mu_x ** 2, filt(y * y) - mu_y ** 2
    cov = filt(x * y) - mu_x * mu_y
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    ssim_map = (2 * mu_x * mu_y + c1) * (2 * cov + c2) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


def randomized_copies(model: nn.Module, groups: list[tuple[str, list[str]]], seed: int = 0) -> Iterator[nn.Module]:
    """A deep copy of `model`, yielded after each group of `layer_groups` is re-initialised in turn
    (cumulatively: the j-th yield has the top j groups random), under `torch.manual_seed(seed)` in a
    forked RNG (the caller's RNG state is unchanged afterwards)."""
    randomized = copy.deepcopy(model)
    modules = dict(randomized.named_modules())
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for _, names in groups:
            for name in names:
                reinitialize(modules[name])
            yield randomized


def cascade(model: nn.Module, localizer, images: torch.Tensor, labels: torch.Tensor, dtype=None, seed: int = 0,
            depth: int | None = None) -> dict:
    """The cascading randomization test on one batch of images (B, 3, H, W) normalised, labels (B,).

    Returns {"groups": [S] per step the groups it randomizes joined by "+", top first, "spearman",
    "ssim": [S] per-step means over images, "maps": (S + 1, B, H, W) float32, step 0 the trained
    model's maps}; S <= the G groups of `layer_groups` (see the module doc)."""
    forward = localizer.forward_labels(labels) if hasattr(localizer, "forward_labels") else labels
    groups = layer_groups(model, images[:1], None if forward is None else forward[:1], depth)
    size = tuple(images.shape[-2:])

    def explained(net):
        with autocast(images.device, dtype):
            logits, maps = localizer(net, images, labels)
        return logits.cpu(), resize_and_normalize(maps.cpu(), size)

    last = explained(model)
    trained = last[1]
    steps, names, pending = [trained], [], []
    for (name, _), randomized in zip(groups, randomized_copies(model, groups, seed)):
        pending.append(name)
        now = explained(randomized)
        if torch.equal(now[0], last[0]) and np.array_equal(now[1], last[1]):
            continue
        steps.append(now[1])
        names.append("+".join(pending))
        pending, last = [], now
    if pending and names:
        names[-1] = "+".join([names[-1], *pending])
    elif pending:
        steps.append(last[1])
        names.append("+".join(pending))
    return {"groups": names,
            "spearman": [float(np.mean([spearman(a, b) for a, b in zip(trained, s)])) for s in steps[1:]],
            "ssim": [float(np.mean([ssim(a, b) for a, b in zip(trained, s)])) for s in steps[1:]],
            "maps": np.stack(steps)}


def summary(result: dict) -> dict[str, float]:
    """The flat metrics of a cascade: `randomization_spearman`, `randomization_ssim`, each the mean over
    its steps (1 would be maps blind to the weights; lower is better)."""
    return {"randomization_spearman": float(np.mean(result["spearman"])),
            "randomization_ssim": float(np.mean(result["ssim"]))}


CASCADE_AXIS = "fraction of the cascade steps done (top first)"
SIMILARITIES = (("spearman", "Spearman rank correlation"), ("ssim", "SSIM"))


def on_one_axis(lines: dict) -> tuple[np.ndarray, dict]:
    """(x, lines): cascades of similarities (each without its step 0) as curves from 1 at step 0, each
    interpolated to the longest cascade's steps on x = the fraction of the steps done (0..1)."""
    lines = {label: np.array([1.0, *v]) for label, v in lines.items()}
    grid = np.linspace(0, 1, max(len(v) for v in lines.values()))
    return grid, {label: np.interp(grid, np.linspace(0, 1, len(v)), v) for label, v in lines.items()}


def cascade_plot(results: dict[str, dict], title: str) -> np.ndarray:
    """(H, W, 3) uint8: Spearman (left) and SSIM (right) vs the fraction of the cascade steps done, one
    line per entry of `results` (a name: a dict with "spearman" and "ssim" lists), 1 at step 0."""
    panels = []
    for key, name in SIMILARITIES:
        grid, lines = on_one_axis({label: r[key] for label, r in results.items()})
        panels.append(plot_curves(grid, lines, {}, f"{name} with the trained maps: {title}", xlabel=CASCADE_AXIS,
                                  y_range=(-1, 1)))
    return np.concatenate(panels, axis=1)


def cascade_panels(results: dict[str, dict[str, dict]]) -> np.ndarray:
    """(H, W, 3) uint8 small multiples: one panel per localizer (the keys of `results`), in it one colour
    per model (its keys: a dict with "spearman" and "ssim" lists), Spearman solid and SSIM dashed, each
    vs the fraction of the cascade steps done, 1 at step 0."""
    panels = {}
    for localizer, models in results.items():
        _, lines = on_one_axis({(model, name): r[key] for model, r in models.items() for key, name in SIMILARITIES})
        panels[localizer] = lines
    return small_multiples(panels, (-1, 1), f"x: {CASCADE_AXIS}; y: similarity with the trained model's map")


def cascade_grid(images: torch.Tensor, boxes: list, result: dict, num_images: int = 4, max_steps: int = 8) -> np.ndarray:
    """(H, W, 3) uint8: rows of images, columns the image, the trained map and the maps after up to
    `max_steps` cascade steps (spread evenly, the last one always), titled by the step and the last two
    parts of the name of the group randomized last."""
    total = len(result["groups"])
    steps = sorted(set(np.linspace(1, total, min(max_steps, total)).round().astype(int).tolist()))
    maps = {"trained": torch.from_numpy(result["maps"][0, :num_images])}
    for j in steps:
        short = ".".join(result["groups"][j - 1].split("+")[-1].split(".")[-2:])
        maps[f"{j}:{short}"] = torch.from_numpy(result["maps"][j, :num_images])
    rows = heatmap_rows(images[:num_images], maps, boxes[:num_images], {})
    return titled_grid(rows, ["image"] + [f"+{k}" if k != "trained" else k for k in maps])
