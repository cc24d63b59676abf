"""Localizers: every way of getting a class map from a model, behind one interface.

    logits, maps = localizer(model, images, labels)

images (B, 3, H, W) normalised; labels (B,) the GT classes; logits (B, C); maps (B, h, w) float32
in [0, 1] (per-image min-max, a flat map gives zeros) of each image's target class: the GT label
(target="gt", the WSOL protocol) or the predicted class (target="pred"). `localizer.raw(...)`
gives the maps before normalisation. Every localizer runs the model in eval mode and restores each
module's train/eval flag, works under a caller's `torch.no_grad()` (the gradient ones raise
ValueError under `torch.inference_mode()`, which cannot record a graph), leaves no `.grad` on
parameters and no hooks behind, and is batch-exact (an image's map does not depend on the rest of
the batch). Maps are computed in float32, also under autocast. The gradient localizers record
autograd only from their layer on (the layers before it run frozen and store nothing for a
backward), and a layer whose output does not reach the logits is a ValueError naming it.

| name | map | models |
|---|---|---|
| inforward | the model's own localization map, computed in the forward pass (ACoL: fused A/B) | 1x1-conv heads |
| inforward_a, inforward_b | ACoL's branch A / B class map | acol |
| cam | sum_k w_k^c f_k: the FC weights (GAP + FC) or the 1x1-conv class map (= inforward_a) | GAP + FC |
| gradcam | ReLU(sum_k alpha_k^c A^k), alpha = spatial mean of d logit_c / d A | all |
| gradcam_pp | Grad-CAM++ (Chattopadhyay et al., 2018, eq. 19 closed form) | all |
| guided_backprop | max over RGB of the guided-backprop input gradient, input resolution | all |
| guided_gradcam | guided_backprop x Grad-CAM upsampled (bilinear) to the input | all |

Which localizers apply to a model is declared by its class (`model.localizers`, see
acol.models.wsol). The gradient methods take the layer by name (`layer="head_a.3"`; default: the
model's `default_cam_layer`, the last feature map before the class scores). The perturbation
localizers (scorecam, ablationcam, rise) are in acol.cams.perturbation; `build_localizer` passes
their options (`chunk=...`) to the constructor.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from acol.cams.hooks import capture, eval_mode, frozen, guided_relus
from acol.cams.ops import minmax_normalize, select_class
from acol.registry import Registry

LOCALIZERS = Registry("localizer")
TARGETS = ("gt", "pred")


def class_logits(model: nn.Module, images: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C): the model's class scores; through `model.logits` where it has one (acol.models.wsol: no
    work that does not feed the scores, e.g. ACoL's branch B), else `model(images, labels)["logits"]`."""
    if hasattr(model, "logits"):
        return model.logits(images, labels)
    return model(images, labels)["logits"]


def cpu_channels_last(images: torch.Tensor) -> torch.Tensor:
    """A batch of copies (N, C, H, W) for the many-forward localizers: channels_last on the CPU, where
    oneDNN's convolutions run it 1.1-1.25x faster than NCHW (VGG16, docs/performance.md); the same values up
    to float rounding. Elsewhere as it is."""
    if images.device.type == "cpu" and images.dim() == 4:
        return images.contiguous(memory_format=torch.channels_last)
    return images


