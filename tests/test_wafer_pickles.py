"""A 2015-layout WM-811K pickle through ``selfsup.data.wm811k_pickles``, and ``encode_wafer``.

The loader's format quirks are tested in test_wm811k_pickles.py; this file adds a pickle laid
out the way pandas 0.15-0.17 wrote DataFrames (old module paths, a BlockManager created empty
and filled from its "0.14.1" state), which modern pandas cannot read on its own.
"""

import copyreg
import io
import pickle

import numpy as np
import pytest
import torch

from selfsup.wafers import encode_wafer

pd = pytest.importorskip("pandas")


def pickle_2015_layout(columns: dict, index: list[int], index_class: str) -> bytes:
    """Protocol-2 bytes of a DataFrame as pandas 0.15-0.17 stored it; the row index is pickled
    as ``pandas.core.index.<index_class>`` (0.15-0.17 used Int64Index for the default one)."""
    from pandas.core.internals import BlockManager

    names = list(columns)
    values = np.empty((len(names), len(index)), dtype=object)  # one object block, all columns
    for i, name in enumerate(names):
        for j, cell in enumerate(columns[name]):
            values[i, j] = cell
    items = pd.Index(names, dtype=object)
    rows = pd.Index(np.asarray(index, dtype=np.int64))
    state = {"axes": [items, rows], "blocks": [{"values": values, "mgr_locs": slice(0, 3, 1)}]}

    class OldLayout(pickle.Pickler):
        def reducer_override(self, obj):
            if isinstance(obj, pd.DataFrame):
                old_state = {"_data": obj._mgr, "_typ": "dataframe"}
                return (copyreg.__newobj__, (pd.DataFrame,), old_state)
            if isinstance(obj, BlockManager):
                legacy = ([items, rows], [values], [items], {"0.14.1": state})
                return (copyreg.__newobj__, (BlockManager,), legacy)
            return NotImplemented

    buffer = io.BytesIO()
    OldLayout(buffer, protocol=2).dump(pd.DataFrame({"x": [0]}))
    data = buffer.getvalue()
    old_paths = [
        (b"pandas.core.indexes.base\n_new_Index\n", b"pandas.core.index\n_new_Index\n"),
        (b"cpandas\nIndex\n", b"cpandas.core.index\n" + index_class.encode() + b"\n"),
        (b"pandas.core.internals.managers\nBlockManager", b"pandas.core.internals\nBlockManager"),
    ]
    for new, old in old_paths:
        assert new in data
        data = data.replace(new, old)
    return data


@pytest.mark.parametrize(
    "index_class",
    [
        "Index",
        "Int64Index",
    ],
)
def test_2015_layout_pickle_reads_with_values_exact(tmp_path, index_class):
    from selfsup.data.wm811k_pickles import read_wafer_pickle

    center = np.ones((5, 5), dtype=np.uint8)
    center[[0, 0, 4, 4], [0, 4, 0, 4]] = 0
    center[1:4, 1:4] = 2
    unlabeled = np.ones((6, 7), dtype=np.uint8)
    data = pickle_2015_layout(
        {
            "waferMap": [center, unlabeled],
            "failureType": [np.array([["Center"]], dtype=object), np.zeros((0, 0))],
            "trianTestLabel": [np.array([["Training"]], dtype=object), np.zeros((0, 0))],
        },
        index=[7, 8],
        index_class=index_class,
    )
    with pytest.raises(ModuleNotFoundError, match="pandas.core.index"):
        pickle.loads(data)  # what plain pickle (and pandas' own reader) make of it
    path = tmp_path / "LSWMD.pkl"
    path.write_bytes(data)
    maps = read_wafer_pickle(path, trust_pickle=True)
    assert maps.labels.tolist() == [0, -1]
    assert maps.split.tolist() == ["Training", ""]
    assert maps.source_index.tolist() == [7, 8]
    assert np.array_equal(maps.maps[0], center) and np.array_equal(maps.maps[1], unlabeled)


# --- model input encodings ------------------------------------------------------------------------


def test_encode_codes_and_fail_mask_numpy():
    m = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    codes = encode_wafer(m, "codes")
    assert isinstance(codes, np.ndarray) and codes.shape == (1, 2, 2)
    assert codes.tolist() == [[[0, 1], [2, 1]]]
    mask = encode_wafer(m, "fail_mask")
    assert mask.dtype == np.uint8 and mask.tolist() == [[[0, 0], [1, 0]], [[0, 1], [1, 1]]]


def test_encode_batches_and_torch():
    batch = torch.tensor([[[0, 2], [1, 1]], [[2, 2], [0, 0]]], dtype=torch.int64)  # [2, 2, 2]
    out = encode_wafer(batch, "fail_mask")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.uint8
    assert out.shape == (2, 2, 2, 2)  # [B, C, H, W]
    assert out[1, 0].tolist() == [[1, 1], [0, 0]] and out[1, 1].tolist() == [[1, 1], [0, 0]]
    assert encode_wafer(batch, "codes").shape == (2, 1, 2, 2)


def test_encode_rejects_scaled_values_and_unknown_mode():
    with pytest.raises(ValueError, match=r"codes 0/1/2, found \[128, 255\]"):
        encode_wafer(np.array([[0, 128], [255, 0]], dtype=np.uint8))
    with pytest.raises(ValueError, match="mode must be one of"):
        encode_wafer(np.zeros((3, 3), np.uint8), "rgb")
