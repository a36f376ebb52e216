"""The decoder: doublings from the feature map to the image, widths halving, an exact final size,
built from any conv backbone's feature map (or refused with the reason)."""

import pytest
import torch
from torch import nn

from selfsup.backbones import build_backbone
from selfsup.decoders import ConvDecoder, decoder_for, doublings, feature_map_size

pytestmark = pytest.mark.usefixtures("one_thread")


def conv_widths(decoder: ConvDecoder) -> list[int]:
    return [m.out_channels for m in decoder.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize(
    "feature, output, expected",
    [(2, 16, 3), (7, 224, 5), (7, 225, 6), (1, 32, 5), (16, 16, 0), (4, 3, 0), (3, 16, 3)],
)
def test_doublings_reach_at_least_the_output_size(feature, output, expected):
    assert doublings(feature, output) == expected
    assert feature * 2**expected >= output
    assert expected == 0 or feature * 2 ** (expected - 1) < output


def test_widths_halve_down_to_the_floor_and_the_output_has_the_asked_size():
    decoder = ConvDecoder(256, 3, 5, min_width=16)
    assert conv_widths(decoder) == [128, 64, 32, 16, 16, 3]
    out = decoder(torch.randn(2, 256, 7, 7), (225, 225))
    assert out.shape == (2, 3, 225, 225)
    assert decoder(torch.randn(2, 256, 7, 7)).shape == (2, 3, 224, 224)  # 7 x 2^5
    assert conv_widths(ConvDecoder(8, 5, 2, min_width=16)) == [8, 8, 5]  # never wider than D
    assert ConvDecoder(8, 2, 0)(torch.randn(1, 8, 4, 4), (6, 5)).shape == (1, 2, 6, 5)


@pytest.mark.parametrize(
    "name, kwargs, size, height",
    [
        ("convnet_tiny", {"width": 4}, 16, 2),
        ("convnet_tiny", {"width": 4}, 64, 8),
        ("convnet_small", {"width": 2}, 28, 4),
        ("resnet18", {}, 32, 1),
        ("cifar_resnet18", {}, 16, 2),
    ],
)
def test_decoder_for_any_registered_conv_backbone(name, kwargs, size, height):
    torch.manual_seed(0)
    backbone = build_backbone(name, 3, **kwargs)
    assert feature_map_size(backbone, size) == height
    decoder = decoder_for(backbone, size, 3)
    assert decoder.num_blocks == doublings(height, size)
    x = torch.randn(2, 3, size, size)
    assert decoder(backbone.feature_map(x), (size, size)).shape == (2, 3, size, size)


def test_the_probe_leaves_batchnorm_statistics_and_the_mode_alone():
    backbone = build_backbone("convnet_tiny", 3, width=4)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    decoder_for(backbone, 16, 3)
    assert backbone.training
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())


def test_a_smaller_output_and_a_channel_group_of_the_feature_map():
    backbone = build_backbone(
        "channel_split", 3, trunk="convnet_tiny", trunk_kwargs={"width": 2}, convert="lab"
    )
    decoder = decoder_for(backbone, 32, 10, output_size=8, in_channels=16)
    assert decoder.num_blocks == 1  # 4 -> 8
    fmap = backbone.feature_map(torch.rand(2, 3, 32, 32))
    assert decoder(fmap[:, :16], (8, 8)).shape == (2, 10, 8, 8)


def test_a_user_sequential_module_decodes_and_another_module_is_refused():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip
    backbone = build_backbone(net, 3, feature_dim=8)
    decoder = decoder_for(backbone, 32, 3)
    assert decoder.num_blocks == 1
    assert decoder(backbone.feature_map(torch.rand(1, 3, 32, 32)), (32, 32)).shape[-1] == 32

    class Pooled(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    with pytest.raises(ValueError, match="backbone 'Pooled' has no known last feature map"):
        decoder_for(build_backbone(Pooled(), 3, feature_dim=3), 16, 3)


def test_bad_decoder_arguments_name_the_argument():
    for kwargs, pattern in (
        ({"in_channels": 0, "out_channels": 3, "num_blocks": 1}, "in_channels must be >= 1"),
        ({"in_channels": 4, "out_channels": 0, "num_blocks": 1}, "out_channels must be >= 1"),
        ({"in_channels": 4, "out_channels": 3, "num_blocks": -1}, "num_blocks must be >= 0"),
    ):
        with pytest.raises(ValueError, match=pattern):
            ConvDecoder(**kwargs)
    with pytest.raises(ValueError, match=r"feature map \[B, D, h, w\]"):
        ConvDecoder(4, 3, 1)(torch.randn(2, 4))
