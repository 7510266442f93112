"""From a native dataset to the packed micro-batches one rank trains on in one step.

1. `open_dataset` checks the dataset before anything trains: it exists, it has samples,
   something is trained, no sample is longer than `max_tokens`; `check_vocabulary` that
   every id fits the model's vocabulary.
2. `DataOrder` expands each sample's `repeat` count (7 ReAct, 10 summaries) into a list of
   sample indices and shuffles it with a seed per epoch. Step `s` of epoch `e` trains on
   `global_batch` consecutive entries of that list, so the position in the data is just
   (epoch, step): that is the data-order state a checkpoint stores.
3. `plan_step` packs the step's samples into bins of at most `max_tokens` (best-fit
   decreasing), deals the bins out to the ranks (balanced by tokens, the same count on
   every rank, padded with empty bins so FSDP's collectives line up) and collates this
   rank's bins. Every rank computes the same plan from the same inputs: no communication.
4. Under sequence parallelism the bins are dealt to the data-parallel groups, and each
   rank of a group gets its contiguous slice of every bin (`slice_sequence`); the
   attention layers see the whole row again (train/sequence_parallel.py).

Inside a bin, position ids restart at every sample and `cu_seqlens` marks the sample
boundaries for the attention kernels. Labels come from the mask: token t is labelled with
token t+1 when token t+1 is trained, and the last token of a sample is never labelled, so
no label predicts across a boundary. Labels are made for the whole row before it is sliced
for sequence parallelism, so a slice's last token keeps the label that lies in the next
slice.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from projections.native_format import NativeDataset
from train.errors import DatasetError

__all__ = [
    "IGNORE_INDEX",
    "DataOrder",
    "PackedBatch",
    "StepPlan",
    "assign_bins",
    "best_fit_decreasing",
    "check_vocabulary",
    "collate",
    "labels_from_mask",
    "open_dataset",
    "plan_step",
    "slice_sequence",
]

IGNORE_INDEX = -100


def open_dataset(path: str | Path, *, max_tokens: int) -> NativeDataset:
    """Open a native dataset and check it can be trained on; raise DatasetError if not."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"no dataset at {path}")
    try:
        dataset = NativeDataset(path)
    except (ValueError, OSError) as exc:
        raise DatasetError(str(exc)) from exc
    if len(dataset) == 0:
        raise DatasetError(f"dataset {path} is empty: no samples to train on")
    if sum(m.repeat for m in dataset.meta) == 0:
        raise DatasetError(f"dataset {path}: every sample has repeat 0, nothing to train on")
    if dataset.manifest.trained_tokens == 0:
        raise DatasetError(f"dataset {path}: no token is trained (every mask is 0)")
    too_long = [m for m in dataset.meta if m.tokens > max_tokens]
    if too_long:
        worst = max(too_long, key=lambda m: m.tokens)
        raise DatasetError(
            f"dataset {path}: {len(too_long)} sample(s) longer than max_tokens={max_tokens:,}, "
            f"the longest is {worst.sample_id} with {worst.tokens:,} tokens; "
            f"re-project with max_tokens <= {max_tokens:,} or raise data.max_tokens"
        )
    return dataset


def check_vocabulary(dataset: NativeDataset, vocab_size: int) -> None:
    """Raise DatasetError if a token id is outside the model's vocabulary (one pass over the ids)."""
    top = -1
    for shard in dataset.manifest.shards:
        if shard.tokens:
            ids = np.load(dataset.directory / f"{shard.name}.ids.npy", mmap_mode="r", allow_pickle=False)
            top = max(top, int(ids.max()))
    if top >= vocab_size:
        raise DatasetError(f"dataset {dataset.directory}: token id {top} is outside the model's vocabulary of {vocab_size:,}")


