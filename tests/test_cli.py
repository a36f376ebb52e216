"""CLI end to end on tiny data: pretrain -> eval knn -> export -> embed -> load_backbone."""

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import selfsup
from selfsup.artifacts import load_method_from_checkpoint
from selfsup.cli import main
from selfsup.data import ImageDataset
from selfsup.data.image_dataset import CHANNEL_CONVERSIONS, WAFER_AS_GREY
from selfsup.eval.transfer import match_styles


def pretrain_args(train, val, out, *extra):
    return [
        "pretrain",
        "--method",
        "simsiam",
        "--backbone",
        "convnet_tiny",
        "--data",
        str(train),
        "--image-size",
        "16",
        "--epochs",
        "1",
        "--batch-size",
        "16",
        "--precision",
        "32-true",
        "--out",
        str(out),
        "--name",
        "cli",
        "--no-progress",
        "--set",
        "backbone_kwargs.width=4",
        "--set",
        f"val_data={val}",
        "--set",
        "method_kwargs={proj_dim: 32, pred_hidden_dim: 8}",
        "--set",
        "knn_k=[3]",
        *extra,
    ]


def test_cli_end_to_end(labelled_npz, tmp_path, capsys):
    train, val = labelled_npz
    assert main(pretrain_args(train, val, tmp_path)) == 0
    out = capsys.readouterr().out
    assert "random init macro-F1" in out and "k=3" in out
    run = tmp_path / "cli"

    assert (
        main(
            [
                "eval",
                "knn",
                str(run),
                "--data",
                str(train),
                "--query-data",
                str(val),
                "--k",
                "3",
                "7",
            ]
        )
        == 0
    )
    scores = json.loads((run / "eval_knn_val.json").read_text())["scores"]
    assert {"knn3_macro_f1", "knn7_balanced_accuracy"} <= set(scores)

    export_dir = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(export_dir)]) == 0
    chosen = json.loads((run / "summary.json").read_text())["exported_checkpoint"]
    assert f"checkpoints/{chosen}.ckpt" in capsys.readouterr().out  # says which it used
    # by default the same weights as the run's own export, byte for byte
    exported = (export_dir / "backbone.safetensors").read_bytes()
    assert exported == (run / "backbone.safetensors").read_bytes()
    backbone = selfsup.load_backbone(export_dir)
    method = load_method_from_checkpoint(run / "checkpoints" / f"{chosen}.ckpt")
    images = torch.from_numpy(np.load(val)["images"]).permute(0, 3, 1, 2).contiguous()
    expected = method.embed(images)
    got = backbone(method.views.preprocess(images))
    assert torch.allclose(got, expected, atol=1e-5)

    feats_path = tmp_path / "feats.npz"
    assert main(["embed", str(export_dir), "--data", str(val), "--out", str(feats_path)]) == 0
    feats = np.load(feats_path)
    assert feats["features"].shape == (48, backbone.feature_dim)
    assert np.allclose(feats["features"], expected.numpy(), atol=1e-5)
    assert (feats["labels"] == np.arange(48) % 3).all()


def test_cli_lists_methods_and_backbones(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in (
        "simclr",
        "mocov2",
        "byol",
        "simsiam",
        "fastsiam",
        "barlow_twins",
        "dino",
        "rotnet",
    ):
        assert f"{name}:" in out
    assert "trains with: optimizer=lars, lr=0.2, weight_decay=1.5e-06" in out  # barlow_twins
    assert main(["backbones"]) == 0
    assert "convnet_small" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["pretrain", "--data", "/nonexistent/folder"], "/nonexistent/folder"),
        (["pretrain", "--method", "simclrr"], "unknown method 'simclrr'"),
        (["pretrain", "--backbone", "resnet9"], "unknown backbone 'resnet9'"),
        (["pretrain", "--set", "in_channels=3"], "in_channels"),
        (["eval", "knn", "/nonexistent/run"], "/nonexistent/run"),
        (["export", "/nonexistent/run"], "/nonexistent/run"),
        (["pretrain", "--set", "epohcs=1"], "epohcs"),
    ],
)
def test_bad_input_one_line_error(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_empty_folder_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["pretrain", "--data", str(tmp_path / "empty")]) == 2
    assert "holds no images" in capsys.readouterr().err


