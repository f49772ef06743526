"""Work split over several processes (``torchrun --nproc_per_node N``): which rank does what.

Two stages of a run split into independent parts, which is how msae uses several processes
(several GPUs, or several CPU processes):

- harvesting (:func:`msae.data.activations.collect_activations`): rank r runs the language
  model over shards r, r + N, r + 2N, ... of the text and writes them; every rank tokenizes the
  whole text, which is cheap, so that all agree on which contexts make which shard;
- a sweep (:func:`msae.experiments.sweep.run_sweep`): each rank trains and evaluates its own
  share of the SAEs, all reading the same activations in the same order, as one process would.

The ranks meet through the files they write, not through collective calls: a stage can take
hours, far past the timeout of a collective, and a rank that is killed and started again picks
up from its files (the shards and checkpoints it wrote). A rank that needs another's results
polls for them (:func:`wait_for`). torchrun stops every rank when one fails, so a rank does
not wait for a dead one.

One process (no torchrun) is ``Ranks()``: rank 0 of 1, which does everything.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist

# how long a rank waits for the others' results before giving up (seconds); a day by default,
# since harvesting 500M tokens on one GPU takes hours
WAIT_TIMEOUT_S = float(os.environ.get("MSAE_WAIT_TIMEOUT_S", 24 * 3600))


@dataclass(frozen=True)
class Ranks:
    """This process's place among ``world_size`` processes.

    Attributes:
        rank: 0..world_size-1; rank 0 writes what all share (e.g. the activations' meta.json).
        world_size: the number of processes.
        local_rank: the rank among the processes on this machine: which GPU it uses.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    def __post_init__(self):
        if self.world_size < 1 or not 0 <= self.rank < self.world_size or self.local_rank < 0:
            raise ValueError(f"need 0 <= rank < world_size and local_rank >= 0, got rank={self.rank}, "
                             f"world_size={self.world_size}, local_rank={self.local_rank}")

    @classmethod
    def from_environment(cls) -> Ranks:
        """The ranks torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``); one process without them."""
        try:
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            rank = int(os.environ.get("RANK", "0"))
            local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        except ValueError as error:
            raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers ({error})") from None
        return cls(rank, world_size, local_rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, index: int) -> bool:
        """Whether the ``index``-th part of some work (a shard, an SAE) is this rank's."""
        return index % self.world_size == self.rank

    def mine(self, names: Sequence[str]) -> list[str]:
        """This rank's share of ``names``: every world_size-th, from the rank's own position."""
        return [name for i, name in enumerate(names) if self.owns(i)]

    def device(self, device: str) -> str:
        """The device this rank uses: its own GPU (``cuda:<local_rank>``) when ``device`` is
        "cuda" and there are several processes; ``device`` otherwise."""
        return f"cuda:{self.local_rank}" if device == "cuda" and self.world_size > 1 else device

    def __str__(self) -> str:
        return f"rank {self.rank} of {self.world_size}"


def wait_for(done: Callable[[], bool], what: str, timeout_s: float | None = None, poll_s: float = 1.0) -> None:
    """Return once ``done()`` is true, polling every ``poll_s`` seconds; after ``timeout_s``
    (default :data:`WAIT_TIMEOUT_S`) raise ``TimeoutError`` saying what was awaited."""
    timeout_s = WAIT_TIMEOUT_S if timeout_s is None else timeout_s
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout_s:.0f} s for {what}; is every rank still running? "
                               "(set MSAE_WAIT_TIMEOUT_S to wait longer)")
        time.sleep(poll_s)


# --- data-parallel training of one SAE: the few statistics that span the whole batch -------------
# Each rank holds B/N rows of a batch of B. An SAE given a process group (its ``batch_group``)
# computes what depends on the whole batch across the ranks, so that a step gives the weights a
# single process would compute on the B rows: the BatchTopK cut-off, which latents fired, the
# smallest kept activation (the inference threshold), the residual's variance (AuxK); the
# gradients are averaged (msae.training.loop). Everything else is per row.

def _all_reduce(tensor: torch.Tensor, group, op) -> torch.Tensor:
    if group is None:
        return tensor
    reduced = tensor.clone()
    dist.all_reduce(reduced, op, group=group)
    return reduced


def all_sum(tensor: torch.Tensor, group) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks of ``group`` (a new tensor; ``tensor`` itself when ``group`` is None)."""
    return _all_reduce(tensor, group, dist.ReduceOp.SUM)


def average_in_place(tensor: torch.Tensor, group) -> None:
    """Replace ``tensor`` by its mean over the ranks of ``group`` without a copy (gradients of a
    65k-latent SAE are hundreds of MB each); a no-op when ``group`` is None."""
    if group is None:
        return
    dist.all_reduce(tensor, dist.ReduceOp.SUM, group=group)
    tensor.div_(dist.get_world_size(group))


def all_min(tensor: torch.Tensor, group) -> torch.Tensor:
    """The elementwise minimum of ``tensor`` over the ranks of ``group``."""
    return _all_reduce(tensor, group, dist.ReduceOp.MIN)


def all_any(mask: torch.Tensor, group) -> torch.Tensor:
    """Elementwise OR of the bool ``mask`` over the ranks."""
    if group is None:
        return mask
    return all_sum(mask.to(torch.int32), group) > 0


def all_rows(x: torch.Tensor, group) -> torch.Tensor:
    """The rows of every rank's ``x``, in rank order: the whole batch."""
    if group is None:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts)


def top_k_cutoff(values: torch.Tensor, n_keep: int, group) -> torch.Tensor:
    """The ``n_keep``-th largest of the entries of ``values`` (flat) on all ranks together: the
    global top ``n_keep`` lie among each rank's own top ``n_keep``, so only those are gathered."""
    local = values.flatten().topk(min(n_keep, values.numel()), sorted=False).values
    return all_rows(local, group).topk(n_keep, sorted=False).values.min()


def world_size(group) -> int:
    return 1 if group is None else dist.get_world_size(group)
