"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping ahead: improving reconstruction fidelity
with JumpReLU sparse autoencoders")::

    pre    = (x - b_dec) @ W_enc + b_enc                              (B, d_sae)
    theta  = exp(log_threshold)                                       (d_sae,) one per latent
    acts   = pre * 1[pre > theta]                                     JumpReLU
    loss   = mean_b ||x - acts @ W_dec - b_dec||^2 + lambda * mean_b sum_i 1[pre_i > theta_i]

The step has no useful gradient in theta, so both functions use straight-through estimators
with a rectangle kernel K(u) = 1[|u| < 1/2] of bandwidth eps (the paper's pseudo-derivatives):

    d JumpReLU / d theta = -(theta / eps) K((pre - theta) / eps)      d JumpReLU / d pre = 1[pre > theta]
    d H(pre - theta) / d theta = -(1 / eps) K((pre - theta) / eps)    d H / d pre = 0

so the L0 penalty trains only the thresholds. Decoder rows stay at unit norm.

Thresholds: the paper starts them at 0.001. A log-threshold moves by about one learning rate
per Adam step, so in short runs it barely leaves its start; with a ``target_l0`` the thresholds
therefore start at the level that gives that L0 on the first batch (the value BatchTopK would
cut at), and the L0 controller keeps it there.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..kernels.sparse import decode_sparse
from ..validation import check_real
from .base import StepOutput, UnitNormSAE, check_sae_fields, load_named_tensors
from .penalty import check_penalty_fields, steer_towards_l0, training_pre_activations, warmup_factor, warmup_steps


@dataclass
class JumpReLUConfig:
    """One JumpReLU SAE (:class:`JumpReLUSAE`).

    Attributes:
        d_in: input width.
        d_sae: number of latents.
        target_l0: the L0 the coefficient is steered towards; the thresholds start where the
            first batch has this L0. None: keep the coefficient fixed, start at ``initial_threshold``.
        l0_coefficient: lambda of the L0 penalty at the start (for inputs normalised to
            E||x||^2 = 1, as ``msae.training.loop.train`` does by default).
        bandwidth: eps, the width of the rectangle kernel of the pseudo-derivatives; > 0.
        initial_threshold: every threshold's start without ``target_l0``; with it, a floor
            under the start taken from the first batch; > 0.
        threshold_lr_scale: learning-rate multiplier of the log-thresholds; > 0. Adam moves a
            log-threshold by about lr per step, too slow to follow the encoder in a short run
            (at lr 3e-4 a factor 2 takes ~2,300 steps), so the thresholds learn this much faster.
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
    l0_coefficient: float = 1e-3
    bandwidth: float = 1e-3
    initial_threshold: float = 1e-3
    threshold_lr_scale: float = 30.0
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
        check_real(self, "l0_coefficient", 0)
        for name in ("bandwidth", "initial_threshold", "threshold_lr_scale"):
            check_real(self, name, 0, low_open=True)


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1, t.shape[-1])


def _in_window(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """K((pre - threshold) / bandwidth) as a bool mask: |pre - threshold| < bandwidth / 2."""
    return (pre - threshold).abs() < bandwidth / 2


class _JumpReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return torch.where(pre > threshold, pre, 0.0)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        grad_pre = grad_threshold = None
        if ctx.needs_input_grad[0]:
            grad_pre = torch.where(pre > threshold, grad, 0.0)
        if ctx.needs_input_grad[1]:
            window = _in_window(pre, threshold, ctx.bandwidth)
            grad_threshold = -(threshold / ctx.bandwidth) * _flat(torch.where(window, grad, 0.0)).sum(0)
        return grad_pre, grad_threshold, None


class _FiringCount(torch.autograd.Function):
    """Heaviside H(pre - threshold) summed over the batch: (d_sae,) tokens above threshold.
    Summing inside the function spares a (B, d_sae) float output."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return _flat(pre > threshold).sum(0).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):  # grad: (d_sae,)
        pre, threshold = ctx.saved_tensors
        window_count = _flat(_in_window(pre, threshold, ctx.bandwidth)).sum(0)
        return None, -(grad / ctx.bandwidth) * window_count, None  # no gradient to pre, by definition


def jump_relu(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """pre * 1[pre > threshold], with the rectangle-kernel pseudo-derivative in threshold."""
    return _JumpReLU.apply(pre, threshold, bandwidth)


def firing_count(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """sum over rows of 1[pre > threshold]: (d_sae,), with the Heaviside's pseudo-derivative."""
    return _FiringCount.apply(pre, threshold, bandwidth)


class JumpReLUSAE(UnitNormSAE):
    """The JumpReLU SAE of the module docstring: a learned threshold per latent, stored as
    ``log_threshold`` (d_sae,) and read as ``threshold``; unit-norm decoder rows."""

    architecture = "jumprelu"

    def __init__(self, config: JumpReLUConfig):
        super().__init__(config)
        self.log_threshold = nn.Parameter(torch.full((config.d_sae,), math.log(config.initial_threshold)))
        self.register_buffer("l0_coefficient", torch.tensor(float(config.l0_coefficient)))
        self.n_warmup = warmup_steps(config.total_steps, config.penalty_warmup_fraction)

    @property
    def threshold(self) -> torch.Tensor:
        return self.log_threshold.exp()

    def optimizer_groups(self) -> list[dict]:
        others = [p for name, p in self.named_parameters() if name != "log_threshold"]
        return [{"params": others, "lr_scale": 1.0},
                {"params": [self.log_threshold], "lr_scale": self.config.threshold_lr_scale}]

    def pre_jump(self, x: torch.Tensor) -> torch.Tensor:
        """(x - b_dec) @ W_enc + b_enc, no ReLU: (..., d_in) -> (..., d_sae)."""
        self.check_input(x)
        return (x - self.b_dec) @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_jump(x)
        return torch.where(pre > self.threshold, pre, 0.0)

    def initialize_from_batch(self, x: torch.Tensor) -> None:
        super().initialize_from_batch(x)
        target = self.config.target_l0
        if target is None:
            return
        with torch.no_grad():
            pre = self.pre_jump(x).flatten()
            n_keep = max(1, min(pre.numel() - 1, round(target * x.shape[0])))
            kept_last, next_below = pre.topk(n_keep + 1).values[-2:]
            cut = float(kept_last + next_below) / 2  # midway: n_keep entries lie above it
            self.log_threshold.fill_(math.log(max(cut, self.config.initial_threshold)))

    def training_step(self, x: torch.Tensor, step: int) -> StepOutput:
        cfg, batch = self.config, x.shape[0]
        threshold = self.threshold  # (d_sae,)
        pre = training_pre_activations(self, x)  # (B, d_sae)
        acts = jump_relu(pre, threshold, cfg.bandwidth)
        # the threshold's pseudo-derivative also reads the gradient at latents just below it
        below = _in_window(pre.detach(), threshold.detach(), cfg.bandwidth)
        residual = x - (decode_sparse(acts, self.W_dec, grad_mask=below) + self.b_dec)
        mse = residual.pow(2).sum(-1).mean()
        l0 = firing_count(pre, threshold, cfg.bandwidth).sum() / batch
        coefficient = self.l0_coefficient * warmup_factor(step, self.n_warmup)
        if step >= self.n_warmup:
            steer_towards_l0(self.l0_coefficient, l0.detach(), cfg.target_l0, cfg.controller_rate)
        stats = {"mse": mse.detach(), "l0": l0.detach(), "l0_coefficient": coefficient,
                 "dead": self.count_firing(acts.detach())}
        return StepOutput(mse + coefficient * l0, acts, residual.detach(), stats)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.log_threshold.sub_(math.log(scale))

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().export_tensors(), "threshold": self.threshold.detach().clone()}

    def import_tensors(self, tensors: dict[str, torch.Tensor], where="weights") -> None:
        load_named_tensors(self, tensors, ["W_enc", "b_enc", "W_dec", "b_dec"], where)
        threshold = tensors.get("threshold")
        if threshold is None or threshold.shape != (self.d_sae,) or not bool((threshold > 0).all()):
            raise ValueError(f"{where}: a JumpReLU SAE needs a positive 'threshold' of shape ({self.d_sae},)")
        with torch.no_grad():
            self.log_threshold.copy_(threshold.log())
