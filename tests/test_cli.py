"""The command lines: one grammar, program names in --help, one-line errors (exit 2, nothing written),
a finished run's command run again, data checked before the run folder exists, the check's summary."""
import argparse
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from acol import ablate, cli, compare, evaluate, train
from acol.datasets import dataset, prepare
from acol.datasets.dataset import build_dataset
from acol.datasets.transforms import normalize_on_device

ROOT = Path(__file__).resolve().parents[1]
CONFIG = str(ROOT / "experiments" / "synthetic_acol.toml")


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def one_line_error(capsys, main, argv) -> str:
    """Run main(argv), expecting a user error: exit 2 and exactly one line on stderr; return it."""
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2, err
    assert err.endswith("\n") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------------------------
# Grammar and program names
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv0, expected", [("/venv/bin/acol-train", "acol-train"),
                                             (str(ROOT / "acol" / "train.py"), "python -m acol.train"),
                                             ("", "python -m acol.train")])
def test_program_name_follows_how_it_was_started(monkeypatch, argv0, expected):
    monkeypatch.setattr(sys, "argv", [argv0])
    assert cli.prog("train") == expected


@pytest.mark.parametrize("main, module", [(train.main, "train"), (evaluate.main, "evaluate"),
                                          (compare.main, "compare"), (ablate.main, "ablate")])
def test_help_shows_the_command_and_an_example(monkeypatch, capsys, main, module):
    monkeypatch.setattr(sys, "argv", [f"/venv/bin/acol-{module}"])
    with pytest.raises(SystemExit) as done:
        main(["--help"])
    out = capsys.readouterr().out
    assert done.value.code == 0
    assert out.startswith(f"usage: acol-{module} ") and f"example:\n  acol-{module} " in out
    assert "key=value" in out and "--override KEY=VALUE" in out


def test_overrides_and_run_folders_are_told_apart(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "odd=name").mkdir()
    items = ["runs/a-s0", "eval.batch_size=2", "runs/ablations/x/acol.threshold=0.5-s0", "odd=name", "a=b=c"]
    assert cli.split_overrides(items) == (["runs/a-s0", "runs/ablations/x/acol.threshold=0.5-s0", "odd=name"],
                                          ["eval.batch_size=2", "a=b=c"])


def test_compare_and_ablate_take_positional_overrides_and_the_override_alias():
    args = compare.parse_args(["runs/a-s0", "eval.batch_size=2", "--override", "data.num_workers=0", "runs/b-s0"])
    assert args.runs == [Path("runs/a-s0"), Path("runs/b-s0")]
    assert args.override == ["eval.batch_size=2", "data.num_workers=0"]
    args = ablate.parse_args(["train.epochs=2", "erasing", "--override=eval.batch_size=2", "--dry-run"])
    assert args.ablation == "erasing" and args.override == ["train.epochs=2", "eval.batch_size=2"]
    assert train.parse_args(["a.b=1", "--override", "c.d=2"]).overrides == ["a.b=1", "c.d=2"]


# --------------------------------------------------------------------------------------------
# One-line errors
# --------------------------------------------------------------------------------------------
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
LOCALIZER_NAMES = ("inforward, inforward_a, inforward_b, cam, gradcam, gradcam_pp, guided_backprop, guided_gradcam, "
                   "hirescam, xgradcam, layercam, eigencam, smoothgradcampp, integrated_gradients, scorecam, "
                   "ablationcam, rise")


