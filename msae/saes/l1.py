"""ReLU SAE with a decoder-norm-weighted L1 penalty, vanilla or Matryoshka (sampled prefixes).

This is the SAE of the paper's toy model (SPEC §5)::

    acts   = ReLU((x - b_dec) @ W_enc + b_enc)                       (B, d_sae)
    L1_i   = sum over the first m_i latents of mean_batch(acts_j * ||W_dec_j||)
    loss   = mean_i(MSE_i + lambda * L1_i)      over the prefixes sampled for this batch

With ``n_prefixes=1`` the only prefix is the whole dictionary: a vanilla SAE. With more, the
other prefix ends are drawn per batch from a truncated Pareto law (``msae.saes.prefixes``).

``lambda`` adapts so that the batch L0 reaches ``target_l0``: it shrinks by a factor
``1 - controller_rate`` while the L0 is below the target and grows by ``1 + controller_rate``
otherwise, after a linear warm-up. ``sort_latents`` keeps the latents ordered by an EMA of
their squared contribution, so the most used ones sit in the shortest prefixes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import torch

from ..kernels.prefix_mse import cumulative_prefix_mse
from ..validation import check_bool, check_int, check_real
from .base import SparseAutoencoder, StepOutput, check_sae_fields
from .prefixes import sample_prefix_ends


@dataclass
class L1Config:
    """One ReLU SAE with a decoder-norm-weighted L1 penalty (:class:`L1SAE`, the toy model's SAE).

    Attributes:
        d_in: input width.
        d_sae: number of latents.
        target_l0: the L0 lambda is steered towards, in (0, d_sae]; None: keep lambda fixed.
        l1_coefficient: lambda at the start (or throughout, without ``target_l0``); >= 0.
        controller_rate: after the warm-up, lambda is multiplied by ``1 - controller_rate``
            while the batch L0 is below ``target_l0`` and by ``1 + controller_rate`` otherwise.
        l1_warmup_steps: lambda ramps up linearly over these first steps; 0: no warm-up.
        n_prefixes: 1: a vanilla SAE; > 1: Matryoshka, with this many prefixes per batch (the
            whole dictionary and ``n_prefixes - 1`` sampled ends); at most d_sae.
        pareto_exponent: exponent a of the truncated Pareto law the prefix ends are drawn from
            (``P(m) ∝ m**a - (m-1)**a``), in (0, 1).
        sort_latents: keep the latents ordered by an EMA of their squared contribution, most
            used first, so they sit in the shortest prefixes.
        sort_ema: decay of that EMA, per step.
        decoder_init_norm: the norm of every decoder row at init.
        seed: seed of the weight init and of the prefix sampling.
        model_name: the model whose activations the SAE reads; written into the SAELens cfg.json.
        hook_name: the hook point it reads, e.g. "blocks.12.hook_resid_post"; written into cfg.json.
    """

    d_in: int
    d_sae: int
    target_l0: float | None = None
    l1_coefficient: float = 1.2
    controller_rate: float = 3e-4
    l1_warmup_steps: int = 0
    n_prefixes: int = 1
    pareto_exponent: float = 0.5
    sort_latents: bool = False
    sort_ema: float = 0.95
    decoder_init_norm: float = 0.1
    seed: int = 0
    model_name: str = ""
    hook_name: str = ""

    def __post_init__(self):
        check_sae_fields(self)
        check_real(self, "target_l0", 0, self.d_sae, low_open=True, high_name="d_sae", optional=True)
        check_real(self, "l1_coefficient", 0)
        check_real(self, "controller_rate", 0, 1, high_open=True)  # 1 - rate must stay positive
        check_int(self, "l1_warmup_steps", 0)
        check_int(self, "n_prefixes", 1, self.d_sae, high_name="d_sae")
        check_real(self, "pareto_exponent", 0, 1, low_open=True, high_open=True)
        check_bool(self, "sort_latents")
        check_real(self, "sort_ema", 0, 1, high_open=True)  # 1 would freeze the usage at zero
        check_real(self, "decoder_init_norm", 0, low_open=True)


class L1SAE(SparseAutoencoder):
    """The ReLU SAE of the module docstring, vanilla or with sampled Matryoshka prefixes. Its
    decoder rows are not constrained (the penalty is weighted by their norms)."""

    architecture = "standard"  # SAELens: plain ReLU

    def __init__(self, config: L1Config):
        super().__init__(config.d_in, config.d_sae)
        self.config = config
        generator = torch.Generator().manual_seed(config.seed)
        with torch.no_grad():
            directions = torch.randn(config.d_sae, config.d_in, generator=generator)
            directions /= directions.norm(dim=1, keepdim=True)
            self.W_dec.copy_(config.decoder_init_norm * directions)
            self.W_enc.copy_(directions.T)
        self.prefix_generator = generator
        self.register_buffer("l1_coefficient", torch.tensor(float(config.l1_coefficient)))
        self.register_buffer("usage", torch.zeros(config.d_sae))  # EMA of squared contribution

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_activations(x)

    def current_l1_coefficient(self, step: int) -> torch.Tensor:
        """The coefficient this step uses: a new tensor, so the controller may update the buffer."""
        warmup = self.config.l1_warmup_steps
        return self.l1_coefficient * (min(1.0, (step + 1) / warmup) if warmup else 1.0)

    def training_step(self, x: torch.Tensor, step: int) -> StepOutput:
        cfg = self.config
        acts = self.pre_activations(x)  # (B, d_sae)
        ends = sample_prefix_ends(cfg.d_sae, cfg.n_prefixes, self.prefix_generator, cfg.pareto_exponent)
        prefix_mse, residual = cumulative_prefix_mse(acts, self.W_dec, self.b_dec, x, ends)
        contribution = acts * self.W_dec.norm(dim=1)  # (B, d_sae) size of each latent's term
        prefix_l1 = contribution.mean(0).cumsum(0)[torch.tensor(ends) - 1]  # (G,)
        l1_coefficient = self.current_l1_coefficient(step)
        loss = (prefix_mse + l1_coefficient * prefix_l1).mean()
        l0 = (acts > 0).sum() / x.shape[0]
        with torch.no_grad():
            if cfg.target_l0 is not None and step >= cfg.l1_warmup_steps:
                rate = cfg.controller_rate
                self.l1_coefficient.mul_(torch.where(l0 < cfg.target_l0, 1 - rate, 1 + rate))
            if cfg.sort_latents:
                self.usage.lerp_(contribution.pow(2).mean(0), 1 - cfg.sort_ema)
        stats = {"mse": prefix_mse[-1].detach(), "l1": prefix_l1[-1].detach(), "l0": l0, "l1_coefficient": l1_coefficient}
        return StepOutput(loss, acts, residual, stats)

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.config.sort_latents:
            self.permute_latents(torch.argsort(self.usage, descending=True, stable=True), optimizer)

    @torch.no_grad()
    def permute_latents(self, order: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Reorder the latents (and their Adam state) so that new latent i is old ``order[i]``.
        The SAE computes the same function, with its latents relabelled."""
        along = {self.W_enc: 1, self.b_enc: 0, self.W_dec: 0}
        for param, dim in along.items():
            param.copy_(param.index_select(dim, order))
            state = optimizer.state.get(param, {}) if optimizer is not None else {}
            for key in ("exp_avg", "exp_avg_sq"):
                if key in state:
                    state[key].copy_(state[key].index_select(dim, order))
        self.usage.copy_(self.usage[order])

    def get_extra_state(self) -> dict[str, Any]:
        return {"prefix_generator": self.prefix_generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.prefix_generator.set_state(state["prefix_generator"])

    def export_config(self) -> dict[str, Any]:
        return {"class": type(self).__name__, **asdict(self.config)}
