"""Synthetic wafer maps: codes, sizes, class balance, statistics by hand, calibration vs real."""

import numpy as np
import pytest

from selfsup.data.synthetic_wafers import (
    REAL_CLASS_COUNTS,
    class_counts,
    generate_wafer_maps,
    per_map_statistics,
    wafer_statistics,
)
from selfsup.data.wafers import packaged_path
from selfsup.data.wm811k_pickles import CLASS_NAMES, WaferMaps, read_wafer_npz

# Honest bounds for n=1800 (200 maps per class), seed 0: measured 0.014 (median fail fraction)
# and 0.028 (radial profile); seeds 0-5 stayed within 0.017 and 0.034.
MEDIAN_BOUND = 0.03
PROFILE_BOUND = 0.04


def test_codes_shapes_and_sizes_in_range():
    maps = generate_wafer_maps(300, size=(26, 40), seed=1)
    assert len(maps) == 300 and maps.labels.dtype == np.int64
    sides = set()
    for m in maps.maps:
        assert m.dtype == np.uint8 and m.ndim == 2 and m.shape[0] == m.shape[1]
        assert set(np.unique(m).tolist()) <= {0, 1, 2}
        sides.add(m.shape[0])
    assert min(sides) >= 26 and max(sides) <= 40 and len(sides) >= 10  # sizes really vary
    fixed = generate_wafer_maps(20, size=32, seed=1)
    assert {m.shape for m in fixed.maps} == {(32, 32)}


def test_wafer_geometry():
    m = generate_wafer_maps(1, size=26, class_weights={"none": 1}, seed=0).maps[0]
    assert m[0, 0] == m[0, -1] == m[-1, 0] == m[-1, -1] == 0  # corners are off-wafer
    assert (m[1:-1, 13] > 0).all() and (m[13, :] > 0).all()  # a full row and column across
    assert 3 <= (m[0] > 0).sum() <= 8  # the first row holds a few dies, like real 26x26 maps


def test_class_balance_as_requested():
    uniform = generate_wafer_maps(90, size=(26, 30), seed=2)
    assert np.bincount(uniform.labels, minlength=9).tolist() == [10] * 9
    picked = generate_wafer_maps(100, size=26, class_weights={"Center": 1, "none": 3}, seed=2)
    counts = dict(zip(CLASS_NAMES, np.bincount(picked.labels, minlength=9).tolist(), strict=True))
    assert counts["Center"] == 25 and counts["none"] == 75 and sum(counts.values()) == 100
    real = generate_wafer_maps(1000, size=26, class_weights="real", seed=2)
    got = np.bincount(real.labels, minlength=9)
    want = np.array([REAL_CLASS_COUNTS[c] for c in CLASS_NAMES]) / 62248 * 1000
    assert got.sum() == 1000 and np.abs(got - want).max() < 1  # largest-remainder rounding
    assert got.tolist() == class_counts(1000, "real").tolist()
    assert not np.array_equal(real.labels, np.sort(real.labels))  # shuffled, not grouped
    with pytest.raises(ValueError, match="unknown class"):
        generate_wafer_maps(10, class_weights={"Blob": 1})


def test_same_seed_same_maps():
    a, b = generate_wafer_maps(30, seed=5), generate_wafer_maps(30, seed=5)
    c = generate_wafer_maps(30, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a.maps, b.maps, strict=True))
    assert not all(
        x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a.maps, c.maps, strict=True)
    )


def test_statistics_by_hand():
    # 5x5 fully on-wafer maps: the centre die has r/R = 0 (bin 0); its 4-neighbours have
    # r/R = 1/2.5 = 0.4 (bin 2); no die falls in bin 1 (NaN for the map, ignored by the mean)
    one = np.ones((5, 5), np.uint8)
    one[2, 2] = 2
    two = np.ones((5, 5), np.uint8)
    two[2, 1] = 2
    ff, radial = per_map_statistics([one, two])
    assert ff.tolist() == [1 / 25, 1 / 25]
    assert radial[0, 0] == 1.0 and np.isnan(radial[0, 1]) and radial[0, 2] == 0.0
    stats = wafer_statistics(WaferMaps([one, two], np.array([0, 0])))
    assert list(stats) == ["Center"] and stats["Center"]["count"] == 2
    assert stats["Center"]["fail_fraction"] == pytest.approx(0.04)
    profile = stats["Center"]["radial_profile"]
    assert profile[0] == pytest.approx(0.5)  # mean of 1 and 0
    # bin 2 (0.4 <= r/R < 0.6) holds the 4-neighbours and the 4 diagonal dies (r/R = 0.57)
    assert profile[2] == pytest.approx((0 + 1 / 8) / 2)


