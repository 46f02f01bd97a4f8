"""Length-grouped batching that is deterministic given a seed and resumable at any batch.

Each epoch's order is a pure function of ``(seed, epoch)``: shuffle, cut into mega-batches of
``global_batch * mega_batch_factor`` examples, sort each mega-batch by length (longest first) so neighbours have
similar lengths (little padding), cut into global batches, then shuffle the batch order with the longest batch first
(an out-of-memory error shows up at step one). A global batch holds ``batch_size * num_replicas`` examples; process
``rank`` takes its ``rank``-th slice, so N processes see exactly the examples of one process with an N times larger
batch.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
from torch.utils.data import Sampler


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batch sampler (``DataLoader(dataset, batch_sampler=...)``) with length grouping and an exact position.

    The position is ``(epoch, batch_index)``: the epoch being iterated and the number of its batches already handed
    out. Iterating yields the rest of the current epoch and then moves to the next one, so ``for batch in loader``
    inside an epoch loop needs no ``set_epoch`` call. ``state_dict()`` / ``load_state_dict()`` save and restore the
    position; with ``DataLoader(num_workers > 0)`` batches are fetched ahead, so save the number of batches the
    training loop actually consumed instead (``set_position(epoch, consumed)``).

    With ``num_replicas > 1`` every process builds its own sampler (same seed, its own ``rank``); do not let another
    layer (``accelerate.prepare``) shard the DataLoader again.

    Args:
        lengths: Length in tokens of every example (or pack).
        batch_size: Examples per batch on one process.
        seed: Seed of the order; the same seed gives the same order on every machine.
        shuffle: Shuffle (default); ``False`` keeps the dataset order (and skips grouping).
        group_by_length: Group similar lengths into batches.
        mega_batch_factor: Batches per sorting window; larger means less padding and less randomness.
        drop_last: Drop a last incomplete global batch; otherwise it is kept (with several processes, padded by
            repeating the epoch's first examples so every process gets the same number of examples).
        num_replicas: Number of data-parallel processes.
        rank: This process's index.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        *,
        seed: int = 0,
        shuffle: bool = True,
        group_by_length: bool = True,
        mega_batch_factor: int = 50,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"need 0 <= rank < num_replicas, got rank {rank} of {num_replicas}")
        if seed < 0:
            raise ValueError(f"seed must be non-negative, got {seed}")
        if mega_batch_factor < 1:
            raise ValueError(f"mega_batch_factor must be positive, got {mega_batch_factor}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        if len(self.lengths) == 0:
            raise ValueError("no examples to sample from")
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.group_by_length = group_by_length
        self.mega_batch_factor = mega_batch_factor
        self.drop_last = drop_last
        self.num_replicas = num_replicas
        self.rank = rank
        self.epoch = 0
        self.batch_index = 0
        if len(self) == 0:
            raise ValueError(f"{len(self.lengths)} examples make no full global batch of {self.global_batch_size}")

    @property
    def global_batch_size(self) -> int:
        """Examples per step over all processes."""
        return self.batch_size * self.num_replicas

    def __len__(self) -> int:
        """Batches per epoch (the same on every process)."""
        full, rest = divmod(len(self.lengths), self.global_batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """Every global batch of ``epoch``, in order (a pure function of the seed and the epoch)."""
        n, size = len(self.lengths), self.global_batch_size
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.shuffle and self.group_by_length:
            window = size * self.mega_batch_factor
            order = np.concatenate(
                [
                    part[np.argsort(-self.lengths[part], kind="stable")]  # longest first within a window
                    for part in np.split(order, range(window, n, window))
                ]
            )
        batches = np.split(order, range(size, n, size))
        if len(batches[-1]) < size:
            if self.drop_last:
                batches.pop()
            elif self.num_replicas > 1:
                need = -len(batches[-1]) % self.num_replicas
                batches[-1] = np.concatenate([batches[-1], order[:need]])
        if self.shuffle and self.group_by_length and len(batches) > 1:
            perm = rng.permutation(len(batches))
            batches = [batches[i] for i in perm]
            longest = int(np.argmax([self.lengths[b].max() for b in batches]))
            batches[0], batches[longest] = batches[longest], batches[0]
        return batches

    def _local(self, batch: np.ndarray) -> list[int]:
        share = len(batch) // self.num_replicas
        return batch[self.rank * share : (self.rank + 1) * share].tolist()

    def _normalize(self) -> None:
        """An epoch whose batches were all handed out is over: the position is the next epoch's start."""
        if self.batch_index >= len(self):
            self.epoch, self.batch_index = self.epoch + 1, 0

    def __iter__(self) -> Iterator[list[int]]:
        self._normalize()
        batches = self.global_batches(self.epoch)
        while self.batch_index < len(batches):
            batch = batches[self.batch_index]
            self.batch_index += 1
            yield self._local(batch)
        self.epoch += 1
        self.batch_index = 0

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch.

        A no-op for the epoch already in progress, so a resumed position survives loaders that call ``set_epoch`` on
        every pass.
        """
        if epoch != self.epoch:
            self.epoch, self.batch_index = epoch, 0

    def set_position(self, epoch: int, batch_index: int) -> None:
        """Continue from batch ``batch_index`` (0-based) of ``epoch``.

        Raises:
            ValueError: A position outside the epoch.
        """
        if epoch < 0 or not 0 <= batch_index <= len(self):
            raise ValueError(f"position ({epoch}, {batch_index}) is outside 0..{len(self)} batches per epoch")
        self.epoch, self.batch_index = epoch, batch_index
        self._normalize()

    def state_dict(self) -> dict[str, Any]:
        """The position and what defines the order (checked on load)."""
        self._normalize()
        return {
            "epoch": self.epoch,
            "batch_index": self.batch_index,
            "seed": self.seed,
            "num_examples": len(self.lengths),
            "global_batch_size": self.global_batch_size,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a position saved by :meth:`state_dict`.

        Raises:
            ValueError: The state was saved with another seed, dataset size or global batch size, so the same
                position would not mean the same examples.
        """
        for key, mine in (
            ("seed", self.seed),
            ("num_examples", len(self.lengths)),
            ("global_batch_size", self.global_batch_size),
        ):
            if key in state and state[key] != mine:
                raise ValueError(f"cannot resume the data order: saved {key} {state[key]}, now {mine}")
        self.set_position(int(state["epoch"]), int(state["batch_index"]))
