"""Experiment configuration: a dataclass schema, TOML files with `_base_` inheritance, dotted overrides.

The defaults below are the single source of truth. An experiment file overrides a subset of them:

    _base_ = "synthetic_acol.toml"      # a path or a list of paths, relative to this file, or
                                        # "acol:NAME" for experiments/NAME shipped with acol
    [acol]
    threshold = 0.8

The method (`model.name`) is a name in the `acol.methods` registry, and its hyperparameters are the
table of the same name (`[acol]`, `[has]`, ...), typed by the method's own dataclass: `cfg.method`
(also `cfg.acol` etc.) is the chosen method's table. Tables of the other methods are checked and
then dropped, so one base file may hold settings for several methods. Command-line overrides use
dotted keys and the TOML value grammar (`optim.lr=1e-3`, `eval.iou_thresholds=[30,50,70]`,
`model.backbone=vgg16`). Unknown keys, unknown names and values of the wrong type are errors that
name the key (and the file).

Paths (`PATH_KEYS`: data.root, data.metadata_root, log.runs_dir, and model.pretrained when it names a
file) resolve where they are written: a value in a config file against that file's folder (as
`_base_` does), a command-line override against the current directory, a default (the key set
nowhere) against the current directory. `load_config` returns them absolute, so the config.toml a run
saves is re-runnable from anywhere. The repository's experiment files set no data or run folders:
`data/` and `runs/` are those of the current directory, as before.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import tomllib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from acol.datasets.synthetic import SyntheticSpec, validate_spec
from acol.schedule import SCHEDULES, check_schedule
from acol.textfile import read_utf8


@dataclass
class DataCfg:
    dataset: str = "SYNTHETIC"          # folder name under root/ and metadata_root/
    root: str = "data"                  # images live in <root>/<dataset>/
    metadata_root: str = "data/metadata"  # metadata in <metadata_root>/<dataset>/<split>/
    resize_size: int = 256
    crop_size: int = 224                # network input side; evaluation happens at this size
    keep_aspect: bool = False           # resize the shorter side (official ACoL) or to a square (wsolevaluation)
    eval_center_crop: bool = False      # eval: Resize+CenterCrop (official ACoL) or Resize((crop, crop)) (wsolevaluation)
    num_workers: int = -1               # -1: from the machine's core count
    cache: str = "off"                  # train split decoded once: off | memory (RAM) | device (GPU; crops there)
    train_split: str = "train"          # the split trained on: train | val (the few-shot baseline, model.name = fsl,
                                        # trains on val's boxes / masks)
    val_per_class: int = 0              # val keeps k images per class wherever it is used (0: all): the ones
                                        # wsolevaluation's --num_val_sample_per_class k --seed <train.seed> draws
    allow_split_overlap: bool = False   # train although an image is in two splits (refused by default)
    synthetic: SyntheticSpec = field(default_factory=SyntheticSpec)  # used when dataset = "SYNTHETIC"


@dataclass
class ModelCfg:
    name: str = "acol"                  # the WSOL method (acol/methods/): acol | single | cam | has | adl | cutmix | spg,
                                        # bas, dawsol, or fsl (the few-shot baseline: see data.train_split)
    backbone: str = "vgg16"             # vgg16 | resnet50 | inception_v3 (wsolevaluation variants) | smallcnn |
                                        # efficientnet_lite0 | timm:<name> | torchvision:<name> (acol/models/external.py)
    num_classes: int = 0                # 0: taken from the dataset
    pretrained: str = ""                # "" (random init) | "imagenet" | path to a torchvision-layout state dict
                                        # (timm: / torchvision: backbones: that model's own layout) |
                                        # "efficientnet-lite0" (efficientnet_lite0's ImageNet weights, from a package)
    large_feature_map: bool = True      # stride 8 (28x28 maps at 224; official ACoL) instead of 16 (14x14);
                                        # efficientnet_lite0, timm: / torchvision: backbones: 16 instead of their
                                        # own (32 for most)
    smooth_features: bool = True        # 3x3 stride-1 average pooling of the backbone output (official ACoL and
                                        # wsolevaluation's VGG; its resnet50 / inception_v3 variants: false)
    head_channels: int = 1024           # hidden channels of the class-map heads and of the cam model's conv
                                        # (SPG's widths scale with it)
    cam_head: str = "fc"                # the classifier of cam, has, cutmix, adl: fc (GAP + FC: wsolevaluation's
                                        # VggCam, ResNetCam) | conv1x1 (a 1x1-conv class-map head: its InceptionCam)
    cam_conv: bool = True               # fc: Conv3x3 to head_channels + ReLU before GAP + FC (wsolevaluation's
                                        # VggCam); false: GAP + FC on the backbone features (its ResNetCam)
    head_dropout: float = 0.0           # dropout before every conv of a class-map head (wsolevaluation's
                                        # InceptionCam and InceptionSpg: 0.5)
    head_init: str = "xavier"           # new layers: xavier (Xavier-uniform convs, PyTorch's Linear init) |
                                        # wsolevaluation (its per-model choice: Kaiming for VggCam and ResNetAcol
                                        # convs, Xavier elsewhere; Linear N(0, 0.01))
    vgg_pool: str = "3x3"               # vgg16 max pools: 3x3 (official ACoL, wsolevaluation's ACoL) | 2x2
                                        # (torchvision's; wsolevaluation's CAM, ADL and SPG)
    pretrained_classifier: bool = False  # also load the ImageNet classifier into the FC (resnet50, 1000 classes:
                                        # wsolevaluation's ILSVRC ResNet50 CAM, HaS, CutMix, ADL)


@dataclass
class OptimCfg:
    lr: float = 1e-4
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    head_lr_mult: float = 10.0          # classifier heads: weights x10, biases x20 (official ACoL)
    bias_lr_mult: float = 2.0
    schedule: str = "step"              # the lr after the warm-up (acol/schedule.py): step (x lr_decay_gamma at each
                                        # milestone; none: constant) | cosine (to lr x final_lr_factor at the last step)
    warmup_steps: int = 0               # linear warm-up from lr x warmup_start_factor over this many steps ...
    warmup_epochs: int = 0              # ... or epochs (set one of the two)
    warmup_start_factor: float = 0.001
    lr_decay_epochs: list[int] = field(default_factory=list)  # step: multiply lr by lr_decay_gamma at these epochs ...
    lr_decay_steps: list[int] = field(default_factory=list)   # ... or steps (set one of the two)
    lr_decay_gamma: float = 0.1
    final_lr_factor: float = 0.0        # cosine: the last step's lr is lr x final_lr_factor
    lr_rule: str = "role"               # which parameters get head_lr_mult: role (every layer outside the
                                        # backbone) | wsolevaluation (its name rule: see WSOLModel.param_groups)


@dataclass
class TrainCfg:
    epochs: int = 60
    global_batch_size: int = 20         # split over processes under torchrun
    seed: int = 0
    device: str = "auto"                # auto (cuda when present) | cpu | cuda
    threads: int = 0                    # torch's CPU threads in this process (0: torch's default, i.e. OMP_NUM_THREADS
                                        # or one per core); lower it on a shared or busy machine
    amp: str = "auto"                   # auto (bf16 on CUDA when supported) | bf16 | fp16 (with a GradScaler) | off
    channels_last: bool = False         # NHWC memory format for the model and its input (faster convs on GPUs)
    compile: bool = False               # torch.compile the training forward (evaluation runs the plain model)
    sync_bn: bool = False               # under DDP: BatchNorm statistics over all processes (SyncBatchNorm)
    deterministic: bool = False
    max_steps: int = 0                  # stop after this many optimizer steps in total (0: no limit)
    checkpoint_every_steps: int = 0     # also write checkpoints/last.pt every N steps, mid-epoch (0: epoch ends only)


@dataclass
class EvalCfg:
    batch_size: int = 64                # per process
    every: int = 1                      # validate every N epochs (and always after the last)
    cam_curve_interval: float = 0.001
    iou_thresholds: list[int] = field(default_factory=lambda: [30, 50, 70])
    fixed_threshold: float = 0.2        # the classic papers' box threshold
    best_metric: str = "maxboxacc_v2"   # val metric that selects checkpoints/best.pt


@dataclass
class LogCfg:
    runs_dir: str = "runs"
    log_every: int = 20                 # steps between scalar logs
    vis_num: int = 8                    # fixed validation images shown as heatmap overlays
    vis_every: int = 1                  # evaluations between heatmap grids


@dataclass
class Config:
    data: DataCfg = field(default_factory=DataCfg)
    model: ModelCfg = field(default_factory=ModelCfg)
    optim: OptimCfg = field(default_factory=OptimCfg)
    train: TrainCfg = field(default_factory=TrainCfg)
    eval: EvalCfg = field(default_factory=EvalCfg)
    log: LogCfg = field(default_factory=LogCfg)
    method: Any = None                  # the [<model.name>] table: the method's hyperparameters (None: it has none)

    def __post_init__(self):
        if self.method is None:
            self.method = method_table(self.model.name)

    def __getattr__(self, name: str) -> Any:
        """`cfg.acol` etc.: the method's table under the method's name."""
        model = self.__dict__.get("model")
        if model is not None and name == model.name and self.__dict__.get("method") is not None:
            return self.__dict__["method"]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")


SECTIONS = ("data", "model", "optim", "train", "eval", "log")  # the fixed tables; method tables come after model
PATH_KEYS = ("data.root", "data.metadata_root", "log.runs_dir", "model.pretrained")  # resolved as the docstring says
NOT_PATHS = {"model.pretrained": ("", "imagenet", "efficientnet-lite0")}  # values of a path key that name no file
RECIPE = "acol:"                                    # `acol:NAME`: experiments/NAME shipped with acol


def recipe_dir() -> Path:
    """The experiments/ folder of acol: inside the package when installed from a wheel, beside it in a
    source checkout (an editable install included)."""
    package = Path(__file__).resolve().parent
    installed = package / "experiments"
    return installed if installed.is_dir() else package.parent / "experiments"


def locate(path: str | Path, folder: Path) -> Path:
    """A config file named `path` from `folder`: `acol:NAME` is experiments/NAME of acol, a relative path
    is relative to `folder`."""
    text = str(path)
    if text.startswith(RECIPE):
        return recipe_dir() / text[len(RECIPE):]
    return folder / Path(text).expanduser()


def method_tables() -> dict[str, type]:
    """{method name: the dataclass of its table} for the registered methods that have hyperparameters."""
    from acol.methods import METHODS  # imported here: the methods need torch, the schema does not

    return {name: METHODS.get(name).Config for name in METHODS.names() if METHODS.get(name).Config is not None}


def method_table(name: str) -> Any:
    """A default table of method `name` (None for a method without hyperparameters or an unknown name)."""
    table = method_tables().get(name)
    return table() if table is not None else None


class ConfigError(ValueError):
    """A config file or override that does not fit the schema."""


def _field_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def check_value(value: Any, typ: Any, key: str, source: str) -> Any:
    """Validate `value` against the annotation `typ`; ints are accepted for floats."""
    origin = typing.get_origin(typ)
    if origin is list:
        (item_type,) = typing.get_args(typ)
        if not isinstance(value, list):
            raise ConfigError(f"{source}: {key} must be a list, got {value!r}")
        return [check_value(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is int and isinstance(value, bool) or not isinstance(value, typ):
        raise ConfigError(f"{source}: {key} must be {typ.__name__}, got {value!r}")
    return value


def key_type(key: str) -> Any:
    """The schema's type of the dotted config key `key` (`optim.lr` -> float, `has.grid_size` -> int: a
    method's key by its table); ConfigError naming the key for an unknown key or a table."""
    types = {n: t for n, t in _field_types(Config).items() if n != "method"} | method_tables()
    parts = key.split(".")
    for i, part in enumerate(parts):
        prefix = ".".join(parts[:i])
        if part not in types:
            valid = ", ".join(f"{prefix}.{n}" if prefix else n for n in types)
            raise ConfigError(f"unknown key {'.'.join(parts[:i + 1])!r} (valid keys here: {valid})")
        typ = types[part]
        if i < len(parts) - 1:
            if not dataclasses.is_dataclass(typ):
                raise ConfigError(f"{'.'.join(parts[:i + 1])} is not a table (in {key!r})")
            types = _field_types(typ)
    if dataclasses.is_dataclass(typ):
        raise ConfigError(f"{key} is a table, not a value")
    return typ


