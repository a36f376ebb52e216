"""A memory bank of one feature per training sample (Wu et al. 2018) and the NCE against it that
instance discrimination, PIRL and CMC share.

```
bank = MemoryBank(num_samples=len(dataset), dim=128)
contrast = BankContrast(num_samples=len(dataset), num_negatives=4096, temperature=0.07)
bank.fill_unwritten(indices, features)           # first visits: the row is the feature itself
loss, logs = contrast(features, bank, indices)   # features [B, 128]: L2-normalised here
bank.update(indices, features, momentum=0.5)     # after the loss: all ranks' rows, no gradient
```
Every tensor is a buffer, so checkpoints and ``--resume`` keep the bank, the noise sampler's
position and the NCE normaliser exactly. Under DDP, ``indices`` are global dataset positions;
updates gather every rank's rows and the negatives are drawn from a generator every rank seeds
the same way, so all ranks hold the same bank and use the same negatives.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.losses.nce import estimate_log_z, nce_loss, softmax_nce_loss
from selfsup.methods.base import check_positive
from selfsup.runtime.distributed import all_reduce_mean, gather_no_grad

NCE_KINDS = ("nce", "softmax")


def require_indices(method: str, indices: Tensor | None, num_samples: int, batch: int) -> Tensor:
    """``indices`` checked for a memory-bank method: given, int64 [batch], in [0, num_samples)."""
    if indices is None:
        raise ValueError(
            f"{method} keeps one memory-bank row per training sample, so it needs each sample's "
            "position in the dataset: method(images, indices=idx) (selfsup pretrain passes them; "
            "selfsup.data.IndexedDataset yields them in your own loop)"
        )
    if indices.shape != (batch,) or indices.dtype not in (torch.int64, torch.int32):
        raise ValueError(
            f"{method}: indices must be integers of shape [{batch}], got "
            f"{indices.dtype} {tuple(indices.shape)}"
        )
    if len(indices) and (int(indices.min()) < 0 or int(indices.max()) >= num_samples):
        raise ValueError(
            f"{method}: indices must be in [0, num_samples={num_samples}), got "
            f"{int(indices.min())}..{int(indices.max())}; set num_samples to the dataset's size"
        )
    return indices.long()


def require_num_samples(method: str, num_samples: int | None) -> int:
    """The bank size: a method argument ``selfsup pretrain`` fills with the dataset's size."""
    if num_samples is None or num_samples < 1:
        raise ValueError(
            f"{method} needs num_samples, the number of training images (one memory-bank row "
            f"each); selfsup pretrain sets it from the data; got {num_samples!r}"
        )
    return int(num_samples)


def check_bank_arguments(
    method: str,
    num_samples: int | None,
    *,
    num_negatives: int,
    temperature: float,
    bank_momentum: float,
    nce_kind: str,
) -> int:
    """The memory-bank arguments every bank method takes, checked (a ValueError naming the
    method and the argument); returns ``num_samples`` (``require_num_samples``)."""
    num_samples = require_num_samples(method, num_samples)
    check_positive(method, temperature=temperature, num_negatives=num_negatives)
    if not 0.0 <= bank_momentum < 1.0:
        raise ValueError(f"{method}: bank_momentum must be in [0, 1), got {bank_momentum}")
    if nce_kind not in NCE_KINDS:
        raise ValueError(f"{method}: nce_kind must be one of {NCE_KINDS}, got {nce_kind!r}")
    return num_samples


