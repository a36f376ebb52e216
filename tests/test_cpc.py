"""CPC v2: the patch grid, per-patch augmentation, the causal context, the loss and the method."""

import math

import pytest
import torch

import selfsup
from selfsup.losses import cpc_infonce, cpc_infonce_with_accuracy
from selfsup.methods.cpc import ALL_DIRECTIONS, CausalContextNetwork
from selfsup.views import make_views
from selfsup.views.patches import augment_patches, drop_colors, extract_patches, patch_geometry
from tests.ddp_harness import assert_ddp_gradients, run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")
SMALL = dict(target_dim=8, context_hidden_dim=16, context_blocks=2)


def build(image_size: int = 16, **kwargs) -> selfsup.methods.Method:
    return selfsup.build(
        "cpc", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=image_size,
        **{**SMALL, **kwargs},
    )  # fmt: skip


# --- the loss -------------------------------------------------------------------------------------


def test_loss_on_a_hand_computed_case():
    # one image, a 2x1 grid, 1-d encodings: the prediction 2 from row 0 scores t = (0.5, 1)
    predictions = torch.tensor([2.0, 7.0]).view(1, 1, 1, 2, 1)  # row 1's prediction has no target
    targets = torch.tensor([0.5, 1.0]).view(1, 1, 2, 1)
    out = cpc_infonce_with_accuracy(predictions, targets, [(1, 0)])
    assert out.loss.item() == pytest.approx(-math.log(math.exp(2) / (math.exp(1) + math.exp(2))))
    assert out.accuracy.item() == 1.0

    # two images, two shifts (down from row 0, up from row 1): 4 predictions, 4 candidates
    p = [[1.0, -1.0], [0.5, 2.0]]  # p[b][row]
    t = [[0.3, -0.2], [1.0, 0.4]]  # t[b][row]
    predictions = torch.tensor([[[p[b][0], 0.0], [0.0, p[b][1]]] for b in range(2)])
    candidates = [t[0][0], t[0][1], t[1][0], t[1][1]]
    expected, hits = 0.0, 0
    for b in range(2):
        for row, target_row in ((0, 1), (1, 0)):
            scores = [p[b][row] * c for c in candidates]
            positive = scores[2 * b + target_row]
            expected += -positive + math.log(sum(math.exp(s) for s in scores))
            hits += positive == max(scores)
    out = cpc_infonce_with_accuracy(
        predictions.view(2, 2, 1, 2, 1), torch.tensor(t).view(2, 1, 2, 1), [(1, 0), (-1, 0)]
    )
    assert out.loss.item() == pytest.approx(expected / 4, abs=1e-6)
    assert out.accuracy.item() == pytest.approx(hits / 4)


def test_loss_checks_shapes_and_shifts():
    predictions, targets = torch.randn(2, 1, 4, 3, 3), torch.randn(2, 4, 3, 3)
    with pytest.raises(ValueError, match="S = 2 shifts"):
        cpc_infonce(predictions, targets, [(1, 0), (2, 0)])
    with pytest.raises(ValueError, match=r"shift \(3, 0\) points to no other patch of a 3x3"):
        cpc_infonce(predictions, targets, [(3, 0)])


def _loss_gradients(data, rows):
    p = data["p"][rows].clone().requires_grad_()
    t = data["t"][rows].clone().requires_grad_()
    cpc_infonce(p, t, [(1, 0), (0, -1), (-2, 0)]).backward()
    return {"p": p.grad, "t": t.grad}


def test_loss_gradients_on_two_ranks_equal_one_process():
    g = torch.Generator().manual_seed(0)
    data = {
        "p": torch.randn(4, 3, 5, 3, 2, generator=g, dtype=torch.float64),
        "t": torch.randn(4, 5, 3, 2, generator=g, dtype=torch.float64),
    }
    results = run_on_ranks(_loss_gradients, data)
    assert_ddp_gradients(_loss_gradients, data, results)


