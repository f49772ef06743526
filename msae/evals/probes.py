"""Logistic-regression probes, fitted the way SAEBench fits them; shared by the probing
evaluations (:mod:`msae.evals.probing`).

A probe is a :class:`LinearProbe`, ``logit = x @ weight + bias`` on raw inputs. SAEBench
(adamkarvonen/SAEBench, ``sae_bench/evals/sparse_probing/probe_training.py``) fits probes in two
ways, and so does this module:

- :func:`fit_sklearn_probe` is ``train_sklearn_probe``: scikit-learn's ``LogisticRegression``
  (L2 penalty, ``C = 1``, lbfgs, ``max_iter = 1000``, sklearn's other defaults) on the raw
  features cast to float32. SAEBench uses it for the k-sparse probes of sparse probing (on k
  SAE latents, and on k model dimensions).
- :func:`fit_adamw_probe` is ``train_probe_gpu``: a linear layer initialised as
  ``torch.nn.Linear`` (weight, then bias, uniform in ``±1/sqrt(d)``), trained on minibatches of
  a fresh permutation of the training set each epoch, on mean binary cross-entropy plus
  ``l1_penalty * sum|weight|``, with AdamW at torch's defaults (weight decay 0.01 on weight and
  bias). Inputs are not standardised: the probe lives in the raw activation space, where
  ``weight . W_dec[j]`` says how a latent moves it. After each epoch the probe is scored on a
  selection set, which in SAEBench is the evaluation's test set; the best epoch is kept (the
  first, on ties) and training stops after ``patience`` epochs without improvement. Two
  recipes: :data:`LLM_PROBE` for sparse probing's probe on all model activations and
  :data:`SCR_TPP_PROBE` for the SCR and TPP probes (``ScrAndTppEvalConfig``'s defaults).

:func:`fit_adamw_probe` draws from a ``torch.Generator`` seeded with ``seed`` what
``train_probe_gpu`` draws from the global generator, in the same order (init, then one
permutation per epoch): with the global generator seeded alike, SAEBench returns the same probe
on the same data, bit for bit on one CPU thread (checked against SAEBench 8042bb3), to float32
rounding otherwise. On a CPU the fit runs on one thread (minibatches this small gain nothing
from more, and lose much on a busy machine).

Differences from SAEBench:

- Randomness: SAEBench seeds the global generator once per SAE (``random_seed = 42``) and every
  probe draws from it in turn, after the data sampling's own draws; here each fit has its own
  ``torch.Generator``, so a probe depends on its seed only, not on what ran before it.
- Precision: SAEBench's torch probes train in the model's dtype (bfloat16 for Gemma-2); here in
  float32 (float64 for float64 inputs). :class:`LinearProbe` computes logits in float64, so a
  prediction can differ from SAEBench's float32 one only where ``|logit|`` is at rounding level.
- sklearn 1.8 deprecated ``penalty="l2"``; :func:`fit_sklearn_probe` passes ``l1_ratio=0``, the
  same objective and solver.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression


@dataclass
class LinearProbe:
    """``logit = x @ weight + bias`` on raw inputs.

    Attributes:
        weight: (d,) float64.
        bias: the intercept.
    """

    weight: torch.Tensor
    bias: float

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64) @ self.weight.to(x.device) + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (self.logits(x) > 0).long()

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        if x.ndim != 2 or x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"the probe reads (n, {self.weight.shape[0]}) inputs, got {tuple(x.shape)}")
        y = check_labels(y, len(x), binary=True).to(x.device)
        return float((self.predict(x) == y).double().mean())


# --- scikit-learn ----------------------------------------------------------------------------


def fit_sklearn_probe(x: torch.Tensor, y: torch.Tensor, C: float = 1.0, max_iter: int = 1000,
                      class_weight: str | dict | None = None) -> LinearProbe:
    """sklearn's ``LogisticRegression(C=C, l1_ratio=0, max_iter=max_iter, class_weight=class_weight)``
    fitted on raw ``x (n, d)`` cast to float32; ``y (n,)`` holds 0/1. SAEBench's defaults."""
    _check_binary_problem(x, y)
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    model = LogisticRegression(C=C, l1_ratio=0.0, max_iter=max_iter, class_weight=class_weight)
    model.fit(x.detach().to(torch.float32).cpu().numpy(), torch.as_tensor(y).long().cpu().numpy())
    return LinearProbe(torch.from_numpy(model.coef_[0].astype(np.float64)), float(model.intercept_[0]))


# --- AdamW on minibatches --------------------------------------------------------------------


@dataclass(frozen=True)
class AdamWRecipe:
    """How :func:`fit_adamw_probe` trains.

    Attributes:
        batch_size: examples per step; the last batch of an epoch takes the remainder.
        epochs: passes over the training set at most.
        lr: AdamW's learning rate.
        l1_penalty: weight of ``sum|weight|`` in the loss (the bias is not in it).
        patience: stop after this many epochs without a better selection accuracy.
        weight_decay: AdamW's decoupled weight decay (torch's default, which SAEBench keeps).
    """

    batch_size: int
    epochs: int
    lr: float
    l1_penalty: float = 0.0
    patience: int = 10
    weight_decay: float = 0.01

    def __post_init__(self):
        if self.batch_size < 1 or self.epochs < 1 or self.patience < 1:
            raise ValueError(f"batch_size, epochs and patience must be at least 1, got {self}")
        if self.lr <= 0 or self.l1_penalty < 0 or self.weight_decay < 0:
            raise ValueError(f"lr must be positive and l1_penalty, weight_decay non-negative, got {self}")


