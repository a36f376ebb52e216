"""Views: per-sample randomness, parameter ranges checked on images built to reveal them,
wafer values, recipe shapes, reproducibility."""

import colorsys
import math

import pytest
import torch
from torch.nn import functional as F

from selfsup.views import (
    VIEW_RECIPES,
    adjust_brightness,
    adjust_contrast,
    adjust_hue,
    adjust_saturation,
    apply_color_jitter,
    color_jitter,
    die_flip_noise,
    gaussian_blur,
    hsv_to_rgb,
    make_views,
    normalize,
    random_affine,
    random_flip,
    random_grayscale,
    random_resized_crop,
    random_rot90,
    random_rotation,
    recipe_defaults,
    resize,
    rgb_to_hsv,
    rot90_by,
    solarize,
    to_float,
    to_grayscale,
)
from selfsup.views.color import default_blur_kernel_size
from selfsup.views.geometric import affine_grid


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def same_image_batch(b=16, c=3, size=16, seed=0):
    one = torch.rand(1, c, size, size, generator=gen(seed))
    return one.expand(b, c, size, size).contiguous()


def n_distinct(out):
    return len({tuple(row.tolist()) for row in out.flatten(1).round(decimals=5)})


def coordinate_image(b, size):
    """[b, 2, size, size]: channel 0 holds each pixel's x (column) centre, channel 1 its y."""
    centres = torch.arange(size, dtype=torch.float32) + 0.5
    xs = centres.view(1, size).expand(size, size)
    return torch.stack([xs, xs.t()]).expand(b, 2, size, size).contiguous()


def sampled_frames(out):
    """Per sample, the input-pixel positions of the output's corners (bilinear sampling of a
    linear image is exact): returns the frame's x and y axis vectors and its centre."""
    n = out.shape[-1]
    span = 1 - 1 / n  # output pixel centres sit at +-(1 - 1/n) in normalised units
    px, py = out[:, 0], out[:, 1]
    axis_x = torch.stack([px[:, 0, -1] - px[:, 0, 0], py[:, 0, -1] - py[:, 0, 0]], 1) / span
    axis_y = torch.stack([px[:, -1, 0] - px[:, 0, 0], py[:, -1, 0] - py[:, 0, 0]], 1) / span
    centre = torch.stack([px.mean((1, 2)), py.mean((1, 2))], 1)
    return axis_x, axis_y, centre


# --- per-sample randomness --------------------------------------------------------------------


@pytest.mark.parametrize(
    "op, at_least",
    [
        (lambda x, g: random_resized_crop(x, 8, generator=g), 16),
        (lambda x, g: random_flip(x, 0.5, -1, g), 2),
        (lambda x, g: random_flip(x, 0.5, -2, g), 2),
        (lambda x, g: random_rot90(x, g), 4),
        (lambda x, g: random_rotation(x, 45, "bilinear", generator=g), 16),
        (lambda x, g: color_jitter(x, 0.4, 0.4, 0.4, 0.1, generator=g), 16),
        (lambda x, g: random_grayscale(x, 0.5, g), 2),
        (lambda x, g: gaussian_blur(x, (0.5, 3.0), 1.0, generator=g), 16),
        (lambda x, g: solarize(x, 0.5, generator=g), 2),
        (lambda x, g: random_affine(x, 16, rot90=True, hflip_p=0.5, vflip_p=0.5, generator=g), 6),
    ],
)
def test_each_sample_gets_its_own_draw(op, at_least):
    out = op(same_image_batch(), gen(1))
    assert out.shape[0] == 16
    assert n_distinct(out) >= at_least, "the batch shares one parameter set"


def test_die_flip_is_per_sample():
    out = die_flip_noise(torch.ones(8, 1, 16, 16, dtype=torch.uint8), 0.1, gen())
    assert n_distinct(out.float()) == 8


def test_ops_draw_on_the_input_device_and_keep_it():
    x = torch.rand(4, 3, 8, 8, generator=gen())
    for out in (
        random_resized_crop(x, 4, generator=gen()),
        color_jitter(x, generator=gen()),
        gaussian_blur(x, p=1.0, generator=gen()),
        die_flip_noise(torch.ones(2, 1, 4, 4), 0.5, gen()),
    ):
        assert out.device == x.device and out.dtype == torch.float32


# --- to_float, normalize, resize --------------------------------------------------------------


def test_to_float_natural_and_wafer():
    raw = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 1, 1, 3)
    assert torch.allclose(to_float(raw, "natural").flatten(), torch.tensor([0.0, 0.2, 1.0]))
    floats = torch.rand(2, 3, 4, 4)
    assert to_float(floats, "natural") is floats
    codes = torch.tensor([0, 1, 2], dtype=torch.uint8).view(1, 1, 1, 3)
    assert to_float(codes, "wafer").flatten().tolist() == [0.0, 1.0, 2.0]
    assert to_float(codes.float(), "wafer").flatten().tolist() == [0.0, 1.0, 2.0]
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        to_float(torch.zeros(3, 4, 4, dtype=torch.uint8), "natural")
    with pytest.raises(ValueError, match="unknown view style 'medical'"):
        to_float(raw, "medical")