class MemoryBank(nn.Module):
    """One L2-normalised feature per training sample, ``rows`` [num_samples, dim] (a buffer).

    Starts as random unit vectors (Wu et al. 2018); ``written`` marks the rows a sample's
    feature has reached. ``fill_unwritten(indices, features)``, called before the loss, sets
    the rows of samples seen for the first time to their current features, so in the first
    epoch a positive is the sample's own feature (detached) and not a random vector: the
    papers train hundreds of epochs, where this changes one epoch in hundreds, but a short run
    (under an epoch) would otherwise pull every feature towards noise (measured: PIRL on the
    wafer maps in docs/benchmarks.md). ``update(indices, features, momentum)`` then sets
        v_i <- normalise(momentum * v_i + (1 - momentum) * f_i)
    (Wu et al. 2018, sec. 3.2, momentum 0.5 in their code; 0 replaces the row) for every
    rank's samples. ``sample(count)`` draws noise indices uniformly over the bank from a
    generator seeded by the buffers ``seed`` and ``draws``: the same on every rank and, after
    a resume, the draws the run would have made.
    """

    def __init__(self, num_samples: int, dim: int) -> None:
        super().__init__()
        if num_samples < 1 or dim < 1:
            raise ValueError(f"a memory bank needs num_samples, dim >= 1, got {num_samples}, {dim}")
        self.register_buffer("rows", F.normalize(torch.randn(num_samples, dim), dim=1))
        # the global RNG seeds it, so ranks seeded alike (as the trainer seeds them) agree
        self.register_buffer("seed", torch.randint(0, 2**62, ()))
        self.register_buffer("draws", torch.zeros((), dtype=torch.long))
        self.register_buffer("written", torch.zeros(num_samples, dtype=torch.bool))

    @property
    def num_samples(self) -> int:
        return self.rows.shape[0]

    @torch.no_grad()
    def sample(self, count: int) -> Tensor:
        """``count`` indices drawn uniformly with replacement (int64, on the bank's device)."""
        generator = torch.Generator().manual_seed(int(self.seed) + int(self.draws))
        self.draws += 1
        drawn = torch.randint(0, self.num_samples, (count,), generator=generator)
        return drawn.to(self.rows.device)

    def _gathered(self, indices: Tensor, features: Tensor) -> tuple[Tensor, Tensor]:
        """Every rank's indices and normalised features (no gradient), in rank order."""
        features = F.normalize(features.detach().float(), dim=1).to(self.rows.dtype)
        return gather_no_grad(indices.long()), gather_no_grad(features)

    @torch.no_grad()
    def fill_unwritten(self, indices: Tensor, features: Tensor) -> None:
        """Rows never written take the normalised ``features`` [B, dim] (every rank's)."""
        indices, features = self._gathered(indices, features)
        keep = self.written[indices].unsqueeze(1)  # no host sync: a select, not a branch
        self.rows.index_copy_(0, indices, torch.where(keep, self.rows[indices], features))
        self.written.index_fill_(0, indices, True)

    @torch.no_grad()
    def update(self, indices: Tensor, features: Tensor, momentum: float) -> None:
        """Blend the normalised ``features`` [B, dim] of every rank into their rows."""
        indices, features = self._gathered(indices, features)
        blended = momentum * self.rows[indices] + (1.0 - momentum) * features
        self.rows.index_copy_(0, indices, F.normalize(blended, dim=1))
        self.written.index_fill_(0, indices, True)

    def written_fraction(self) -> Tensor:
        """The share of rows a sample's feature has reached (a 0-d float, for the logs)."""
        return self.written.float().mean()


class BankContrast(nn.Module):
    """NCE of features against memory-bank rows with sampled negatives (``nce_loss``).

    ``forward(features, bank, indices)``: the positive of sample i is ``bank.rows[i]``; the
    negatives are ``num_negatives`` rows drawn once per step and shared by the whole global
    batch (the paper draws K per sample: the same in expectation, and a [K, D] matrix instead
    of [B, K, D], which is what makes K = 4096 affordable). ``kind`` "nce" is the paper's binary
    NCE with the normaliser Z estimated on the first batch and then fixed (buffer ``log_z``,
    averaged over ranks); "softmax" the cross-entropy over 1 + K logits.
    Shapes: features [B, D] (normalised here), bank rows [N, D]. Returns (loss, logs).
    """

    def __init__(
        self, num_samples: int, num_negatives: int, temperature: float, kind: str = "nce"
    ) -> None:
        super().__init__()
        if kind not in NCE_KINDS:
            raise ValueError(f"NCE kind must be one of {NCE_KINDS}, got {kind!r}")
        if num_negatives < 1 or temperature <= 0:
            raise ValueError(
                f"num_negatives must be >= 1 and temperature > 0, got {num_negatives}, "
                f"{temperature}"
            )
        self.num_samples = num_samples
        self.num_negatives = num_negatives
        self.temperature = temperature
        self.kind = kind
        self.register_buffer("log_z", torch.tensor(float("nan")))

    def logits(self, features: Tensor, bank: MemoryBank, indices: Tensor) -> tuple[Tensor, Tensor]:
        """(positive logits [B], negative logits [B, K]) of ``features`` against ``bank``."""
        f = F.normalize(features.float(), dim=1)
        rows = bank.rows
        positive = (f * rows[indices]).sum(dim=1) / self.temperature
        negatives = f @ rows[bank.sample(self.num_negatives)].T / self.temperature
        return positive, negatives

    def forward(
        self, features: Tensor, bank: MemoryBank, indices: Tensor
    ) -> tuple[Tensor, dict[str, Any]]:
        positive, negatives = self.logits(features, bank, indices)
        with torch.no_grad():
            accuracy = (positive > negatives.max(dim=1).values).float().mean()
        logs: dict[str, Any] = {"positive_is_top": accuracy}
        if self.kind == "softmax":
            return softmax_nce_loss(positive, negatives), logs
        if torch.isnan(self.log_z):
            estimate = estimate_log_z(positive, negatives, self.num_samples).double()
            # Z (not log Z) is the mean over the global batch: average Z across ranks
            self.log_z.copy_(all_reduce_mean(estimate.exp()).log())
        logs["log_z"] = self.log_z.clone()
        return nce_loss(positive, negatives, self.log_z, self.num_samples), logs
