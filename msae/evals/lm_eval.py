"""Evaluating an SAE inside the language model it was trained on (SAEBench's core metrics).

``EvalSet`` holds a fixed batch of held-out contexts with the residual stream at the hook
point, computed once; every SAE is then scored on the same tokens:

- L0, fraction of latents alive, firing frequency per latent, variance explained;
- cross-entropy of next-token prediction with the SAE's reconstruction spliced in at the hook
  (``ce_sae``), against the clean model (``ce_clean``) and the hook zeroed (``ce_zero``), and
  loss recovered ``(ce_zero - ce_sae) / (ce_zero - ce_clean)``;
- the KL divergence of the spliced model's next-token distribution from the clean model's
  (``kl_sae``, SAEBench's other downstream metric): unlike CE it cannot fall below the clean
  model's, so it says how far the reconstruction moves the predictions whichever way CE moves.

:func:`splice_controls` puts the SAE's CE and KL beside those of other lossy replacements
(a PCA reconstruction with the same variance explained, the clean activations plus noise as
large as the SAE's error), to tell what about the SAE moves them.

Only kept positions (not special tokens, not the first position of a context) are replaced and
scored; the model runs from the hook's layer onwards (``start_at_layer``), not from scratch.
"""

from __future__ import annotations

from collections.abc import Sequence
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
@torch.no_grad()
def read_contexts(
    model, hook_name: str, corpus: CorpusConfig, n_contexts: int, context_size: int, exclude_first: int = 1,
    prepend_bos: bool = False, batch_contexts: int = 8,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """The first ``n_contexts`` contexts of ``corpus`` run up to the hook: ``(tokens (N, ctx),
    keep (N, ctx) bool, resid (N, ctx, d_model) float32, the hook's layer)``."""
    layer = check_hook_name(model, hook_name)
    contexts = [c for _, c in zip(range(n_contexts), iter_contexts(iter_documents(corpus), model.tokenizer, context_size, prepend_bos))]
    if len(contexts) < n_contexts:
        raise ValueError(f"the corpus gave {len(contexts)} contexts of {context_size} tokens, {n_contexts} were asked for")
    tokens = torch.stack(contexts)
    keep = keep_mask(tokens, sorted(set(model.tokenizer.all_special_ids)), exclude_first)
    resid = []
    for start in range(0, n_contexts, batch_contexts):
        chunk = tokens[start : start + batch_contexts].to(model.cfg.device)
        _, cache = model.run_with_cache(chunk, names_filter=hook_name, stop_at_layer=layer + 1)
        resid.append(cache[hook_name].float().cpu())
    return tokens, keep, torch.cat(resid), layer


def build_eval_set(
    model, hook_name: str, corpus: CorpusConfig, n_contexts: int, context_size: int, exclude_first: int = 1,
    prepend_bos: bool = False, batch_contexts: int = 8,
) -> EvalSet:
    tokens, keep, resid, layer = read_contexts(model, hook_name, corpus, n_contexts, context_size, exclude_first,
                                               prepend_bos, batch_contexts)
    partial = EvalSet(tokens, keep, resid, layer, hook_name, float("nan"), float("nan"))
    ce_clean = cross_entropy_with(model, partial, resid[keep], batch_contexts)
    ce_zero = cross_entropy_with(model, partial, torch.zeros_like(resid[keep]), batch_contexts)
    return EvalSet(tokens, keep, resid, layer, hook_name, ce_clean, ce_zero)


def _logits_from(model, eval_set: EvalSet, resid: torch.Tensor) -> torch.Tensor:
    """(b, ctx, vocab) float32 logits of the model run on from the hook with ``resid`` (b, ctx, d_model)."""
    return model(resid.to(model.cfg.device), start_at_layer=eval_set.layer + 1).float().cpu()


def _chunks(eval_set: EvalSet, batch_contexts: int):
    """(contexts slice, kept-rows slice, scored (b, ctx-1) bool) per chunk of contexts: the kept
    rows are those of ``eval_set.x`` in the chunk, the scored positions the predictions made at
    kept positions."""
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), eval_set.keep.sum(1).cumsum(0)])
    for start in range(0, eval_set.resid.shape[0], batch_contexts):
        end = min(start + batch_contexts, eval_set.resid.shape[0])
        yield slice(start, end), slice(int(offsets[start]), int(offsets[end])), eval_set.keep[start:end, :-1]


@torch.no_grad()
def cross_entropy_with(model, eval_set: EvalSet, replacement: torch.Tensor, batch_contexts: int = 8) -> float:
    """Mean next-token cross-entropy over kept positions, with the residual stream at kept
    positions replaced by ``replacement`` (n_kept, d_model)."""
    total, count = 0.0, 0
    for contexts, rows, scored in _chunks(eval_set, batch_contexts):
        resid = eval_set.resid[contexts].clone()
        resid[eval_set.keep[contexts]] = replacement[rows].to(resid.dtype)
        logits = _logits_from(model, eval_set, resid)[:, :-1]
        losses = F.cross_entropy(logits[scored], eval_set.tokens[contexts, 1:][scored], reduction="sum")
        total += float(losses)
        count += int(scored.sum())
    return total / count