def test_normalize_per_channel():
    x = torch.tensor([0.5, 0.25]).view(1, 2, 1, 1)
    assert normalize(x, (0.5, 0.0), (1.0, 0.5)).flatten().tolist() == [0.0, 0.5]
    with pytest.raises(ValueError, match="2 values"):
        normalize(x, (0.5,), (1.0,))


def test_resize_nearest_follows_the_wafer_loader_rule():
    codes = torch.arange(5, dtype=torch.uint8).view(1, 1, 1, 5).expand(1, 1, 5, 5)
    out = resize(codes, 3, "nearest")
    # source index floor((dst + 0.5) * 5 / 3) = 0, 2, 4
    assert out.dtype == torch.uint8 and out[0, 0, 0].tolist() == [0, 2, 4]


# --- geometric --------------------------------------------------------------------------------


def test_affine_grid_matches_torch():
    theta = torch.randn(5, 2, 3, generator=gen())
    ours = affine_grid(theta, 7, 9)
    ref = F.affine_grid(theta, [5, 1, 7, 9], align_corners=False)
    assert torch.allclose(ours, ref, atol=1e-6)


def test_full_crop_without_flip_is_the_resized_input():
    x = torch.rand(4, 3, 12, 12, generator=gen())
    same = random_resized_crop(x, 12, scale=(1, 1), ratio=(1, 1), generator=gen())
    assert torch.allclose(same, x, atol=1e-5)
    flipped = random_resized_crop(x, 12, scale=(1, 1), ratio=(1, 1), hflip_p=1.0, generator=gen())
    assert torch.allclose(flipped, x.flip(-1), atol=1e-5)
    half = random_resized_crop(x, 6, scale=(1, 1), ratio=(1, 1), generator=gen())
    ref = F.interpolate(x, size=6, mode="bilinear", align_corners=False)
    assert torch.allclose(half, ref, atol=1e-5)
    wide = random_resized_crop(x, (6, 9), scale=(1, 1), ratio=(1, 1), generator=gen())
    assert wide.shape == (4, 3, 6, 9)


def test_crop_boxes_respect_scale_and_ratio():
    size, n = 64, 200
    out = random_resized_crop(coordinate_image(n, size), 8, (0.1, 0.5), (0.5, 2.0), generator=gen())
    axis_x, axis_y, centre = sampled_frames(out)
    w, h = axis_x[:, 0], axis_y[:, 1]
    assert torch.allclose(axis_x[:, 1], torch.zeros(n), atol=1e-4)  # no rotation, no shear
    area = w * h / size**2
    assert area.min() >= 0.1 - 1e-3 and area.max() <= 0.5 + 1e-3
    assert area.max() - area.min() > 0.3  # the range is used
    ratio = w / h
    assert ratio.min() >= 0.5 - 1e-3 and ratio.max() <= 2.0 + 1e-3
    assert (ratio < 0.8).any() and (ratio > 1.25).any()
    # boxes lie inside the image, at varied positions
    assert (centre - torch.stack([w, h], 1) / 2 >= -1e-3).all()
    assert (centre + torch.stack([w, h], 1) / 2 <= size + 1e-3).all()
    assert centre[:, 0].std() > 3


def test_crop_that_cannot_fit_shrinks_to_the_largest_box_of_its_ratio():
    out = random_resized_crop(coordinate_image(6, 32), 8, (1.0, 1.0), (2.0, 2.0), generator=gen())
    axis_x, axis_y, _ = sampled_frames(out)
    assert torch.allclose(axis_x[:, 0], torch.full((6,), 32.0), atol=1e-3)
    assert torch.allclose(axis_y[:, 1], torch.full((6,), 16.0), atol=1e-3)


def test_crop_rotation_angles_stay_in_range():
    out = random_resized_crop(
        coordinate_image(100, 64), 8, (0.2, 0.3), (1, 1), rotation_degrees=20, generator=gen()
    )
    axis_x, _, _ = sampled_frames(out)
    angle = torch.rad2deg(torch.atan2(axis_x[:, 1], axis_x[:, 0]))
    assert angle.abs().max() <= 20 + 0.1
    assert angle.min() < -10 and angle.max() > 10


def test_nearest_crop_keeps_codes_and_dtype():
    codes = torch.randint(0, 3, (8, 1, 20, 20), generator=gen(), dtype=torch.uint8)
    out = random_resized_crop(
        codes, 13, (0.2, 1), mode="nearest", rotation_degrees=30, generator=gen()
    )
    assert out.dtype == torch.uint8 and set(out.unique().tolist()) <= {0, 1, 2}


def test_wafer_geometry_is_an_exact_symmetry_of_the_square():
    codes = torch.randint(0, 3, (200, 1, 7, 7), generator=gen(), dtype=torch.uint8)
    out = random_affine(
        codes, 7, rot90=True, hflip_p=0.5, vflip_p=0.5, mode="nearest", generator=gen()
    )
    seen = set()
    for i in range(200):
        variants = [
            torch.rot90(f, k, dims=(-2, -1))
            for f in (codes[i], codes[i].flip(-1))
            for k in range(4)
        ]
        matches = [j for j, v in enumerate(variants) if torch.equal(out[i], v)]
        assert matches, f"sample {i} is not a rotation/flip of its input"
        seen.add(matches[0])
    assert len(seen) == 8  # all 8 symmetries occur


