"""The in-memory batch loader: the DataLoader's exact batches (per rank, per epoch, after a resume), faster."""

from __future__ import annotations

import pytest
import torch
from accelerate.data_loader import BatchSamplerShard
from torch.utils.data import BatchSampler, DataLoader

from capsgan_dist.data import EpochShuffle, TensorImages, synthetic_images
from capsgan_dist.errors import UserError
from capsgan_dist.loader import DeviceBatches, to_unit_range

N, BATCH, SEED = 50, 4, 7


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    return synthetic_images(N, 8, 1, seed=3)  # (50, 1, 8, 8) uint8


def _dataloader_batches(images: torch.Tensor, rank: int, world: int, epochs: int) -> list[torch.Tensor]:
    """What train.py's DataLoader gave under Accelerate: BatchSamplerShard over EpochShuffle, drop_last."""
    sampler = EpochShuffle(len(images), SEED)
    out = []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        shard = BatchSamplerShard(BatchSampler(sampler, BATCH, drop_last=True), world, rank)
        loader = DataLoader(TensorImages(images), batch_sampler=shard)
        out += list(loader)
    return out


@pytest.mark.parametrize("world", [1, 2])
def test_batches_are_the_dataloader_s_bitwise_for_every_rank_and_epoch(images, world):
    for rank in range(world):
        want = _dataloader_batches(images, rank, world, epochs=3)
        stream = DeviceBatches(images, BATCH, SEED, torch.device("cpu"), rank, world).stream()
        got = [next(stream) for _ in range(len(want))]
        assert len(want) == 3 * (N // (BATCH * world))
        for i, (g, w) in enumerate(zip(got, want)):
            assert g.dtype == torch.float32 and torch.equal(g, w), f"rank {rank}, batch {i}"


def test_ranks_get_disjoint_batches(images):
    a, b = (DeviceBatches(images, BATCH, SEED, torch.device("cpu"), r, 2).epoch_indices(0) for r in (0, 1))
    assert not set(a.flatten().tolist()) & set(b.flatten().tolist())


@pytest.mark.parametrize("start", [0, 5, 12, 25])
def test_a_stream_started_at_batch_k_continues_the_full_stream(images, start):
    batches = DeviceBatches(images, BATCH, SEED, torch.device("cpu"))
    full = batches.stream()
    want = [next(full) for _ in range(start + 15)][start:]
    resumed = batches.stream(start)
    assert all(torch.equal(next(resumed), w) for w in want)


def test_conversion_matches_the_per_image_one_for_every_pixel_value():
    values = torch.arange(256, dtype=torch.uint8).view(1, 1, 16, 16)
    assert torch.equal(to_unit_range(values), TensorImages(values)[0][None])
    assert to_unit_range(values).min() == -1 and to_unit_range(values).max() == 1


def test_fewer_images_than_a_global_batch_is_a_user_error(images):
    with pytest.raises(UserError, match=r"fewer than one global batch \(64: train.batch_real=32 x 2 processes\)"):
        DeviceBatches(images, 32, SEED, torch.device("cpu"), 0, 2)
