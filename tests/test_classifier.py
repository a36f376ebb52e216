"""Saved classifiers (selfsup.classifier): what `selfsup eval linear | mlp | finetune` hands
over, saved, loaded back and used on raw images."""

import json

import numpy as np
import pytest
import torch
from conftest import tiny_simclr

from selfsup.classifier import CLASSIFIER_META, CLASSIFIER_WEIGHTS, load_classifier
from selfsup.eval.api import evaluate


def _images(path):
    return torch.from_numpy(np.load(path)["images"]).permute(0, 3, 1, 2).contiguous()


@pytest.mark.parametrize("protocol", ["linear", "mlp", "finetune"])
def test_saved_then_loaded_gives_the_logits_of_the_selected_model(protocol, labelled_npz, export):
    train, val = labelled_npz
    result = evaluate(export, data=str(train), protocol=protocol, test_data=str(val),
                      epochs=1, min_steps=3)  # fmt: skip
    clf = result.classifier
    assert clf is not None and clf.class_names == ["r", "g", "b"]
    images = _images(val)
    with torch.no_grad():
        in_memory = clf(images)
    # the classifier is the model the protocol scored: its test predictions are the record's
    assert in_memory.argmax(1).eq(
        torch.from_numpy(np.load(val)["labels"])
    ).float().mean().item() == pytest.approx(result.metrics["accuracy"])
    path = result.save(export)
    folder = export / f"{result.name}_classifier"
    assert json.loads(path.read_text())["classifier"] == folder.name
    assert (folder / CLASSIFIER_WEIGHTS).is_file() and (folder / CLASSIFIER_META).is_file()
    loaded = load_classifier(folder)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), in_memory)
    assert loaded.class_names == ["r", "g", "b"]
    assert float(loaded.temperature) == pytest.approx(result.record["calibration"]["temperature"])
    probs = loaded.predict_proba(images, batch_size=7)
    torch.testing.assert_close(probs, (in_memory / loaded.temperature).softmax(1))
    meta = json.loads((folder / CLASSIFIER_META).read_text())
    assert meta["record"]["protocol"] == protocol and meta["image_size"] == 16
    assert meta["backbone"]["name"] == "convnet_tiny"


def test_calibration_is_in_the_record(labelled_npz, export):
    train, val = labelled_npz
    result = evaluate(export, data=str(train), protocol="linear", test_data=str(val))
    calibration = result.record["calibration"]
    assert calibration["temperature"] > 0
    for key in ("val_ece_before", "val_ece_after", "test_ece_before", "test_ece_after"):
        assert 0 <= calibration[key] <= 1
    # fitted on val by NLL: val's NLL cannot get worse than at T = 1
    assert calibration["val_nll_after"] <= calibration["val_nll_before"] + 1e-6


def test_simclrv2_projector_layers_survive_the_round_trip(tmp_path):
    from selfsup.artifacts import backbone_metadata
    from selfsup.classifier import ImageClassifier, save_classifier, trunk_spec
    from selfsup.eval.finetune import finetune_network

    method = tiny_simclr("simclrv2")
    network = finetune_network(method, 1).eval()
    head = torch.nn.Linear(network.feature_dim, 2)
    spec = {"kind": "linear", "in_dim": network.feature_dim, "num_classes": 2}
    clf = ImageClassifier(
        network, head, metadata=backbone_metadata(method), class_names=["a", "b"],
        head_spec=spec, trunk_spec=trunk_spec(list(network.projector)), temperature=1.7,
    ).eval()  # fmt: skip
    save_classifier(clf, tmp_path / "c")
    loaded = load_classifier(tmp_path / "c" / CLASSIFIER_META)
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(images), clf(images))
    assert float(loaded.temperature) == pytest.approx(1.7)


def test_bad_classifier_folders_are_named(tmp_path, labelled_npz, export):
    with pytest.raises(FileNotFoundError, match="has no classifier.json"):
        load_classifier(tmp_path)
    train, val = labelled_npz
    result = evaluate(export, data=str(train), protocol="linear", test_data=str(val))
    result.save(export)
    folder = export / f"{result.name}_classifier"
    meta = json.loads((folder / CLASSIFIER_META).read_text())
    (folder / CLASSIFIER_META).write_text(json.dumps({**meta, "format": "other"}))
    with pytest.raises(ValueError, match="not a selfsup classifier"):
        load_classifier(folder)
    meta["head"]["num_classes"] = 4  # weights for 3 classes
    (folder / CLASSIFIER_META).write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="does not fit the layout"):
        load_classifier(folder)


