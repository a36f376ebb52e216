"""COCO boxes -> per-class crop folders: pixel content, clamping, skip counts, export splits."""

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.data import load_image_folder
from selfsup.data.coco_crops import (
    class_folder_names,
    coco_to_crops,
    convert_coco_export,
    crop_box,
    format_crop_counts,
)

RED, BLUE = (255, 0, 0), (0, 0, 255)


def scene() -> np.ndarray:
    """20 wide x 16 high: a red 6x6 square at (2, 3), a blue block in the bottom-right corner."""
    pixels = np.zeros((16, 20, 3), np.uint8)
    pixels[3:9, 2:8] = RED
    pixels[10:16, 12:20] = BLUE
    return pixels


def write_split(folder: Path, *, with_extras: bool = True) -> Path:
    folder.mkdir(parents=True)
    Image.fromarray(scene()).save(folder / "a.jpg.png")
    (folder / "broken.png").write_bytes(b"not a png at all")
    images = [
        {"id": 1, "file_name": "a.jpg.png", "width": 20, "height": 16},
        {"id": 2, "file_name": "gone.png", "width": 20, "height": 16},
        {"id": 3, "file_name": "broken.png", "width": 20, "height": 16},
    ]
    annotations = [
        {"id": 10, "image_id": 1, "category_id": 1, "bbox": [2, 3, 6, 6]},
        {"id": 11, "image_id": 1, "category_id": 2, "bbox": [12, 10, 20, 20]},  # past the edge
    ]
    if with_extras:
        annotations += [
            {"id": 12, "image_id": 1, "category_id": 1, "bbox": [-9, -9, 4, 4]},  # outside
            {"id": 13, "image_id": 1, "category_id": 1, "bbox": [5, 5, 1, 10]},  # 1 px wide
            {"id": 14, "image_id": 1, "category_id": 2, "bbox": [1, 2]},  # malformed
            {"id": 15, "image_id": 2, "category_id": 1, "bbox": [0, 0, 5, 5]},  # no file
            {"id": 16, "image_id": 3, "category_id": 2, "bbox": [0, 0, 5, 5]},  # unreadable
            {"id": 17, "image_id": 1, "category_id": 99, "bbox": [0, 0, 5, 5]},
            {"id": 18, "image_id": 99, "category_id": 1, "bbox": [0, 0, 5, 5]},
        ]
    categories = [
        {"id": 0, "name": "parts", "supercategory": "none"},  # Roboflow's unused umbrella class
        {"id": 1, "name": "red/square", "supercategory": "parts"},
        {"id": 2, "name": "blue:block ", "supercategory": "parts"},
    ]
    coco = {"images": images, "annotations": annotations, "categories": categories}
    path = folder / "_annotations.coco.json"
    path.write_text(json.dumps(coco))
    return path


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def test_crops_have_the_box_content_and_skips_are_counted(tmp_path, caplog):
    ann = write_split(tmp_path / "split")
    out = tmp_path / "crops"
    with caplog.at_level(logging.INFO, logger="selfsup.data"):
        result = coco_to_crops(ann, ann.parent, out)

    red = pixels(out / "red_square" / "a.jpg_10.png")
    assert red.shape == (6, 6, 3) and (red == RED).all()
    blue = pixels(out / "blue_block" / "a.jpg_11.png")  # clamped to x 12..20, y 10..16
    assert blue.shape == (6, 8, 3) and (blue == BLUE).all()
    assert result["classes"] == {"blue_block": 1, "red_square": 1}
    assert result["skipped"] == {
        "degenerate_box": 2,
        "bad_bbox": 1,
        "missing_image": 1,
        "unreadable_image": 1,
        "unknown_image": 1,
        "unknown_category": 1,
    }
    assert result["crops"] == 2 and result["images"] == 1
    assert sorted(p.name for p in out.rglob("*")) == [
        "a.jpg_10.png",
        "a.jpg_11.png",
        "blue_block",
        "red_square",
    ]
    lines = [r.getMessage() for r in caplog.records if r.name == "selfsup.data"]
    assert len(lines) == 1 and "2 crops of 2 classes" in lines[0] and "skipped 7" in lines[0]

    data = load_image_folder(out, image_size=4, cache=False)  # a labelled folder, as promised
    assert data.class_names == ["blue_block", "red_square"] and data.labels.tolist() == [0, 1]


