"""Where training batches come from: the data-source protocol and the epoch-shuffled base of the
sources over a fixed set of rows (cached activations, a meta-SAE's decoder rows).

A data source is any object with ``next_batch() -> (B, d_in) tensor``, ``state_dict()``,
``load_state_dict(state)`` and ``describe() -> dict``; :func:`msae.train` checkpoints its state
so that a resumed run sees the same batches.
"""

from __future__ import annotations

from typing import Any, Protocol

import torch


class DataSource(Protocol):
    """What :func:`msae.training.loop.train` reads batches from: ``next_batch`` gives the next
    (B, d_in) batch; ``state_dict`` / ``load_state_dict`` save and restore the position (so a
    resumed run sees the same batches); ``describe`` says what the data are (saved with the run
    and compared on resume)."""

    def next_batch(self) -> torch.Tensor: ...
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...
    def describe(self) -> dict[str, Any]: ...


class EpochShuffledRows:
    """Base of the :class:`DataSource` s over a fixed set of ``n_rows`` rows: batches without
    replacement, in a fresh order each epoch, the ragged end of an epoch dropped. Resumable:
    ``state_dict`` is (epoch, position), and the order of an epoch depends only on the epoch.

    A subclass defines ``_permutation(epoch)`` (a seeded order of range(n_rows)) and
    ``rows(indices)`` -> (len(indices), d) tensor, and calls ``super().__init__`` once what
    ``_permutation`` reads is set."""

    def __init__(self, n_rows: int, batch_size: int):
        self.n_rows, self.batch_size = n_rows, batch_size
        self.epoch, self.position = 0, 0
        self._order = self._permutation(0)

    def _permutation(self, epoch: int):
        raise NotImplementedError

    def rows(self, indices) -> torch.Tensor:
        raise NotImplementedError

    def next_batch(self) -> torch.Tensor:
        if self.position + self.batch_size > self.n_rows:
            self.epoch, self.position = self.epoch + 1, 0
            self._order = self._permutation(self.epoch)
        indices = self._order[self.position : self.position + self.batch_size]
        self.position += self.batch_size
        return self.rows(indices)  # (batch_size, d)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._permutation(self.epoch)
