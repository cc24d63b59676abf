"""Backbones by name from timm and torchvision: model.backbone = "timm:<name>" or "torchvision:<name>".

Each is an image (B, 3, H, W) -> feature map (B, out_channels, h, w) module with `name` (the full
model.backbone value), `out_channels` and `load_pretrained(source)`, as the registry's backbones
(acol.models.backbones), with its layers in `body`:

- timm:<name> (a timm model name, a pretrained tag allowed: "resnet18.a1_in1k"): timm's
  `features_only=True, out_indices=(-1,)` model, the output of its last stage. Stride 32 for most
  CNNs; with model.large_feature_map timm's `output_stride=16` (the last stage dilated), an error
  for models that do not take it. timm is an optional dependency (pip install -e .[timm]).
- torchvision:<name> (a torchvision classification model): the model cut at the input of its global
  average pool (`create_feature_extractor`; the node before the first `avgpool`,
  `adaptive_avg_pool2d` or `mean` in the traced graph). Stride 32 for most; with
  model.large_feature_map the Bottleneck ResNets' `replace_stride_with_dilation=[False, False, True]`
  (layer4 dilated: stride 16), an error for other models (resnet18 / 34 included).

`load_pretrained` takes "imagenet" (timm's default pretrained weights, or torchvision's DEFAULT
weights; downloaded) or the path of a state dict of the whole timm / torchvision model in its own
key layout (`torch.save(timm.create_model(name).state_dict(), PATH)`; not one of acol's checkpoints,
whose keys are `backbone.body.*`); the keys of the layers the
backbone drops (classifier, torchvision's aux heads) are ignored, any other missing or unexpected
key is an error naming it (`load_weights`).
"""
from __future__ import annotations

import difflib

import torch
import torchvision
from torch import nn
from torch.func import functional_call
from torchvision.models import get_model, get_model_weights, list_models
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

from acol.models.backbones import WeightsError, load_weights

TIMM, TORCHVISION = "timm:", "torchvision:"
TIMM_INSTALL = "pip install -e .[timm] (or pip install 'timm>=1.0')"
GLOBAL_POOLS = ("avgpool", "adaptive_avg_pool2d", "mean")  # torchvision's global-pool nodes (by last name part)
TORCHVISION_LARGE_MAP = {"replace_stride_with_dilation": [False, False, True]}  # Bottleneck ResNets: stride 16


class BackboneError(ValueError):
    """A timm: / torchvision: model.backbone that cannot be built; the message (one line) names it."""


def is_external(name: str) -> bool:
    return name.startswith((TIMM, TORCHVISION))


def _import_timm(name: str):
    try:
        import timm
    except ImportError:
        raise BackboneError(f"model.backbone={name} needs timm, an optional dependency: {TIMM_INSTALL}") from None
    return timm


def _unknown(name: str, known: list[str], listing: str) -> BackboneError:
    arch = name.split(":", 1)[1]
    close = difflib.get_close_matches(arch, known, n=3)
    hint = f" (close: {', '.join(close)})" if close else ""
    return BackboneError(f"model.backbone={name}: unknown model {arch!r}{hint}; list the valid names with {listing}")


def check_name(name: str) -> None:
    """BackboneError (one line, with how to list the valid names) unless `name` is timm:<a timm model>
    with timm installed, or torchvision:<a torchvision classification model>."""
    arch = name.split(":", 1)[1]
    if name.startswith(TIMM):
        timm = _import_timm(name)
        if not timm.is_model(arch):
            raise _unknown(name, timm.list_models(), "python -c \"import timm; print(timm.list_models('convnext*'))\" "
                                                     "(a glob; pretrained=True: those with ImageNet weights)")
    elif arch not in list_models(module=torchvision.models):
        raise _unknown(name, list_models(module=torchvision.models),
                       "python -c \"import torchvision; print(torchvision.models.list_models(torchvision.models))\"")


def _meta_forward(module: nn.Module, size: int = 224) -> torch.Tensor:
    """`module`'s output for a (2, 3, size, size) batch on the meta device: shapes only, no arithmetic,
    the module's own tensors untouched."""
    meta = {k: t.to("meta") for k, t in (*module.named_parameters(), *module.named_buffers())}
    return functional_call(module, meta, (torch.empty(2, 3, size, size, device="meta"),))


