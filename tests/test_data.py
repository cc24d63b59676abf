from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from acol.datasets.dataset import WSOLDataset, collate
from acol.datasets.images import ImageError
from acol.datasets.metadata import MetadataError, read_metadata
from acol.datasets.transforms import WSOLTransform, normalize_on_device, resized_shape, scale_boxes


def write_split(root: Path, files: dict[str, str], split="train", dataset="TOY") -> Path:
    split_dir = root / "metadata" / dataset / split
    split_dir.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (split_dir / name).write_text(text)
    return root / "metadata"


GOOD = {
    "image_ids.txt": "a/1.png\na/2.png\n",
    "class_labels.txt": "a/1.png,0\na/2.png,2\n",
    "image_sizes.txt": "a/1.png,40,30\na/2.png,20,20\n",
    "localization.txt": "a/1.png,1,2,10,12\na/2.png,0,0,19,19\na/2.png,3,4,5,6",
}


def test_metadata_round_trip_with_multi_box_images(tmp_path):
    meta = read_metadata(write_split(tmp_path, GOOD), "TOY", "train")
    assert meta.image_ids == ["a/1.png", "a/2.png"]
    assert meta.labels == {"a/1.png": 0, "a/2.png": 2}
    assert meta.num_classes == 3
    assert meta.sizes["a/1.png"] == (40, 30)
    assert meta.boxes["a/2.png"] == [(0, 0, 19, 19), (3, 4, 5, 6)]


def test_mask_localization_lines(tmp_path):
    files = dict(GOOD, **{"localization.txt": "a/1.png,a/1_m0.png,a/1_ignore.png\na/1.png,a/1_m1.png,\n"
                                              "a/2.png,a/2_m.png,\n"})
    meta = read_metadata(write_split(tmp_path, files), "TOY", "train")
    assert meta.masks == {"a/1.png": ["a/1_m0.png", "a/1_m1.png"], "a/2.png": ["a/2_m.png"]}
    assert meta.ignore == {"a/1.png": "a/1_ignore.png"}
    assert meta.boxes == {}


@pytest.mark.parametrize("name, text, message", [
    ("class_labels.txt", "a/1.png,0\na/2.png,two\n", r"class_labels.txt:2: label 'two' is not an integer"),
    ("class_labels.txt", "a/1.png,0\n", r"class_labels.txt: no label for 1 images"),
    ("class_labels.txt", "a/1.png,0\na/3.png,1\n", r"class_labels.txt:2: 'a/3.png' is not listed"),
    ("class_labels.txt", "a/1.png;0\na/2.png,1\n", r"class_labels.txt:1: expected 'path,label'"),
    ("image_ids.txt", "a/1.png\na/2.png\na/1.png\n", r"image_ids.txt:3: duplicate image id 'a/1.png' \(first on line 1\)"),
    ("image_ids.txt", "\n", r"image_ids.txt: the split 'train' has no images"),
    ("image_sizes.txt", "a/1.png,40\n", r"image_sizes.txt:1: expected 'path,W,H'"),
    ("localization.txt", "a/1.png,5,2,1,12\n", r"localization.txt:1: box \(5,2,1,12\) does not have 0 <= x0 <= x1"),
    ("localization.txt", "a/2.png,0,0,25,10\n", r"localization.txt:1: box \(0,0,25,10\) lies outside the 20x20"),
    ("localization.txt", "a/1.png,1,2,3\n", r"localization.txt:1: expected 'path,x0,y0,x1,y1' or"),
    ("image_ids.txt", "", r"image_ids.txt: the split 'train' has no images"),
    ("image_ids.txt", "a/1.png\na/2.png\na/2.png\n", r"image_ids.txt:3: duplicate image id 'a/2.png' \(first on line 2\)"),
    ("class_labels.txt", "a/1.png,0\na/2.png,-1\n", r"class_labels.txt:2: negative label -1"),
    ("class_labels.txt", "a/2.png,1\n", r"class_labels.txt: no label for 1 images, e.g. 'a/1.png'"),
    ("class_labels.txt", "a/1.png,0\na/2.png,1\nb/9.png,1\n", r"class_labels.txt:3: 'b/9.png' is not listed in image_ids"),
    ("class_labels.txt", "a/1.png,0\na/2.png,1\na/1.png,2\n", r"class_labels.txt:3: a second label for 'a/1.png' \(first on line 1\)"),
    ("image_sizes.txt", "a/1.png,40,30\nb/9.png,5,5\n", r"image_sizes.txt:2: 'b/9.png' is not listed in image_ids"),
    ("image_sizes.txt", "a/1.png,40,30\n", r"image_sizes.txt: no size for 1 images, e.g. 'a/2.png'"),
    ("image_sizes.txt", "a/1.png,40,30\na/2.png,20,20\na/2.png,20,21\n", r"image_sizes.txt:3: a second size for 'a/2.png'"),
    ("image_sizes.txt", "a/1.png,40,0\na/2.png,20,20\n", r"image_sizes.txt:1: size 40x0 is not positive"),
    ("localization.txt", "a/1.png,1,2,10,12\nb/9.png,0,0,1,1\n", r"localization.txt:2: 'b/9.png' is not listed in image_ids"),
    ("localization.txt", "a/1.png,1,2,10,12\n", r"localization.txt: no box or mask for 1 images, e.g. 'a/2.png'"),
    ("localization.txt", "a/1.png,1,2,10,12\na/2.png,0,0,21,5\n", r"localization.txt:2: box \(0,0,21,5\) lies outside the 20x20 image"),
    ("localization.txt", "a/1.png,1,2,10,12\na/2.png,6,0,5,5\n", r"localization.txt:2: box \(6,0,5,5\) does not have 0 <= x0 <= x1"),
    ("localization.txt", "a/1.png,1,2,10,12\na/2.png,a/2_m.png,\na/2.png,,\n", r"localization.txt:3: empty mask path"),
])
def test_malformed_metadata_names_file_and_line(tmp_path, name, text, message):
    root = write_split(tmp_path, dict(GOOD, **{name: text}))
    with pytest.raises(MetadataError, match=message):
        read_metadata(root, "TOY", "train")


