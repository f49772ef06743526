"""What every SAE in msae shares: the four weight tensors, decoding, and the training hooks.

Layout (the SAELens and SAEBench convention):
    W_enc (d_in, d_sae), b_enc (d_sae,), W_dec (d_sae, d_in), b_dec (d_in,)
    encode: x (..., d_in) -> acts (..., d_sae);   decode: acts -> x_hat (..., d_in)
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal, NamedTuple

import torch
from torch import nn

from ..validation import check_int, check_seed, check_str

# The SAELens architectures msae writes and reads (the "architecture" of a cfg.json).
SAELensArchitecture = Literal["standard", "jumprelu", "topk", "gated"]


class StepOutput(NamedTuple):
    """What one training step returns.

    Attributes:
        loss: 0-dim tensor, the loss to call ``backward`` on.
        acts: the activations the loss used: a (B, d_sae) tensor, or a
            :class:`msae.kernels.sparse.ActiveLatents` from a sparse step (:meth:`dense_acts`
            gives the tensor either way).
        residual: (B, d_in) ``x - x_hat`` of the full dictionary, detached.
        stats: named 0-dim tensors for the training log (e.g. ``mse``, ``l0``, ``dead``); left
            on the device, so a step needs no host sync.
    """

    loss: torch.Tensor
    acts: Any
    residual: torch.Tensor
    stats: dict[str, torch.Tensor]

    def dense_acts(self) -> torch.Tensor:
        """The activations the loss used, as a (B, d_sae) tensor."""
        if isinstance(self.acts, torch.Tensor):
            return self.acts
        return self.acts.to_dense()


class SparseAutoencoder(nn.Module):
    """Base class: holds the weights, decodes, and folds input scaling into the weights.

    Subclasses define ``encode`` (inference), ``training_step`` (the loss) and, if they
    constrain the weights, ``before_optimizer_step`` / ``after_optimizer_step``.

    Attributes:
        architecture: the SAELens architecture an exported SAE loads as (a class attribute:
            "standard", "jumprelu", "topk" or "gated").
        d_in: input width.
        d_sae: number of latents.
        W_enc: (d_in, d_sae) encoder.
        b_enc: (d_sae,) encoder bias.
        W_dec: (d_sae, d_in) decoder; row i is latent i's direction.
        b_dec: (d_in,) decoder bias, also subtracted from the input before encoding.
    """

    architecture: SAELensArchitecture
    # Whether training_step can run data-parallel: given a process group in ``batch_group``, it
    # computes what spans the batch over all ranks (msae.distributed), so that ranks holding
    # parts of a batch together take the step one process would take on the whole batch.
    supports_data_parallel: bool = False
    batch_group = None  # the process group of a data-parallel run; None: the batch is all here

    def __init__(self, d_in: int, d_sae: int):
        super().__init__()
        self.d_in, self.d_sae = d_in, d_sae
        self.W_enc = nn.Parameter(torch.empty(d_in, d_sae))
        self.b_enc = nn.Parameter(torch.zeros(d_sae))
        self.W_dec = nn.Parameter(torch.empty(d_sae, d_in))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    # --- inference -------------------------------------------------------------------------
    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """ReLU((x - b_dec) @ W_enc + b_enc): (..., d_in) -> (..., d_sae)."""
        self.check_input(x)
        return torch.relu((x - self.b_dec) @ self.W_enc + self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        return acts @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def check_input(self, x: torch.Tensor) -> None:
        if x.shape[-1] != self.d_in:
            raise ValueError(
                f"input has width {x.shape[-1]} (shape {tuple(x.shape)}), but this SAE expects d_in={self.d_in}"
            )

    # --- training hooks --------------------------------------------------------------------
    def training_step(self, x: torch.Tensor, step: int) -> StepOutput:
        raise NotImplementedError

    def initialize_from_batch(self, x: torch.Tensor) -> None:
        """Called once with the first (normalised) batch before training."""

    def check_training_length(self, steps: int) -> None:
        """Raise ``ValueError`` if a run of ``steps`` steps would leave this SAE unusable;
        :func:`msae.train` calls it before the first step."""

    def optimizer_groups(self) -> list[dict[str, Any]]:
        """Adam's parameter groups; a group's ``lr_scale`` multiplies the trainer's learning rate."""
        return [{"params": list(self.parameters()), "lr_scale": 1.0}]

    def before_optimizer_step(self) -> None:
        """Called after backward, before gradient clipping."""

    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Called after each optimizer step."""

    # --- scaling and export ----------------------------------------------------------------
    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on ``x * scale`` run on raw ``x``.

        acts and x_hat are both linear in the input scale, so dividing the biases (and any
        threshold) by ``scale`` gives ``acts_raw = acts / scale`` and ``x_hat_raw = x_hat /
        scale`` while leaving W_enc and the (unit-norm) decoder rows unchanged.
        """
        self.b_enc.div_(scale)
        self.b_dec.div_(scale)

    def export_tensors(self) -> dict[str, torch.Tensor]:
        """Weights under their SAELens names, for saving."""
        return {name: getattr(self, name).detach().clone() for name in ("W_enc", "b_enc", "W_dec", "b_dec")}

    def export_config(self) -> dict[str, Any]:
        """This SAE's own config, enough to rebuild it with :func:`msae.io.load_sae`."""
        raise NotImplementedError

    def import_tensors(self, tensors: dict[str, torch.Tensor], where: Any = "weights") -> None:
        """Load the tensors :meth:`export_tensors` wrote (used by :func:`msae.io.load_sae`)."""
        load_named_tensors(self, tensors, ["W_enc", "b_enc", "W_dec", "b_dec"], where)