@pytest.mark.parametrize("command, argv, expected", [
    ("compare", ["runs/x-s0", "--methods", "cam,gradcm"], ["'gradcm'", LOCALIZER_NAMES]),
    ("compare", ["--checkpoint", "bset"], ["'bset'", "'last', 'best'"]),
    ("compare", ["--target", "gtt"], ["'gtt'", "'gt', 'pred'"]),
    ("compare", ["missing_run"], ["missing_run", "no such folder"]),
    ("compare", ["--num-images", "0"], ["--num-images", ">= 1"]),
    ("compare", ["--replicates", "0"], ["--replicates", ">= 1"]),
    ("compare", ["--confidence", "95"], ["--confidence", "(0, 1)", "95"]),
    ("compare", ["--reference", "synthetic_cam"], ["--reference", "GROUP/LOCALIZER", "'synthetic_cam'"]),
    ("compare", ["--localizer-option", "rise.n_maskz=5"], ["n_maskz", "options: chunk, n_masks, grid, p, seed"]),
    ("compare", ["--localizer-option", "risee.n_masks=5"], ["'risee'", LOCALIZER_NAMES]),
    ("evaluate", ["--run", "r", "--localizer-option", "rise"], ["'rise'", "NAME.KEY=VALUE"]),
    ("evaluate", ["--run", "r", "--threshold", "2"], ["--threshold", "[0, 1)", "2.0"]),
    ("evaluate", ["--run", "r", "--layer", "head"], ["--layer", "needs --localizer"]),
    ("evaluate", ["--run", "missing_run"], ["missing_run", "no such folder"]),
    ("evaluate", ["--run", "r", "--split", "tset"], ["'tset'", "train, val, test"]),
    ("evaluate", ["--scoremaps", "m", "--split", "val,tset"], ["'tset'", "train, val, test"]),
    ("evaluate", ["--run", "r", "--localizer", "gradcm"], ["'gradcm'", "'gradcam'"]),
    ("evaluate", ["--run", "r", "--target", "x"], ["'x'", "'gt', 'pred'"]),
    ("evaluate", ["--scoremaps", "nomaps", "--dataset", "CUB"], ["nomaps", "no such folder"]),
    ("ablate", ["erasng"], ["erasng.toml", "erasing, feature_map"]),
    ("ablate", ["erasing", "--seeds", "0,x"], ["'0,x'", "integers"]),
    ("ablate", ["erasing", "--jobs", "0"], ["'0'", "positive integer"]),
    ("train", ["foo"], ["'foo'", "key=value"]),
    ("train", ["train.amp=fp32"], ["train.amp", "auto, bf16, fp16, off", "'fp32'"]),
    ("train", ["train.threads=-1"], ["train.threads", "-1"]),
    ("train", ["--resume", "nowhere.pt"], ["'nowhere.pt'", "auto"]),
    ("benchmark", ["--backbone", "vgg61"], ["'vgg61'", "'resnet50', 'smallcnn', 'vgg16'"]),
    ("benchmark", ["--batch", "0"], ["--batch", ">= 1"]),
    ("benchmark", ["--backbone", "smallcnn", "--localizers", "cam"], ["'cam'", "acol model", "inforward_a, inforward_b"]),
    ("bench_eval", ["--interval", "0"], ["--interval", "(0, 1)"]),
    ("prepare", ["cub", "--source"], ["prepare cub: error: argument --source: expected one argument"]),
    ("prepare", ["nosuch"], ["invalid choice: 'nosuch'", "'cub', 'ilsvrc', 'openimages', 'check'"]),
    pytest.param("train", ["train.device=cuda"], ["train.device=cuda", "train.device=cpu"], marks=NO_CUDA),
    pytest.param("benchmark", ["--device", "cuda"], ["--device=cuda", "--device=cpu"], marks=NO_CUDA),
    pytest.param("ablate", ["erasing", "train.device=cuda"], ["train.device=cuda", "train.device=cpu"], marks=NO_CUDA),
])
def test_a_user_mistake_is_one_line_naming_the_value_and_the_choices(command, argv, expected, tmp_path,
                                                                      monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    main = {"train": train.main, "evaluate": evaluate.main, "compare": compare.main, "ablate": ablate.main,
            "prepare": prepare.main}.get(command)
    main = main or script(command).main
    err = one_line_error(capsys, main, argv)
    for text in expected:
        assert text in err, (text, err)
    assert list(tmp_path.iterdir()) == []           # no run folder, no output folder


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="the per-phase CPU peak needs Linux")
def test_benchmark_reports_each_phases_own_peak_memory(capsys):
    """256 MiB freed before a reset is not in the next phase's peak (the process's lifetime peak would
    repeat it in every row), and every row of a run reads its own peak."""
    benchmark, cpu = script("benchmark"), torch.device("cpu")

    def peak_mib():
        return int(benchmark.peak_memory(cpu, since_reset=True).split()[0])

    assert benchmark.reset_peak_memory(cpu)
    block = torch.ones(2**26)  # 256 MiB, touched
    with_block = peak_mib()
    del block
    assert benchmark.reset_peak_memory(cpu)
    assert with_block - peak_mib() >= 200
    rates = benchmark.main(["--device", "cpu", "--backbone", "smallcnn", "--size", "32", "--steps", "1",
                            "--localizers", "inforward,gradcam,scorecam", "model.head_channels=8"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")][1:]
    assert [row.split(" | ")[0][2:] for row in rows] == list(rates)
    assert all(row.endswith(" MiB peak RSS |") for row in rows)


@pytest.fixture
def trained_run(tiny_overrides, tmp_path):
    train.main(["--config", CONFIG, "--name", "run", *tiny_overrides, "train.global_batch_size=6"])
    return tmp_path / "runs" / "run"


def test_mistakes_about_a_trained_run_are_one_line(trained_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    err = one_line_error(capsys, evaluate.main, ["--run", str(trained_run), "--checkpoint", "bset"])
    assert "'bset'" in err and "last, best" in err
    err = one_line_error(capsys, evaluate.main, ["--run", str(trained_run), "--localizer", "gradcam", "--layer", "nope"])
    assert "--layer 'nope' is not a layer of the acol model (default: " in err and "backbone.features" in err
    (trained_run / "checkpoints" / "best.pt").unlink()
    err = one_line_error(capsys, compare.main, [str(trained_run), "--checkpoint", "best"])
    assert "checkpoints/best.pt" in err and "there: last" in err
    err = one_line_error(capsys, compare.main, [str(trained_run), "--methods", "cam"])
    assert "none of the methods cam applies to these runs' models; those that do: inforward, inforward_a, " \
        "inforward_b, gradcam," in err and ", rise\n" in err  # the ACoL model's, in registration order
    if not torch.cuda.is_available():
        for main in (evaluate.main, compare.main):
            argv = ["--run", str(trained_run)] if main is evaluate.main else [str(trained_run)]
            err = one_line_error(capsys, main, [*argv, "train.device=cuda"])
            assert "train.device=cuda but torch sees no CUDA device" in err
    assert not (tmp_path / "runs" / "compare").exists() and not (trained_run / "eval").exists()


def test_localizer_options_reach_the_localizers(trained_run, tmp_path, monkeypatch, capsys):
    """--localizer-option NAME.KEY=VALUE: TOML values per localizer, used by compare's maps."""
    parser = argparse.ArgumentParser()
    assert evaluate.localizer_options(parser, ["rise.n_masks=8", "rise.p=0.25", "smoothgradcampp.samples=3"]) == {
        "rise": {"n_masks": 8, "p": 0.25}, "smoothgradcampp": {"samples": 3}}
    monkeypatch.chdir(tmp_path)
    records = compare.main([str(trained_run), "--methods", "rise", "--localizer-option", "rise.n_masks=4",
                            "--out", str(tmp_path / "cmp"), "--no-baselines"])
    assert [r["method"] for r in records] == ["rise"]


# --------------------------------------------------------------------------------------------
# The same training command again
# --------------------------------------------------------------------------------------------
def test_a_finished_run_command_again_prints_its_table(tiny_overrides, tmp_path, capsys):
    argv = ["--config", CONFIG, *tiny_overrides, "train.global_batch_size=6"]
    first = train.main(argv)
    (run_dir,) = (tmp_path / "runs").iterdir()
    out = capsys.readouterr().out
    table = out[out.index(f"acol / smallcnn on SYNTHETIC ({run_dir})\n"):].strip()  # the run's last words
    assert "| test |" in table
    log = (run_dir / "log.txt").read_text()
    again = train.main(argv)
    out = capsys.readouterr().out
    assert again == first
    assert out.startswith(f"\n{table}\n")                                         # the same table, only
    assert "this run has finished" in out and "--name NEW" in out and "train.seed=" in out
    assert (run_dir / "log.txt").read_text() == log                              # nothing ran again
    err = one_line_error(capsys, train.main, [*argv, "--name", run_dir.name, "optim.lr=0.02"])
    assert f"{run_dir} holds a finished run of another config (optim.lr: 0.01 -> 0.02)" in err


def test_an_unfinished_run_folder_is_refused_with_resume_auto(tiny_overrides, tmp_path, capsys):
    (tmp_path / "runs" / "half" / "checkpoints").mkdir(parents=True)
    (tmp_path / "runs" / "half" / "checkpoints" / "last.pt").write_bytes(b"")  # refused unread: not resumed
    err = one_line_error(capsys, train.main, ["--config", CONFIG, "--name", "half", *tiny_overrides])
    assert "holds an unfinished run (checkpoints/last.pt)" in err and "--resume auto" in err and "--name NEW" in err


def test_threads_setting_is_applied_and_recorded(tiny_overrides, tmp_path):
    before = torch.get_num_threads()
    try:
        train.main(["--config", CONFIG, "--name", "one", *tiny_overrides, "train.global_batch_size=6",
                    "train.threads=1"])
    finally:
        torch.set_num_threads(before)
    assert json.loads((tmp_path / "runs" / "one" / "meta.json").read_text())["threads"] == 1


# --------------------------------------------------------------------------------------------
# Data checked before work; the check's summary
# --------------------------------------------------------------------------------------------
@pytest.fixture
def moved_data(tiny_data, tmp_path):
    """The tiny set's metadata as data set TINY under tmp_path/metadata; its images nowhere (12/6/6 ids)."""
    _, metadata_root = tiny_data
    shutil.copytree(metadata_root / "SYNTHETIC", tmp_path / "metadata" / "TINY")
    return ["data.dataset=TINY", f"data.metadata_root={tmp_path / 'metadata'}", f"data.root={tmp_path / 'nowhere'}"]


def test_a_wrong_data_root_is_one_line_before_the_run_folder(tiny_overrides, moved_data, tmp_path, capsys):
    err = one_line_error(capsys, train.main, ["--config", CONFIG, "--name", "r", *tiny_overrides, *moved_data])
    assert (f"data error: 12 of the files listed in {tmp_path / 'metadata' / 'TINY' / 'train'} are missing under "
            f"{tmp_path / 'nowhere' / 'TINY'} (data.root / data.dataset), e.g. {tmp_path / 'nowhere' / 'TINY'}/") in err
    assert not (tmp_path / "runs").exists()
    err = one_line_error(capsys, train.main, ["--config", CONFIG, "--name", "r", *tiny_overrides, *moved_data,
                                              f"data.metadata_root={tmp_path / 'nometa'}"])
    assert f"metadata folder not found: {tmp_path / 'nometa' / 'TINY' / 'train'}" in err and "data.metadata_root=" in err
    assert not (tmp_path / "runs").exists()


def test_check_data_summarizes_many_problems_and_lists_them_on_request(tiny_overrides, moved_data, capsys):
    with pytest.raises(SystemExit) as failed:
        train.main(["--config", CONFIG, *tiny_overrides, *moved_data, "--check-data"])
    out = capsys.readouterr().out
    assert failed.value.code == 1
    # 24 images and their 24 masks missing
    assert "48 problems of 1 kind (the full list: --verbose):" in out
    assert "  48 x file not found: <path>, e.g." in out and out.count("file not found: /") == 3
    assert len(out.splitlines()) < 15
    with pytest.raises(SystemExit):
        train.main(["--config", CONFIG, *tiny_overrides, *moved_data, "--check-data", "--verbose"])
    assert capsys.readouterr().out.count("file not found: /") == 48
    roots = ["--dataset", "TINY", "--metadata-root", moved_data[1].split("=", 1)[1],
             "--data-root", moved_data[2].split("=", 1)[1]]
    assert prepare.main(["check", *roots]) == 1
    out = capsys.readouterr().out
    assert "48 problems of 1 kind" in out and out.count("file not found: /") == 3
    assert prepare.main(["check", "--verbose", *roots]) == 1
    assert capsys.readouterr().out.count("file not found: /") == 48


@pytest.mark.parametrize("problem, kind", [
    ("/m/TINY/train/image_ids.txt:3: file not found: /d/TINY/a/1.png", "file not found: <path>"),
    ("/m/image_sizes.txt:12: says 40x30 but /d/a/1.png is 20x20", "says NxN but <path> is NxN"),
    ("/d/a/b.jpg: cannot read image /d/a/b.jpg: image file is truncated",
     "cannot read image <path>: image file is truncated"),
    ("/m/val/image_ids.txt:7: duplicate image id 'val/1.png' (first on line 3)",
     "duplicate image id '…' (first on line N)"),
])
def test_problem_kinds(problem, kind):
    assert prepare.problem_kind(problem) == kind


# --------------------------------------------------------------------------------------------
# The numba notice
# --------------------------------------------------------------------------------------------
def test_compiling_the_box_evaluator_is_announced_only_when_not_cached(tmp_path, capsys):
    from acol.evaluation import boxes

    boxes.box_hits(boxes.np.zeros((4, 4), boxes.np.float32), boxes.np.array([[0, 0, 1, 1]]), [0.5], [0.5])
    capsys.readouterr()
    boxes.announce_compile()                        # compiled and cached now: no notice
    assert capsys.readouterr().err == ""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path / "empty_cache"))
    fresh = subprocess.run([sys.executable, "-c", "from acol.evaluation import boxes; boxes.announce_compile()"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert fresh.returncode == 0 and fresh.stderr.startswith("compiling the box evaluator with numba"), fresh.stderr


def test_long_default_run_names_are_cut_and_keep_a_hash_of_the_whole():
    short = train.default_run_name("experiments/synthetic_acol.toml", ["optim.lr=0.01", "train.seed=3"], 3)
    assert short == "synthetic_acol+optim.lr=0.01-s3"
    long_a, long_b = (train.default_run_name("synthetic_acol.toml", [f"model.pretrained=/{'a' * 300}{end}"], 3)
                      for end in "xy")
    assert len(long_a) == train.MAX_NAME + 3 and long_a.endswith("-s3") and long_a != long_b
    assert long_a.startswith("synthetic_acol+model.pretrained=_aaa") and long_a[-12] == "~"


def test_default_run_names_leave_out_how_a_run_runs():
    """Threads, workers, data and log folders do not change what is trained: a resume with others is the same run."""
    settings = ["train.threads=1", "data.num_workers=0", "data.root=/elsewhere", "log.runs_dir=/tmp/r", "eval.every=2"]
    assert train.default_run_name("experiments/synthetic_acol.toml", [*settings, "train.epochs=2"], 0) == \
        "synthetic_acol+train.epochs=2-s0"
    assert train.default_run_name("synthetic_acol.toml", settings, 0) == "synthetic_acol-s0"


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_after_a_command_finished_exits_0_with_a_line(signum):
    """`run_command`: once main returned (results written), a signal while the process ends (its atexit
    callbacks) is no failure, and nothing after `run_command` runs: the process ends there."""
    code = ("import atexit, os, signal, sys, time\nfrom acol import cli\n"
            f"atexit.register(lambda: (os.kill(os.getpid(), {int(signum)}), time.sleep(30)))\n"
            "cli.run_command(lambda: print('table'))\nsys.exit(3)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "table\n")
    assert done.stderr == f"signal {int(signum)} after the command had finished: its results are complete; exit 0\n"


@pytest.mark.parametrize("delay", [0.0, 0.2])
def test_a_group_signal_once_the_table_is_printed_ends_the_real_command_with_0(delay, tiny_overrides):
    """`python -m acol.train` with 2 workers, its whole group signalled as its results table appears (or
    shortly after): exit 0, no traceback, at most one line, and no process of the group left behind."""
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "acol.train", "--config", CONFIG, "--name", "table",
                             *tiny_overrides, "data.num_workers=2", "train.global_batch_size=6"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("| test |"):
            time.sleep(delay)
            subprocess.run(["kill", "-TERM", "--", f"-{proc.pid}"], check=False)
            break
    rest = proc.stdout.read()  # the pipe closes once every process of the group has ended
    out = "".join(lines) + rest
    assert proc.wait(timeout=30) == 0, out[-2000:]
    assert "Traceback" not in out and "Exception ignored" not in out, out[-2000:]
    said = [text for text in out.splitlines() if "signal 15" in text]
    assert len(said) <= 1 and all("they are complete" in text or "results are complete" in text for text in said)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_during_start_up_is_one_line(signum):
    """`stop_quietly_during_start_up`: a signal before the command's own handlers (torch still importing)."""
    code = ("import os, signal, time\nfrom acol import cli\ncli.stop_quietly_during_start_up()\n"
            f"os.kill(os.getpid(), {int(signum)})\ntime.sleep(30)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 128 + signum
    assert done.stderr == (f"stopped by signal {int(signum)} during start-up: nothing was written; the same command "
                           "starts again\n")


def test_python_m_acol_train_stops_quietly_while_it_imports(tmp_path):
    """The real command, interrupted as early as a user can: one line whenever the signal lands
    before the results (here, --print-config's)."""
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "acol.train", "--print-config"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)  # python is up and importing torch (seconds); the handler is in place before that
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    if proc.returncode == 0:  # a fast machine finished first: nothing to interrupt
        return
    assert (proc.returncode, err) == (130, "stopped by signal 2 during start-up: nothing was written; the same "
                                           "command starts again\n")


def test_score_cam_bound_times_both_layouts_of_the_same_copies():
    """The bench's closing line: both forwards' times, their ratio as printed, and a positive FLOP rate."""
    bench = script("bench_vs_pytorch_grad_cam")
    args = argparse.Namespace(model="acol", backbone="smallcnn", perturbation_size=32, perturbation_channels=8,
                              batch=2, steps=1, run=None)
    line = bench.forward_bound(args)
    nchw, cl = map(float, re.findall(r"([\d.]+) ms in", line))  # rounded to 0.1 ms, the ratio to 0.01
    ratio = float(re.search(r"([\d.]+)x;", line)[1])
    ours, gemm = map(float, re.findall(r"(\d+) GFLOP/s", line))
    assert (nchw - 0.05) / (cl + 0.05) - 0.005 <= ratio <= (nchw + 0.05) / (cl - 0.05) + 0.005
    assert ours > 0 and gemm > 0


def test_bench_on_a_trained_run_takes_its_model_and_spread_test_images(trained_run):
    bench = script("bench_vs_pytorch_grad_cam")
    model, images, labels, size = bench.trained_setting(str(trained_run), 3)
    _, trained = evaluate.load_run(trained_run)[:2]
    assert not model.training and size == 32 and images.shape == (3, 3, 32, 32) and images.dtype == torch.float32
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), trained.state_dict().values()))
    samples = evaluate.spread_batch(build_dataset(evaluate.run_config(trained_run), "test", train=False), 3)
    assert torch.equal(labels, samples["label"])
    torch.testing.assert_close(images, normalize_on_device(samples["image"], torch.device("cpu")))


def test_a_pretrained_classifier_the_model_cannot_take_is_one_line(tiny_overrides, tmp_path, capsys):
    import torchvision
    path = tmp_path / "resnet50.pth"
    torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
    argv = ["--config", CONFIG, "--name", "r", *tiny_overrides, "model.backbone=resnet50", f"model.pretrained={path}",
            "model.pretrained_classifier=true"]
    err = one_line_error(capsys, train.main, argv)  # ACoL has no GAP + FC
    assert err.startswith("config error: model.pretrained_classifier needs a GAP + FC straight on the resnet50")
    err = one_line_error(capsys, train.main, [*argv, "model.name=cam", "model.cam_head=fc", "model.cam_conv=false"])
    assert err.startswith("config error: model.pretrained_classifier: the ImageNet classifier has 1000 classes")
    assert not (tmp_path / "runs" / "r").exists()


def test_a_batch_that_the_processes_cannot_share_is_one_line(tiny_overrides, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(dataset, "get_world_size", lambda: 2)  # as under torchrun --nproc-per-node=2
    err = one_line_error(capsys, train.main, ["--config", CONFIG, "--name", "b", *tiny_overrides,
                                              "train.global_batch_size=5"])
    assert err == "config error: train.global_batch_size=5 is not divisible by the 2 processes; make it a multiple of 2\n"


@pytest.fixture
def own_tiny(tiny_data, tmp_path):
    """(overrides, metadata folder) of the tiny set as data set TINY: its metadata copied (to be edited),
    its images linked."""
    data_root, metadata_root = tiny_data
    shutil.copytree(metadata_root / "SYNTHETIC", tmp_path / "metadata" / "TINY")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "TINY").symlink_to(data_root / "SYNTHETIC")
    return (["data.dataset=TINY", f"data.metadata_root={tmp_path / 'metadata'}", f"data.root={tmp_path / 'images'}"],
            tmp_path / "metadata" / "TINY")


def test_a_val_split_without_boxes_or_masks_is_found_before_training(tiny_overrides, own_tiny, tmp_path, capsys):
    overrides, metadata = own_tiny
    (metadata / "val" / "localization.txt").write_text("")  # an empty file, as a user's script may leave it
    expected = (f"{metadata / 'val'}: no boxes (localization.txt) and no masks (mask_localization.txt) for any of "
                "its 6 images")
    (metadata / "val" / "mask_localization.txt").unlink()
    with pytest.raises(SystemExit) as failed:
        train.main(["--config", CONFIG, *tiny_overrides, *overrides, "--check-data", "--verbose"])
    assert failed.value.code == 1 and expected in capsys.readouterr().out
    err = one_line_error(capsys, train.main, ["--config", CONFIG, "--name", "r", *tiny_overrides, *overrides])
    assert err.startswith(f"data error: {expected}") and not (tmp_path / "runs").exists()


def test_a_best_metric_val_cannot_give_is_one_line_before_training(tiny_overrides, own_tiny, tmp_path, capsys):
    overrides, metadata = own_tiny
    (metadata / "val" / "localization.txt").write_text("")  # masks only, as OpenImages
    err = one_line_error(capsys, train.main, ["--config", CONFIG, "--name", "r", *tiny_overrides, *overrides])
    assert err == (f"config error: eval.best_metric='maxboxacc_v2' needs boxes on val, and {metadata / 'val'} has "
                   "masks only; set eval.best_metric=pxap\n")
    assert not (tmp_path / "runs").exists()


def test_check_data_names_the_line_of_a_val_label_no_train_image_has(tiny_overrides, own_tiny, capsys):
    overrides, metadata = own_tiny
    labels = metadata / "val" / "class_labels.txt"
    lines = labels.read_text().splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0] + ",7"
    labels.write_text("\n".join(lines) + "\n")
    with pytest.raises(SystemExit):
        train.main(["--config", CONFIG, *tiny_overrides, *overrides, "--check-data", "--verbose"])
    assert f"{labels}:4: label 7, which no train image has" in capsys.readouterr().out
