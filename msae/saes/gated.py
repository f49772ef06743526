"""Gated SAE (Rajamanoharan et al. 2024, "Improving dictionary learning with gated sparse
autoencoders"; dictionary_learning's ``GatedSAETrainer``). One encoder matrix, two paths::

    proj     = (x - b_dec) @ W_enc                                    (B, d_sae)
    pi_gate  = proj + b_gate                   decides which latents fire
    pi_mag   = proj * exp(r_mag) + b_mag       = (x - b_dec) @ W_mag + b_mag, W_mag = exp(r_mag) * W_enc
    acts     = 1[pi_gate > 0] * ReLU(pi_mag)
    loss     = mean_b ||x - acts @ W_dec - b_dec||^2                       reconstruction
             + lambda * mean_b sum_i ReLU(pi_gate)_i ||W_dec_i||            sparsity (gate path only)
             + mean_b ||x - ReLU(pi_gate) @ W_dec' - b_dec'||^2             auxiliary, W_dec', b_dec' detached

The Heaviside passes no gradient, so the gate path learns from the sparsity and auxiliary terms
and the magnitude path from the reconstruction; W_enc gets both. Decoder rows stay at unit norm
(as in the paper and dictionary_learning), so the decoder-norm weight (taken detached, as the
authors advise when the auxiliary decoder is frozen) is 1 in practice.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..kernels.sparse import decode_sparse, encode_sparse_grad
from ..validation import check_real
from .base import StepOutput, UnitNormSAE, check_sae_fields
from .penalty import check_penalty_fields, steer_towards_l0, warmup_factor, warmup_steps


@dataclass
class GatedConfig:
    """One Gated SAE (:class:`GatedSAE`).

    Attributes:
        d_in: input width.
        d_sae: number of latents.
        target_l0: the L0 the coefficient is steered towards; None: keep the coefficient fixed.
        l1_coefficient: lambda of the sparsity term at the start (for inputs normalised to
            E||x||^2 = 1, as ``msae.training.loop.train`` does by default).
        controller_rate: rate of the target-L0 controller, in [0, 1)
            (:func:`msae.saes.penalty.steer_towards_l0`).
        total_steps: length of the run, for the penalty warm-up; None: no warm-up.
        penalty_warmup_fraction: fraction of ``total_steps`` over which lambda ramps up
            linearly, in [0, 1].
        dead_after_tokens: a latent silent for this many training tokens counts as dead
            (reported in the training statistics).
        seed: seed of the weight init.
        model_name: the model whose activations the SAE reads; written into the SAELens cfg.json.
        hook_name: the hook point it reads, e.g. "blocks.12.hook_resid_post"; written into cfg.json.
    """

    d_in: int
    d_sae: int
    target_l0: float | None = None
    l1_coefficient: float = 0.1
    controller_rate: float = 1e-2
    total_steps: int | None = None
    penalty_warmup_fraction: float = 0.05
    dead_after_tokens: int = 10_000_000
    seed: int = 0
    model_name: str = ""
    hook_name: str = ""

    def __post_init__(self):
        check_sae_fields(self)
        check_penalty_fields(self)
        check_real(self, "l1_coefficient", 0)


class GatedSAE(UnitNormSAE):
    """The Gated SAE of the module docstring: a Heaviside gate path and a magnitude path
    sharing ``W_enc``, with ``b_gate``, ``b_mag`` and ``r_mag`` (each (d_sae,)) in place of
    ``b_enc``; unit-norm decoder rows."""

    architecture = "gated"

    def __init__(self, config: GatedConfig):
        super().__init__(config)
        del self.b_enc  # the gated layout has b_gate and b_mag instead
        self.b_gate = nn.Parameter(torch.zeros(config.d_sae))
        self.b_mag = nn.Parameter(torch.zeros(config.d_sae))
        self.r_mag = nn.Parameter(torch.zeros(config.d_sae))
        self.register_buffer("l1_coefficient", torch.tensor(float(config.l1_coefficient)))
        self.n_warmup = warmup_steps(config.total_steps, config.penalty_warmup_fraction)

    @property
    def W_mag(self) -> torch.Tensor:
        """The magnitude path's weights (d_in, d_sae): W_enc with each column scaled by exp(r_mag)."""
        return self.W_enc * self.r_mag.exp()

    def gate_and_magnitude(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(pi_gate, pi_mag), each (..., d_sae), from one product with W_enc."""
        self.check_input(x)
        proj = (x - self.b_dec) @ self.W_enc
        return proj + self.b_gate, torch.addcmul(self.b_mag, proj, self.r_mag.exp())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        gate, magnitude = self.gate_and_magnitude(x)
        return torch.where(gate > 0, torch.relu(magnitude), 0.0)

    def training_step(self, x: torch.Tensor, step: int) -> StepOutput:
        cfg, batch = self.config, x.shape[0]
        self.check_input(x)
        # proj's backward multiplies only where the gate is open (msae.kernels.sparse.encode_sparse_grad)
        proj = encode_sparse_grad(x - self.b_dec, self.W_enc)
        gate, magnitude = proj + self.b_gate, torch.addcmul(self.b_mag, proj, self.r_mag.exp())  # (B, d_sae) each
        acts = torch.where(gate > 0, torch.relu(magnitude), 0.0)
        residual = x - (decode_sparse(acts, self.W_dec) + self.b_dec)
        mse = residual.pow(2).sum(-1).mean()
        gate_acts = torch.relu(gate)
        sparsity = (gate_acts @ self.W_dec.norm(dim=1).detach()).sum() / batch
        gate_residual = x - (decode_sparse(gate_acts, self.W_dec.detach()) + self.b_dec.detach())
        auxiliary = gate_residual.pow(2).sum(-1).mean()
        coefficient = self.l1_coefficient * warmup_factor(step, self.n_warmup)
        l0 = torch.count_nonzero(acts) / batch
        if step >= self.n_warmup:
            steer_towards_l0(self.l1_coefficient, l0, cfg.target_l0, cfg.controller_rate)
        stats = {"mse": mse.detach(), "l1": sparsity.detach(), "auxiliary": auxiliary.detach(), "l0": l0,
                 "l1_coefficient": coefficient, "dead": self.count_firing(acts)}
        return StepOutput(mse + coefficient * sparsity + auxiliary, acts, residual.detach(), stats)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        # Both pre-activations are linear in the input: dividing every bias keeps the gate's
        # sign and scales the magnitudes by 1 / scale.
        for bias in (self.b_gate, self.b_mag, self.b_dec):
            bias.div_(scale)

    def export_tensors(self) -> dict[str, torch.Tensor]:
        names = ("W_enc", "b_gate", "r_mag", "b_mag", "W_dec", "b_dec")  # SAELens "gated"
        return {name: getattr(self, name).detach().clone() for name in names}
