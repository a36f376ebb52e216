"""Wafer similarity search: exact duplicates first, cosine values, feature cache, PNG grid, CLI."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from selfsup.backbones import build_backbone
from selfsup.cli import build_parser
from selfsup.data.synthetic_wafers import generate_wafer_maps
from selfsup.data.wm811k_pickles import to_dataset
from selfsup.wafers import (
    SimilarityIndex,
    grid_size,
    save_grid,
)
from selfsup.wafers.similar import WAFER_COLOURS


def preprocess(x):
    return x.float() / 2


@pytest.fixture
def backbone():
    torch.manual_seed(0)
    return build_backbone("convnet_tiny", 1, width=4)


@pytest.fixture
def images():
    maps = generate_wafer_maps(40, size=(26, 30), seed=1)
    images = to_dataset(maps, 16).images.clone()
    images[12] = images[7]  # an exact duplicate
    return images


def count_calls(module):
    calls = []
    module.register_forward_hook(lambda *args: calls.append(1))
    return calls


def test_exact_duplicate_first_with_similarity_one(backbone, images):
    index = SimilarityIndex.build(backbone, preprocess, images)
    indices, sims = index.query(images[7], k=5)
    assert set(indices[:2].tolist()) == {7, 12}
    assert sims[:2] == pytest.approx([1.0, 1.0], abs=1e-5)
    assert (np.diff(sims) <= 0).all() and sims[2] < 1 - 1e-4
    indices, sims = index.query(7, k=3, exclude_self=True)
    assert indices[0] == 12 and 7 not in indices.tolist()
    assert sims[0] == pytest.approx(1.0, abs=1e-5)


def test_similarities_are_cosines_of_eval_mode_features(backbone, images):
    backbone.train()
    index = SimilarityIndex.build(backbone, preprocess, images, batch_size=16)
    assert backbone.training  # embedding ran in eval mode and gave the mode back
    backbone.eval()
    with torch.no_grad():
        feats = F.normalize(backbone(preprocess(images)), dim=1)
    indices, sims = index.query(3, k=len(images))
    want = (feats @ feats[3]).numpy()
    assert np.allclose(sims, want[indices], atol=1e-5)
    assert np.array_equal(np.sort(indices), np.arange(len(images)))  # every image ranked once


def test_cache_reused_and_invalidated(backbone, images, tmp_path):
    cache = tmp_path / "feats" / "cache.npz"
    calls = count_calls(backbone)
    first = SimilarityIndex.build(backbone, preprocess, images, cache, batch_size=16)
    assert len(calls) == 3 and not first.from_cache and cache.is_file()  # 40 images, 3 batches
    second = SimilarityIndex.build(backbone, preprocess, images, cache, batch_size=16)
    assert len(calls) == 3 and second.from_cache  # the backbone was not called again
    assert torch.equal(first.features, second.features)
    SimilarityIndex.build(backbone, lambda x: x.float() / 3, images, cache, batch_size=16)
    assert len(calls) == 6  # another preprocess: recomputed
    with torch.no_grad():
        next(backbone.parameters()).add_(0.1)
    rebuilt = SimilarityIndex.build(backbone, preprocess, images, cache, batch_size=16)
    assert len(calls) == 9 and not rebuilt.from_cache  # other weights: recomputed
    assert [p.name for p in cache.parent.iterdir()] == ["cache.npz"]  # no temp files left


def test_grid_png_size_and_colours(tmp_path):
    fail = np.full((10, 10), 2, np.uint8)
    other = np.ones((6, 12), np.uint8)  # wide maps keep their aspect
    path = save_grid(fail, [other, other, other], tmp_path / "g" / "grid.png", ["q", "a", "b", "c"])
    assert path.is_file() and path.stat().st_size > 0
    picture = Image.open(path).convert("RGB")
    # 4 panels of 128 px in one row, 6 px margins; 30 px title strip above each panel
    assert picture.size == (4 * 128 + 5 * 6, 128 + 30 + 2 * 6) == grid_size(4)
    assert picture.getpixel((6 + 64, 6 + 30 + 64)) == tuple(WAFER_COLOURS[2])  # query centre
    assert picture.getpixel((6 + 134 + 64, 6 + 30 + 64)) == tuple(WAFER_COLOURS[1])
    assert picture.getpixel((6 + 134 + 64, 6 + 30 + 5)) == (255, 255, 255)  # above the 6x12 map
    many = save_grid(fail, [fail] * 7, tmp_path / "many.png")
    assert Image.open(many).size == (6 * 128 + 7 * 6, 2 * (128 + 30) + 3 * 6)
    with pytest.raises(ValueError, match="codes 0/1/2"):
        save_grid(np.full((5, 5), 255, np.uint8), [], tmp_path / "bad.png")


@pytest.fixture
def exported(tmp_path):
    import selfsup
    from selfsup.artifacts import export_backbone

    torch.manual_seed(0)
    method = selfsup.build(
        "simsiam",
        backbone="convnet_tiny",
        in_channels=1,
        image_size=16,
        view_style="wafer",
        backbone_kwargs={"width": 4},
    )
    export_backbone(method, tmp_path / "export")
    return tmp_path / "export"


def run_cli(argv):
    args = build_parser().parse_args(argv)
    return args.func(args)


def test_cli_similar_by_index_and_by_npy(exported, tmp_path, capsys):
    out = tmp_path / "grid.png"
    argv = ["wafers", "similar", str(exported), "--query", "3", "--data", "synthetic:60"]
    assert run_cli([*argv, "--k", "4", "--out", str(out)]) == 0
    rows = [line.split("|") for line in capsys.readouterr().out.splitlines()]
    ranked = [int(row[2]) for row in rows if len(row) > 2 and row[1].strip().isdigit()]
    assert len(ranked) == 4 and 3 not in ranked  # 4 neighbours; the query itself left out
    assert Image.open(out).size == grid_size(5)
    assert (exported / "similarity" / "synthetic_60_all.npz").is_file()

    query = generate_wafer_maps(60, seed=0).maps[3]  # the same map as index 3 above
    np.save(tmp_path / "q.npy", query)
    argv = ["wafers", "similar", str(exported), "--query", str(tmp_path / "q.npy")]
    assert run_cli([*argv, "--data", "synthetic:60", "--k", "2", "--out", str(out)]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| 1 |")]
    assert rows[0].split("|")[2].strip() == "3" and "1.0000" in rows[0]
    np.save(tmp_path / "bad.npy", np.full((8, 8), 255, np.uint8))
    argv = ["wafers", "similar", str(exported), "--query", str(tmp_path / "bad.npy")]
    with pytest.raises(ValueError, match="codes 0/1/2"):
        run_cli([*argv, "--data", "synthetic:60", "--out", str(out)])
    argv = ["wafers", "similar", str(exported), "--query", "60", "--data", "synthetic:60"]
    with pytest.raises(ValueError, match="query 60 is out of range"):
        run_cli([*argv, "--out", str(out)])


def test_cli_synth_writes_readable_npz(tmp_path, capsys):
    from selfsup.data.wm811k_pickles import read_wafer_npz

    out = tmp_path / "syn.npz"
    assert run_cli(["wafers", "synth", str(out), "--n", "45", "--size", "26", "30"]) == 0
    maps = read_wafer_npz(out)
    assert len(maps) == 45 and np.bincount(maps.labels).tolist() == [5] * 9
    assert all(26 <= m.shape[0] <= 30 for m in maps.maps)
    assert "wrote 45 synthetic wafer maps" in capsys.readouterr().out


def test_vote_names_the_pattern_with_the_most_similarity():
    from selfsup.wafers.search import SimilarMaps

    result = SimilarMaps(np.zeros((4, 4)), "q", [(0, 0.9, "Scratch"), (1, 0.5, "Donut"),
                                                 (2, 0.45, "Donut"), (3, 0.99, "unlabeled")],
                         None)  # fmt: skip
    label, count, share = result.vote()
    assert (label, count) == ("Donut", 2) and share == pytest.approx(0.95 / 1.85)
    assert SimilarMaps(np.zeros((4, 4)), "q", [(0, 0.9, "unlabeled")], None).vote() is None


def test_cli_ranks_a_new_map_against_labelled_ones(exported, tmp_path, capsys):
    """--query-split test --split val: a test map ranked against the labelled val maps."""
    out = tmp_path / "grid.png"
    argv = ["wafers", "similar", str(exported), "--query", "0", "--query-split", "test",
            "--split", "val", "--k", "5", "--out", str(out), "--no-cache"]  # fmt: skip
    assert run_cli(argv) == 0
    printed = capsys.readouterr().out
    from selfsup.data.wafers import load_wafer_subset

    names = load_wafer_subset("val", image_size=16).class_names
    labels = [line.split("|")[4].strip() for line in printed.splitlines()
              if line.startswith("| ") and line.split("|")[1].strip().isdigit()]  # fmt: skip
    assert len(labels) == 5 and set(labels) <= set(names)
    assert "most like: " in printed and printed.split("most like: ")[1].split(" (")[0] in labels
    assert Image.open(out).size == grid_size(6)
