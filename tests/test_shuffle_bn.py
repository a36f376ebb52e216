"""Shuffling BN (MoCo sec. 3.3): keys come from shuffled sub-batches, then go back to their rows.

Every expected value is rebuilt by hand from the permutation the same seed draws: shuffle with a
Python loop, forward the sub-batches one by one, put row j of the output back at row perm[j].
"""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import selfsup
from selfsup.losses import infonce_queue_loss
from selfsup.methods.shuffle_bn import (
    SHUFFLE_BN_GROUP,
    bn_groups,
    shuffled_key_forward,
    split_bn_forward,
)
from tests.ddp_harness import WORLD, rank_rows, run_on_ranks

pytestmark = pytest.mark.usefixtures("one_thread")
DIM = 4


def bn_encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(DIM, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3)).double()


def inputs(batch: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, DIM, generator=torch.Generator().manual_seed(seed)).double()


def permutation(size: int, seed: int) -> list[int]:
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()


def by_hand(encoder: nn.Module, x: torch.Tensor, perm: list[int], sizes: list[int]) -> torch.Tensor:
    """Shuffle x by perm, forward consecutive sub-batches of ``sizes``, un-shuffle row by row."""
    shuffled = torch.stack([x[i] for i in perm])
    outputs, start = [], 0
    for size in sizes:
        outputs.append(encoder(shuffled[start : start + size]))
        start += size
    out = torch.cat(outputs)
    keys = torch.empty_like(out)
    for j, i in enumerate(perm):
        keys[i] = out[j]
    return keys


def test_keys_are_the_encoder_on_shuffled_sub_batches_not_on_the_full_batch():
    encoder = bn_encoder().train()
    x = inputs(10)
    keys = shuffled_key_forward(encoder, x, 3, generator=torch.Generator().manual_seed(7))
    # 10 rows in 3 groups: sizes 4, 3, 3
    expected = by_hand(encoder, x, permutation(10, 7), [4, 3, 3])
    assert torch.allclose(keys, expected, atol=1e-12, rtol=0)
    assert not keys.requires_grad
    full_batch = encoder(x)
    assert (keys - full_batch).abs().max() > 1e-2  # BatchNorm statistics of other batches


def group_members(encode, batch: int) -> torch.Tensor:
    """Which images share each sample's BatchNorm statistics: a BatchNorm over one-hot image
    ids gives a non-zero output exactly at the columns of the images in the sample's group."""
    out = encode(nn.BatchNorm1d(batch, affine=False).train(), torch.eye(batch))
    return (out.abs() > 1e-6).float()


