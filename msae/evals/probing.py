"""Probing evaluations of an SAE on mean-pooled activations: SAEBench's sparse probing, SCR
(spurious correlation removal) and TPP (targeted probe perturbation).

Every function here is pure, on pooled tensors: per-text residual streams ``resid (n, d_model)``
and SAE latents ``latents (n, d_sae)`` (each a mean over the text's kept tokens, from
:func:`msae.data.story_activations.pooled_resid` and :func:`msae.data.story_activations.pooled`), labels
``(n,)`` and the SAE's decoder ``W_dec (d_sae, d_model)``.

Definitions (adamkarvonen/SAEBench, ``evals/sparse_probing`` and ``evals/scr_and_tpp``):

- Sparse probing: rank latents by |mean over positives - mean over negatives| on the training
  set, fit a logistic regression on the top k, report test accuracy (k = 1, 2, 5); a probe on
  the model's activations is the reference.
- SCR: a probe trained on a biased set, where the target (profession) and the spurious attribute
  (gender) are perfectly correlated, reads some of both. Latents are ranked for the spurious
  attribute by ``|mean difference on the balanced set| * |w_spurious . W_dec[j]|``, with
  ``w_spurious`` a probe for the spurious attribute trained on balanced data; the top n are
  ablated; the biased probe is scored on the target's balanced test set:
  ``(A_ablated - A_base) / (A_oracle - A_base)``, ``A_oracle`` being a target probe trained on
  balanced data (0 when ``A_oracle - A_base < 0.001``). SAEBench also runs the reverse direction
  (ablate target latents, score on the spurious attribute) and reports, as its SCR metric, the
  direction whose biased probe is worse on the data it is scored on before ablation: direction 1
  when the biased probe leans on the spurious attribute, as it does on Bias in Bios.
- TPP: per class a one-vs-rest probe (negatives sampled from the other classes, as many as the
  positives). Latents are ranked for class c by ``max(mean difference, 0) * (w_c . W_dec[j])``;
  ablating class c's top n should lower c's probe accuracy and leave the others alone: TPP =
  mean over classes of (c's accuracy drop - mean drop of the other probes).

Ablation zeroes the chosen latents and keeps the SAE's error term, so per token
``x' = x - f_S @ W_dec[S]``; see :func:`ablate`. Only latents with a non-zero effect are ablated
(as SAEBench: ``n`` is an upper bound).

Differences from SAEBench: every probe is an L2-regularised logistic regression (sklearn's
objective, ``C = 1``) fit by full-batch LBFGS in float64 on standardised features, and all
sampling uses a seeded ``torch.Generator``. SAEBench fits sparse probes with sklearn on raw
features and the model-activation probes with minibatch AdamW (with early stopping on the test
set).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

SPARSE_PROBING_KS = (1, 2, 5)
ABLATION_N_VALUES = (2, 5, 10, 20, 50, 100, 500)
MIN_SCR_DENOMINATOR = 0.001  # SAEBench: a score of 0 when the oracle barely beats the base


# --- logistic-regression probes ---------------------------------------------------------------


@dataclass
class LinearProbe:
    """``logit = x @ weight + bias`` on raw (unstandardised) inputs.

    Attributes:
        weight: (d,) float64.
        bias: the intercept.
    """

    weight: torch.Tensor
    bias: float

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        return x.to(torch.float64) @ self.weight + self.bias

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return (self.logits(x) > 0).long()

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        if x.ndim != 2 or x.shape[1] != self.weight.shape[0]:
            raise ValueError(f"the probe reads (n, {self.weight.shape[0]}) inputs, got {tuple(x.shape)}")
        y = _check_labels(y, len(x), binary=True)
        return float((self.predict(x) == y).double().mean())


def train_probe(x: torch.Tensor, y: torch.Tensor, C: float = 1.0, max_iter: int = 500) -> LinearProbe:
    """Logistic regression minimising ``C * sum(log-loss) + |w|^2 / 2`` (sklearn's objective;
    the bias is not penalised) on features standardised with the training mean and std. The
    returned probe acts on raw ``x (n, d)``; ``y (n,)`` holds 0/1."""
    _check_features(x, "x")
    y = _check_labels(y, len(x), binary=True)
    if not bool((y == 0).any() and (y == 1).any()):
        raise ValueError("a probe needs examples of both classes (labels 0 and 1)")
    if C <= 0:
        raise ValueError(f"C must be positive, got {C}")
    x64 = x.detach().to(torch.float64)
    mean = x64.mean(0)
    std = x64.std(0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # constant features stay at 0 after centring
    z = (x64 - mean) / std  # (n, d)
    target = y.to(torch.float64)
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    penalty = 1.0 / (2.0 * C * len(x))  # the objective divided by C * n
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, tolerance_grad=1e-10,
                                  tolerance_change=1e-14, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.binary_cross_entropy_with_logits(z @ w + b, target) + penalty * (w @ w)
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    weight = w.detach() / std
    return LinearProbe(weight, float(b.detach() - weight @ mean))


# --- sparse probing ---------------------------------------------------------------------------


def mean_difference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(d,) mean of ``x`` over positives minus mean over negatives."""
    y = _check_labels(y, len(x), binary=True)
    return x[y == 1].mean(0) - x[y == 0].mean(0)


