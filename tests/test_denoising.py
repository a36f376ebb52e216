"""Denoising autoencoder: the reconstruction losses by hand, the masking noise (exact count, per
sample, black pixels), Gaussian noise in pixel units, wafer maps as die codes, pictures, and
two ranks without any gather."""

import math

import pytest
import torch
from torch.nn import functional as F

import selfsup
from selfsup.losses import reconstruction_cross_entropy, reconstruction_mse
from selfsup.methods import DenoisingAutoencoder
from selfsup.methods.autoencoder import displayable, wafer_codes
from selfsup.methods.denoising import gaussian_noise, masking_noise
from tests.ddp_harness import assert_ddp_gradients, run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE, BATCH = 16, 8


def build(**kwargs) -> DenoisingAutoencoder:
    kwargs = {"image_size": SIZE, "backbone_kwargs": {"width": 4}, **kwargs}
    return selfsup.build("denoising_ae", backbone="convnet_tiny", **kwargs)


def codes(seed: int = 0, batch: int = BATCH) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 3, (batch, 1, SIZE, SIZE), dtype=torch.uint8, generator=g)


# --- the losses by hand ---------------------------------------------------------------------------


def test_reconstruction_mse_by_hand_per_sample_over_its_region():
    prediction = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]], [[[0.0, 0.0], [0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 3.0]]]])
    # every pixel: sample 0 (0 + 4 + 9 + 16) / 4 = 7.25, sample 1 (1 + 1 + 1 + 9) / 4 = 3
    assert reconstruction_mse(prediction, target).item() == pytest.approx((7.25 + 3) / 2)
    mask = torch.tensor([[[[1, 1], [0, 0]]], [[[0, 0], [0, 0]]]], dtype=torch.bool)
    # sample 0 over its 2 pixels: (0 + 4) / 2 = 2; sample 1 has no region: 0
    assert reconstruction_mse(prediction, target, mask).item() == pytest.approx((2 + 0) / 2)
    rgb = torch.zeros(1, 3, 1, 2)
    rgb_target = torch.tensor([[[[1.0, 2.0]], [[0.0, 0.0]], [[3.0, 0.0]]]])
    one_pixel = torch.tensor([[[[True, False]]]])  # broadcast over the 3 channels: 1, 0, 9
    assert reconstruction_mse(rgb, rgb_target, one_pixel).item() == pytest.approx(10 / 3)
    with pytest.raises(ValueError, match="prediction .* and target .* differ"):
        reconstruction_mse(prediction, target[:, :, :1])
    with pytest.raises(ValueError, match="does not broadcast"):
        reconstruction_mse(prediction, target, torch.ones(2, 1, 3, 2, dtype=torch.bool))


def test_reconstruction_cross_entropy_by_hand():
    logits = torch.tensor([[[[0.0, 2.0]], [[1.0, 0.0]], [[0.0, 0.0]]]])  # [1, 3 classes, 1, 2]
    target = torch.tensor([[[1, 0]]])
    first = -math.log(math.e / (1 + math.e + 1))  # class 1 of logits (0, 1, 0)
    second = -math.log(math.exp(2) / (math.exp(2) + 1 + 1))  # class 0 of (2, 0, 0)
    assert reconstruction_cross_entropy(logits, target).item() == pytest.approx(
        (first + second) / 2
    )
    only_first = torch.tensor([[[True, False]]])
    assert reconstruction_cross_entropy(logits, target, only_first).item() == pytest.approx(first)
    with pytest.raises(ValueError, match="different positions"):
        reconstruction_cross_entropy(logits, target[:, :, :1])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert reconstruction_cross_entropy(logits.bfloat16(), target).dtype == torch.float32


# --- corruption -----------------------------------------------------------------------------------


def test_masking_noise_forces_an_exact_share_per_sample_to_the_fill_value():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4, 3, 8, 8) + 1.0  # never equal to the fill
    fill = torch.tensor([-1.0, -2.0, -3.0]).view(1, 3, 1, 1)
    corrupted, mask = masking_noise(x, 0.25, fill, generator=g)
    assert mask.shape == x.shape and (mask.flatten(1).sum(1) == 48).all()  # 25 % of 192
    assert torch.equal(corrupted[mask], fill.expand_as(x)[mask])
    assert torch.equal(corrupted[~mask], x[~mask])
    assert not torch.equal(mask[0], mask[1])  # every sample draws its own set
    per_die, die_mask = masking_noise(x, 0.5, fill, per_channel=False, generator=g)
    assert die_mask.shape == (4, 1, 8, 8) and (die_mask.flatten(1).sum(1) == 32).all()
    assert torch.equal(per_die[die_mask.expand_as(x)], fill.expand_as(x)[die_mask.expand_as(x)])
    unchanged, nothing = masking_noise(x, 0.0, fill, generator=g)
    assert unchanged is x and not nothing.any()


