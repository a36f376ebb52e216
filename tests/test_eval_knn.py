import math
import types

import pytest
import torch
from torch import nn

from selfsup.eval import classification_metrics, extract_features, knn_classify, knn_evaluate
from selfsup.runtime.progress import Progress

# --- weighted kNN --------------------------------------------------------------------------------


def brute_force_knn(bank, labels, queries, k, t, num_classes):
    """InstDisc vote with explicit loops: cosine, k most similar, sum exp(s/t) per class."""
    out = torch.zeros(len(queries), num_classes, dtype=torch.float64)
    for qi, q in enumerate(queries.tolist()):
        sims = []
        for i, x in enumerate(bank.tolist()):
            dot = sum(a * b for a, b in zip(q, x, strict=True))
            norm = math.sqrt(sum(a * a for a in q)) * math.sqrt(sum(b * b for b in x))
            sims.append((dot / norm, i))
        sims.sort(reverse=True)
        for s, i in sims[:k]:
            out[qi, int(labels[i])] += math.exp(s / t)
        out[qi] /= out[qi].sum()
    return out


@pytest.fixture
def random_knn_data():
    g = torch.Generator().manual_seed(0)
    bank = torch.randn(40, 5, generator=g) * 3  # unnormalised on purpose
    labels = torch.randint(0, 4, (40,), generator=g)
    queries = torch.randn(13, 5, generator=g)
    return bank, labels, queries


def test_knn_matches_brute_force_for_several_k(random_knn_data):
    bank, labels, queries = random_knn_data
    got = knn_classify(bank, labels, queries, k=[1, 5, 17], temperature=0.07, num_classes=4)
    assert set(got) == {1, 5, 17}
    for k, scores in got.items():
        assert scores.shape == (13, 4)
        ref = brute_force_knn(bank, labels, queries, k, 0.07, 4)
        torch.testing.assert_close(scores.double(), ref, rtol=1e-5, atol=1e-6)
    # k=1: the single nearest neighbour's class gets the whole vote
    assert torch.equal(got[1].max(dim=1).values, torch.ones(13))


def test_knn_chunking_gives_identical_results(random_knn_data):
    bank, labels, queries = random_knn_data
    small = knn_classify(bank, labels, queries, k=[3, 10], batch_size=7)
    large = knn_classify(bank, labels, queries, k=[3, 10], batch_size=1024)
    one = knn_classify(bank, labels, queries, k=[3, 10], batch_size=1)
    for k in (3, 10):
        # the same neighbours; scores equal up to float32 rounding of a differently blocked matmul
        torch.testing.assert_close(small[k], large[k], rtol=0, atol=1e-6)
        torch.testing.assert_close(one[k], large[k], rtol=0, atol=1e-6)
        assert torch.equal(small[k].argmax(1), large[k].argmax(1))


def test_knn_k_larger_than_bank_clamps_with_warning(random_knn_data):
    bank, labels, queries = random_knn_data
    with pytest.warns(UserWarning, match="exceeds the bank size 40"):
        got = knn_classify(bank, labels, queries, k=[5, 200])
    assert set(got) == {5, 200}  # the requested key is kept
    full = knn_classify(bank, labels, queries, k=40)[40]
    torch.testing.assert_close(got[200], full)


def test_knn_perfect_clusters_score_one():
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(6)[:3] * 10  # three orthogonal directions
    train_y = torch.arange(30) % 3
    query_y = torch.arange(12) % 3
    train = centres[train_y] + 0.1 * torch.randn(30, 6, generator=g)
    query = centres[query_y] + 0.1 * torch.randn(12, 6, generator=g)
    with pytest.warns(UserWarning, match="k=\\[200\\] exceeds the bank size 30"):
        res = knn_evaluate(train, train_y, query, query_y, k=[1, 5, 200])
    for k in (1, 5, 200):
        assert res[f"knn{k}_accuracy"] == 1.0
        assert res[f"knn{k}_balanced_accuracy"] == 1.0
        assert res[f"knn{k}_macro_f1"] == 1.0
    assert "knn5_top5_accuracy" not in res  # only 3 classes


