"""Context autoencoder: the random blocks (per sample, sized to the image), the loss on the
erased region only (or with the context 10x lighter), pictures pasted into the hole, no
adversarial term, two ranks without a gather."""

import pytest
import torch

import selfsup
from selfsup.losses import reconstruction_mse
from selfsup.methods import ContextAutoencoder
from selfsup.methods.context_autoencoder import random_blocks
from tests.ddp_harness import assert_ddp_gradients, run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE, BATCH = 16, 8


def build(**kwargs) -> ContextAutoencoder:
    kwargs = {"image_size": SIZE, "backbone_kwargs": {"width": 4}, **kwargs}
    return selfsup.build("context_ae", backbone="convnet_tiny", **kwargs)


def test_one_block_has_the_drawn_area_and_shape_inside_the_image():
    g = torch.Generator().manual_seed(0)
    like = torch.zeros(256, 3, 40, 60)
    region = random_blocks(like, 1, 1.0, (0.05, 0.1), (0.3, 3.3), g)
    assert region.shape == (256, 1, 40, 60) and region.dtype == torch.bool
    area = region.flatten(1).float().sum(1) / (40 * 60)
    assert (area > 0.035).all() and (area < 0.12).all()  # 5-10 %, up to the rounding
    rows, cols = region[:, 0].any(dim=2), region[:, 0].any(dim=1)
    heights, widths = rows.sum(1), cols.sum(1)
    assert torch.equal(heights * widths, region.flatten(1).sum(1))  # one solid rectangle
    ratio = widths / heights
    assert ratio.min() < 0.8 and ratio.max() > 1.5  # the aspect ratio varies per sample
    assert len({tuple(r.nonzero()[0].tolist()) for r in region[:, 0]}) > 200  # and the place
    small = random_blocks(torch.zeros(4, 1, 3, 3), 1, 1.0, (0.01, 0.02), (1.0, 1.0), g)
    assert (small.flatten(1).sum(1) == 1).all()  # at least a pixel on tiny images


def test_blocks_are_kept_with_their_probability_and_scale_with_the_image():
    g = torch.Generator().manual_seed(1)
    for size in (16, 64):
        region = random_blocks(
            torch.zeros(2000, 1, size, size), 10, 0.3, (0.05, 0.1), (0.3, 3.3), g
        )
        erased = region.flatten(1).float().mean(1)
        assert erased.mean().item() == pytest.approx(0.19, abs=0.03)  # ~1 - (1 - 0.3 x 0.075)^10
        assert (erased == 0).float().mean().item() == pytest.approx(0.7**10, abs=0.015)
    assert not random_blocks(torch.zeros(4, 1, 8, 8), 10, 0.0, (0.05, 0.1), (0.3, 3.3), g).any()


def test_the_erased_pixels_are_zero_and_only_they_count():
    torch.manual_seed(0)
    method = build()
    view = torch.randn(BATCH, 3, SIZE, SIZE)
    corrupted, region = method.corrupt(view, torch.Generator().manual_seed(0))
    assert torch.equal(corrupted, view.masked_fill(region, 0.0))
    output = torch.randn(BATCH, 3, SIZE, SIZE)
    loss = method.reconstruction_loss(output, view, region)
    assert loss.item() == pytest.approx(reconstruction_mse(output, view, region).item())
    elsewhere = torch.where(region, output, output + 5.0)  # change every kept pixel
    assert method.reconstruction_loss(elsewhere, view, region).item() == pytest.approx(loss.item())

    weighted = build(context_weight=0.1)
    expected = reconstruction_mse(output, view, region) + 0.1 * reconstruction_mse(
        output, view, ~region
    )
    got = weighted.reconstruction_loss(output, view, region)
    assert got.item() == pytest.approx(expected.item())

    torch.manual_seed(3)
    corrupted, region = method.corrupt(view)
    with torch.no_grad():
        output = method.decoder(method.backbone.feature_map(corrupted), (SIZE, SIZE))
    torch.manual_seed(3)  # the same blocks inside the loss
    out = method.training_loss([view])
    assert out.loss.item() == pytest.approx(reconstruction_mse(output, view, region).item())