def test_wrong_image_shape_is_refused(labelled_npz, export):
    train, val = labelled_npz
    clf = evaluate(export, data=str(train), protocol="linear", test_data=str(val)).classifier
    with pytest.raises(ValueError, match=r"expects uint8 images \[N, 3, 16, 16\]"):
        clf(torch.zeros(2, 1, 16, 16, dtype=torch.uint8))


def test_transfer_and_knn_save_no_classifier(labelled_npz, export):
    train, val = labelled_npz
    assert evaluate(export, data=str(train), query_data=str(val), k=3).classifier is None


def _scored_saved_and_reloaded(result, export, val, in_memory):
    """Checks that the record's test accuracy is ``in_memory``'s (the classifier's logits on
    the val file) and that the saved classifier reloads to the same logits; returns the
    folder, its classifier.json and the loaded classifier."""
    labels = torch.from_numpy(np.load(val)["labels"])
    accuracy = in_memory.argmax(1).eq(labels).float().mean().item()
    assert accuracy == pytest.approx(result.metrics["accuracy"])
    result.save(export)
    folder = export / f"{result.name}_classifier"
    meta = json.loads((folder / CLASSIFIER_META).read_text())
    loaded = load_classifier(folder)
    with torch.no_grad():
        torch.testing.assert_close(loaded(_images(val)), in_memory)
    return folder, meta, loaded


def test_test_time_views_are_saved_and_used_by_the_loaded_classifier(labelled_npz, export):
    train, val = labelled_npz
    result = evaluate(export, data=str(train), protocol="finetune", test_data=str(val),
                      epochs=1, min_steps=3, test_time_views="dihedral")  # fmt: skip
    assert result.record["chosen"]["test_time_views"] == "dihedral"
    clf = result.classifier
    images = _images(val)
    with torch.no_grad():
        in_memory = clf(images)
        # the logits average the 8 symmetric views: a turned or mirrored map gets the same
        torch.testing.assert_close(clf(torch.rot90(images, 1, (-2, -1))), in_memory)
        torch.testing.assert_close(clf(images.flip(-1)), in_memory)
    # ... and the record's test scores are this averaged model's
    folder, meta, loaded = _scored_saved_and_reloaded(result, export, val, in_memory)
    assert meta["test_time_views"] == "dihedral" and meta["version"] == 3
    assert loaded.test_time_views == "dihedral"
    # a version-1 file (before test-time views) loads as "none"
    del meta["test_time_views"]
    (folder / CLASSIFIER_META).write_text(json.dumps({**meta, "version": 1}))
    assert load_classifier(folder).test_time_views == "none"


def test_test_time_views_are_refused_where_they_do_not_apply(labelled_npz, export):
    train, val = labelled_npz
    with pytest.raises(ValueError, match="test_time_views applies to protocol finetune only"):
        evaluate(export, data=str(train), protocol="linear", test_data=str(val),
                 test_time_views="hflip")  # fmt: skip
    with pytest.raises(ValueError, match="evaluate: test_time_views must be one of"):
        evaluate(export, data=str(train), protocol="finetune", test_data=str(val),
                 test_time_views="rotate")  # fmt: skip


def test_an_ensemble_is_saved_and_loaded_with_every_member(labelled_npz, export):
    train, val = labelled_npz
    result = evaluate(export, data=str(train), protocol="finetune", test_data=str(val),
                      epochs=1, min_steps=3, ensemble=2, seed=4)  # fmt: skip
    members = result.record["chosen"]["ensemble"]
    assert [m["seed"] for m in members] == [4, 5] and result.record["chosen"]["step"] is None
    clf = result.classifier
    assert clf.ensemble_members == 2
    images = _images(val)
    with torch.no_grad():
        in_memory = clf(images)
    folder, meta, loaded = _scored_saved_and_reloaded(result, export, val, in_memory)
    assert meta["ensemble_members"] == 2 and meta["version"] == 3
    assert loaded.ensemble_members == 2
    (folder / CLASSIFIER_META).write_text(json.dumps({**meta, "ensemble_members": 0}))
    with pytest.raises(ValueError, match="ensemble_members must be an integer >= 1, got 0"):
        load_classifier(folder)
