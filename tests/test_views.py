"""Views: per-sample randomness, parameter ranges, wafer values, recipe shapes."""

import colorsys

import pytest
import torch
from torch.nn import functional as F

from selfsup.views import (
    color_jitter,
    die_flip_noise,
    gaussian_blur,
    hsv_to_rgb,
    make_views,
    random_flip,
    random_grayscale,
    random_resized_crop,
    random_rot90,
    random_rotation,
    rgb_to_hsv,
    rot90_by,
    solarize,
)
from selfsup.views.color import adjust_brightness, adjust_contrast, to_grayscale


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def same_image_batch(b=16, c=3, size=16, seed=0):
    one = torch.rand(1, c, size, size, generator=gen(seed))
    return one.expand(b, c, size, size).contiguous()


def distinct_outputs(out):
    flat = out.flatten(1)
    return len({tuple(row.tolist()) for row in flat.round(decimals=5)})


@pytest.mark.parametrize(
    "op",
    [
        lambda x, g: random_resized_crop(x, 8, generator=g),
        lambda x, g: random_flip(x, 0.5, generator=g),
        lambda x, g: random_rot90(x, g),
        lambda x, g: random_rotation(x, 45, "bilinear", generator=g),
        lambda x, g: color_jitter(x, 0.4, 0.4, 0.4, 0.1, generator=g),
        lambda x, g: random_grayscale(x, 0.5, g),
        lambda x, g: gaussian_blur(x, (0.5, 3.0), 1.0, generator=g),
        lambda x, g: solarize(x, 0.5, generator=g),
    ],
)
def test_each_sample_gets_its_own_draw(op):
    x = same_image_batch()
    out = op(x, gen(1))
    assert out.shape[0] == 16
    assert distinct_outputs(out) > 1, "the whole batch got one parameter set"


def test_die_flip_is_per_sample():
    codes = torch.ones(8, 1, 16, 16, dtype=torch.uint8)
    out = die_flip_noise(codes, 0.1, gen())
    assert distinct_outputs(out.float()) == 8


def test_generator_makes_views_reproducible():
    x = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    recipe = make_views("simclr", image_size=16)
    recipe.generator = gen(3)
    a = recipe(x)
    recipe.generator = gen(3)
    b = recipe(x)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))


def test_full_crop_without_flip_is_identity():
    x = torch.rand(4, 3, 12, 12, generator=gen())
    out = random_resized_crop(x, 12, scale=(1, 1), ratio=(1, 1), generator=gen())
    assert torch.allclose(out, x, atol=1e-5)
    out = random_resized_crop(x, 12, scale=(1, 1), ratio=(1, 1), hflip_p=1.0, generator=gen())
    assert torch.allclose(out, x.flip(-1), atol=1e-5)


def test_crop_area_within_scale():
    # an image with a single bright column band: crop of scale <= 0.25 can never contain
    # the whole image, so the mean of a crop resized up differs from the full-image mean
    x = torch.arange(64.0).view(1, 1, 8, 8).expand(64, 1, 8, 8).contiguous()
    out = random_resized_crop(
        x, 8, scale=(0.2, 0.25), ratio=(1, 1), mode="nearest", generator=gen()
    )
    distinct_values = torch.tensor([row.unique().numel() for row in out.flatten(1)])
    # a 0.25-area square crop of 8x8 covers 4x4 = 16 source pixels at most (+1 row/col of
    # boundary rounding)
    assert distinct_values.max() <= 25 and distinct_values.min() >= 9


def test_rot90_matches_torch_rot90():
    x = torch.rand(4, 2, 5, 5, generator=gen())
    k = torch.tensor([0, 1, 2, 3])
    out = rot90_by(x, k)
    for i in range(4):
        assert torch.equal(out[i], torch.rot90(x[i], i, dims=(-2, -1)))
    with pytest.raises(ValueError, match="square"):
        rot90_by(torch.rand(1, 1, 3, 4), torch.tensor([1]))


def test_rotation_nearest_keeps_codes_and_90_degrees_is_exact():
    codes = torch.randint(0, 3, (6, 1, 10, 10), generator=gen()).float()
    out = random_rotation(codes, 30, "nearest", generator=gen())
    assert set(out.unique().tolist()) <= {0.0, 1.0, 2.0}


def test_brightness_and_contrast_factors_in_range():
    x = torch.full((200, 1, 4, 4), 0.5)
    out = color_jitter(x, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0, generator=gen())
    factors = out[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
    assert factors.max() - factors.min() > 0.6  # the range is used
    assert torch.allclose(
        adjust_brightness(x[:2], torch.tensor([2.0, 0.5]))[:, 0, 0, 0], torch.tensor([1.0, 0.25])
    )
    img = torch.tensor([[[[0.2, 0.8]]]])
    assert torch.allclose(adjust_contrast(img, torch.tensor([0.0])), torch.full_like(img, 0.5))


def test_jitter_probability_and_clamp():
    x = torch.rand(400, 3, 4, 4, generator=gen())
    out = color_jitter(x, 0.8, 0.8, 0.8, 0.5, p=0.5, generator=gen())
    unchanged = (out == x).flatten(1).all(1).float().mean()
    assert 0.35 < unchanged < 0.65
    assert out.min() >= 0 and out.max() <= 1


def test_hsv_round_trip_and_reference():
    x = torch.rand(5, 3, 4, 4, generator=gen())
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)
    r, g, b = 0.2, 0.6, 0.4
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    got = rgb_to_hsv(torch.tensor([r, g, b]).view(1, 3, 1, 1)).flatten()
    assert torch.allclose(got, torch.tensor([h, s, v]), atol=1e-6)


