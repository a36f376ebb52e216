"""FixMatch (Sohn et al. 2020): its loss, its fine-tuning step, `eval finetune --semi`."""

import json

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from selfsup.eval.api import evaluate
from selfsup.eval.finetune import Classifier, FixMatch, _Trainer
from selfsup.losses import fixmatch_loss


def test_loss_of_a_hand_case():
    # sample 0: weak softmax max = e^4/(e^4+1) = 0.982 >= 0.95 -> pseudo-label 0;
    # sample 1: max = e^1/(e^1+1) = 0.731 < 0.95 -> masked (counts as 0 in the mean)
    weak = torch.tensor([[4.0, 0.0], [1.0, 0.0]])
    strong = torch.tensor([[0.0, 2.0], [5.0, 0.0]], requires_grad=True)
    loss, mask = fixmatch_loss(weak, strong, threshold=0.95)
    expected = F.cross_entropy(strong[:1], torch.tensor([0])) / 2
    assert mask.tolist() == [True, False]
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert strong.grad[1].abs().sum() == 0  # the masked sample teaches nothing


def test_pseudo_labels_come_from_the_weak_view_only():
    weak = torch.tensor([[0.0, 9.0]], requires_grad=True)
    strong = torch.tensor([[9.0, 0.0]], requires_grad=True)
    loss, mask = fixmatch_loss(weak, strong)
    assert mask.item() and loss.item() > 8  # the label is the weak view's class 1
    loss.backward()
    assert weak.grad is None or weak.grad.abs().sum() == 0  # no gradient through the labels


def test_threshold_one_masks_everything_and_shapes_are_checked():
    loss, mask = fixmatch_loss(torch.randn(5, 3), torch.randn(5, 3), threshold=1.0)
    assert not mask.any() and loss.item() == 0
    with pytest.raises(ValueError, match="equal shape"):
        fixmatch_loss(torch.randn(5, 3), torch.randn(4, 3))


class _Features(nn.Module):
    feature_dim = 4

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3 * 4 * 4, 4)

    def forward(self, x):
        return self.linear(x.flatten(1))


