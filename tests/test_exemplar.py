"""Exemplar-CNN (Dosovitskiy et al. 2014): the instance cross-entropy on a hand case, DDP on 2
gloo ranks (gradients of features and of the instance classifier), a smoke run, the views, the
class limit and its memory message, image sizes, wafer maps and a user's module."""

import json
import math

import pytest
import torch
import yaml
from ddp_harness import WORLD, assert_ddp_gradients, run_on_ranks
from test_instdisc import check_sizes_wafers_and_user_module, flat_method

import selfsup
from selfsup.methods import Exemplar
from selfsup.methods.exemplar import classifier_megabytes

pytestmark = pytest.mark.usefixtures("one_thread")
IMAGE_SIZE, BATCH, N = 16, 8, 32
SMALL = dict(proj_dim=8, num_samples=N)


def test_cross_entropy_over_instances_by_hand():
    # features classified directly (proj_dim=None) by 3 class rows; 2 views of images 2 and 0
    method = flat_method(Exemplar, 2, proj_dim=None, num_samples=3)
    with torch.no_grad():
        method.classifier.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    view1 = torch.tensor([[1.0, 2.0], [0.5, 0.0]])[:, :, None, None]
    view2 = torch.tensor([[0.0, -1.0], [2.0, 1.0]])[:, :, None, None]
    # logits: view1 [1, 2, 3], [0.5, 0, 0.5]; view2 [0, -1, -1], [2, 1, 3]; targets 2, 0, 2, 0
    cases = [([1, 2, 3], 2), ([0.5, 0, 0.5], 0), ([0, -1, -1], 2), ([2, 1, 3], 0)]
    expected = sum(
        -math.log(math.exp(row[t]) / sum(math.exp(s) for s in row)) for row, t in cases
    ) / len(cases)
    out = method.training_loss([view1, view2], indices=torch.tensor([2, 0]))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    # argmax: 2 (right), 0 or 2 (tie: 0, right), 0 (wrong), 2 (wrong)
    assert float(out.logs["accuracy"]) == 0.5
    one_view = flat_method(Exemplar, 2, proj_dim=None, num_samples=3, num_views=1)
    one_view.classifier.load_state_dict(method.classifier.state_dict())
    loss = one_view.training_loss([view1], indices=torch.tensor([2, 0])).loss
    assert loss.item() == pytest.approx(sum(
        -math.log(math.exp(row[t]) / sum(math.exp(s) for s in row)) for row, t in cases[:2]
    ) / 2, rel=1e-6)  # fmt: skip


# --- 2 ranks: the classifier is an ordinary parameter, DDP averages its dense gradient ----------

DIM, PROJ, CLASSES = 6, 4, 12


def exemplar_step(data, rows):
    """One training_loss of an Exemplar on a flattening backbone (2 views, seeded weights):
    the gradients of the backbone features, the projector and the instance classifier."""
    torch.manual_seed(0)
    method = flat_method(Exemplar, DIM, proj_dim=PROJ, num_samples=CLASSES)
    views = [v[rows].clone().requires_grad_() for v in data["views"]]
    method.training_loss(views, indices=data["indices"][rows]).loss.backward()
    return {
        "views": tuple(v.grad for v in views),
        "weights": (method.projector[0].weight.grad, method.classifier.weight.grad),
    }


def test_two_ranks_give_the_one_process_gradients():
    g = torch.Generator().manual_seed(2)
    data = {
        "views": torch.randn(2, BATCH, DIM, 1, 1, generator=g),
        "indices": torch.randperm(CLASSES, generator=g)[:BATCH],
    }
    results = run_on_ranks(exemplar_step, data, batch=BATCH)
    assert_ddp_gradients(exemplar_step, data, results, keys=["views"], batch=BATCH)
    reference = exemplar_step(data, slice(None))
    for i, name in enumerate(("projector", "classifier")):
        mean = sum(r["weights"][i] for r in results) / WORLD
        assert torch.allclose(mean, reference["weights"][i], atol=1e-6), name
    # rows of images in no batch get gradient too, through the softmax denominator
    absent = sorted(set(range(CLASSES)) - set(data["indices"].tolist()))
    assert (reference["weights"][1][absent].abs().sum(dim=1) > 0).all()


# --- training, views, limits, sizes --------------------------------------------------------------