def _merge_layer(cfg: Config, tables: dict[str, Any], data: dict, source: str) -> None:
    """Write one layer (a file or an override) into `cfg`; method tables go to `tables` (name -> table)."""
    known = method_tables()
    for name, value in data.items():
        if name in SECTIONS or name in known:
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {name} is a table, got {value!r}")
            target = getattr(cfg, name) if name in SECTIONS else tables.setdefault(name, known[name]())
            _merge_into(target, value, f"{name}.", source)
        else:
            valid = ", ".join([*SECTIONS, *known])
            raise ConfigError(f"{source}: unknown key {name!r} (valid keys here: {valid})")


def _merge_into(obj: Any, data: dict, prefix: str, source: str) -> None:
    """Write the nested dict `data` into the dataclass `obj`, validating keys and types."""
    types = _field_types(type(obj))
    for name, value in data.items():
        key = f"{prefix}{name}"
        if name not in types:
            valid = ", ".join(f"{prefix}{n}" for n in types)
            raise ConfigError(f"{source}: unknown key {key!r} (valid keys here: {valid})")
        typ = types[name]
        if dataclasses.is_dataclass(typ):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: {key} is a table, got {value!r}")
            _merge_into(getattr(obj, name), value, f"{key}.", source)
        else:
            setattr(obj, name, check_value(value, typ, key, source))


