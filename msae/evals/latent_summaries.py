"""What one latent does, summarised for a person to read (as SAEDashboard and Neuronpedia show it).

For each latent of an SAE, from its activations on a sample of text (:class:`TextSample`):
its firing frequency, a histogram of its non-zero activations, its top-activating contexts
with the latent's activation on every token of each window, the tokens whose logits its decoder
row promotes and suppresses (through the model's unembedding, without the final norm, as those
tools do) and its Matryoshka group. Computed once per SAE and text and cached as JSON by the
caller (:mod:`msae.experiments.latent_trees`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from ..data.activations import CorpusConfig
from .lm_eval import read_contexts


@dataclass
class SummaryConfig:
    """How much of each latent a summary keeps.

    Attributes:
        n_contexts: top-activating windows kept (at most one per text context).
        tokens_before: tokens shown before the top token of a window.
        tokens_after: tokens shown after it.
        histogram_bins: bins of the histogram of the latent's non-zero activations.
        n_logit_tokens: tokens kept among those its decoder row promotes most (and suppresses most).
    """

    n_contexts: int = 8
    tokens_before: int = 12
    tokens_after: int = 4
    histogram_bins: int = 16
    n_logit_tokens: int = 8


@dataclass
class TextSample:
    """Contexts of text and the residual stream an SAE reads on them.

    Attributes:
        tokens: (N, ctx) long token ids.
        keep: (N, ctx) bool, the positions an SAE is run on (not special tokens or the first).
        resid: (n_kept, d_model) float32 activations at the kept positions, in row-major order.
        n_left_out: positions left out for their outsized norm (``sample_text``'s ``max_norm_ratio``).
    """

    tokens: torch.Tensor
    keep: torch.Tensor
    resid: torch.Tensor
    n_left_out: int = 0

    def __post_init__(self):
        if self.tokens.shape != self.keep.shape:
            raise ValueError(f"tokens {tuple(self.tokens.shape)} and keep {tuple(self.keep.shape)} differ in shape")
        if self.resid.shape[0] != int(self.keep.sum()):
            raise ValueError(f"{self.resid.shape[0]} activation rows for {int(self.keep.sum())} kept positions")

    @property
    def n_tokens(self) -> int:
        return int(self.resid.shape[0])


@torch.no_grad()
def sample_text(model, hook_name: str, corpus: CorpusConfig, n_contexts: int, context_size: int,
                exclude_first: int = 1, prepend_bos: bool = False, batch_contexts: int = 8,
                max_norm_ratio: float | None = None) -> TextSample:
    """The first ``n_contexts`` contexts of ``corpus`` and the activations at ``hook_name`` (the
    model runs up to the hook's block only). ``max_norm_ratio``: also leave out the positions whose
    activation norm exceeds that multiple of the median (attention sinks in mid-context, whose
    norms can be 100x the rest: one of them can be every latent's top context)."""
    tokens, keep, resid, _ = read_contexts(model, hook_name, corpus, n_contexts, context_size, exclude_first,
                                           prepend_bos, batch_contexts)
    resid = resid[keep]
    if max_norm_ratio is not None:
        norms = resid.norm(dim=1)
        normal = norms <= max_norm_ratio * norms.median()
        rows = keep.nonzero()
        keep = keep.clone()
        keep[rows[~normal, 0], rows[~normal, 1]] = False
        resid = resid[normal]
        return TextSample(tokens, keep, resid, int((~normal).sum()))
    return TextSample(tokens, keep, resid)


def token_strings(tokenizer, ids: Sequence[int]) -> dict[int, str]:
    """Each id decoded alone (what it adds to the text, spaces included)."""
    return {int(i): tokenizer.decode([int(i)]) for i in sorted(set(int(i) for i in ids))}


def logit_effects(W_dec: torch.Tensor, W_U: torch.Tensor, n: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The ``n`` token ids each latent's decoder row promotes most and suppresses most through the
    unembedding: ``(top_ids, top_values, bottom_ids, bottom_values)``, each (d_sae, n), values
    the direct logit change per unit activation, largest first (most negative first for bottom).

    Args:
        W_dec: (d_sae, d_model) decoder rows.
        W_U: (d_model, vocab) unembedding.
    """
    if W_dec.shape[1] != W_U.shape[0]:
        raise ValueError(f"decoder rows of width {W_dec.shape[1]} do not match the unembedding's {W_U.shape[0]}")
    n = min(n, W_U.shape[1])
    outs = ([], [], [], [])
    with torch.no_grad():
        for start in range(0, W_dec.shape[0], chunk):
            logits = W_dec[start : start + chunk].float() @ W_U.float()
            top = logits.topk(n, dim=1)
            bottom = logits.topk(n, dim=1, largest=False)
            for out, t in zip(outs, (top.indices, top.values, bottom.indices, bottom.values)):
                out.append(t.cpu().numpy())
    return tuple(np.concatenate(o) for o in outs)  # type: ignore[return-value]


def summarise_latents(codes: sp.spmatrix, sample: TextSample, latents: Sequence[int], strings: dict[int, str],
                      config: SummaryConfig, logits: tuple[np.ndarray, ...] | None = None,
                      groups: Sequence[int] | None = None) -> dict[int, dict]:
    """One summary per latent in ``latents`` (dict keyed by latent index).

    Args:
        codes: (n_kept, d_sae) the SAE's activations on ``sample`` (rows: kept positions in order).
        strings: token id -> text for every id in ``sample.tokens`` and in ``logits``.
        logits: :func:`logit_effects` of the SAE, or None to leave them out.
        groups: the Matryoshka group (1-based) of every latent, or None.
    Each summary: ``latent``, ``group``, ``frequency`` (share of kept tokens where it fires),
    ``max``, ``histogram`` (``edges``, ``counts`` of its non-zero activations), ``contexts``
    (top windows: ``tokens``, ``acts`` of this latent on each, ``peak`` the index of the top
    token) and ``promoted`` / ``suppressed`` ([token, logit change] pairs).
    """
    if codes.shape[0] != sample.n_tokens:
        raise ValueError(f"{codes.shape[0]} rows of codes for a sample of {sample.n_tokens} kept tokens")
    codes = sp.csc_matrix(codes)
    n_ctx, ctx = sample.tokens.shape
    # (context, position) of every kept row, and the row of every kept (context, position)
    where = np.argwhere(sample.keep.numpy())
    row_of = np.full((n_ctx, ctx), -1, dtype=np.int64)
    row_of[where[:, 0], where[:, 1]] = np.arange(len(where))
    tokens = sample.tokens.numpy()
    out = {}
    for latent in latents:
        latent = int(latent)
        column = codes[:, latent]
        rows, values = column.indices, column.data.astype(np.float64)
        nonzero = values > 0
        rows, values = rows[nonzero], values[nonzero]
        order = np.argsort(rows)
        rows, values = rows[order], values[order]
        top = float(values.max()) if len(values) else 0.0
        counts, edges = np.histogram(values, bins=config.histogram_bins, range=(0.0, top if top > 0 else 1.0))
        summary = {
            "latent": latent,
            "group": int(groups[latent]) if groups is not None else None,
            "frequency": len(values) / max(sample.n_tokens, 1),
            "max": top,
            "histogram": {"edges": edges.tolist(), "counts": counts.tolist()},
            "contexts": _top_windows(rows, values, where, row_of, tokens, strings, config),
        }
        if logits is not None:
            top_ids, top_values, bottom_ids, bottom_values = logits
            summary["promoted"] = [[strings[int(i)], float(v)] for i, v in zip(top_ids[latent], top_values[latent])]
            summary["suppressed"] = [[strings[int(i)], float(v)] for i, v in zip(bottom_ids[latent], bottom_values[latent])]
        out[latent] = summary
    return out


def _top_windows(rows: np.ndarray, values: np.ndarray, where: np.ndarray, row_of: np.ndarray, tokens: np.ndarray,
                 strings: dict[int, str], config: SummaryConfig) -> list[dict]:
    """The windows around the latent's largest activations, one per text context, largest first.
    ``rows`` are sorted; ``values`` the latent's activations there."""
    windows, used = [], set()
    for i in np.argsort(-values, kind="stable"):
        context, position = (int(v) for v in where[rows[i]])
        if context in used:
            continue
        used.add(context)
        start = max(0, position - config.tokens_before)
        end = min(tokens.shape[1], position + config.tokens_after + 1)
        window_rows = row_of[context, start:end]
        acts = np.zeros(end - start)
        kept = window_rows >= 0
        found = np.searchsorted(rows, window_rows[kept])
        found_ok = (found < len(rows)) & (rows[np.minimum(found, len(rows) - 1)] == window_rows[kept])
        acts_kept = np.where(found_ok, values[np.minimum(found, len(rows) - 1)], 0.0)
        acts[kept] = acts_kept
        windows.append({
            "tokens": [strings[int(t)] for t in tokens[context, start:end]],
            "acts": [round(float(a), 4) for a in acts],
            "peak": position - start,
        })
        if len(windows) == config.n_contexts:
            break
    return windows