def test_one_resample_for_the_whole_batch(monkeypatch):
    calls = []
    real = F.grid_sample
    monkeypatch.setattr(F, "grid_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.rand(32, 3, 16, 16, generator=gen())
    random_affine(
        x, 8, crop_scale=(0.2, 1), hflip_p=0.5, vflip_p=0.5, rot90=True, rotation_degrees=10
    )
    assert len(calls) == 1


def test_random_flip_masks():
    x = torch.rand(400, 1, 2, 3, generator=gen())
    assert torch.equal(random_flip(x, 1.0), x.flip(-1))
    assert torch.equal(random_flip(x, 0.0), x)
    assert torch.equal(random_flip(x, 1.0, dim=-2), x.flip(-2))
    out = random_flip(x, 0.3, generator=gen())
    flipped = (out == x.flip(-1)).flatten(1).all(1) & ~(out == x).flatten(1).all(1)
    assert 0.22 < flipped.float().mean() < 0.38
    with pytest.raises(ValueError, match="dim"):
        random_flip(x, 0.5, dim=0)


def test_rot90_by_matches_torch_rot90():
    x = torch.rand(6, 2, 5, 5, generator=gen())
    k = torch.tensor([0, 1, 2, 3, -1, 5])
    out = rot90_by(x, k)
    for i in range(6):
        assert torch.equal(out[i], torch.rot90(x[i], int(k[i]), dims=(-2, -1)))
    with pytest.raises(ValueError, match="square"):
        rot90_by(torch.rand(1, 1, 3, 4), torch.tensor([1]))
    with pytest.raises(ValueError, match="square"):
        random_rot90(torch.rand(2, 1, 3, 4))


def test_random_rot90_outputs_are_rotations_of_the_input():
    x = torch.arange(64 * 9, dtype=torch.float32).view(64, 1, 3, 3)
    out = random_rot90(x, gen())
    turns = []
    for i in range(64):
        matches = [k for k in range(4) if torch.equal(out[i], torch.rot90(x[i], k, dims=(1, 2)))]
        assert len(matches) == 1
        turns.append(matches[0])
    assert set(turns) == {0, 1, 2, 3}


def test_random_rotation_range_and_zero_fill():
    out = random_rotation(coordinate_image(100, 32), 30, "bilinear", generator=gen())
    # a step along an output row moves the sample point along (cos a, sin a), well inside
    step = out[:, :, 16, 24] - out[:, :, 16, 8]
    angle = torch.rad2deg(torch.atan2(step[:, 1], step[:, 0]))
    assert torch.allclose(step.norm(dim=1), torch.full((100,), 16.0), atol=1e-3)
    assert angle.abs().max() <= 30 + 0.1 and angle.min() < -20 and angle.max() > 20
    ones = torch.ones(64, 1, 9, 9)
    turned = random_rotation(ones, 45, "nearest", generator=gen())
    assert (turned[:, 0, 4, 4] == 1).all()  # the centre stays
    assert (turned[:, 0, 0, 0] == 0).any()  # corners come from outside: zero
    assert torch.equal(random_rotation(ones, 45, p=0.0, generator=gen()), ones)
    codes = torch.randint(0, 3, (6, 1, 10, 10), generator=gen()).float()
    assert set(random_rotation(codes, 30, "nearest", generator=gen()).unique().tolist()) <= {
        0,
        1,
        2,
    }


# --- colour -----------------------------------------------------------------------------------


def test_brightness_factor_bounds_on_a_constant_image():
    x = torch.full((300, 1, 4, 4), 0.5)
    out = color_jitter(x, brightness=0.4, contrast=0.0, saturation=0.0, hue=0.0, generator=gen())
    factors = out[:, 0, 0, 0] / 0.5
    assert factors.min() >= 0.6 - 1e-6 and factors.max() <= 1.4 + 1e-6
    assert factors.max() - factors.min() > 0.7  # the range is used
    assert torch.allclose(
        adjust_brightness(x[:2], torch.tensor([2.0, 0.5]))[:, 0, 0, 0], torch.tensor([1.0, 0.25])
    )


def test_contrast_blends_with_the_mean_grey_level():
    img = torch.tensor([0.2, 0.8]).view(1, 1, 1, 2)
    assert torch.allclose(adjust_contrast(img, torch.tensor([0.0])), torch.full_like(img, 0.5))
    assert torch.allclose(
        adjust_contrast(img, torch.tensor([0.5])), torch.tensor([0.35, 0.65]).view(1, 1, 1, 2)
    )
    out = color_jitter(img.expand(300, 1, 1, 2), 0.0, 0.4, 0.0, 0.0, generator=gen())
    factors = (out[:, 0, 0, 1] - 0.5) / 0.3
    assert factors.min() >= 0.6 - 1e-5 and factors.max() <= 1.4 + 1e-5 and factors.std() > 0.15


def test_saturation_blends_with_the_grey_image():
    rgb = torch.tensor([0.9, 0.3, 0.1]).view(1, 3, 1, 1)
    grey = 0.299 * 0.9 + 0.587 * 0.3 + 0.114 * 0.1
    assert torch.allclose(adjust_saturation(rgb, torch.tensor([0.0])), torch.full_like(rgb, grey))
    out = color_jitter(rgb.expand(300, 3, 1, 1), 0.0, 0.0, 0.4, 0.0, generator=gen())
    factors = (out[:, 0, 0, 0] - grey) / (0.9 - grey)
    assert factors.min() >= 0.6 - 1e-5 and factors.max() <= 1.4 + 1e-5 and factors.std() > 0.15


def test_hue_shift_keeps_saturation_and_value():
    rgb = torch.tensor([0.8, 0.4, 0.2]).view(1, 3, 1, 1)  # H = 1/18, S = 0.75, V = 0.8
    shifted = adjust_hue(rgb, torch.tensor([0.25]))
    h, s, v = rgb_to_hsv(shifted).flatten().tolist()
    assert h == pytest.approx(1 / 18 + 0.25, abs=1e-5)
    assert (s, v) == (pytest.approx(0.75, abs=1e-5), pytest.approx(0.8, abs=1e-5))
    out = color_jitter(rgb.expand(300, 3, 1, 1), 0.0, 0.0, 0.0, 0.1, generator=gen())
    hsv = rgb_to_hsv(out)
    delta = (hsv[:, 0, 0, 0] - 1 / 18 + 0.5) % 1 - 0.5  # circular difference
    assert delta.abs().max() <= 0.1 + 1e-5 and delta.min() < -0.05 and delta.max() > 0.05
    assert torch.allclose(hsv[:, 1:], torch.tensor([0.75, 0.8]).view(1, 2, 1, 1), atol=1e-5)


def test_jitter_order_is_per_sample():
    x = torch.rand(2, 3, 4, 4, generator=gen())
    factors = torch.tensor([[1.3, 0.6, 1.4, 0.2]] * 2)
    order = torch.tensor([[0, 1, 2, 3], [3, 2, 1, 0]])
    out = apply_color_jitter(x, factors, order)
    steps = [adjust_brightness, adjust_contrast, adjust_saturation, adjust_hue]
    for i in range(2):
        ref = x[i : i + 1]
        for op in order[i].tolist():
            ref = steps[op](ref, factors[i : i + 1, op])
        assert torch.allclose(out[i : i + 1], ref, atol=1e-5)
    swapped = apply_color_jitter(x, factors, order.flip(0))
    assert not torch.allclose(out, swapped, atol=1e-3)  # the order matters, and is per row


def test_color_jitter_draws_an_order_per_sample(monkeypatch):
    import selfsup.views.color as color

    seen = {}
    real = color.apply_color_jitter
    monkeypatch.setattr(
        color,
        "apply_color_jitter",
        lambda x, f, order: seen.setdefault("order", order) is None or real(x, f, order),
    )
    color_jitter(torch.rand(64, 3, 2, 2), generator=gen())
    order = seen["order"]
    assert torch.equal(order.sort(1).values, torch.arange(4).expand(64, 4))  # permutations
    assert len({tuple(row) for row in order.tolist()}) > 12  # many of the 24 orders occur


def test_jitter_probability_clamp_and_grey_images():
    x = torch.rand(400, 3, 4, 4, generator=gen())
    out = color_jitter(x, 0.8, 0.8, 0.8, 0.5, p=0.5, generator=gen())
    unchanged = (out == x).flatten(1).all(1).float().mean()
    assert 0.4 < unchanged < 0.6
    assert out.min() >= 0 and out.max() <= 1
    grey = torch.rand(8, 1, 4, 4, generator=gen())
    assert torch.equal(color_jitter(grey, 0.0, 0.0, 0.8, 0.5, generator=gen()), grey)


def test_hsv_round_trip_and_reference():
    x = torch.rand(5, 3, 4, 4, generator=gen())
    assert torch.allclose(hsv_to_rgb(rgb_to_hsv(x)), x, atol=1e-5)
    colours = [
        (0.2, 0.6, 0.4),
        (1, 0, 0),
        (0.5, 0.5, 0.5),
        (0, 0, 0),
        (0.3, 0.3, 0.9),
        (0.7, 0.7, 0.1),
        (0.9, 0.1, 0.5),
    ]
    for rgb in colours:
        got = rgb_to_hsv(torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1)).flatten()
        assert torch.allclose(got, torch.tensor(colorsys.rgb_to_hsv(*rgb)), atol=1e-6), rgb
        back = hsv_to_rgb(torch.tensor(colorsys.rgb_to_hsv(*rgb)).view(1, 3, 1, 1)).flatten()
        assert torch.allclose(back, torch.tensor(rgb, dtype=torch.float32), atol=1e-6), rgb


