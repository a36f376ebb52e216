import pytest
import torch
from torch import nn

from selfsup.backbones import Backbone, build_backbone, list_backbones
from selfsup.heads import DINOHead, mlp


@pytest.mark.parametrize(
    "name, kwargs, size, dim",
    [
        ("convnet_tiny", {"width": 4}, 16, 32),
        ("convnet_small", {"width": 8}, 32, 64),
        ("resnet18", {}, 32, 512),
        ("cifar_resnet18", {}, 16, 512),
    ],
)
@pytest.mark.parametrize("in_channels", [1, 3])
def test_backbone_features_have_reported_size(name, kwargs, size, dim, in_channels):
    net = build_backbone(name, in_channels, **kwargs)
    out = net(torch.randn(2, in_channels, size, size))
    assert out.shape == (2, dim)
    assert net.feature_dim == dim and net.in_channels == in_channels


def test_cifar_stem_keeps_resolution():
    net = build_backbone("resnet18", 3, cifar_stem=True).trunk
    assert isinstance(net.maxpool, nn.Identity)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)


def test_resnet50_dim():
    assert build_backbone("resnet50", 3).feature_dim == 2048


def test_unknown_backbone_lists_known_names():
    with pytest.raises(ValueError, match="unknown backbone 'resnet9'.*convnet_small"):
        build_backbone("resnet9")


def test_wrong_in_channels_named_in_error():
    net = build_backbone("convnet_tiny", 1, width=4)
    with pytest.raises(ValueError, match=r"expects images \[B, 1, H, W\]"):
        net(torch.randn(2, 3, 16, 16))
    with pytest.raises(ValueError, match="in_channels"):
        build_backbone("convnet_tiny", 0)
    with pytest.raises(ValueError, match="in_channels=1"):
        build_backbone(net, 3)


def test_custom_module_needs_feature_dim():
    with pytest.raises(ValueError, match="feature_dim"):
        build_backbone(nn.Flatten())
    wrapped = build_backbone(nn.Sequential(nn.Flatten()), 1, feature_dim=16)
    assert isinstance(wrapped, Backbone) and wrapped(torch.randn(2, 1, 4, 4)).shape == (2, 16)


def test_timm_missing_or_present():
    try:
        import timm  # noqa: F401
    except ImportError:
        with pytest.raises(ValueError, match="needs timm"):
            build_backbone("timm/resnet18")
    else:
        net = build_backbone("timm/resnet18", 1)
        assert net(torch.randn(2, 1, 32, 32)).shape == (2, net.feature_dim)
    assert "timm/<model name>" in list_backbones()


def test_mlp_layout():
    head = mlp(8, 16, 4, num_layers=3, last_norm=True)
    kinds = [type(m).__name__ for m in head]
    assert kinds == [
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
        "ReLU",
        "Linear",
        "BatchNorm1d",
    ]
    assert head[0].bias is None and head[-2].bias is None
    plain = mlp(8, 16, 4, batch_norm=False)
    assert [type(m).__name__ for m in plain] == ["Linear", "ReLU", "Linear"]
    assert plain[-1].bias is not None
    assert head(torch.randn(5, 8)).shape == (5, 4)


def test_dino_head_last_layer_norm_fixed():
    head = DINOHead(8, 32, hidden_dim=16, bottleneck_dim=4)
    assert head(torch.randn(3, 8)).shape == (3, 32)
    g = head.last_layer.parametrizations.weight.original0
    assert not g.requires_grad and torch.all(g == 1)


def test_dino_head_trains_the_prototype_norms_when_asked():
    torch.manual_seed(0)
    head = DINOHead(8, 32, hidden_dim=16, bottleneck_dim=4, norm_last_layer=False)
    g = head.last_layer.parametrizations.weight.original0
    assert g.requires_grad and torch.all(g == 1)
    x = torch.randn(3, 8)
    assert head(x).abs().max() <= 1 + 1e-6  # cosines while the norms are 1
    head(x).pow(2).sum().backward()
    assert g.grad is not None and g.grad.abs().sum() > 0
    with torch.no_grad():
        g.mul_(5.0)
    assert head(x).abs().max() > 1  # a trained norm scales its prototype's logits


@pytest.mark.parametrize(
    "name, kwargs, size, grid",
    [("convnet_tiny", {"width": 4}, 16, 2), ("resnet18", {}, 64, 2), ("cifar_resnet18", {}, 16, 2)],
)
def test_feature_map_is_what_forward_pools(name, kwargs, size, grid):
    net = build_backbone(name, 1, **kwargs).eval()
    x = torch.randn(3, 1, size, size)
    fmap = net.feature_map(x)
    assert fmap.shape == (3, net.feature_dim, grid, grid)
    assert torch.allclose(fmap.mean(dim=(2, 3)), net(x), atol=1e-5)


def test_feature_map_of_an_unknown_module_is_refused_by_name():
    class Pooled(nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3))

    net = build_backbone(Pooled(), 2, feature_dim=2)
    with pytest.raises(ValueError, match="backbone 'Pooled' has no known last feature map"):
        net.feature_map(torch.randn(1, 2, 8, 8))
    with pytest.raises(ValueError, match=r"expects images \[B, 2, H, W\]"):
        net.feature_map(torch.randn(1, 3, 8, 8))