def test_data_check_counts(tmp_path, capsys, labelled_npz):
    train, _ = labelled_npz
    assert main(["data", "check", str(train)]) == 0
    assert "96" in capsys.readouterr().out


@pytest.mark.parametrize("protocol", ["linear", "mlp", "finetune"])
def test_cli_supervised_protocols_record_selection_and_test(labelled_npz, tmp_path, protocol):
    train, val = labelled_npz
    assert main(pretrain_args(train, val, tmp_path)) == 0
    run = tmp_path / "cli"
    argv = ["eval", protocol, str(run), "--data", str(train), "--test-data", str(val),
            "--label-fraction", "0.5"]  # fmt: skip
    if protocol == "finetune":
        argv += ["--epochs", "2", "--min-steps", "4"]
    else:  # fine-tuning options are refused where they would be ignored
        for option in (["--epochs", "2"], ["--min-steps", "4"], ["--views", "hflip_p=0"]):
            with pytest.raises(SystemExit) as exit_info:
                main([*argv, *option])
            assert exit_info.value.code == 2
    assert main(argv) == 0
    record = json.loads((run / f"eval_{protocol}_data_f0.5.json").read_text())
    # 32 maps per class: val takes round(3.2) = 3 each, train keeps 29 and half of that is
    # round(14.5) = 14 each (round half to even)
    assert record["splits"]["train"]["size"] == 3 * 14
    assert record["splits"]["val"]["size"] == 3 * 3 and record["splits"]["test"]["size"] == 48
    assert record["test"]["num_samples"] == 48
    assert "epoch" in record["chosen"] and len(record["backbone"]["checksum"]) == 16


def test_cli_finetune_views_replace_recipe_parameters(labelled_npz, tmp_path, capsys):
    train, val = labelled_npz
    assert main(pretrain_args(train, val, tmp_path)) == 0
    run = tmp_path / "cli"
    argv = ["eval", "finetune", str(run), "--data", str(train), "--test-data", str(val),
            "--epochs", "1", "--min-steps", "2"]  # fmt: skip
    assert main([*argv, "--views", "crop_scale=[0.5, 1.0]", "--views", "hflip_p=0.25"]) == 0
    views = json.loads((run / "eval_finetune_data.json").read_text())["chosen"]["views"]
    assert views["crop_scale"] == [0.5, 1.0] and views["hflip_p"] == 0.25
    assert views["jitter_p"] == 0.8  # the rest is the pretraining recipe's
    assert main([*argv, "--minutes", "30"]) == 0  # a budget the 2 steps stay inside
    chosen = json.loads((run / "eval_finetune_data.json").read_text())["chosen"]
    assert chosen["max_minutes"] == 30 and chosen["steps_run"] == 2
    assert chosen["test_time_views"] == "none"
    assert main([*argv, "--test-time-views", "hflip"]) == 0
    record = json.loads((run / "eval_finetune_data.json").read_text())
    assert record["chosen"]["test_time_views"] == "hflip"
    saved = json.loads((run / record["classifier"] / "classifier.json").read_text())
    assert saved["test_time_views"] == "hflip"
    assert main([*argv, "--backbone-lr", "0.001", "0.1", "--lr", "0.2"]) == 0
    chosen = json.loads((run / "eval_finetune_data.json").read_text())["chosen"]
    tried = [(c["lr"], c["backbone_lr"]) for c in chosen["lr_candidates"]]
    assert tried == [(0.2, 0.001), (0.2, 0.1)]
    best = max(chosen["lr_candidates"], key=lambda c: c["val_macro_f1"])
    assert (chosen["lr"], chosen["backbone_lr"]) == (best["lr"], best["backbone_lr"])
    assert chosen["val_macro_f1"] == best["val_macro_f1"]
    assert main([*argv, "--ensemble", "2", "--seed", "1"]) == 0
    record = json.loads((run / "eval_finetune_data.json").read_text())
    assert [m["seed"] for m in record["chosen"]["ensemble"]] == [1, 2]
    saved = json.loads((run / record["classifier"] / "classifier.json").read_text())
    assert saved["ensemble_members"] == 2
    assert main([*argv, "--views", "die_flip_p=0"]) == 2  # a wafer parameter on photos
    assert "no parameter 'die_flip_p'" in capsys.readouterr().err
    assert main([*argv, "--views", "hflip_p"]) == 2
    assert "--views expects key=value, got 'hflip_p'" in capsys.readouterr().err


