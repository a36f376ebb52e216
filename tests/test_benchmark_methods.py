"""The method table script: end to end on a subsample (slow), and its cells and options."""

import json

import pytest
from conftest import load_benchmark


@pytest.mark.slow
def test_method_table_fills_every_column_and_writes_the_json(tmp_path, capfd):
    bench = load_benchmark("methods")
    out = tmp_path / "table.json"
    records = bench.main([
        "--methods", "simclr", "byol", "--minutes", "0.02", "--subsample", "48",
        "--runs", str(tmp_path / "runs"), "--out", str(out),
        "--set", "backbone_kwargs.width=4", "--set", "batch_size=32",
    ])  # fmt: skip
    assert list(records) == ["random init", "raw pixels", "simclr", "byol"]
    for name in ("random init", "raw pixels"):
        assert 0 <= records[name]["knn"] <= 1 and 0 <= records[name]["probe"] <= 1
    for name in ("simclr", "byol"):
        record = records[name]
        assert "error" not in record, record.get("error")
        assert record["steps"] >= 1 and record["epochs"] > 0 and record["images_per_s"] > 0
        assert 0 <= record["knn"] <= 1 and 0 <= record["probe"] <= 1
        assert record["knn"] == max(record["knn_history"])  # the best epoch's score
        assert record["collapsed_epochs"] == [] and record["last_collapse_std"] > 0
        assert record["peak_rss_mb"] > 50 and record["supervised"] is False
        assert record["probe_detail"]["test"]["macro_f1"] == record["probe"]
        # the baseline row is the runs' own random init on the monitor's bank and queries
        assert record["run_random_init_knn"] == pytest.approx(records["random init"]["knn"])

    printed = capfd.readouterr().out
    table = printed[printed.index("| method |") :].split("\n\n")[0].splitlines()
    assert table[0] == "| " + " | ".join(bench.COLUMNS) + " |"
    assert [line.split(" | ")[0] for line in table[2:]] == [
        "| random init", "| raw pixels", "| simclr", "| byol",
    ]  # fmt: skip
    for line in table[4:]:  # every column of a method row holds a value
        cells = line.strip("| ").split(" | ")
        assert len(cells) == len(bench.COLUMNS) and "–" not in cells, line
    assert "convnet_small (width=4), 32 px, 0.02 min of pretraining per method" in printed
    assert "CPU cores" in printed and "precision " in printed
    saved = json.loads(out.read_text())
    assert list(saved["rows"]) == list(records) and saved["minutes"] == 0.02
    assert saved["config"]["backbone"] == "convnet_small" and saved["machine"]


def method_record(**changes):
    record = {
        "method": "simclr", "supervised": False, "steps": 120, "epochs": 0.8,
        "images_per_s": 171.4, "knn": 0.70, "knn_epoch": 1, "probe": 0.61,
        "collapsed_epochs": [], "last_collapse_std": 0.55, "peak_rss_mb": 812.3,
    }  # fmt: skip
    return {**record, **changes}


def test_row_cells_goal_collapse_and_supervised_marks():
    bench = load_benchmark("methods")
    cells = bench.row_cells(method_record(), random_knn=0.46)
    assert cells == [
        "simclr", "120", "0.80", "171", "0.700 (epoch 1)", "0.610", "no (std 0.55)", "812",
        "yes (+0.240)",
    ]  # fmt: skip
    assert bench.row_cells(method_record(knn=0.55), 0.46)[-1] == "no (+0.090)"
    collapsed = bench.row_cells(method_record(collapsed_epochs=[2, 3]), 0.46)
    assert collapsed[6] == "yes (epoch 2)"
    assert bench.row_cells(method_record(last_collapse_std=None), 0.46)[6].startswith("n/a")
    supervised = bench.row_cells(method_record(method="supcon", supervised=True), 0.46)
    assert supervised[0] == "supcon (supervised: train labels)"
    failed = bench.row_cells({"method": "swav", "error": "worker exited with code 1"}, 0.46)
    assert failed[:2] == ["swav", "failed: worker exited with code 1"]
    assert len(failed) == len(bench.COLUMNS)
    # a method whose backbone build differs from the first method's (cmc's two encoders, a ViT)
    # is measured against its own run's random init, not the table's row
    own = bench.row_cells(method_record(knn=0.70, run_random_init_knn=0.60), 0.46)
    assert own[-1] == "no (+0.100)"
    baseline = bench.row_cells({"method": "raw pixels", "knn": 0.52, "probe": 0.66}, 0.46)
    assert baseline == ["raw pixels", "–", "–", "–", "0.520", "0.660", "–", "–", "–"]


def test_every_registered_method_by_default_and_bad_options_are_refused(capsys):
    import selfsup

    bench = load_benchmark("methods")
    args = bench.parse_args([])
    assert args.methods == list(selfsup.list_methods()) and args.minutes == 10.0
    assert args.config["backbone"] == "convnet_small" and args.config["image_size"] == 32
    assert args.config["max_minutes"] == 10.0 and args.config["data"] == "wafers"
    for argv, message in [
        (["--methods", "simclr", "nope"], "unknown method(s) nope"),
        (["--set", "method=byol"], "--set method is the table's to set: use --methods"),
        (["--set", "knn_max_val=100"], "the table's kNN queries are the whole val split"),
        (["--set", "batch_size=0"], "batch_size"),
        (["--minutes", "0"], "--minutes must be > 0"),
    ]:
        with pytest.raises(SystemExit):
            bench.parse_args(argv)
        assert message in capsys.readouterr().err
