import io
import math

import pytest
import torch

from selfsup.backbones import build_backbone
from selfsup.cli import main
from selfsup.cli.eval import label_fraction
from selfsup.eval import finetune as finetune_module
from selfsup.eval.finetune import (
    FinetuneResult,
    class_weights,
    finetune,
    finetune_lr_search,
    finetune_plan,
    probe_head,
)
from selfsup.eval.protocol import stratified_fraction
from selfsup.runtime.progress import Progress, format_seconds


def test_stratified_fraction_is_stratified_seeded_and_keeps_every_class():
    labels = torch.tensor([0] * 100 + [1] * 50 + [2] * 3)
    idx = stratified_fraction(labels, 0.1, seed=0)
    counts = torch.bincount(labels[idx], minlength=3).tolist()
    assert counts == [10, 5, 1]
    assert torch.equal(idx, stratified_fraction(labels, 0.1, seed=0))
    assert not torch.equal(idx, stratified_fraction(labels, 0.1, seed=1))


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5, math.nan])
def test_stratified_fraction_refuses_fractions_outside_0_1(fraction):
    labels = torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match=rf"label_fraction must be in \(0, 1\], got {fraction}"):
        stratified_fraction(labels, fraction)
    assert stratified_fraction(labels, 1.0).tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("protocol", ["linear", "mlp", "finetune", "transfer"])
@pytest.mark.parametrize("value", ["1.5", "0", "-0.2", "nan", "half"])
def test_cli_refuses_label_fraction_outside_0_1(protocol, value, capsys):
    argv = ["eval", protocol, "/nonexistent/run", "--label-fraction", value]
    argv += ["--data", "wafers"] if protocol == "transfer" else []
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert "--label-fraction" in error and f"got '{value}'" in error


BAD_FINETUNE_OPTIONS = [
    *(("--minutes", value) for value in ("0", "-1", "nan", "inf", "soon")),
    *((option, value) for option in ("--lr", "--backbone-lr") for value in ("0", "-0.1", "inf")),
    ("--lr", "fast"),
    *(("--ensemble", value) for value in ("0", "-2", "two")),
]