def test_a_key_shares_its_statistics_with_few_of_its_querys_images():
    batch, splits = 32, 4
    ids = torch.eye(batch)
    queries = group_members(lambda bn, x: split_bn_forward(bn, x, splits), batch)
    generator = torch.Generator().manual_seed(0)
    keys = group_members(
        lambda bn, x: shuffled_key_forward(bn, x, splits, generator=generator), batch
    )
    own = ids.bool()
    assert queries[own].eq(1).all() and keys[own].eq(1).all()  # every sample in its own group
    assert queries.sum(1).eq(batch // splits).all() and keys.sum(1).eq(batch // splits).all()
    # queries: 4 consecutive blocks of 8; keys: random groups of 8
    assert torch.equal(queries[0], (torch.arange(batch) < 8).float())
    shared = (queries * keys).sum(1) / (batch // splits)  # fraction of a key's group
    assert shared.mean() < 0.5  # 1/4 expected (+ the sample itself): not the query's group
    assert not torch.equal(queries, keys)


def test_without_batchnorm_or_in_eval_mode_keys_are_the_plain_forward():
    x = inputs(9)
    no_bn = nn.Sequential(nn.Linear(DIM, 6), nn.ReLU(), nn.Linear(6, 3)).double()
    keys = shuffled_key_forward(no_bn, x, 2)
    assert torch.allclose(keys, no_bn(x), atol=1e-12, rtol=0)  # un-shuffle puts rows back

    encoder = bn_encoder()
    encoder.train()
    encoder(inputs(16, seed=3) * 3 + 1)  # running statistics away from 0 / 1
    encoder.eval()
    assert torch.allclose(shuffled_key_forward(encoder, x, 3), encoder(x), atol=1e-12, rtol=0)


def test_query_sub_batches_are_consecutive_with_their_own_statistics():
    encoder = bn_encoder().train()
    x = inputs(7)
    expected = torch.cat([encoder(x[:4]), encoder(x[4:])])  # 7 rows in 2: sizes 4, 3
    assert torch.allclose(split_bn_forward(encoder, x, 2), expected, atol=1e-12, rtol=0)
    assert split_bn_forward(encoder, x, 2).requires_grad


def conv_bn_encoder(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(3, 4), nn.BatchNorm1d(4),
    ).double()  # fmt: skip


@pytest.mark.parametrize("channels_last", [False, True])
def test_grouped_batchnorm_is_one_forward_per_sub_batch_in_one_pass(channels_last):
    """Divisible batches take the one-pass path: outputs and gradients equal a forward per
    sub-batch; running statistics move by the mean of the groups' statistics (MoCo's
    SplitBatchNorm); the encoder's BatchNorms are themselves again afterwards."""
    x = torch.randn(12, 2, 5, 5, generator=torch.Generator().manual_seed(3)).double()
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    grouped, looped = conv_bn_encoder().train(), conv_bn_encoder().train()
    out = split_bn_forward(grouped, x, 3)
    expected = torch.cat([looped(part) for part in x.split(4)])
    assert torch.allclose(out, expected, atol=1e-12, rtol=0)
    out.pow(2).sum().backward()
    expected.pow(2).sum().backward()
    for (name, a), b in zip(grouped.named_parameters(), looped.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-10, rtol=0), name
    bn, m = grouped[1], grouped[1].momentum
    groups = x.reshape(3, 4, 2, 5, 5)
    h = torch.stack([conv_bn_encoder()[0](g) for g in groups])  # the conv's outputs per group
    count = 4 * 5 * 5
    means = h.mean(dim=(1, 3, 4))
    variances = h.var(dim=(1, 3, 4), unbiased=False) * count / (count - 1)
    assert torch.allclose(bn.running_mean, m * means.mean(0), atol=1e-12)
    assert torch.allclose(bn.running_var, (1 - m) + m * variances.mean(0), atol=1e-12)
    assert int(bn.num_batches_tracked) == 1
    assert "forward" not in vars(bn)  # the patch is gone


def test_default_number_of_sub_batches():
    assert SHUFFLE_BN_GROUP == 32
    assert bn_groups(256) == 8  # MoCo's 8 GPUs of 32, on one device
    assert bn_groups(100) == 3
    assert bn_groups(32) == 2 and bn_groups(8) == 2  # at least 2, or shuffling changes nothing
    assert bn_groups(3) == 1  # never a group of one sample
    assert bn_groups(10, 3) == 3 and bn_groups(8, 8) == 4 and bn_groups(64, 1) == 1
    for bad in (0, -1, 2.0, True):
        with pytest.raises(ValueError, match="bn_splits"):
            bn_groups(8, bad)


# --- two ranks ---------------------------------------------------------------------------------

GLOBAL_BATCH, SPLITS_PER_RANK, SEED = 12, 2, 5


def ddp_keys(data, rows):
    """Each rank draws from a different seed: only rank 0's permutation may be used."""
    seed = SEED + torch.distributed.get_rank()
    encoder = bn_encoder().train()
    x = data["x"][rows]
    return {
        "keys": shuffled_key_forward(
            encoder, x, SPLITS_PER_RANK, generator=torch.Generator().manual_seed(seed)
        )
    }


def test_on_two_ranks_keys_use_one_permutation_and_each_rank_gets_its_own_rows():
    x = inputs(GLOBAL_BATCH)
    results = run_on_ranks(ddp_keys, {"x": x})
    encoder = bn_encoder().train()
    # rank r forwards rows r*6 .. r*6+5 of the shuffled batch in 2 sub-batches of 3
    expected = by_hand(encoder, x, permutation(GLOBAL_BATCH, SEED), [3, 3, 3, 3])
    one_process = shuffled_key_forward(
        encoder, x, SPLITS_PER_RANK * WORLD, generator=torch.Generator().manual_seed(SEED)
    )
    assert torch.allclose(one_process, expected, atol=1e-12, rtol=0)
    for rank, result in enumerate(results):
        rows = rank_rows(rank, GLOBAL_BATCH)
        assert torch.allclose(result["keys"], expected[rows], atol=1e-12, rtol=0), rank


# --- in MoCo v2 ----------------------------------------------------------------------------------


def test_mocov2_contrasts_split_queries_with_shuffled_keys():
    method = selfsup.build(
        "mocov2", backbone="convnet_tiny", backbone_kwargs={"width": 4}, image_size=16,
        proj_hidden_dim=16, proj_dim=8, queue_size=32, bn_splits=2,
    )  # fmt: skip
    assert method.shuffle_bn and method.hyperparameters()["shuffle_bn"] is True
    g = torch.Generator().manual_seed(0)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    queue = method.queue.keys.clone()
    with torch.no_grad():
        q = torch.cat([method.encoder(views[0][:4]), method.encoder(views[0][4:])])
        key_encoder = nn.Sequential(method.key_backbone, method.key_projector)
        k = by_hand(key_encoder, views[1], permutation(8, 11), [4, 4])
        expected = infonce_queue_loss(q, k, queue, method.temperature)
    torch.manual_seed(11)  # the permutation's seed (global generator)
    out = method.training_loss(views)
    assert out.loss.item() == pytest.approx(expected.item(), abs=1e-5)
    assert torch.allclose(method.queue.keys[:8], F.normalize(k, dim=1), atol=1e-5)
    plain = torch.cat(method.backbone_forward([views[1]], key_encoder))
    assert (plain - k).abs().max() > 1e-3  # shuffling changed the keys
