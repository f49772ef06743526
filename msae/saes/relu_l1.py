"""ReLU SAE with an L1 penalty weighted by decoder norm (Anthropic, "Circuits Updates - April
2024"; dictionary_learning's ``StandardTrainerAprilUpdate``)::

    acts  = ReLU((x - b_dec) @ W_enc + b_enc)                        (B, d_sae)
    loss  = mean_b ||x - acts @ W_dec - b_dec||^2 + lambda * mean_b sum_i acts_i ||W_dec_i||

Decoder rows are not constrained: the penalty's decoder-norm weight stops the SAE from
shrinking activations by growing rows. Rows start at norm 0.1 (``decoder_init_norm``), lambda
ramps up linearly over the first 5% of the steps. This is :class:`msae.saes.l1.L1SAE` (the toy
model's SAE) with one prefix, language-model defaults and a leaner step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels.sparse import decode_sparse
from .base import DeadLatentCounter, StepOutput
from .l1 import L1SAE, L1Config
from .penalty import check_penalty_fields, steer_towards_l0, training_pre_activations, warmup_steps


@dataclass
class ReLUL1Config(L1Config):
    """:class:`L1Config` with language-model defaults. ``l1_warmup_steps`` is derived from
    ``total_steps`` when that is given; the toy-only options (``n_prefixes``, ``sort_latents``)
    must stay off.

    Attributes:
        d_in: input width.
        d_sae: number of latents.
        target_l0: the L0 lambda is steered towards; None: keep lambda fixed.
        l1_coefficient: lambda at the start (for inputs normalised to E||x||^2 = 1, as
            ``msae.training.loop.train`` does by default).
        controller_rate: rate of the target-L0 controller, in [0, 1)
            (:func:`msae.saes.penalty.steer_towards_l0`, not :class:`L1Config`'s rule).
        l1_warmup_steps: steps of lambda's linear warm-up; replaced by
            ``round(penalty_warmup_fraction * total_steps)`` when ``total_steps`` is given.
        n_prefixes: must be 1 (a plain SAE).
        pareto_exponent: unused with one prefix.
        sort_latents: must be False.
        sort_ema: unused without ``sort_latents``.
        decoder_init_norm: the norm of every decoder row at init.
        seed: seed of the weight init.
        model_name: the model whose activations the SAE reads; written into the SAELens cfg.json.
        hook_name: the hook point it reads, e.g. "blocks.12.hook_resid_post"; written into cfg.json.
        total_steps: length of the run, for the penalty warm-up; None: keep ``l1_warmup_steps``.
        penalty_warmup_fraction: fraction of ``total_steps`` over which lambda ramps up
            linearly, in [0, 1].
        dead_after_tokens: a latent silent for this many training tokens counts as dead
            (reported in the training statistics).
    """

    l1_coefficient: float = 0.1
    controller_rate: float = 1e-2
    total_steps: int | None = None
    penalty_warmup_fraction: float = 0.05
    dead_after_tokens: int = 10_000_000

    def __post_init__(self):
        super().__post_init__()
        check_penalty_fields(self)
        if self.n_prefixes != 1 or self.sort_latents:
            raise ValueError("the ReLU-L1 baseline is a plain SAE: n_prefixes must be 1 and sort_latents False "
                             "(use msae.saes.l1.L1SAE for the toy model's Matryoshka variant)")
        if self.total_steps is not None:
            self.l1_warmup_steps = warmup_steps(self.total_steps, self.penalty_warmup_fraction)


class ReLUL1SAE(DeadLatentCounter, L1SAE):
    """The ReLU-L1 SAE of the module docstring (unconstrained decoder; counts dead latents)."""

    architecture = "standard"

    def __init__(self, config: ReLUL1Config):
        super().__init__(config)
        self.add_dead_latent_counter(config.d_sae)

    def training_step(self, x: torch.Tensor, step: int) -> StepOutput:
        cfg, batch = self.config, x.shape[0]
        acts = torch.relu(training_pre_activations(self, x))  # (B, d_sae)
        residual = x - (decode_sparse(acts, self.W_dec) + self.b_dec)  # (B, d_in)
        mse = residual.pow(2).sum(-1).mean()
        l1 = (acts @ self.W_dec.norm(dim=1)).sum() / batch  # mean_b sum_i acts_i ||W_dec_i||
        l1_coefficient = self.current_l1_coefficient(step)
        l0 = torch.count_nonzero(acts) / batch
        with torch.no_grad():
            if step >= cfg.l1_warmup_steps:
                steer_towards_l0(self.l1_coefficient, l0, cfg.target_l0, cfg.controller_rate)
        dead = self.count_firing(acts)
        stats = {"mse": mse.detach(), "l1": l1.detach(), "l0": l0, "l1_coefficient": l1_coefficient, "dead": dead}
        return StepOutput(mse + l1_coefficient * l1, acts, residual.detach(), stats)
