"""BiGAN: its losses by hand, their DDP correctness, the codes each process draws, training
through the real trainer (two optimizers), an exact resume, wafer maps and its pictures."""

import math

import lightning as L
import pytest
import torch
import yaml
from torch.nn import functional as F

import selfsup
from selfsup.data import ImageDataset
from selfsup.losses import bigan_discriminator_loss, bigan_generator_encoder_loss
from selfsup.methods import BiGAN
from selfsup.train.checkpoint import AtomicCheckpointIO
from selfsup.train.module import PretrainModule
from selfsup.train.trainer import BatchDataModule
from tests.conftest import cpu_trainer
from tests.ddp_harness import WORLD, assert_ddp_gradients, rank_rows, run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE, N, BATCH = 16, 32, 8
SMALL = dict(z_dim=8, generator_width=8, discriminator_width=8, discriminator_hidden_dim=16)


def tiny(seed: int = 0, **kwargs) -> BiGAN:
    torch.manual_seed(seed)
    settings = dict(backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=SIZE)
    return selfsup.build("bigan", **{**settings, **SMALL, **kwargs})


def images(n: int = N, channels: int = 3, high: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, high, (n, channels, SIZE, SIZE), dtype=torch.uint8, generator=g)


# --- the losses ---------------------------------------------------------------------------------


def softplus(t: float) -> float:
    return math.log1p(math.exp(t))


def test_losses_by_hand():
    a = torch.tensor([0.0, 2.0])  # logit D(x, E(x)) of 2 data pairs
    b = torch.tensor([[-1.0], [1.0], [3.0]])  # logit D(G(z), z) of 3 generated pairs, [B, 1]
    # D: -log sigmoid(a) = softplus(-a) for data, -log(1 - sigmoid(b)) = softplus(b) generated
    d = ((softplus(0) + softplus(-2)) / 2 + (softplus(-1) + softplus(1) + softplus(3)) / 3) / 2
    ge = ((softplus(0) + softplus(2)) / 2 + (softplus(1) + softplus(-1) + softplus(-3)) / 3) / 2
    assert bigan_discriminator_loss(a, b).item() == pytest.approx(d, abs=1e-6)
    assert bigan_generator_encoder_loss(a, b).item() == pytest.approx(ge, abs=1e-6)
    # a discriminator saying 1/2 everywhere: both players at log 2 (eq. 3's value -log 4, / 2)
    zeros = torch.zeros(4)
    assert bigan_discriminator_loss(zeros, zeros).item() == pytest.approx(math.log(2))
    assert bigan_generator_encoder_loss(zeros, zeros).item() == pytest.approx(math.log(2))
    # the same as torch's binary cross entropy with the labels of eq. 3 (and swapped)
    bce = F.binary_cross_entropy_with_logits
    flat = b.flatten()
    assert bigan_discriminator_loss(a, b).item() == pytest.approx(
        (bce(a, torch.ones(2)) + bce(flat, torch.zeros(3))).item() / 2, abs=1e-6
    )
    with pytest.raises(ValueError, match=r"one logit per pair, \[B\] or \[B, 1\]"):
        bigan_discriminator_loss(torch.zeros(2, 2), torch.zeros(2))


