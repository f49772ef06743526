"""What the baselines share: the unit-norm decoder, the firing counter, the penalty warm-up and
the target-L0 controller.

Penalty-based SAEs (ReLU-L1, Gated, JumpReLU, P-annealing) reach a target L0 the same way:
their penalty coefficient ramps up linearly over the first ``penalty_warmup_fraction`` of
``total_steps``, then, if ``target_l0`` is set, it is multiplied after every batch by
``exp(controller_rate * clip(log2(L0 / target_l0), -1, 1))``: by ``e^rate`` while the batch's L0 is
twice the target or more, by ``e^-rate`` while it is half or less, and proportionally less near
the target, so that it moves fast from a poor start (x10 in ~230 batches at rate 0.01) and
settles without chattering. The configured coefficient is only where it starts.
"""

from __future__ import annotations

from typing import Any

import torch

from ..kernels.sparse import encode_sparse_grad
from ..validation import check_int, check_real
from .base import SparseAutoencoder


def training_pre_activations(sae: SparseAutoencoder, x: torch.Tensor) -> torch.Tensor:
    """(x - b_dec) @ W_enc + b_enc, no activation: (B, d_in) -> (B, d_sae), for a training step.
    Its backward multiplies only the latents the activation lets a gradient through
    (``msae.kernels.sparse.encode_sparse_grad``)."""
    sae.check_input(x)
    return encode_sparse_grad(x - sae.b_dec, sae.W_enc, sae.b_enc)


def warmup_steps(total_steps: int | None, fraction: float) -> int:
    """Steps of the penalty's linear warm-up; none when the run length is unknown."""
    return round(fraction * total_steps) if total_steps else 0


def warmup_factor(step: int, n_warmup: int) -> float:
    """Linear ramp of the penalty over ``n_warmup`` steps: (step + 1) / n_warmup, then 1."""
    return min(1.0, (step + 1) / n_warmup) if n_warmup > 0 else 1.0


@torch.no_grad()
def steer_towards_l0(coefficient: torch.Tensor, l0: torch.Tensor, target_l0: float | None, rate: float) -> None:
    """One step of the target-L0 controller, in place and on the device (no host sync):
    ``coefficient *= exp(rate * clip(log2(l0 / target_l0), -1, 1))`` (an L0 of 0 counts as far below)."""
    if target_l0 is not None:
        error = torch.log2(l0.to(coefficient.dtype) / target_l0).clamp(-1.0, 1.0)
        coefficient.mul_(torch.exp(rate * error))


def check_penalty_fields(config: Any) -> None:
    """Validate the fields every penalty-based config has (after :func:`check_sae_fields`)."""
    check_real(config, "target_l0", 0, config.d_sae, low_open=True, high_name="d_sae", optional=True)
    check_real(config, "controller_rate", 0, 1, high_open=True)
    check_int(config, "total_steps", 1, optional=True)
    check_real(config, "penalty_warmup_fraction", 0, 1)
    check_int(config, "dead_after_tokens", 1)
