"""Meta-SAEs: how far an SAE's decoder rows decompose into a few shared directions (Fig 14).

Bussmann et al. ("Showing SAE latents are not atomic using meta-SAEs", 2024) train a second,
smaller BatchTopK SAE whose data are the decoder rows of the first one. If a row is well
reconstructed from a handful of meta-latents, the latent is a composition of more basic ones
(a "female" direction plus a "name" direction, say) rather than an atomic feature. The
Matryoshka paper uses a meta-SAE of width ``d_sae / 4`` with L0 = 4 and reports the variance
of the decoder rows it explains: lower means the rows are more atomic (55% BatchTopK against
42% Matryoshka at 65k latents).

The meta-SAE is a one-group :class:`msae.saes.matryoshka.MatryoshkaBatchTopKSAE` (plain BatchTopK) trained
by :func:`msae.training.loop.train` on an in-memory stream of the rows, reshuffled every epoch.
"""

from __future__ import annotations

from typing import Any

import torch

from ..data.sources import EpochShuffledRows
from ..saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig
from ..training.loop import TrainConfig, train
from .metrics import unit_rows, variance_explained


class DecoderRows(EpochShuffledRows):
    """A :class:`msae.data.sources.DataSource` over a fixed (n_rows, d_in) matrix: batches of rows
    without replacement, in a fresh order each epoch (the ragged end of an epoch is dropped)."""

    def __init__(self, rows: torch.Tensor, batch_size: int, seed: int = 0):
        if not 0 < batch_size <= rows.shape[0]:
            raise ValueError(f"batch_size must be in 1..{rows.shape[0]} (the number of rows), got {batch_size}")
        self.matrix, self.seed = rows, seed
        super().__init__(rows.shape[0], batch_size)

    def _permutation(self, epoch: int) -> torch.Tensor:
        # Seeded by (seed, epoch) so a resumed stream reproduces the same order.
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.randperm(self.n_rows, generator=generator).to(self.matrix.device)

    def rows(self, indices: torch.Tensor) -> torch.Tensor:
        return self.matrix[indices]  # (len(indices), d_in)

    def describe(self) -> dict[str, Any]:
        return {"kind": "decoder rows", "n_rows": self.n_rows, "d_in": self.matrix.shape[1],
                "batch_size": self.batch_size, "seed": self.seed}


def check_decoder(W_dec: torch.Tensor) -> torch.Tensor:
    """Validate a (d_sae, d_in) decoder and return it as a detached float32 tensor."""
    if not isinstance(W_dec, torch.Tensor) or W_dec.dim() != 2:
        shape = tuple(W_dec.shape) if isinstance(W_dec, torch.Tensor) else type(W_dec).__name__
        raise ValueError(f"W_dec must be a 2-d (d_sae, d_in) tensor, got {shape}")
    if W_dec.shape[0] < 2 or W_dec.shape[1] < 1:
        raise ValueError(f"W_dec needs at least 2 rows and 1 column, got shape {tuple(W_dec.shape)}")
    if not bool(torch.isfinite(W_dec).all()):
        raise ValueError("W_dec contains NaN or inf")
    return W_dec.detach().float()


