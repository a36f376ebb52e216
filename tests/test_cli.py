"""CLI end to end on tiny data: pretrain -> eval knn -> export -> embed -> load_backbone."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import selfsup
from selfsup.cli import main
from selfsup.export import load_method_from_checkpoint


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
    backbone = selfsup.load_backbone(export_dir)
    method = load_method_from_checkpoint(run / "checkpoints" / "last.ckpt")
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
            "--label-fraction", "0.5", "--epochs", "2"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads((run / f"eval_{protocol}_data.json").read_text())
    # 32 maps per class: val takes round(3.2) = 3 each, train keeps 29 and half of that is
    # round(14.5) = 14 each (round half to even)
    assert record["splits"]["train"]["size"] == 3 * 14
    assert record["splits"]["val"]["size"] == 3 * 3 and record["splits"]["test"]["size"] == 48
    assert record["test"]["num_samples"] == 48
    assert "epoch" in record["chosen"] and len(record["backbone"]["checksum"]) == 16


def test_cli_supervised_needs_test_data(labelled_npz, tmp_path, capsys):
    train, val = labelled_npz
    assert main(pretrain_args(train, val, tmp_path)) == 0
    assert main(["eval", "linear", str(tmp_path / "cli"), "--data", str(train)]) == 2
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