@torch.no_grad()
def spliced_losses(
    model, eval_set: EvalSet, replacements: Sequence[torch.Tensor], batch_contexts: int = 8
) -> list[dict[str, float]]:
    """For each (n_kept, d_model) replacement: ``ce``, the mean next-token cross-entropy with it
    spliced in at kept positions, and ``kl``, the mean KL divergence ``KL(clean || spliced)`` of
    the next-token distributions, both over the predictions made at kept positions. The clean
    logits are computed once per chunk and shared by all replacements."""
    ce = [0.0] * len(replacements)
    kl = [0.0] * len(replacements)
    count = 0
    for contexts, rows, scored in _chunks(eval_set, batch_contexts):
        clean = eval_set.resid[contexts]
        clean_logp = F.log_softmax(_logits_from(model, eval_set, clean)[:, :-1][scored], dim=-1)  # (m, vocab)
        targets = eval_set.tokens[contexts, 1:][scored]
        for i, replacement in enumerate(replacements):
            resid = clean.clone()
            resid[eval_set.keep[contexts]] = replacement[rows].to(resid.dtype)
            logp = F.log_softmax(_logits_from(model, eval_set, resid)[:, :-1][scored], dim=-1)
            ce[i] += float(F.nll_loss(logp, targets, reduction="sum"))
            kl[i] += float(F.kl_div(logp, clean_logp, log_target=True, reduction="sum"))
        count += int(scored.sum())
    return [{"ce": c / count, "kl": k / count} for c, k in zip(ce, kl)]


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
    losses = spliced_losses(model, eval_set, x_hats)
    result = _reconstruction_metrics(eval_set, x_hats[-1], l0s[-1] / len(x), losses[-1])
    result.update(
        fraction_alive=float((frequency > 0).float().mean()),
        mean_max_cosine=metrics.mean_max_decoder_cosine(sae.W_dec),
        frequency=frequency.tolist(),
    )
    if prefix_ends:
        result["prefixes"] = [
            {"width": width, **_reconstruction_metrics(eval_set, x_hat, l0 / len(x), loss)}
            for width, x_hat, l0, loss in zip(widths[:-1], x_hats[:-1], l0s[:-1], losses[:-1])
        ]
    return result


def _reconstruction_metrics(eval_set: EvalSet, x_hat: torch.Tensor, l0: float, losses: dict[str, float]) -> dict:
    return {
        "l0": l0,
        "variance_explained": metrics.variance_explained(eval_set.x, x_hat),
        "ce_clean": eval_set.ce_clean,
        "ce_zero": eval_set.ce_zero,
        "ce_sae": losses["ce"],
        "kl_sae": losses["kl"],
        "loss_recovered": loss_recovered(losses["ce"], eval_set.ce_clean, eval_set.ce_zero),
    }


def pca_reconstruction(x: torch.Tensor, min_variance_explained: float) -> tuple[torch.Tensor, int]:
    """``x`` (n, d) projected onto its top principal components (about its mean), as few as
    explain at least ``min_variance_explained`` of its variance (``metrics.variance_explained``).
    Returns the reconstruction and the number of components."""
    x64 = x.double()
    mean = x64.mean(0)
    _, _, vh = torch.linalg.svd(x64 - mean, full_matrices=False)  # rows of vh: principal directions
    for m in range(1, vh.shape[0] + 1):
        basis = vh[:m]
        x_hat = (x64 - mean) @ basis.T @ basis + mean
        if metrics.variance_explained(x64, x_hat) >= min_variance_explained:
            return x_hat.to(x.dtype), m
    return x, vh.shape[0]


@torch.no_grad()
def splice_controls(sae, model, eval_set: EvalSet, seed: int = 0) -> dict[str, dict[str, float]]:
    """CE and KL with the SAE's reconstruction spliced in, beside three controls on the same
    tokens: ``clean`` (the activations themselves: CE ``ce_clean``, KL 0), ``pca`` (the PCA
    reconstruction with at least the SAE's variance explained) and ``noise`` (the clean
    activations plus isotropic Gaussian noise scaled, token by token, to the norm of the SAE's
    error there). Each entry: ``ce``, ``kl``, ``variance_explained`` (and ``n_components`` for
    ``pca``). If PCA also lowers CE below clean, any reconstruction of that quality does; if
    noise of the same size raises it, the direction of the SAE's error matters."""
    x = eval_set.x
    param = next(sae.parameters())
    x_sae = torch.cat([sae.decode(sae.encode(x[i : i + 4096].to(param.device))).float().cpu()
                       for i in range(0, len(x), 4096)])
    variance_explained = metrics.variance_explained(x, x_sae)
    x_pca, n_components = pca_reconstruction(x, variance_explained)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    error_norm = (x - x_sae).norm(dim=1, keepdim=True)
    x_noise = x + noise / noise.norm(dim=1, keepdim=True) * error_norm
    replacements = {"clean": x, "sae": x_sae, "pca": x_pca, "noise": x_noise}
    losses = spliced_losses(model, eval_set, list(replacements.values()))
    out = {name: {**loss, "variance_explained": metrics.variance_explained(x, r)}
           for (name, r), loss in zip(replacements.items(), losses)}
    out["pca"]["n_components"] = n_components
    return out
