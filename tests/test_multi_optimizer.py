"""Methods trained by several optimizers, through the real trainer: the method declares its
parts and their order, the trainer steps one optimizer per part (no special case for a method);
methods with one optimizer keep Lightning's automatic path as it was."""

import pytest
import torch
from torch import nn

import selfsup
from selfsup.config import ConfigError, PretrainConfig
from selfsup.data import ImageDataset
from selfsup.methods.base import LossOutput, Method, checked_parts, only_trainable
from selfsup.runtime.optim import build_optimizer, parameter_groups
from selfsup.train.module import NonFiniteLossError, PretrainModule
from selfsup.train.trainer import BatchDataModule, make_trainer
from tests.conftest import cpu_trainer, tiny_simclr

pytestmark = pytest.mark.usefixtures("one_thread")
SIZE, N, BATCH = 16, 24, 8


class TwoParts(Method):
    """A test double (not registered): part "head" wants scores of 1, then part "body" (the
    backbone) wants -1 from the same head: an adversarial pair. Records what the trainer does."""

    view_recipe = "bigan"  # one view per image
    encoder_head = "head"

    def __init__(self, backbone="convnet_tiny", feature_size=None, *, nan_part="", **kwargs):
        super().__init__(backbone, feature_size, **kwargs)
        self.head = nn.Linear(self.feature_dim, 1)
        self.nan_part = nan_part
        self.calls: list[tuple[str, torch.Tensor]] = []
        self.grads_at_step: list[tuple[bool, bool]] = []
        self.steps_ended = 0

    def optimizer_parts(self):
        return [("head", list(self.head.parameters())), ("body", list(self.backbone.parameters()))]

    def part_loss(self, views, part):
        self.calls.append((part, self.head.weight.detach().clone()))
        score = self.head(self.backbone(views[0]))
        loss = (score - (1 if part == "head" else -1)).pow(2).mean()
        if part == self.nan_part:
            loss = loss * float("nan")
        return LossOutput(loss, logs={f"{part}_score": score.detach().mean()})

    def before_optimizer_step(self) -> None:
        has_grad = [
            any(p.grad is not None for p in m.parameters()) for m in (self.head, self.backbone)
        ]
        self.grads_at_step.append(tuple(has_grad))

    def on_train_step_end(self, progress: float) -> None:
        super().on_train_step_end(progress)
        self.steps_ended += 1


def two_parts(**kwargs) -> TwoParts:
    torch.manual_seed(0)
    return TwoParts(image_size=SIZE, backbone_kwargs={"width": 4}, **kwargs)