def test_knn_evaluate_uses_the_metrics_of_the_argmax(random_knn_data):
    bank, labels, queries = random_knn_data
    query_y = torch.arange(13) % 4
    res = knn_evaluate(bank, labels, queries, query_y, k=7, temperature=0.1, num_classes=6)
    scores = knn_classify(bank, labels, queries, k=7, num_classes=6)[7]
    m = classification_metrics(query_y, scores.argmax(1), 6)
    assert res["knn7_accuracy"] == pytest.approx(m["accuracy"])
    assert res["knn7_balanced_accuracy"] == pytest.approx(m["balanced_accuracy"])
    assert res["knn7_macro_f1"] == pytest.approx(m["macro_f1"])
    assert "knn7_top5_accuracy" in res  # 6 classes


def test_knn_errors_name_the_argument(random_knn_data):
    bank, labels, queries = random_knn_data
    with pytest.raises(ValueError, match="query_features have dimension 3"):
        knn_classify(bank, labels, queries[:, :3])
    with pytest.raises(ValueError, match="train_labels has 39 entries"):
        knn_classify(bank, labels[:39], queries)
    with pytest.raises(ValueError, match="k must be a positive integer"):
        knn_classify(bank, labels, queries, k=[0])
    with pytest.raises(ValueError, match="temperature"):
        knn_classify(bank, labels, queries, temperature=0)


# --- feature extraction --------------------------------------------------------------------------


