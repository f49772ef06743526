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

from ..data.activations import CorpusConfig, iter_contexts, iter_documents, keep_mask
from ..data.models import check_hook_name
from . import metrics


@dataclass
class EvalSet:
    """Held-out contexts and their clean activations, built once by :func:`build_eval_set`.

    Attributes:
        tokens: (N, ctx) long token ids.
        keep: (N, ctx) bool, the positions that are replaced and scored.
        resid: (N, ctx, d_model) the clean residual stream at the hook.
        layer: the hook's block; the model reruns from the next one.
        hook_name: the hook point, e.g. "blocks.12.hook_resid_post".
        ce_clean: the clean model's mean next-token cross-entropy (nats) of the predictions
            made at kept positions.
        ce_zero: the same with the hook's activations at kept positions set to zero.
    """

    tokens: torch.Tensor
    keep: torch.Tensor
    resid: torch.Tensor
    layer: int
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
def evaluate_sae(sae, model, eval_set: EvalSet, prefix_ends: list[int] | None = None, chunk: int = 4096) -> dict:
    """The core metrics of ``sae`` on ``eval_set``; with ``prefix_ends``, also those of each
    prefix (the first m latents alone, with the same codes). Tokens are encoded ``chunk`` at a
    time on the SAE's device, so wide dictionaries fit in memory."""
    sae.eval()
    device = next(sae.parameters()).device
    x = eval_set.x
    widths = list(prefix_ends or []) + [sae.d_sae]
    x_hats = [torch.empty_like(x) for _ in widths]  # one reconstruction per prefix, then the full one
    l0s = [0.0 for _ in widths]
    fired = torch.zeros(sae.d_sae)
    for start in range(0, len(x), chunk):
        acts = sae.encode(x[start : start + chunk].to(device))  # (chunk, d_sae)
        fired += (acts != 0).sum(0).float().cpu()
        for i, width in enumerate(widths):
            kept = acts[:, :width]
            l0s[i] += float((kept != 0).sum())
            x_hats[i][start : start + chunk] = (kept @ sae.W_dec[:width] + sae.b_dec).cpu()
    frequency = fired / len(x)
    result = _reconstruction_metrics(model, eval_set, x_hats[-1], l0s[-1] / len(x))
    result.update(
        fraction_alive=float((frequency > 0).float().mean()),
        mean_max_cosine=metrics.mean_max_decoder_cosine(sae.W_dec),
        frequency=frequency.tolist(),
    )
    if prefix_ends:
        result["prefixes"] = [
            {"width": width, **_reconstruction_metrics(model, eval_set, x_hat, l0 / len(x))}
            for width, x_hat, l0 in zip(widths[:-1], x_hats[:-1], l0s[:-1])
        ]
    return result


def _reconstruction_metrics(model, eval_set: EvalSet, x_hat: torch.Tensor, l0: float) -> dict:
    ce_sae = cross_entropy_with(model, eval_set, x_hat)
    return {
        "l0": l0,
        "variance_explained": metrics.variance_explained(eval_set.x, x_hat),
        "ce_clean": eval_set.ce_clean,
        "ce_zero": eval_set.ce_zero,
        "ce_sae": ce_sae,
        "loss_recovered": loss_recovered(ce_sae, eval_set.ce_clean, eval_set.ce_zero),
    }
