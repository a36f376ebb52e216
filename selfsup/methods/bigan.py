"""BiGAN (Donahue, Krähenbühl & Darrell 2017): an encoder learned by an adversarial game."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from selfsup.losses.bigan import bigan_discriminator_loss, bigan_generator_encoder_loss
from selfsup.methods.base import LossOutput, Method, check_positive, embedding_std, register
from selfsup.runtime.distributed import rank, world_size
from selfsup.views.ops import normalize

LATENT_DISTRIBUTIONS = ("uniform", "normal")
PARTS = ("discriminator", "generator_encoder")  # the update order
LEAKY_SLOPE = 0.2  # DCGAN's (Radford et al. 2016) LeakyReLU, also the BiGAN code's "LReLU"
INIT_STD = 0.02  # DCGAN's and the BiGAN code's weight initialisation N(0, 0.02)
SMALLEST_MAP = 4  # the generator starts from, the discriminator pools to, a 4-7 px map


def upsampling_plan(image_size: int) -> tuple[int, int]:
    """(stride-2 stages, start size): the DCGAN plan for ``image_size``: start at 4-7 px and
    double ``stages`` times to at least ``image_size`` (16 px: 4 -> 8 -> 16; 28 px: 7 -> 14 ->
    28; 224 px: 7 -> ... -> 224); a larger result is centre-cropped."""
    stages = max(1, (image_size // SMALLEST_MAP).bit_length() - 1)
    return stages, -(-image_size // 2**stages)


def _dcgan_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, INIT_STD)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """G: z [B, z_dim] -> images [B, C, S, S] with values in [0, 1] (sigmoid, as the BiGAN
    code's generator). DCGAN-like (Radford et al. 2016): a linear layer to a 4-7 px map of
    ``min(8 width, width 2^(stages-1))`` channels, then stride-2 4x4 transposed convolutions
    (BatchNorm + ReLU) halving the channels down to ``width``, the last one to C channels
    (``upsampling_plan``)."""

    def __init__(self, z_dim: int, out_channels: int, image_size: int, width: int) -> None:
        super().__init__()
        stages, self.start = upsampling_plan(image_size)
        self.image_size = image_size
        widths = [min(8 * width, width * 2 ** (stages - 1 - i)) for i in range(stages)]
        self.start_channels = widths[0]
        self.project = nn.Linear(z_dim, widths[0] * self.start**2, bias=False)
        self.project_norm = nn.BatchNorm2d(widths[0])
        layers: list[nn.Module] = []
        for i in range(stages):
            last = i == stages - 1
            out = out_channels if last else widths[i + 1]
            layers.append(nn.ConvTranspose2d(widths[i], out, 4, stride=2, padding=1, bias=last))
            if not last:
                layers += [nn.BatchNorm2d(out), nn.ReLU(inplace=True)]
        self.upsample = nn.Sequential(*layers)
        _dcgan_init(self)

    def forward(self, z: Tensor) -> Tensor:
        h = self.project(z).view(-1, self.start_channels, self.start, self.start)
        x = torch.sigmoid(self.upsample(F.relu(self.project_norm(h))))
        top = (x.shape[-1] - self.image_size) // 2
        return x[..., top : top + self.image_size, top : top + self.image_size]


class JointDiscriminator(nn.Module):
    """D(x, z) -> one logit per pair [B]: a DCGAN convolutional branch over x (stride-2 4x4
    convolutions, LeakyReLU 0.2, BatchNorm after the first, channels doubling from ``width`` up
    to 8 ``width``, as many as the generator's stages; average-pooled to 4x4, flattened, linear
    to ``hidden_dim``), a linear branch over z (to ``hidden_dim``), joined: concatenation ->
    linear ``hidden_dim`` -> LeakyReLU -> linear 1 (BiGAN, sec. 3: D sees the pair)."""

    def __init__(
        self, in_channels: int, image_size: int, z_dim: int, width: int, hidden_dim: int
    ) -> None:
        super().__init__()
        stages, _ = upsampling_plan(image_size)
        layers: list[nn.Module] = []
        channels = in_channels
        for i in range(stages):
            out = min(8 * width, width * 2**i)
            layers.append(nn.Conv2d(channels, out, 4, stride=2, padding=1, bias=i == 0))
            if i > 0:
                layers.append(nn.BatchNorm2d(out))
            layers.append(nn.LeakyReLU(LEAKY_SLOPE, inplace=True))
            channels = out
        layers += [nn.AdaptiveAvgPool2d(SMALLEST_MAP), nn.Flatten()]
        self.image_branch = nn.Sequential(
            *layers, nn.Linear(channels * SMALLEST_MAP**2, hidden_dim), nn.LeakyReLU(LEAKY_SLOPE)
        )
        self.latent_branch = nn.Sequential(nn.Linear(z_dim, hidden_dim), nn.LeakyReLU(LEAKY_SLOPE))
        self.joint = nn.Sequential(
            nn.Linear(2 * hidden_dim, hidden_dim),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Linear(hidden_dim, 1),
        )
        _dcgan_init(self)

    def forward(self, x: Tensor, z: Tensor) -> Tensor:
        joined = torch.cat([self.image_branch(x), self.latent_branch(z)], dim=1)
        return self.joint(joined).squeeze(1)


@register("bigan")
class BiGAN(Method):
    """BiGAN: an encoder E learns features by fooling a discriminator that sees (image, code)
    pairs, while a generator G learns to invert it.

    Donahue, Krähenbühl & Darrell, "Adversarial Feature Learning", ICLR 2017, eq. 3:
        min_{G,E} max_D  E_x[log D(x, E(x))] + E_z[log(1 - D(G(z), z))],
    trained as two optimizer parts, in this update order (``optimizer_parts``):
    "discriminator" (D) minimises L_D = (softplus(-a) + softplus(b)) / 2, then
    "generator_encoder" (G, the backbone and its latent layer) minimises the non-saturating
    L_GE = (softplus(a) + softplus(-b)) / 2, the labels swapped as in the paper's code, with
    a = logit D(x, E(x)), b = logit D(G(z), z) (``selfsup.losses.bigan``).
    E = the backbone + ``latent`` (linear to ``z_dim``; "uniform": tanh, into z's range, the
    code's 2 sigmoid - 1 up to a factor in the linear layer); G: ``Generator`` (DCGAN-like,
    [0, 1] outputs mapped into the views' values: the natural views' normalisation, wafer
    views' code / 2 as is); D: ``JointDiscriminator``. Shapes: one view x [B, C, S, S], z
    [B, z_dim], logits [B]. ``embed`` and evaluation use the backbone's pooled features.
    ``reconstruction_examples`` shows inputs, G(E(x)) and samples G(z).

    Defaults (the paper's code): z ~ U(-1, 1)^200 (its ImageNet setting; MNIST: 50),
    ``generator_width`` and ``discriminator_width`` 64 (DCGAN's, the code's 64 px nets), Adam
    lr 2e-4 (not scaled with the batch), beta1 0.5, L2 weight decay 2.5e-5, no warm-up
    (``optimizer_defaults``; ``selfsup pretrain`` uses each you did not set).
    Departures: the paper's code updates D and G/E simultaneously from one forward pass; the
    trainer alternates (D steps first, G/E then sees the updated D, Goodfellow et al. 2014's
    algorithm 1) and ``loss = method(images)`` is the simultaneous update; the LR follows the
    trainer's warm-up + cosine instead of the code's constant-then-linear decay; biases and
    norm parameters are not decayed; D's x branch is a DCGAN conv net, not the paper's
    AlexNet-like one, and ends with a 4x4 average pool so its size does not grow with the image.
    """

    view_recipe = "bigan"
    encoder_head = "latent"
    optimizer_defaults = {
        "optimizer": "adam",
        "lr": 2e-4,
        "lr_scaling": "none",
        "weight_decay": 2.5e-5,
        "adam_betas": [0.5, 0.999],
        "warmup_epochs": 0.0,
    }

    def __init__(
        self,
        backbone: str | nn.Module = "resnet18",
        feature_size: int | None = None,
        *,
        z_dim: int = 200,
        latent_distribution: str = "uniform",
        generator_width: int = 64,
        discriminator_width: int = 64,
        discriminator_hidden_dim: int = 1024,
        **kwargs: Any,
    ) -> None:
        super().__init__(backbone, feature_size, **kwargs)
        check_positive(
            "bigan", z_dim=z_dim, generator_width=generator_width,
            discriminator_width=discriminator_width,
            discriminator_hidden_dim=discriminator_hidden_dim,
        )  # fmt: skip
        if latent_distribution not in LATENT_DISTRIBUTIONS:
            raise ValueError(
                f"bigan: latent_distribution must be one of {LATENT_DISTRIBUTIONS}, "
                f"got '{latent_distribution}'"
            )
        self.z_dim = z_dim
        self.latent_distribution = latent_distribution
        channels = getattr(self.views, "out_channels", self.in_channels)
        squash = [nn.Tanh()] if latent_distribution == "uniform" else []
        self.latent = nn.Sequential(nn.Linear(self.feature_dim, z_dim), *squash)
        self.generator = Generator(z_dim, channels, self.image_size, generator_width)
        self.discriminator = JointDiscriminator(
            channels, self.image_size, z_dim, discriminator_width, discriminator_hidden_dim
        )

    # -- the game ----------------------------------------------------------------------------------
    def optimizer_parts(self) -> list[tuple[str, list[nn.Parameter]]]:
        discriminator = [p for p in self.discriminator.parameters() if p.requires_grad]
        owned = {id(p) for p in discriminator}
        others = [p for p in self.parameters() if p.requires_grad and id(p) not in owned]
        return [(PARTS[0], discriminator), (PARTS[1], others)]

    def part_loss(self, views: list[Tensor], part: str, **fields: Tensor) -> LossOutput:
        if part not in PARTS:
            raise ValueError(f"bigan: optimizer parts are {', '.join(PARTS)}; got '{part}'")
        if len(views) != 1:
            raise ValueError(f"bigan needs 1 view, got {len(views)}")
        x = views[0]
        z_real = self.latent(self.backbone(x))
        z = self.sample_latent(x.shape[0], x.device)
        real_logits = self.discriminator(x, z_real)
        fake_logits = self.discriminator(self.to_view_values(self.generator(z)), z)
        if part == PARTS[0]:
            real_right = (real_logits.detach() > 0).float().mean()
            fake_right = (fake_logits.detach() < 0).float().mean()
            loss = bigan_discriminator_loss(real_logits, fake_logits)
            return LossOutput(loss, logs={"discriminator_accuracy": (real_right + fake_right) / 2})
        loss = bigan_generator_encoder_loss(real_logits, fake_logits)
        return LossOutput(loss, logs={"collapse_std": embedding_std(z_real)})

    def sample_latent(self, batch: int, device: torch.device | str) -> Tensor:
        """z [batch, z_dim] from the prior: this process's rows of one draw for the global
        batch, so processes of a DDP run (seeded alike) sample different codes and N processes
        draw what one process holding all of them would."""
        shape = (world_size() * batch, self.z_dim)
        if self.latent_distribution == "uniform":
            z = torch.rand(shape, device=device) * 2 - 1
        else:
            z = torch.randn(shape, device=device)
        return z[rank() * batch : (rank() + 1) * batch]

    # -- image values ------------------------------------------------------------------------------
    def _normalisation(self) -> tuple[Any, Any]:
        if getattr(self.views, "style", None) == "natural":
            return self.views.mean, self.views.std
        return None, None  # wafer views (code / 2, or 0/1 masks) and your own views: [0, 1]

    def to_view_values(self, unit: Tensor) -> Tensor:
        """Generator outputs in [0, 1] -> the values of the views (natural: normalised)."""
        mean, std = self._normalisation()
        return unit if mean is None else normalize(unit, mean, std)

    def to_unit_values(self, x: Tensor) -> Tensor:
        """View values -> [0, 1] (natural: the normalisation undone)."""
        mean, std = self._normalisation()
        if mean is None:
            return x
        shape = (1, -1, 1, 1)
        return x * x.new_tensor(std).view(shape) + x.new_tensor(mean).view(shape)

    @torch.no_grad()
    def reconstruction_examples(self, images: Tensor) -> dict[str, Tensor]:
        """Raw images [N, C, H, W] -> displayable uint8 batches [N, 1 or 3, S, S]: the inputs,
        their reconstructions G(E(x)) and as many samples G(z). Grey for anything but RGB
        (a wafer map's code / 2; a fail mask's mean of its 2 channels is the same)."""
        device = next(self.parameters()).device
        x = self.views.preprocess(images) if hasattr(self.views, "preprocess") else images
        x = x.to(device).float()
        reconstructions = self.generator(self.latent(self.backbone(x)))
        samples = self.generator(self.sample_latent(len(x), device))
        return {
            "inputs": _displayable(self.to_unit_values(x)),
            "reconstructions G(E(x))": _displayable(reconstructions),
            "samples G(z)": _displayable(samples),
        }


def _displayable(unit: Tensor) -> Tensor:
    """[0, 1] values [N, C, H, W] -> uint8 [N, 1 or 3, H, W]; channels other than 3 averaged."""
    if unit.shape[1] != 3:
        unit = unit.mean(dim=1, keepdim=True)
    return (unit.float().clamp(0, 1) * 255).round().to(torch.uint8)