class TinyNet(nn.Module):
    """Conv -> BatchNorm -> ReLU -> global pool: [B, 3, H, W] -> [B, 4]."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Sequential(nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    def forward(self, x):
        return self.head(self.bn(self.conv(x)))


def preprocess(batch):
    return batch.float() / 255 * 2 - 1


@pytest.fixture
def net_and_images():
    torch.manual_seed(0)
    net = TinyNet()
    images = torch.randint(0, 256, (11, 3, 8, 8), dtype=torch.uint8)
    with torch.no_grad():  # give BatchNorm running statistics far from a batch's own
        net.bn.running_mean.fill_(0.5)
        net.bn.running_var.fill_(4.0)
    return net, images


def test_extract_features_uses_eval_mode_and_restores_it(net_and_images):
    net, images = net_and_images
    net.train()
    net.head.eval()  # a sub-part frozen in eval must stay so
    running_mean = net.bn.running_mean.clone()
    with torch.no_grad():
        train_out = net(preprocess(images))
        net.bn.running_mean.copy_(running_mean)  # undo the train-mode update above
        net.bn.running_var.fill_(4.0)
        net.eval()
        expected = net(preprocess(images))
        net.train()
        net.head.eval()
    assert not torch.allclose(train_out, expected, atol=1e-3)

    feats = extract_features(net, images, preprocess, batch_size=4)
    assert feats.dtype == torch.float32 and feats.shape == (11, 4)
    assert not feats.requires_grad
    torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-6)
    assert net.training and net.bn.training and not net.head.training
    assert torch.equal(net.bn.running_mean, running_mean)  # eval: statistics untouched


def test_extract_features_dataset_chunking_and_channels_last(net_and_images):
    net, images = net_and_images
    net.eval()
    with torch.no_grad():
        expected = net(preprocess(images))
    dataset = types.SimpleNamespace(images=images, labels=torch.zeros(11))
    for kwargs in ({"batch_size": 1}, {"batch_size": 512}, {"channels_last": True}):
        feats = extract_features(net, dataset, preprocess, **kwargs)
        torch.testing.assert_close(feats, expected, rtol=1e-5, atol=1e-6)
    assert not net.training


def test_extract_features_bf16_autocast(net_and_images):
    net, images = net_and_images
    fp32 = extract_features(net, images, preprocess)
    bf16 = extract_features(net, images, preprocess, precision="bf16-mixed")
    assert bf16.dtype == torch.float32
    torch.testing.assert_close(bf16, fp32, rtol=0.05, atol=0.05)
    with pytest.raises(ValueError, match="precision must be one of"):
        extract_features(net, images, preprocess, precision="fp8")


def test_extract_features_rejects_bad_shapes(net_and_images):
    net, images = net_and_images
    with pytest.raises(ValueError, match=r"images must be \[N, C, H, W\]"):
        extract_features(net, images[0], preprocess)
    with pytest.raises(ValueError, match=r"must return features \[B, D\]"):
        extract_features(nn.Conv2d(3, 2, 1), images, preprocess)


def test_knn_and_feature_extraction_report_batches(random_knn_data, net_and_images, capsys):
    bank, labels, queries = random_knn_data
    knn_classify(bank, labels, queries, k=5, batch_size=5, progress=Progress(every=0))
    lines = capsys.readouterr().err.splitlines()
    assert lines[0].startswith("kNN of 13 queries on 40: 1/3 query batches (33 %), ")
    assert lines[-1].startswith("kNN of 13 queries on 40: 3/3 query batches (100 %), done in ")
    net, images = net_and_images
    extract_features(net, images, preprocess, batch_size=4, progress=Progress(every=0))
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" (")[0] for line in lines] == [
        "features of 11 images: 1/3 batches",
        "features of 11 images: 2/3 batches",
        "features of 11 images: 3/3 batches",
        "features of 11 images: 3/3 batches",  # the closing line: done in ...
    ]
    extract_features(net, images, preprocess, progress=Progress(enabled=False, every=0))
    assert capsys.readouterr().err == ""


# --- metric names -------------------------------------------------------------------------------


def test_knn_metric_keys_are_built_and_read_back_by_one_pair_of_functions(random_knn_data):
    from selfsup.eval.metric_keys import knn_metric_key, knn_monitor_key, parse_knn_metric_key

    assert knn_metric_key(5) == "knn5_macro_f1"
    assert knn_monitor_key(200, "balanced_accuracy") == "val/knn200_balanced_accuracy"
    assert parse_knn_metric_key("knn5_top5_accuracy") == (5, "top5_accuracy")
    assert parse_knn_metric_key("val/knn200_macro_f1", prefix="val/") == (200, "macro_f1")
    for other in ("knn_macro_f1", "knn5_recall", "val/knn5_macro_f1", "knn05_accuracy", "loss"):
        assert parse_knn_metric_key(other) is None, other
    with pytest.raises(ValueError, match="k must be an integer >= 1, got 0"):
        knn_metric_key(0)
    with pytest.raises(ValueError, match="metric must be one of"):
        knn_metric_key(5, "recall")
    bank, labels, queries = random_knn_data
    scores = knn_evaluate(bank, labels, queries, labels[:13], k=[3, 10])
    assert {parse_knn_metric_key(key) for key in scores} == {
        (k, metric)
        for k in (3, 10)
        for metric in ("accuracy", "balanced_accuracy", "macro_f1")  # 4 classes: no top-5
    }


def test_capped_bank_draws_the_monitors_seeded_subset():
    from selfsup.data import ImageDataset
    from selfsup.eval.knn import capped_bank

    bank = ImageDataset(torch.zeros(10, 1, 2, 2, dtype=torch.uint8), labels=torch.arange(10))
    assert capped_bank(bank, None) is bank and capped_bank(bank, 10) is bank
    chosen = torch.randperm(10, generator=torch.Generator().manual_seed(3))[:4]
    assert capped_bank(bank, 4, seed=3).labels.tolist() == chosen.tolist()
    with pytest.raises(ValueError, match="max_bank must be a positive integer or None, got 0"):
        capped_bank(bank, 0)