def init_tied_unit_norm(sae: SparseAutoencoder, seed: int) -> torch.Generator:
    """The paper's init: Kaiming-uniform decoder rows scaled to unit norm and ``W_enc = W_dec.T``,
    drawn from a generator seeded with ``seed``; returns the generator (its stream continues)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        W_dec = torch.empty(sae.d_sae, sae.d_in)
        torch.nn.init.kaiming_uniform_(W_dec, generator=generator)
        sae.W_dec.copy_(W_dec / W_dec.norm(dim=1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec.T)
    return generator


def load_named_tensors(sae: nn.Module, tensors: dict[str, torch.Tensor], names: list[str], where: Any) -> None:
    """Copy ``tensors[name]`` into ``sae.<name>`` for each name, checking presence and shape."""
    with torch.no_grad():
        for name in names:
            if name not in tensors:
                raise ValueError(f"{where}: weights file has no {name!r}")
            target = getattr(sae, name)
            if tensors[name].shape != target.shape:
                raise ValueError(f"{where}: {name} has shape {tuple(tensors[name].shape)}, expected {tuple(target.shape)}")
            target.copy_(tensors[name])


def check_dimensions(config: Any) -> None:
    """Raise ``ValueError`` unless ``config.d_in`` and ``config.d_sae`` are positive integers."""
    for name in ("d_in", "d_sae"):
        check_int(config, name, 1)


def check_sae_fields(config: Any) -> None:
    """Validate the fields every SAE config has: ``d_in``, ``d_sae``, ``seed``, ``model_name``
    and ``hook_name``."""
    check_dimensions(config)
    check_seed(config)
    for name in ("model_name", "hook_name"):
        check_str(config, name)


def geometric_median(points: torch.Tensor, max_iter: int = 100, tol: float = 1e-5) -> torch.Tensor:
    """Weiszfeld's algorithm: the point minimising the summed distance to ``points`` (N, d)."""
    guess = points.mean(0)
    for _ in range(max_iter):
        distances = (points - guess).norm(dim=1).clamp_min(1e-12)
        weights = 1.0 / distances
        new_guess = (weights[:, None] * points).sum(0) / weights.sum()
        if (new_guess - guess).norm() < tol:
            return new_guess
        guess = new_guess
    return guess