def test_grayscale_weights_and_probability():
    x = torch.eye(3).view(3, 3, 1, 1)
    assert to_grayscale(x).flatten().tolist() == pytest.approx([0.299, 0.587, 0.114])
    out = random_grayscale(x, 1.0)
    assert torch.allclose(
        out, torch.tensor([0.299, 0.587, 0.114]).view(3, 1, 1, 1).expand(3, 3, 1, 1)
    )
    many = torch.rand(400, 3, 2, 2, generator=gen())
    grey = (random_grayscale(many, 0.25, gen()).std(1) == 0).flatten(1).all(1).float().mean()
    assert 0.18 < grey < 0.32
    one = torch.rand(4, 1, 2, 2)
    assert random_grayscale(one, 1.0) is one


def test_blur_matches_a_reference_convolution():
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
    assert [default_blur_kernel_size(s, s) for s in (8, 32, 96, 224)] == [3, 3, 9, 23]
    with pytest.raises(ValueError, match="odd"):
        gaussian_blur(x, p=1.0, kernel_size=4)


def test_blur_sigma_is_per_sample_and_p_applies():
    x = torch.zeros(200, 1, 9, 9)
    x[:, :, 4, 4] = 1
    out = gaussian_blur(x, (0.5, 2.0), 0.5, 9, gen())
    centre = out[:, 0, 4, 4]
    blurred = centre < 1
    assert 0.38 < blurred.float().mean() < 0.62
    # the peak of a normalised Gaussian falls as sigma grows: distinct sigmas, distinct peaks
    assert centre[blurred].unique().numel() == blurred.sum()