@pytest.mark.parametrize("protocol", ["linear", "transfer"])
def test_cli_supervised_and_transfer_need_test_data(labelled_npz, tmp_path, capsys, protocol):
    train, val = labelled_npz
    assert main(pretrain_args(train, val, tmp_path)) == 0
    assert main(["eval", protocol, str(tmp_path / "cli"), "--data", str(train)]) == 2
    assert "--test-data" in capsys.readouterr().err


def test_cli_wafers_convert_refuses_untrusted_pickle_then_converts(tmp_path, capsys):
    src = Path("../shared/wm811k_clean_subset/train_1_split.pkl.xz")
    if not src.is_file():
        src = (
            Path(__file__).resolve().parents[2] / "shared/wm811k_clean_subset/train_1_split.pkl.xz"
        )
    if not src.is_file():
        pytest.skip("shared wafer subset not beside the checkout")
    dst = tmp_path / "train_1.npz"
    assert main(["data", "wafers", "convert", str(src), str(dst)]) == 2
    assert "--trust-pickle" in capsys.readouterr().err
    assert main(["data", "wafers", "convert", str(src), str(dst), "--trust-pickle"]) == 0
    assert '"maps": 623' in capsys.readouterr().out
    from selfsup.data import load_wafer_subset

    assert len(load_wafer_subset("train_1", image_size=16, path=dst)) == 623


def test_cli_idx_folder_pretrain_knn_linear_and_transfer_to_rgb(
    idx_folder, labelled_npz, tmp_path, capsys
):
    # pretrain on the IDX train split; the kNN monitor reads DIR:test
    assert main(pretrain_args(idx_folder, f"{idx_folder}:test", tmp_path)) == 0
    run = tmp_path / "cli"
    assert "random init macro-F1" in capsys.readouterr().out

    # kNN: the train split votes, the test split asks (no --query-data needed)
    assert main(["eval", "knn", str(run), "--data", str(idx_folder), "--k", "3"]) == 0
    knn = json.loads((run / "eval_knn_test.json").read_text())
    assert (knn["bank"]["split"], knn["bank"]["size"]) == ("train", 60)
    assert (knn["queries"]["split"], knn["queries"]["size"]) == ("test", 30)

    # linear: val carved from the train split (10 % of 20 per class = 2 each), test = test split
    assert main(["eval", "linear", str(run), "--data", str(idx_folder)]) == 0
    record = json.loads((run / "eval_linear_train.json").read_text())
    sizes = {role: split["size"] for role, split in record["splits"].items()}
    assert sizes == {"train": 54, "val": 6, "test": 30}
    assert "t10k-images" in record["splits"]["test"]["source"]
    assert record["test"]["num_samples"] == 30 and record["seed"] == 0

    assert main(["eval", "linear", str(run), "--data", str(idx_folder), "--val-split", "test"]) == 2
    assert "the val and test data are the same" in capsys.readouterr().err

    # transfer the grey backbone to RGB arrays: converted by luminance, and said so
    train, val = labelled_npz
    argv = ["eval", "transfer", str(run), "--data", str(train), "--test-data", str(val)]
    assert main(argv) == 0
    record = json.loads((run / "eval_transfer_linear_train.npz.json").read_text())
    assert record["transfer"]["pretrained_on"]["data"] == str(idx_folder)
    assert record["transfer"]["in_channels"] == 1
    assert set(record["transfer"]["channel_conversion"]) == {str(train), str(val)}
    assert set(record["transfer"]["channel_conversion"].values()) == {CHANNEL_CONVERSIONS[(3, 1)]}