def data() -> BatchDataModule:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (N, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    return BatchDataModule(ImageDataset(images), BATCH, seed=0, num_workers=0)


def fit(method, steps: int, **module_kwargs):
    module = PretrainModule(method, lr=0.1, total_steps=10, **module_kwargs)
    trainer = cpu_trainer(max_steps=steps)
    trainer.fit(module, datamodule=data())
    return trainer, module


def test_parts_step_in_order_each_with_its_own_gradients_only():
    method = two_parts()
    trainer, module = fit(method, 2)
    assert not module.automatic_optimization and module.part_names == ["head", "body"]
    assert [part for part, _ in method.calls] == ["head", "body", "head", "body"]
    # "body" sees the head the "head" step just moved (alternating updates)
    assert not torch.equal(method.calls[0][1], method.calls[1][1])
    assert torch.equal(method.calls[1][1], method.calls[2][1])  # the body step leaves the head
    # before_optimizer_step once per part; a part's backward reaches its own parameters only
    assert method.grads_at_step == [(True, False), (False, True)] * 2
    assert all(p.grad is None for p in method.parameters())  # nothing stale after a batch
    assert method.steps_ended == 2 and trainer.global_step == 2  # per batch, not per optimizer
    assert len(trainer.optimizers) == 2
    assert [c.scheduler.last_epoch for c in trainer.lr_scheduler_configs] == [2, 2]
    logged = trainer.logged_metrics
    assert {"train/loss_head", "train/loss_body", "train/head_score", "train/body_score"} <= set(
        logged
    )
    assert logged["train/loss"] == pytest.approx(
        (logged["train/loss_head"] + logged["train/loss_body"]).item()
    )
    assert all(p.requires_grad for p in method.parameters())  # restored after each part


def test_a_non_finite_part_loss_stops_naming_the_part():
    with pytest.raises(NonFiniteLossError, match="loss of part 'body' is nan at step 0"):
        fit(two_parts(nan_part="body"), 1)


def test_training_loss_is_the_simultaneous_update():
    """``loss = method(images)``: each part's parameters get the gradient of its own loss, both
    at the same parameters; the value is the parts' sum."""
    method = two_parts()
    views = method.views(torch.randint(0, 256, (BATCH, 3, SIZE, SIZE), dtype=torch.uint8))
    out = method.training_loss(views)
    out.loss.backward()
    joint = {n: p.grad.clone() for n, p in method.named_parameters()}
    assert out.logs["loss_head"] + out.logs["loss_body"] == pytest.approx(out.loss.item())
    for part, parameters in method.optimizer_parts():
        method.zero_grad(set_to_none=True)
        method.part_loss(views, part).loss.backward()
        names = {id(p) for p in parameters}
        for name, p in method.named_parameters():
            if id(p) in names:  # the part's own gradient, unchanged by the other part's loss
                assert torch.allclose(p.grad, joint[name], atol=1e-6), (part, name)


def test_only_trainable_freezes_the_others_and_restores_them():
    method = two_parts()
    with only_trainable(method, method.head.parameters()):
        assert all(p.requires_grad for p in method.head.parameters())
        assert not any(p.requires_grad for p in method.backbone.parameters())
        assert not method.backbone(torch.rand(2, 3, SIZE, SIZE)).requires_grad
    assert all(p.requires_grad for p in method.parameters())


def test_parts_are_checked():
    method = two_parts()
    head, body = list(method.head.parameters()), list(method.backbone.parameters())
    cases = {
        "name each part once": [("a", head), ("a", body)],
        "in optimizer parts 'a' and 'b'": [("a", head), ("b", head + body)],
        r"trainable parameters in no optimizer part: \['backbone": [("a", head)],
        "part 'b' holds no parameters": [("a", head + body), ("b", [])],
    }
    for message, parts in cases.items():
        method.optimizer_parts = lambda parts=parts: parts
        with pytest.raises(ValueError, match=message):
            checked_parts(method)


def test_one_optimizer_methods_keep_the_automatic_path():
    method = tiny_simclr()
    assert not method.several_optimizers
    assert [name for name, _ in method.optimizer_parts()] == ["all"]
    module = PretrainModule(method, lr=0.1, weight_decay=1e-4)
    assert module.automatic_optimization
    config = module.configure_optimizers()
    assert config["lr_scheduler"]["interval"] == "step"
    expected = build_optimizer("sgd", method, lr=0.1, weight_decay=1e-4)
    got = config["optimizer"]
    assert type(got) is torch.optim.SGD and len(got.param_groups) == len(expected.param_groups)
    for g, e in zip(got.param_groups, expected.param_groups, strict=True):
        assert [id(p) for p in g["params"]] == [id(p) for p in e["params"]]
        settings = {k: v for k, v in g.items() if k not in ("params", "initial_lr")}
        assert settings == {
            k: v for k, v in e.items() if k != "params"
        }  # initial_lr: the LR schedule's
    with pytest.raises(NotImplementedError, match="part_loss is for methods with several"):
        method.part_loss([], "all")


def test_adam_and_its_betas():
    net = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    opt = build_optimizer(
        "adam", list(net.parameters()), lr=0.1, weight_decay=0.5, betas=(0.5, 0.9)
    )
    assert type(opt) is torch.optim.Adam and opt.param_groups[0]["betas"] == (0.5, 0.9)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.5, 0.0]
    by_list = parameter_groups(list(net.parameters()), 0.5)
    by_module = parameter_groups(net, 0.5)
    assert [[id(p) for p in g["params"]] for g in by_list] == [
        [id(p) for p in g["params"]] for g in by_module
    ]
    assert build_optimizer("adamw", net, lr=0.1, weight_decay=0).param_groups[0]["betas"] == (
        0.9,
        0.999,
    )
    assert PretrainConfig(adam_betas=[0.5, 0.999]).adam_betas == [0.5, 0.999]
    for bad in ([0.5], [0.5, 1.0], [-0.1, 0.9]):
        with pytest.raises(ConfigError, match=r"adam_betas.* must be 2 values in \[0, 1\)"):
            PretrainConfig(adam_betas=bad)


@pytest.mark.parametrize("several", [False, True])
def test_ddp_waits_for_no_other_parts_gradients(several, tmp_path):
    cfg = PretrainConfig(accelerator="cpu", devices=2, precision="32-true", progress_bar=False)
    trainer = make_trainer(cfg, tmp_path, [], None, "32-true", 10, several_optimizers=several)
    assert trainer.strategy._ddp_kwargs.get("find_unused_parameters", False) is several


def test_a_registered_several_optimizer_method_builds_by_name():
    method = selfsup.build(
        "bigan", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=SIZE,
        z_dim=4, generator_width=4, discriminator_width=4, discriminator_hidden_dim=8,
    )  # fmt: skip
    assert method.several_optimizers
    assert [name for name, _ in checked_parts(method)] == ["discriminator", "generator_encoder"]
