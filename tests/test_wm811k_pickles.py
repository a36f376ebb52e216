"""WM-811K pickle loaders: each format quirk, validation, npz round trip, to_dataset."""

import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

import selfsup
from selfsup.data.spec import spec_kind
from selfsup.data.wafers import load_wafer_subset, nearest_resize, packaged_path, read_wafer_file
from selfsup.data.wm811k_pickles import (
    CompatUnpickler,
    WaferMaps,
    convert_wafers,
    modern_location,
    read_wafer_npz,
    read_wafer_pickle,
    to_dataset,
    write_wafer_npz,
)

pd = pytest.importorskip("pandas")

REAL_TRAIN_1 = Path("/work/shared/wm811k_clean_subset/train_1_split.pkl.xz")


def wafer(h: int, w: int, seed: int) -> np.ndarray:
    """A uint8 map of codes 0/1/2 with every code present."""
    rng = np.random.default_rng(seed)
    m = rng.integers(0, 3, size=(h, w)).astype(np.uint8)
    m[0, :3] = (0, 1, 2)
    return m


def nested(text: str) -> np.ndarray:
    return np.array([[text]], dtype=object)


def full_frame(split_column: str = "trianTestLabel") -> "pd.DataFrame":
    """Kaggle-style rows: labelled Training, unlabeled (empty arrays), labelled Test."""
    empty = np.zeros((0, 0), dtype=object)
    return pd.DataFrame(
        {
            "waferMap": [wafer(6, 7, 0), wafer(8, 5, 1), wafer(9, 9, 2)],
            "dieSize": [1683.0, 1683.0, 500.0],
            "failureType": [nested("Center"), empty, nested("none")],
            split_column: [nested("Training"), empty, nested("Test")],
        },
        index=[10, 11, 12],
    )


def clean_frame(maps: list[np.ndarray], types: list[str]) -> "pd.DataFrame":
    """Clean-subset rows: maps re-scaled to 0/128/255, 'None' spelled that way."""
    codes = {"Center": 0, "Donut": 1, "Loc": 4, "None": 8}
    return pd.DataFrame(
        {
            "waferMap": [np.array([0, 128, 255], dtype=np.uint8)[m] for m in maps],
            "failureType": pd.Categorical(types),
            "failureCode": np.array([codes[t] for t in types], dtype=np.int8),
        }
    )


def save(frame: "pd.DataFrame", path: Path) -> Path:
    frame.to_pickle(path)  # compression inferred from the suffix, like the real files
    return path


# --- the full dataset's quirks --------------------------------------------------------------------


@pytest.mark.parametrize("split_column", ["trianTestLabel", "trainTestLabel"])
def test_full_format_nested_labels_and_empty_unlabeled(tmp_path, split_column):
    frame = full_frame(split_column)
    maps = read_wafer_pickle(save(frame, tmp_path / "LSWMD.pkl"), trust_pickle=True)
    assert maps.labels.tolist() == [0, -1, 8]  # Center, unlabeled, none
    assert maps.split.tolist() == ["Training", "", "Test"]
    assert maps.source_index.tolist() == [10, 11, 12]
    for got, want in zip(maps.maps, frame["waferMap"], strict=True):
        assert got.dtype == np.uint8 and np.array_equal(got, want)
    assert maps.skipped == {}


def test_mir_zero_pair_means_unlabeled(tmp_path):
    frame = full_frame("trainTestLabel")
    frame.at[12, "failureType"] = np.array([0, 0])
    frame.at[12, "trainTestLabel"] = [0, 0]
    maps = read_wafer_pickle(save(frame, tmp_path / "WM811K.pkl"), trust_pickle=True)
    assert maps.labels.tolist() == [0, -1, -1]
    assert maps.split.tolist() == ["Training", "", ""]


# --- the clean subset -----------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".pkl", ".pkl.xz", ".pkl.gz"])
def test_clean_subset_rescaled_values_and_none_spelling(tmp_path, suffix):
    originals = [wafer(6, 6, 3), wafer(7, 5, 4)]
    path = save(clean_frame(originals, ["Loc", "None"]), tmp_path / f"val_data{suffix}")
    maps = read_wafer_pickle(path, trust_pickle=True)
    assert [np.array_equal(a, b) for a, b in zip(maps.maps, originals, strict=True)] == [1, 1]
    assert maps.labels.tolist() == [4, 8]  # Loc, none
    assert maps.class_names[8] == "none"
    assert maps.split.tolist() == ["val_data", "val_data"]


# --- validation -----------------------------------------------------------------------------------


def bad_frame() -> "pd.DataFrame":
    frame = full_frame()
    three = wafer(6, 6, 5)
    three[2, 2] = 3
    frame["waferMap"] = [wafer(6, 6, 6), wafer(15, 3, 7), three]
    return frame