class TimmBackbone(nn.Module):
    """timm:<arch>: `body` is timm's features_only model of the last stage (its keys are timm's
    features_only layout); (B, 3, H, W) -> (B, out_channels, H / s, W / s), s = timm's reduction of that
    stage (32 for most CNNs, 16 with large_feature_map)."""

    def __init__(self, arch: str, large_feature_map: bool):
        super().__init__()
        self.name, self.arch = TIMM + arch, arch
        self.large_feature_map = large_feature_map
        self.body = self._create(features_only=True, out_indices=(-1,))
        self.out_channels = self.body.feature_info.channels()[-1]

    def _create(self, **kwargs) -> nn.Module:
        """timm.create_model(arch, **kwargs), with output_stride=16 under large_feature_map."""
        timm = _import_timm(self.name)
        stride = {"output_stride": 16} if self.large_feature_map else {}
        try:
            return timm.create_model(self.arch, **stride, **kwargs)
        except OSError:  # a download that failed: load_pretrained says how to get the file
            raise
        except Exception as e:  # timm's own errors are of many types (TypeError, AssertionError, RuntimeError)
            large = " with output_stride=16 (model.large_feature_map=true; set it false for the model's own " \
                    "stride)" if stride else ""
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise BackboneError(f"model.backbone={self.name}: timm cannot build it{large}: {reason}") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)[-1]

    def load_pretrained(self, source: str) -> None:
        """Load into the whole timm model without its classifier (timm's download for "imagenet", else
        `load_weights` of the file, whose classifier keys are ignored), then rebuild `body` from it:
        timm maps the whole model's keys onto the features_only layout."""
        if source == "imagenet":
            try:
                whole = self._create(pretrained=True, num_classes=0)
            except OSError as e:  # offline: huggingface_hub's LocalEntryNotFoundError, an OSError
                raise WeightsError(
                    f"could not download the ImageNet weights of {self.name} ({str(e).splitlines()[0]}). On a machine "
                    f"with internet access run python -c \"import timm, torch; torch.save(timm.create_model("
                    f"'{self.arch}', pretrained=True).state_dict(), '{self.arch}.pth')\" and set "
                    f"model.pretrained=<path to {self.arch}.pth>") from None
        else:
            whole = self._create(num_classes=0)  # no classifier
            classifier = whole.pretrained_cfg.get("classifier") or ()
            classifier = (classifier,) if isinstance(classifier, str) else tuple(classifier)
            load_weights(whole, source, self.name, imagenet_weights=None,
                         ignored_prefixes=tuple(f"{c}." for c in classifier))
        self.body = self._create(features_only=True, out_indices=(-1,), pretrained=True,
                                 pretrained_cfg_overlay={"state_dict": whole.state_dict()})


class TorchvisionBackbone(nn.Module):
    """torchvision:<arch>: `body` is the model up to the input of its global average pool (a
    create_feature_extractor graph module, whose keys are the model's own for the layers kept);
    (B, 3, H, W) -> (B, out_channels, h, w)."""

    def __init__(self, arch: str, large_feature_map: bool):
        super().__init__()
        self.name = TORCHVISION + arch
        try:
            model = get_model(arch, weights=None, **(TORCHVISION_LARGE_MAP if large_feature_map else {}))
        except (TypeError, NotImplementedError):  # no such argument; BasicBlock ResNets: no dilation
            raise BackboneError(f"model.backbone={self.name}: model.large_feature_map=true dilates layer4 of "
                                "torchvision's Bottleneck ResNets only (resnet50/101/152, resnext*, wide_resnet*: "
                                "stride 16); set model.large_feature_map=false (the model's own stride, 32 for "
                                "most)") from None
        nodes = get_graph_node_names(model)[1]
        pools = [i for i, node in enumerate(nodes) if node.rsplit(".", 1)[-1] in GLOBAL_POOLS]
        if not pools:
            raise BackboneError(f"model.backbone={self.name}: no global average pool (avgpool, adaptive_avg_pool2d "
                                "or mean) to cut the model at; use a CNN classifier")
        self.body = create_feature_extractor(model, {nodes[pools[0] - 1]: "map"})
        self.dropped = tuple(sorted(set(model.state_dict()) - set(self.body.state_dict())))
        shape = _meta_forward(self).shape
        if len(shape) != 4:
            raise BackboneError(f"model.backbone={self.name}: the input of its global pool is not a (B, C, h, w) map "
                                f"(shape {tuple(shape)}); use a CNN classifier")
        self.out_channels = shape[1]
        weights = get_model_weights(arch)
        self.imagenet_weights = str(weights.DEFAULT) if len(weights) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)["map"]

    def load_pretrained(self, source: str) -> None:
        load_weights(self.body, source, self.name, self.imagenet_weights, ignored_prefixes=self.dropped)


def external_backbone(model_cfg) -> nn.Module:
    """The backbone of a timm: / torchvision: model_cfg.backbone (see the module docstring)."""
    name = model_cfg.backbone
    check_name(name)
    cls = TimmBackbone if name.startswith(TIMM) else TorchvisionBackbone
    return cls(name.split(":", 1)[1], model_cfg.large_feature_map)