def test_missing_metadata_files(tmp_path):
    with pytest.raises(MetadataError, match="metadata folder not found"):
        read_metadata(tmp_path, "TOY", "val")
    root = write_split(tmp_path, {"image_ids.txt": "a/1.png\n"})
    with pytest.raises(MetadataError, match=r"metadata file not found: .*class_labels.txt"):
        read_metadata(root, "TOY", "train")


def test_resized_shape():
    assert resized_shape(400, 300, 256, keep_aspect=False) == (256, 256)
    assert resized_shape(400, 300, 256, keep_aspect=True) == (341, 256)
    assert resized_shape(300, 400, 256, keep_aspect=True) == (256, 341)


def test_eval_resize_maps_boxes_like_wsolevaluation():
    """Resize((224, 224)) scales each coordinate in float64 and truncates: int(x * 224 / W)."""
    transform = WSOLTransform(train=False, resize_size=256, crop_size=224, keep_aspect=False)
    image = torch.zeros(3, 375, 500, dtype=torch.uint8)
    boxes = torch.tensor([[45, 49, 499, 162], [0, 0, 1, 374]])
    out_image, out_boxes, _ = transform(image, boxes)
    assert out_image.shape == (3, 224, 224)
    expected = [[int(45 * 224 / 500), int(49 * 224 / 375), int(499 * 224 / 500), int(162 * 224 / 375)],
                [0, 0, int(224 / 500), int(374 * 224 / 375)]]
    assert out_boxes.tolist() == expected


def test_center_crop_shifts_and_clips_boxes_and_masks():
    transform = WSOLTransform(train=False, resize_size=16, crop_size=8, keep_aspect=True, center_crop=True)
    image = torch.arange(3 * 16 * 32, dtype=torch.int64).remainder(256).to(torch.uint8).view(3, 16, 32)
    mask = torch.zeros(16, 32, dtype=torch.uint8)
    mask[4:8, 12:20] = 1
    boxes = torch.tensor([[12, 4, 19, 7], [0, 0, 31, 15]])
    out_image, out_boxes, out_mask = transform(image, boxes, mask)
    # 32x16 keeps its size (shorter side already 16); centre crop 8x8 starts at left=12, top=4
    assert torch.equal(out_image, image[:, 4:12, 12:20])
    assert out_boxes.tolist() == [[0, 0, 7, 3], [0, 0, 7, 7]]
    assert torch.equal(out_mask, mask[4:12, 12:20])


def test_train_flip_mirrors_boxes_and_masks():
    transform = WSOLTransform(train=True, resize_size=8, crop_size=8, keep_aspect=False)
    image = torch.zeros(3, 8, 8, dtype=torch.uint8)
    image[:, 1:3, 0:2] = 255
    mask = (image[0] > 0).to(torch.uint8)
    boxes = torch.tensor([[0, 1, 1, 2]])
    flips = 0
    for seed in range(20):
        out_image, out_boxes, out_mask = transform(image, boxes, mask, generator=torch.Generator().manual_seed(seed))
        ys, xs = torch.nonzero(out_mask, as_tuple=True)
        # the box stays the extent of the (possibly mirrored) object
        assert out_boxes.tolist() == [[int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]]
        assert torch.equal(out_mask.bool(), out_image[0] > 0)
        flips += int(out_boxes[0, 0] == 6)
    assert 0 < flips < 20


