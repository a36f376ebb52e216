"""BiGAN's adversarial losses on the joint discriminator's logits.

Donahue, Krähenbühl & Darrell, "Adversarial Feature Learning", ICLR 2017, eq. 3: the
discriminator D(x, z) tells data pairs (x, E(x)) from generated pairs (G(z), z) and the encoder
E and generator G play against it:

    min_{G,E} max_D  V(D, E, G) = E_x[log D(x, E(x))] + E_z[log(1 - D(G(z), z))].

With logits a = logit D(x, E(x)) and b = logit D(G(z), z), and -log sigmoid(t) = softplus(-t),
-log(1 - sigmoid(t)) = softplus(t):

    L_D  = (softplus(-a) + softplus(b)) / 2          (D maximises V)
    L_GE = (softplus(a) + softplus(-b)) / 2          (E and G: V with the labels swapped)

L_GE is the non-saturating form (Goodfellow et al. 2014, sec. 3) as in the paper's code
(``gan.py``: the "opp_" losses, real and generated terms each weighted 1/2): E and G
maximise log D with the labels swapped instead of minimising V, whose gradient vanishes
while D wins. Both are per-sample means: under DDP each rank's loss on its B/N pairs
averages to the loss of all B pairs, so no gather is needed.
"""

from __future__ import annotations

from torch import Tensor
from torch.nn import functional as F

from selfsup.losses.precision import float32_loss


def _checked(real_logits: Tensor, fake_logits: Tensor) -> tuple[Tensor, Tensor]:
    real, fake = real_logits.reshape(-1), fake_logits.reshape(-1)
    if real_logits.shape[0] != real.numel() or fake_logits.shape[0] != fake.numel():
        raise ValueError(
            "bigan losses take one logit per pair, [B] or [B, 1]; got "
            f"{tuple(real_logits.shape)} and {tuple(fake_logits.shape)}"
        )
    return real, fake


@float32_loss
def bigan_discriminator_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """L_D = (softplus(-a) + softplus(b)) / 2, batch means: the discriminator's binary cross
    entropy, data pairs labelled 1 and generated pairs 0 (BiGAN, eq. 3).

    real_logits a: [B] or [B, 1], logit D(x, E(x)); fake_logits b: [B'] or [B', 1], logit
    D(G(z), z). Returns a scalar (log 2 when D says 1/2 everywhere).
    """
    real, fake = _checked(real_logits, fake_logits)
    return (F.softplus(-real).mean() + F.softplus(fake).mean()) / 2


@float32_loss
def bigan_generator_encoder_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """L_GE = (softplus(a) + softplus(-b)) / 2, batch means: the same cross entropy with the
    labels swapped (data pairs 0, generated pairs 1), minimised by the encoder and the generator
    (BiGAN's non-saturating objective, as the paper's code).

    real_logits a: [B] or [B, 1], logit D(x, E(x)) (its gradient reaches E); fake_logits b:
    [B'] or [B', 1], logit D(G(z), z) (its gradient reaches G). Returns a scalar.
    """
    real, fake = _checked(real_logits, fake_logits)
    return (F.softplus(real).mean() + F.softplus(-fake).mean()) / 2
