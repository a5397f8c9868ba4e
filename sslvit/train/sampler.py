"""The order in which a run visits its data, derived from the seed alone.

Each epoch is a permutation drawn from `(seed, epoch)`; under `torchrun` it is padded to a
multiple of the world size and dealt out by rank, and the last incomplete batch is dropped.
Because the order depends on nothing else, a resumed run continues with exactly the batches
the interrupted run would have seen.
"""

import torch
from torch.utils.data import Sampler


class StepBatches(Sampler):
    """Yields this rank's micro-batches of `(epoch, index)` keys from `start_micro` onwards.

    Args:
        n_items: Size of the dataset.
        batch_size: Items per micro-batch on this rank.
        n_micro: Total micro-batches of the run (epochs * micro-batches per epoch).
        seed: Run seed.
        rank: This process's rank.
        world_size: Number of processes.
        start_micro: First micro-batch to yield (the resume point).
    """

    def __init__(
        self,
        n_items: int,
        batch_size: int,
        n_micro: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        start_micro: int = 0,
    ):
        self.n_items = n_items
        self.batch_size = batch_size
        self.n_micro = n_micro
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.start_micro = start_micro
        self.per_epoch = batches_per_epoch(n_items, batch_size, world_size)
        if self.per_epoch < 1:
            raise ValueError(
                f"{n_items} images cannot fill one batch of {batch_size} on each of "
                f"{world_size} process(es); lower --batch-size"
            )

    def epoch_indices(self, epoch: int) -> torch.Tensor:
        """This rank's share of epoch `epoch`'s permutation."""
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        order = torch.randperm(self.n_items, generator=g)
        padded = -(-self.n_items // self.world_size) * self.world_size
        if padded > self.n_items:
            order = torch.cat([order, order[: padded - self.n_items]])
        return order[self.rank :: self.world_size]

    def __iter__(self):
        epoch, indices = -1, None
        for micro in range(self.start_micro, self.n_micro):
            if micro // self.per_epoch != epoch:
                epoch = micro // self.per_epoch
                indices = self.epoch_indices(epoch).tolist()
            first = (micro % self.per_epoch) * self.batch_size
            yield [(epoch, i) for i in indices[first : first + self.batch_size]]

    def __len__(self) -> int:
        return max(0, self.n_micro - self.start_micro)


def batches_per_epoch(n_items: int, batch_size: int, world_size: int = 1) -> int:
    """Full micro-batches each rank gets per epoch (the incomplete last one is dropped)."""
    return (-(-n_items // world_size)) // batch_size