def test_padding_and_fractional_boxes():
    assert crop_box([2, 3, 6, 6], 20, 16, min_size=2, padding=0.0) == (2, 3, 8, 9)
    # grows by 3 px per side, then the left/top edges are clamped to the image
    assert crop_box([2, 3, 6, 6], 20, 16, min_size=2, padding=0.5) == (0, 0, 11, 12)
    assert crop_box([2.5, 3.5, 4, 4], 20, 16, min_size=2, padding=0.0) == (2, 3, 7, 8)
    assert crop_box([18, 0, 5, 5], 20, 16, min_size=2, padding=0.0) == (18, 0, 20, 5)
    assert crop_box([19, 0, 5, 5], 20, 16, min_size=2, padding=0.0) == "degenerate_box"
    assert crop_box([19, 0, 5, 5], 20, 16, min_size=1, padding=0.0) == (19, 0, 20, 5)
    assert crop_box([0, 0, float("nan"), 3], 20, 16, min_size=2, padding=0.0) == "bad_bbox"


def test_padded_crop_matches_the_source_region(tmp_path):
    ann = write_split(tmp_path / "split", with_extras=False)
    coco_to_crops(ann, ann.parent, tmp_path / "out", padding=0.5)
    crop = pixels(tmp_path / "out" / "red_square" / "a.jpg_10.png")
    assert np.array_equal(crop, scene()[0:12, 0:11])


def test_class_names_are_sanitised_and_unique():
    names = class_folder_names(
        [{"id": 1, "name": "a/b"}, {"id": 2, "name": "a_b"}, {"id": 3, "name": " .. "}], "x"
    )
    assert names == {1: "a_b_1", 2: "a_b_2", 3: "class_3"}


def test_a_failed_write_leaves_no_partial_png(tmp_path, monkeypatch):
    ann = write_split(tmp_path / "split", with_extras=False)
    real_save = Image.Image.save

    def crash_after_some_bytes(self, fp, *args, **kwargs):
        Path(fp).write_bytes(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", crash_after_some_bytes)
    with pytest.raises(OSError, match="disk full"):
        coco_to_crops(ann, ann.parent, tmp_path / "out")
    monkeypatch.setattr(Image.Image, "save", real_save)
    assert [p for p in (tmp_path / "out").rglob("*") if p.is_file()] == []


def test_bad_annotation_file_is_named(tmp_path):
    bad = tmp_path / "_annotations.coco.json"
    bad.write_text('{"images": []}')
    with pytest.raises(ValueError, match=r"_annotations\.coco\.json.*'annotations'"):
        coco_to_crops(bad, tmp_path, tmp_path / "out")
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        coco_to_crops(bad, tmp_path, tmp_path / "out")


def test_roboflow_export_converts_every_split(tmp_path):
    root = tmp_path / "export"
    for split in ("train", "valid", "test"):
        write_split(root / split, with_extras=split == "train")
    (root / "README.roboflow.txt").parent.mkdir(exist_ok=True)
    (root / "README.roboflow.txt").write_text("exported")
    results = convert_coco_export(root, tmp_path / "out")
    assert list(results) == ["test", "train", "valid"]
    for split in ("train", "valid", "test"):
        assert results[split]["split"] == split
        assert results[split]["classes"] == {"blue_block": 1, "red_square": 1}
        assert (tmp_path / "out" / split / "red_square" / "a.jpg_10.png").is_file()
    assert sum(results["train"]["skipped"].values()) == 7 and results["valid"]["skipped"] == {}
    table = format_crop_counts(results)
    assert "| red_square | 1 | 1 | 1 |" in table and "train: skipped" in table
    with pytest.raises(FileNotFoundError, match="_annotations.coco.json"):
        convert_coco_export(tmp_path / "out", tmp_path / "again")
