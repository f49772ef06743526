"""Per-text residual-stream activations, for the probing evaluations (sparse probing, SCR, TPP)
and for looking at which tokens of a story a latent fires on.

Unlike :mod:`msae.data.activations` (documents packed into contexts, for training), every text here
is its own row: tokenised alone, truncated to ``context_size`` and right-padded, as SAEBench
does for its probing datasets. Per row we keep

- ``tokens (N, ctx)`` and ``mask (N, ctx)``: the tokens that count, i.e. real tokens that are not
  special (BOS/EOS/PAD, as SAEBench masks them) and not among the first ``exclude_first``
  positions (without a BOS the first token is an attention sink with a huge norm, and the SAEs
  never saw it in training: :func:`msae.data.activations.keep_mask` drops it too);
- ``resid (N, ctx, d_model)`` at the hook point, zero outside ``mask``;
- ``token_concepts (N, ctx, n_concepts)``: which concept tags of the story's labelled spans
  cover each token (a token is tagged when its character span overlaps the tagged span), with
  each tag's family added (``"name:Lily"`` also gives ``"name"``);
- ``labels``: one dict per text (the story's labels).

``pooled`` and ``pooled_resid`` give the per-text means over masked tokens the evals use.
"""

from __future__ import annotations

import hashlib
import json
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from ..files import atomic_write, waiting_lock
from .stories import corpus_fingerprint, generate_stories

FORMAT = "msae-text-activations-1"

Span = tuple[int, int, Sequence[str]]  # (start_char, end_char, tags)