def test_bad_maps_raise_naming_file_row_and_problem(tmp_path):
    path = save(bad_frame(), tmp_path / "bad.pkl")
    with pytest.raises(ValueError, match=r"bad\.pkl'?, row 11: degenerate 15x3 map"):
        read_wafer_pickle(path, trust_pickle=True)
    frame = bad_frame()
    frame.at[11, "waferMap"] = wafer(6, 6, 8)
    save(frame, path)
    with pytest.raises(ValueError, match=r"row 12: values outside \{0,1,2\}: \[3\]"):
        read_wafer_pickle(path, trust_pickle=True)


def test_bad_maps_skipped_counted_and_logged_once(tmp_path, caplog):
    path = save(bad_frame(), tmp_path / "bad.pkl")
    with caplog.at_level(logging.WARNING, logger="selfsup.data"):
        maps = read_wafer_pickle(path, trust_pickle=True, on_bad="skip")
    assert len(maps) == 1 and maps.source_index.tolist() == [10]
    assert maps.skipped == {"side < 5": 1, "values outside {0,1,2}": 1}
    records = [r for r in caplog.records if r.name == "selfsup.data"]
    assert len(records) == 1
    assert "skipped 2 of 3 rows" in records[0].getMessage()
    assert "bad.pkl" in records[0].getMessage()


def test_non_2d_map_and_unknown_failure_type(tmp_path):
    frame = full_frame()
    frame.at[10, "waferMap"] = np.zeros(30, dtype=np.uint8)
    frame.at[12, "failureType"] = nested("Blob")
    path = save(frame, tmp_path / "odd.pkl")
    with pytest.raises(ValueError, match=r"row 10: map has shape \(30,\), not 2-D"):
        read_wafer_pickle(path, trust_pickle=True)
    maps = read_wafer_pickle(path, trust_pickle=True, on_bad="skip")
    assert maps.skipped == {"not 2-D": 1, "unknown failure type": 1}
    assert maps.labels.tolist() == [-1]
    frame.at[10, "waferMap"] = wafer(6, 6, 9)
    save(frame, path)
    with pytest.raises(ValueError, match="row 12: unknown failure type 'Blob'"):
        read_wafer_pickle(path, trust_pickle=True)


def test_missing_column_named(tmp_path):
    path = save(full_frame().drop(columns="waferMap"), tmp_path / "nomap.pkl")
    with pytest.raises(ValueError, match=r"nomap\.pkl' has no column 'waferMap'"):
        read_wafer_pickle(path, trust_pickle=True)
    path = save(full_frame().drop(columns="trianTestLabel"), tmp_path / "nosplit.pkl")
    with pytest.raises(ValueError, match="nosplit.pkl' has no column 'trainTestLabel'"):
        read_wafer_pickle(path, trust_pickle=True)


def test_untrusted_pickle_refused_before_loading(tmp_path):
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(b"not even a pickle")
    with pytest.raises(ValueError, match="LSWMD.pkl") as err:
        read_wafer_pickle(path)
    assert "trust_pickle=True" in str(err.value) and "--trust-pickle" in str(err.value)
    assert "selfsup data wafers convert" in str(err.value)


# --- 2015-era pickles -----------------------------------------------------------------------------


def test_old_module_paths_are_redirected():
    base = ("pandas.core.indexes.base", "Index")
    assert modern_location("pandas.indexes.numeric", "Int64Index") == base
    assert modern_location("pandas.core.index", "Index") == base
    assert modern_location("pandas.indexes.range", "RangeIndex") == (
        "pandas.core.indexes.range",
        "RangeIndex",
    )
    assert modern_location("pandas.core.indexes.base", "Index") == base  # already modern
    assert modern_location("pandas.core.internals.blocks", "Block") == (
        "pandas.core.internals.blocks",
        "Block",
    )
    assert modern_location("numpy", "ndarray") == ("numpy", "ndarray")


def old_style_pickle(frame: "pd.DataFrame") -> bytes:
    """Protocol 2 names classes as text 'module\\nname\\n'; rewrite them to 2015 paths."""
    data = pickle.dumps(frame, protocol=2)
    old = data.replace(b"cpandas.core.indexes.base\n", b"cpandas.core.index\n")
    old = old.replace(b"cpandas\nIndex\n", b"cpandas.indexes.numeric\nInt64Index\n")
    assert b"cpandas.core.index\n" in old and b"Int64Index" in old
    return old