def test_cli_transfer_probes_an_rgb_backbone_on_a_grey_idx_folder(
    labelled_npz, idx_folder, tmp_path, capsys
):
    train, val = labelled_npz
    assert main(pretrain_args(train, val, tmp_path)) == 0
    run = tmp_path / "cli"
    assert main(["export", str(run)]) == 0
    capsys.readouterr()
    for probe, target in (("linear", run), ("mlp", run / "export")):
        argv = ["eval", "transfer", str(target), "--data", str(idx_folder), "--probe", probe]
        assert main(argv) == 0
        assert f"transfer {probe} (test)" in capsys.readouterr().out
        record = json.loads((target / f"eval_transfer_{probe}_idx.json").read_text())
        transfer = record["transfer"]
        assert record["protocol"] == "transfer" and transfer["probe"] == probe
        assert record["chosen"]["probe"] == probe
        # dataset A from the run's config.yaml, also when given the export folder
        assert transfer["pretrained_on"]["data"] == str(train)
        assert (transfer["image_size"], transfer["in_channels"]) == (16, 3)
        assert set(transfer["channel_conversion"].values()) == {CHANNEL_CONVERSIONS[(1, 3)]}
        sizes = {role: split["size"] for role, split in record["splits"].items()}
        assert sizes == {"train": 54, "val": 6, "test": 30}
        assert len(record["backbone"]["checksum"]) == 16
        # 3 classes that differ in grey level: any sane probe beats chance on them
        assert record["test"]["accuracy"] > 0.6


def test_cli_transfer_from_a_wafer_backbone_feeds_natural_images_in_its_range(idx_folder, tmp_path):
    codes = np.random.default_rng(0).integers(0, 3, size=(64, 16, 16), dtype=np.uint8)
    maps = tmp_path / "maps.npz"
    np.savez(maps, images=codes)  # unlabelled: no kNN monitor
    assert main(pretrain_args(maps, maps, tmp_path, "--set", "view_style=wafer")) == 0
    run = tmp_path / "cli"
    assert main(["eval", "transfer", str(run), "--data", str(idx_folder)]) == 0
    transfer = json.loads((run / "eval_transfer_linear_idx.json").read_text())["transfer"]
    assert transfer["style_conversion"].startswith("natural images scaled to [0, 1]")
    assert transfer["channel_conversion"] is None


def test_transfer_shows_wafer_maps_to_a_natural_backbone_as_grey_levels():
    maps = ImageDataset(torch.tensor([[[[0, 1], [2, 1]]]], dtype=torch.uint8), style="wafer")
    meta = {"view_style": "natural", "in_channels": 1, "image_size": 2}
    splits, preprocess, note = match_styles({"train": maps}, meta, "own preprocess")
    assert splits["train"].images.flatten().tolist() == [0, 128, 255, 128]
    assert splits["train"].style == "natural" and preprocess == "own preprocess"
    assert note == WAFER_AS_GREY
    same = match_styles({"train": maps}, {**meta, "view_style": "wafer"}, "own preprocess")
    assert same == ({"train": maps}, "own preprocess", None)