@pytest.mark.parametrize("option, value", BAD_FINETUNE_OPTIONS)
def test_cli_refuses_fine_tuning_options_out_of_range(option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:  # --lr and --backbone-lr take several values
        main(["eval", "finetune", "/nonexistent/run", option, *(["0.01"] * ("lr" in option)),
              value])  # fmt: skip
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert option in error and f"got '{value}'" in error


def test_lr_search_keeps_the_best_pair_on_val_and_splits_the_budget(monkeypatch):
    calls = []
    val_score = {(0.1, 0.003): 0.5, (0.1, 0.03): 0.8, (0.3, 0.003): 0.8, (0.3, 0.03): 0.7}

    def fake_finetune(*args, lr, backbone_lr, max_minutes, progress, **settings):
        calls.append((lr, backbone_lr, max_minutes, settings["seed"]))
        return FinetuneResult(None, step=7, epoch=1.0,
                              val_macro_f1=val_score[lr, backbone_lr], steps_run=9)  # fmt: skip

    monkeypatch.setattr(finetune_module, "finetune", fake_finetune)
    search = finetune_lr_search(
        None, None, None, None, None, lrs=[0.1, 0.3], backbone_lrs=[0.003, 0.03],
        max_minutes=8, seed=3, progress=Progress(enabled=False),
    )  # fmt: skip
    # every pair, the budget split evenly, the same seed for each
    assert calls == [(0.1, 0.003, 2.0, 3), (0.1, 0.03, 2.0, 3), (0.3, 0.003, 2.0, 3),
                     (0.3, 0.03, 2.0, 3)]  # fmt: skip
    assert (search.lr, search.backbone_lr) == (0.1, 0.03)  # the first of the tied best
    assert search.result.val_macro_f1 == 0.8
    assert [c["val_macro_f1"] for c in search.candidates] == [0.5, 0.8, 0.8, 0.7]
    assert search.candidates[0] == {"lr": 0.1, "backbone_lr": 0.003, "step": 7,
                                    "val_macro_f1": 0.5, "steps_run": 9}  # fmt: skip


def test_lr_search_with_one_pair_is_finetune():
    train_x, train_y = blobs(32, 0)
    val_x, val_y = blobs(16, 1)
    settings = dict(augment=lambda x: x.float() / 255, preprocess=lambda x: x.float() / 255,
                    num_classes=2, epochs=2, batch_size=16, seed=1)  # fmt: skip
    backbone = build_backbone("convnet_tiny", 1, width=4)
    direct = finetune(backbone, train_x, train_y, val_x, val_y, lr=0.2, backbone_lr=0.02,
                      **settings)  # fmt: skip
    search = finetune_lr_search(backbone, train_x, train_y, val_x, val_y, lrs=[0.2],
                                backbone_lrs=0.02, **settings)  # fmt: skip
    assert search.candidates == [{"lr": 0.2, "backbone_lr": 0.02, "step": direct.step,
                                  "val_macro_f1": direct.val_macro_f1,
                                  "steps_run": direct.steps_run}]  # fmt: skip
    for name, value in direct.model.state_dict().items():
        assert torch.equal(value, search.result.model.state_dict()[name]), name


@pytest.mark.parametrize("rates", [[], [0.0], [0.1, -1.0], [math.inf]])
def test_lr_search_refuses_rates_that_are_not_positive(rates):
    with pytest.raises(ValueError, match="finetune: backbone_lrs"):
        finetune_lr_search(None, None, None, None, None, backbone_lrs=rates)


def test_label_fraction_accepts_0_to_1():
    assert label_fraction("1") == 1.0 and label_fraction("0.01") == 0.01


def blobs(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 80, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    images[labels == 1, :, :4] += 150  # class 1: bright top half
    return images, labels


def test_finetune_learns_and_selects_epoch_on_val():
    torch.manual_seed(0)
    train_x, train_y = blobs(64, 0)
    val_x, val_y = blobs(32, 1)

    def preprocess(x):
        return x.float() / 255

    backbone = build_backbone("convnet_tiny", 1, width=4)
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    result = finetune(
        backbone, train_x, train_y, val_x, val_y, augment=preprocess, preprocess=preprocess,
        num_classes=2, epochs=6, batch_size=16, lr=0.5, backbone_lr=0.05,
    )  # fmt: skip
    assert result.val_macro_f1 > 0.9
    scores = dict(result.history)
    assert scores[result.step] == max(scores.values()) == result.val_macro_f1
    assert result.epoch == pytest.approx(result.step / 4)  # 64 images, batch 16
    assert all(torch.equal(v, backbone.state_dict()[k]) for k, v in before.items()), (
        "the caller's backbone must not change"
    )
    metrics = result.evaluate(val_x, val_y, preprocess)
    assert metrics["macro_f1"] == pytest.approx(result.val_macro_f1)


def test_test_time_views_score_every_evaluation_and_the_result(monkeypatch):
    import selfsup.eval.finetune as finetune_module

    kinds = []
    real = finetune_module.averaged_logits

    def spy(model, x, kind):
        kinds.append(kind)
        return real(model, x, kind)

    monkeypatch.setattr(finetune_module, "averaged_logits", spy)
    train_x, train_y = blobs(64, 0)
    val_x, val_y = blobs(32, 1)

    def preprocess(x):
        return x.float() / 255

    result = finetune(
        build_backbone("convnet_tiny", 1, width=4), train_x, train_y, val_x, val_y,
        augment=preprocess, preprocess=preprocess, num_classes=2, epochs=2, batch_size=16,
        evaluations=3, test_time_views="hflip",
    )  # fmt: skip
    assert result.test_time_views == "hflip" and len(result.history) == 3
    assert kinds == ["hflip"] * 3  # each val evaluation (one batch of 32)
    # the chosen score is the averaged model's, as the result's logits are
    metrics = result.evaluate(val_x, val_y, preprocess)
    assert metrics["macro_f1"] == pytest.approx(result.val_macro_f1)
    mirrored = result.logits(val_x.flip(-1), preprocess)
    torch.testing.assert_close(mirrored, result.logits(val_x, preprocess))
    with pytest.raises(ValueError, match="finetune: test_time_views must be one of"):
        finetune(
            build_backbone("convnet_tiny", 1, width=4), train_x, train_y, val_x, val_y,
            augment=preprocess, preprocess=preprocess, num_classes=2, test_time_views="all",
        )  # fmt: skip


def test_frozen_backbone_only_trains_head():
    train_x, train_y = blobs(32, 0)
    backbone = build_backbone("convnet_tiny", 1, width=4)
    result = finetune(
        backbone, train_x, train_y, train_x, train_y, augment=lambda x: x.float() / 255,
        preprocess=lambda x: x.float() / 255, num_classes=2, epochs=1, backbone_lr=None,
    )  # fmt: skip
    for k, v in backbone.state_dict().items():
        assert torch.equal(v, result.model.backbone.state_dict()[k])


def test_min_steps_and_evaluations_give_few_labels_enough_steps():
    train_x, train_y = blobs(8, 0)
    val_x, val_y = blobs(16, 1)
    result = finetune(
        build_backbone("convnet_tiny", 1, width=4), train_x, train_y, val_x, val_y,
        augment=lambda x: x.float() / 255, preprocess=lambda x: x.float() / 255,
        num_classes=2, epochs=1, min_steps=30, evaluations=3, batch_size=4,
    )  # fmt: skip
    assert [step for step, _ in result.history] == [10, 20, 30]


def fake_clock_and_lrs(monkeypatch, seconds_per_reading: float) -> list[float]:
    """Fine-tuning's clock advances ``seconds_per_reading`` at every reading; returns the list
    that receives the head's learning rate at every training step."""
    import selfsup.eval.finetune as finetune_module

    clock = (i * seconds_per_reading for i in range(1_000_000))
    monkeypatch.setattr(finetune_module.time, "monotonic", lambda: next(clock))
    lrs: list[float] = []
    step = finetune_module._Trainer.step

    def recording_step(self, *args):
        lrs.append(self.optimizer.param_groups[0]["lr"])
        return step(self, *args)

    monkeypatch.setattr(finetune_module._Trainer, "step", recording_step)
    return lrs


def test_a_time_budget_ends_the_schedule_and_evaluates_the_last_step(monkeypatch):
    lrs = fake_clock_and_lrs(monkeypatch, 6.0)  # every reading 6 s later: 60 s ~ 10 steps
    train_x, train_y = blobs(8, 0)
    val_x, val_y = blobs(16, 1)
    result = finetune(
        build_backbone("convnet_tiny", 1, width=4), train_x, train_y, val_x, val_y,
        augment=lambda x: x.float() / 255, preprocess=lambda x: x.float() / 255,
        num_classes=2, epochs=1, min_steps=1000, evaluations=5, batch_size=4, lr=0.5,
        max_minutes=1.0,
    )  # fmt: skip
    assert 5 <= result.steps_run < 20  # of the 1000 planned
    evaluated = [s for s, _ in result.history]
    assert evaluated[-1] == result.steps_run and len(evaluated) == 5  # spread over the time
    assert lrs[-1] < 0.05 * 0.5  # the cosine has (nearly) reached 0 when the time is up
    with pytest.raises(ValueError, match="max_minutes must be > 0, got 0"):
        finetune(
            build_backbone("convnet_tiny", 1, width=4), train_x, train_y, val_x, val_y,
            augment=lambda x: x.float() / 255, preprocess=lambda x: x.float() / 255,
            num_classes=2, max_minutes=0,
        )  # fmt: skip


def test_a_budget_that_does_not_bind_changes_nothing(monkeypatch):
    def run(max_minutes):
        with monkeypatch.context() as patch:
            lrs = fake_clock_and_lrs(patch, 0.1)  # 0.1 s a reading: 60 s is far away
            return lrs, finetune_blobs(max_minutes)

    def finetune_blobs(max_minutes):
        train_x, train_y = blobs(8, 0)
        torch.manual_seed(0)  # the same backbone for both runs
        result = finetune(
            build_backbone("convnet_tiny", 1, width=4), train_x, train_y, *blobs(16, 1),
            augment=lambda x: x.float() / 255, preprocess=lambda x: x.float() / 255,
            num_classes=2, epochs=1, min_steps=40, evaluations=4, batch_size=4,
            max_minutes=max_minutes,
        )  # fmt: skip
        return result

    # the clock is ahead of the steps at step 1 (0.1 s of 60 > 0 steps of 40); within the
    # grace share of the budget it does not move the warm-up
    budgeted, with_budget = run(1.0)
    plain, without = run(None)
    assert budgeted == plain and with_budget.history == without.history
    assert with_budget.steps_run == without.steps_run == 40


def test_without_a_budget_every_planned_step_runs():
    train_x, train_y = blobs(8, 0)
    result = finetune(
        build_backbone("convnet_tiny", 1, width=4), train_x, train_y, *blobs(16, 1),
        augment=lambda x: x.float() / 255, preprocess=lambda x: x.float() / 255,
        num_classes=2, epochs=1, min_steps=15, evaluations=10, batch_size=4,
    )  # fmt: skip
    assert result.steps_run == 15
    assert [s for s, _ in result.history] == [2, 3, 5, 6, 8, 9, 11, 12, 14, 15]


def test_class_weights_modes():
    labels = torch.tensor([0] * 100 + [1] * 4 + [2] * 1)
    assert class_weights(labels, 4, "none") is None
    balanced = class_weights(labels, 4, "balanced")
    sqrt = class_weights(labels, 4, "sqrt")
    for w in (balanced, sqrt):
        assert w[3] == 0  # absent class
        assert w[:3].mean().item() == pytest.approx(1.0)
    assert balanced[2] / balanced[0] == pytest.approx(100.0)
    assert sqrt[2] / sqrt[0] == pytest.approx(10.0)
    with pytest.raises(ValueError, match="class_weighting"):
        class_weights(labels, 4, "inverse")


def test_probe_head_init_starts_from_the_linear_probe():
    """LP-FT: with nothing trained after it (lr 0, frozen backbone), the fine-tuned model is the
    linear probe of the frozen features; the zero head predicts one class."""
    train_x, train_y = blobs(64, 0)
    val_x, val_y = blobs(32, 1)

    def preprocess(x):
        return x.float() / 255

    torch.manual_seed(0)
    backbone = build_backbone("convnet_tiny", 1, width=4).eval()
    common = dict(
        augment=preprocess, preprocess=preprocess, num_classes=2, epochs=1, batch_size=16,
        lr=0.0, backbone_lr=None,
    )  # fmt: skip
    lpft = finetune(backbone, train_x, train_y, val_x, val_y, head_init="probe", **common)
    head = probe_head(
        backbone, train_x, train_y, val_x, val_y, preprocess=preprocess, num_classes=2
    )
    torch.testing.assert_close(lpft.model.head.weight, head.weight)
    with torch.no_grad():
        expected = head(backbone(preprocess(val_x)))
        got = lpft.model.eval()(preprocess(val_x))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    assert lpft.val_macro_f1 > 0.9  # the probe alone separates the blobs
    zero = finetune(backbone, train_x, train_y, val_x, val_y, **common)
    assert zero.model.head.weight.abs().sum() == 0 and zero.val_macro_f1 < 0.5
    with pytest.raises(ValueError, match="head_init"):
        finetune(backbone, train_x, train_y, val_x, val_y, head_init="random", **common)


def test_cpu_fine_tuning_steps_run_with_heap_allocations(monkeypatch):
    from selfsup.eval import finetune as finetune_module
    from selfsup.runtime.allocator import heap_allocations

    entered, augmented_inside = [], []

    def spy(enabled):
        entered.append(enabled)
        return heap_allocations(enabled)

    def augment(x):
        augmented_inside.append(bool(entered))
        return x.float() / 255

    monkeypatch.setattr(finetune_module, "heap_allocations", spy)
    train_x, train_y = blobs(32, 0)
    finetune(
        build_backbone("convnet_tiny", 1, width=4), train_x, train_y, train_x, train_y,
        augment=augment, preprocess=lambda x: x.float() / 255, num_classes=2, epochs=1,
    )  # fmt: skip
    assert entered == [True] and augmented_inside and all(augmented_inside)


def test_finetune_prints_its_plan_and_says_when_min_steps_raises_the_epochs(capsys):
    train_x, train_y = blobs(8, 0)
    val_x, val_y = blobs(16, 1)
    result = finetune(
        build_backbone("convnet_tiny", 1, width=4), train_x, train_y, val_x, val_y,
        augment=lambda x: x.float() / 255, preprocess=lambda x: x.float() / 255,
        num_classes=2, epochs=2, min_steps=12, evaluations=2, batch_size=4,
        progress=Progress(every=1000),
    )  # fmt: skip
    assert result.history[-1][0] == 12
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith(
        "fine-tune: 2 epochs of 2 steps = 4 steps, raised to 12 by --min-steps 12 (few labels"
    )


def test_finetune_plan_when_epochs_are_enough_or_quiet(capsys):
    assert finetune_plan(3, 7, 10) == (21, "fine-tune: 3 epochs of 7 steps = 21 steps")
    total, plan = finetune_plan(2, 7, 300)
    assert total == 300 and "= 14 steps, raised to 300 by --min-steps 300" in plan
    assert "--min-steps 0 runs exactly 2 epochs" in plan
    train_x, train_y = blobs(8, 0)
    finetune(
        build_backbone("convnet_tiny", 1, width=4), train_x, train_y, train_x, train_y,
        augment=lambda x: x.float() / 255, preprocess=lambda x: x.float() / 255,
        num_classes=2, epochs=1, min_steps=0, evaluations=1, batch_size=4,
        progress=Progress(enabled=False),
    )  # fmt: skip
    assert capsys.readouterr().err == ""


# --- progress lines ------------------------------------------------------------------------------


def test_finetune_reports_steps_val_score_and_time_left(capsys):
    train_x, train_y = blobs(8, 0)
    val_x, val_y = blobs(16, 1)
    finetune(
        build_backbone("convnet_tiny", 1, width=4), train_x, train_y, val_x, val_y,
        augment=lambda x: x.float() / 255, preprocess=lambda x: x.float() / 255,
        num_classes=2, epochs=1, min_steps=30, evaluations=3, batch_size=4,
        progress=Progress(every=0),
    )  # fmt: skip
    printed = capsys.readouterr().err.splitlines()
    lines = [line for line in printed if line.startswith("fine-tune")]
    # each of the 3 evaluations reports its batch of val images and closes
    scoring = [line for line in printed if line.startswith("class scores of 16 images: ")]
    assert len(scoring) == 3 * 2 and len(printed) == len(lines) + len(scoring)
    assert scoring[-1].endswith(" done in 0:00")
    assert lines.pop(0).startswith("fine-tune: 1 epochs of 2 steps = 2 steps, raised to 30 ")
    assert len(lines) == 31  # every step (rate limit 0), then the closing line
    assert lines[0].startswith("fine-tune: 1/30 steps (3 %), ") and " elapsed, ~" in lines[0]
    assert lines[0].endswith(" left")
    assert lines[9].startswith("fine-tune: 10/30 steps (33 %), val macro-F1 ")
    assert "at step 10 (best " in lines[9]
    assert lines[-1].startswith("fine-tune: 30/30 steps (100 %), val macro-F1 ")
    assert " done in " in lines[-1]


def clocked(every, enabled=True):
    """A Progress writing to a string, on a clock the test moves by hand."""
    now, out = [0.0], io.StringIO()
    return Progress(enabled=enabled, every=every, stream=out, clock=lambda: now[0]), now, out


def test_progress_is_rate_limited_and_estimates_time_left():
    progress, now, out = clocked(every=10)
    task = progress.task("job", 100, "steps")
    for step in range(1, 101):  # 0.5 s a step
        now[0] = step * 0.5
        task.update(step, status="best 0.5")
    task.close()
    assert out.getvalue().splitlines() == [
        "job: 20/100 steps (20 %), best 0.5, 0:10 elapsed, ~0:40 left",
        "job: 40/100 steps (40 %), best 0.5, 0:20 elapsed, ~0:30 left",
        "job: 60/100 steps (60 %), best 0.5, 0:30 elapsed, ~0:20 left",
        "job: 80/100 steps (80 %), best 0.5, 0:40 elapsed, ~0:10 left",
        "job: 100/100 steps (100 %), best 0.5, 0:50 elapsed, ~0:00 left",
        "job: 100/100 steps (100 %), best 0.5, done in 0:50",
    ]


def test_short_jobs_and_quiet_progress_print_nothing():
    progress, now, out = clocked(every=10)
    task = progress.task("job", 5)
    for step in range(1, 6):
        now[0] = step
        task.update(step)
    task.close()
    quiet, _, quiet_out = clocked(every=0, enabled=False)
    quiet.task("job", 5).update(5)
    quiet.note("[1/3] cell")
    assert out.getvalue() == "" and quiet_out.getvalue() == ""
    progress.note("[1/3] cell")
    assert out.getvalue() == "[1/3] cell\n"


def test_progress_updates_one_line_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    task = Progress(every=0, stream=terminal).task("job", 2)
    task.update(1)
    task.close()
    assert terminal.getvalue().startswith("\r\x1b[Kjob: 1/2 (50 %), ")
    assert "\n" not in terminal.getvalue().split("\r\x1b[K")[1]  # overwritten by the next
    assert terminal.getvalue().endswith("\n")


def test_progress_env_variable(monkeypatch):
    for value, enabled, every in (("", True, 10.0), ("0", False, 0.0), ("off", False, 0.0),
                                  ("2.5", True, 2.5)):  # fmt: skip
        monkeypatch.setenv("SELFSUP_PROGRESS", value)
        progress = Progress.from_env()
        assert (progress.enabled, progress.every) == (enabled, every)
    monkeypatch.setenv("SELFSUP_PROGRESS", "soon")
    with pytest.raises(ValueError, match="SELFSUP_PROGRESS='soon'"):
        Progress.from_env()
    assert format_seconds(3725) == "1:02:05" and format_seconds(59.6) == "1:00"
