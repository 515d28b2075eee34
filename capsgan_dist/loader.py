"""The training batches: one uint8 tensor in memory, batches made by tensor indexing.

Replaces a DataLoader that built each batch image by image in Python (44-66k img/s measured on a
shared 2-core CPU at batch 1024, docs/performance.md; far below what a GPU's D step consumes). Per
batch this does one `index_select` of uint8 rows (into pinned memory for a GPU), one copy to the
device (non-blocking, 4x fewer bytes than float) and the float conversion there. The order is
exactly the one the DataLoader gave under Accelerate:

- epoch e is the permutation `EpochShuffle(n, seed)` draws for e (it depends on (seed, e) only);
- it is cut into floor(n / B) batches of B indices, the last partial one dropped;
- rank r of W gets batches r, r + W, r + 2W, ... and every rank stops after the last full round,
  floor(n / (B W)) batches (Accelerate's BatchSamplerShard with drop_last).

So a resume starting at batch k of the stream continues exactly, and runs keep the batches they
had before this loader existed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from capsgan_dist.data import EpochShuffle, batches_per_epoch
from capsgan_dist.errors import UserError


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float in [-1, 1], as `data.TensorImages` converts them (x / 127.5 - 1)."""
    return images.float().div_(127.5).sub_(1.0)


class DeviceBatches:
    """Endless stream of this rank's real batches, float in [-1, 1] on `device`."""

    def __init__(self, images: torch.Tensor, batch: int, seed: int, device: torch.device,
                 rank: int = 0, world: int = 1):
        if images.dtype != torch.uint8:
            raise TypeError(f"DeviceBatches holds uint8 images, got {images.dtype}")
        self.n, self.batch, self.rank, self.world = len(images), batch, rank, world
        self.device = torch.device(device)
        # Batches for a GPU are gathered into pinned host memory, so their copy runs asynchronously
        # (and without a staging copy); the dataset itself is only read on the host.
        self.pin = self.device.type == "cuda"
        self.images = images.contiguous()
        self.shuffle = EpochShuffle(self.n, seed)
        self.per_epoch = batches_per_epoch(self.n, batch, world)
        if self.per_epoch == 0:
            raise UserError(f"the dataset has {self.n} images, fewer than one global batch ({batch * world}: "
                            f"train.batch_real={batch} x {world} processes); use more data or a smaller "
                            "train.batch_real")

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """(per_epoch, batch) image indices of this rank's batches in `epoch`."""
        perm = self.shuffle.permutation(epoch)
        rounds = perm[: self.per_epoch * self.world * self.batch].view(self.per_epoch, self.world, self.batch)
        return rounds[:, self.rank]  # (per_epoch, batch): global batches rank, rank + W, ...

    def take(self, indices: torch.Tensor) -> torch.Tensor:
        """The images at `indices` as one float batch (B, C, H, W) in [-1, 1] on the device."""
        if self.pin:
            rows = torch.empty((len(indices), *self.images.shape[1:]), dtype=torch.uint8, pin_memory=True)
            torch.index_select(self.images, 0, indices, out=rows)
            # Non-blocking from pinned memory; torch's pinned allocator keeps `rows` alive until the copy ends.
            return to_unit_range(rows.to(self.device, non_blocking=True))
        return to_unit_range(torch.index_select(self.images, 0, indices)).to(self.device)

    def stream(self, start_batch: int = 0) -> Iterator[torch.Tensor]:
        """Batches from this rank's batch number `start_batch` (0-based over all epochs) on, forever."""
        epoch, skip = divmod(start_batch, self.per_epoch)
        while True:
            for indices in self.epoch_indices(epoch)[skip:]:
                yield self.take(indices)
            epoch, skip = epoch + 1, 0