def top_k_by_mean_difference(x: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    """(k,) indices of the features with the largest |mean difference| between the classes."""
    return torch.argsort(mean_difference(x, y).abs(), descending=True, stable=True)[:k]


def sparse_probing(
    latents_train: torch.Tensor,
    y_train: torch.Tensor,
    latents_test: torch.Tensor,
    y_test: torch.Tensor,
    ks: Sequence[int] = SPARSE_PROBING_KS,
    resid_train: torch.Tensor | None = None,
    resid_test: torch.Tensor | None = None,
    C: float = 1.0,
    resid_probe: LinearProbe | None = None,
) -> dict[str, Any]:
    """Test accuracy of a probe on the top-k latents, per k; with ``resid_*`` also of a probe on
    the model's activations (``llm_accuracy``; pass ``resid_probe`` to reuse a trained one)."""
    if not ks or min(ks) < 1 or max(ks) > latents_train.shape[1]:
        raise ValueError(f"ks must be in 1..d_sae={latents_train.shape[1]}, got {list(ks)}")
    _check_same_width(latents_train, latents_test, "latents")
    order = top_k_by_mean_difference(latents_train, y_train, max(ks))
    accuracy, chosen_latents = {}, {}
    for k in ks:
        chosen = order[:k]
        probe = train_probe(latents_train[:, chosen], y_train, C)
        accuracy[str(k)] = probe.accuracy(latents_test[:, chosen], y_test)
        chosen_latents[str(k)] = chosen.tolist()
    result: dict[str, Any] = {"sae_top_k_accuracy": accuracy, "sae_top_k_latents": chosen_latents}
    if resid_train is not None and resid_test is not None:
        probe = resid_probe if resid_probe is not None else train_probe(resid_train, y_train, C)
        result["llm_accuracy"] = probe.accuracy(resid_test, y_test)
    return result


# --- ablation ---------------------------------------------------------------------------------


def ablate(resid: torch.Tensor, latents: torch.Tensor, W_dec: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """``resid - latents[:, chosen] @ W_dec[chosen]``: zero-ablate latents, keep the SAE's error.

    Per token, SAEBench replaces ``x`` by ``decode(f with f_S = 0) + (x - decode(f))``, which is
    ``x - f_S @ W_dec[S]`` (b_dec cancels). That is linear in (x, f), and the probes read the
    mean over tokens of the same layer, so ablating the pooled latents of the pooled activations
    equals ablating every token and then pooling.
    """
    if resid.shape[0] != latents.shape[0] or latents.shape[1] != W_dec.shape[0] or resid.shape[1] != W_dec.shape[1]:
        raise ValueError(
            f"resid {tuple(resid.shape)}, latents {tuple(latents.shape)} and W_dec {tuple(W_dec.shape)} "
            "must be (n, d_model), (n, d_sae) and (d_sae, d_model)"
        )
    if len(chosen) == 0:
        return resid
    W = W_dec.detach().to(resid.dtype)
    return resid - latents[:, chosen].to(resid.dtype) @ W[chosen]


def top_n_latents(effects: torch.Tensor, n: int) -> torch.Tensor:
    """Indices of the ``n`` largest effects among the non-zero ones (fewer when fewer are)."""
    k = min(n, int((effects != 0).sum()))
    return torch.topk(effects, k).indices if k else torch.zeros(0, dtype=torch.long)


def scr_latent_effects(latents: torch.Tensor, y: torch.Tensor, probe: LinearProbe, W_dec: torch.Tensor) -> torch.Tensor:
    """(d_sae,) |mean difference of each latent between the classes x its decoder row's
    projection on the probe|: how much ablating it moves the probe's mean logit gap."""
    return (mean_difference(latents, y).double() * _decoder_projection(probe, W_dec)).abs()


def tpp_latent_effects(latents: torch.Tensor, y: torch.Tensor, probe: LinearProbe, W_dec: torch.Tensor) -> torch.Tensor:
    """(d_sae,) like :func:`scr_latent_effects`, for latents more active on the positive class
    only, signed: latents that push the probe towards the class rank first."""
    return mean_difference(latents, y).double().clamp_min(0) * _decoder_projection(probe, W_dec)


def _decoder_projection(probe: LinearProbe, W_dec: torch.Tensor) -> torch.Tensor:
    if W_dec.shape[1] != probe.weight.shape[0]:
        raise ValueError(f"W_dec has rows of width {W_dec.shape[1]}, the probe reads width {probe.weight.shape[0]}")
    return W_dec.detach().to(torch.float64) @ probe.weight  # (d_sae,)


# --- SCR --------------------------------------------------------------------------------------


class PooledSplit(NamedTuple):
    """Pooled activations of a set of texts and their labels.

    Attributes:
        resid: (n, d_model) pooled residual-stream activations.
        latents: (n, d_sae) pooled SAE latents; None where not needed (the biased training set).
        labels: (n,) class ids.
    """

    resid: torch.Tensor
    latents: torch.Tensor | None
    labels: torch.Tensor


def train_scr_probes(biased_train: PooledSplit, target_train: PooledSplit, spurious_train: PooledSplit,
                     C: float = 1.0) -> dict[str, LinearProbe]:
    """The three model-activation probes SCR uses; the same for every SAE."""
    return {
        "biased": train_probe(biased_train.resid, biased_train.labels, C),
        "target": train_probe(target_train.resid, target_train.labels, C),
        "spurious": train_probe(spurious_train.resid, spurious_train.labels, C),
    }


def scr(
    biased_train: PooledSplit,
    target_train: PooledSplit,
    spurious_train: PooledSplit,
    target_test: PooledSplit,
    spurious_test: PooledSplit,
    W_dec: torch.Tensor,
    n_values: Sequence[int] = ABLATION_N_VALUES,
    C: float = 1.0,
    probes: dict[str, LinearProbe] | None = None,
) -> dict[str, Any]:
    """SCR scores per n. Labels: ``biased_train`` 1 = (target 1, spurious 1), 0 = (target 0,
    spurious 0); the balanced sets carry their own attribute's 0/1. ``probes``: a dict reused
    across SAEs (filled with the model-activation probes on first use)."""
    for name, split in (("target_train", target_train), ("spurious_train", spurious_train)):
        if split.latents is None:
            raise ValueError(f"{name} needs pooled latents: they rank the latents to ablate")
    if probes is None:
        probes = {}
    if not probes:
        probes.update(train_scr_probes(biased_train, target_train, spurious_train, C))
    base_target = probes["biased"].accuracy(target_test.resid, target_test.labels)
    base_spurious = probes["biased"].accuracy(spurious_test.resid, spurious_test.labels)
    oracle_target = probes["target"].accuracy(target_test.resid, target_test.labels)
    oracle_spurious = probes["spurious"].accuracy(spurious_test.resid, spurious_test.labels)
    # Direction 1 removes the spurious attribute and scores the target; direction 2 the reverse.
    dir1 = _scr_direction(scr_latent_effects(spurious_train.latents, spurious_train.labels, probes["spurious"], W_dec),
                          target_test, probes["biased"], W_dec, n_values, base_target, oracle_target)
    dir2 = _scr_direction(scr_latent_effects(target_train.latents, target_train.labels, probes["target"], W_dec),
                          spurious_test, probes["biased"], W_dec, n_values, base_spurious, oracle_spurious)
    direction = 1 if base_target <= base_spurious else 2  # SAEBench: the attribute the biased probe reads less
    return {
        "n_values": list(n_values),
        "scr_metric": (dir1 if direction == 1 else dir2)["score"],
        "direction": direction,
        "dir1": dir1,
        "dir2": dir2,
        "base_accuracy_target": base_target,
        "base_accuracy_spurious": base_spurious,
        "oracle_accuracy_target": oracle_target,
        "oracle_accuracy_spurious": oracle_spurious,
    }


def _scr_direction(effects, test: PooledSplit, biased: LinearProbe, W_dec, n_values, base: float, oracle: float):
    if test.latents is None:
        raise ValueError("the SCR test sets need pooled latents")
    ranked = top_n_latents(effects, max(n_values))
    score, ablated_accuracy = {}, {}
    for n in n_values:
        ablated = ablate(test.resid, test.latents, W_dec, ranked[:n])
        accuracy = biased.accuracy(ablated, test.labels)
        ablated_accuracy[str(n)] = accuracy
        score[str(n)] = 0.0 if oracle - base < MIN_SCR_DENOMINATOR else (accuracy - base) / (oracle - base)
    return {"score": score, "ablated_accuracy": ablated_accuracy, "ranked_latents": ranked.tolist()}


# --- TPP --------------------------------------------------------------------------------------


def one_vs_rest_rows(labels: torch.Tensor, positive: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of class ``positive`` and as many rows sampled from the other classes, with 0/1
    labels (SAEBench's one-vs-rest set)."""
    pos = (labels == positive).nonzero()[:, 0]
    others = (labels != positive).nonzero()[:, 0]
    if len(pos) == 0 or len(others) < len(pos):
        raise ValueError(f"class {positive} has {len(pos)} examples and the others {len(others)}: "
                         "one-vs-rest needs at least as many negatives as positives")
    neg = others[torch.randperm(len(others), generator=generator)[: len(pos)]].sort().values
    rows = torch.cat([pos, neg])
    return rows, torch.cat([torch.ones(len(pos), dtype=torch.long), torch.zeros(len(neg), dtype=torch.long)])


def tpp(
    train: PooledSplit,
    test: PooledSplit,
    W_dec: torch.Tensor,
    n_values: Sequence[int] = ABLATION_N_VALUES,
    C: float = 1.0,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    probes: dict[int, LinearProbe] | None = None,
) -> dict[str, Any]:
    """TPP per n on a multi-class task (labels 0..K-1). ``probes``: a dict reused across SAEs
    (filled with the one-vs-rest model-activation probes on first use)."""
    if train.latents is None or test.latents is None:
        raise ValueError("TPP needs pooled latents for the training and test sets")
    train_labels = _check_labels(train.labels, len(train.resid), binary=False)
    test_labels = _check_labels(test.labels, len(test.resid), binary=False)
    classes = sorted(set(train_labels.tolist()))
    if len(classes) < 2 or set(test_labels.tolist()) != set(classes):
        raise ValueError(f"TPP needs the same >= 2 classes in training and test sets, got {classes} "
                         f"and {sorted(set(test_labels.tolist()))}")
    names = [str(c) for c in classes] if class_names is None else [str(class_names[c]) for c in classes]
    generator = torch.Generator().manual_seed(seed)
    train_sets = {c: one_vs_rest_rows(train_labels, c, generator) for c in classes}
    test_sets = {c: one_vs_rest_rows(test_labels, c, generator) for c in classes}
    if probes is None:
        probes = {}
    for c in classes:
        if c not in probes:
            rows, y = train_sets[c]
            probes[c] = train_probe(train.resid[rows], y, C)
    clean = {c: probes[c].accuracy(test.resid[test_sets[c][0]], test_sets[c][1]) for c in classes}

    # Every probe on every test row at once: ablated (n_test, d_model) @ (d_model, K).
    weights = torch.stack([probes[c].weight for c in classes], 1)  # (d_model, K)
    biases = torch.tensor([probes[c].bias for c in classes], dtype=torch.float64)

    def accuracies(resid: torch.Tensor) -> dict[int, float]:
        predictions = (resid.to(torch.float64) @ weights + biases > 0).long()  # (n_test, K)
        return {c: float((predictions[test_sets[c][0], k] == test_sets[c][1]).double().mean())
                for k, c in enumerate(classes)}

    per_class: dict[str, Any] = {}
    for c, name in zip(classes, names):
        rows, y = train_sets[c]
        ranked = top_n_latents(tpp_latent_effects(train.latents[rows], y, probes[c], W_dec), max(n_values))
        total, intended, unintended = {}, {}, {}
        for n in n_values:
            ablated_accuracy = accuracies(ablate(test.resid, test.latents, W_dec, ranked[:n]))
            drop = {j: clean[j] - ablated_accuracy[j] for j in classes}
            others = [drop[j] for j in classes if j != c]
            intended[str(n)] = drop[c]
            unintended[str(n)] = sum(others) / len(others)
            total[str(n)] = intended[str(n)] - unintended[str(n)]
        per_class[name] = {"tpp": total, "intended_drop": intended, "unintended_drop": unintended,
                           "clean_accuracy": clean[c], "ranked_latents": ranked.tolist()}

    def mean_over_classes(key: str) -> dict[str, float]:
        return {str(n): sum(r[key][str(n)] for r in per_class.values()) / len(per_class) for n in n_values}

    return {
        "n_values": list(n_values),
        "tpp": mean_over_classes("tpp"),
        "intended_drop": mean_over_classes("intended_drop"),
        "unintended_drop": mean_over_classes("unintended_drop"),
        "per_class": per_class,
    }


# --- input checks -----------------------------------------------------------------------------


def _check_features(x: torch.Tensor, name: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 2 or x.shape[0] == 0:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a non-empty (n, d) tensor, got {shape}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite values")


def _check_labels(y: torch.Tensor, n: int, binary: bool) -> torch.Tensor:
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


def _check_same_width(train: torch.Tensor, test: torch.Tensor, name: str) -> None:
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(f"{name} train {tuple(train.shape)} and test {tuple(test.shape)} must be (n, d) with the same d")
