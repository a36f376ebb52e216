"""Vision Transformer backbones (torchvision's, in selfsup.vit): registry, sizes, pooling,
position-embedding interpolation, visible-token encoding, export / reload, DINO and MoCo v3."""

import math
import subprocess
import sys

import pytest
import torch

import selfsup
from selfsup.backbones import BACKBONES, build_backbone
from selfsup.vit import (
    default_patch_size,
    patchify,
    random_masking,
    sincos_position_embedding,
    unpatchify,
)

pytestmark = pytest.mark.usefixtures("one_thread")
TINY = {"depth": 1, "width": 32, "heads": 2}  # a ViT small enough for CPU tests


def tiny_vit(image_size: int = 16, **kwargs) -> selfsup.backbones.Backbone:
    torch.manual_seed(0)
    return build_backbone("vit_tiny", kwargs.pop("in_channels", 3), image_size=image_size,
                          **{**TINY, **kwargs})  # fmt: skip


def test_default_patch_size_rule():
    sizes = {16: 2, 28: 2, 32: 4, 48: 6, 64: 8, 96: 12, 128: 16, 224: 16, 8: 1}
    assert {s: default_patch_size(s) for s in sizes} == sizes


def test_registered_with_the_papers_sizes():
    expected = {"vit_tiny": (192, 3, 768), "vit_small": (384, 6, 1536), "vit_base": (768, 12, 3072)}
    for name, (width, heads, mlp) in expected.items():
        with torch.device("meta"):
            backbone = build_backbone(name, 3, image_size=32)
        block = backbone.trunk.encoder.layers[0]
        assert backbone.feature_dim == width and backbone.trunk.depth == 12, name
        assert block.self_attention.num_heads == heads and block.mlp[0].out_features == mlp
        assert backbone.trunk.patch_size == 4 and backbone.name == name