class Localizer:
    """Base: target choice, normalisation, applicability. Subclasses implement `raw`."""

    def __init__(self, target: str = "gt", layer: str | None = None):
        if target not in TARGETS:
            raise ValueError(f"target must be one of {TARGETS}; got {target!r}")
        self.target = target
        self.layer = layer

    def __call__(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        logits, raw = self.raw(model, images, labels)
        return logits, minmax_normalize(raw)

    def raw(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        """(logits (B, C), unnormalised maps (B, h, w) float32)."""
        raise NotImplementedError

    @property
    def name(self) -> str:
        """The registered name (the class name for an unregistered subclass)."""
        return next((n for n in LOCALIZERS.names_in_order() if LOCALIZERS.get(n) is type(self)), type(self).__name__)

    def require_autograd(self) -> None:
        """Gradient localizers call this first: under torch.inference_mode() no graph can be recorded."""
        if torch.is_inference_mode_enabled():
            raise ValueError(f"{self.name} needs gradients: called under torch.inference_mode(); "
                             "use torch.no_grad() instead")

    def classes(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The class whose map each image gets."""
        return labels if self.target == "gt" else logits.argmax(dim=1)

    def forward_labels(self, labels: torch.Tensor) -> torch.Tensor | None:
        """What the forward pass sees (ACoL erases with it): the GT, or nothing for "pred"."""
        return labels if self.target == "gt" else None

    def target_layer(self, model: nn.Module) -> nn.Module:
        """The hooked layer: `layer` by name, default the model's `default_cam_layer`."""
        name = self.layer or getattr(model, "default_cam_layer", None)
        if name is None:
            raise ValueError(f"{type(model).__name__} has no default_cam_layer; give the layer by name")
        try:
            return model.get_submodule(name)
        except AttributeError as e:
            names = ", ".join(n for n, _ in model.named_modules() if n)
            raise ValueError(f"{type(model).__name__} has no layer {name!r}; layers: {names}") from e


class InForward(Localizer):
    """The model's own map from its forward outputs (no backward pass)."""

    branch: str | None = None  # None: the model's localization_map; "a" / "b": one ACoL branch

    def raw(self, model, images, labels):
        with eval_mode(model), torch.no_grad():
            out = model(images, self.forward_labels(labels))
            classes = self.classes(out["logits"], labels)
            if self.branch is None:
                return out["logits"], model.localization_map(out, classes)
            return out["logits"], select_class(out[f"cam_{self.branch}"], classes).float()


@LOCALIZERS.register("inforward")
class InForwardFused(InForward):
    branch = None


@LOCALIZERS.register("inforward_a")
class InForwardA(InForward):
    branch = "a"


@LOCALIZERS.register("inforward_b")
class InForwardB(InForward):
    branch = "b"


@LOCALIZERS.register("cam")
class CAM(Localizer):
    """CAM (Zhou et al., 2016): the class weights applied to the last features, no bias, no ReLU
    (`model.class_maps`; for a 1x1-conv head its class map, by linearity)."""

    def raw(self, model, images, labels):
        with eval_mode(model), torch.no_grad():
            out = model(images, self.forward_labels(labels))
            return out["logits"], model.class_maps(out, self.classes(out["logits"], labels))


class _Gradients(Localizer):
    """The target logits' gradients at a layer: (logits, activation, gradient), float32."""

    def gradients(self, model, images, labels):
        """(logits (B, C), activation A (B, K, h, w), d logit_c / d A (B, K, h, w)), float32.

        The autograd graph starts at the layer: the model runs `frozen` on detached images, so the
        layers before it record nothing (no memory for their backward) and A is a leaf; the
        gradient is the one a full graph gives, as the backward stops at A anyway.
        """
        self.require_autograd()
        layer = self.target_layer(model)
        with eval_mode(model), frozen(model), torch.enable_grad(), capture(layer) as activation:
            logits = class_logits(model, images.detach(), self.forward_labels(labels))
            classes = self.classes(logits.detach(), labels)
            score = logits.float().gather(1, classes[:, None]).sum()  # raw logits; images are independent
            grad = None
            if activation.value is not None and score.requires_grad:
                (grad,) = torch.autograd.grad(score, activation.value, allow_unused=True)
        if grad is None:
            raise ValueError(f"{self.name}: layer {self.layer or model.default_cam_layer!r} of {type(model).__name__} "
                             "does not lead to the logits; pick a layer on the path to the class scores")
        if activation.value.dim() != 4:
            raise ValueError(f"layer output must be (B, K, h, w); got {tuple(activation.value.shape)}")
        return logits.detach(), activation.value.detach().float(), grad.float()


@LOCALIZERS.register("gradcam")
class GradCAM(_Gradients):
    """Grad-CAM (Selvaraju et al., 2017): ReLU(sum_k mean_ij(d y^c / d A^k_ij) A^k)."""

    def raw(self, model, images, labels):
        logits, act, grad = self.gradients(model, images, labels)
        weights = grad.mean(dim=(2, 3), keepdim=True)
        return logits, F.relu((weights * act).sum(dim=1))


@LOCALIZERS.register("gradcam_pp")
class GradCAMPlusPlus(_Gradients):
    """Grad-CAM++ (Chattopadhyay et al., WACV 2018), the closed form of its eq. 19 with y = exp(S):
    alpha = g^2 / (2 g^2 + sum_ab A_ab g^3) (0 where that is 0), w_k = sum_ij alpha relu(g)."""

    def raw(self, model, images, labels):
        logits, act, grad = self.gradients(model, images, labels)
        g2 = grad.pow(2)
        denominator = 2 * g2 + act.sum(dim=(2, 3), keepdim=True) * grad.pow(3)
        alpha = torch.where(denominator != 0, g2 / torch.where(denominator != 0, denominator, 1), 0)
        weights = (alpha * F.relu(grad)).sum(dim=(2, 3), keepdim=True)
        return logits, F.relu((weights * act).sum(dim=1))


@LOCALIZERS.register("guided_backprop")
class GuidedBackprop(Localizer):
    """Guided Backprop (Springenberg et al., 2015): the input gradient of the target logit with
    the guided rule at every ReLU, reduced to a map by the max over RGB of its absolute value."""

    def input_gradient(self, model, images, labels):
        self.require_autograd()
        with eval_mode(model), torch.enable_grad(), guided_relus(model):
            x = images.detach().clone().requires_grad_(True)  # a clone: also for inference tensors
            logits = class_logits(model, x, self.forward_labels(labels))
            classes = self.classes(logits.detach(), labels)
            (grad,) = torch.autograd.grad(logits.float().gather(1, classes[:, None]).sum(), x)
        return logits.detach(), grad.float()

    def raw(self, model, images, labels):
        logits, grad = self.input_gradient(model, images, labels)
        return logits, grad.abs().amax(dim=1)


@LOCALIZERS.register("guided_gradcam")
class GuidedGradCAM(GradCAM):
    """Guided Grad-CAM (Selvaraju et al., 2017): guided backprop x Grad-CAM, the latter upsampled
    bilinearly (align_corners=False) to the input size; one map per image as guided_backprop."""

    def raw(self, model, images, labels):
        logits, cam = super().raw(model, images, labels)
        _, guided = GuidedBackprop(self.target).raw(model, images, labels)
        cam = F.interpolate(cam[:, None], size=guided.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        return logits, guided * cam


def build_localizer(name: str, target: str = "gt", layer: str | None = None, **options) -> Localizer:
    """A localizer by registered name (the error lists the valid names), with its own keyword
    options (`samples`, `steps`, `chunk`, ...; the error lists the valid ones)."""
    cls = LOCALIZERS.get(name)
    valid = [p for p in inspect.signature(cls).parameters if p not in ("target", "layer")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"localizer {name!r} has no option {', '.join(unknown)}; options: {', '.join(valid) or 'none'}")
    return cls(target=target, layer=layer, **options)


def default_localizer_name(model: nn.Module) -> str:
    """The model's own map: in-forward for 1x1-conv heads, CAM for GAP + FC."""
    return "inforward" if "inforward" in model.localizers else "cam"


def default_localizer(model: nn.Module) -> Localizer:
    """The localizer of the model's own map (`default_localizer_name`)."""
    return build_localizer(default_localizer_name(model))


# Localizers that run the model many times per image (by default: Smooth Grad-CAM++ 20 noisy copies
# forward and backward, Integrated Gradients 32 path points + 1, Score-CAM one forward per channel of
# its layer, Ablation-CAM one per channel + 1, RISE 1,000 masks): comparisons run them when named.
MANY_FORWARD = ("smoothgradcampp", "integrated_gradients", "scorecam", "ablationcam", "rise")


def applicable_localizers(model: nn.Module) -> list[str]:
    """The localizers `model` declares (`model.localizers`), in registration order."""
    return [name for name in LOCALIZERS.names_in_order() if name in model.localizers]
