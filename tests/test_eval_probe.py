import pytest
import torch
from sklearn.utils.class_weight import compute_class_weight

import selfsup
from selfsup.cli import main
from selfsup.eval import ProbeResult, linear_probe, macro_f1, mlp_probe
from selfsup.eval.probe import _balanced_weights, folded_linear
from selfsup.runtime.progress import Progress

FAST = {"weight_decays": (0.0, 1e-3), "epochs": 30}


def blobs(n, seed, num_classes=3, dim=8, spread=0.3):
    """Gaussian blobs around well separated centres; offset and scaled to test standardisation."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(99)) * 3
    y = torch.arange(n) % num_classes
    x = centres[y] + spread * torch.randn(n, dim, generator=g)
    return x * 50 + 1000, y


def xor(n, seed):
    """Quadrant labels: class = sign(x0) == sign(x1). No line separates them."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g) * 2 - 1
    x = x + 0.1 * x.sign()  # keep a margin around the axes
    y = ((x[:, 0] > 0) == (x[:, 1] > 0)).long()
    return x, y


def test_linear_probe_separates_blobs():
    (x, y), (xv, yv), (xt, yt) = blobs(90, 0), blobs(60, 1), blobs(60, 2)
    res = linear_probe(x, y, xv, yv, num_classes=3, **FAST)
    assert isinstance(res, ProbeResult)
    assert res.val_macro_f1 == 1.0
    assert res.weight_decay in (0.0, 1e-3) and 1 <= res.epoch <= 30
    assert set(res.history) == {0.0, 1e-3} and all(len(h) == 30 for h in res.history.values())
    assert res.history[res.weight_decay][res.epoch - 1] == res.val_macro_f1
    scores = res.predict(xt)
    assert scores.shape == (60, 3)
    torch.testing.assert_close(scores.sum(1), torch.ones(60))
    assert res.evaluate(xt, yt)["accuracy"] == 1.0
    assert res.hyperparameters["optimizer"] == "lbfgs"


def test_classifier_includes_the_standardisation():
    (x, y), (xv, yv) = blobs(90, 0), blobs(60, 1)
    res = linear_probe(x, y, xv, yv, num_classes=3, **FAST)
    standardize, head = res.classifier
    torch.testing.assert_close(standardize.mean, x.mean(0))
    torch.testing.assert_close(standardize.std, x.std(0, unbiased=False))
    with torch.no_grad():
        manual = torch.softmax(head((xv - x.mean(0)) / x.std(0, unbiased=False)), dim=1)
    torch.testing.assert_close(res.predict(xv), manual)


def test_mlp_probe_solves_xor_where_linear_cannot():
    (x, y), (xv, yv) = xor(200, 0), xor(200, 1)
    linear = linear_probe(x, y, xv, yv, num_classes=2, **FAST)
    mlp = mlp_probe(x, y, xv, yv, num_classes=2, hidden_dim=32, **FAST)
    assert linear.evaluate(xv, yv)["accuracy"] < 0.75
    assert mlp.evaluate(xv, yv)["accuracy"] > 0.95
    assert mlp.hyperparameters["probe"] == "mlp"


def test_selection_reads_the_validation_split():
    (x, y), (xv, yv) = blobs(90, 0, spread=1.0), blobs(60, 1, spread=1.0)
    honest = linear_probe(x, y, xv, yv, num_classes=3, **FAST)
    # Shifting every val label makes a good classifier look bad: the least fitted candidate
    # (epoch 1, from the zero start) is now the least wrong, so the selection must move there.
    shifted = linear_probe(x, y, xv, (yv + 1) % 3, num_classes=3, **FAST)
    assert honest.val_macro_f1 > 0.9 and shifted.val_macro_f1 < 0.2
    assert honest.epoch > 1 and shifted.epoch == 1
    # The reported score is the chosen classifier's macro-F1 on val, recomputed here.
    for res, labels in ((honest, yv), (shifted, (yv + 1) % 3)):
        assert res.val_macro_f1 == pytest.approx(macro_f1(labels, res.predict(xv).argmax(1), 3))