# --- patches and their augmentation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"), [(16, (4, 2)), (32, (8, 4)), (225, (56, 28)), (256, (64, 32))]
)
def test_patch_geometry_scales_with_the_image(size, expected):
    assert patch_geometry(size, 7) == expected
    with pytest.raises(ValueError, match="7x7 grid .* on 12 px images gives 2 px patches"):
        patch_geometry(12, 7)


@pytest.mark.parametrize(("height", "width", "grid"), [(16, 16, 7), (19, 26, 3)])
def test_patches_are_the_image_windows_in_one_batched_view(height, width, grid):
    images = torch.randn(3, 2, height, width)
    patches = extract_patches(images, grid)
    (ph, sh), (pw, sw) = patch_geometry(height, grid), patch_geometry(width, grid)
    top, left = (height - sh * (grid + 1)) // 2, (width - sw * (grid + 1)) // 2
    assert patches.shape == (3, grid, grid, 2, ph, pw)
    for i in range(grid):
        for j in range(grid):
            y, x = top + i * sh, left + j * sw
            assert torch.equal(patches[:, i, j], images[:, :, y : y + ph, x : x + pw])
    # a view of the batch (unfold), not per-sample copies
    assert patches.untyped_storage().data_ptr() == images.untyped_storage().data_ptr()


def test_wafer_patches_are_only_flipped_and_keep_their_codes():
    g = torch.Generator().manual_seed(0)
    patches = torch.randint(0, 3, (64, 1, 4, 4), generator=g).float() / 2
    out = augment_patches(patches, "wafer", flip_p=0.5, generator=g)
    assert set(out.unique().tolist()) <= {0.0, 0.5, 1.0}
    flips = [patches, patches.flip(-1), patches.flip(-2), patches.flip(-1).flip(-2)]
    same = torch.stack([(out == f).flatten(1).all(1) for f in flips])  # [4 flips, 64 patches]
    assert same.any(0).all()
    assert not same[0].all()  # some patches were flipped, each on its own draw


def test_color_dropping_keeps_one_random_channel_per_patch():
    g = torch.Generator().manual_seed(0)
    patches = torch.rand(200, 3, 4, 4, generator=g) + 0.1
    out = drop_colors(patches, 1.0, generator=g)
    kept = (out != 0).flatten(2).all(2)  # [200, 3]
    assert torch.equal(kept.sum(1), torch.ones(200, dtype=torch.long))
    assert torch.equal(out.sum(1), (patches * kept[:, :, None, None]).sum(1))
    assert (kept.sum(0) > 40).all()  # every channel is kept by some patches
    assert torch.equal(drop_colors(patches, 0.0), patches)
    assert torch.equal(drop_colors(patches[:, :1], 1.0), patches[:, :1])  # 1 channel: untouched


def test_recipe_gives_one_view_natural_and_wafer():
    images = torch.randint(0, 256, (4, 3, 20, 20), dtype=torch.uint8)
    views = make_views("cpc", image_size=16)(images)
    assert len(views) == 1 and views[0].shape == (4, 3, 16, 16)
    codes = torch.randint(0, 3, (4, 1, 20, 20), dtype=torch.uint8)
    (view,) = make_views("cpc", image_size=16, in_channels=1, style="wafer")(codes)
    assert view.shape == (4, 1, 16, 16) and set(view.unique().tolist()) <= {0.0, 0.5, 1.0}


# --- the context network and the predictions ------------------------------------------------------


def test_context_at_a_row_never_sees_the_rows_below():
    torch.manual_seed(0)
    network = CausalContextNetwork(6, hidden_dim=8, num_blocks=3)
    z = torch.randn(2, 6, 7, 7)
    before = network(z)
    for row in range(7):
        changed = z.clone()
        changed[:, :, row, 3] += 5.0
        after = network(changed)
        assert torch.equal(after[:, :, :row], before[:, :, :row]), row
        assert not torch.allclose(after[:, :, row], before[:, :, row]), row