def test_solarize_inverts_at_and_above_threshold():
    x = torch.tensor([0.2, 0.5, 0.6]).view(1, 1, 1, 3)
    assert torch.allclose(solarize(x, 1.0), torch.tensor([0.2, 0.5, 0.4]).view(1, 1, 1, 3))
    assert torch.allclose(solarize(x, 1.0, threshold=0.7), x)
    assert torch.equal(solarize(x, 0.0), x)


def test_die_flip_spares_off_wafer_and_hits_the_rate():
    codes = torch.randint(0, 3, (4, 1, 128, 128), generator=gen(), dtype=torch.uint8)
    out = die_flip_noise(codes, 0.1, gen())
    assert out.dtype == torch.uint8
    assert torch.equal(out[codes == 0], codes[codes == 0])
    changed = out != codes
    assert 0.09 < changed[codes > 0].float().mean() < 0.11
    assert torch.equal(out[changed], 3 - codes[changed])
    assert set(out.unique().tolist()) <= {0, 1, 2}
    floats = die_flip_noise(codes.float(), 0.1, gen())
    assert torch.equal(floats, out.float())  # same draws, same flips in any dtype
    assert die_flip_noise(codes, 0.0) is codes


# --- recipes ----------------------------------------------------------------------------------


def natural_batch(dtype, b=4, size=24):
    x = torch.randint(0, 256, (b, 3, size, size), generator=gen(), dtype=torch.uint8)
    return x if dtype == torch.uint8 else x.float() / 255