def test_grayscale_weights():
    x = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    assert to_grayscale(x).item() == pytest.approx(0.299)
    out = random_grayscale(x.expand(4, 3, 1, 1), 1.0)
    assert torch.allclose(out, torch.full((4, 3, 1, 1), 0.299))


def test_blur_matches_conv_reference_and_preserves_constant():
    const = torch.full((3, 3, 9, 9), 0.3)
    assert torch.allclose(gaussian_blur(const, (1.0, 1.0), 1.0, 5), const, atol=1e-6)
    x = torch.rand(1, 1, 9, 9, generator=gen())
    out = gaussian_blur(x, (1.0, 1.0), 1.0, 3)
    k1 = torch.exp(-torch.tensor([1.0, 0.0, 1.0]) / 2)
    k1 = k1 / k1.sum()
    ref = F.conv2d(
        F.pad(x, (1, 1, 1, 1), mode="reflect"), (k1[:, None] * k1[None, :]).view(1, 1, 3, 3)
    )
    assert torch.allclose(out, ref, atol=1e-6)


def test_solarize_inverts_above_threshold():
    x = torch.tensor([0.2, 0.6]).view(1, 1, 1, 2)
    assert torch.allclose(solarize(x, 1.0), torch.tensor([0.2, 0.4]).view(1, 1, 1, 2))


def test_die_flip_spares_off_wafer_and_hits_rate():
    codes = torch.randint(0, 3, (4, 1, 64, 64), generator=gen(), dtype=torch.uint8)
    out = die_flip_noise(codes, 0.1, gen())
    assert out.dtype == torch.uint8
    assert torch.equal(out[codes == 0], codes[codes == 0])
    on = codes > 0
    changed = (out != codes)[on].float().mean().item()
    assert 0.08 < changed < 0.12
    assert set(out.unique().tolist()) <= {0, 1, 2}
    assert torch.equal(out[(out != codes)], 3 - codes[(out != codes)])


@pytest.mark.parametrize("name", ["simclr", "byol", "fastsiam", "dino", "rotation", "multiview"])
def test_wafer_recipes_only_produce_wafer_values(name):
    codes = torch.randint(0, 3, (8, 1, 20, 24), generator=gen(), dtype=torch.uint8)
    codes = F.pad(codes, (0, 0, 2, 2))[:, :, :, :24]  # 24x24 with an off-wafer band
    recipe = make_views(
        name,
        image_size=16,
        in_channels=1,
        style="wafer",
        free_rotation_degrees=0 if name == "rotation" else 20,
    )
    for view in recipe(codes):
        assert set(view.unique().tolist()) <= {0.0, 0.5, 1.0}
    assert set(recipe.preprocess(codes).unique().tolist()) <= {0.0, 0.5, 1.0}


@pytest.mark.parametrize(
    "name, count, sizes",
    [
        ("simclr", 2, {16}),
        ("byol", 2, {16}),
        ("fastsiam", 4, {16}),
        ("dino", 8, {16, 8}),
        ("rotation", 4, {16}),
    ],
)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_recipe_shapes(name, count, sizes, dtype):
    x = torch.randint(0, 256, (4, 3, 24, 24), generator=gen()).to(dtype)
    if dtype.is_floating_point:
        x = x / 255
    views = make_views(name, image_size=16)(x)
    assert len(views) == count
    assert {v.shape[-1] for v in views} == sizes
    assert all(v.dtype == torch.float32 and v.shape[:2] == (4, 3) for v in views)


def test_rotation_recipe_views_are_rotated_copies():
    views = make_views("rotation", image_size=8)(torch.rand(3, 3, 8, 8, generator=gen()))
    for k, v in enumerate(views):
        assert torch.equal(v, torch.rot90(views[0], k, dims=(-2, -1)))


def test_dino_overrides_and_errors():
    recipe = make_views("dino", image_size=32, num_local_crops=2, local_size=12)
    assert [v.shape[-1] for v in recipe(torch.rand(2, 3, 32, 32))] == [32, 32, 12, 12]
    with pytest.raises(ValueError, match="unknown view recipe 'simclrr'"):
        make_views("simclrr", image_size=8)
    with pytest.raises(ValueError, match="unknown view style"):
        make_views("simclr", image_size=8, style="medical")
    with pytest.raises(ValueError, match="no parameter 'blur'"):
        make_views("simclr", image_size=8, blur=0.5)
    with pytest.raises(ValueError, match="3 channel"):
        make_views("simclr", image_size=8)(torch.rand(2, 1, 8, 8))


def test_preprocess_is_deterministic_and_normalised():
    x = torch.full((2, 3, 8, 8), 0.485)
    recipe = make_views("simclr", image_size=4)
    out = recipe.preprocess(x)
    assert out.shape == (2, 3, 4, 4)
    assert torch.allclose(out[:, 0], torch.zeros(2, 4, 4), atol=1e-6)
    assert torch.equal(recipe.preprocess(x), out)


def test_single_view_is_one_augmented_batch():
    codes = torch.randint(0, 3, (5, 1, 12, 12), generator=gen(), dtype=torch.uint8)
    recipe = make_views("fastsiam", image_size=8, in_channels=1, style="wafer")
    out = recipe.single_view(codes)
    assert out.shape == (5, 1, 8, 8) and set(out.unique().tolist()) <= {0.0, 0.5, 1.0}