@pytest.mark.parametrize("direction", ALL_DIRECTIONS)
def test_every_prediction_sees_nothing_on_its_target_side(direction):
    torch.manual_seed(0)
    method = build(directions=(direction,), steps_to_ignore=0, steps_to_predict=2)
    z = torch.randn(1, method.feature_dim, 7, 7, requires_grad=True)
    predictions, shifts = method.predict(z)
    assert predictions.shape == (1, 2, 8, 7, 7)
    for s, (di, dj) in enumerate(shifts):
        i, j = 3, 3
        (grad,) = torch.autograd.grad(predictions[0, s, :, i, j].sum(), z, retain_graph=True)
        seen = grad[0].abs().sum(0) > 0  # [7, 7] positions the prediction depends on
        rows, cols = torch.meshgrid(torch.arange(7), torch.arange(7), indexing="ij")
        # the half-plane beyond the context's own row (or column), towards the target
        ahead = (rows - i) * (di > 0) - (rows - i) * (di < 0) + (cols - j) * (dj > 0)
        ahead = ahead - (cols - j) * (dj < 0)
        assert not seen[ahead > 0].any(), (direction, s)
        assert seen[i, j] and not seen[i + di, j + dj]


# --- the method -----------------------------------------------------------------------------------


def test_all_patches_go_through_the_backbone_in_one_pass():
    method = build()
    calls = []
    method.backbone.register_forward_hook(lambda m, args, out: calls.append(args[0].shape))
    method.training_loss([torch.randn(5, 3, 16, 16)])
    assert calls == [torch.Size([5 * 49, 3, 4, 4])]


def test_smoke_training_moves_every_part():
    torch.manual_seed(0)
    method = build()
    optimizer = torch.optim.SGD(method.parameters(), lr=0.05, momentum=0.9)
    before = {k: v.clone() for k, v in method.state_dict().items()}
    images = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8)
    for _ in range(3):
        out = method.training_loss(method.views(images))
        assert torch.isfinite(out.loss)
        assert 0 <= float(out.logs["accuracy"]) <= 1 and float(out.logs["collapse_std"]) > 0
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
    for part in ("backbone", "target_head", "context", "predictors"):
        assert any(
            not torch.equal(v, before[k]) for k, v in method.state_dict().items()
            if k.startswith(part + ".")
        ), part  # fmt: skip
    assert method.embed(images).shape == (8, method.feature_dim)
    assert method.encoder(torch.rand(2, 3, 16, 16)).shape == (2, 8)


@pytest.mark.parametrize(
    ("size", "kwargs", "channels"),
    [(16, {}, 3), (32, dict(in_channels=1, view_style="wafer"), 1), (225, {}, 3)],
)
def test_builds_at_every_size_run_a_loss(size, kwargs, channels):
    torch.manual_seed(0)
    method = build(size, **kwargs)
    high = 3 if channels == 1 else 256
    images = torch.randint(0, high, (2, channels, size + 3, size + 3), dtype=torch.uint8)
    loss = method(images)
    assert torch.isfinite(loss)
    loss.backward()
    assert method.embed(images).shape == (2, method.feature_dim)


def test_defaults_and_clear_errors():
    defaults = selfsup.list_methods()["cpc"]
    assert defaults["grid_size"] == 7 and defaults["emb_scale"] == 0.1
    assert (defaults["steps_to_ignore"], defaults["steps_to_predict"]) == (2, 3)
    assert defaults["target_dim"] == 64 and defaults["context_hidden_dim"] == 256
    assert build().offsets == (3,)
    with pytest.raises(ValueError, match="cpc: .* 4 px minimum"):
        build(12)
    with pytest.raises(ValueError, match="steps_to_predict=7, grid_size=7"):
        build(steps_to_predict=7)
    with pytest.raises(ValueError, match="directions must be distinct names"):
        build(directions=("top_down", "diagonal"))
    with pytest.raises(ValueError, match="cpc needs 1 view"):
        build().training_loss([torch.randn(2, 3, 16, 16)] * 2)
    again = selfsup.build("cpc", **build(directions=["bottom_up"]).hyperparameters())
    assert again.directions == ("bottom_up",)
