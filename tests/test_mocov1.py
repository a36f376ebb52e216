"""MoCo v1: MoCo v2's machinery with a linear head, t = 0.07 and InstDisc's views; its queue
moves with shuffled keys, in one process and on two ranks."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import selfsup
from selfsup.methods import MoCoV1, MoCoV2
from selfsup.methods.shuffle_bn import shuffled_key_forward
from tests.ddp_harness import WORLD, run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")
BATCH, SIZE = 8, 16


def build(**kwargs) -> MoCoV1:
    kwargs = {"proj_dim": 8, "queue_size": 32, **kwargs}
    return selfsup.build(
        "mocov1", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=SIZE, **kwargs
    )


def views(seed: int = 0, batch: int = BATCH) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, 3, SIZE, SIZE, generator=g) for _ in range(2)]


def test_paper_defaults_and_a_linear_head():
    defaults = selfsup.list_methods()["mocov1"]
    assert defaults["temperature"] == 0.07 and defaults["queue_size"] == 65536
    assert defaults["proj_dim"] == 128 and defaults["num_proj_layers"] == 1
    assert defaults["base_momentum"] == 0.999 and defaults["shuffle_bn"] is True
    method = build()
    assert isinstance(method, MoCoV2) and type(method).view_recipe == "mocov1"
    assert method.momentum_at(0.0) == method.momentum_at(0.8) == pytest.approx(0.999)
    (fc,) = method.projector
    assert isinstance(fc, nn.Linear) and (fc.in_features, fc.out_features) == (32, 8)
    again = selfsup.build("mocov1", **method.hyperparameters())
    assert again.hyperparameters() == method.hyperparameters()


def test_natural_views_are_instdisc_augmentations_and_wafer_views_work():
    params = build().views.params
    assert params["crop_scale"] == (0.2, 1.0) and params["jitter_p"] == 1.0
    assert (params["brightness"], params["contrast"]) == (0.4, 0.4)
    assert (params["saturation"], params["hue"]) == (0.4, 0.4)
    assert params["grayscale_p"] == 0.2 and params["blur_p"] == 0.0 and params["hflip_p"] == 0.5
    images = torch.randint(0, 256, (BATCH, 3, 20, 20), dtype=torch.uint8)
    assert [v.shape for v in build().views(images)] == [(BATCH, 3, SIZE, SIZE)] * 2

    wafer = build(in_channels=1, view_style="wafer")
    codes = torch.randint(0, 3, (BATCH, 1, 20, 20), dtype=torch.uint8)
    wafer_views = wafer.views(codes)
    assert [v.shape for v in wafer_views] == [(BATCH, 1, SIZE, SIZE)] * 2
    simclr_wafer = selfsup.build("simclr", backbone="convnet_tiny", in_channels=1,
                                 image_size=SIZE, view_style="wafer")  # fmt: skip
    assert wafer.views.params == simclr_wafer.views.params
    loss = wafer(codes)
    assert torch.isfinite(loss)
    loss.backward()


def test_the_queue_moves_with_the_normalised_shuffled_keys():
    torch.manual_seed(0)
    method = build(bn_splits=2)
    v = views()
    key_encoder = nn.Sequential(method.key_backbone, method.key_projector)
    torch.manual_seed(3)
    expected = F.normalize(shuffled_key_forward(key_encoder, v[1], 2), dim=1)
    old = method.queue.keys.clone()
    torch.manual_seed(3)  # the same permutation inside training_loss
    out = method.training_loss(v)
    out.loss.backward()
    assert int(method.queue.ptr) == BATCH
    assert torch.allclose(method.queue.keys[:BATCH], expected, atol=1e-6)
    assert torch.equal(method.queue.keys[BATCH:], old[BATCH:])
    assert not torch.allclose(method.queue.keys[:BATCH], old[:BATCH])
    method.training_loss(views(seed=1)).loss.backward()
    assert int(method.queue.ptr) == 2 * BATCH


def test_bad_arguments_name_the_argument():
    for kwargs, name in (
        ({"temperature": 0.0}, "temperature"),
        ({"num_proj_layers": 0}, "num_proj_layers"),
        ({"bn_splits": 0}, "bn_splits"),
    ):
        with pytest.raises(ValueError, match=name):
            build(**kwargs)
    with pytest.raises(ValueError, match="mocov1: temperature"):
        build(temperature=-1.0)


# --- two ranks: a training step with shuffled keys equals one process on the global batch ------

LOCAL = 4


def ddp_step(data, rows):
    """One step's loss, gradients and queue; 2 ranks forward 1 BatchNorm group each, the
    1-process reference 2 groups: the same groups when the permutation is the same."""
    distributed = torch.distributed.is_initialized()
    torch.manual_seed(0)
    method = build(bn_splits=1 if distributed else WORLD)
    out = method.training_loss([v[rows] for v in data["views"]])
    out.loss.backward()
    grads = [p.grad.clone() for p in method.backbone.parameters()]
    grads += [p.grad.clone() for p in method.projector.parameters()]
    return {"loss": out.loss.detach(), "grads": grads, "queue": method.queue.keys.clone(),
            "ptr": method.queue.ptr.clone()}  # fmt: skip


def test_on_two_ranks_the_step_equals_one_process():
    data = {"views": views(seed=4, batch=WORLD * LOCAL)}
    results = run_on_ranks(ddp_step, data, batch=WORLD * LOCAL)
    reference = ddp_step(data, slice(None))
    mean_loss = sum(r["loss"] for r in results) / WORLD
    assert mean_loss.item() == pytest.approx(reference["loss"].item(), abs=1e-5)
    for rank, result in enumerate(results):
        assert torch.equal(result["queue"], results[0]["queue"])
        assert torch.allclose(result["queue"], reference["queue"], atol=1e-5), rank
        assert int(result["ptr"]) == int(reference["ptr"]) == WORLD * LOCAL
    for i, expected in enumerate(reference["grads"]):
        averaged = sum(r["grads"][i] for r in results) / WORLD
        assert torch.allclose(averaged, expected, atol=1e-5), i