class DataOrder:
    """The sample order: repeats expanded, shuffled with `seed` for each epoch."""

    def __init__(self, repeats: list[int] | np.ndarray, *, global_batch: int, seed: int, shuffle: bool = True) -> None:
        self.expanded = np.repeat(np.arange(len(repeats), dtype=np.int64), np.asarray(repeats, dtype=np.int64))
        self.global_batch = global_batch
        self.seed = seed
        self.shuffle = shuffle
        self._cached: tuple[int, np.ndarray] | None = None

    @property
    def samples_per_epoch(self) -> int:
        return len(self.expanded)

    @property
    def steps_per_epoch(self) -> int:
        """The last step of an epoch takes what is left (fewer than global_batch samples)."""
        return math.ceil(len(self.expanded) / self.global_batch)

    def epoch(self, epoch: int) -> np.ndarray:
        if self._cached is None or self._cached[0] != epoch:
            order = self.expanded
            if self.shuffle:
                order = np.random.default_rng([self.seed, epoch]).permutation(order)
            self._cached = (epoch, order)
        return self._cached[1]

    def step(self, epoch: int, step_in_epoch: int) -> list[int]:
        """Sample indices of one optimizer step."""
        start = step_in_epoch * self.global_batch
        return [int(i) for i in self.epoch(epoch)[start : start + self.global_batch]]


