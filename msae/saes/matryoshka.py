"""The Matryoshka BatchTopK sparse autoencoder (Bussmann et al. 2025). Plain BatchTopK is the
one-group case.

    pre   = ReLU((x - b_dec) @ W_enc + b_enc)                    (B, d_sae)
    acts  = batch_top_k(pre, k)      keep the k*B largest entries of the whole batch
    x_hat_i = acts[:, :m_i] @ W_dec[:m_i] + b_dec               for each prefix end m_i
    loss  = mean_i(w_i * MSE_i) + auxk_alpha * AuxK             (uniform w_i = 1/G)

One global top-k is shared by every prefix. At inference, ``encode`` replaces the batch-level
top-k with a JumpReLU whose single threshold is an EMA of the smallest activation the top-k
kept during training, so a token's code does not depend on the rest of its batch.

Two implementations of the training step give the same losses and gradients: a dense one,
and a sparse one (``msae.kernels.sparse``) that works on the ``k*B`` active entries only and is much
faster when k is small against d_sae. ``kernels="auto"`` picks by size.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any, Literal

import torch

from ..distributed import all_any, all_min, world_size
from ..kernels.prefix_mse import cumulative_prefix_mse, sparse_cumulative_prefix_mse
from ..kernels.sparse import batch_top_k, batch_top_k_active, selected_pre_activations
from ..validation import ConfigTypeError, check_bool, check_int, check_real
from .auxk import AuxKMixin
from .base import StepOutput, UnitNormSAE, check_sae_fields, load_named_tensors
from .prefixes import group_weights, prefix_ends, sample_prefix_ends, validate_group_sizes


@dataclass
class MatryoshkaConfig:
    """One Matryoshka BatchTopK SAE. ``group_sizes=None`` means one group: plain BatchTopK.

    Attributes:
        d_in: input width.
        d_sae: number of latents.
        k: mean active latents per token, in 1..d_sae: a training batch of B tokens keeps its
            k * B largest activations.
        group_sizes: sizes of the nested groups, positive and summing to d_sae (prefix i is
            the first ``sum(group_sizes[:i + 1])`` latents); None: one group of d_sae.
        group_weighting: weight of each prefix's reconstruction loss: "uniform" (1/G each, the
            paper's), "size" (proportional to the group's size) or a list of G non-negative weights.
        stop_gradient: block gradients from later prefixes into earlier groups.
        n_random_prefixes: > 0: sample this many prefix ends per batch (the last is always
            d_sae) instead of using fixed groups; needs one group. 0: the fixed groups.
        pareto_exponent: exponent a of the truncated Pareto law random prefix ends are drawn
            from (``P(m) ∝ m**a - (m-1)**a``), in (0, 1).
        auxk_alpha: weight of the AuxK loss.
        auxk_k: dead latents AuxK may use per token; None: ``max(1, d_in // 2)``.
        dead_after_tokens: a latent silent for this many training tokens is dead (AuxK trains it).
        threshold_beta: EMA decay of the inference threshold, per step, in [0, 1).
        threshold_start_step: the first (0-based) training step that updates the inference
            threshold; ``encode`` with the threshold needs a run longer than this.
        seed: seed of the weight init and of the random prefix sampling.
        model_name: the model whose activations the SAE reads; written into the SAELens cfg.json.
        hook_name: the hook point it reads, e.g. "blocks.12.hook_resid_post"; written into cfg.json.
    """

    d_in: int
    d_sae: int
    k: int
    group_sizes: list[int] | None = None
    group_weighting: Literal["uniform", "size"] | list[float] = "uniform"
    stop_gradient: bool = False
    n_random_prefixes: int = 0
    pareto_exponent: float = 0.5
    auxk_alpha: float = 1 / 32
    auxk_k: int | None = None
    dead_after_tokens: int = 10_000_000
    threshold_beta: float = 0.999
    threshold_start_step: int = 1000
    seed: int = 0
    model_name: str = ""
    hook_name: str = ""

    def __post_init__(self):
        check_sae_fields(self)
        check_int(self, "k", 1, self.d_sae, high_name="d_sae")
        if self.group_sizes is None:
            self.group_sizes = [self.d_sae]
        if isinstance(self.group_sizes, (str, bytes)) or not isinstance(self.group_sizes, (list, tuple)):
            raise ConfigTypeError(f"group_sizes must be a list of integers or None, got {self.group_sizes!r}")
        self.group_sizes = list(self.group_sizes)
        validate_group_sizes(self.group_sizes, self.d_sae)
        if not isinstance(self.group_weighting, str):
            weights = self.group_weighting
            if not isinstance(weights, (list, tuple)) or not all(
                    isinstance(w, numbers.Real) and not isinstance(w, bool) and math.isfinite(w) for w in weights):
                raise ConfigTypeError(f"group_weighting must be 'uniform', 'size' or a list of finite numbers, got {weights!r}")
        group_weights(self.group_weighting, self.group_sizes)  # raises if malformed
        check_bool(self, "stop_gradient")
        check_int(self, "n_random_prefixes", 0, self.d_sae, high_name="d_sae")
        if self.n_random_prefixes and len(self.group_sizes) > 1:
            raise ValueError("use either fixed group_sizes or n_random_prefixes, not both")
        check_real(self, "pareto_exponent", 0, 1, low_open=True, high_open=True)
        check_real(self, "auxk_alpha", 0)
        if self.auxk_k is None:
            self.auxk_k = max(1, self.d_in // 2)
        check_int(self, "auxk_k", 1)
        check_int(self, "dead_after_tokens", 1)
        check_real(self, "threshold_beta", 0, 1, high_open=True)
        check_int(self, "threshold_start_step", 0)

    @property
    def prefix_ends(self) -> list[int]:
        return prefix_ends(self.group_sizes)


class MatryoshkaBatchTopKSAE(AuxKMixin, UnitNormSAE):
    """The Matryoshka BatchTopK SAE of the module docstring; with one group, plain BatchTopK.

    ``training_step`` computes the loss (dense or sparse kernels, same result), ``encode`` the
    inference code with the learned global threshold. Saved by ``msae.save_sae`` as the SAELens
    JumpReLU SAE it is at inference."""

    architecture = "jumprelu"  # how SAELens runs it: ReLU then one threshold
    supports_data_parallel = True

    def __init__(self, config: MatryoshkaConfig):
        super().__init__(config)
        self.prefix_generator = self.init_generator  # random prefixes continue the init's stream
        weights = group_weights(config.group_weighting, config.group_sizes)
        self.register_buffer("group_weights", torch.tensor(weights))
        self.register_buffer("threshold", torch.tensor(-1.0))  # < 0: not yet estimated

    def check_training_length(self, steps: int) -> None:
        # Refused rather than moved earlier: threshold_start_step is part of the saved config,
        # and a start msae shifted silently would make the run differ from the config it records.
        start = self.config.threshold_start_step
        if steps <= start:
            raise ValueError(
                f"TrainConfig.steps={steps} is not more than MatryoshkaConfig.threshold_start_step={start}, the "
                "first step that estimates the inference threshold: the run would train to the end and then "
                "fail to encode or save. Train for more steps, or set threshold_start_step below steps "
                "(e.g. threshold_start_step=steps // 2)"
            )

    # --- inference -------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, use_threshold: bool = True) -> torch.Tensor:
        """(..., d_in) -> (..., d_sae). With ``use_threshold=False``, BatchTopK over all rows."""
        pre = self.pre_activations(x)
        if not use_threshold:
            return batch_top_k(pre.reshape(-1, self.d_sae), self.config.k).view_as(pre)
        if bool((self.threshold < 0).any()):
            raise RuntimeError(
                "the inference threshold has not been estimated yet (it starts at step "
                f"{self.config.threshold_start_step}); train longer or call encode(x, use_threshold=False)"
            )
        return pre * (pre > self.threshold)

    # --- training --------------------------------------------------------------------------
    def prefixes_for_step(self) -> tuple[list[int], torch.Tensor]:
        """Prefix ends and loss weights for this step: fixed groups, or sampled ones."""
        cfg = self.config
        if cfg.n_random_prefixes:
            ends = sample_prefix_ends(cfg.d_sae, cfg.n_random_prefixes, self.prefix_generator, cfg.pareto_exponent)
            return ends, self.group_weights.new_full((len(ends),), 1.0 / len(ends))
        return cfg.prefix_ends, self.group_weights

    def training_step(self, x: torch.Tensor, step: int) -> StepOutput:
        if self.uses_sparse_kernels():
            return self._sparse_training_step(x, step)
        cfg = self.config
        pre = self.pre_activations(x)  # (B, d_sae)
        acts = batch_top_k(pre, cfg.k, self.batch_group).to(self.W_dec.dtype)  # (B, d_sae), k*B non-zeros; float32 under autocast
        ends, weights = self.prefixes_for_step()
        prefix_mse, residual = cumulative_prefix_mse(acts, self.W_dec, self.b_dec, x, ends, cfg.stop_gradient)
        reconstruction = (weights * prefix_mse).mean()  # the paper code: sum_i MSE_i / G^2
        with torch.no_grad():
            self.record_firing(all_any((acts > 0).any(0), self.batch_group), x.shape[0] * world_size(self.batch_group))
            if step >= cfg.threshold_start_step:
                self._update_threshold(acts)
        auxk = self.auxk_loss(pre, residual)
        return self._step_output(reconstruction, auxk, prefix_mse, acts, residual, (acts > 0).sum(), x.shape[0])

    def _sparse_training_step(self, x: torch.Tensor, step: int) -> StepOutput:
        """The same step on the active entries: only the encoder's forward matmul is dense."""
        cfg = self.config
        self.check_input(x)
        batch = x.shape[0]
        x_centered = x - self.b_dec
        with torch.no_grad():
            # (B, d_sae) without its ReLU, no graph: the top-k and AuxK selections apply the ReLU
            # to the entries they keep, which saves a pass over the whole matrix.
            pre = torch.addmm(self.b_enc, x_centered, self.W_enc)
            active = batch_top_k_active(pre, cfg.k, self.batch_group)
            active = active._replace(values=active.values.to(self.W_dec.dtype))  # float32 under autocast
        values = selected_pre_activations(x_centered, self.W_enc, self.b_enc, active.rows, active.cols, active.values)
        ends, weights = self.prefixes_for_step()
        prefix_mse, residual = sparse_cumulative_prefix_mse(
            active.rows, active.cols, values, self.W_dec, self.b_dec, x, ends, cfg.stop_gradient)
        reconstruction = (weights * prefix_mse).mean()
        with torch.no_grad():
            positive = active.values > 0
            times_fired = torch.zeros(self.d_sae, dtype=torch.int32, device=x.device)
            fired = all_any(times_fired.index_add_(0, active.cols, positive.int()) > 0, self.batch_group)
            self.record_firing(fired, batch * world_size(self.batch_group))
            if step >= cfg.threshold_start_step:
                self._update_threshold(active.values)
        auxk = self.sparse_auxk_loss(x_centered, pre, residual)
        acts = active._replace(values=values.detach())
        return self._step_output(reconstruction, auxk, prefix_mse, acts, residual, positive.sum(), batch)

    def _step_output(self, reconstruction, auxk, prefix_mse, acts, residual, n_active, batch) -> StepOutput:
        loss = reconstruction + self.config.auxk_alpha * auxk
        stats = {
            "mse": prefix_mse[-1].detach(),
            "auxk": auxk.detach(),
            "l0": n_active / batch,
            "dead": self.n_dead(),
        }
        return StepOutput(loss, acts, residual, stats)

    def _update_threshold(self, kept: torch.Tensor) -> None:
        """EMA of the smallest positive activation the batch top-k kept (computed on the
        device: no host sync)."""
        smallest = all_min(torch.where(kept > 0, kept, torch.inf).min(), self.batch_group)
        smallest = torch.where(torch.isinf(smallest), 0.0, smallest)
        beta = self.config.threshold_beta
        self.threshold.copy_(torch.where(self.threshold < 0, smallest, beta * self.threshold + (1 - beta) * smallest))

    # --- state and export ------------------------------------------------------------------
    def get_extra_state(self) -> dict[str, Any]:
        return {"prefix_generator": self.prefix_generator.get_state()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.prefix_generator.set_state(state["prefix_generator"])

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.threshold.copy_(torch.where(self.threshold < 0, self.threshold, self.threshold / scale))

    def import_tensors(self, tensors: dict[str, torch.Tensor], where: Any = "weights") -> None:
        load_named_tensors(self, tensors, ["W_enc", "b_enc", "W_dec", "b_dec"], where)
        threshold = tensors.get("threshold")
        if threshold is None or threshold.shape != (self.d_sae,):
            raise ValueError(f"{where}: a Matryoshka BatchTopK SAE needs a 'threshold' of shape ({self.d_sae},)")
        if not torch.all(threshold == threshold[0]):
            raise ValueError(f"{where}: a Matryoshka BatchTopK SAE has one global threshold, found several")
        with torch.no_grad():
            self.threshold.fill_(float(threshold[0]))

    def export_tensors(self) -> dict[str, torch.Tensor]:
        if bool((self.threshold < 0).any()):
            raise RuntimeError("cannot export an SAE whose inference threshold has not been estimated yet")
        tensors = super().export_tensors()
        tensors["threshold"] = self.threshold.expand(self.d_sae).clone()  # SAELens: one per latent
        return tensors
