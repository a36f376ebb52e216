"""selfsup.evaluate: the typed evaluation API behind `selfsup eval`, on tiny data."""

import json

import pytest
import torch

import selfsup
from selfsup.cli import main
from selfsup.eval.api import PROTOCOLS, EvaluationResult, evaluate


def tiny_run(train, val, out):
    """A 1-epoch SimSiam run on the arrays, as tests/test_cli.py pretrains one."""
    _, run = selfsup.pretrain(
        method="simsiam", backbone="convnet_tiny", backbone_kwargs={"width": 4},
        method_kwargs={"proj_dim": 32, "pred_hidden_dim": 8}, data=str(train),
        val_data=str(val), image_size=16, epochs=1, batch_size=16, precision="32-true",
        knn_k=[3], progress_bar=False, out=str(out), name="api",
    )  # fmt: skip
    return run


def test_evaluate_gives_the_record_the_cli_writes(labelled_npz, tmp_path, capsys):
    train, val = labelled_npz
    run = tiny_run(train, val, tmp_path)
    capsys.readouterr()
    assert main(["eval", "linear", str(run), "--data", str(train), "--test-data", str(val)]) == 0
    printed = capsys.readouterr().out
    written = run / "eval_linear_data.json"
    assert f"wrote {written}" in printed

    result = evaluate(run, data=str(train), protocol="linear", test_data=str(val))
    saved = json.loads(written.read_text())
    # saving adds the folder of the classifier it writes beside the record
    assert saved.pop("classifier") == "eval_linear_data_classifier"
    assert f"wrote {run / 'eval_linear_data_classifier'}" in printed
    assert result.record == saved
    assert result.table() in printed
    assert result.name == "eval_linear_data" and result.metrics == result.record["test"]
    assert result.record["splits"]["val"]["size"] == 9  # 10 % of 32 per class, carved
    copy = json.loads(result.save(tmp_path / "copy.json").read_text())
    assert copy.pop("classifier") == "copy_classifier" and copy == saved

    argv = ["eval", "knn", str(run), "--data", str(train), "--query-data", str(val), "--k", "3"]
    assert main(argv) == 0
    knn = evaluate(run, data=str(train), query_data=str(val), k=3)
    assert knn.record == json.loads((run / "eval_knn_val.json").read_text())
    assert set(knn.metrics) >= {"knn3_macro_f1", "knn3_balanced_accuracy", "knn3_accuracy"}


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_every_protocol_runs_on_tiny_data(protocol, labelled_npz, export):
    train, val = labelled_npz
    if protocol == "knn":
        options = {"query_data": str(val), "k": [3, 7]}
    else:
        options = {"test_data": str(val), "label_fraction": 0.5, "epochs": 1, "min_steps": 2}
    result = evaluate(export, data=str(train), protocol=protocol, **options)
    assert isinstance(result, EvaluationResult) and result.protocol == protocol
    assert result.record["protocol"] == protocol
    assert json.loads(json.dumps(result.record)) == result.record  # JSON as it stands
    assert len(result.record["backbone"]["checksum"]) == 16
    if protocol == "knn":
        assert result.record["k"] == [3, 7] and result.name == "eval_knn_train.npz_val.npz"
        assert result.record["queries"]["size"] == 48 and 0 <= result.metrics["knn7_accuracy"] <= 1
        return
    # 32 per class: val carves round(3.2) = 3, train keeps 29, half of that is round(14.5) = 14
    sizes = {role: split["size"] for role, split in result.record["splits"].items()}
    assert sizes == {"train": 3 * 14, "val": 3 * 3, "test": 48}
    assert result.metrics["num_samples"] == 48 and 0 <= result.metrics["macro_f1"] <= 1
    assert result.record["label_fraction"] == 0.5 and result.record["seed"] == 0
    if protocol != "transfer":  # an export without config.yaml: the data is named
        assert result.name == f"eval_{protocol}_train.npz_val.npz_f0.5"
    if protocol == "transfer":
        assert result.name == "eval_transfer_linear_train.npz_f0.5"
        assert result.record["transfer"]["probe"] == "linear"
        assert "pretraining data unknown" in result.record["transfer"]["pretrained_on"]["note"]
    if protocol == "finetune":
        assert result.record["chosen"]["head_init"] == "zero"


def test_a_loaded_backbone_is_evaluated_like_its_export(labelled_npz, export):
    train, val = labelled_npz
    options = {"data": str(train), "protocol": "mlp", "test_data": str(val)}
    from_folder = evaluate(export, **options)
    backbone = selfsup.load_backbone(export)
    assert evaluate(backbone, **options).record == from_folder.record
    with pytest.raises(ValueError, match="run_or_backbone is a Linear without a backbone metadata"):
        evaluate(torch.nn.Linear(2, 2), **options)