def make_images(root: Path, with_masks=False) -> Path:
    (root / "TOY" / "a").mkdir(parents=True)
    Image.fromarray(np.full((30, 40, 3), 200, np.uint8)).save(root / "TOY" / "a" / "1.png")
    Image.fromarray(np.full((20, 20), 50, np.uint8), mode="L").save(root / "TOY" / "a" / "2.png")  # grayscale
    if with_masks:
        m = np.zeros((30, 40), np.uint8)
        m[2:10, 3:12] = 255
        Image.fromarray(m).save(root / "TOY" / "a" / "1_m.png")
        ig = np.zeros((30, 40), np.uint8)
        ig[0:20, 0:20] = 255
        Image.fromarray(ig).save(root / "TOY" / "a" / "1_ignore.png")
        m2 = np.zeros((20, 20), np.uint8)
        Image.fromarray(m2).save(root / "TOY" / "a" / "2_m.png")
    return root


def test_dataset_samples_collate_and_normalise(tmp_path):
    meta = read_metadata(write_split(tmp_path, GOOD), "TOY", "train")
    dataset = WSOLDataset(make_images(tmp_path), meta, WSOLTransform(False, 16, 16, False))
    samples = [dataset[0], dataset[1]]
    assert samples[1]["image"].shape == (3, 16, 16) and samples[1]["image"].dtype == torch.uint8
    assert samples[1]["label"] == 2 and samples[1]["image_id"] == "a/2.png"
    assert samples[1]["boxes"].shape == (2, 4)
    batch = collate(samples)
    assert batch["image"].shape == (2, 3, 16, 16)
    assert batch["label"].tolist() == [0, 2]
    assert [b.shape[0] for b in batch["boxes"]] == [1, 2]
    assert batch["mask"] is None
    normalised = normalize_on_device(batch["image"], torch.device("cpu"))
    assert normalised.dtype == torch.float32
    assert torch.allclose(normalised[0, :, 0, 0], (200 / 255 - torch.tensor([0.485, 0.456, 0.406]))
                          / torch.tensor([0.229, 0.224, 0.225]))


def test_dataset_masks_union_and_ignore(tmp_path):
    files = dict(GOOD, **{"mask_localization.txt": "a/1.png,a/1_m.png,a/1_ignore.png\na/2.png,a/2_m.png,\n"})
    meta = read_metadata(write_split(tmp_path, files), "TOY", "train")
    dataset = WSOLDataset(make_images(tmp_path, with_masks=True), meta, WSOLTransform(False, 40, 40, False),
                          load_masks=True)
    mask = dataset[0]["mask"]
    assert mask.shape == (40, 40) and set(mask.unique().tolist()) == {0, 1, 255}
    raw = dataset._mask("a/1.png", 30, 40)  # at the image's own size
    assert (raw[2:10, 3:12] == 1).all()                 # foreground wins over ignore
    assert (raw[0:20, 0:20][raw[0:20, 0:20] != 1] == 255).all()
    assert (raw[20:, 20:] == 0).all()


def test_missing_and_wrong_size_images_are_named(tmp_path):
    meta = read_metadata(write_split(tmp_path, GOOD), "TOY", "train")
    dataset = WSOLDataset(tmp_path, meta, WSOLTransform(False, 16, 16, False))
    with pytest.raises(ImageError, match=r"image not found: .*TOY/a/1.png"):
        dataset[0]
    make_images(tmp_path)
    meta.sizes["a/1.png"] = (41, 30)
    with pytest.raises(ImageError, match=r"1.png: image is 40x30 but image_sizes.txt says 41x30"):
        dataset[0]


def test_scale_boxes_truncates_as_wsolevaluation():
    """int(float(x) * new_W / W) (wsolevaluation's resize_bbox); x * (new_W / W) gives 125 for 45 * 224 / 80."""
    box = torch.tensor([[45, 55, 71, 71]])
    assert scale_boxes(box, (80, 71), (224, 224)).tolist() == [[126, 173, 198, 224]]
    for side in range(50, 601):   # every coordinate of every side 50..600, to 224
        x = torch.arange(side + 1)
        boxes = torch.stack([x, x, x, x], 1)
        expected = (x.numpy().astype(np.float64) * 224 / side).astype(np.int64)
        assert np.array_equal(scale_boxes(boxes, (side, side), (224, 224))[:, 0].numpy(), expected), side