def wafer_batch(dtype=torch.uint8, b=6, size=24):
    codes = torch.randint(1, 3, (b, 1, size, size), generator=gen(), dtype=torch.uint8)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    disk = ((yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2) < (size / 2 - 1) ** 2
    return (codes * disk).to(dtype)


@pytest.mark.parametrize(
    "name, sizes",
    [
        ("simclr", [16, 16]),
        ("byol", [16, 16]),
        ("fastsiam", [16] * 4),
        ("dino", [16, 16] + [8] * 6),
        ("rotnet", [16] * 4),
    ],
)
@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
@pytest.mark.parametrize("style", ["natural", "wafer"])
def test_recipe_view_counts_and_shapes(name, sizes, dtype, style):
    channels = 3 if style == "natural" else 1
    x = natural_batch(dtype) if style == "natural" else wafer_batch(dtype)
    recipe = make_views(name, image_size=16, in_channels=channels, style=style)
    views = recipe(x)
    assert recipe.num_views == len(views) == len(sizes)
    assert [v.shape for v in views] == [(x.shape[0], channels, s, s) for s in sizes]
    assert all(v.dtype == torch.float32 and v.device == x.device for v in views)
    assert recipe.preprocess(x).shape == (x.shape[0], channels, 16, 16)


@pytest.mark.parametrize("name", VIEW_RECIPES.names())
def test_wafer_views_hold_only_three_values(name):
    codes = wafer_batch(size=28)
    extra = {} if name == "rotnet" else {"free_rotation_degrees": 25}
    if name not in ("rotnet", "dino"):
        extra["crop_scale"] = (0.5, 1.0)
    extra |= {"regrid_p": 0.5, "regrid_scale": (0.4, 0.9)}
    recipe = make_views(name, image_size=20, in_channels=1, style="wafer", die_flip_p=0.2, **extra)
    for view in recipe(codes, generator=gen()):
        assert set(view.unique().tolist()) == {0.0, 0.5, 1.0}
    assert set(recipe.preprocess(codes).unique().tolist()) == {0.0, 0.5, 1.0}


def test_wafer_views_apply_die_flip_noise():
    codes = wafer_batch(b=4, size=32)
    recipe = make_views(
        "simclr",
        image_size=32,
        in_channels=1,
        style="wafer",
        rot90=False,
        hflip_p=0.0,
        vflip_p=0.0,
        die_flip_p=0.2,
    )
    for view in recipe(codes, generator=gen()):
        out = view * 2
        assert (out[codes == 0] == 0).all()
        assert 0.15 < (out != codes)[codes > 0].float().mean() < 0.25


def test_with_params_rebuilds_the_recipe_with_replaced_parameters():
    codes = wafer_batch(b=4, size=32)
    noisy = make_views("simclr", image_size=32, in_channels=1, style="wafer", die_flip_p=0.2)
    clean = noisy.with_params(die_flip_p=0.0)
    assert clean.params == {**noisy.params, "die_flip_p": 0.0} and noisy.params["die_flip_p"] == 0.2
    assert (clean.name, clean.style, clean.num_views) == (noisy.name, noisy.style, noisy.num_views)
    # no noise left: every view is a rotation/flip of the map, so the fail count is kept
    view = clean.single_view(codes, generator=gen()) * 2
    assert torch.equal((view == 2).sum((1, 2, 3)), (codes == 2).sum((1, 2, 3)))
    with pytest.raises(ValueError, match="no parameter 'die_flip'"):
        noisy.with_params(die_flip=0.0)


def test_regrid_makes_coarser_die_grids_and_keeps_values():
    from selfsup.views.wafer import random_regrid

    codes = wafer_batch(b=6, size=12)
    assert torch.equal(random_regrid(codes, p=0.0, generator=gen()), codes)
    assert torch.equal(random_regrid(codes, p=1.0, scale=(1.0, 1.0), generator=gen()), codes)
    half = random_regrid(codes, p=1.0, scale=(0.5, 0.5), generator=gen())
    assert half.dtype == codes.dtype and half.shape == codes.shape
    for b in range(codes.shape[0]):  # 6 x 6 dies, each a 2 x 2 block of one of the old dies
        blocks = half[b, 0].unfold(0, 2, 2).unfold(1, 2, 2).reshape(6, 6, 4)
        assert (blocks == blocks[..., :1]).all()
        assert torch.equal(half[b, 0, ::2, ::2], codes[b, 0, 1::2, 1::2])
    mixed = random_regrid(codes.float(), p=0.5, scale=(0.3, 0.7), generator=gen())
    assert set(mixed.unique().tolist()) <= {0.0, 1.0, 2.0}
    changed = [(mixed[b] != codes[b]).any().item() for b in range(codes.shape[0])]
    assert 0 < sum(changed) < codes.shape[0]  # p = 0.5: some maps, not all
    with pytest.raises(ValueError, match="regrid p"):
        random_regrid(codes, p=1.5)


def test_wafer_views_refuse_scaled_maps():
    recipe = make_views("simclr", image_size=8, in_channels=1, style="wafer")
    with pytest.raises(ValueError, match=r"die codes in \{0, 1, 2\}"):
        recipe(wafer_batch(torch.float32) / 2)


def test_wafer_rotation_base_view_is_flipped_never_turned():
    codes = wafer_batch(b=32, size=8)
    codes[:, :, 1, 2] = 2  # break the disk's symmetry
    recipe = make_views("rotnet", image_size=8, in_channels=1, style="wafer", die_flip_p=0.0)
    views = recipe(codes, generator=gen())
    base = views[0] * 2
    flips = [codes, codes.flip(-1), codes.flip(-2), codes.flip(-1, -2)]
    seen = set()
    for i in range(32):
        matches = [j for j, f in enumerate(flips) if torch.equal(base[i], f[i].float())]
        assert matches, f"sample {i} is not a flip of its input"
        seen.update(matches)
    assert len(seen) == 4
    for k, view in enumerate(views):
        assert torch.equal(view, torch.rot90(views[0], k, dims=(-2, -1)))
    with pytest.raises(ValueError, match="rotation is the label"):
        make_views("rotnet", image_size=8, in_channels=1, style="wafer", rot90=True)


def test_generator_makes_views_reproducible():
    x = natural_batch(torch.uint8, b=8, size=16)
    recipe = make_views("byol", image_size=16)
    a, b = recipe(x, generator=gen(3)), recipe(x, generator=gen(3))
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    recipe.generator = gen(4)
    c = recipe(x)
    assert not torch.allclose(a[0], c[0])
    recipe.generator = gen(3)
    assert all(torch.equal(u, v) for u, v in zip(a, recipe(x), strict=True))


def test_uint8_and_float_inputs_give_the_same_views():
    raw = natural_batch(torch.uint8, size=16)
    recipe = make_views("simclr", image_size=12)
    a, b = recipe(raw, generator=gen(5)), recipe(raw.float() / 255, generator=gen(5))
    assert all(torch.allclose(u, v, atol=1e-5) for u, v in zip(a, b, strict=True))


def test_views_stay_float32_under_autocast():
    recipe = make_views("simclr", image_size=16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        views = recipe(natural_batch(torch.uint8, size=16))
    assert all(v.dtype == torch.float32 for v in views)


def test_preprocess_is_deterministic_resize_and_normalise():
    x = torch.full((2, 3, 8, 8), 0.485)
    recipe = make_views("simclr", image_size=4)
    out = recipe.preprocess(x)
    assert out.shape == (2, 3, 4, 4)
    assert torch.allclose(out[:, 0], torch.zeros(2, 4, 4), atol=1e-6)
    assert torch.equal(recipe.preprocess(x), out)
    y = torch.rand(2, 3, 8, 8, generator=gen())
    ref = F.interpolate(y, size=4, mode="bilinear", antialias=True, align_corners=False)
    assert torch.allclose(
        make_views("simclr", image_size=4, mean=(0,) * 3, std=(1,) * 3).preprocess(y), ref
    )
    grey = make_views("simclr", image_size=8, in_channels=1)
    assert grey.mean == (0.5,) and grey.std == (0.5,)
    assert torch.allclose(grey.preprocess(torch.ones(1, 1, 8, 8)), torch.ones(1, 1, 8, 8))


def test_paper_defaults():
    assert recipe_defaults("simclr", image_size=32)["blur_p"] == 0.0  # SimCLR drops blur on CIFAR
    assert recipe_defaults("simclr", image_size=96)["blur_p"] == 0.5
    byol = make_views("byol", image_size=32)
    assert [(v.blur_p, v.solarize_p, v.saturation) for v in byol.views] == [
        (1.0, 0.0, 0.2),
        (0.1, 0.2, 0.2),
    ]
    dino = make_views("dino", image_size=224)
    assert [v.size for v in dino.views] == [224, 224] + [96] * 6
    assert [v.crop_scale for v in dino.views] == [(0.4, 1.0)] * 2 + [(0.05, 0.4)] * 6
    assert [v.blur_p for v in dino.views] == [1.0, 0.1] + [0.5] * 6
    assert [v.solarize_p for v in dino.views] == [0.0, 0.2] + [0.0] * 6
    assert make_views("dino", image_size=16).views[-1].size == 8  # local crops at least 8 px
    wafer_dino = make_views("dino", image_size=32, in_channels=1, style="wafer")
    assert [v.crop_scale for v in wafer_dino.views] == [(0.6, 1.0)] * 2 + [(0.25, 0.6)] * 6
    wafer = make_views("fastsiam", image_size=32, in_channels=1, style="wafer").views[0]
    assert (wafer.rot90, wafer.hflip_p, wafer.vflip_p, wafer.die_flip_p) == (True, 0.5, 0.5, 0.03)
    assert wafer.free_rotation_degrees == 0 and wafer.crop_scale is None
    rotation = make_views("rotnet", image_size=32).views[0]
    assert rotation.crop_scale == (0.5, 1.0) and rotation.hflip_p == 0.5


def test_overrides_and_errors():
    recipe = make_views("dino", image_size=32, num_local_crops=2, local_size=12, local_blur_p=0.0)
    assert [v.shape[-1] for v in recipe(torch.rand(2, 3, 32, 32))] == [32, 32, 12, 12]
    assert make_views("fastsiam", image_size=8, num_views=3).num_views == 3
    byol = make_views("byol", image_size=8, blur_p=0.3, crop_scale=[0.2, 1.0])
    assert [v.blur_p for v in byol.views] == [0.3, 0.3] and byol.views[0].crop_scale == (0.2, 1.0)
    with pytest.raises(ValueError, match=r"unknown view recipe 'simclrr'.*known: .*byol, .*dino, "):
        make_views("simclrr", image_size=8)
    with pytest.raises(ValueError, match="unknown view style 'medical'"):
        make_views("simclr", image_size=8, style="medical")
    with pytest.raises(ValueError, match="no parameter 'blur'.*known: crop_scale"):
        make_views("simclr", image_size=8, blur=0.5)
    with pytest.raises(ValueError, match="no parameter 'mean'"):
        make_views("simclr", image_size=8, in_channels=1, style="wafer", mean=(0.5,))
    with pytest.raises(ValueError, match="hflip_p must be a probability"):
        make_views("simclr", image_size=8, hflip_p=1.5)
    with pytest.raises(ValueError, match="num_views must be an integer >= 1"):
        make_views("fastsiam", image_size=8, num_views=0)
    with pytest.raises(ValueError, match="3 channel"):
        make_views("simclr", image_size=8)(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="mean and std need 1 values"):
        make_views("simclr", image_size=8, in_channels=1, mean=(0.5, 0.5, 0.5))


def test_repr_lists_the_parameters():
    text = repr(make_views("byol", image_size=32))
    assert "ViewRecipe('byol'" in text and "image_size=32" in text and "num_views=2" in text
    assert "blur_p=(1, 0.1)" in text and "solarize_p=(0, 0.2)" in text and "mean=(0.485" in text


def test_single_view_is_one_augmented_batch():
    recipe = make_views("fastsiam", image_size=8, in_channels=1, style="wafer")
    out = recipe.single_view(wafer_batch(b=5, size=12), generator=gen())
    assert out.shape == (5, 1, 8, 8) and set(out.unique().tolist()) <= {0.0, 0.5, 1.0}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_views_on_cuda_with_a_cpu_generator():
    x = natural_batch(torch.uint8, b=8, size=16).cuda()
    recipe = make_views("dino", image_size=16)
    a, b = recipe(x, generator=gen(1)), recipe(x, generator=gen(1))
    assert all(v.is_cuda for v in a)
    assert all(torch.equal(u, v) for u, v in zip(a, b, strict=True))
    codes = wafer_batch().cuda()
    for view in make_views("fastsiam", image_size=16, in_channels=1, style="wafer")(codes):
        assert view.is_cuda and set(view.unique().tolist()) <= {0.0, 0.5, 1.0}


def test_crop_scale_bounds_math():
    # a sanity anchor for sampled_frames: an identity crop spans the whole image
    out = random_resized_crop(coordinate_image(2, 16), 4, (1, 1), (1, 1), generator=gen())
    axis_x, axis_y, centre = sampled_frames(out)
    assert torch.allclose(axis_x[:, 0], torch.full((2,), 16.0), atol=1e-4)
    assert torch.allclose(centre, torch.full((2, 2), 8.0), atol=1e-4)
    assert math.isclose(float(axis_y[0, 1]), 16.0, abs_tol=1e-4)


def test_fail_mask_encoding_comes_after_the_views():
    codes = wafer_batch(b=4, size=16)
    recipe = make_views("fastsiam", image_size=12, in_channels=1, style="wafer",
                        encoding="fail_mask", regrid_p=0.5)  # fmt: skip
    assert recipe.out_channels == 2 and recipe.in_channels == 1
    for view in recipe(codes, generator=gen()):
        assert view.shape == (4, 2, 12, 12)
        assert set(view.unique().tolist()) <= {0.0, 1.0}
        assert (view[:, 0] <= view[:, 1]).all()  # a failing die is on the wafer
    pre = recipe.preprocess(codes)
    plain = make_views("fastsiam", image_size=12, in_channels=1, style="wafer").preprocess(codes)
    assert torch.equal(pre[:, 0], (plain[:, 0] == 1).float())  # code 2 -> 1.0 after / 2
    assert torch.equal(pre[:, 1], (plain[:, 0] > 0).float())
    with pytest.raises(ValueError, match="has no parameter 'encoding'"):
        make_views("simclr", image_size=12, in_channels=1, style="natural", encoding="fail_mask")
    with pytest.raises(ValueError, match="encoding must be one of"):
        make_views("simclr", image_size=12, in_channels=1, style="wafer", encoding="onehot")


def test_a_new_recipe_is_one_registered_function(monkeypatch):
    from selfsup.views import NaturalView, RecipeParts

    monkeypatch.setattr(VIEW_RECIPES, "_entries", dict(VIEW_RECIPES._entries))  # undone after

    @VIEW_RECIPES.register("three_crops")
    def three_crops(style: str, image_size: int) -> RecipeParts:
        defaults = {"crop_scale": (0.5, 1.0), "mean": None, "std": None}
        return RecipeParts(defaults, lambda p, s: [NaturalView(s, crop_scale=p["crop_scale"])] * 3)

    recipe = make_views("three_crops", image_size=8, crop_scale=[0.2, 1.0])
    assert recipe.num_views == 3 and recipe.views[0].crop_scale == (0.2, 1.0)
    assert [v.shape for v in recipe(natural_batch(torch.uint8, b=2, size=12))] == [(2, 3, 8, 8)] * 3
    known = ", ".join(sorted(VIEW_RECIPES.names()))
    assert "three_crops" in known
    with pytest.raises(ValueError, match=f"known: {known}"):
        make_views("four_crops", image_size=8)


def test_old_recipe_names_say_their_new_names():
    with pytest.raises(ValueError, match="view recipe 'rotation' is now 'rotnet'"):
        make_views("rotation", image_size=8)
    with pytest.raises(ValueError, match="view recipe 'multiview' is now 'fastsiam'"):
        recipe_defaults("multiview", image_size=8)


def test_fail_mask_views_and_encode_wafer_share_one_encoding():
    from selfsup.views import WAFER_ENCODINGS
    from selfsup.wafers import encode_wafer

    codes = wafer_batch(b=3, size=10)
    for encoding, channels in WAFER_ENCODINGS.items():
        recipe = make_views(
            "simclr", image_size=10, in_channels=1, style="wafer", encoding=encoding
        )
        assert recipe.out_channels == channels
        stored = encode_wafer(codes[:, 0], encoding)  # [B, C, H, W] uint8
        scale = 0.5 if encoding == "codes" else 1.0  # codes end as code / 2
        assert torch.equal(recipe.preprocess(codes), stored.float() * scale)


def test_views_import_nothing_from_data_methods_or_train():
    import subprocess
    import sys

    code = (
        "import sys, selfsup.views; "
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['selfsup', 'data'], ['selfsup', 'methods'], ['selfsup', 'train'])))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_moco_recipes_crop_as_their_papers():
    from selfsup.methods import MoCoV2
    from selfsup.views.recipes import recipe_parts

    assert MoCoV2.view_recipe == "mocov2"
    assert recipe_parts("mocov2", "natural", 32).defaults["crop_scale"] == (0.2, 1.0)
    assert recipe_parts("simclr", "natural", 32).defaults["crop_scale"] == (0.08, 1.0)
    wafer = recipe_parts("mocov2", "wafer", 32).defaults
    assert wafer == recipe_parts("simclr", "wafer", 32).defaults