def train_meta_sae(
    W_dec: torch.Tensor,
    width_fraction: float = 0.25,
    k: int = 4,
    steps: int = 3000,
    batch_size: int = 1024,
    seed: int = 0,
    lr: float = 1e-3,
    device: str = "cpu",
    progress: bool = False,
    normalize_rows: bool = True,
) -> tuple[MatryoshkaBatchTopKSAE, dict[str, Any]]:
    """Train a BatchTopK meta-SAE of width ``round(width_fraction * d_sae)`` and L0 ``k`` on the
    rows of ``W_dec`` (d_sae, d_in), and measure how much of their variance it explains.

    The rows are scaled to unit norm first (``normalize_rows``): msae's SAEs keep them there,
    and SAEs brought in from elsewhere may not. ``batch_size`` is clipped to the number of
    rows. Returns the meta-SAE (running on the unit rows) and a dict with:

    - ``variance_explained``: the headline number. Rows encoded with BatchTopK over *all*
      rows at once (exactly ``k * d_sae`` active entries, so the L0 is exactly ``k``), decoded,
      and scored with :func:`msae.evals.metrics.variance_explained`.
    - ``variance_explained_inference`` and ``l0_inference``: the same with the meta-SAE's
      inference encoder (its JumpReLU threshold), whose L0 is only close to ``k``.
    - ``width``, ``k``, ``n_rows``, ``d_in``, ``steps``, ``batch_size`` and the training
      ``history``.
    """
    rows = check_decoder(W_dec).to(device)
    if normalize_rows:
        rows = unit_rows(rows)
    n_rows, d_in = rows.shape
    if not 0 < width_fraction <= 1:
        raise ValueError(f"width_fraction must be in (0, 1], got {width_fraction}")
    width = max(1, round(width_fraction * n_rows))
    if not isinstance(k, int) or not 0 < k <= width:
        raise ValueError(f"k must be an integer in 1..{width} (the meta-SAE width), got {k!r}")
    if steps <= 0:
        raise ValueError(f"steps must be positive, got {steps}")
    batch_size = min(batch_size, n_rows)
    config = MatryoshkaConfig(
        d_in=d_in, d_sae=width, k=k, seed=seed,
        # The inference threshold is tracked over the second half of training.
        threshold_start_step=steps // 2,
        # "Dead" after about two epochs without firing (the LM default of 10M tokens would
        # be hundreds of epochs of a decoder).
        dead_after_tokens=2 * n_rows,
    )
    meta_sae = MatryoshkaBatchTopKSAE(config)
    train_config = TrainConfig(
        steps=steps, lr=lr, warmup_steps=min(100, steps // 10), device=device,
        normalization_batches=max(1, min(8, n_rows // batch_size)),
        checkpoint_every=steps, log_every=max(1, steps // 10),
    )
    result = train(meta_sae, DecoderRows(rows, batch_size, seed), train_config, progress=progress,
                   description="meta-SAE")
    meta_sae = result.sae.eval()
    with torch.no_grad():
        reconstruction = batch_top_k_reconstruction(meta_sae, rows, k)
        inference_reconstruction, inference_l0 = inference_reconstruction_and_l0(meta_sae, rows)
    return meta_sae, {
        "variance_explained": variance_explained(rows, reconstruction),
        "variance_explained_inference": variance_explained(rows, inference_reconstruction),
        "l0_inference": inference_l0,
        "width": width,
        "k": k,
        "n_rows": n_rows,
        "d_in": d_in,
        "steps": steps,
        "batch_size": batch_size,
        "history": result.history,
    }


@torch.no_grad()
def batch_top_k_reconstruction(sae: MatryoshkaBatchTopKSAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """Decode the BatchTopK code of the whole (N, d_in) ``x`` as one batch: keep the ``k * N``
    largest pre-activations of all rows together. Exact, and memory-safe: the pre-activations
    are made a few million entries at a time and merged into a running pool of the ``k * N`` best
    entries, so no (N, d_sae) matrix is ever held. Returns (N, d_in)."""
    n_rows, chunk_rows = x.shape[0], _rows_per_chunk(sae)
    n_keep = k * n_rows
    pool_values = x.new_empty(0)
    pool_index = torch.empty(0, dtype=torch.long, device=x.device)  # flat index row * d_sae + col
    for start in range(0, n_rows, chunk_rows):
        pre = sae.pre_activations(x[start : start + chunk_rows]).flatten()  # (chunk * d_sae,)
        index = torch.arange(pre.numel(), device=x.device) + start * sae.d_sae
        values = torch.cat([pool_values, pre])
        best = values.topk(min(n_keep, values.numel()), sorted=False).indices
        pool_values, pool_index = values[best], torch.cat([pool_index, index])[best]
    rows, cols = pool_index // sae.d_sae, pool_index % sae.d_sae
    # x_hat[r] = b_dec + sum over kept (r, c) of value * W_dec[c]
    contributions = pool_values[:, None] * sae.W_dec[cols]  # (k*N, d_in)
    return sae.b_dec.expand(n_rows, -1).clone().index_add_(0, rows, contributions)


@torch.no_grad()
def inference_reconstruction_and_l0(sae: MatryoshkaBatchTopKSAE, x: torch.Tensor) -> tuple[torch.Tensor, float]:
    """``sae(x)`` with the inference encoder, a chunk of rows at a time, and its mean L0."""
    chunk_rows, parts, active = _rows_per_chunk(sae), [], 0
    for start in range(0, x.shape[0], chunk_rows):
        acts = sae.encode(x[start : start + chunk_rows])  # (chunk, d_sae)
        active += int((acts != 0).sum())
        parts.append(sae.decode(acts))
    return torch.cat(parts), active / x.shape[0]


def _rows_per_chunk(sae, max_entries: int = 1 << 24) -> int:
    return max(1, max_entries // sae.d_sae)
