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
- TPP: per class a one-vs-rest probe (negatives drawn evenly from the other classes, as many as
  the positives). Latents are ranked for class c by ``max(mean difference, 0) * (w_c . W_dec[j])``;
  ablating class c's top n should lower c's probe accuracy and leave the others alone: TPP =
  mean over classes of (c's accuracy drop - mean drop of the other probes).

Ablation zeroes the chosen latents and keeps the SAE's error term, so per token
``x' = x - f_S @ W_dec[S]``; see :func:`ablate`. Only latents with a non-zero effect are ablated
(as SAEBench: ``n`` is an upper bound).

Probes (:mod:`msae.evals.probes`) are fitted as SAEBench fits them, on raw inputs: the k-sparse
probes with sklearn's ``LogisticRegression`` (``C = 1``, ``max_iter = 1000``); the probe on all
model activations with minibatch AdamW (:data:`~msae.evals.probes.LLM_PROBE`); the SCR and TPP
probes, whose weights rank latents through ``w . W_dec[j]``, with minibatch AdamW and an L1
penalty (:data:`~msae.evals.probes.SCR_TPP_PROBE`). Each AdamW probe keeps its best epoch on the
test set it is scored on, as in SAEBench: the sparse-probing test set, each attribute's balanced
test set, the biased test set for the biased probe (``biased_test``; without one the biased
probe is its last epoch's), and the one-vs-rest test sets for TPP.

Differences from SAEBench: sampling, and each probe's initialisation and shuffles, use their
own seeded ``torch.Generator`` (SAEBench draws all from the global generator, seeded once per
SAE), and the AdamW probes train in float32 (SAEBench: the model's dtype, bfloat16 for Gemma-2).
TPP draws each class's one-vs-rest sets once: the test set serves the probe's epoch selection,
the clean accuracy and every ablation, and the training set also ranks the latents; SAEBench
draws the negatives anew for each of these. SAEBench's full-width probe on all SAE latents and
its k-sparse probes on model dimensions are not computed.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .probes import (
    LLM_PROBE,
    SCR_TPP_PROBE,
    AdamWRecipe,
    LinearProbe,
    check_labels,
    fit_adamw_probe,
    fit_sklearn_probe,
)

SPARSE_PROBING_KS = (1, 2, 5)
ABLATION_N_VALUES = (2, 5, 10, 20, 50, 100, 500)
MIN_SCR_DENOMINATOR = 0.001  # SAEBench: a score of 0 when the oracle barely beats the base


# --- probes -----------------------------------------------------------------------------------


def train_probe(x: torch.Tensor, y: torch.Tensor, C: float = 1.0, max_iter: int = 1000) -> LinearProbe:
    """sklearn's L2 logistic regression on raw ``x (n, d)``, 0/1 ``y (n,)``: SAEBench's k-sparse
    probe (:func:`msae.evals.probes.fit_sklearn_probe`)."""
    return fit_sklearn_probe(x, y, C, max_iter)


def train_llm_probe(resid_train: torch.Tensor, y_train: torch.Tensor, resid_test: torch.Tensor,
                    y_test: torch.Tensor, seed: int = 0) -> LinearProbe:
    """Sparse probing's reference probe on all model activations: minibatch AdamW
    (:data:`~msae.evals.probes.LLM_PROBE`), its best epoch on the test set."""
    _check_same_width(resid_train, resid_test, "resid")
    return fit_adamw_probe(resid_train, y_train, LLM_PROBE, seed, select_on=(resid_test, y_test)).probe


# --- sparse probing ---------------------------------------------------------------------------


def mean_difference(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(d,) mean of ``x`` over positives minus mean over negatives."""
    y = check_labels(y, len(x), binary=True)
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
    seed: int = 0,
) -> dict[str, Any]:
    """Test accuracy of a probe on the top-k latents, per k (:func:`train_probe`, inverse
    regularisation ``C``); with ``resid_*`` also of a probe on the model's activations
    (``llm_accuracy``, :func:`train_llm_probe` seeded with ``seed``; pass ``resid_probe`` to reuse
    a trained one)."""
    if not ks or min(ks) < 1 or max(ks) > latents_train.shape[1]:
        raise ValueError(f"ks must be in 1..d_sae={latents_train.shape[1]}, got {list(ks)}")
    _check_same_width(latents_train, latents_test, "latents")
    order = top_k_by_mean_difference(latents_train, y_train, max(ks))
    accuracy, chosen_latents = {}, {}
    for k in ks:
        chosen = order[:k]
        columns = chosen.sort().values  # SAEBench keeps the chosen latents in index order
        probe = train_probe(latents_train[:, columns], y_train, C)
        accuracy[str(k)] = probe.accuracy(latents_test[:, columns], y_test)
        chosen_latents[str(k)] = chosen.tolist()
    result: dict[str, Any] = {"sae_top_k_accuracy": accuracy, "sae_top_k_latents": chosen_latents}
    if resid_train is not None and resid_test is not None:
        probe = resid_probe if resid_probe is not None else train_llm_probe(resid_train, y_train, resid_test, y_test, seed)
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


def train_scr_probes(
    biased_train: PooledSplit,
    target_train: PooledSplit,
    spurious_train: PooledSplit,
    target_test: PooledSplit,
    spurious_test: PooledSplit,
    biased_test: PooledSplit | None = None,
    recipe: AdamWRecipe = SCR_TPP_PROBE,
    seed: int = 0,
) -> dict[str, LinearProbe]:
    """The three model-activation probes SCR uses, the same for every SAE: each trained by
    ``recipe`` on raw activations and kept at its best epoch on its own test set (the biased
    probe at its last epoch when there is no ``biased_test``). Seeds ``seed``, ``seed + 1`` and
    ``seed + 2`` for the spurious, target and biased probes (SAEBench's order)."""

    def fit(train: PooledSplit, test: PooledSplit | None, probe_seed: int) -> LinearProbe:
        select_on = None if test is None else (test.resid, test.labels)
        return fit_adamw_probe(train.resid, train.labels, recipe, probe_seed, select_on).probe

    spurious = fit(spurious_train, spurious_test, seed)
    target = fit(target_train, target_test, seed + 1)
    return {"biased": fit(biased_train, biased_test, seed + 2), "target": target, "spurious": spurious}


def scr(
    biased_train: PooledSplit,
    target_train: PooledSplit,
    spurious_train: PooledSplit,
    target_test: PooledSplit,
    spurious_test: PooledSplit,
    W_dec: torch.Tensor,
    n_values: Sequence[int] = ABLATION_N_VALUES,
    recipe: AdamWRecipe = SCR_TPP_PROBE,
    seed: int = 0,
    probes: dict[str, LinearProbe] | None = None,
    biased_test: PooledSplit | None = None,
) -> dict[str, Any]:
    """SCR scores per n. Labels: ``biased_train`` and ``biased_test`` 1 = (target 1, spurious 1),
    0 = (target 0, spurious 0); the balanced sets carry their own attribute's 0/1. ``probes``: a
    dict reused across SAEs (filled by :func:`train_scr_probes` with ``recipe``, ``seed`` and
    ``biased_test`` on first use)."""
    for name, split in (("target_train", target_train), ("spurious_train", spurious_train)):
        if split.latents is None:
            raise ValueError(f"{name} needs pooled latents: they rank the latents to ablate")
    if probes is None:
        probes = {}
    if not probes:
        probes.update(train_scr_probes(biased_train, target_train, spurious_train, target_test, spurious_test,
                                       biased_test, recipe, seed))
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
    """Rows of class ``positive`` and as many negatives, with 0/1 labels: SAEBench's one-vs-rest
    set, whose negatives are ``ceil(P / K)`` rows drawn from each of the K other classes, of
    which P (the number of positives) are kept at random."""
    pos = (labels == positive).nonzero()[:, 0]
    other_classes = sorted(set(labels.tolist()) - {positive})
    if len(pos) == 0 or not other_classes:
        raise ValueError(f"class {positive} has {len(pos)} examples and there are {len(other_classes)} other "
                         "classes: one-vs-rest needs both")
    per_class = math.ceil(len(pos) / len(other_classes))
    drawn = []
    for c in other_classes:
        rows_c = (labels == c).nonzero()[:, 0]
        drawn.append(rows_c[torch.randperm(len(rows_c), generator=generator)[:per_class]])
    drawn = torch.cat(drawn)
    if len(drawn) < len(pos):
        raise ValueError(f"class {positive} has {len(pos)} examples; {per_class} from each other class gives "
                         f"only {len(drawn)} negatives (class sizes too uneven for one-vs-rest)")
    neg = drawn[torch.randperm(len(drawn), generator=generator)[: len(pos)]].sort().values
    rows = torch.cat([pos, neg])
    return rows, torch.cat([torch.ones(len(pos), dtype=torch.long), torch.zeros(len(neg), dtype=torch.long)])


def tpp(
    train: PooledSplit,
    test: PooledSplit,
    W_dec: torch.Tensor,
    n_values: Sequence[int] = ABLATION_N_VALUES,
    recipe: AdamWRecipe = SCR_TPP_PROBE,
    seed: int = 0,
    class_names: Sequence[str] | None = None,
    probes: dict[int, LinearProbe] | None = None,
) -> dict[str, Any]:
    """TPP per n on a multi-class task (labels 0..K-1). ``seed`` draws the one-vs-rest sets;
    class c's probe is trained by ``recipe`` with seed ``seed + 1 + c`` and kept at its best
    epoch on c's one-vs-rest test set. ``probes``: a dict reused across SAEs (filled with the
    probes on first use)."""
    if train.latents is None or test.latents is None:
        raise ValueError("TPP needs pooled latents for the training and test sets")
    train_labels = check_labels(train.labels, len(train.resid), binary=False)
    test_labels = check_labels(test.labels, len(test.resid), binary=False)
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
            test_rows, test_y = test_sets[c]
            probes[c] = fit_adamw_probe(train.resid[rows], y, recipe, seed + 1 + c,
                                        select_on=(test.resid[test_rows], test_y)).probe
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


def _check_same_width(train: torch.Tensor, test: torch.Tensor, name: str) -> None:
    if train.ndim != 2 or test.ndim != 2 or train.shape[1] != test.shape[1]:
        raise ValueError(f"{name} train {tuple(train.shape)} and test {tuple(test.shape)} must be (n, d) with the same d")