def test_the_method_masks_to_black_and_gaussian_noise_is_in_pixel_units():
    method = build()
    view = torch.randn(BATCH, 3, SIZE, SIZE)
    corrupted, region = method.corrupt(view, torch.Generator().manual_seed(0))
    assert region is None  # the loss counts every pixel
    black = method.views.preprocess(torch.zeros(1, 3, 2, 2, dtype=torch.uint8))[0, :, 0, 0]
    changed = corrupted != view
    assert changed.sum().item() == round(0.25 * view.numel() / BATCH) * BATCH
    for c in range(3):
        assert torch.allclose(corrupted[:, c][changed[:, c]], black[c].expand(1), atol=1e-6)

    gaussian = build(noise="gaussian", noise_std=0.2)
    flat = torch.zeros(64, 3, SIZE, SIZE)
    noisy, _ = gaussian.corrupt(flat, torch.Generator().manual_seed(1))
    std = torch.tensor(gaussian.views.std)  # 0.2 in pixels is 0.2 / std in the view
    assert torch.allclose(noisy.std(dim=(0, 2, 3)), 0.2 / std, rtol=0.03)
    again, _ = gaussian_noise(flat, torch.full((1, 3, 1, 1), 0.2), torch.Generator())
    assert again.shape == flat.shape


def test_wafer_maps_are_rebuilt_as_die_codes_with_whole_dies_masked():
    torch.manual_seed(0)
    method = build(in_channels=1, view_style="wafer")
    assert method.decoder.out_channels == 3  # a logit per code
    view = method.views(codes())[0]
    torch.manual_seed(5)
    corrupted, _ = method.corrupt(view)
    assert set(corrupted.unique().tolist()) <= {0.0, 0.5, 1.0}  # masked dies are off-wafer
    assert ((corrupted == 0) | (corrupted == view)).all()
    with torch.no_grad():
        logits = method.decoder(method.backbone.feature_map(corrupted), (SIZE, SIZE))
    expected = F.cross_entropy(logits, (view[:, 0] * 2).round().long())
    torch.manual_seed(5)  # the same corruption inside the loss
    assert method.training_loss([view]).loss.item() == pytest.approx(expected.item(), rel=1e-5)
    fail_mask = torch.stack([(view[:, 0] == 1), (view[:, 0] > 0)], 1).float()
    assert torch.equal(wafer_codes(fail_mask, "fail_mask"), wafer_codes(view, "codes"))


# --- pictures, arguments, training ----------------------------------------------------------------


def test_reconstruction_examples_are_displayable_and_repeatable():
    torch.manual_seed(0)
    for method, images in ((build(), torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8)),
                           (build(in_channels=1, view_style="wafer"), codes(batch=4))):  # fmt: skip
        first = method.reconstruction_examples(images)
        assert list(first) == ["inputs", "corrupted", "reconstructions"]
        channels = 1 if method.view_style == "wafer" else 3
        for batch in first.values():
            assert batch.dtype == torch.uint8 and batch.shape == (4, channels, SIZE, SIZE)
        again = method.reconstruction_examples(images)
        assert all(torch.equal(first[k], again[k]) for k in first)
        assert method.training
        if method.view_style == "wafer":
            assert set(first["inputs"].unique().tolist()) <= {0, 128, 255}
    views = build().views
    pixels = torch.randint(0, 256, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    assert torch.equal(displayable(views.preprocess(pixels), views, "natural"), pixels)


def test_bad_arguments_name_the_argument_and_a_module_without_feature_map_is_refused():
    for kwargs, pattern in (
        ({"noise": "salt"}, "denoising_ae: noise must be one of"),
        ({"noise_fraction": 1.5}, r"denoising_ae: noise_fraction must be in \[0, 1\]"),
        ({"noise_std": 0.0}, "denoising_ae: noise_std must be > 0"),
    ):
        with pytest.raises(ValueError, match=pattern):
            build(**kwargs)

    class Pooled(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    with pytest.raises(ValueError, match="denoising_ae decodes the last feature map.*'Pooled'"):
        DenoisingAutoencoder(Pooled(), 3, image_size=SIZE)


def test_wafer_smoke_training_moves_the_backbone_and_the_decoder():
    torch.manual_seed(0)
    method = build(in_channels=1, view_style="wafer", noise="gaussian")
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    before = [p.detach().clone() for p in method.parameters()]
    for step in range(3):
        loss = method(codes(step))
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(not torch.equal(a, b) for a, b in zip(before, method.parameters(), strict=True))


# --- two ranks: a per-sample loss, no gather ------------------------------------------------------


def mse_grads(data, rows):
    prediction = data["prediction"][rows].clone().requires_grad_()
    reconstruction_mse(prediction, data["target"][rows], data["mask"][rows]).backward()
    whole = data["prediction"][rows].clone().requires_grad_()
    reconstruction_mse(whole, data["target"][rows]).backward()
    return {"masked": prediction.grad, "whole": whole.grad}


def test_two_ranks_give_the_one_process_gradients_without_a_gather():
    g = torch.Generator().manual_seed(0)
    data = {
        "prediction": torch.randn(BATCH, 3, 4, 4, generator=g),
        "target": torch.randn(BATCH, 3, 4, 4, generator=g),
        "mask": torch.rand(BATCH, 1, 4, 4, generator=g) < 0.4,  # a region of its own per sample
    }
    assert_ddp_gradients(mse_grads, data, run_on_ranks(mse_grads, data))