def toml_error(path: Path, error: tomllib.TOMLDecodeError) -> str:
    """`<path>:<line>: invalid TOML: <what> (column <c>)` of tomllib's "<what> (at line L, column C)"."""
    where = re.search(r" \(at line (\d+), column (\d+)\)$", str(error))
    if where is None:  # "(at end of document)"
        return f"{path}: invalid TOML: {error}"
    return f"{path}:{where[1]}: invalid TOML: {str(error)[:where.start()]} (column {where[2]})"


def _read_toml_chain(path: Path, seen: tuple[Path, ...] = ()) -> list[tuple[dict, str]]:
    """The (data, source) layers of `path`, its `_base_` files first."""
    path = path.resolve()
    if path in seen:
        raise ConfigError(f"{path}: circular _base_ chain")
    if not path.is_file():
        hint = f" ({RECIPE}NAME names a file under {recipe_dir()})" if path.is_relative_to(recipe_dir()) else ""
        raise ConfigError(f"config file not found: {path}{hint}")
    try:
        data = tomllib.loads(read_utf8(path, ConfigError))
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(toml_error(path, e)) from None
    bases = data.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(base, str) for base in bases):
        raise ConfigError(f"{path}: _base_ must be a path or a list of paths (strings); got {bases!r}")
    layers = []
    for base in bases:
        layers += _read_toml_chain(locate(base, path.parent), seen + (path,))
    return layers + [(data, str(path))]


