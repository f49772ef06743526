"""Evaluating an SAE inside the language model it was trained on (SAEBench's core metrics).

``EvalSet`` holds a fixed batch of held-out contexts with the residual stream at the hook
point, computed once; every SAE is then scored on the same tokens:

- L0, fraction of latents alive, firing frequency per latent, variance explained;
- cross-entropy of next-token prediction with the SAE's reconstruction spliced in at the hook
  (``ce_sae``), against the clean model (``ce_clean``) and the hook zeroed (``ce_zero``), and
  loss recovered ``(ce_zero - ce_sae) / (ce_zero - ce_clean)``.

Only kept positions (not special tokens, not the first position of a context) are replaced and
scored; the model runs from the hook's layer onwards (``start_at_layer``), not from scratch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from . import metrics
from .activations import CorpusConfig, iter_contexts, iter_documents, keep_mask
from .lm import check_hook_name


@dataclass
class EvalSet:
    tokens: torch.Tensor  # (N, ctx) long
    keep: torch.Tensor  # (N, ctx) bool: positions that are replaced and scored
    resid: torch.Tensor  # (N, ctx, d_model) the clean residual stream at the hook
    layer: int  # the hook's block
    hook_name: str
    ce_clean: float
    ce_zero: float

    @property
    def x(self) -> torch.Tensor:
        """(n_kept, d_model) the activations an SAE sees."""
        return self.resid[self.keep]


@torch.no_grad()
def build_eval_set(
    model, hook_name: str, corpus: CorpusConfig, n_contexts: int, context_size: int, exclude_first: int = 1,
    prepend_bos: bool = False, batch_contexts: int = 8,
) -> EvalSet:
    layer = check_hook_name(model, hook_name)
    contexts = [c for _, c in zip(range(n_contexts), iter_contexts(iter_documents(corpus), model.tokenizer, context_size, prepend_bos))]
    if len(contexts) < n_contexts:
        raise ValueError(f"the evaluation corpus gave {len(contexts)} contexts, {n_contexts} were asked for")
    tokens = torch.stack(contexts)
    keep = keep_mask(tokens, sorted(set(model.tokenizer.all_special_ids)), exclude_first)
    resid = []
    for start in range(0, n_contexts, batch_contexts):
        chunk = tokens[start : start + batch_contexts].to(model.cfg.device)
        _, cache = model.run_with_cache(chunk, names_filter=hook_name, stop_at_layer=layer + 1)
        resid.append(cache[hook_name].float().cpu())
    resid = torch.cat(resid)
    partial = EvalSet(tokens, keep, resid, layer, hook_name, float("nan"), float("nan"))
    ce_clean = cross_entropy_with(model, partial, resid[keep], batch_contexts)
    ce_zero = cross_entropy_with(model, partial, torch.zeros_like(resid[keep]), batch_contexts)
    return EvalSet(tokens, keep, resid, layer, hook_name, ce_clean, ce_zero)


@torch.no_grad()
def cross_entropy_with(model, eval_set: EvalSet, replacement: torch.Tensor, batch_contexts: int = 8) -> float:
    """Mean next-token cross-entropy over kept positions, with the residual stream at kept
    positions replaced by ``replacement`` (n_kept, d_model)."""
    resid = eval_set.resid.clone()
    resid[eval_set.keep] = replacement.to(resid.dtype)
    total, count = 0.0, 0
    for start in range(0, resid.shape[0], batch_contexts):
        chunk = resid[start : start + batch_contexts].to(model.cfg.device)
        logits = model(chunk, start_at_layer=eval_set.layer + 1).float().cpu()  # (b, ctx, vocab)
        tokens = eval_set.tokens[start : start + batch_contexts]
        scored = eval_set.keep[start : start + batch_contexts, :-1]  # predictions made at kept positions
        losses = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1), reduction="none")
        total += float(losses[scored.reshape(-1)].sum())
        count += int(scored.sum())
    return total / count


def loss_recovered(ce_sae: float, ce_clean: float, ce_zero: float) -> float:
    return (ce_zero - ce_sae) / (ce_zero - ce_clean)


@torch.no_grad()
def evaluate_sae(sae, model, eval_set: EvalSet, prefix_ends: list[int] | None = None) -> dict:
    """The core metrics of ``sae`` on ``eval_set``; with ``prefix_ends``, also those of each
    prefix (the first m latents alone, with the same codes)."""
    sae = sae.to("cpu").eval()
    x = eval_set.x
    acts = sae.encode(x)  # (n_kept, d_sae)
    result = _reconstruction_metrics(sae, model, eval_set, acts)
    result.update(
        fraction_alive=metrics.fraction_alive(acts),
        mean_max_cosine=metrics.mean_max_decoder_cosine(sae.W_dec),
        frequency=(acts != 0).float().mean(0).tolist(),
    )
    if prefix_ends:
        result["prefixes"] = []
        for end in prefix_ends:
            truncated = acts.clone()
            truncated[:, end:] = 0
            result["prefixes"].append({"width": end, **_reconstruction_metrics(sae, model, eval_set, truncated)})
    return result


def _reconstruction_metrics(sae, model, eval_set: EvalSet, acts: torch.Tensor) -> dict:
    x_hat = sae.decode(acts)
    ce_sae = cross_entropy_with(model, eval_set, x_hat)
    return {
        "l0": metrics.l0(acts),
        "variance_explained": metrics.variance_explained(eval_set.x, x_hat),
        "ce_clean": eval_set.ce_clean,
        "ce_zero": eval_set.ce_zero,
        "ce_sae": ce_sae,
        "loss_recovered": loss_recovered(ce_sae, eval_set.ce_clean, eval_set.ce_zero),
    }
