"""DDP correctness of every loss: 2 gloo ranks on CPU, each holding half of a fixed batch.

DDP averages the ranks' gradients, so for every loss the gradient on rank r divided by the world
size must equal the single-process gradient of the full batch on rank r's rows.
"""

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.losses import (
    barlow_twins_loss,
    byol_loss,
    dino_loss,
    infonce_queue_loss,
    negative_cosine,
    nt_xent_loss,
    update_center,
)
from selfsup.methods.queue import KeyQueue

WORLD = 2
BATCH, DIM = 8, 6  # global batch; each rank holds BATCH // WORLD rows
QUEUE_SIZE = 20

# name -> (loss of (inputs...) -> scalar, number of embedding inputs)
LOSSES = {
    "nt_xent": (lambda a, b: nt_xent_loss(a, b, temperature=0.3), 2),
    "negative_cosine": (negative_cosine, 2),
    "byol": (byol_loss, 2),
    "barlow_twins": (lambda a, b: barlow_twins_loss(a, b, lambda_param=0.05), 2),
}


def fixed_data() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64)

    queue = torch.nn.functional.normalize(r(QUEUE_SIZE, DIM), dim=1)
    return {
        "a": r(BATCH, DIM),
        "b": r(BATCH, DIM),
        "queue": queue,
        "students": r(4, BATCH, DIM),  # 2 global + 2 local views
        "teachers": r(2, BATCH, DIM),
        "center": r(DIM) * 0.1,
        "keys": r(BATCH, DIM).float(),
    }


def gradients(data: dict[str, torch.Tensor], rows: slice) -> dict[str, object]:
    """Loss gradients w.r.t. the embeddings of ``rows`` (all rows outside torch.distributed)."""
    out: dict[str, object] = {}
    for name, (loss_fn, _) in LOSSES.items():
        a = data["a"][rows].clone().requires_grad_()
        b = data["b"][rows].clone().requires_grad_()
        loss_fn(a, b).backward()
        out[name] = (a.grad, b.grad)
    q = data["a"][rows].clone().requires_grad_()
    infonce_queue_loss(q, data["b"][rows], data["queue"], temperature=0.2).backward()
    out["infonce_queue"] = (q.grad,)
    students = [s[rows].clone().requires_grad_() for s in data["students"]]
    teachers = [t[rows] for t in data["teachers"]]
    dino_loss(students, teachers, data["center"], 0.1, 0.04).backward()
    out["dino"] = tuple(s.grad for s in students)
    out["center"] = update_center(data["center"], teachers, center_momentum=0.9)
    return out


def worker(rank: int, init_file: str, out_dir: str, data: dict[str, torch.Tensor]) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        local = BATCH // WORLD
        result = gradients(data, slice(rank * local, (rank + 1) * local))
        queue = KeyQueue(QUEUE_SIZE, DIM)
        queue.keys.zero_()
        queue.push(data["keys"][rank * local : (rank + 1) * local])
        # 16 keys in 20 slots: no wrap here; tests/test_moco_queue.py checks the wrap-around
        queue.push(data["keys"][rank * local : (rank + 1) * local] * 2)
        result["queue_keys"], result["queue_ptr"] = queue.keys.clone(), queue.ptr.clone()
        torch.save(result, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    data = fixed_data()
    mp.spawn(worker, args=(str(tmp / "init"), str(tmp), data), nprocs=WORLD, join=True)
    return data, [torch.load(tmp / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.parametrize(
    "name", ["nt_xent", "negative_cosine", "byol", "barlow_twins", "infonce_queue", "dino"]
)
def test_rank_gradients_average_to_single_process_gradient(rank_results, name):
    data, results = rank_results
    reference = gradients(data, slice(None))[name]
    local = BATCH // WORLD
    for rank, result in enumerate(results):
        rows = slice(rank * local, (rank + 1) * local)
        for grad, full in zip(result[name], reference, strict=True):
            if full is None:  # a stop-gradient argument (SimSiam / BYOL targets)
                assert grad is None
                continue
            assert torch.allclose(grad / WORLD, full[rows], atol=1e-5, rtol=0), (name, rank)
            assert full[rows].abs().max() > 1e-4, "gradient too small to test anything"


def test_dino_center_is_global_batch_mean_on_every_rank(rank_results):
    data, results = rank_results
    expected = gradients(data, slice(None))["center"]
    for result in results:
        assert torch.allclose(result["center"], expected, atol=1e-12)


def test_moco_queue_enqueues_keys_of_both_ranks_in_rank_order(rank_results):
    data, results = rank_results
    keys = data["keys"]
    expected = torch.zeros(QUEUE_SIZE, DIM)
    # first push: all 8 keys in slots 0-7; second push: 2 * keys in slots 8-15
    expected[:BATCH] = keys
    expected[BATCH : 2 * BATCH] = 2 * keys
    for result in results:
        assert torch.equal(result["queue_keys"], expected)
        assert int(result["queue_ptr"]) == 2 * BATCH
