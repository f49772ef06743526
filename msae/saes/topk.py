"""TopK SAE (Gao et al. 2024, "Scaling and evaluating sparse autoencoders")::

    pre   = ReLU((x - b_dec) @ W_enc + b_enc)                        (B, d_sae)
    acts  = the k largest entries of each row of pre, zeros elsewhere  (exactly k per token,
            fewer only where fewer than k are positive)
    loss  = mean_b ||x - acts @ W_dec - b_dec||^2 + auxk_alpha * AuxK

Unlike BatchTopK, the selection is per token, so ``encode`` needs no threshold. AuxK is the one
of ``msae.saes.matryoshka`` (the top ``auxk_k`` dead latents regress the residual, normalised by its
variance); decoder rows stay at unit norm. As in ``msae.saes.matryoshka``, a sparse step (``msae.kernels.sparse``:
only the encoder's forward product is dense) gives the same loss and gradients as the dense one
and is chosen when k is small against d_sae.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..kernels.prefix_mse import sparse_cumulative_prefix_mse
from ..kernels.sparse import ActiveLatents, selected_pre_activations
from ..validation import check_int, check_real
from .auxk import AuxKMixin
from .base import StepOutput, UnitNormSAE, check_sae_fields


@dataclass
class TopKConfig:
    """One TopK SAE (:class:`TopKSAE`).

    Attributes:
        d_in: input width.
        d_sae: number of latents.
        k: active latents per token, in 1..d_sae.
        auxk_alpha: weight of the AuxK loss.
        auxk_k: dead latents AuxK may use per token; None: ``max(1, d_in // 2)``.
        dead_after_tokens: a latent silent for this many training tokens is dead (AuxK trains it).
        seed: seed of the weight init.
        model_name: the model whose activations the SAE reads; written into the SAELens cfg.json.
        hook_name: the hook point it reads, e.g. "blocks.12.hook_resid_post"; written into cfg.json.
    """

    d_in: int
    d_sae: int
    k: int
    auxk_alpha: float = 1 / 32
    auxk_k: int | None = None
    dead_after_tokens: int = 10_000_000
    seed: int = 0
    model_name: str = ""
    hook_name: str = ""

    def __post_init__(self):
        check_sae_fields(self)
        check_int(self, "k", 1, self.d_sae, high_name="d_sae")
        check_real(self, "auxk_alpha", 0)
        if self.auxk_k is None:
            self.auxk_k = max(1, self.d_in // 2)
        check_int(self, "auxk_k", 1)
        check_int(self, "dead_after_tokens", 1)


def per_token_top_k(pre: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest entries of each row of ``pre`` (..., d_sae); zero the rest."""
    top = pre.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(pre).scatter_(-1, top.indices, top.values)


class TopKSAE(AuxKMixin, UnitNormSAE):
    """The TopK SAE of the module docstring: exactly k latents per token, AuxK, unit-norm decoder."""

    architecture = "topk"

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return per_token_top_k(self.pre_activations(x), self.config.k)

    def training_step(self, x: torch.Tensor, step: int) -> StepOutput:
        if self.uses_sparse_kernels():
            return self._sparse_training_step(x)
        pre = self.pre_activations(x)  # (B, d_sae)
        acts = per_token_top_k(pre, self.config.k)
        residual = x - torch.addmm(self.b_dec, acts, self.W_dec)  # (B, d_in)
        mse = residual.pow(2).sum(-1).mean()
        dead = self.count_firing(acts)
        auxk = self.auxk_loss(pre, residual.detach())
        stats = {"mse": mse.detach(), "auxk": auxk.detach(), "l0": (acts > 0).sum() / x.shape[0], "dead": dead}
        return StepOutput(mse + self.config.auxk_alpha * auxk, acts, residual.detach(), stats)

    def _sparse_training_step(self, x: torch.Tensor) -> StepOutput:
        """The dense step on the B*k selected entries only (same loss and gradients)."""
        self.check_input(x)
        batch, k = x.shape[0], self.config.k
        x_centered = x - self.b_dec
        with torch.no_grad():
            pre = torch.addmm(self.b_enc, x_centered, self.W_enc)  # (B, d_sae) before the ReLU, no graph
            top = pre.topk(k, dim=-1, sorted=False)
            cols, position = top.indices.sort(dim=-1)  # row-major order, as msae.kernels.sparse expects
            values = top.values.gather(1, position).clamp_min(0.0).flatten()
        rows = torch.arange(batch, device=x.device).repeat_interleave(k)
        cols = cols.flatten()
        values = selected_pre_activations(x_centered, self.W_enc, self.b_enc, rows, cols, values)
        mse, residual = sparse_cumulative_prefix_mse(rows, cols, values, self.W_dec, self.b_dec, x, [self.d_sae])
        acts = ActiveLatents(rows, cols, values.detach(), (batch, self.d_sae))
        with torch.no_grad():
            fired = torch.zeros(self.d_sae, dtype=torch.bool, device=x.device).index_fill_(0, cols[values > 0], True)
            self.record_firing(fired, batch)
            dead = self.n_dead()
        auxk = self.sparse_auxk_loss(x_centered, pre, residual)
        stats = {"mse": mse[0].detach(), "auxk": auxk.detach(), "l0": (values > 0).sum() / batch, "dead": dead}
        return StepOutput(mse[0] + self.config.auxk_alpha * auxk, acts, residual, stats)

    def saelens_config(self) -> dict[str, Any]:
        """cfg.json fields SAELens needs to run this SAE: its k (newer versions read ``k``,
        older ones the activation function's kwargs)."""
        return {"k": self.config.k, "activation_fn_str": "topk", "activation_fn_kwargs": {"k": self.config.k}}
