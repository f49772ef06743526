"""AuxK (Gao et al. 2024): dead latents learn to explain what the live ones leave out.

    AuxK = ||residual - top_auxk_k(dead pre-activations) @ W_dec||^2 / Var(residual)

where ``residual = x - x_hat`` (detached) and the top ``auxk_k`` per token are taken among the
latents :class:`msae.saes.base.DeadLatentCounter` calls dead. :class:`AuxKMixin` holds it, dense
and on the selected entries only, for the SAEs whose L0 is a fixed k (Matryoshka and BatchTopK,
TopK), together with their choice of dense or sparse training kernels.
"""

from __future__ import annotations

from typing import Literal

import torch

from ..distributed import all_sum, world_size
from ..kernels.sparse import selected_pre_activations, sparse_decode_error


class AuxKMixin:
    """Mixin for a :class:`msae.saes.base.UnitNormSAE` whose config has ``k``, ``auxk_k`` and
    ``dead_after_tokens``: the AuxK loss (dense and sparse) and the kernel choice."""

    # "dense", "sparse" or "auto". Not part of the config: it changes speed, not results.
    kernels: Literal["auto", "dense", "sparse"] = "auto"
    # The sparse AuxK selection without a host sync; None: on accelerators only (see below).
    sync_free_auxk: bool | None = None

    def uses_sparse_kernels(self) -> bool:
        """Whether training steps run on the active entries only. The sparse step's cost is
        ~k*d_in per token against ~d_sae*d_in for the dense one, with a larger constant and
        fixed costs that dominate at toy sizes; measured by ``benchmarks/``."""
        if self.kernels not in ("auto", "dense", "sparse"):
            raise ValueError(f"kernels must be 'auto', 'dense' or 'sparse', got {self.kernels!r}")
        if self.kernels != "auto":
            return self.kernels == "sparse"
        return self.d_sae >= 512 and self.config.k * 16 <= self.d_sae

    def auxk_loss(self, pre: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """Let dead latents explain the residual: top ``auxk_k`` dead pre-activations per token,
        decoded without bias, squared error normalised by the residual's variance."""
        dead = self.dead_latents()
        n_dead = int(dead.sum())
        if n_dead == 0:
            return pre.new_zeros(())
        top = torch.where(dead, pre, -torch.inf).topk(min(self.config.auxk_k, n_dead), dim=-1, sorted=False)
        aux_acts = torch.zeros_like(pre).scatter(-1, top.indices, top.values)
        return _relative_to_variance((residual - aux_acts @ self.W_dec).pow(2).sum(-1).mean(), residual,
                                     self.batch_group)

    def sparse_auxk_loss(self, x_centered, pre, residual) -> torch.Tensor:
        """:meth:`auxk_loss` on the selected dead entries only (same value and gradients);
        ``pre`` is before its ReLU."""
        dead = self.dead_latents()
        per_row = min(self.config.auxk_k, self.d_sae)
        sync_free = pre.device.type != "cpu" if self.sync_free_auxk is None else self.sync_free_auxk
        if not sync_free:
            # A host sync costs nothing here, and gathering the dead columns first makes the
            # per-row top-k much cheaper than one over all d_sae columns.
            n_dead = int(dead.sum())
            if n_dead == 0:
                return pre.new_zeros(())
            dead_latents = dead.nonzero().squeeze(1)
            top = pre[:, dead_latents].topk(min(per_row, n_dead), dim=-1, sorted=False)
            cols, values, any_dead = dead_latents[top.indices], top.values.clamp_min(0.0), None
        else:
            # No sync on an accelerator: a fixed number per row; live latents come out as -inf
            # and become zeros, which add nothing to the loss or its gradients.
            top = torch.where(dead, pre, -torch.inf).topk(per_row, dim=-1, sorted=False)
            cols, values, any_dead = top.indices, top.values.clamp_min(0.0), dead.any()
        cols, position = cols.sort(dim=-1)  # increasing within each row
        batch, per_row = cols.shape
        rows = torch.arange(batch, device=pre.device).repeat_interleave(per_row)
        cols, values = cols.flatten(), values.gather(1, position).flatten().to(self.W_dec.dtype)
        values = selected_pre_activations(x_centered, self.W_enc, self.b_enc, rows, cols, values)
        loss = _relative_to_variance(sparse_decode_error(rows, cols, values, self.W_dec, residual), residual,
                                     self.batch_group)
        return loss if any_dead is None else torch.where(any_dead, loss, 0.0)


def _relative_to_variance(error: torch.Tensor, residual: torch.Tensor, group=None) -> torch.Tensor:
    """AuxK's squared error divided by the residual's variance (0 where that is 0); with a
    process ``group``, the variance of the whole batch spread over its ranks."""
    if group is None:
        variance = (residual - residual.mean(0)).pow(2).sum(-1).mean()
    else:
        n = residual.shape[0] * world_size(group)
        mean = all_sum(residual.sum(0), group) / n
        variance = all_sum((residual - mean).pow(2).sum(), group) / n
    return (error / variance).nan_to_num(0.0)
