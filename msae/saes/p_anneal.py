"""P-annealing SAE (Karvonen et al. 2024, "Measuring progress in dictionary learning for
language model interpretability with board game models"; dictionary_learning's
``PAnnealTrainer`` with ``sparsity_function="Lp^p"`` as SAEBench trains it)::

    acts  = ReLU((x - b_dec) @ W_enc + b_enc)                        (B, d_sae)
    loss  = mean_b ||x - acts @ W_dec - b_dec||^2 + alpha * mean_b sum_i acts_i ** p

p starts at ``p_start`` (1: an L1 SAE) and steps down to ``p_end`` in ``n_p_updates`` equal
steps spread from ``anneal_start_fraction`` to ``anneal_end_fraction`` of the run. At each
change alpha is multiplied by mean(L_p^p at the old p) / mean(L_p^p at the new p) over the
``rescale_batches`` batches before it, so the penalty keeps its size when p changes. Decoder
rows stay at unit norm. (We anneal to p_end at 80% of the run so the final p is trained
through the learning-rate decay; dictionary_learning spreads the changes to the last step.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernels.sparse import decode_sparse
from ..validation import check_int, check_real
from .base import StepOutput, UnitNormSAE, check_sae_fields
from .penalty import check_penalty_fields, steer_towards_l0, training_pre_activations, warmup_factor, warmup_steps


@dataclass
class PAnnealConfig:
    """One P-annealing SAE (:class:`PAnnealSAE`).

    Attributes:
        d_in: input width.
        d_sae: number of latents.
        total_steps: length of the run; required (None raises): the p schedule and the
            penalty warm-up are laid out over it.
        target_l0: the L0 alpha is steered towards; None: alpha changes only when p does.
        lp_coefficient: alpha at the start (for inputs normalised to E||x||^2 = 1, as
            ``msae.training.loop.train`` does by default); >= 0.
        p_start: p at the start (1: an L1 penalty); 0 < p_end <= p_start <= 1.
        p_end: p from the last change on.
        n_p_updates: number of equal steps p takes from p_start to p_end; >= 1.
        anneal_start_fraction: fraction of ``total_steps`` at which p first changes.
        anneal_end_fraction: fraction of ``total_steps`` at which p reaches p_end.
        rescale_batches: batches before each change over which L_p^p at the old and the new p
            are summed to rescale alpha; >= 1.
        controller_rate: rate of the target-L0 controller, in [0, 1)
            (:func:`msae.saes.penalty.steer_towards_l0`).
        penalty_warmup_fraction: fraction of ``total_steps`` over which alpha ramps up
            linearly, in [0, 1].
        dead_after_tokens: a latent silent for this many training tokens counts as dead
            (reported in the training statistics).
        seed: seed of the weight init.
        model_name: the model whose activations the SAE reads; written into the SAELens cfg.json.
        hook_name: the hook point it reads, e.g. "blocks.12.hook_resid_post"; written into cfg.json.
    """

    d_in: int
    d_sae: int
    total_steps: int | None = None
    target_l0: float | None = None
    lp_coefficient: float = 0.1
    p_start: float = 1.0
    p_end: float = 0.2
    n_p_updates: int = 10
    anneal_start_fraction: float = 0.05
    anneal_end_fraction: float = 0.8
    rescale_batches: int = 10
    controller_rate: float = 1e-2
    penalty_warmup_fraction: float = 0.05
    dead_after_tokens: int = 10_000_000
    seed: int = 0
    model_name: str = ""
    hook_name: str = ""

    def __post_init__(self):
        check_sae_fields(self)
        if self.total_steps is None:
            raise ValueError("P-annealing lays its p schedule over the run: give total_steps (build_sae(..., steps=N))")
        check_penalty_fields(self)
        check_real(self, "lp_coefficient", 0)
        for name in ("p_start", "p_end", "anneal_start_fraction", "anneal_end_fraction"):
            check_real(self, name)  # a finite number; the ranges and order are checked below
        check_int(self, "n_p_updates", 1)
        check_int(self, "rescale_batches", 1)
        if not 0 < self.p_end <= self.p_start <= 1:
            raise ValueError(f"need 0 < p_end <= p_start <= 1, got p_start={self.p_start}, p_end={self.p_end}")
        if not 0 <= self.anneal_start_fraction <= self.anneal_end_fraction <= 1:
            raise ValueError("need 0 <= anneal_start_fraction <= anneal_end_fraction <= 1, got "
                             f"{self.anneal_start_fraction} and {self.anneal_end_fraction}")

    def p_change_steps(self) -> list[int]:
        """The steps at which p takes its next value (the last one sets p_end), increasing."""
        last = self.total_steps - 1
        start = min(round(self.anneal_start_fraction * self.total_steps), last)
        end = min(round(self.anneal_end_fraction * self.total_steps), last)
        return [round(start + (end - start) * i / max(1, self.n_p_updates - 1)) for i in range(self.n_p_updates)]

    def p_at(self, step: int) -> float:
        """p used at ``step``: p_start before the first change, p_end from the last one on."""
        changes = sum(step >= s for s in self.p_change_steps())
        return self.p_start + (self.p_end - self.p_start) * changes / self.n_p_updates


class PAnnealSAE(UnitNormSAE):
    """The P-annealing SAE of the module docstring: a ReLU SAE whose L_p^p penalty anneals p
    from ``p_start`` to ``p_end``; unit-norm decoder rows."""

    architecture = "standard"  # SAELens runs it as a plain ReLU SAE

    def __init__(self, config: PAnnealConfig):
        super().__init__(config)
        self.register_buffer("lp_coefficient", torch.tensor(float(config.lp_coefficient)))
        # Sums of L_p^p at the current and at the next p over the batches before a change.
        self.register_buffer("lp_sums", torch.zeros(2))
        self.n_warmup = warmup_steps(config.total_steps, config.penalty_warmup_fraction)
        self.change_steps = config.p_change_steps()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.pre_activations(x)

    @torch.no_grad()
    def _rescale_for_p(self, acts: torch.Tensor, step: int, p: float) -> None:
        """Accumulate L_p^p at p and at the next p before a change; at the change, rescale alpha."""
        if step in self.change_steps and step > 0:
            old, new = self.lp_sums
            self.lp_coefficient.mul_(torch.where(new > 0, old / new, 1.0))
            self.lp_sums.zero_()
        upcoming = [s for s in self.change_steps if s > step]
        if upcoming and upcoming[0] - step <= self.config.rescale_batches:
            next_p = self.config.p_at(upcoming[0])
            self.lp_sums[0] += acts.pow(p).sum(-1).mean()
            self.lp_sums[1] += acts.pow(next_p).sum(-1).mean()

    def training_step(self, x: torch.Tensor, step: int) -> StepOutput:
        cfg, batch = self.config, x.shape[0]
        p = cfg.p_at(step)
        acts = torch.relu(training_pre_activations(self, x))  # (B, d_sae)
        residual = x - (decode_sparse(acts, self.W_dec) + self.b_dec)
        mse = residual.pow(2).sum(-1).mean()
        self._rescale_for_p(acts.detach(), step, p)
        # ReLU's backward zeroes the infinite slope of acts ** p at acts = 0 (p < 1).
        lp = acts.pow(p).sum() / batch
        coefficient = self.lp_coefficient * warmup_factor(step, self.n_warmup)
        l0 = torch.count_nonzero(acts) / batch
        if step >= self.n_warmup:
            steer_towards_l0(self.lp_coefficient, l0, cfg.target_l0, cfg.controller_rate)
        stats = {"mse": mse.detach(), "lp": lp.detach(), "p": torch.tensor(p), "l0": l0,
                 "lp_coefficient": coefficient, "dead": self.count_firing(acts.detach())}
        return StepOutput(mse + coefficient * lp, acts, residual.detach(), stats)