def test_wafer_maps_erase_to_off_wafer_and_score_die_codes_in_the_hole():
    torch.manual_seed(0)
    method = build(in_channels=1, view_style="wafer")
    images = torch.randint(0, 3, (BATCH, 1, SIZE, SIZE), dtype=torch.uint8)
    view = method.views(images)[0]
    corrupted, region = method.corrupt(view, torch.Generator().manual_seed(0))
    assert (corrupted[region.expand_as(view)] == 0).all()
    logits = torch.randn(BATCH, 3, SIZE, SIZE)
    target = (view[:, 0] * 2).round().long()
    per_die = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    keep = region[:, 0].float()
    expected = ((per_die * keep).sum((1, 2)) / keep.sum((1, 2)).clamp_min(1)).mean()
    got = method.reconstruction_loss(logits, view, region)
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)


def test_pictures_paste_the_reconstruction_into_the_hole_only():
    torch.manual_seed(0)
    method = build(block_p=1.0)
    images = torch.randint(0, 256, (4, 3, SIZE, SIZE), dtype=torch.uint8)
    pictures = method.reconstruction_examples(images)
    assert list(pictures) == ["inputs", "corrupted", "reconstructions"]
    _, region = method.corrupt(method.views.preprocess(images), torch.Generator().manual_seed(0))
    kept = ~region.expand(-1, 3, -1, -1)
    assert torch.equal(pictures["reconstructions"][kept], pictures["inputs"][kept])
    assert not torch.equal(pictures["corrupted"], pictures["inputs"])


def test_bad_arguments_name_the_argument_and_there_is_no_adversarial_flag():
    for kwargs, pattern in (
        ({"num_blocks": 0}, "context_ae: num_blocks must be an integer >= 1"),
        ({"block_p": 1.5}, "context_ae: block_p must be a probability"),
        ({"block_scale": (0.2, 0.1)}, "context_ae: block_scale must be a"),
        ({"block_scale": (0.1, 2.0)}, r"context_ae: block_scale must lie in \(0, 1\]"),
        ({"block_ratio": (0.0, 2.0)}, "context_ae: block_ratio_low must be > 0"),
        ({"context_weight": -1.0}, "context_ae: context_weight must be >= 0"),
    ):
        with pytest.raises(ValueError, match=pattern):
            build(**kwargs)
    with pytest.raises(TypeError, match="adversarial"):
        build(adversarial=True)  # not implemented, so not offered (see the class docstring)


def test_a_rebuild_from_the_record_keeps_the_blocks():
    method = build(block_scale=(0.02, 0.05), num_blocks=4)
    recorded = method.hyperparameters()
    again = selfsup.build("context_ae", **recorded)
    assert again.block_scale == (0.02, 0.05) and again.num_blocks == 4
    assert again.hyperparameters() == recorded


def masked_grads(data, rows):
    prediction = data["prediction"][rows].clone().requires_grad_()
    region = data["region"][rows]
    loss = reconstruction_mse(prediction, data["target"][rows], region)
    (loss + 0.1 * reconstruction_mse(prediction, data["target"][rows], ~region)).backward()
    return {"prediction": prediction.grad}


def test_two_ranks_give_the_one_process_gradients_without_a_gather():
    g = torch.Generator().manual_seed(0)
    like = torch.zeros(BATCH, 3, 8, 8)
    data = {
        "prediction": torch.randn(BATCH, 3, 8, 8, generator=g),
        "target": torch.randn(BATCH, 3, 8, 8, generator=g),
        "region": random_blocks(like, 3, 0.6, (0.05, 0.2), (0.3, 3.3), g),  # sizes differ
    }
    assert_ddp_gradients(masked_grads, data, run_on_ranks(masked_grads, data))
