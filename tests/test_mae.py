"""MAE (He et al. 2022): the loss by hand, DDP without a gather, masking in the encoder, the
decoder sizes, views, wafer maps, the reconstruction pictures and the refusal of non-ViTs."""

import pytest
import torch
from torch import nn

import selfsup
from selfsup.losses import mae_loss
from selfsup.methods import MAE
from selfsup.methods.mae import decoder_sizes
from selfsup.vit import patchify
from tests.ddp_harness import assert_ddp_gradients, run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"depth": 1, "width": 32, "heads": 2}
SIZE = 16  # 2 px patches: 8 x 8 = 64 patches, 16 visible


def build(**kwargs) -> MAE:
    torch.manual_seed(0)
    kwargs = {"backbone": "vit_tiny", "backbone_kwargs": TINY, "image_size": SIZE, **kwargs}
    return selfsup.build("mae", **kwargs)


def images(batch: int = 4, channels: int = 3, high: int = 256, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, channels, SIZE, SIZE)
    return torch.randint(0, high, shape, dtype=torch.uint8, generator=g)


# --- the loss -------------------------------------------------------------------------------------


def test_loss_by_hand_on_the_masked_patches_only():
    target = torch.tensor([[[1.0, 3.0], [0.0, 4.0], [5.0, 5.0]]])  # 1 sample, 3 patches of 2
    pred = torch.tensor([[[0.0, 0.0], [9.0, 9.0], [4.0, 6.0]]])
    mask = torch.tensor([[1.0, 0.0, 1.0]])  # patch 1 is visible: its error does not count
    raw = ((1 + 9) / 2 + (1 + 1) / 2) / 2  # (mean sq. error of patch 0 + of patch 2) / 2
    assert mae_loss(pred, target, mask, norm_pix=False).item() == pytest.approx(raw)
    # normalised: patch 0 -> (-1, 1) / sqrt(2 + 1e-6) (unbiased var 2); patch 2 -> (0, 0)
    scale = 1 / (2 + 1e-6) ** 0.5
    normed = (((0 + scale) ** 2 + (0 - scale) ** 2) / 2 + (16 + 36) / 2) / 2
    assert mae_loss(pred, target, mask).item() == pytest.approx(normed, rel=1e-6)
    pred.requires_grad_()
    mae_loss(pred, target, mask).backward()
    assert torch.equal(pred.grad[0, 1], torch.zeros(2)) and pred.grad[0, 0].abs().sum() > 0
    with pytest.raises(ValueError, match="mae_loss: pred"):
        mae_loss(pred, target[:, :2], mask)