def test_backbones_lists_their_options(capsys):
    assert main(["backbones"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "convnet_small  (backbone_kwargs: width=32)" in lines
    assert "timm/<model name>" in lines


def noise_npz(folder: Path, name: str, n: int, seed: int) -> Path:
    """Labelled 16x16 RGB noise: kNN scores that depend on which bank votes."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 16, 16, 3), dtype=np.uint8)
    path = folder / f"{name}.npz"
    np.savez(path, images=images, labels=np.arange(n) % 3)
    return path


def test_eval_knn_and_embed_read_the_run_and_reproduce_the_monitor_bank(tmp_path, capsys):
    train, val = noise_npz(tmp_path, "train", 96, 0), noise_npz(tmp_path, "val", 48, 1)
    assert main(pretrain_args(train, val, tmp_path, "--set", "knn_max_train=20")) == 0
    run = tmp_path / "cli"
    monitor = json.loads((run / "summary.json").read_text())["knn_history"][-1]["knn3_macro_f1"]
    assert re.search(r"kNN monitor: \d+ passes, \d+ s of \d+ s training", capsys.readouterr().out)

    # no --data: the run's data votes, its val_data asks; the monitor's seeded 20 of 96
    assert main(["eval", "knn", str(run), "--k", "3", "--max-bank", "20", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert f"data: {train} (the run's data, {run / 'config.yaml'})" in out
    assert "kNN bank: 20 of 96 labelled samples (--max-bank 20, seed 0)" in out
    record = json.loads((run / "eval_knn_val_bank20.json").read_text())
    assert (record["bank"]["size"], record["bank"]["of"], record["bank"]["cap"]) == (20, 96, 20)
    assert record["queries"]["data"] == str(val)
    assert record["scores"]["knn3_macro_f1"] == pytest.approx(monitor, abs=1e-6)

    assert main(["eval", "knn", str(run), "--k", "3"]) == 0
    assert "kNN bank: 96 of 96 labelled samples\n" in capsys.readouterr().out
    whole = json.loads((run / "eval_knn_val.json").read_text())["bank"]
    assert (whole["data"], whole["size"], whole["of"], whole["cap"]) == (str(train), 96, 96, None)

    assert main(["embed", str(run), "--out", str(tmp_path / "f.npz")]) == 0
    assert f"data: {train} (the run's data" in capsys.readouterr().out
    assert np.load(tmp_path / "f.npz")["labels"].shape == (96,)


def test_eval_records_named_by_data_and_fraction_and_replacing_is_said(
    labelled_npz, tmp_path, capsys
):
    train, val = labelled_npz
    assert main(pretrain_args(train, val, tmp_path)) == 0
    run = tmp_path / "cli"
    half = ["eval", "linear", str(run), "--test-data", str(val), "--label-fraction", "0.5"]
    assert main(half) == 0
    assert (run / "eval_linear_data_f0.5.json").is_file()
    assert main(["eval", "linear", str(run), "--data", str(train), "--test-data", str(val)]) == 0
    assert (run / "eval_linear_data.json").is_file()  # the run's data, all labels: today's name
    other = ["eval", "linear", str(run), "--data", str(val), "--test-data", str(train)]
    assert main(other) == 0
    assert (run / "eval_linear_val.npz_train.npz.json").is_file()
    first = json.loads((run / "eval_linear_data_f0.5.json").read_text())["test"]["macro_f1"]
    capsys.readouterr()
    assert main(half) == 0
    out = capsys.readouterr().out
    path = run / "eval_linear_data_f0.5.json"
    assert f"replaced {path} (previous result: macro_f1 {first:.4f}; now macro_f1 " in out


def test_eval_knn_of_data_of_another_kind_points_to_eval_transfer(idx_folder, tmp_path, capsys):
    codes = np.random.default_rng(0).integers(0, 3, size=(64, 16, 16), dtype=np.uint8)
    maps = tmp_path / "maps.npz"
    np.savez(maps, images=codes)
    assert main(pretrain_args(maps, maps, tmp_path, "--set", "view_style=wafer")) == 0
    capsys.readouterr()
    assert main(["eval", "knn", str(tmp_path / "cli"), "--data", str(idx_folder), "--k", "3"]) != 0
    err = capsys.readouterr().err
    assert "that is a transfer; use `selfsup eval transfer" in err
    assert "expect die codes in {0, 1, 2}" in err
