"""Which samples each rank reads, in which order: Modalities' ResumableDistributedSampler, vectorized.

The global order of epoch e is `torch.randperm(N, generator=torch.Generator().manual_seed(seed + e))`
(arange(N) with shuffle off). Resuming skips the first `skip` entries of that order, truncates the rest
to a multiple of the world size W (drop_last) and rank r takes every W-th entry starting at r. Batching
with drop_last then cuts each rank's list into micro-batches of B.

Written out, the k-th micro-batch of rank r after skipping c samples is
    order[c + r + W * (k*B + arange(B))],
so the position in an epoch is one number: the global samples consumed, c. A run that stops after c
samples and restarts with skip = c sees exactly the batches it would have seen; with another W' and
B' such that W'*B' == W*B, every global batch (the union over ranks of one micro-step) is the same set
of samples, only dealt to ranks differently. An epoch ends when a rank has fewer than B samples left,
i.e. when (N - c) // W < B; the next epoch starts at c = 0 with seed + epoch + 1.
"""

from __future__ import annotations

import numpy as np
import torch

from perfkit.errors import UserError


def global_order(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> np.ndarray:
    """(N,) int64: the order every rank agrees on for this epoch (identical to Modalities')."""
    if not shuffle:
        return np.arange(num_samples, dtype=np.int64)
    gen = torch.Generator().manual_seed(seed + epoch)
    return torch.randperm(num_samples, generator=gen).numpy()


def rank_indices(num_samples: int, *, seed: int, epoch: int, skip: int, rank: int, world_size: int,
                 shuffle: bool = True) -> np.ndarray:
    """All samples rank r reads in this epoch after skipping `skip` global samples (the spec, literally)."""
    _check_rank(rank, world_size)
    order = global_order(num_samples, seed, epoch, shuffle)[skip:]
    total = len(order) // world_size * world_size  # drop_last: every rank gets the same count
    return order[:total][rank::world_size]


class ResumableDistributedSampler:
    """Micro-batches of one rank, addressed by (epoch, global samples consumed in that epoch).

    Stateless apart from a cache of this rank's share of one epoch's order (N / W entries, int32 when
    N < 2**31), so the prefetch thread and the consumer need no shared cursor. The order costs one
    torch.randperm per epoch (about 0.2 s for 10 M windows), paid by the prefetch thread.
    """

    def __init__(self, num_samples: int, *, rank: int, world_size: int, micro_batch_size: int,
                 seed: int, shuffle: bool = True, source: str = "dataset"):
        _check_rank(rank, world_size)
        if micro_batch_size < 1:
            raise ValueError(f"micro_batch_size must be >= 1, got {micro_batch_size}")
        self.num_samples = num_samples
        self.rank = rank
        self.world_size = world_size
        self.micro_batch_size = micro_batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.global_batch = world_size * micro_batch_size
        if self.batches_left(0) < 1:
            raise UserError(
                f"{source}: {num_samples} samples cannot fill one global micro-batch of "
                f"{micro_batch_size} x {world_size} ranks = {self.global_batch} samples")
        self._cached_key: tuple[int, int] | None = None  # (epoch, residue) of self._cached
        self._cached: np.ndarray | None = None

    @property
    def samples_per_rank_per_epoch(self) -> int:
        """Samples one rank reads in a full epoch (whole micro-batches only)."""
        return self.batches_left(0) * self.micro_batch_size

    def batches_left(self, consumed: int) -> int:
        """Micro-batches each rank still gets in an epoch after `consumed` global samples."""
        return max(self.num_samples - consumed, 0) // self.world_size // self.micro_batch_size

    def advance(self, epoch: int, consumed: int) -> tuple[int, int]:
        """The position after one more micro-step (W * B global samples), rolling the epoch over."""
        consumed += self.global_batch
        if self.batches_left(consumed) == 0:
            return epoch + 1, 0
        return epoch, consumed

    def normalize(self, epoch: int, consumed: int) -> tuple[int, int]:
        """A restored position with no whole batch left in its epoch starts the next epoch."""
        if consumed < 0 or epoch < 0:
            raise UserError(f"bad loader position epoch={epoch} consumed={consumed}")
        if self.batches_left(consumed) == 0:
            return epoch + 1, 0
        return epoch, consumed

    def batch(self, epoch: int, consumed: int) -> np.ndarray:
        """(B,) int64 global sample indices of this rank's micro-batch starting at `consumed`."""
        if self.batches_left(consumed) < 1:
            raise IndexError(f"epoch {epoch} has no whole micro-batch after {consumed} samples")
        # positions consumed + rank + W*k (k < B) all lie in the residue class q mod W, so the rank
        # keeps only order[q::W] (N / W entries) instead of the whole epoch's order.
        q, first = (consumed + self.rank) % self.world_size, (consumed + self.rank) // self.world_size
        return self._residue(epoch, q)[first:first + self.micro_batch_size].astype(np.int64)

    def _residue(self, epoch: int, q: int) -> np.ndarray:
        if self._cached_key != (epoch, q):
            self._cached = None  # free the old epoch's slice before building the next
            order = global_order(self.num_samples, self.seed, epoch, self.shuffle)
            small = np.int32 if self.num_samples < 2 ** 31 else np.int64
            self._cached = order[q::self.world_size].astype(small)  # a compact copy, not a view
            self._cached_key = (epoch, q)
        return self._cached


def _check_rank(rank: int, world_size: int) -> None:
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
