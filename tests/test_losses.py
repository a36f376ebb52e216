"""Every loss against a value computed here by explicit loops or closed forms, on tiny tensors."""

import math

import pytest
import torch

from selfsup.losses import (
    barlow_twins_loss,
    byol_loss,
    dino_loss,
    infonce_queue_loss,
    negative_cosine,
    nt_xent_loss,
    update_center,
)


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def unit(v):
    return v / v.norm()


# --- NT-Xent --------------------------------------------------------------------------------------


def nt_xent_by_loops(z1, z2, t):
    z = [unit(v) for v in torch.cat([z1, z2])]
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        denominator = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denominator)
    return total / n2


def test_nt_xent_matches_loops():
    z1, z2 = randn(5, 3, seed=1), randn(5, 3, seed=2)
    for t in (0.5, 0.1):
        assert nt_xent_loss(z1, z2, t).item() == pytest.approx(
            nt_xent_by_loops(z1, z2, t), abs=1e-9
        )


def test_nt_xent_identical_pairs_of_orthogonal_samples_closed_form():
    # positive similarity 1, all 2N-2 negatives 0: loss = log(1 + (2N-2) exp(-1/t))
    n, t = 3, 0.5
    z = torch.eye(4, dtype=torch.float64)[:n] * 7.0  # scale must not matter
    expected = math.log(1 + (2 * n - 2) * math.exp(-1 / t))
    assert nt_xent_loss(z, z.clone(), t).item() == pytest.approx(expected, abs=1e-12)


def test_nt_xent_invariant_to_joint_permutation_and_swapping_views():
    z1, z2 = randn(6, 4, seed=3), randn(6, 4, seed=4)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    base = nt_xent_loss(z1, z2)
    assert nt_xent_loss(z1[perm], z2[perm]).item() == pytest.approx(base.item(), abs=1e-12)
    assert nt_xent_loss(z2, z1).item() == pytest.approx(base.item(), abs=1e-12)


def test_nt_xent_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="nt_xent_loss"):
        nt_xent_loss(randn(4, 3), randn(5, 3))


# --- negative cosine and BYOL ---------------------------------------------------------------------


def test_negative_cosine_hand_value_and_stop_gradient():
    p = torch.tensor([[1.0, 0.0], [1.0, 1.0]], requires_grad=True)
    z = torch.tensor([[0.0, 1.0], [2.0, 2.0]], requires_grad=True)
    loss = negative_cosine(p, z)
    assert loss.item() == pytest.approx(-(0.0 + 1.0) / 2)
    loss.backward()
    assert z.grad is None
    # d/dp of -cos(p, z)/B at p=(1,0), z=(0,1): -(z/|z| - cos p/|p|)/|p| / B = (0, -1/2)
    assert torch.allclose(p.grad[0], torch.tensor([0.0, -0.5]))


def test_byol_loss_is_normalised_mse_with_hand_value():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]], requires_grad=True)
    z = torch.tensor([[0.0, 3.0], [1.0, 1.0]], requires_grad=True)
    expected = (2.0 + (2 - 2 / math.sqrt(2))) / 2
    assert byol_loss(p, z).item() == pytest.approx(expected)
    mse = ((p / p.norm(dim=1, keepdim=True) - z / z.norm(dim=1, keepdim=True)) ** 2).sum(1).mean()
    assert byol_loss(p, z).item() == pytest.approx(mse.item())
    byol_loss(p, z).backward()
    assert z.grad is None and p.grad is not None


# --- InfoNCE with a queue -------------------------------------------------------------------------


def test_infonce_queue_matches_loops_and_stops_gradient_to_keys():
    q = randn(4, 3, seed=5).requires_grad_()
    k = randn(4, 3, seed=6).requires_grad_()
    queue = torch.stack([unit(v) for v in randn(7, 3, seed=7)]).requires_grad_()
    t = 0.2
    expected = 0.0
    for qi, ki in zip(q.detach(), k.detach(), strict=True):
        qi, ki = unit(qi), unit(ki)
        positive = math.exp(float(qi @ ki) / t)
        negatives = sum(math.exp(float(qi @ n) / t) for n in queue.detach())
        expected += -math.log(positive / (positive + negatives))
    loss = infonce_queue_loss(q, k, queue, t)
    assert loss.item() == pytest.approx(expected / 4, abs=1e-9)
    loss.backward()
    assert k.grad is None and queue.grad is None and q.grad is not None


def test_infonce_closed_form_with_orthogonal_queue():
    # q = k and every queued key orthogonal to q: loss = log(1 + K exp(-1/t))
    q = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    queue = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]], dtype=torch.float64)
    t = 0.2
    expected = math.log(1 + 3 * math.exp(-1 / t))
    assert infonce_queue_loss(q, 2 * q, queue, t).item() == pytest.approx(expected, abs=1e-12)


# --- Barlow Twins ---------------------------------------------------------------------------------