def test_losses_run_in_float32_under_autocast():
    a, b = torch.randn(4, dtype=torch.bfloat16), torch.randn(4, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert bigan_discriminator_loss(a, b).dtype == torch.float32
        assert bigan_generator_encoder_loss(a, b).dtype == torch.float32


def loss_gradients(data: dict, rows: slice) -> dict:
    """Each loss's gradient w.r.t. this process's logits (per-sample means: no gather)."""
    out = {}
    for name, loss_fn in (("d", bigan_discriminator_loss), ("ge", bigan_generator_encoder_loss)):
        real = data["real"][rows].clone().requires_grad_()
        fake = data["fake"][rows].clone().requires_grad_()
        loss_fn(real, fake).backward()
        out[f"{name}_real"], out[f"{name}_fake"] = real.grad, fake.grad
    return out


def test_two_processes_average_to_one_without_a_gather():
    g = torch.Generator().manual_seed(0)
    data = {
        "real": torch.randn(8, generator=g, dtype=torch.float64),
        "fake": torch.randn(8, generator=g, dtype=torch.float64),
    }
    assert_ddp_gradients(loss_gradients, data, run_on_ranks(loss_gradients, data))


def latent_draws(data: dict, rows: slice) -> dict:
    """This process's codes for the global batch, from each prior."""
    local = data["batch"] // WORLD if rows.stop is not None else data["batch"]
    out = {}
    for distribution in ("uniform", "normal"):
        method = tiny(latent_distribution=distribution)
        torch.manual_seed(1)  # every process seeded alike, as Lightning seeds them
        out[distribution] = method.sample_latent(local, "cpu")
    return out


def test_processes_draw_different_codes_that_add_up_to_one_draw():
    data = {"batch": 8}
    results = run_on_ranks(latent_draws, data, batch=8)
    whole = latent_draws(data, slice(None))
    for distribution, codes in whole.items():
        assert not torch.equal(results[0][distribution], results[1][distribution])
        for rank, result in enumerate(results):
            assert torch.equal(result[distribution], codes[rank_rows(rank, 8, WORLD)])
    uniform = whole["uniform"]
    assert uniform.min() >= -1 and uniform.max() <= 1 and uniform.min() < 0 < uniform.max()


# --- the method ---------------------------------------------------------------------------------


def test_parts_encoder_and_refusals():
    method = tiny()
    (d_name, d_params), (ge_name, ge_params) = method.optimizer_parts()
    assert (d_name, ge_name) == ("discriminator", "generator_encoder")
    assert {id(p) for p in d_params} == {id(p) for p in method.discriminator.parameters()}
    ge = {id(p) for m in (method.backbone, method.latent, method.generator) for p in m.parameters()}
    assert {id(p) for p in ge_params} == ge and method.several_optimizers
    x = torch.rand(4, 3, SIZE, SIZE)
    z = method.encoder(x)
    assert z.shape == (4, 8) and z.abs().max() < 1  # E(x) in the uniform prior's range
    assert tiny(latent_distribution="normal").latent[-1].__class__.__name__ == "Linear"
    views = method.views(images(4))
    with pytest.raises(ValueError, match="bigan: optimizer parts are discriminator, "):
        method.part_loss(views, "generator")
    with pytest.raises(ValueError, match="bigan needs 1 view, got 2"):
        method.part_loss(views * 2, "discriminator")
    with pytest.raises(ValueError, match="latent_distribution must be one of"):
        tiny(latent_distribution="gaussian")
    with pytest.raises(ValueError, match="bigan: z_dim must be > 0"):
        tiny(z_dim=0)
    assert BiGAN.optimizer_defaults["adam_betas"] == [0.5, 0.999]


@pytest.mark.parametrize("size", [8, 16, 28, 30, 64])
def test_generator_and_discriminator_follow_the_image_size(size):
    method = tiny(image_size=size, in_channels=1, view_style="wafer")
    fake = method.generator(method.sample_latent(3, "cpu"))
    assert fake.shape == (3, 1, size, size) and 0 <= fake.min() and fake.max() <= 1
    assert method.discriminator(fake, torch.zeros(3, 8)).shape == (3,)


def test_generated_values_are_those_of_the_views():
    natural = tiny()
    unit = torch.rand(2, 3, SIZE, SIZE)
    as_views = natural.to_view_values(unit)
    mean = torch.tensor(natural.views.mean).view(1, 3, 1, 1)
    std = torch.tensor(natural.views.std).view(1, 3, 1, 1)
    assert torch.allclose(as_views, (unit - mean) / std)
    assert torch.allclose(natural.to_unit_values(as_views), unit, atol=1e-6)
    wafer = tiny(in_channels=1, view_style="wafer")
    assert torch.equal(wafer.to_view_values(unit[:, :1]), unit[:, :1])  # code / 2 in [0, 1]
    codes = images(8, channels=1, high=3)
    assert set(wafer.views(codes)[0].unique().tolist()) <= {0.0, 0.5, 1.0}
    assert torch.isfinite(wafer(codes))


def test_reconstruction_examples_are_displayable():
    method = tiny().eval()
    shown = method.reconstruction_examples(images(5))
    assert list(shown) == ["inputs", "reconstructions G(E(x))", "samples G(z)"]
    for batch in shown.values():
        assert batch.dtype == torch.uint8 and batch.shape == (5, 3, SIZE, SIZE)
    codes = images(4, channels=1, high=3)
    for views in ({}, {"encoding": "fail_mask"}):
        wafer = tiny(in_channels=1, view_style="wafer", views=views).eval()
        shown = wafer.reconstruction_examples(codes)
        assert all(batch.shape == (4, 1, SIZE, SIZE) for batch in shown.values())
        # the inputs show code / 2: off-wafer black, pass grey, fail white
        expected = (codes.float() * 127.5).round().to(torch.uint8)
        assert torch.equal(shown["inputs"], expected)


# --- through the trainer --------------------------------------------------------------------------


def data_module(method) -> BatchDataModule:
    return BatchDataModule(ImageDataset(images()), BATCH, seed=0, num_workers=0)


def fit(method, max_steps: int, ckpt_path=None, callbacks=()) -> L.Trainer:
    module = PretrainModule(
        method, optimizer="adam", lr=1e-3, weight_decay=2.5e-5, adam_betas=(0.5, 0.999),
        total_steps=8,
    )  # fmt: skip
    trainer = cpu_trainer(
        max_steps=max_steps, plugins=[AtomicCheckpointIO()], callbacks=list(callbacks)
    )
    trainer.fit(module, datamodule=data_module(method), ckpt_path=ckpt_path)
    return trainer


def test_three_steps_through_the_trainer_step_both_players():
    method = tiny()
    before = {k: v.clone() for k, v in method.state_dict().items()}
    trainer = fit(method, 3)
    assert trainer.global_step == 3  # one step per batch, whatever the number of optimizers
    optimizers = trainer.optimizers
    assert [type(o) for o in optimizers] == [torch.optim.Adam, torch.optim.Adam]
    assert all(o.param_groups[0]["betas"] == (0.5, 0.999) for o in optimizers)
    for optimizer in optimizers:  # each stepped once per batch
        assert {int(s["step"]) for s in optimizer.state.values()} == {3}
    moved = {
        k.split(".")[0] for k, v in method.state_dict().items() if not torch.equal(v, before[k])
    }
    assert {"discriminator", "generator", "backbone", "latent"} <= moved
    logged = trainer.logged_metrics
    for key in ("train/loss_discriminator", "train/loss_generator_encoder", "train/loss"):
        assert torch.isfinite(logged[key]), key
    total = logged["train/loss_discriminator"] + logged["train/loss_generator_encoder"]
    assert logged["train/loss"] == pytest.approx(total.item(), abs=1e-6)
    assert 0 <= logged["train/discriminator_accuracy"] <= 1 and "train/collapse_std" in logged


class Snapshot(L.Callback):
    """Method and optimizer states as the first resumed batch receives them."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not hasattr(self, "method"):
            self.method = {k: v.clone() for k, v in pl_module.method.state_dict().items()}
            self.optimizers = [_cloned(o.state_dict()) for o in trainer.optimizers]
            self.schedulers = [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs]


def _cloned(state: dict) -> dict:
    return {
        "state": {k: {n: v.clone() for n, v in s.items()} for k, s in state["state"].items()},
        "param_groups": state["param_groups"],
    }


def test_resume_restores_both_optimizers_exactly(tmp_path):
    method = tiny()
    trainer = fit(method, 3)
    ckpt = tmp_path / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    saved_method = {k: v.clone() for k, v in method.state_dict().items()}
    saved_optimizers = [_cloned(o.state_dict()) for o in trainer.optimizers]
    saved_schedulers = [c.scheduler.state_dict() for c in trainer.lr_scheduler_configs]
    assert len(torch.load(ckpt, weights_only=False)["optimizer_states"]) == 2

    snapshot = Snapshot()
    resumed = fit(tiny(seed=1), 4, ckpt_path=ckpt, callbacks=[snapshot])
    assert all(torch.equal(snapshot.method[k], v) for k, v in saved_method.items())
    assert len(snapshot.optimizers) == 2
    for got, expected in zip(snapshot.optimizers, saved_optimizers, strict=True):
        assert got["param_groups"] == expected["param_groups"]
        assert got["state"].keys() == expected["state"].keys() and expected["state"]
        for key, state in expected["state"].items():
            assert all(torch.equal(got["state"][key][n], v) for n, v in state.items())
    assert snapshot.schedulers == saved_schedulers
    assert resumed.global_step == 4


def test_pretrain_uses_the_papers_adam_and_records_it(tmp_path):
    data = ImageDataset(images())
    method, run = selfsup.pretrain(
        method="bigan", backbone="convnet_tiny", backbone_kwargs={"width": 4},
        method_kwargs=SMALL, image_size=SIZE, max_steps=2, batch_size=BATCH,
        precision="32-true", out=str(tmp_path), name="bigan", progress_bar=False,
        dataset=data,
    )  # fmt: skip
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert (saved["optimizer"], saved["lr"], saved["lr_scaling"]) == ("adam", 2e-4, "none")
    assert saved["adam_betas"] == [0.5, 0.999] and saved["weight_decay"] == 2.5e-5
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    groups = [s["param_groups"][0] for s in ckpt["optimizer_states"]]
    assert [g["betas"] for g in groups] == [(0.5, 0.999)] * 2
    assert isinstance(method, BiGAN)


class SaveRankState(L.Callback):
    def __init__(self, folder) -> None:
        self.folder = folder

    def on_train_end(self, trainer, pl_module) -> None:
        state = {k: v.detach().clone() for k, v in pl_module.method.named_parameters()}
        torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


@pytest.mark.slow
def test_two_ddp_processes_keep_both_players_identical(tmp_path):
    """2 gloo processes (Lightning DDP, find_unused_parameters as the trainer sets it for
    methods with several optimizers): each part's gradients are all-reduced in its own
    backward, so D, G and E stay the same on both processes, and all moved."""
    from lightning.pytorch.strategies import DDPStrategy

    method = tiny()
    initial = {k: v.detach().clone() for k, v in method.named_parameters()}
    module = PretrainModule(method, optimizer="adam", lr=1e-3, total_steps=8)
    trainer = L.Trainer(
        accelerator="cpu", devices=2, max_steps=3, logger=False, enable_checkpointing=False,
        strategy=DDPStrategy(start_method="spawn", find_unused_parameters=True),
        enable_progress_bar=False, enable_model_summary=False, use_distributed_sampler=False,
        callbacks=[SaveRankState(tmp_path)],
    )  # fmt: skip
    trainer.fit(module, datamodule=BatchDataModule(ImageDataset(images()), 4, 0, 0))
    first, second = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert all(torch.equal(first[k], second[k]) for k in first)
    moved = {k.split(".")[0] for k in first if not torch.equal(first[k], initial[k])}
    assert moved == {"backbone", "latent", "generator", "discriminator"}