def parse_override(item: str) -> dict:
    """`a.b=value` -> {"a": {"b": value}}; the value is parsed with the TOML grammar."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not of the form key=value")
    key, raw = item.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} has an empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw
    nested: dict = {}
    node = nested
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return nested


def _keep_raw_strings(nested: dict, raw: str, types: dict[str, Any]) -> dict:
    """Where the target field (typed by `types`) is a str, keep the override's raw text (so `name=inf`
    stays a string)."""
    out = {}
    for name, value in nested.items():
        typ = types.get(name)
        if isinstance(value, dict) and typ is not None and dataclasses.is_dataclass(typ):
            out[name] = _keep_raw_strings(value, raw, _field_types(typ))
        elif typ is str and not isinstance(value, str):
            out[name] = raw
        else:
            out[name] = value
    return out


def _dotted_keys(nested: dict, prefix: str = "") -> set[str]:
    out = set()
    for k, v in nested.items():
        out |= _dotted_keys(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}"}
    return out


def absolute(path: str, folder: Path) -> str:
    """`path` (`~` expanded) made absolute against `folder`, `..` collapsed."""
    return os.path.abspath(os.path.join(folder, os.path.expanduser(path)))


def _resolve_paths(cfg: Config, folders: dict[str, Path]) -> None:
    """Make every path key absolute against the folder of the layer that set it (`folders`), else the cwd."""
    for key in PATH_KEYS:
        section, name = key.split(".")
        table, value = getattr(cfg, section), getattr(getattr(cfg, section), name)
        if value not in NOT_PATHS.get(key, ()):
            setattr(table, name, absolute(value, folders.get(key, Path.cwd())))


def load_config(path: str | Path | None = None, overrides: list[str] = (), paths_from: Path | None = None) -> Config:
    """Defaults <- the TOML file and its `_base_` chain <- dotted overrides; then the method's table.
    `path` is relative to the cwd (or `acol:NAME`). Path values come back absolute (module docstring);
    `paths_from` replaces the files' folders for the paths written in them (an old run's relative
    config.toml)."""
    cfg = Config()
    tables: dict[str, Any] = {}  # method name -> its table, merged over every layer
    folders: dict[str, Path] = {}  # path key -> the folder it is relative to (the last layer that set it)
    if path is not None:
        for data, source in _read_toml_chain(locate(path, Path.cwd())):
            _merge_layer(cfg, tables, data, source)
            folders |= dict.fromkeys(_dotted_keys(data) & set(PATH_KEYS), paths_from or Path(source).parent)
    types = _field_types(Config) | method_tables()
    for item in overrides:
        nested = _keep_raw_strings(parse_override(item), item.split("=", 1)[1], types)
        _merge_layer(cfg, tables, nested, f"override {item!r}")
        folders |= dict.fromkeys(_dotted_keys(nested) & set(PATH_KEYS), Path.cwd())
    _resolve_paths(cfg, folders)
    cfg.method = tables.get(cfg.model.name, method_table(cfg.model.name))
    for name, table in tables.items():  # the other methods' tables: checked too, then dropped
        check_method_table(name, table)
    validate(cfg)
    return cfg


_CHOICES = {
    "model.cam_head": ("fc", "conv1x1"),
    "model.head_init": ("xavier", "wsolevaluation"),
    "model.vgg_pool": ("3x3", "2x2"),
    "optim.lr_rule": ("role", "wsolevaluation"),
    "optim.schedule": SCHEDULES,
    "train.amp": ("auto", "bf16", "fp16", "off"),
    "data.cache": ("off", "memory", "device"),
    "data.train_split": ("train", "val"),
    "train.device": ("auto", "cpu", "cuda"),
}


def _check_choice(key: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(choices)}; got {value!r}")


FLOAT32_MAX = 3.4028234663852886e38

# the valid range of each number in the fixed tables, as an interval ("[" and "]" include the end); NaN
# is in none. NOTES: what the special values mean.
RANGES = {
    "data.resize_size": "[1, inf)", "data.crop_size": "[1, inf)", "data.num_workers": "[-1, inf)",
    "data.val_per_class": "[0, inf)",
    "model.num_classes": "[0, inf)", "model.head_channels": "[1, inf)", "model.head_dropout": "[0, 1)",
    "optim.lr": "(0, inf)", "optim.momentum": "[0, 1)", "optim.weight_decay": "[0, inf)",
    "optim.head_lr_mult": "[0, inf)", "optim.bias_lr_mult": "[0, inf)", "optim.lr_decay_gamma": "(0, inf)",
    "train.epochs": "[1, inf)", "train.global_batch_size": "[1, inf)", "train.threads": "[0, inf)",
    "train.max_steps": "[0, inf)", "train.checkpoint_every_steps": "[0, inf)",
    "eval.batch_size": "[1, inf)", "eval.every": "[1, inf)", "eval.cam_curve_interval": "(0, 1)",
    "eval.fixed_threshold": "[0, 1)",
    "log.log_every": "[1, inf)", "log.vis_num": "[0, inf)", "log.vis_every": "[1, inf)",
}
NOTES = {"data.num_workers": "-1: from the core count", "data.val_per_class": "0: all",
         "model.num_classes": "0: from the dataset",
         "optim.head_lr_mult": "0 freezes the head", "optim.bias_lr_mult": "0 freezes the biases",
         "train.threads": "0: torch's default", "train.max_steps": "0: no limit",
         "train.checkpoint_every_steps": "0: at epoch ends only"}


def _check_range(key: str, value: float, interval: str) -> None:
    """`value` must lie in `interval` (e.g. "(0, inf)", "[0, 1)"); else a ConfigError naming the key, the
    value and the range (`>= 1` for a half line)."""
    low, high = (float(end) for end in interval[1:-1].split(","))
    above = low <= value if interval[0] == "[" else low < value
    below = value <= high if interval[-1] == "]" else value < high
    if not (above and below):  # NaN fails both
        real = isinstance(value, float)
        half_line = f"{'>=' if interval[0] == '[' else '>'} {low:g}{' and finite' if real else ''}"
        valid = half_line if high == math.inf else f"in {interval}"
        note = f" ({NOTES[key]})" if key in NOTES else ""
        raise ConfigError(f"{key} must be {valid}{note}; got {value}")


def check_method_table(name: str, table: Any) -> None:
    """The method table's own `check()`; ConfigError "<name>.<key> ..." for a bad value (None: no table)."""
    if table is not None:
        try:
            table.check()
        except ValueError as e:
            raise ConfigError(f"{name}.{e}") from None