def test_smoke_training_moves_weights_and_the_batch_classes():
    torch.manual_seed(0)
    method = selfsup.build(
        "exemplar", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=IMAGE_SIZE,
        **SMALL,
    )  # fmt: skip
    optimizer = torch.optim.SGD(method.parameters(), lr=0.1, momentum=0.9)
    before = [p.detach().clone() for p in method.parameters()]
    g = torch.Generator().manual_seed(0)
    for step in range(3):
        images = torch.randint(0, 256, (BATCH, 3, 20, 20), dtype=torch.uint8, generator=g)
        loss = method(images, indices=torch.arange(BATCH) + step * BATCH)
        assert loss.ndim == 0 and torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.on_train_step_end((step + 1) / 3)
    after = list(method.parameters())
    assert all(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = method(images, indices=torch.arange(BATCH))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_defaults_views_and_data_defaults():
    defaults = selfsup.list_methods()["exemplar"]
    assert (defaults["proj_dim"], defaults["num_views"], defaults["max_classes"]) == (
        128, 2, 200_000,
    )  # fmt: skip
    method = selfsup.build("exemplar", backbone="convnet_tiny", num_samples=10, image_size=16)
    assert method.views.num_views == 2 and method.batch_fields == ("indices",)
    assert method.classifier.weight.shape == (10, 128) and method.classifier.bias is None
    assert method.views.params["crop_scale"] == (0.08, 1.0)  # SimCLR's views
    three = selfsup.build(
        "exemplar", backbone="convnet_tiny", num_samples=10, image_size=16, num_views=3
    )
    assert len(three.views(torch.rand(2, 3, 16, 16))) == 3
    assert Exemplar.data_defaults(1234, 256) == {"num_samples": 1234}
    with pytest.raises(ValueError, match=r"exemplar needs num_views=2 views of each image, got 1"):
        method.training_loss([torch.rand(2, 3, 16, 16)], indices=torch.arange(2))


def test_more_images_than_max_classes_are_refused_with_the_memory_they_take():
    assert classifier_megabytes(1_000_000, 128) == 512.0  # the README's per-million figure
    build = dict(backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=16)
    with pytest.raises(ValueError) as error:
        selfsup.build("exemplar", num_samples=1_000_000, **build)
    message = str(error.value)
    assert (
        "max_classes=200,000" in message and "1,000,000 x 128 float32 weights = 512 MB" in message
    )
    assert "pass max_classes=1000000" in message
    allowed = selfsup.build("exemplar", num_samples=300, max_classes=300, proj_dim=4, **build)
    assert allowed.classifier.weight.shape == (300, 4)
    with pytest.raises(ValueError, match="exemplar needs num_samples"):
        selfsup.build("exemplar", **build)
    with pytest.raises(ValueError, match="exemplar: num_views must be > 0"):
        selfsup.build("exemplar", num_samples=8, num_views=0, **build)
    with pytest.raises(ValueError, match=r"exemplar .*indices=idx"):
        allowed(torch.randint(0, 256, (2, 3, 16, 16), dtype=torch.uint8))
    assert "--set train_max_images=N" in message  # the way to train on a subset


def test_train_max_images_makes_a_subset_the_surrogate_classes(labelled_npz, tmp_path):
    from test_train import tiny_config

    train, val = labelled_npz  # 96 training images
    cfg = tiny_config(train, val, tmp_path, method="exemplar", method_kwargs={"proj_dim": 8},
                      epochs=1, batch_size=8, train_max_images=24)  # fmt: skip
    method, run = selfsup.pretrain(cfg)
    assert method.num_samples == 24 and method.classifier.weight.shape == (24, 8)
    config = yaml.safe_load((run / "config.yaml").read_text())
    assert config["train_max_images"] == 24
    provenance = json.loads((run / "provenance.json").read_text())
    assert (provenance["train_images"], provenance["train_images_of"]) == (24, 96)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["steps"] == 24 // 8  # one epoch of the subset
    assert (summary["knn_bank"]["size"], summary["knn_bank"]["of"]) == (96, 96)  # the whole split


def test_user_module_any_image_size_and_wafer_maps():
    check_sizes_wafers_and_user_module(Exemplar, proj_dim=8)
    check_sizes_wafers_and_user_module(Exemplar, proj_dim=None, num_views=1)