@pytest.fixture(scope="module")
def real_statistics():
    return wafer_statistics(read_wafer_npz(packaged_path()))


def test_calibrated_to_the_real_subset(real_statistics):
    synthetic = wafer_statistics(generate_wafer_maps(1800, seed=0))
    for name in CLASS_NAMES:
        real, synth = real_statistics[name], synthetic[name]
        assert abs(real["fail_fraction"] - synth["fail_fraction"]) < MEDIAN_BOUND, name
        diff = np.abs(np.subtract(real["radial_profile"], synth["radial_profile"]))
        assert diff.max() < PROFILE_BOUND, (name, real["radial_profile"], synth["radial_profile"])
    # the real shapes the bounds protect, e.g. Center peaks in the middle, Edge-Ring at the edge
    assert real_statistics["Center"]["radial_profile"][0] > 0.6
    assert real_statistics["Edge-Ring"]["radial_profile"][4] > 0.3


def test_ten_thousand_maps_every_class_present():
    maps = generate_wafer_maps(10_000, seed=3)
    assert len(maps) == 10_000
    assert set(np.unique(maps.labels).tolist()) == set(range(len(CLASS_NAMES)))


def test_maps_get_seeded_train_val_test_splits_stratified_by_class():
    maps = generate_wafer_maps(900, size=16, seed=2)  # 100 maps per class
    assert maps.split is not None
    for label in range(len(CLASS_NAMES)):
        split = maps.split[maps.labels == label]
        assert [int(np.sum(split == s)) for s in ("train", "val", "test")] == [80, 10, 10]
    again = generate_wafer_maps(900, size=16, seed=2)
    assert np.array_equal(maps.split, again.split)
    other = generate_wafer_maps(900, size=16, seed=2, val_fraction=0.2, test_fraction=0.0)
    assert all(np.array_equal(a, b) for a, b in zip(maps.maps, other.maps, strict=True))
    assert sorted(set(other.split.tolist())) == ["train", "val"]
    assert int(np.sum(other.split == "val")) == 180


@pytest.mark.parametrize(("val", "test"), [(-0.1, 0.1), (0.1, 1.0), (0.5, 0.5)])
def test_split_fractions_out_of_range_are_refused_by_name(val, test):
    with pytest.raises(ValueError, match="fraction"):
        generate_wafer_maps(10, size=16, val_fraction=val, test_fraction=test)


def test_synth_cli_writes_splits_that_pretrain_reads_for_its_knn_monitor(tmp_path, capsys):
    from selfsup.cli import main
    from selfsup.data import load_dataset

    out = tmp_path / "synthetic.npz"
    assert main(["wafers", "synth", str(out), "--n", "90", "--size", "16", "--seed", "1"]) == 0
    assert "splits train 72, val 9, test 9" in capsys.readouterr().out
    assert sorted(set(read_wafer_npz(out).split.tolist())) == ["test", "train", "val"]
    queries = load_dataset(str(out), image_size=16, split="val")  # pretrain's default val_split
    assert len(queries) == 9 and queries.labels is not None
    assert main(["wafers", "synth", str(out), "--n", "9", "--val-fraction", "1.5"]) != 0
    assert "--val-fraction must be in [0, 1), got 1.5" in capsys.readouterr().err


def test_train_split_of_a_synthetic_file_leaves_out_val_and_test(tmp_path):
    from selfsup.data import load_dataset
    from selfsup.data.wm811k_pickles import write_wafer_npz

    path = write_wafer_npz(generate_wafer_maps(90, size=16), tmp_path / "s.npz")
    assert len(load_dataset(str(path), image_size=16, split="train")) == 72