@dataclass
class TextActivations:
    """N texts, one per row, with their residual-stream activations and concept tags (see the
    module docstring). ``save`` and ``load`` write and read one file.

    Attributes:
        tokens: (N, ctx) long token ids, right-padded.
        mask: (N, ctx) bool, the tokens that count.
        resid: (N, ctx, d_model) activations at the hook point, zero outside ``mask``
            (float16 to save memory).
        concepts: the concept tags, in the order of ``token_concepts``' last axis.
        token_concepts: (N, ctx, n_concepts) bool, which concepts cover each token.
        labels: one dict per text (for a story, :attr:`msae.data.stories.Story.labels`).
        texts: the texts.
        hook_name: the hook point ``resid`` was read at.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    resid: torch.Tensor
    concepts: list[str]
    token_concepts: torch.Tensor
    labels: list[dict[str, Any]]
    texts: list[str]
    hook_name: str = ""

    def __post_init__(self):
        n, ctx = self.tokens.shape
        if self.mask.shape != (n, ctx) or self.resid.shape[:2] != (n, ctx):
            raise ValueError(
                f"tokens {tuple(self.tokens.shape)}, mask {tuple(self.mask.shape)} and resid "
                f"{tuple(self.resid.shape)} must agree on (N, ctx)"
            )
        if self.token_concepts.shape != (n, ctx, len(self.concepts)):
            raise ValueError(
                f"token_concepts has shape {tuple(self.token_concepts.shape)}, expected {(n, ctx, len(self.concepts))}"
            )
        if len(self.labels) != n or len(self.texts) != n:
            raise ValueError(f"{len(self.labels)} labels and {len(self.texts)} texts for {n} rows")

    @property
    def n_texts(self) -> int:
        return self.tokens.shape[0]

    @property
    def d_model(self) -> int:
        return self.resid.shape[-1]

    def concept_mask(self, concept: str) -> torch.Tensor:
        """(N, ctx) bool: the tokens tagged with ``concept``."""
        if concept not in self.concepts:
            raise ValueError(f"unknown concept {concept!r}; known: {', '.join(self.concepts[:20])}, ...")
        return self.token_concepts[..., self.concepts.index(concept)]

    def save(self, path: str | Path) -> None:
        """One ``torch.save`` file, written atomically. Concept tags are stored as the indices
        of their non-zero entries (most tokens carry none)."""
        state = {
            "format": FORMAT,
            "tokens": self.tokens.to(torch.int32),
            "mask": self.mask,
            "resid": self.resid,
            "concepts": list(self.concepts),
            "concept_entries": self.token_concepts.nonzero().to(torch.int32),  # (n_tagged, 3)
            "labels": self.labels,
            "texts": self.texts,
            "hook_name": self.hook_name,
        }
        atomic_write(Path(path), lambda f: torch.save(state, f))

    @classmethod
    def load(cls, path: str | Path) -> TextActivations:
        try:
            state = torch.load(Path(path), map_location="cpu", weights_only=True)
        except (RuntimeError, pickle.UnpicklingError, EOFError) as error:
            raise ValueError(f"{path} is not a text-activations file: {error}") from error
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise ValueError(f"{path} is not a text-activations file (expected format {FORMAT!r})")
        n, ctx = state["tokens"].shape
        token_concepts = torch.zeros(n, ctx, len(state["concepts"]), dtype=torch.bool)
        entries = state["concept_entries"].long()
        token_concepts[entries[:, 0], entries[:, 1], entries[:, 2]] = True
        return cls(state["tokens"].long(), state["mask"], state["resid"], state["concepts"], token_concepts,
                   state["labels"], state["texts"], state["hook_name"])


def concept_families(tags: Sequence[str]) -> set[str]:
    """The tags and their families: ``"name:Lily"`` -> {"name:Lily", "name"}."""
    return {t for tag in tags for t in (tag, tag.split(":", 1)[0])}


@torch.no_grad()
def collect_text_activations(
    model,
    hook_name: str,
    texts: Sequence[str],
    context_size: int = 128,
    batch_size: int = 16,
    spans: Sequence[Sequence[Span]] | None = None,
    labels: Sequence[dict[str, Any]] | None = None,
    progress: bool = True,
    exclude_first: int = 1,
    dtype: torch.dtype = torch.float16,
) -> TextActivations:
    """Run ``model`` (a HookedTransformer) over each text and keep the residual stream at
    ``hook_name``. ``spans`` (one list per text, as ``Story.spans``) give the concept tags."""
    from .models import check_hook_name

    texts = list(texts)
    n = len(texts)
    if n == 0:
        raise ValueError("no texts to run")
    if spans is not None and len(spans) != n:
        raise ValueError(f"{len(spans)} span lists for {n} texts")
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} label dicts for {n} texts")
    if context_size < 1 or batch_size < 1 or exclude_first < 0:
        raise ValueError(f"context_size and batch_size must be positive and exclude_first >= 0, got "
                         f"{context_size}, {batch_size}, {exclude_first}")
    layer = check_hook_name(model, hook_name)
    tokenizer = model.tokenizer
    encoded = tokenizer(texts, truncation=True, max_length=context_size, return_offsets_mapping=True)
    ids = encoded["input_ids"]
    lengths = torch.tensor([len(row) for row in ids])
    ctx = max(1, int(lengths.max()))
    pad_id = next(i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if i is not None)

    tokens = torch.full((n, ctx), pad_id, dtype=torch.long)
    for i, row in enumerate(ids):
        tokens[i, : len(row)] = torch.tensor(row, dtype=torch.long)
    positions = torch.arange(ctx)
    real = positions < lengths[:, None]  # (N, ctx)
    special = torch.tensor(sorted(set(tokenizer.all_special_ids)), dtype=torch.long)
    mask = real & ~torch.isin(tokens, special) & (positions >= exclude_first)

    # Longest texts first: each batch is padded only to its own longest text. Right padding
    # under causal attention leaves the real tokens' activations unchanged.
    order = torch.argsort(lengths, descending=True, stable=True)
    resid = torch.zeros(n, ctx, model.cfg.d_model, dtype=dtype)
    bar = tqdm(total=n, desc="text activations", unit="text", disable=not progress, mininterval=2.0)
    with bar:
        for start in range(0, n, batch_size):
            rows = order[start : start + batch_size]
            width = max(1, int(lengths[rows].max()))
            chunk = tokens[rows, :width].to(model.cfg.device)
            _, cache = model.run_with_cache(chunk, names_filter=hook_name, stop_at_layer=layer + 1)
            acts = cache[hook_name].float().cpu() * mask[rows, :width, None]  # (b, width, d_model)
            converted = acts.to(dtype)
            if not torch.isfinite(converted).all():
                raise ValueError(f"activations at {hook_name} overflow {dtype}; collect with dtype=torch.float32")
            resid[rows, :width] = converted
            bar.update(len(rows))

    concepts, token_concepts = _token_concepts(encoded["offset_mapping"], spans, n, ctx)
    return TextActivations(tokens, mask, resid, concepts, token_concepts,
                           [dict(d) for d in labels] if labels is not None else [{} for _ in range(n)],
                           texts, hook_name)


def _token_concepts(offsets, spans, n: int, ctx: int) -> tuple[list[str], torch.Tensor]:
    """Concept names and (N, ctx, n_concepts) bool: token [a, b) is tagged by span [s, e) when
    they overlap (a < e and s < b); special and padding tokens have empty offsets and never are."""
    if spans is None:
        return [], torch.zeros(n, ctx, 0, dtype=torch.bool)
    concepts = sorted(set().union(*(concept_families(tags) for text_spans in spans for _, _, tags in text_spans)))
    index = {c: j for j, c in enumerate(concepts)}
    token_concepts = torch.zeros(n, ctx, len(concepts), dtype=torch.bool)
    for i, text_spans in enumerate(spans):
        if not text_spans or not offsets[i]:
            continue
        token_bounds = torch.tensor(offsets[i])  # (L, 2)
        span_bounds = torch.tensor([(s, e) for s, e, _ in text_spans])  # (S, 2)
        starts_before_end = token_bounds[:, None, 0] < span_bounds[None, :, 1]  # (L, S)
        ends_after_start = span_bounds[None, :, 0] < token_bounds[:, None, 1]
        overlap = starts_before_end & ends_after_start
        incidence = torch.zeros(len(text_spans), len(concepts))  # (S, C)
        for j, (_, _, tags) in enumerate(text_spans):
            incidence[j, [index[c] for c in concept_families(tags)]] = 1.0
        token_concepts[i, : len(token_bounds)] = (overlap.float() @ incidence) > 0
    return concepts, token_concepts


def story_activations(
    model,
    hook_name: str,
    n_stories: int,
    seed: int,
    context_size: int,
    cache_dir: str | Path,
    model_name: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    exclude_first: int = 1,
) -> TextActivations:
    """Activations of ``generate_stories(n_stories, seed)``, cached under ``cache_dir`` by a key
    of the model, hook, corpus, context size and ``exclude_first`` (the corpus fingerprint
    changes whenever the generator's word lists or templates do)."""
    cfg = model.cfg
    key_content = {
        "format": FORMAT,
        "model": model_name or cfg.model_name,
        "model_shape": [cfg.d_model, cfg.n_layers, cfg.d_vocab],
        "hook_name": hook_name,
        "n_stories": n_stories,
        "seed": seed,
        "context_size": context_size,
        "corpus": corpus_fingerprint(n_stories, seed),
    }
    if exclude_first != 1:  # in the key only when not the old default, so caches made before keep their name
        key_content["exclude_first"] = exclude_first
    key = hashlib.sha256(json.dumps(key_content, sort_keys=True).encode()).hexdigest()[:12]
    path = Path(cache_dir) / f"story_activations_{key}.pt"
    with waiting_lock(path.parent / f".{path.name}.lock"):  # another process collecting them: wait, then reuse
        if path.is_file():
            return TextActivations.load(path)
        stories = generate_stories(n_stories, seed)
        acts = collect_text_activations(
            model, hook_name, [s.text for s in stories], context_size, batch_size,
            spans=[s.spans for s in stories], labels=[s.labels for s in stories], progress=progress,
            exclude_first=exclude_first,
        )
        acts.save(path)
    return acts


# --- SAE latents per token and per text ---------------------------------------------------------


def kept_chunks(acts: TextActivations, chunk: int):
    """(first_row, kept activations (n_kept, d_model), their row within the chunk) per chunk of texts."""
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    work_dtype = torch.promote_types(acts.resid.dtype, torch.float32)
    for start in range(0, acts.n_texts, chunk):
        mask = acts.mask[start : start + chunk]
        rows = mask.nonzero()[:, 0]
        yield start, acts.resid[start : start + chunk][mask].to(work_dtype), rows, mask.shape[0]


@torch.no_grad()
def encode_tokens(sae, acts: TextActivations, chunk: int = 64, latents: Sequence[int] | None = None) -> torch.Tensor:
    """(n_kept_tokens, d_sae) latent activations of the masked tokens, rows in the order of
    ``acts.mask.nonzero()``. ``latents`` keeps only those columns (a dense matrix of every
    latent of every token of a few thousand stories takes gigabytes)."""
    keep = None if latents is None else torch.as_tensor(list(latents), dtype=torch.long)
    out = []
    for _, x, _, _ in kept_chunks(acts, chunk):
        f = sae.encode(x)  # (n_kept, d_sae)
        out.append(f if keep is None else f[:, keep])
    return torch.cat(out)


@torch.no_grad()
def pooled(sae, acts: TextActivations, chunk: int = 64) -> torch.Tensor:
    """(N, d_sae) mean of each text's latent activations over its masked tokens (a text with
    no masked token pools to zeros)."""
    counts = acts.mask.sum(1, keepdim=True).clamp_min(1)
    out = torch.zeros(acts.n_texts, sae.d_sae, dtype=torch.promote_types(acts.resid.dtype, torch.float32))
    for start, x, rows, size in kept_chunks(acts, chunk):
        f = sae.encode(x)  # (n_kept, d_sae)
        out[start : start + size].index_add_(0, rows, f.to(out.dtype))
    return out / counts.to(out.dtype)


@torch.no_grad()
def pooled_resid(acts: TextActivations, chunk: int = 256) -> torch.Tensor:
    """(N, d_model) mean of each text's residual stream over its masked tokens."""
    counts = acts.mask.sum(1, keepdim=True).clamp_min(1)
    work_dtype = torch.promote_types(acts.resid.dtype, torch.float32)
    sums = [acts.resid[s : s + chunk].to(work_dtype).sum(1) for s in range(0, acts.n_texts, chunk)]  # resid is 0 off-mask
    return torch.cat(sums) / counts.to(work_dtype)