def test_weight_decay_and_epoch_are_the_argmax_of_the_val_history():
    # Correlated features and label noise: candidates differ, so the argmax is not trivial.
    g = torch.Generator().manual_seed(0)
    w, mix = torch.randn(20, generator=g), torch.randn(20, 20, generator=g)
    x, xv = torch.randn(60, 20, generator=g) @ mix, torch.randn(400, 20, generator=g) @ mix
    y = ((x @ w + 0.5 * torch.randn(60, generator=g)) > 0).long()
    yv = ((xv @ w) > 0).long()
    res = linear_probe(x, y, xv, yv, num_classes=2, weight_decays=(0.0, 0.03, 1.0), epochs=30)
    best = {wd: max(h) for wd, h in res.history.items()}
    assert len(set(best.values())) == 3
    assert res.weight_decay == max(best, key=best.get)
    assert res.epoch == res.history[res.weight_decay].index(best[res.weight_decay]) + 1
    assert res.val_macro_f1 == max(best.values())


def test_probes_are_reproducible_and_leave_the_global_rng_alone():
    (x, y), (xv, yv) = blobs(90, 0, spread=2.0), blobs(60, 1, spread=2.0)
    kwargs = dict(num_classes=3, hidden_dim=16, dropout=0.3, batch_size=16, **FAST)
    state = torch.get_rng_state()
    a = mlp_probe(x, y, xv, yv, seed=5, **kwargs)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(1234)  # a different global state must not matter
    b = mlp_probe(x, y, xv, yv, seed=5, **kwargs)
    c = mlp_probe(x, y, xv, yv, seed=6, **kwargs)
    assert a.hyperparameters["optimizer"] == "adam"
    assert a.history == b.history and (a.weight_decay, a.epoch) == (b.weight_decay, b.epoch)
    sa, sb, sc = (r.classifier.state_dict() for r in (a, b, c))
    assert all(torch.equal(sa[name], sb[name]) for name in sa)
    assert any(not torch.equal(sa[name], sc[name]) for name in sa)


def test_patience_stops_early():
    (x, y), (xv, yv) = blobs(90, 0), blobs(60, 1)
    res = linear_probe(x, y, xv, yv, num_classes=3, weight_decays=(0.0,), epochs=50, patience=3)
    assert len(res.history[0.0]) < 50


def test_class_balanced_weights_match_sklearn():
    y = torch.tensor([0] * 10 + [1] * 3 + [3] * 7)
    ours = _balanced_weights(y, 4)
    ref = compute_class_weight("balanced", classes=torch.tensor([0, 1, 3]).numpy(), y=y.numpy())
    torch.testing.assert_close(ours[[0, 1, 3]], torch.tensor(ref, dtype=torch.float32))
    assert ours[2] == 0
    (x, _), (xv, yv) = blobs(20, 0), blobs(30, 1)
    res = linear_probe(x, y % 3, xv, yv, num_classes=3, class_balanced=True, **FAST)
    assert res.hyperparameters["class_balanced"] is True


def relu_features(counts, seed):
    """Imbalanced classes seen through a random ReLU layer, squared: sparse, heavy-tailed
    features like a conv net's, on which a unit L-BFGS step often overshoots."""
    g, fixed = torch.Generator().manual_seed(2 * seed), torch.Generator().manual_seed(99 + seed)
    centres, mix = torch.randn(len(counts), 8, generator=fixed), torch.randn(8, 16, generator=fixed)
    bias = torch.randn(16, generator=fixed) * 0.5 - 1.0
    y = torch.cat([torch.full((c,), i) for i, c in enumerate(counts)])
    z = centres[y] + 0.4 * torch.randn(len(y), 8, generator=g)
    return torch.relu(z @ (mix / 8**0.5) + bias) ** 2, y


@pytest.mark.parametrize("seed", [0, 1])
def test_class_balanced_lbfgs_keeps_descending_to_a_separating_fit(seed):
    # Regression: torch's LBFGS(max_iter=1) defaults to max_eval=1, which left the strong-Wolfe
    # search no evaluation to shrink a rejected step; the weights froze for good (training
    # macro-F1 stuck at 0.56 / 0.84 on these two sets; a wafer probe sat at 0.351).
    x, y = relu_features((500, 30, 10, 3, 2, 1), seed)
    res = linear_probe(
        x, y, x, y, num_classes=6, class_balanced=True, weight_decays=(0.0,), epochs=40
    )
    # The sets are linearly separable: unregularised logistic regression must separate them.
    assert res.val_macro_f1 == 1.0
    assert res.hyperparameters["optimizer"] == "lbfgs"


