"""pyproject.toml (what `pip install .` ships, the console commands it installs) and the shell scripts, run
from outside the repository."""
from __future__ import annotations

import importlib.util
import os
import re
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import torch

from acol import console
from acol.config import recipe_dir

REPO = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())


def test_every_package_and_experiment_folder_is_shipped():
    setuptools = PROJECT["tool"]["setuptools"]
    code = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "acol").rglob("__init__.py")}
    experiments = {".".join(("acol", *p.relative_to(REPO).parts)) for p in (REPO / "experiments").rglob("*")
                   if p.is_dir() and any(p.glob("*.toml"))} | {"acol.experiments"}
    assert set(setuptools["packages"]) == code | experiments
    assert setuptools["package-dir"] == {"acol.experiments": "experiments"}
    assert all(setuptools["package-data"][name] == ["*.toml"] for name in experiments)
    assert recipe_dir() == REPO / "experiments"  # a source checkout reads them in place


def test_the_dependencies_and_extras_are_requirements_txt_less_the_exact_pins():
    pinned = [line.split("#")[0].strip() for line in (REPO / "requirements.txt").read_text().splitlines()]
    assert "-e ." in pinned                      # pip install -r requirements.txt installs the package too
    pinned = [line for line in pinned if line and line != "-e ."]
    def names(specs):
        return sorted(re.split("[<>=]", spec)[0] for spec in specs)

    extras = PROJECT["project"]["optional-dependencies"]
    optional = names(spec for specs in extras.values() for spec in specs)
    assert names(PROJECT["project"]["dependencies"]) == names(p for p in pinned if names([p])[0] not in optional)
    assert set(optional) <= set(names(pinned))  # every extra is installed by requirements.txt, so CI tests it
    assert extras["test"][0] in pinned and extras["test"][0].startswith("pytest")
    assert names(extras["timm"]) == ["timm"]


@pytest.mark.parametrize("command, option", [("acol-train", "--check-data"), ("acol-evaluate", "--scoremaps"),
                                             ("acol-compare", "--methods"), ("acol-ablate", "--dry-run"),
                                             ("acol-prepare", "openimages")])
def test_each_console_command_runs_its_module(command, option, monkeypatch, capsys):
    """`option`: one that only that module's --help lists."""
    assert set(PROJECT["project"]["scripts"]) == {"acol-train", "acol-evaluate", "acol-compare", "acol-ablate",
                                                  "acol-prepare"}
    name = command.removeprefix("acol-")
    assert PROJECT["project"]["scripts"][command] == f"acol.console:{name}"
    monkeypatch.setattr(sys, "argv", [command, "--help"])
    with pytest.raises(SystemExit) as done:
        getattr(console, name)()
    assert done.value.code == 0 and option in capsys.readouterr().out


