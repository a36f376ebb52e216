"""MoCo's key queue wraps around: the oldest keys are replaced first, in one process and in DDP.

Key n is the row (n, -n), the queue starts at zeros, so every expected queue below is written
out by hand: slot contents after each push and the pointer (the slot the next key goes to).
"""

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from selfsup.methods.queue import KeyQueue

SIZE = 5


def keys(*numbers: int) -> torch.Tensor:
    return torch.tensor([[n, -n] for n in numbers], dtype=torch.float32)


def empty_queue() -> KeyQueue:
    queue = KeyQueue(SIZE, dim=2)
    queue.keys.zero_()
    return queue


def assert_queue(queue_keys: torch.Tensor, ptr: int, slots: list[int], next_slot: int) -> None:
    assert queue_keys.tolist() == keys(*slots).tolist()
    assert ptr == next_slot


def assert_oldest_first(queue_keys: torch.Tensor, ptr: int, newest: list[int]) -> None:
    """Read from the pointer on, the queue holds the last SIZE keys pushed, oldest first."""
    assert torch.roll(queue_keys, -ptr, dims=0).tolist() == keys(*newest).tolist()


# (keys pushed, slots after the push, pointer after the push): 3 keys per push into 5 slots
ONE_PROCESS = [
    ([1, 2, 3], [1, 2, 3, 0, 0], 3),
    ([4, 5, 6], [6, 2, 3, 4, 5], 1),  # 6 wraps to slot 0, replacing 1, the oldest
    ([7, 8, 9], [6, 7, 8, 9, 5], 4),
]


def test_a_wrapping_queue_replaces_the_oldest_keys_first():
    queue = empty_queue()
    for pushed, slots, next_slot in ONE_PROCESS:
        queue.push(keys(*pushed))
        assert_queue(queue.keys, int(queue.ptr), slots, next_slot)
    assert_oldest_first(queue.keys, int(queue.ptr), [5, 6, 7, 8, 9])


WORLD = 2
KEYS_PER_RANK = 2
# each step, rank 0 pushes 2 keys and rank 1 the next 2: 4 keys per step, in rank order
DDP = [
    ([1, 2, 3, 4], [1, 2, 3, 4, 0], 4),
    ([5, 6, 7, 8], [6, 7, 8, 4, 5], 3),  # 5 in the last slot, then 6, 7, 8 over 1, 2, 3
    ([9, 10, 11, 12], [11, 12, 8, 9, 10], 2),
]


def ddp_worker(rank: int, init_file: str, out_dir: str) -> None:
    """One gloo rank: pushes its share of each step's keys and saves the queue after each."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        queue = empty_queue()
        states = []
        for step_keys, _, _ in DDP:
            mine = step_keys[rank * KEYS_PER_RANK : (rank + 1) * KEYS_PER_RANK]
            queue.push(keys(*mine))
            states.append((queue.keys.clone(), int(queue.ptr)))
        torch.save(states, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_in_ddp_every_rank_holds_the_same_wrapped_queue(tmp_path):
    mp.spawn(ddp_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    for rank in range(WORLD):
        states = torch.load(tmp_path / f"rank{rank}.pt")
        for (queue_keys, ptr), (_, slots, next_slot) in zip(states, DDP, strict=True):
            assert_queue(queue_keys, ptr, slots, next_slot)
        assert_oldest_first(*states[-1], [8, 9, 10, 11, 12])
