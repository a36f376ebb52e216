"""Instance discrimination (Wu et al. 2018): NCE against a memory bank of one feature per image."""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.methods.base import (
    LossOutput,
    Method,
    check_non_negative,
    embedding_std,
    register,
)
from selfsup.methods.memory_bank import (
    BankContrast,
    MemoryBank,
    check_bank_arguments,
    require_indices,
)


@register("instdisc")
class InstDisc(Method):
    """Instance discrimination: every image is its own class, scored against a memory bank.

    Wu, Xiong, Yu & Lin, "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination", CVPR 2018. With f = normalise(W backbone(x)) the 128-d feature of image i
    and v_j the memory-bank row of image j (n rows), the non-parametric softmax (eq. 2)
        P(i|f) = exp(v_i.f / t) / Z,    Z = sum_j exp(v_j.f / t),
    is learnt by binary NCE against K noise rows drawn uniformly (eq. 5-7, ``nce_loss``):
        h(j, f) = P(j|f) / (P(j|f) + K/n),
        L = -log h(i, f) - sum_{k=1..K} log(1 - h(j_k, f)),   averaged over the batch,
    with Z estimated on the first batch (Z ~ n mean exp(v.f/t)) and then fixed, as the official
    code does. ``nce_kind="softmax"`` uses the cross-entropy over the 1 + K logits instead
    (``softmax_nce_loss``). After the loss the bank rows of the batch (every rank's) move:
        v_i <- normalise(m v_i + (1 - m) f_i)      (m = ``bank_momentum``; official code: 0.5).
    Shapes: views 1 x [B, C, H, W]; features [B, feature_dim]; f [B, proj_dim];
    bank [num_samples, proj_dim] float32 (a buffer: 512 MB per million images at 128-d).

    Defaults (paper, sec. 4; the official lemniscate code): head Linear(feature_dim, 128) (the
    ResNet fc replaced by ``low_dim``), K = 4096 negatives, t = 0.07, m = 0.5, one view per
    image with MoCo v1's augmentation (``instdisc`` recipe: crop 0.2-1, flip, colour jitter
    0.4, grayscale 0.2; He et al. follow Wu et al.). Needs each sample's dataset position
    (``indices``) and ``num_samples`` (``selfsup pretrain`` sets it to the training set's size).

    Departures: the K negatives are drawn once per step and shared by the whole global batch
    (``BankContrast``; the paper draws K per sample: the same in expectation). They are drawn
    with replacement, so K needs no cap at the dataset's size: on a small dataset the negatives
    repeat rows and may include the sample's own (as the paper's uniform noise may).
    Proximal regularisation (sec. 3.4), ``proximal_weight`` = lambda > 0: the loss gains
        lambda * mean_i ||f_i - v_i||^2,
    v_i the sample's bank row before this step's update (its feature from the last visit), so
    a feature moves slowly between visits and the row it is scored against stays close to it;
    the paper adds it against the oscillation of training. Off by default (0), as in the
    authors' released code. Not here: the paper's SGD schedule (lr 0.03, momentum 0.9, weight
    decay 5e-4, 200 epochs): the trainer's optimizer is used.
    """

    view_recipe = "instdisc"
    batch_fields = ("indices",)

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        proj_dim: int = 128,
        num_samples: int | None = None,
        num_negatives: int = 4096,
        temperature: float = 0.07,
        bank_momentum: float = 0.5,
        nce_kind: str = "nce",
        proximal_weight: float = 0.0,
        **kwargs: Any,
    ) -> None:
        check_non_negative("instdisc", proximal_weight=proximal_weight)
        num_samples = check_bank_arguments(
            "instdisc", num_samples, num_negatives=num_negatives, temperature=temperature,
            bank_momentum=bank_momentum, nce_kind=nce_kind,
        )  # fmt: skip
        super().__init__(backbone, feature_size, **kwargs)
        (proj_dim,) = self.head_sizes(proj_dim=proj_dim).values()
        self.num_samples = num_samples
        self.bank_momentum = bank_momentum
        self.proximal_weight = proximal_weight
        self.projector = nn.Linear(self.feature_dim, proj_dim)
        self.bank = MemoryBank(num_samples, proj_dim)
        self.contrast = BankContrast(num_samples, num_negatives, temperature, kind=nce_kind)

    @classmethod
    def data_defaults(cls, num_images: int, global_batch: int) -> dict[str, Any]:
        return {"num_samples": num_images}

    def training_loss(self, views: list[Tensor], *, indices: Tensor | None = None) -> LossOutput:
        if len(views) != 1:
            raise ValueError(f"instdisc needs 1 view per image, got {len(views)}")
        indices = require_indices("instdisc", indices, self.num_samples, views[0].shape[0])
        f = F.normalize(self.projector(self.backbone(views[0])).float(), dim=1)
        indices = indices.to(f.device)
        self.bank.fill_unwritten(indices, f)
        loss, logs = self.contrast(f, self.bank, indices)
        if self.proximal_weight > 0:
            proximal = (f - self.bank.rows[indices]).pow(2).sum(dim=1).mean()
            loss = loss + self.proximal_weight * proximal
            logs["proximal"] = proximal.detach()
        self.bank.update(indices, f, self.bank_momentum)
        logs["bank_written"] = self.bank.written_fraction()
        return LossOutput(loss, logs={"collapse_std": embedding_std(f), **logs})