@pytest.fixture(autouse=True)
def own_signal_handlers():
    """A console command keeps its own SIGINT / SIGTERM handlers for the rest of its process: give
    pytest's back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_console_commands_exit_with_0_on_success_and_prepare_with_its_status(monkeypatch, tmp_path, capsys):
    # main returns a dict, not an error; the command then ends its process itself (cli.end_process)
    code = "import sys\nfrom acol import console\nsys.argv = ['acol-train', '--print-config']\nconsole.train()\nsys.exit(3)\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "[model]" in done.stdout, done.stderr[-2000:]
    monkeypatch.setattr(sys, "argv", ["acol-prepare", "check", "--dataset", "NONE", "--data-root", str(tmp_path),
                                      "--metadata-root", str(tmp_path)])
    assert console.prepare() == 1 and "no split folder" in capsys.readouterr().out


def test_the_train_script_runs_where_the_user_stands(tmp_path):
    (tmp_path / "mine.toml").write_text('_base_ = "acol:synthetic_cam.toml"\n[data]\nroot = "images"\n')
    env = dict(os.environ, PYTHON=sys.executable)
    script = str(REPO / "scripts" / "train_acol.sh")
    for args, name, root in ((["--print-config"], "acol", tmp_path / "data"),        # the repository's default
                             (["mine.toml", "--print-config"], "cam", tmp_path / "images"),
                             (["--config", "mine.toml", "--print-config"], "cam", tmp_path / "images")):
        done = subprocess.run(["bash", script, *args], cwd=tmp_path, env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        resolved = tomllib.loads(done.stdout)
        assert resolved["model"]["name"] == name and resolved["data"]["root"] == str(root)
        assert resolved["log"]["runs_dir"] == str(tmp_path / "runs")


@pytest.mark.parametrize("variable, value", [("NGPUS", "abc"), ("NGPUS", "0"), ("NNODES", "2x")])
def test_the_train_script_checks_its_process_counts(variable, value, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, **{variable: value})
    done = subprocess.run(["bash", str(REPO / "scripts" / "train_acol.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (2, f"error: {variable} must be a whole number >= 1 (processes); "
                                                 f"got '{value}'\n")
    assert not any(tmp_path.iterdir())  # nothing trained, nothing written


@pytest.mark.parametrize("args, env_seeds, line", [
    (["--bogus"], "0", "python -m acol.compare: error: unrecognized arguments: --bogus (see python -m acol.compare "
                       "--help)"),
    (["--methods", "gradcam,nope"], "0", "error: --methods: unknown localizer 'nope'; valid: "),
    ([], "0 x", "error: SEEDS must be whole numbers >= 0; got 'x'"),
])
def test_the_compare_script_checks_its_arguments_before_training(args, env_seeds, line, tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, SEEDS=env_seeds)
    done = subprocess.run(["bash", str(REPO / "scripts" / "compare_cams.sh"), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 2 and done.stderr.startswith(line) and done.stderr.count("\n") == 1, done.stderr
    assert not any(tmp_path.iterdir())  # nothing trained


def test_the_gpu_check_says_in_one_line_that_there_is_no_gpu(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("a CUDA machine runs the whole check")
    env = dict(os.environ, PYTHON=sys.executable)
    done = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert (done.returncode, done.stdout, done.stderr) == (
        0, "gpu_check: no CUDA device here (torch.cuda.is_available() is false): nothing to check\n", "")
    without_torch = subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh")], cwd=tmp_path,
                                   env=dict(os.environ, PYTHON="/bin/false"), capture_output=True, text=True)
    assert without_torch.returncode == 2 and "cannot import torch" in without_torch.stderr


@pytest.mark.parametrize("name, peak, line", [
    ("NVIDIA H200", None, "model FLOPs utilisation (training): 50.0 % of 989 TFLOP/s"),
    ("NVIDIA H100 PCIe", None, "model FLOPs utilisation (training): 65.4 % of 756 TFLOP/s"),
    ("Some GPU", None, "model FLOPs utilisation (training): unknown peak for 'Some GPU'; pass --peak-tflops"),
    ("Some GPU", 100.0, "model FLOPs utilisation (training): 494.5 % of 100 TFLOP/s"),
])
def test_model_flops_utilisation(name, peak, line):
    spec = importlib.util.spec_from_file_location("benchmark", REPO / "scripts" / "benchmark.py")
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    assert benchmark.utilisation(1000.0, 494.5e9, name, peak) == line  # 494.5 TFLOP/s of training


def test_the_layers_import_without_a_circle():
    """The localizers stand below the training engine: acol.cams, a many-forward localizer's progress bar
    included, never imports acol.engine (which imports acol.cams)."""
    code = ("import sys, torch\nfrom acol.cams import build_localizer\nfrom acol.cams.perturbation import "
            "PROGRESS_MIN_CHUNKS\nlist(build_localizer('scorecam', chunk=1).chunks(torch.arange(PROGRESS_MIN_CHUNKS)))\n"
            "print('acol.engine' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (0, "False\n"), done.stderr