def test_loss_is_float32_under_autocast():
    pred, target = torch.randn(2, 4, 12).bfloat16(), torch.randn(2, 4, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mae_loss(pred, target, torch.ones(2, 4)).dtype == torch.float32


def _mae_gradients(data, rows):
    pred = data["pred"][rows].clone().requires_grad_()
    mae_loss(pred, data["target"][rows], data["mask"][rows]).backward()
    return {"pred": pred.grad}


def test_ddp_gradients_equal_one_process_without_a_gather():
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(8, 6, generator=g)
    mask = (noise.argsort(dim=1).argsort(dim=1) >= 2).double()  # 4 of 6 masked in every sample
    data = {
        "pred": torch.randn(8, 6, 5, generator=g, dtype=torch.float64),
        "target": torch.randn(8, 6, 5, generator=g, dtype=torch.float64),
        "mask": mask,
    }
    assert_ddp_gradients(_mae_gradients, data, run_on_ranks(_mae_gradients, data))


# --- the method -----------------------------------------------------------------------------------


def test_decoder_sizes_follow_the_encoder_in_the_papers_vit_l_ratio():
    assert decoder_sizes(1024, 24) == (512, 8, 16)  # the paper's ViT-L decoder
    assert decoder_sizes(768, 12) == (384, 4, 12)
    assert decoder_sizes(192, 12) == (96, 4, 3)
    assert decoder_sizes(32, 1) == (16, 1, 1)
    assert decoder_sizes(200, 12) == (100, 4, 2)  # 3 heads do not divide 100
    assert decoder_sizes(192, 12, decoder_dim=64) == (64, 4, 2)
    method = build()
    recorded = method.hyperparameters()
    assert (recorded["decoder_dim"], recorded["decoder_depth"], recorded["decoder_heads"]) == (
        16,
        1,
        1,
    )
    assert method.decoder_pred.out_features == 2 * 2 * 3


def test_paper_defaults_views_and_optimizer():
    defaults = selfsup.list_methods()["mae"]
    assert defaults["mask_ratio"] == 0.75 and defaults["norm_pix_loss"] is True
    assert defaults["backbone"] == "vit_base"
    assert MAE.optimizer_defaults == {
        "optimizer": "adamw",
        "lr": 1.5e-4,
        "weight_decay": 0.05,
        "adam_betas": [0.9, 0.95],
    }
    method = build()
    params = method.views.params
    assert method.views.num_views == 1 and params["crop_scale"] == (0.2, 1.0)
    assert params["jitter_p"] == params["grayscale_p"] == params["blur_p"] == 0.0
    assert params["hflip_p"] == 0.5


def test_encoder_runs_on_the_visible_quarter_and_the_decoder_on_every_patch():
    method = build()
    seen = {}

    def record(name):
        def hook(module, args):
            seen[name] = args[0].shape

        return hook

    method.backbone.trunk.encoder.layers[0].register_forward_pre_hook(record("encoder"))
    method.decoder[0].register_forward_pre_hook(record("decoder"))
    pred, mask, latent = method.reconstruct(torch.randn(4, 3, SIZE, SIZE))
    assert seen == {"encoder": (4, 1 + 16, 32), "decoder": (4, 1 + 64, 16)}
    assert pred.shape == (4, 64, 12) and latent.shape == (4, 17, 32)
    assert torch.equal(mask.mask.sum(dim=1), torch.full((4,), 48.0))


def test_training_loss_is_mae_loss_of_the_reconstruction():
    method = build()
    x = torch.randn(4, 3, SIZE, SIZE)
    torch.manual_seed(3)
    out = method.training_loss([x])
    torch.manual_seed(3)
    pred, mask, _ = method.reconstruct(x)
    expected = mae_loss(pred, patchify(x, 2), mask.mask)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert 0 < float(out.logs["collapse_std"]) < 2
    raw = build(norm_pix_loss=False)
    torch.manual_seed(3)
    pred, mask, _ = raw.reconstruct(x)
    torch.manual_seed(3)
    assert raw.training_loss([x]).loss.item() == pytest.approx(
        mae_loss(pred, patchify(x, 2), mask.mask, norm_pix=False).item(), rel=1e-6
    )


def test_a_few_steps_with_the_papers_adamw_lower_the_loss_on_one_batch():
    method = build()
    optimizer = torch.optim.AdamW(method.parameters(), lr=3e-3, betas=(0.9, 0.95))
    x = method.views.preprocess(images(8))
    first = None
    for step in range(6):
        torch.manual_seed(step % 2)  # two masks, alternating
        loss = method.training_loss([x]).loss
        first = loss.item() if first is None else first
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.manual_seed(1)
    assert method.training_loss([x]).loss.item() < first


def test_wafer_maps_and_other_sizes():
    method = build(in_channels=1, view_style="wafer")
    codes = images(4, channels=1, high=3)
    assert torch.isfinite(method(codes))
    pictures = method.reconstruction_examples(codes)
    assert set(pictures["inputs"].unique().tolist()) <= {0, 128, 255}
    two = build(in_channels=1, view_style="wafer", views={"encoding": "fail_mask"})
    assert two.backbone.in_channels == 2 and torch.isfinite(two(codes))
    shown = two.reconstruction_examples(codes)
    assert shown["masked"].shape == (4, 1, SIZE, SIZE)
    assert torch.equal(shown["inputs"], pictures["inputs"])  # 2 channels shown as code / 2
    bigger = build(image_size=32)  # patch 4 px at 32 px: 64 patches again
    assert bigger.patch_size == 4 and torch.isfinite(bigger(torch.rand(2, 3, 32, 32)))
    with pytest.raises(ValueError, match="multiples of the patch size 2 px"):
        method.training_loss([torch.randn(2, 1, 15, 15)])
    with pytest.raises(ValueError, match="mae needs 1 view, got 2"):
        method.training_loss([torch.randn(2, 1, 16, 16)] * 2)


def test_reconstruction_examples_paste_the_visible_patches_back():
    method = build()
    method.train()
    raw = images(3)
    pictures = method.reconstruction_examples(raw, generator=torch.Generator().manual_seed(0))
    assert method.training
    assert set(pictures) == {"inputs", "masked", "reconstructions"}
    for picture in pictures.values():
        assert picture.dtype == torch.uint8 and picture.shape == (3, 3, SIZE, SIZE)
    grey = (pictures["masked"] == 128).all(dim=1)  # pixels of masked patches
    masked_patches = patchify(grey[:, None].float(), 2).amax(dim=-1)
    assert torch.equal(masked_patches.sum(dim=1), torch.full((3,), 48.0))  # 48 of 64 patches
    visible = ~grey[:, None].expand_as(pictures["inputs"])
    same = pictures["reconstructions"][visible].int() - pictures["inputs"][visible].int()
    assert same.abs().max() <= 1  # the visible patches are the input's (rounding aside)
    again = method.reconstruction_examples(raw, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(again[k], pictures[k]) for k in pictures)


def test_encoder_is_the_vit_alone_and_embed_gives_its_features():
    method = build()
    x = torch.rand(2, 3, SIZE, SIZE)
    assert method.encoder(x).shape == (2, 32)
    assert method.embed(images(2)).shape == (2, 32)


def test_non_vit_backbones_and_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="mae needs a Vision Transformer backbone.*'convnet_tiny'"):
        selfsup.build("mae", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=16)
    module = nn.Sequential(nn.Conv2d(3, 8, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with pytest.raises(ValueError, match="mae needs a Vision Transformer backbone.*'Sequential'"):
        MAE(module, 8, image_size=32)
    with pytest.raises(ValueError, match=r"mae: mask_ratio must be in \(0, 1\)"):
        build(mask_ratio=1.0)
    with pytest.raises(ValueError, match="decoder_dim 18 must be a multiple of 4"):
        build(decoder_dim=18)
    # a ViT built by build_backbone is taken as a module too (benchmarks pass one)
    vit = selfsup.backbones.build_backbone("vit_tiny", 3, image_size=16, **TINY)
    assert torch.isfinite(MAE(vit, image_size=16)(images(2)))