def check_backbone(model: ModelCfg, method_backbones: tuple[str, ...] | None) -> None:
    """model.backbone: a registered name, or a timm: / torchvision: model that is installed and known
    (acol.models.external), one the method has a layout for (`Method.backbones`, None: any)."""
    from acol.models.backbones import BACKBONES
    from acol.models.external import BackboneError, check_name, is_external

    if is_external(model.backbone):
        try:
            check_name(model.backbone)
        except BackboneError as e:
            raise ConfigError(str(e)) from None
    elif model.backbone not in BACKBONES:
        raise ConfigError(f"model.backbone must be one of {', '.join(BACKBONES.names())}; got {model.backbone!r} "
                          "(or timm:<name> / torchvision:<name>: docs/training.md#backbones)")
    if method_backbones is not None and model.backbone not in method_backbones:
        raise ConfigError(f"model.name={model.name} has a layout for model.backbone {', '.join(method_backbones)} "
                          f"only; got {model.backbone!r}")


def validate(cfg: Config) -> None:
    """Value checks the types alone cannot express, the method table's own `check()` included."""
    from acol.methods import METHODS  # imported here: the models need torch, the schema does not

    flat = to_dict(cfg)
    _check_choice("model.name", cfg.model.name, METHODS.names())
    check_backbone(cfg.model, METHODS.get(cfg.model.name).backbones)
    for key, choices in _CHOICES.items():
        section, name = key.split(".")
        _check_choice(key, flat[section][name], choices)
    check_method_table(cfg.model.name, cfg.method)
    if cfg.data.crop_size > cfg.data.resize_size:
        raise ConfigError(f"data.crop_size ({cfg.data.crop_size}) exceeds data.resize_size ({cfg.data.resize_size})")
    if cfg.model.pretrained_classifier and not (cfg.model.pretrained and cfg.model.backbone == "resnet50"):
        raise ConfigError("model.pretrained_classifier needs model.backbone=resnet50 and model.pretrained (the "
                          f"weights that hold the ImageNet classifier); got {cfg.model.backbone!r} and "
                          f"{cfg.model.pretrained!r}")
    if cfg.model.pretrained == "efficientnet-lite0" and cfg.model.backbone != "efficientnet_lite0":
        raise ConfigError("model.pretrained=efficientnet-lite0 needs model.backbone=efficientnet_lite0; got "
                          f"{cfg.model.backbone!r}")
    for key, interval in RANGES.items():
        section, name = key.split(".")
        _check_range(key, flat[section][name], interval)
    for i, iou in enumerate(cfg.eval.iou_thresholds):
        _check_range(f"eval.iou_thresholds[{i}]", iou, "(0, 100]")
    peak_lr = cfg.optim.lr * max(1.0, cfg.optim.head_lr_mult) * max(1.0, cfg.optim.bias_lr_mult)
    if peak_lr >= FLOAT32_MAX:  # the head biases' lr (acol/engine.py `build_optimizer`), a float32 in the step
        raise ConfigError(f"optim.lr x optim.head_lr_mult x optim.bias_lr_mult = {peak_lr:g} exceeds float32's "
                          f"range ({FLOAT32_MAX:g}); got optim.lr={cfg.optim.lr:g}")
    if cfg.optim.nesterov and cfg.optim.momentum == 0:
        raise ConfigError("optim.nesterov=true needs optim.momentum > 0; got optim.momentum=0 (set "
                          "optim.nesterov=false for plain SGD)")
    try:
        validate_spec(cfg.data.synthetic)
    except ValueError as e:
        raise ConfigError(str(e).replace("SyntheticSpec.", "data.synthetic.")) from None
    try:
        check_schedule(cfg.optim)
    except ValueError as e:
        raise ConfigError(str(e)) from None