def test_a_fixmatch_step_adds_the_unlabelled_term_with_one_forward_pass():
    """The step's gradient is that of CE(labelled) + weight * fixmatch_loss(weak, strong), on
    the logits of ONE forward pass over labelled + weak + strong; the mask rate comes back."""
    torch.manual_seed(0)
    model = Classifier(_Features(), 2)
    nn.init.normal_(model.head.weight, std=5.0)
    x, y = torch.randn(2, 3, 4, 4), torch.tensor([0, 1])
    weak, strong = torch.randn(3, 3, 4, 4), torch.randn(3, 3, 4, 4)
    reference = Classifier(_Features(), 2)
    reference.load_state_dict(model.state_dict())
    logits = reference(torch.cat([x, weak, strong]))
    # the threshold at the middle weak confidence: 2 of the 3 unlabelled samples pass
    threshold = logits[2:5].detach().softmax(1).max(1).values.sort().values[1].item()
    semi = FixMatch(torch.zeros(6, 3, 4, 4, dtype=torch.uint8), weak=lambda x: x.float(),
                    strong=lambda x: x.float(), threshold=threshold, weight=2.0)  # fmt: skip
    trainer = _Trainer.create(model, lambda x: x, lambda x: x, lr=0.0, backbone_lr=0.0,
                              weight_decay=0.0, class_weight=None, label_smoothing=0.0,
                              precision="32-true")  # fmt: skip
    trainer.semi = semi
    unlabelled, mask = fixmatch_loss(logits[2:5], logits[5:], threshold)
    (F.cross_entropy(logits[:2], y) + 2.0 * unlabelled).backward()
    calls = []
    model.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    rate = trainer.step(x, y, (weak, strong))
    assert calls == [8]  # one pass: 2 labelled + 3 weak + 3 strong
    assert rate == pytest.approx(2 / 3) and mask.sum() == 2
    for (name, p), q in zip(model.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_eval_finetune_semi_fixmatch_records_what_it_did(labelled_npz, export):
    train, val = labelled_npz
    result = evaluate(export, data=str(train), protocol="finetune", test_data=str(val),
                      label_fraction=0.25, epochs=1, min_steps=4, semi="fixmatch")  # fmt: skip
    semi = result.record["chosen"]["semi"]
    assert semi["method"] == "fixmatch" and semi["threshold"] == 0.95 and semi["ratio"] == 7
    # unlabelled: train before the label fraction (96 minus the carved val of 10 %)
    assert semi["unlabeled"] == result.record["splits"]["unlabeled"]["size"] == 96 - 9
    assert result.record["splits"]["train"]["size"] < semi["unlabeled"]
    assert len(semi["mask_rate"]) >= 1 and all(0 <= r <= 1 for _, r in semi["mask_rate"])
    assert result.name.endswith("_fixmatch") and result.classifier is not None
    assert json.loads(json.dumps(result.record)) == result.record


@pytest.mark.parametrize(
    ("options", "message"),
    [({"protocol": "linear", "semi": "fixmatch"}, "finetune only"),
     ({"protocol": "finetune", "semi": "mixmatch"}, "semi must be one of")],
)  # fmt: skip
def test_semi_is_refused_where_it_does_not_apply(options, message):
    with pytest.raises(ValueError, match=message):
        evaluate("unused", **options)


def test_unlabelled_data_may_not_be_the_test_data(labelled_npz, export):
    train, val = labelled_npz
    with pytest.raises(ValueError, match="FixMatch may only learn from training images"):
        evaluate(export, data=str(train), protocol="finetune", test_data=str(val),
                 semi="fixmatch", unlabeled_data=str(val))  # fmt: skip


def _dihedral(x: torch.Tensor) -> list[torch.Tensor]:
    turns = [torch.rot90(x, k, dims=(-2, -1)) for k in range(4)]
    return turns + [t.flip(-1) for t in turns]


def test_the_weak_view_is_turns_and_flips_whatever_the_backbone_was_pretrained_on():
    from selfsup.eval.supervised import fixmatch_with
    from selfsup.views import make_views

    maps = torch.randint(0, 3, (6, 1, 16, 16), dtype=torch.uint8)
    pretraining = make_views(
        "simclr", image_size=16, in_channels=1, style="wafer",
        regrid_p=1.0, free_rotation_degrees=180.0, crop_scale=(0.2, 0.5), die_flip_p=0.5,
    )  # fmt: skip
    semi = fixmatch_with(pretraining, maps)
    weak = semi.weak(maps, torch.Generator().manual_seed(0))
    plain = pretraining.preprocess(maps)
    for i in range(len(maps)):  # every weak view is the map itself, turned and / or mirrored
        assert any(torch.equal(weak[i], t) for t in _dihedral(plain[i])), i
    strong = semi.strong(maps, torch.Generator().manual_seed(0))
    assert strong.shape == weak.shape and not torch.equal(strong, weak)


@pytest.mark.parametrize(
    "name, style, channels, params",
    [
        ("dino", "wafer", 1, {}),  # DINO's recipe has no crop_scale: FixMatch used to raise
        ("simclr", "wafer", 1, {"encoding": "fail_mask"}),
        ("byol", "natural", 3, {"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.5, 0.5)}),
    ],
)
def test_fixmatch_views_keep_the_backbones_input(name, style, channels, params):
    from selfsup.eval.supervised import fixmatch_with
    from selfsup.views import make_views

    recipe = make_views(name, image_size=16, in_channels=channels, style=style, **params)
    semi = fixmatch_with(recipe, torch.randint(0, 3, (4, channels, 16, 16), dtype=torch.uint8))
    for view in (semi.weak, semi.strong):
        out = view(semi.unlabeled)
        assert out.shape == recipe.preprocess(semi.unlabeled).shape
    plain = recipe.plain()
    assert (plain.encoding, plain.mean, plain.std) == (recipe.encoding, recipe.mean, recipe.std)