def barlow_by_loops(z1, z2, lam, eps=1e-5):
    n, d = z1.shape

    def normalise(z):
        out = torch.empty_like(z)
        for j in range(d):
            mean = sum(float(z[b, j]) for b in range(n)) / n
            var = sum((float(z[b, j]) - mean) ** 2 for b in range(n)) / n
            for b in range(n):
                out[b, j] = (float(z[b, j]) - mean) / math.sqrt(var + eps)
        return out

    a, b_ = normalise(z1), normalise(z2)
    loss = 0.0
    for i in range(d):
        for j in range(d):
            c = sum(float(a[b, i] * b_[b, j]) for b in range(n)) / n
            loss += (1 - c) ** 2 if i == j else lam * c**2
    return loss


def test_barlow_twins_matches_loops():
    z1, z2 = randn(6, 3, seed=8), randn(6, 3, seed=9)
    for lam in (5e-3, 0.5):
        expected = barlow_by_loops(z1, z2, lam)
        assert barlow_twins_loss(z1, z2, lam).item() == pytest.approx(expected, abs=1e-9)


def test_barlow_twins_zero_for_identical_decorrelated_embeddings():
    # columns have mean 0, variance 1 and are orthogonal: C = I / (1 + eps), loss ~ 2 eps^2
    z = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    assert barlow_twins_loss(z, z.clone()).item() < 1e-9


def test_barlow_twins_invariant_to_per_dimension_affine_maps():
    z1, z2 = randn(8, 4, seed=10), randn(8, 4, seed=11)
    scale, shift = torch.tensor([0.5, 2.0, 3.0, 10.0], dtype=torch.float64), 4.0
    base = barlow_twins_loss(z1, z2).item()
    # eps = 1e-5 in the variance makes the invariance approximate
    assert barlow_twins_loss(z1 * scale + shift, z2).item() == pytest.approx(base, rel=1e-4)


# --- DINO -----------------------------------------------------------------------------------------


def dino_by_loops(student, teacher, center, ts, tt):
    total, pairs = 0.0, 0
    batch, k = teacher[0].shape
    for i, t in enumerate(teacher):
        for j, s in enumerate(student):
            if i == j:
                continue
            for b in range(batch):
                t_exp = [math.exp((float(t[b, c]) - float(center[c])) / tt) for c in range(k)]
                s_exp = [math.exp(float(s[b, c]) / ts) for c in range(k)]
                pt = [e / sum(t_exp) for e in t_exp]
                log_ps = [math.log(e / sum(s_exp)) for e in s_exp]
                total += -sum(p * lp for p, lp in zip(pt, log_ps, strict=True)) / batch
            pairs += 1
    return total / pairs


def test_dino_loss_matches_loops_and_stops_teacher_gradient():
    student = [randn(3, 5, seed=20 + v).requires_grad_() for v in range(4)]  # 2 global + 2 local
    teacher = [randn(3, 5, seed=30 + v).requires_grad_() for v in range(2)]
    center = randn(5, seed=40) * 0.1
    loss = dino_loss(student, teacher, center, student_temp=0.1, teacher_temp=0.04)
    expected = dino_by_loops(
        [s.detach() for s in student], [t.detach() for t in teacher], center, 0.1, 0.04
    )
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    loss.backward()
    assert all(t.grad is None for t in teacher)
    assert all(s.grad is not None for s in student)


def test_dino_loss_ignores_constant_shift_of_student_logits():
    student = [randn(3, 5, seed=50 + v) for v in range(3)]
    teacher = [randn(3, 5, seed=60 + v) for v in range(2)]
    center = torch.zeros(5, dtype=torch.float64)
    shifted = [s + 3.0 for s in student]
    assert dino_loss(shifted, teacher, center).item() == pytest.approx(
        dino_loss(student, teacher, center).item(), abs=1e-9
    )


def test_dino_update_center_is_ema_of_batch_mean():
    teacher = [torch.tensor([[1.0, 2.0], [3.0, 4.0]]), torch.tensor([[5.0, 6.0], [7.0, 8.0]])]
    center = torch.tensor([10.0, 20.0])
    new = update_center(center, teacher, center_momentum=0.9)
    # batch mean over the 4 teacher rows = (4, 5)
    assert torch.allclose(new, torch.tensor([0.9 * 10 + 0.1 * 4, 0.9 * 20 + 0.1 * 5]))
    assert torch.equal(center, torch.tensor([10.0, 20.0])), (
        "update_center must not modify its input"
    )


# --- precision ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, call",
    [
        ("nt_xent", lambda a, b: nt_xent_loss(a, b, 0.1)),
        ("negative_cosine", negative_cosine),
        ("byol", byol_loss),
        ("infonce", lambda a, b: infonce_queue_loss(a, b, torch.nn.functional.normalize(b * 2))),
        ("barlow_twins", barlow_twins_loss),
        ("dino", lambda a, b: dino_loss([a, b, a], [b, a], torch.zeros(a.shape[1]))),
    ],
)
def test_losses_run_in_float32_under_bf16_autocast(name, call):
    a, b = randn(8, 16, seed=70).float(), randn(8, 16, seed=71).float()
    reference = call(a, b)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = call(a, b)
        from_half = call(a.bfloat16(), b.bfloat16())
    assert inside.dtype == torch.float32 and from_half.dtype == torch.float32, name
    assert inside.item() == pytest.approx(reference.item(), abs=1e-6), name
    assert torch.isfinite(from_half), name