def test_probe_errors_name_the_culprit():
    (x, y), (xv, yv) = blobs(30, 0), blobs(30, 1)
    with pytest.raises(ValueError, match="val_features have dimension 4"):
        linear_probe(x, y, xv[:, :4], yv, num_classes=3)
    with pytest.raises(ValueError, match="val_labels hold classes"):
        linear_probe(x, y, xv, yv + 1, num_classes=3)
    with pytest.raises(ValueError, match="'lbfgs' is full batch"):
        linear_probe(x, y, xv, yv, num_classes=3, optimizer="lbfgs", batch_size=8)
    with pytest.raises(ValueError, match="dropout"):
        mlp_probe(x, y, xv, yv, num_classes=3, dropout=1.5)


def test_folded_linear_equals_the_standardised_probe():
    x, y = blobs(120, 0)
    x = x * 5 + 3  # far from standardised, so the fold matters
    xv, yv = blobs(60, 1)
    result = linear_probe(x, y, xv * 5 + 3, yv, num_classes=3, epochs=20)
    folded = folded_linear(result.classifier)
    torch.testing.assert_close(folded(x), result.classifier(x), rtol=1e-5, atol=1e-4)
    with pytest.raises(ValueError, match="linear probe"):
        folded_linear(torch.nn.Sequential(torch.nn.Linear(8, 3), torch.nn.Linear(3, 3)))


def test_probe_search_reports_setting_epochs_and_best_val_score(capsys):
    (x, y), (xv, yv) = blobs(90, 0), blobs(60, 1)
    res = linear_probe(x, y, xv, yv, num_classes=3, weight_decays=(0.0, 1e-3), epochs=3,
                       progress=Progress(every=0))  # fmt: skip
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 7  # one line per epoch of each setting (rate limit 0), then the choice
    assert lines[0].startswith(
        "linear probe search: 1/6 epochs (17 %), setting 1/2 (weight_decay=0), best val macro-F1 "
    )
    assert lines[3].startswith("linear probe search: 4/6 epochs (67 %), setting 2/2 "
                               "(weight_decay=0.001), best val macro-F1 ")  # fmt: skip
    assert lines[-1].startswith(
        f"linear probe search: 6/6 epochs (100 %), chose weight_decay={res.weight_decay:g} "
        f"epoch {res.epoch}, val macro-F1 {res.val_macro_f1:.3f}, done in "
    )
    mlp_probe(x, y, xv, yv, num_classes=3, weight_decays=(0.0,), epochs=50, patience=2,
              progress=Progress(every=0))  # fmt: skip
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("mlp probe search: 1/50 epochs (2 %), setting 1/1 ")
    assert lines[-1].startswith("mlp probe search: 50/50 epochs (100 %), chose ")  # stopped early


def test_eval_commands_print_where_they_wrote_the_json(labelled_npz, tmp_path, capsys):
    train, val = labelled_npz
    _, run = selfsup.pretrain(
        method="simsiam", backbone="convnet_tiny", data=str(train), image_size=16, max_steps=2,
        batch_size=16, precision="32-true", progress_bar=False, out=str(tmp_path), name="run",
        backbone_kwargs={"width": 4}, method_kwargs={"proj_dim": 32, "pred_hidden_dim": 8},
        val_data=str(val), knn_k=[3],
    )  # fmt: skip
    capsys.readouterr()
    data = ["--data", str(train), "--test-data", str(val), "--label-fraction", "0.5"]
    assert main(["eval", "linear", str(run), *data]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[-2] == f"wrote {run / 'eval_linear_data_f0.5.json'}"
    assert lines[-1].startswith(f"wrote {run / 'eval_linear_data_f0.5_classifier'} (the selected")
    assert (run / "eval_linear_data_f0.5.json").is_file()
    knn = ["--data", str(train), "--query-data", str(val), "--k", "3"]
    assert main(["eval", "knn", str(run), *knn]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"wrote {run / 'eval_knn_val.json'}"
    ckpt = run / "checkpoints" / "last.ckpt"
    assert main(["eval", "knn", str(ckpt), *knn]) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    assert last == f"no JSON written: '{ckpt}' is a file, not a run folder"
