"""Optimizers (SGD, LARS, Adam, AdamW), parameter groups and the warmup + cosine LR schedule."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

OPTIMIZERS = ("sgd", "lars", "adam", "adamw")
ADAM_BETAS = (0.9, 0.999)  # torch's (and Kingma & Ba's) defaults
# Under a wall-clock budget the LR warm-up is over by this share of it, however many steps it
# planned (SimCLR and DINO warm up for 10 epochs of 100 or more).
WARMUP_MAX_BUDGET_SHARE = 0.1


def scaled_lr(base_lr: float, batch_size: int, rule: str = "linear") -> float:
    """Learning rate for ``batch_size`` from a base rate defined at batch 256.

    linear: Goyal et al. 2017 (lr * B / 256); sqrt: Krizhevsky 2014, as SimCLR with LARS at large B.
    """
    if rule == "linear":
        return base_lr * batch_size / 256
    if rule == "sqrt":
        return base_lr * math.sqrt(batch_size / 256)
    if rule == "none":
        return base_lr
    raise ValueError(f"lr_scaling must be linear, sqrt or none, got '{rule}'")


def parameter_groups(
    parameters: nn.Module | Iterable[nn.Parameter], weight_decay: float
) -> list[dict]:
    """Two groups of a module's (or a list's) trainable parameters: weights with decay; biases
    and norm parameters (ndim <= 1) without.

    The second group also carries ``lars_exclude`` so LARS skips its trust ratio, as in
    SimCLR and BYOL.
    """
    decay, no_decay = [], []
    for p in parameters.parameters() if isinstance(parameters, nn.Module) else parameters:
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0, "lars_exclude": True})
    return groups


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling (You, Gitman & Ginsburg 2017) on top of SGD momentum.

    For each parameter w with gradient g (weight decay added to g first):
    local_lr = trust_coefficient * ||w|| / ||g + wd * w||, and the update is SGD with momentum on
    local_lr * (g + wd * w). Groups with ``lars_exclude=True`` use plain SGD.
    """

    def __init__(
        self,
        params: Iterable,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        trust_coefficient: float = 0.001,
        eps: float = 1e-8,
    ) -> None:
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            eps=eps,
            lars_exclude=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d_p = p.grad
                if group["weight_decay"] != 0:
                    d_p = d_p.add(p, alpha=group["weight_decay"])
                if not group["lars_exclude"]:
                    w_norm = torch.linalg.vector_norm(p)
                    g_norm = torch.linalg.vector_norm(d_p)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / (g_norm + group["eps"]),
                        torch.ones_like(w_norm),
                    )
                    d_p = d_p.mul(trust)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d_p.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d_p)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def build_optimizer(
    name: str,
    parameters: nn.Module | Iterable[nn.Parameter],
    *,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
    betas: tuple[float, float] = ADAM_BETAS,
) -> torch.optim.Optimizer:
    """Optimizer ``name`` over ``parameter_groups(parameters, weight_decay)``.

    ``momentum``: SGD's and LARS's. ``betas``: Adam's and AdamW's. "adam" adds the weight
    decay to the gradient (L2, as the BiGAN code's Adam); "adamw" decays the weights apart
    from the gradient's moments (Loshchilov & Hutter 2019).
    """
    groups = parameter_groups(parameters, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    for g in groups:
        g.pop("lars_exclude", None)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum)
    if name == "adam":
        return torch.optim.Adam(groups, lr=lr, betas=betas)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=betas)
    raise ValueError(f"unknown optimizer '{name}' (known: {', '.join(OPTIMIZERS)})")


def warmup_cosine(
    step: float,
    total_steps: int,
    warmup_steps: int,
    final_fraction: float = 0.0,
    time_progress: float = 0.0,
) -> float:
    """LR multiplier: linear warm-up from ~0 to 1, then cosine to ``final_fraction``
    (Loshchilov & Hutter 2017, without restarts).

    In steps, the warm-up lasts ``warmup_steps`` and the cosine the rest of ``total_steps``. A
    wall-clock budget (``time_progress`` = elapsed / budget; 0 without one) can end both sooner:
    the warm-up is over by c = ``WARMUP_MAX_BUDGET_SHARE`` of the budget, and the cosine ends
    with the budget:
        warm-up (step < warmup_steps and time_progress < c): max((step + 1) / warmup_steps,
                                                                 time_progress / c)
        p = max((step - warmup_steps) / (total_steps - warmup_steps), (time_progress - c) / (1 - c))
        factor = f + (1 - f) * (1 + cos(pi * p)) / 2.
    When the steps' warm-up ends before c of the budget, the LR holds its peak until then (no
    warm-up planned: c = 0, the cosine runs on the whole budget). The cap keeps a budget that
    fits fewer steps than the warm-up from spending itself warming up (docs/benchmarks.md,
    session 16).
    """
    cap = WARMUP_MAX_BUDGET_SHARE if warmup_steps > 0 else 0.0
    if warmup_steps > 0 and step < warmup_steps and time_progress < cap:
        return max((step + 1) / warmup_steps, time_progress / cap)
    span = max(1, total_steps - warmup_steps)
    by_time = (time_progress - cap) / (1 - cap)
    progress = min(1.0, max((step - warmup_steps) / span, by_time, 0.0))
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))