def labels_from_mask(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """labels[t] = ids[t+1] where mask[t+1] is 1, else IGNORE_INDEX; the last is always IGNORE_INDEX."""
    labels = np.full(len(ids), IGNORE_INDEX, dtype=np.int64)
    if len(ids) > 1:
        labels[:-1] = np.where(np.asarray(mask[1:]) != 0, ids[1:], IGNORE_INDEX)
    return labels


def best_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Pack items into as few bins of `capacity` as best-fit decreasing finds.

    Returns lists of item positions. Deterministic: ties in length keep item order, ties in
    room go to the older bin. An item longer than `capacity` raises ValueError.
    """
    bins: list[list[int]] = []
    rooms: list[tuple[int, int]] = []  # (room left, bin number), kept sorted
    for item in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        length = lengths[item]
        if length > capacity:
            raise ValueError(f"item {item} has {length} tokens, more than the bin capacity {capacity}")
        at = bisect.bisect_left(rooms, (length, -1))
        if at == len(rooms):
            bins.append([item])
            bisect.insort(rooms, (capacity - length, len(bins) - 1))
        else:
            room, number = rooms.pop(at)
            bins[number].append(item)
            bisect.insort(rooms, (room - length, number))
    return bins


def assign_bins(bin_tokens: list[int], world_size: int) -> list[list[int | None]]:
    """Deal bins out to ranks: the same count on each (None = an empty bin), tokens balanced.

    Largest bin first, each to the rank with the fewest tokens among those with room.
    """
    per_rank = max(1, math.ceil(len(bin_tokens) / world_size))
    ranks: list[list[int | None]] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for number in sorted(range(len(bin_tokens)), key=lambda b: (-bin_tokens[b], b)):
        rank = min((r for r in range(world_size) if len(ranks[r]) < per_rank), key=lambda r: (load[r], r))
        ranks[rank].append(number)
        load[rank] += bin_tokens[number]
    for bins in ranks:
        bins.extend([None] * (per_rank - len(bins)))
    return ranks


@dataclass
class PackedBatch:
    """One packed bin: a (1, T) row of samples back to back."""

    input_ids: torch.Tensor  # (1, T) int64
    position_ids: torch.Tensor  # (1, T) int64, restarting at 0 for every sample
    labels: torch.Tensor  # (1, T) int64, IGNORE_INDEX where nothing is trained
    cu_seqlens: torch.Tensor  # (samples + 1,) int32: sample boundaries
    max_seqlen: int
    samples: list[int] = field(default_factory=list)  # dataset indices, empty for a padding bin

    @property
    def tokens(self) -> int:
        return 0 if not self.samples else int(self.input_ids.shape[1])

    @property
    def trained_tokens(self) -> int:
        return int((self.labels != IGNORE_INDEX).sum())

    def to(self, device: torch.device | str) -> PackedBatch:
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        return PackedBatch(move(self.input_ids), move(self.position_ids), move(self.labels), move(self.cu_seqlens),
                           self.max_seqlen, self.samples)


def collate(samples: list[tuple[np.ndarray, np.ndarray]], indices: list[int] | None = None) -> PackedBatch:
    """Pack (ids, mask) pairs into one row; no samples gives a 1-token padding bin with no labels."""
    if not samples:
        one = torch.zeros((1, 1), dtype=torch.long)
        return PackedBatch(one, one.clone(), torch.full((1, 1), IGNORE_INDEX), torch.tensor([0, 1], dtype=torch.int32), 1, [])
    lengths = [len(ids) for ids, _ in samples]
    ids = np.concatenate([np.asarray(ids, dtype=np.int64) for ids, _ in samples])
    labels = np.concatenate([labels_from_mask(ids_, mask) for ids_, mask in samples])
    positions = np.concatenate([np.arange(n, dtype=np.int64) for n in lengths])
    cu = np.zeros(len(lengths) + 1, dtype=np.int32)
    np.cumsum(lengths, out=cu[1:])
    return PackedBatch(
        input_ids=torch.from_numpy(ids)[None],
        position_ids=torch.from_numpy(positions)[None],
        labels=torch.from_numpy(labels)[None],
        cu_seqlens=torch.from_numpy(cu),
        max_seqlen=max(lengths),
        samples=list(indices) if indices is not None else list(range(len(samples))),
    )


def slice_sequence(batch: PackedBatch, rank: int, size: int) -> PackedBatch:
    """Rank `rank`'s contiguous 1/`size` of a packed row, for sequence parallelism.

    A row whose length does not divide by `size` is first padded with a segment of its own
    (position ids from 0, no labels), so the padding attends to nothing else and nothing to
    it. `cu_seqlens` and `max_seqlen` stay those of the whole (padded) row: the attention
    layers gather the whole row back.
    """
    length = batch.input_ids.shape[1]
    pad = -length % size
    ids, positions, labels, cu, longest = batch.input_ids, batch.position_ids, batch.labels, batch.cu_seqlens, batch.max_seqlen
    if pad:
        ids = torch.cat([ids, ids.new_zeros((1, pad))], dim=1)
        positions = torch.cat([positions, torch.arange(pad, dtype=positions.dtype)[None]], dim=1)
        labels = torch.cat([labels, labels.new_full((1, pad), IGNORE_INDEX)], dim=1)
        cu = torch.cat([cu, cu.new_tensor([length + pad])])
        longest = max(longest, pad)
    per_rank = (length + pad) // size
    part = slice(rank * per_rank, (rank + 1) * per_rank)
    return PackedBatch(ids[:, part], positions[:, part], labels[:, part], cu, longest, batch.samples)


@dataclass
class StepPlan:
    """What one rank trains on in one optimizer step, and the step's global totals."""

    micro_batches: list[PackedBatch]  # this rank's bins (padding bins included), or its slice of each; same count on every rank
    trained_tokens: int  # labels over the whole global batch: the loss denominator
    tokens: int  # tokens over the whole global batch
    samples: int  # samples in the global batch
    bins: int  # real bins over all ranks


def plan_step(dataset: NativeDataset, indices: list[int], *, max_tokens: int, world_size: int = 1, rank: int = 0,
              sequence_size: int = 1, sequence_rank: int = 0) -> StepPlan:
    """Pack the step's samples, pick this rank's bins, collate them.

    world_size and rank count the groups that get different bins (the data-parallel
    ranks); under sequence parallelism each of the `sequence_size` ranks of a group gets
    its slice of every bin.
    """
    lengths = [dataset.meta[i].tokens for i in indices]
    bins = best_fit_decreasing(lengths, max_tokens)
    ranks = assign_bins([sum(lengths[i] for i in b) for b in bins], world_size)
    trained = 0
    for i in indices:
        _, _, mask = dataset[i]
        trained += int(np.count_nonzero(mask[1:]))
    micro = []
    for number in ranks[rank]:
        members = [] if number is None else [indices[i] for i in bins[number]]
        micro.append(slice_sequence(collate([dataset[i][1:] for i in members], members), sequence_rank, sequence_size))
    return StepPlan(micro_batches=micro, trained_tokens=trained, tokens=sum(lengths), samples=len(indices), bins=len(bins))