def test_compat_unpickler_end_to_end(tmp_path, monkeypatch):
    frame = full_frame()
    old = old_style_pickle(frame)
    with pytest.raises(ModuleNotFoundError):
        pickle.loads(old)  # plain pickle cannot find pandas.indexes
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(old)
    with path.open("rb") as f:
        assert CompatUnpickler(f).load()["waferMap"].shape == (3,)

    # make sure the fallback itself runs, whatever pandas' own read_pickle manages
    def old_pandas_fails(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'pandas.indexes'")

    monkeypatch.setattr(pd, "read_pickle", old_pandas_fails)
    maps = read_wafer_pickle(path, trust_pickle=True)
    assert maps.labels.tolist() == [0, -1, 8]
    assert np.array_equal(maps.maps[2], frame["waferMap"][12])


# --- npz, convert, to_dataset ---------------------------------------------------------------------


def small_maps(split: list[str]) -> WaferMaps:
    n = len(split)
    return WaferMaps(
        [wafer(6 + k, 5 + 2 * k, k) for k in range(n)],
        np.array([3, -1, 0, 8][:n]),
        split=np.array(split),
        source="test",
        source_index=np.arange(100, 100 + n),
    )


def test_npz_round_trip_exact(tmp_path):
    maps = small_maps(["Training", "", "Test", "Training"])
    path = write_wafer_npz(maps, tmp_path / "out" / "w.npz")
    assert [p.name for p in path.parent.iterdir()] == ["w.npz"]  # no temp file left
    back = read_wafer_npz(path)
    assert [np.array_equal(a, b) for a, b in zip(back.maps, maps.maps, strict=True)] == [1] * 4
    assert back.labels.tolist() == [3, -1, 0, 8]
    assert back.split.tolist() == ["Training", "", "Test", "Training"]
    assert back.source_index.tolist() == [100, 101, 102, 103]
    assert back.class_names == maps.class_names
    with np.load(path, allow_pickle=False) as z:  # pickle-free
        assert z["maps_flat"].dtype == np.uint8


def test_written_npz_is_readable_by_load_wafer_subset(tmp_path):
    maps = small_maps(["train_1_split", "val_data", "train_1_split"])
    maps.labels[:] = [2, 5, 7]
    path = write_wafer_npz(maps, tmp_path / "w.npz")
    data = load_wafer_subset("train_1", image_size=4, path=path)
    assert data.labels.tolist() == [2, 7]
    assert np.array_equal(data.images[1, 0].numpy(), nearest_resize(maps.maps[2], 4))
    assert data.names == ["wm811k:100", "wm811k:102"]


def test_convert_folder_of_split_files(tmp_path):
    folder = tmp_path / "subset"
    folder.mkdir()
    train = [wafer(6, 6, 10), wafer(7, 8, 11)]
    save(clean_frame(train, ["Center", "None"]), folder / "train_1_split.pkl.xz")
    save(clean_frame([wafer(9, 6, 12)], ["Donut"]), folder / "val_data.pkl.xz")
    (folder / "notes.txt").write_text("ignored")
    with pytest.raises(ValueError, match="trust_pickle"):
        convert_wafers(folder, tmp_path / "w.npz")
    counts = convert_wafers(folder, tmp_path / "w.npz", trust_pickle=True)
    assert counts["maps"] == 3 and counts["unlabeled"] == 0
    assert counts["splits"] == {"train_1_split": 2, "val_data": 1}
    assert counts["class_counts"]["none"] == 1 and counts["class_counts"]["Donut"] == 1
    val = load_wafer_subset("val", image_size=9, path=tmp_path / "w.npz")
    assert val.labels.tolist() == [1]
    assert np.array_equal(val.images[0, 0].numpy(), nearest_resize(wafer(9, 6, 12), 9))


def test_to_dataset_codes_and_fail_mask():
    m = np.array(
        [
            [0, 0, 1, 1, 0, 0],
            [0, 0, 1, 1, 0, 0],
            [1, 1, 2, 2, 1, 1],
            [1, 1, 2, 2, 1, 1],
            [0, 0, 2, 2, 0, 0],
            [0, 0, 2, 2, 0, 0],
        ],
        dtype=np.uint8,
    )
    maps = WaferMaps([m, np.ones((6, 6), np.uint8)], np.array([4, -1]), source="hand")
    # nearest 6 -> 3 samples rows/cols 1, 3, 5
    want = np.array([[0, 1, 0], [1, 2, 1], [0, 2, 0]], dtype=np.uint8)
    codes = to_dataset(maps, 3)
    assert codes.images.shape == (2, 1, 3, 3) and codes.style == "wafer"
    assert np.array_equal(codes.images[0, 0].numpy(), want)
    assert codes.labels.tolist() == [4, -1]
    mask = to_dataset(maps, 3, encoding="fail_mask")
    assert mask.images.shape == (2, 2, 3, 3) and mask.images.dtype == codes.images.dtype
    assert np.array_equal(mask.images[0, 0].numpy(), (want == 2).astype(np.uint8))
    assert np.array_equal(mask.images[0, 1].numpy(), (want > 0).astype(np.uint8))
    assert mask.images[1].tolist() == [[[0] * 3] * 3, [[1] * 3] * 3]
    unlabeled = WaferMaps([m], np.array([-1]))
    assert to_dataset(unlabeled, 3).labels is None
    with pytest.raises(ValueError, match="encoding"):
        to_dataset(maps, 3, encoding="rgb")


# --- the real clean subset ------------------------------------------------------------------------


@pytest.mark.skipif(not REAL_TRAIN_1.is_file(), reason="real clean-subset file not present")
def test_real_train_1_split_equals_builtin_npz():
    maps = read_wafer_pickle(REAL_TRAIN_1, trust_pickle=True)
    raw = read_wafer_file(str(packaged_path()))
    keep = np.flatnonzero(raw["split"] == "train_1_split")
    assert len(maps) == len(keep) == 623
    assert np.array_equal(maps.source_index, raw["source_index"][keep])  # same order
    assert np.array_equal(maps.labels, raw["labels"][keep].astype(np.int64))
    flat, shapes, offsets = raw["maps_flat"], raw["shapes"], raw["offsets"]
    for k, m in zip(keep, maps.maps, strict=True):
        assert np.array_equal(m, flat[offsets[k] : offsets[k + 1]].reshape(shapes[k]))


def test_converted_full_file_loads_by_its_own_split_names(tmp_path, caplog):
    maps = small_maps(["Training", "", "Test", "Training"])
    path = write_wafer_npz(maps, tmp_path / "lswmd.npz")
    training = load_wafer_subset("Training", image_size=4, path=path)
    assert training.labels.tolist() == [3, 8]
    assert training.names == ["wm811k:100", "wm811k:103"]
    assert load_wafer_subset("Test", image_size=4, path=path).labels.tolist() == [0]
    with caplog.at_level("INFO", logger="selfsup.data.wafers"):
        everything = load_wafer_subset("all", image_size=4, path=path)
    assert len(everything) == 4 and everything.labels is None  # unlabeled rows: no labels
    assert "1 of 4 maps are unlabeled" in caplog.text
    unlabeled = load_wafer_subset("unlabeled", image_size=4, path=path)
    assert len(unlabeled) == 1 and unlabeled.names == ["wm811k:101"]
    with pytest.raises(ValueError, match=r"lswmd.npz' has no split 'train_1'.*Test, Training"):
        load_wafer_subset("train_1", image_size=4, path=path)


def test_converted_full_file_is_a_data_spec_for_pretraining(tmp_path, caplog):
    from selfsup.data import load_dataset

    maps = small_maps(["Training", "", "Test", "Training"])
    path = write_wafer_npz(maps, tmp_path / "lswmd.npz")
    assert spec_kind(str(path)) == "wafer_file"
    train = load_dataset(str(path), image_size=8, split="train")  # all but Test
    assert train.names == ["wm811k:100", "wm811k:101", "wm811k:103"] and train.labels is None
    assert train.style == "wafer" and train.images.max() <= 2
    assert len(load_dataset(str(path), image_size=8)) == 4  # default: every map
    test = load_dataset(str(path), image_size=8, split="Test")
    assert test.labels.tolist() == [0]
    with caplog.at_level("INFO", logger="selfsup.train"):
        _, run = selfsup.pretrain(
            method="simclr", backbone="convnet_tiny", backbone_kwargs={"width": 4},
            data=str(path), image_size=8, max_steps=2, batch_size=2, precision="32-true",
            progress_bar=False, out=str(tmp_path / "runs"), name="lswmd",
        )  # fmt: skip
    assert "kNN monitor off" in caplog.text and "has no split 'val'" in caplog.text
    assert (run / "backbone.safetensors").is_file()
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]  # no best: no kNN


def test_fail_mask_input_from_the_config_end_to_end(tmp_path):
    from selfsup.artifacts import load_trained

    path = write_wafer_npz(small_maps(["Training", "", "Test", "Training"]), tmp_path / "w.npz")
    _, run = selfsup.pretrain(
        method="simclr", backbone="convnet_tiny", backbone_kwargs={"width": 4},
        method_kwargs={"views": {"encoding": "fail_mask"}}, data=str(path), image_size=8,
        max_steps=2, batch_size=2, precision="32-true", progress_bar=False,
        out=str(tmp_path / "runs"), name="failmask",
    )  # fmt: skip
    backbone, preprocess, meta = load_trained(run)
    assert backbone.in_channels == 2 and meta["wafer_encoding"] == "fail_mask"
    codes = torch.from_numpy(np.stack([nearest_resize(m, 8) for m in small_maps(["a"] * 4).maps]))
    x = preprocess(codes.unsqueeze(1))
    assert x.shape == (4, 2, 8, 8) and backbone(x).shape[0] == 4