def test_importing_selfsup_backbones_alone_registers_them():
    code = (
        "import sys, selfsup.backbones as b\n"
        "assert 'selfsup.methods' not in sys.modules and 'torchvision' not in sys.modules\n"
        "print(b.build_backbone('vit_tiny', 1, image_size=16, depth=1, width=16, heads=2)"
        ".feature_dim)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "16"


def test_backbones_listing_and_keyword_check(capsys):
    from selfsup.cli import main

    assert main(["backbones"]) == 0
    listing = capsys.readouterr().out
    assert "vit_small  (backbone_kwargs: image_size=224, patch_size=None, pooling='cls'" in listing
    with pytest.raises(ValueError, match=r"'depht' \(did you mean 'depth'\?\)"):
        BACKBONES.check_kwargs("vit_tiny", {"depht": 2}, "backbone_kwargs")


def test_same_outputs_as_torchvisions_vision_transformer():
    from torchvision.models.vision_transformer import VisionTransformer

    backbone = tiny_vit(16)
    reference = VisionTransformer(16, 2, 1, 2, 32, 128, num_classes=1)
    reference.heads = torch.nn.Identity()
    reference.load_state_dict(backbone.trunk.state_dict())
    x = torch.randn(3, 3, 16, 16)
    assert torch.allclose(backbone(x), reference(x), atol=1e-6)


def test_pooling_feature_map_and_channels():
    x = torch.randn(2, 1, 16, 16)
    cls = tiny_vit(16, in_channels=1)
    mean = tiny_vit(16, in_channels=1, pooling="mean")
    assert cls.trunk.conv_proj.in_channels == 1
    fmap = mean.feature_map(x)
    assert fmap.shape == (2, 32, 8, 8)
    assert torch.allclose(mean(x), fmap.mean(dim=(2, 3)), atol=1e-6)
    tokens, grid = cls.trunk.tokens(x)
    assert grid == (8, 8) and torch.equal(cls(x), tokens[:, 0])
    with pytest.raises(ValueError, match=r"expects images \[B, 1, H, W\]"):
        cls(torch.randn(2, 3, 16, 16))


def test_other_image_sizes_interpolate_the_position_embedding():
    trunk = tiny_vit(16).trunk
    assert trunk.position_embedding(8, 8) is trunk.encoder.pos_embedding
    larger = trunk.position_embedding(16, 12)
    assert larger.shape == (1, 1 + 16 * 12, 32)
    assert torch.equal(larger[:, 0], trunk.encoder.pos_embedding[:, 0])  # the class token's
    with torch.no_grad():  # a position embedding constant over the grid stays so
        trunk.encoder.pos_embedding[:, 1:] = torch.arange(32.0)
    assert torch.allclose(trunk.position_embedding(5, 11)[:, 1:], torch.arange(32.0), atol=1e-5)
    for size in (8, 14, 24, 32):  # 14 px: 7 x 7 patches (DINO's local crops at 32 px: 14 px)
        assert trunk(torch.randn(2, 3, size, size)).shape == (2, 32)
    with pytest.raises(ValueError, match="smaller than the ViT's 2 px patches"):
        trunk(torch.randn(1, 3, 1, 1))


def test_encode_visible_sees_only_the_visible_patches():
    trunk = tiny_vit(16).trunk.eval()
    x = torch.randn(2, 3, 16, 16)
    everything = torch.arange(64).expand(2, -1)
    assert torch.allclose(trunk.encode_visible(x, everything), trunk.tokens(x)[0], atol=1e-6)
    mask = random_masking(2, 64, 0.75, generator=torch.Generator().manual_seed(0))
    out = trunk.encode_visible(x, mask.visible)
    assert out.shape == (2, 1 + 16, 32)
    # pixels of masked patches change nothing
    pixel_mask = unpatchify(mask.mask[..., None].expand(-1, -1, 12), 2, (8, 8), 3).bool()
    other = torch.where(pixel_mask, torch.randn_like(x), x)
    assert torch.allclose(trunk.encode_visible(other, mask.visible), out, atol=1e-6)
    with pytest.raises(ValueError, match="visible_idx must be"):
        trunk.encode_visible(x, mask.visible[0])


def test_random_masking_is_per_sample_and_consistent():
    mask = random_masking(5, 16, 0.75, generator=torch.Generator().manual_seed(0))
    assert mask.visible.shape == (5, 4) and mask.mask.shape == (5, 16)
    assert torch.equal(mask.mask.sum(dim=1), torch.full((5,), 12.0))
    assert torch.all(mask.mask.gather(1, mask.visible) == 0)
    # restore undoes the shuffle whose first 4 entries are the visible patches
    shuffle = mask.restore.argsort(dim=1)
    assert torch.equal(shuffle[:, :4], mask.visible)
    assert torch.equal(shuffle.gather(1, mask.restore), torch.arange(16).expand(5, -1))
    assert len({tuple(row.tolist()) for row in mask.visible.sort(dim=1).values}) > 1
    again = random_masking(5, 16, 0.75, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.visible, mask.visible)
    assert random_masking(1, 4, 0.99).visible.shape == (1, 1)  # at least one visible
    with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
        random_masking(1, 4, 1.0)


def test_patchify_order_by_hand_and_round_trip():
    image = torch.arange(16.0).reshape(1, 1, 4, 4)
    patches = patchify(image, 2)
    assert patches.tolist() == [[[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]]
    rgb = torch.randn(2, 3, 8, 12)
    assert patchify(rgb, 4).shape == (2, 6, 48)
    assert patchify(rgb, 4)[0, 0, :3].tolist() == rgb[0, :, 0, 0].tolist()  # (row, col, channel)
    assert torch.equal(unpatchify(patchify(rgb, 4), 4, (2, 3), 3), rgb)
    with pytest.raises(ValueError, match="do not split into 5 px patches"):
        patchify(rgb, 5)


def test_sincos_position_embedding_by_hand():
    table = sincos_position_embedding(1, 2, 4)  # omega = [1]: columns then rows
    expected = [[0, 0, 0, 0], [0, 1, 0, 1], [math.sin(1), math.cos(1), 0, 1]]
    assert torch.allclose(table, torch.tensor(expected))
    assert sincos_position_embedding(3, 5, 16).shape == (16, 16)
    with pytest.raises(ValueError, match="dim % 4 == 0"):
        sincos_position_embedding(2, 2, 6)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="pooling must be one of"):
        tiny_vit(16, pooling="max")
    with pytest.raises(ValueError, match="patch_size 3 does not tile image_size 16"):
        tiny_vit(16, patch_size=3)
    with pytest.raises(ValueError, match="width 32 is not a multiple of heads 3"):
        tiny_vit(16, heads=3)
    with pytest.raises(ValueError, match="depth must be a positive integer"):
        tiny_vit(16, depth=0)


def test_method_passes_its_image_size_and_the_export_reloads(tmp_path):
    from selfsup.artifacts import export_backbone, load_backbone

    torch.manual_seed(0)
    method = selfsup.build("simclr", backbone="vit_tiny", backbone_kwargs=TINY, image_size=32,
                           proj_hidden_dim=16, proj_dim=8)  # fmt: skip
    trunk = method.backbone.trunk
    assert (trunk.image_size, trunk.patch_size) == (32, 4)
    assert method.hyperparameters()["backbone_kwargs"] == TINY  # follows image_size
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(0.01 * torch.randn_like(p))
    export_backbone(method, tmp_path)
    loaded = load_backbone(tmp_path)
    assert loaded.metadata["backbone_kwargs"]["image_size"] == 32
    assert loaded.metadata["backbone_kwargs"]["patch_size"] == 4
    x = torch.randn(4, 3, 32, 32)
    method.backbone.eval()
    assert torch.equal(loaded(x), method.backbone(x))
    assert torch.equal(loaded.feature_map(x), method.backbone.feature_map(x))
    given = selfsup.build("simclr", backbone="vit_tiny", image_size=32,
                          backbone_kwargs={**TINY, "image_size": 16})  # fmt: skip
    assert given.backbone.trunk.image_size == 16 and given.backbone.trunk.patch_size == 2


@pytest.mark.parametrize("name", ["dino", "mocov3"])
def test_dino_and_mocov3_train_a_vit_as_in_their_papers(name):
    heads = {
        "dino": dict(out_dim=32, head_hidden_dim=16, bottleneck_dim=8, num_local_crops=2),
        "mocov3": dict(proj_hidden_dim=16, proj_dim=8, pred_hidden_dim=16),
    }[name]
    torch.manual_seed(0)
    method = selfsup.build(name, backbone="vit_tiny", backbone_kwargs=TINY, image_size=32,
                           **heads)  # fmt: skip
    images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    views = method.views(images)
    if name == "dino":  # local crops of 14 px: a 3 x 3 grid of 4 px patches, interpolated
        assert [v.shape[-1] for v in views] == [32, 32, 14, 14]
    before = [p.detach().clone() for p in method.backbone.parameters()]
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    loss = method.training_loss(views).loss
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    method.on_train_step_end(0.5)
    moved = [
        not torch.equal(b, p) for b, p in zip(before, method.backbone.parameters(), strict=True)
    ]
    assert any(moved)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(method.training_loss(method.views(images)).loss)