def test_finetune_views_replace_recipe_parameters(labelled_npz, export):
    train, val = labelled_npz
    result = evaluate(
        export, data=str(train), protocol="finetune", test_data=str(val), epochs=1,
        min_steps=2, views={"hflip_p": 0.25},
    )  # fmt: skip
    assert result.record["chosen"]["views"]["hflip_p"] == 0.25
    with pytest.raises(ValueError, match="die_flip_p"):
        evaluate(export, data=str(train), protocol="finetune", test_data=str(val),
                 epochs=1, min_steps=2, views={"die_flip_p": 0.0})  # fmt: skip


FRACTION = r"label_fraction must be in \(0, 1\], got "


@pytest.mark.parametrize(
    "options, message",
    [
        ({"protocol": "svm"}, "protocol must be one of knn, linear, .*, got 'svm'"),
        ({"protocol": "linear", "label_fraction": 1.5}, FRACTION + "1.5"),
        ({"protocol": "mlp", "label_fraction": 0.0}, FRACTION + "0.0"),
        ({"protocol": "knn", "label_fraction": 0.5}, "label_fraction=0.5 applies to linear"),
        ({"protocol": "transfer", "probe": "svm"}, "probe must be one of linear, mlp, got 'svm'"),
        ({"protocol": "finetune", "lr": 0.0}, "evaluate: lr: learning rates must be > 0"),
        ({"protocol": "finetune", "backbone_lr": []}, "evaluate: backbone_lr: give at least"),
        ({"protocol": "finetune", "ensemble": 0}, "ensemble must be an integer >= 1, got 0"),
        ({"protocol": "linear", "ensemble": 2}, "ensemble applies to protocol finetune only"),
    ],
)
def test_bad_requests_are_named_before_anything_loads(options, message):
    with pytest.raises(ValueError, match=message):
        evaluate("/nonexistent/run", **options)


def test_missing_roles_name_the_argument(labelled_npz, export):
    train, _ = labelled_npz
    with pytest.raises(ValueError, match=r"test_data \(--test-data\) is needed with data"):
        evaluate(export, data=str(train), protocol="linear")
    with pytest.raises(ValueError, match=r"query_data \(--query-data\) is needed with data"):
        evaluate(export, data=str(train), protocol="knn")
    with pytest.raises(ValueError, match="the train and test data are the same"):
        evaluate(export, data=str(train), protocol="linear", test_data=str(train))


def test_save_into_a_folder_uses_the_record_name(tmp_path):
    result = EvaluationResult("linear", {"protocol": "linear", "test": {}}, "eval_linear_x")
    assert result.save(tmp_path) == tmp_path / "eval_linear_x.json"
    assert json.loads((tmp_path / "eval_linear_x.json").read_text())["protocol"] == "linear"


def test_evaluate_is_part_of_the_public_facade():
    # selfsup/__init__.py's _PUBLIC table names selfsup.eval.api for "evaluate"
    public = getattr(selfsup, "_PUBLIC", {})
    if "evaluate" not in public:
        pytest.skip("selfsup.evaluate is not in the facade yet")
    assert selfsup.evaluate is evaluate


def test_choose_data_reads_the_run_config_from_an_export_or_checkpoint(tmp_path):
    from selfsup.eval.api import choose_data

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "export").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "config.yaml").write_text("data: /d/folder\nval_data: /d/val\n")
    for given in (run, run / "export", run / "checkpoints" / "last.ckpt"):
        choice = choose_data(given, None)
        assert (choice.data, choice.from_run, choice.is_runs) == ("/d/folder", True, True)
        assert choice.note() == f"data: /d/folder (the run's data, {run / 'config.yaml'})"
    assert choose_data(run, "/d/other").origin == "given"
    assert not choose_data(run, "/d/other").is_runs
    bare = choose_data(tmp_path, None)
    assert (bare.data, bare.from_run, bare.is_runs) == ("wafers", False, True)


def test_evaluate_knn_records_a_capped_bank(labelled_npz, export):
    train, val = labelled_npz
    result = evaluate(export, data=str(train), query_data=str(val), k=3, max_bank=30, seed=1)
    bank = result.record["bank"]
    assert (bank["size"], bank["of"], bank["cap"], result.record["seed"]) == (30, 96, 30, 1)
    assert result.name == "eval_knn_train.npz_val.npz_bank30"
    assert "kNN bank: 30 of 96 labelled samples (--max-bank 30, seed 1)" in result.table()