# sparse_probing/main.py: the probe on all model activations (and on all SAE latents).
LLM_PROBE = AdamWRecipe(batch_size=250, epochs=100, lr=1e-2, l1_penalty=0.0, patience=10)
# scr_and_tpp/eval_config.py: probe_train_batch_size, probe_epochs, probe_lr, probe_l1_penalty,
# early_stopping_patience (equal to the epochs: it never stops early).
SCR_TPP_PROBE = AdamWRecipe(batch_size=16, epochs=20, lr=1e-3, l1_penalty=1e-3, patience=20)


class AdamWFit(NamedTuple):
    """What :func:`fit_adamw_probe` returns.

    Attributes:
        probe: the best epoch's probe (the last epoch's without a selection set).
        selection_accuracy: the selection set's accuracy after each epoch that ran; empty
            without a selection set.
    """

    probe: LinearProbe
    selection_accuracy: list[float]


def fit_adamw_probe(
    x: torch.Tensor,
    y: torch.Tensor,
    recipe: AdamWRecipe,
    seed: int = 0,
    select_on: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> AdamWFit:
    """A probe on raw ``x (n, d)`` with 0/1 ``y (n,)``, trained by ``recipe``. ``select_on``:
    ``(x, y)`` scored after each epoch to keep the best epoch and stop early, as SAEBench does
    with its test set; without it the last epoch's probe is kept."""
    _check_binary_problem(x, y)
    if select_on is not None:
        check_features(select_on[0], "the selection set")
        if select_on[0].shape[1] != x.shape[1]:
            raise ValueError(f"the selection set has width {select_on[0].shape[1]}, the training set {x.shape[1]}")
        select_y = check_labels(select_on[1], len(select_on[0]), binary=True).to(x.device)
    dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.detach().to(dtype)
    target = torch.as_tensor(y).to(device=x.device, dtype=dtype)
    n, d = x.shape
    generator = torch.Generator().manual_seed(seed)  # on the CPU, as torch.nn.Linear's init and randperm
    weight = torch.empty(1, d, dtype=dtype)
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)  # uniform in ±1/sqrt(d)
    bias = torch.empty(1, dtype=dtype).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d), generator=generator)
    weight, bias = weight.to(x.device).requires_grad_(), bias.to(x.device).requires_grad_()
    optimizer = torch.optim.AdamW([weight, bias], lr=recipe.lr, weight_decay=recipe.weight_decay)

    best, best_accuracy, waited, history = None, 0.0, 0, []
    with torch.enable_grad(), one_cpu_thread(x.device):
        for _ in range(recipe.epochs):
            order = torch.randperm(n, generator=generator).to(x.device)
            for start in range(0, n, recipe.batch_size):
                batch = order[start:start + recipe.batch_size]
                logits = F.linear(x[batch], weight, bias).squeeze(-1)  # (B,)
                loss = F.binary_cross_entropy_with_logits(logits, target[batch])
                if recipe.l1_penalty:
                    loss = loss + recipe.l1_penalty * weight.abs().sum()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if select_on is None:
                continue
            with torch.no_grad():
                predictions = (F.linear(select_on[0].to(device=x.device, dtype=dtype), weight, bias).squeeze(-1) > 0)
                accuracy = float((predictions.long() == select_y).double().mean())
            history.append(accuracy)
            if accuracy > best_accuracy:
                best, best_accuracy, waited = (weight.detach().clone(), bias.detach().clone()), accuracy, 0
            else:
                waited += 1
            if waited >= recipe.patience:
                break
    final_weight, final_bias = best if best is not None else (weight.detach(), bias.detach())
    return AdamWFit(LinearProbe(final_weight[0].to(torch.float64), float(final_bias[0])), history)


@contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Minibatches of 16 to 250 rows are too small to share between threads: on a 2-core CPU
    with another process running, 1000 steps took 0.3 s on one thread and 8 to 24 s on two."""
    if device.type != "cpu":
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# --- input checks ----------------------------------------------------------------------------


def check_features(x: torch.Tensor, name: str) -> None:
    """Raise unless ``x`` is a non-empty, finite (n, d) tensor."""
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a non-empty (n, d) tensor, got {shape}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def check_labels(y: torch.Tensor, n: int, binary: bool) -> torch.Tensor:
    """``y`` as (n,) long class ids; 0/1 when ``binary``."""
    y = torch.as_tensor(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"labels must have shape ({n},), got {tuple(y.shape)}")
    if y.is_floating_point() and not bool((y == y.round()).all()):
        raise ValueError("labels must be integers")
    y = y.long()
    if binary and not bool(((y == 0) | (y == 1)).all()):
        raise ValueError(f"binary labels must be 0 or 1, got values {sorted(set(y.tolist()))[:10]}")
    if not binary and bool((y < 0).any()):
        raise ValueError("class labels must be non-negative")
    return y


def _check_binary_problem(x: torch.Tensor, y: torch.Tensor) -> None:
    check_features(x, "x")
    y = check_labels(y, len(x), binary=True)
    if not bool((y == 0).any() and (y == 1).any()):
        raise ValueError("a probe needs examples of both classes (labels 0 and 1)")
