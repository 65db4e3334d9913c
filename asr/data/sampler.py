"""Duration-bucketing batch sampler that shards across DistributedDataParallel ranks.

Utterances are sorted by duration and cut into ``num_buckets`` buckets of similar
length; batches are formed inside a bucket (so little padding), capped by a count
and/or by padded seconds (``max_duration * len(batch)``), and the batch order is
shuffled for each epoch from ``(seed, epoch)``. With SortaGrad (Amodei et al. 2016)
the first epoch goes shortest-first instead.

Under DDP every rank builds the same global batch list and takes every
``world_size``-th batch starting at its rank; the list is padded by repeating its
first batches so that every rank gets the same number of batches (no rank waits
on a collective that never comes).

Example:
    >>> s = DurationBucketSampler([1.0, 3.0, 2.0, 1.5], batch_size=2, shuffle=False)
    >>> list(s)
    [[0, 3], [2, 1]]
"""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import torch

from asr.config import ConfigError
from asr.errors import UsageError


class DurationBucketSampler(torch.utils.data.Sampler):
    def __init__(
        self,
        durations: Sequence[float],
        batch_size: int | None = None,
        max_batch_seconds: float | None = None,
        num_buckets: int = 10,
        shuffle: bool = True,
        seed: int = 0,
        sortagrad: bool = False,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ):
        if batch_size is None and max_batch_seconds is None:
            raise ConfigError("give batch_size, max_batch_seconds or both")
        if rank is None or world_size is None:
            dist = torch.distributed
            ready = dist.is_available() and dist.is_initialized()
            rank = rank if rank is not None else (dist.get_rank() if ready else 0)
            world_size = world_size if world_size is not None else (dist.get_world_size() if ready else 1)
        if not 0 <= rank < world_size:
            raise UsageError(f"rank {rank} outside world size {world_size}")
        self.durations = [float(d) for d in durations]
        self.batch_size, self.max_batch_seconds = batch_size, max_batch_seconds
        self.num_buckets, self.shuffle, self.seed, self.sortagrad = num_buckets, shuffle, seed, sortagrad
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.epoch, self.start_batch = 0, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self, batches_done: int = 0) -> dict:
        """Position to resume from: the epoch and how many of this rank's batches were consumed."""
        return {"epoch": self.epoch, "start_batch": batches_done}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.start_batch = int(state["epoch"]), int(state["start_batch"])

    def _fits(self, size: int, longest: float) -> bool:
        if self.batch_size is not None and size > self.batch_size:
            return False
        return self.max_batch_seconds is None or size == 1 or size * longest <= self.max_batch_seconds

    def _pack(self, order: list[int]) -> list[list[int]]:
        batches, cur, longest = [], [], 0.0
        for i in order:
            new_longest = max(longest, self.durations[i])
            if cur and not self._fits(len(cur) + 1, new_longest):
                batches.append(cur)
                cur, new_longest = [], self.durations[i]
            cur.append(i)
            longest = new_longest
        if cur:
            batches.append(cur)
        return batches

    def global_batches(self) -> list[list[int]]:
        """All batches of this epoch, before sharding, identical on every rank."""
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        order = sorted(range(len(self.durations)), key=lambda i: (self.durations[i], i))
        if not self.shuffle or (self.sortagrad and self.epoch == 0):
            return self._pack(order)
        per_bucket = math.ceil(len(order) / max(1, self.num_buckets))
        batches = []
        for start in range(0, len(order), per_bucket):
            bucket = order[start : start + per_bucket]
            perm = torch.randperm(len(bucket), generator=g).tolist()
            batches.extend(self._pack([bucket[p] for p in perm]))
        perm = torch.randperm(len(batches), generator=g).tolist()
        return [batches[p] for p in perm]

    def _rank_batches(self) -> list[list[int]]:
        batches = self.global_batches()
        if self.drop_last:
            batches = batches[: len(batches) - len(batches) % self.world_size]
        elif len(batches) % self.world_size:
            pad = self.world_size - len(batches) % self.world_size
            batches = batches + [batches[i % len(batches)] for i in range(pad)]
        return batches[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._rank_batches()
        start, self.start_batch = self.start_batch, 0  # the skip applies to one pass only
        yield from batches[start:]

    def __len__(self) -> int:
        return len(self._rank_batches()) - self.start_batch
