"""Ensembles of fine-tuned models (selfsup.eval.ensemble): the averaged logits, the members'
seeds and budget, and the record of what each member chose."""

import pytest
import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.eval import ensemble as ensemble_module
from selfsup.eval.ensemble import (
    ConcatFeatures,
    check_seeds,
    ensemble_classifier,
    finetune_ensemble,
    mean_logit_head,
)
from selfsup.eval.finetune import Classifier, FinetuneResult, FinetuneSearch
from selfsup.eval.metrics import macro_f1


def test_mean_logit_head_averages_the_heads_logits():
    torch.manual_seed(0)
    heads = [nn.Linear(5, 3), nn.Linear(7, 3), nn.Linear(5, 3)]
    features = [torch.randn(4, 5), torch.randn(4, 7), torch.randn(4, 5)]
    head = mean_logit_head(heads)
    expected = sum(h(f) for h, f in zip(heads, features, strict=True)) / 3
    torch.testing.assert_close(head(torch.cat(features, 1)), expected)
    with pytest.raises(ValueError, match="same number of classes"):
        mean_logit_head([nn.Linear(5, 3), nn.Linear(5, 2)])


def test_ensemble_classifier_is_the_mean_of_the_members():
    torch.manual_seed(0)
    members = []
    for _ in range(3):
        model = Classifier(build_backbone("convnet_tiny", 1, width=4), 2).eval()
        nn.init.normal_(model.head.weight)
        members.append(model)
    ensemble = ensemble_classifier(members).eval()
    assert isinstance(ensemble.backbone, ConcatFeatures)
    assert ensemble.backbone.feature_dim == 3 * members[0].backbone.feature_dim
    x = torch.rand(6, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ensemble(x), sum(m(x) for m in members) / 3)


def blobs(n, seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 80, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    images[labels == 1, :, :4] += 150
    return images, labels


def test_finetune_ensemble_trains_one_member_per_seed_and_scores_their_mean():
    train_x, train_y = blobs(32, 0)
    val_x, val_y = blobs(16, 1)

    def preprocess(x):
        return x.float() / 255

    backbone = build_backbone("convnet_tiny", 1, width=4)
    fitted = finetune_ensemble(
        backbone, train_x, train_y, val_x, val_y, seeds=[3, 7], preprocess=preprocess,
        num_classes=2, augment=preprocess, epochs=2, batch_size=16,
    )  # fmt: skip
    a, b = (m.result.model for m in fitted.members)
    assert not torch.equal(a.head.weight, b.head.weight)  # other seeds, other members
    result = fitted.result
    assert result.step is None and result.epoch is None
    assert result.steps_run == sum(m.result.steps_run for m in fitted.members)
    with torch.no_grad():
        mean = (a.eval()(preprocess(val_x)) + b.eval()(preprocess(val_x))) / 2
    torch.testing.assert_close(result.logits(val_x, preprocess), mean)
    assert result.val_macro_f1 == pytest.approx(macro_f1(val_y, mean.argmax(1), 2))
    record = fitted.selection_record()
    assert record["step"] is None and record["val_macro_f1"] == result.val_macro_f1
    assert [m["seed"] for m in record["ensemble"]] == [3, 7]
    assert record["ensemble"][0]["step"] == fitted.members[0].result.step
    # one seed: the member itself, recorded as a plain fine-tuning
    single = finetune_ensemble(
        backbone, train_x, train_y, val_x, val_y, seeds=[3], preprocess=preprocess,
        num_classes=2, augment=preprocess, epochs=2, batch_size=16,
    )  # fmt: skip
    assert single.result is single.members[0].result
    assert "ensemble" not in single.selection_record()
    assert single.selection_record()["step"] == single.result.step


def test_the_budget_is_split_between_the_members(monkeypatch):
    calls = []

    def fake_search(*args, seed, max_minutes, **kwargs):
        calls.append((seed, max_minutes))
        model = Classifier(build_backbone("convnet_tiny", 1, width=4), 2)
        return FinetuneSearch(FinetuneResult(model, 5, 1.0, 0.5), 0.1, 0.01, [])

    monkeypatch.setattr(ensemble_module, "finetune_lr_search", fake_search)
    val_x, val_y = blobs(8, 1)
    finetune_ensemble(None, None, None, val_x, val_y, seeds=[0, 1, 2, 3], max_minutes=10,
                      preprocess=lambda x: x.float() / 255, num_classes=2)  # fmt: skip
    assert calls == [(0, 2.5), (1, 2.5), (2, 2.5), (3, 2.5)]


@pytest.mark.parametrize("seeds", [[], [1, 1]])
def test_seeds_must_be_distinct(seeds):
    with pytest.raises(ValueError, match="ensemble seeds must be distinct"):
        check_seeds(seeds)
