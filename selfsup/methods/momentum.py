"""Momentum (EMA) targets shared by BYOL, MoCo and DINO: one copy rule, one tau schedule."""

from __future__ import annotations

from typing import Any

from torch import nn

from selfsup.methods.base import Method, cosine_schedule, ema_update, momentum_copy


class MomentumMethod(Method):
    """A Method whose target networks are exponential moving averages of online modules.

    Call ``add_momentum_targets({"target_backbone": "backbone", ...}, base, final)`` once the
    online modules exist. After every optimizer step, ``on_train_step_end(progress)`` sets
    ``self.momentum = cosine_schedule(progress, base, final)`` (BYOL, Grill et al. 2020, sec. 3.2:
    tau = 1 - (1 - tau_base)(cos(pi k / K) + 1) / 2; constant when base == final, as MoCo) and
    then applies target <- tau * target + (1 - tau) * online. Targets are frozen copies
    (requires_grad False), so they never enter the optimizer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._momentum_pairs: list[tuple[str, str]] = []
        self.base_momentum = 1.0
        self.final_momentum = 1.0
        self.momentum = 1.0

    def add_momentum_targets(
        self, targets: dict[str, str], base_momentum: float, final_momentum: float
    ) -> None:
        """Create ``self.<target> = frozen copy of self.<online>`` for each target: online pair."""
        for name, value in (("base_momentum", base_momentum), ("final_momentum", final_momentum)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{type(self).__name__}: {name} must be in [0, 1], got {value}")
        for target_name, online_name in targets.items():
            online = getattr(self, online_name)
            if not isinstance(online, nn.Module):
                raise ValueError(f"momentum target source '{online_name}' is not a module")
            setattr(self, target_name, momentum_copy(online))
            self._momentum_pairs.append((target_name, online_name))
        self.base_momentum = base_momentum
        self.final_momentum = final_momentum
        self.momentum = base_momentum

    def momentum_at(self, progress: float) -> float:
        return cosine_schedule(progress, self.base_momentum, self.final_momentum)

    def set_progress(self, progress: float) -> None:
        super().set_progress(progress)
        self.momentum = self.momentum_at(progress)

    def on_train_step_end(self, progress: float) -> None:
        super().on_train_step_end(progress)  # sets self.momentum for this progress
        for target_name, online_name in self._momentum_pairs:
            ema_update(getattr(self, target_name), getattr(self, online_name), self.momentum)
