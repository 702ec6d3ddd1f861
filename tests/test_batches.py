"""Device-resident batches: sharding, seeding, resume and unreadable images, with simulated processes."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tcl_hf.feeding.batches import DeviceBatches, shard


def images(n: int) -> torch.Tensor:
    # Image i carries its own index in its first pixel, so a batch can be checked against its indices.
    x = torch.zeros(n, 3, 4, 4, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n) % 256
    x[:, 1, 0, 0] = torch.arange(n) // 256
    return x


def feeds(n: int, batch: int, processes: int, usable=None, **kwargs) -> list[DeviceBatches]:
    usable = torch.ones(n, dtype=torch.bool) if usable is None else usable
    return [DeviceBatches(images(n), usable, batch, seed=3, device="cpu", process_index=r, num_processes=processes,
                          **kwargs) for r in range(processes)]


@pytest.mark.parametrize("n, batch, processes", [(100, 8, 1), (100, 8, 3), (64, 16, 4)])
def test_every_sample_at_most_once_per_epoch_across_processes(n, batch, processes):
    seen = []
    for feed in feeds(n, batch, processes):
        for x, index in feed.epoch(1):
            assert x.shape == (batch, 3, 4, 4)
            assert torch.equal(x[:, 0, 0, 0].long() + 256 * x[:, 1, 0, 0].long(), index)
            seen += index.tolist()
    steps = n // (batch * processes)
    assert len(seen) == steps * batch * processes and len(set(seen)) == len(seen)
    # Only the remainder of the epoch's order is dropped.
    assert len(seen) > n - batch * processes


def test_order_depends_on_seed_and_epoch_only():
    a, b = feeds(50, 5, 2), feeds(50, 5, 2)
    for r in range(2):
        assert torch.equal(a[r].local_batches(4), b[r].local_batches(4))
        assert not torch.equal(a[r].local_batches(4), a[r].local_batches(5))


def test_resume_mid_epoch_replays_the_rest():
    (feed,) = feeds(40, 4, 1)
    full = [index for _, index in feed.epoch(2)]
    rest = [index for _, index in feed.epoch(2, start=6)]
    assert len(full) == 10 and all(torch.equal(a, b) for a, b in zip(full[6:], rest))


def test_unreadable_images_never_enter_a_batch():
    usable = torch.ones(30, dtype=torch.bool)
    usable[[0, 7, 29]] = False
    seen = {i for feed in feeds(30, 3, 2, usable) for _, index in feed.epoch(1) for i in index.tolist()}
    assert not seen & {0, 7, 29}
    assert len(seen) == 24  # 27 usable, global batch 6: four full batches


def test_a_sampler_order_replaces_the_permutation():
    picked = np.array([5, 3, 9, 1, 0, 2, 8, 4])
    usable = torch.ones(10, dtype=torch.bool)
    usable[9] = False
    (feed,) = feeds(10, 2, 1, usable, order=lambda epoch: picked + 0 * epoch)
    assert [i for _, index in feed.epoch(1) for i in index.tolist()] == [5, 3, 1, 0, 2, 8]


@pytest.mark.parametrize("n, processes", [(10, 3), (7, 2), (5, 8), (0, 2)])
def test_shards_cover_every_index_once(n, processes):
    covered = [i for r in range(processes) for i in shard(n, r, processes)]
    assert covered == list(range(n))
