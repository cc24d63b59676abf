"""What TensorBoard shows of a tiny run, read back from the real event files: the tag groups in the
order its default views open them, the heatmap strips, the HParams entry and the eval run's curves."""
from pathlib import Path

import cv2
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

from acol import evaluate, train
from acol.run import FINAL_TEST
from acol.tracking import THRESHOLD_AXIS

CONFIG = str(Path(__file__).resolve().parents[1] / "experiments" / "synthetic_acol.toml")
TRAIN_TAGS = {"train/loss", "train/loss_a", "train/loss_b", "train/cls_acc", "train/lr", "train/img_per_s"}
HEADER = 56  # the strips' title band: two lines of 26 px and 4 px (font scale 128 / 192)


def events(folder: Path) -> EventAccumulator:
    (event_file,) = folder.glob("events.out.tfevents.*")
    acc = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


@pytest.fixture
def trained(tiny_overrides, tmp_path):
    """(results, run directory) of a two-step ACoL run with two fixed val images (log.vis_num=2)."""
    results = train.main(["--config", CONFIG, "--name", "run", *tiny_overrides, "train.global_batch_size=6"])
    return results, tmp_path / "runs" / "run"


def test_training_events_open_on_the_curves(trained):
    results, run_dir = trained
    tb = events(run_dir)
    scalars, images = set(tb.Tags()["scalars"]), set(tb.Tags()["images"])
    test_tags = {f"z_test/{k}" for k in results["test"]}
    assert scalars == TRAIN_TAGS | {f"val/{k}" for k in results["val"]} | test_tags
    # TensorBoard sorts the groups (before the first '/') by name and opens the first two
    assert sorted({tag.split("/")[0] for tag in scalars | images}) == ["train", "val", "vis", "z_test"]
    for tag in test_tags:  # the final report, once, at the last step
        (event,) = tb.Scalars(tag)
        assert event.step == results["step"] and event.value == pytest.approx(results["test"][tag[len("z_test/"):]])
    assert tb.SummaryMetadata("z_test/maxboxacc_v2").summary_description == FINAL_TEST

    assert images == {"vis/heatmaps/0", "vis/heatmaps/1"}  # a strip per fixed val image
    strip = tb.Images("vis/heatmaps/1")[-1]
    assert strip.step == results["step"]
    assert (strip.width, strip.height) == (2 + 4 * (128 + 2), HEADER + 2 + 128 + 2)  # 4 tiles, 32 -> 128 px
    pixels = cv2.imdecode(np.frombuffer(strip.encoded_image_string, np.uint8), cv2.IMREAD_COLOR)
    band, tiles = pixels[:HEADER].astype(int), pixels[HEADER + 2:-2].astype(int)
    assert (band == band[..., :1]).all()  # black titles on white
    for j in range(4):  # every column has its title
        assert (band[:, 2 + 130 * j:130 * (j + 1)] < 100).sum() > 50, j
    assert (tiles.max(axis=2) - tiles.min(axis=2) > 40).mean() > 0.5  # the overlays are in colour

    content = tb.PluginTagToContent("hparams")
    experiment = HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    columns = {m.name.tag: m.display_name for m in experiment.metric_infos}
    assert columns == {"z_test/top1_cls": "test top-1 cls", "z_test/top1_loc@val": "test top-1 loc @val",
                       "z_test/gt_known_loc@val": "test GT-known loc @val",
                       "z_test/maxboxacc_v2": "test MaxBoxAccV2 (oracle)", "z_test/pxap": "test PxAP"}
    assert set(columns) <= scalars  # the dashboard reads their values from the run's own scalars
    start = HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["acol.threshold"].number_value == pytest.approx(0.6)
    assert start.hparams["model.name"].string_value == "acol"


def test_evaluate_writes_threshold_curves_in_a_run_of_their_own(trained):
    _, run_dir = trained
    metrics = evaluate.main(["--run", str(run_dir)])  # default --out: <run>/eval, a run folder of its own
    tb = events(run_dir / "eval")
    curves = ("box_acc_iou30", "box_acc_iou50", "box_acc_iou70", "gt_known", "top1_loc", "top5_loc")
    assert set(tb.Tags()["scalars"]) == {f"z_eval/test/threshold_x1000/{c}" for c in curves}
    iou50 = tb.Scalars("z_eval/test/threshold_x1000/box_acc_iou50")
    assert [e.step for e in iou50] == list(range(0, 1000, 10))  # thresholds 0, 0.01, ..., 0.99 in thousandths
    assert max(e.value for e in iou50) == pytest.approx(metrics["maxboxacc_iou50"], abs=1e-4)
    assert tb.SummaryMetadata("z_eval/test/threshold_x1000/gt_known").summary_description == THRESHOLD_AXIS
    assert tb.Tags()["images"] == ["z_eval/test/box_acc_curves"]
    (text,) = tb.Tensors("z_eval/test/metrics/text_summary")
    assert "threshold x 1000" in text.tensor_proto.string_val[0].decode()
    assert not any(tag.startswith("z_eval") for tag in events(run_dir).Tags()["scalars"])  # the training run's