class InferenceSAE(SparseAutoencoder):
    """An SAE brought in from elsewhere, for analysis only: a ReLU followed by a per-latent
    threshold (zeros for a plain ReLU SAE). Covers SAELens "standard" and "jumprelu" SAEs and
    dictionary_learning's ReLU and JumpReLU autoencoders."""

    def __init__(self, d_in: int, d_sae: int, apply_b_dec_to_input: bool = True,
                 architecture: Literal["standard", "jumprelu"] = "jumprelu"):
        super().__init__(d_in, d_sae)
        self.apply_b_dec_to_input = apply_b_dec_to_input
        self.architecture = architecture
        self.register_buffer("threshold", torch.zeros(d_sae))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        self.check_input(x)
        shifted = x - self.b_dec if self.apply_b_dec_to_input else x
        return torch.relu(shifted @ self.W_enc + self.b_enc)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_activations(x)
        return pre * (pre > self.threshold)

    @torch.no_grad()
    def fold_input_scale(self, scale: float) -> None:
        super().fold_input_scale(scale)
        self.threshold.div_(scale)

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return {**super().export_tensors(), "threshold": self.threshold.clone()}

    def export_config(self) -> dict[str, Any]:
        return {
            "class": type(self).__name__,
            "d_in": self.d_in,
            "d_sae": self.d_sae,
            "apply_b_dec_to_input": self.apply_b_dec_to_input,
            "architecture": self.architecture,
        }


class DeadLatentCounter:
    """Mixin for an SAE module: counts, per latent, the tokens since it last fired. A latent
    silent for ``config.dead_after_tokens`` tokens is dead (AuxK trains those; the training
    statistics report how many). Call :meth:`add_dead_latent_counter` in ``__init__``."""

    def add_dead_latent_counter(self, d_sae: int) -> None:
        self.register_buffer("tokens_since_fired", torch.zeros(d_sae, dtype=torch.long))

    @torch.no_grad()
    def record_firing(self, fired: torch.Tensor, n_tokens: int) -> None:
        """``fired`` (d_sae,) bool: which latents fired at least once in a batch of ``n_tokens``."""
        self.tokens_since_fired.copy_(torch.where(fired, 0, self.tokens_since_fired + n_tokens))

    @torch.no_grad()
    def count_firing(self, acts: torch.Tensor) -> torch.Tensor:
        """:meth:`record_firing` from a batch's (B, d_sae) codes; returns the number of dead latents."""
        self.record_firing(acts.amax(0) > 0, acts.shape[0])  # (d_sae,), no (B, d_sae) temporary
        return self.n_dead()

    def dead_latents(self) -> torch.Tensor:
        """(d_sae,) bool: the latents silent for ``dead_after_tokens`` tokens or more."""
        return self.tokens_since_fired >= self.config.dead_after_tokens

    def n_dead(self) -> torch.Tensor:
        """The number of dead latents, as a 0-dim tensor (no host sync)."""
        return self.dead_latents().sum()


class UnitNormSAE(DeadLatentCounter, SparseAutoencoder):
    """Base of the SAEs whose decoder rows stay at unit norm (Matryoshka and BatchTopK, TopK,
    Gated, JumpReLU, P-annealing). The paper's init: Kaiming-uniform decoder rows scaled to unit
    norm, ``W_enc = W_dec.T``, ``b_enc = 0``, ``b_dec`` = geometric median of the first batch.
    During training each row's gradient loses its norm-changing part, and rows are renormalised
    after every step. ``config`` needs ``d_in``, ``d_sae``, ``seed`` and ``dead_after_tokens``."""

    def __init__(self, config: Any):
        super().__init__(config.d_in, config.d_sae)
        self.config = config
        # the generator that drew the init; its stream continues (Matryoshka samples prefixes from it)
        self.init_generator = init_tied_unit_norm(self, config.seed)
        self.add_dead_latent_counter(config.d_sae)

    def initialize_from_batch(self, x: torch.Tensor) -> None:
        with torch.no_grad():
            self.b_dec.copy_(geometric_median(x))

    @torch.no_grad()  # W_dec requires grad: without this the gradients would chain step to step
    def before_optimizer_step(self) -> None:
        """Remove the part of each decoder row's gradient that would change its norm."""
        W, grad = self.W_dec, self.W_dec.grad
        if grad is not None:
            grad.sub_((grad * W).sum(1, keepdim=True) * W)

    @torch.no_grad()
    def after_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Put every decoder row back at unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True))

    def export_config(self) -> dict[str, Any]:
        return {"class": type(self).__name__, **asdict(self.config)}

    def import_tensors(self, tensors: dict[str, torch.Tensor], where: Any = "weights") -> None:
        """Load the tensors :meth:`export_tensors` wrote (used by ``msae.io.load_sae``)."""
        load_named_tensors(self, tensors, list(self.export_tensors()), where)
