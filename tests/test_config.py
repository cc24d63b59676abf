import tomllib
from pathlib import Path

import pytest

from acol.config import Config, ConfigError, DataCfg, LogCfg, flatten, load_config, parse_override, to_toml
from acol.train import config_changes

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_defaults_without_a_file():
    cfg = load_config()
    assert cfg == Config(data=DataCfg(root=str(Path.cwd() / "data"), metadata_root=str(Path.cwd() / "data/metadata")),
                         log=LogCfg(runs_dir=str(Path.cwd() / "runs")))  # default paths: the cwd's
    assert cfg.acol.threshold == 0.6 and cfg.optim.nesterov is True


def test_base_chain_merges_deeply(tmp_path):
    write(tmp_path / "a.toml", "[optim]\nlr = 0.5\nmomentum = 0.8\n[model]\nname = 'cam'\n")
    write(tmp_path / "b.toml", "_base_ = 'a.toml'\n[optim]\nlr = 0.1\n")
    (tmp_path / "sub").mkdir()
    write(tmp_path / "sub" / "c.toml", "_base_ = ['../b.toml']\n[data.synthetic]\nnum_classes = 3\n")
    cfg = load_config(tmp_path / "sub" / "c.toml")
    assert cfg.optim.lr == 0.1            # b overrides a
    assert cfg.optim.momentum == 0.8      # a survives where b is silent
    assert cfg.model.name == "cam"
    assert cfg.data.synthetic.num_classes == 3
    assert cfg.data.synthetic.image_size == 64  # untouched default in a nested table


def test_overrides_are_typed_with_the_toml_grammar():
    cfg = load_config(overrides=["optim.lr=1e-3", "eval.iou_thresholds=[10, 90]", "model.backbone=smallcnn",
                                 "optim.nesterov=false", "train.epochs=3", "acol.threshold=1"])
    assert cfg.optim.lr == 1e-3 and isinstance(cfg.optim.lr, float)
    assert cfg.eval.iou_thresholds == [10, 90]
    assert cfg.model.backbone == "smallcnn"
    assert cfg.optim.nesterov is False
    assert cfg.train.epochs == 3
    assert cfg.acol.threshold == 1.0 and isinstance(cfg.acol.threshold, float)  # int accepted for float


def test_string_fields_keep_the_raw_override_text():
    cfg = load_config(overrides=["model.pretrained=2024-01-01", "data.dataset=inf"])
    assert cfg.model.pretrained == str(Path.cwd() / "2024-01-01")  # a path: relative to the cwd
    assert cfg.data.dataset == "inf"


def test_override_syntax():
    assert parse_override("a.b.c=3") == {"a": {"b": {"c": 3}}}
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("optim.lr")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("optim..lr=1")


def test_unknown_keys_are_errors_naming_key_and_file(tmp_path):
    path = write(tmp_path / "x.toml", "[optim]\nlearning_rate = 0.1\n")
    with pytest.raises(ConfigError, match=r"x\.toml.*'optim\.learning_rate'"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key 'acol.thresh'"):
        load_config(overrides=["acol.thresh=0.5"])
    with pytest.raises(ConfigError, match="unknown key 'nope'"):
        load_config(overrides=["nope=1"])


@pytest.mark.parametrize("override, message", [
    ("train.epochs=2.5", "train.epochs must be int"),
    ("train.epochs=true", "train.epochs must be int"),
    ("optim.nesterov=1", "optim.nesterov must be bool"),
    ("eval.iou_thresholds=[30, 'x']", r"eval.iou_thresholds\[1\] must be int"),
    ("model.name=resnet", "model.name must be one of"),
    ("acol.threshold=1.5", "acol.threshold must be in"),
    ("train.epochs=0", "train.epochs must be >= 1; got 0"),
    ("data=3", "data is a table"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_missing_file_invalid_toml_and_cycles(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="invalid TOML"):
        load_config(write(tmp_path / "bad.toml", "[optim\nlr = 1"))
    write(tmp_path / "p.toml", "_base_ = 'q.toml'\n")
    write(tmp_path / "q.toml", "_base_ = 'p.toml'\n")
    with pytest.raises(ConfigError, match="circular"):
        load_config(tmp_path / "p.toml")


@pytest.mark.parametrize("path", sorted(p for p in EXPERIMENTS.glob("**/*.toml") if p.parent.name != "ablations"),
                         ids=lambda p: p.name)
def test_every_experiment_file_loads_and_round_trips(path, tmp_path):
    cfg = load_config(path, ["optim.lr=0.123"])
    text = to_toml(cfg)
    tomllib.loads(text)  # valid TOML
    again = load_config(write(tmp_path / "resolved.toml", text))
    assert again == cfg
    assert flatten(again)["optim.lr"] == 0.123
    assert ("[data.synthetic]" in text) == (cfg.data.dataset == "SYNTHETIC")  # only where it is used
    # a run's saved config, written with or without the table (runs before it was left out), is this config
    assert config_changes(text, cfg) == config_changes(to_toml(cfg, full=True), cfg) == {}


def test_synthetic_spec_errors_name_the_config_key():
    with pytest.raises(ConfigError, match="data.synthetic.image_size must be >= 32"):
        load_config(overrides=["data.synthetic.image_size=8"])


# --- where paths resolve -----------------------------------------------------------------------------
def test_paths_resolve_against_the_file_that_sets_them_overrides_and_defaults_against_the_cwd(tmp_path, monkeypatch):
    (tmp_path / "recipes").mkdir()
    write(tmp_path / "recipes" / "base.toml", "[data]\nroot = '../images'\n[model]\npretrained = 'w/vgg.pth'\n")
    (tmp_path / "mine").mkdir()
    mine = write(tmp_path / "mine" / "exp.toml", "_base_ = '../recipes/base.toml'\n[data]\nmetadata_root = 'meta'\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config("../mine/exp.toml")                         # the --config path itself: from the cwd
    assert cfg.data.root == str(tmp_path / "images")               # the base file's folder
    assert cfg.model.pretrained == str(tmp_path / "recipes" / "w" / "vgg.pth")
    assert cfg.data.metadata_root == str(tmp_path / "mine" / "meta")  # the file that set it
    assert cfg.log.runs_dir == str(elsewhere / "runs")               # a default: the cwd
    cfg = load_config(mine, ["data.root=here", "log.runs_dir=/abs/runs", "model.pretrained=imagenet"])
    assert cfg.data.root == str(elsewhere / "here") and cfg.log.runs_dir == "/abs/runs"
    assert cfg.model.pretrained == "imagenet"                        # names no file
    assert load_config(mine, paths_from=elsewhere).data.metadata_root == str(elsewhere / "meta")
    # the saved (absolute) config loads to the same config from any folder
    saved = write(tmp_path / "saved.toml", to_toml(cfg))
    monkeypatch.chdir(tmp_path)
    assert load_config(saved) == cfg


def test_a_recipe_shipped_with_acol_is_named_acol_colon(tmp_path):
    mine = write(tmp_path / "mine.toml", "_base_ = 'acol:synthetic_cam.toml'\n[optim]\nlr = 0.5\n")
    cfg = load_config(mine)
    assert cfg.model.name == "cam" and cfg.model.backbone == "smallcnn" and cfg.optim.lr == 0.5
    assert load_config("acol:wsolevaluation/cub_cam_vgg16.toml") == load_config(EXPERIMENTS / "wsolevaluation" / "cub_cam_vgg16.toml")
    with pytest.raises(ConfigError, match=r"config file not found: .*experiments/nope\.toml \(acol:NAME names a file"):
        load_config("acol:nope.toml")