def to_dict(cfg: Config) -> dict:
    """The config as nested dicts: the fixed tables in order, the method's table (under its name) after model."""
    out = {}
    for name in SECTIONS:
        out[name] = dataclasses.asdict(getattr(cfg, name))
        if name == "model" and cfg.method is not None:
            out[cfg.model.name] = dataclasses.asdict(cfg.method)
    return out


def toml_value(value: Any) -> str:
    """A config value (bool, number, string or list of them) spelled in TOML."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a valid TOML basic string
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def to_toml(cfg: Config, full: bool = False) -> str:
    """The resolved config as TOML; `load_config` of this text gives back an equal Config. The
    [data.synthetic] table is left out for another data set (it is unused there) unless `full`."""
    lines: list[str] = []

    def write_table(name: str, table: dict) -> None:
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {toml_value(v)}" for k, v in scalars.items())
        lines.append("")
        for k, v in table.items():
            if isinstance(v, dict):
                write_table(f"{name}.{k}", v)

    tables = to_dict(cfg)
    if not full and cfg.data.dataset != "SYNTHETIC":
        del tables["data"]["synthetic"]
    for name, table in tables.items():
        write_table(name, table)
    return "\n".join(lines)


def flatten(cfg: Config) -> dict[str, Any]:
    """{"optim.lr": 1e-4, ...}: the config's leaves under dotted keys."""
    out: dict[str, Any] = {}

    def walk(prefix: str, node: dict) -> None:
        for k, v in node.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                out[f"{prefix}{k}"] = v

    walk("", to_dict(cfg))
    return out
