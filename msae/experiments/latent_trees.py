"""Latent trees of saved SAEs (App. F), with the per-latent summaries a browser shows.

A *tree view* is a :class:`~msae.evals.latent_trees.LatentTree` plus one summary per node
(:mod:`msae.evals.latent_summaries`). It is built from either

- one SAE with several Matryoshka groups (its groups are the levels), or
- a chain of SAEs of increasing width read at the same hook (each one a level), e.g. the
  BatchTopK SAEs trained as wide as each Matryoshka prefix (notebook 06) ending with the
  sweep's BatchTopK SAE: the same view for an SAE without groups.

Any SAE ``msae.io`` can load works (msae's own folders, SAELens folders, dictionary_learning
``ae.pt`` folders); one without recorded groups is a single level unless ``prefix_ends`` says
where its groups end. Summaries are cached per SAE and text sample in
``<sae folder>/../evals/latent_summaries-<sample key>.json``; the text sample (tokens and
activations) in ``<runs>/eval_data/<sample key>/``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.activations import CorpusConfig
from ..evals.latent_summaries import (
    SummaryConfig,
    TextSample,
    logit_effects,
    sample_text,
    summarise_latents,
    token_strings,
)
from ..evals.latent_trees import PAPER_THRESHOLD, LatentTree, Node, build_tree, encode_sparse
from ..files import atomic_write, waiting_lock, write_json
from ..io import load_dictionary_learning, load_sae
from .names import parse_sae_name, sae_name

SUMMARY_VERSION = 1  # bump when a summary's fields change, so old caches are not read


@dataclass
class TreeConfig:
    """One run of the tree notebook: the text the latents are read on and the tree's threshold.

    Attributes:
        n_contexts: contexts of held-out text the latents are read on.
        context_size: tokens per context.
        threshold: the directed masked cosine a latent needs to hang under a parent (paper: 0.6).
        max_norm_ratio: positions whose activation norm exceeds this multiple of the median are
            left out of the sample (mid-context attention sinks; None keeps every position).
        summary: how much of each latent the summaries keep.
    """

    n_contexts: int = 256
    context_size: int = 128
    threshold: float = PAPER_THRESHOLD
    max_norm_ratio: float | None = 10.0
    summary: SummaryConfig = field(default_factory=SummaryConfig)


@dataclass
class TreeView:
    """A tree and what a reader needs to look at its nodes.

    Attributes:
        title: e.g. "Matryoshka, L0 40".
        tree: the tree; node keys "level:latent".
        summaries: node key -> latent summary (every root and every attached node).
        saes: the SAE folder of each level (one folder repeated for a Matryoshka SAE).
        n_tokens: kept tokens of the text sample the latents were read on.
        n_left_out: tokens of the sample left out for their outsized activation norm.
    """

    title: str
    tree: LatentTree
    summaries: dict[str, dict[str, Any]]
    saes: list[str]
    n_tokens: int
    n_left_out: int = 0

    def largest_roots(self, n: int) -> list[Node]:
        """The ``n`` roots with the most descendants (ties: smaller latent first)."""
        roots = [r for r in self.tree.roots() if self.tree.children(r)]
        return sorted(roots, key=lambda r: (-len(self.tree.descendants(r)), r.latent))[:n]

    def to_dict(self) -> dict[str, Any]:
        return {"title": self.title, "tree": self.tree.to_dict(), "summaries": self.summaries, "saes": self.saes,
                "n_tokens": self.n_tokens, "n_left_out": self.n_left_out}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TreeView:
        return cls(data["title"], LatentTree.from_dict(data["tree"]), data["summaries"], data["saes"], data["n_tokens"],
                   int(data.get("n_left_out", 0)))


def sample_key(model_name: str, hook_name: str, corpus: CorpusConfig, config: TreeConfig, exclude_first: int,
               prepend_bos: bool) -> str:
    """A short hash naming the text sample (the summaries' cache key)."""
    fields = {"model": model_name, "hook": hook_name, "corpus": asdict(corpus), "n_contexts": config.n_contexts,
              "context_size": config.context_size, "exclude_first": exclude_first, "prepend_bos": prepend_bos}
    if config.max_norm_ratio is not None:  # absent when None, so samples cached before the option keep their key
        fields["max_norm_ratio"] = config.max_norm_ratio
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def cached_text_sample(model, hook_name: str, corpus: CorpusConfig, config: TreeConfig, folder: str | Path,
                       exclude_first: int = 1, prepend_bos: bool = False) -> TextSample:
    """:func:`~msae.evals.latent_summaries.sample_text`, saved in ``folder`` the first time
    (one process builds it while others wait)."""
    folder = Path(folder)
    path = folder / "text_sample.pt"
    folder.mkdir(parents=True, exist_ok=True)
    with waiting_lock(folder / ".text_sample.lock"):
        if not path.is_file():
            sample = sample_text(model, hook_name, corpus, config.n_contexts, config.context_size, exclude_first,
                                 prepend_bos, max_norm_ratio=config.max_norm_ratio)
            atomic_write(path, lambda f: torch.save({"tokens": sample.tokens, "keep": sample.keep,
                                                     "resid": sample.resid.half(), "n_left_out": sample.n_left_out}, f))
    saved = torch.load(path)
    return TextSample(saved["tokens"], saved["keep"], saved["resid"].float(), int(saved.get("n_left_out", 0)))


def load_any_sae(path: str | Path):
    """An SAE from a SAELens-layout folder (msae's own included) or a dictionary_learning folder."""
    path = Path(path)
    if (path / "ae.pt").is_file():
        return load_dictionary_learning(path)
    return load_sae(path)


def sae_prefix_ends(sae) -> list[int]:
    """Where the SAE's Matryoshka groups end (``[d_sae]`` for an SAE without groups)."""
    config = getattr(sae, "config", None)
    ends = getattr(config, "prefix_ends", None)
    return list(ends) if ends else [sae.d_sae]


def latent_groups(prefix_ends: Sequence[int]) -> list[int]:
    """The 1-based group of every latent."""
    groups, start = [], 0
    for group, end in enumerate(prefix_ends, start=1):
        groups.extend([group] * (end - start))
        start = end
    return groups


def latent_summaries(sae, sae_folder: str | Path, model, sample: TextSample, key: str, config: SummaryConfig,
                     prefix_ends: Sequence[int] | None = None, codes=None) -> dict[int, dict[str, Any]]:
    """Every latent's summary of one SAE on ``sample``, computed once and cached beside the SAE."""
    cache = Path(sae_folder).parent / "evals" / f"latent_summaries-{key}.json"
    settings = {"version": SUMMARY_VERSION, "config": asdict(config),
                "prefix_ends": list(prefix_ends) if prefix_ends else sae_prefix_ends(sae)}
    if cache.is_file():
        saved = json.loads(cache.read_text())
        if saved.get("settings") == settings:
            return {int(k): v for k, v in saved["latents"].items()}
    codes = encode_sparse(sae, sample.resid) if codes is None else codes
    W_U = model.W_U.detach().cpu()
    logits = logit_effects(sae.W_dec.detach().cpu(), W_U, config.n_logit_tokens)
    ids = set(sample.tokens.unique().tolist()) | set(np.concatenate([logits[0].ravel(), logits[2].ravel()]).tolist())
    strings = token_strings(model.tokenizer, sorted(ids))
    summaries = summarise_latents(codes, sample, range(sae.d_sae), strings, config, logits,
                                  latent_groups(settings["prefix_ends"]))
    cache.parent.mkdir(parents=True, exist_ok=True)
    write_json(cache, {"settings": settings, "latents": {str(k): v for k, v in summaries.items()}}, indent=None)
    return summaries


def build_view(title: str, sae_folders: Sequence[str | Path], model, sample: TextSample, key: str, config: TreeConfig,
               prefix_ends: Sequence[int] | None = None) -> TreeView:
    """The tree view of one Matryoshka SAE (one folder) or of a chain of SAEs (several folders,
    narrowest first). ``prefix_ends`` overrides the groups of a single SAE that does not record them."""
    folders = [Path(f) for f in sae_folders]
    if not folders:
        raise ValueError("no SAE folders given")
    saes = [load_any_sae(f).eval() for f in folders]
    for f, sae in zip(folders, saes):
        if sae.d_in != sample.resid.shape[1]:
            raise ValueError(f"the SAE in {f} reads width {sae.d_in}; the text sample has width {sample.resid.shape[1]}")
    codes = [encode_sparse(sae, sample.resid) for sae in saes]
    if len(saes) == 1:
        ends = list(prefix_ends) if prefix_ends else sae_prefix_ends(saes[0])
        starts = [0, *ends[:-1]]
        levels = [codes[0][:, s:e] for s, e in zip(starts, ends)]
        level_latents = [list(range(s, e)) for s, e in zip(starts, ends)]
        names = [f"group {g + 1}" for g in range(len(ends))]
        level_folders = [folders[0]] * len(ends)
        level_saes, level_codes, level_ends = [saes[0]] * len(ends), [codes[0]] * len(ends), [ends] * len(ends)
    else:
        widths = [sae.d_sae for sae in saes]
        if widths != sorted(widths):
            raise ValueError(f"a chain of SAEs goes from narrow to wide, got widths {widths}")
        levels, level_latents = codes, None
        names = [f"{sae.d_sae:,} latents" for sae in saes]
        level_folders, level_saes, level_codes = folders, saes, codes
        level_ends = [sae_prefix_ends(sae) for sae in saes]
    tree = build_tree(levels, level_latents, config.threshold, names)
    summaries: dict[str, dict[str, Any]] = {}
    per_sae: dict[Path, dict[int, dict]] = {}
    for level, (folder, sae, sae_codes, ends) in enumerate(zip(level_folders, level_saes, level_codes, level_ends)):
        if folder not in per_sae:
            per_sae[folder] = latent_summaries(sae, folder, model, sample, key, config.summary, ends, sae_codes)
        for latent in tree.levels[level]:
            node = Node(level, latent)
            if level == 0 or node in tree.parent:
                summaries[node.key] = per_sae[folder][latent]
    return TreeView(title, tree, summaries, [str(f) for f in level_folders], sample.n_tokens, sample.n_left_out)


def cached_view(path: str | Path, build) -> TreeView:
    """The view saved at ``path``, or ``build()`` saved there."""
    path = Path(path)
    if path.is_file():
        return TreeView.from_dict(json.loads(path.read_text()))
    view = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, view.to_dict(), indent=None)
    return view


def comparison_rows(views: dict[str, TreeView]) -> list[dict[str, Any]]:
    """Per view and level: latents, how many attached and their mean similarity."""
    rows = []
    for name, view in views.items():
        for row in view.tree.level_rows():
            rows.append({"tree": name, **row})
    return rows


def root_rows(views: dict[str, TreeView]) -> list[dict[str, Any]]:
    """Per view: roots, roots with children, the largest tree's size and the deepest tree's depth."""
    rows = []
    for name, view in views.items():
        roots = view.tree.roots()
        sizes = [len(view.tree.descendants(r)) for r in roots]
        rows.append({"tree": name, "roots": len(roots), "roots with children": sum(s > 0 for s in sizes),
                     "largest tree": max(sizes, default=0),
                     "deepest": max((view.tree.depth(r) for r in roots), default=0),
                     "latents in trees": sum(sizes)})
    return rows


def sweep_chain(results, k: int) -> list[Path]:
    """The BatchTopK SAEs as wide as each prefix of the sweep's Matryoshka SAE with this k (notebook
    06), narrowest first, then the sweep's BatchTopK SAE with this k: one level each."""
    widths = [p["width"] for p in results.metrics[sae_name("matryoshka", k)]["prefixes"][:-1]]
    by_width = {parse_sae_name(n).prefix_width: n for n in results.metrics if parse_sae_name(n).prefix_width}
    missing = [w for w in widths if w not in by_width]
    if missing:
        raise ValueError(f"no prefix-matched BatchTopK SAE of width {missing} in {results.folder}: run notebook 02 first")
    return [results.sae_path(by_width[w]) for w in widths] + [results.sae_path(sae_name("batchtopk", k))]


def sweep_views(results, config: TreeConfig, runs_dir: str | Path, k: int | None = None) -> dict[str, TreeView]:
    """The tree views of the sweep's Matryoshka SAE (its groups) and of the BatchTopK chain of the
    same L0 (:func:`sweep_chain`), read on the first ``config.n_contexts`` contexts of the sweep's
    held-out text. Each view is cached beside its (largest) SAE; the text sample under
    ``<runs_dir>/eval_data``."""
    sweep = results.config
    k = sweep.matched_k if k is None else k
    key = sample_key(sweep.model_name, sweep.hook_name, sweep.eval_corpus, config, sweep.exclude_first, sweep.prepend_bos)
    sample: list[TextSample] = []

    def text() -> TextSample:
        if not sample:
            sample.append(cached_text_sample(results.model, sweep.hook_name, sweep.eval_corpus, config,
                                             Path(runs_dir) / "eval_data" / f"trees-{key}", sweep.exclude_first,
                                             sweep.prepend_bos))
        return sample[0]

    tag = f"{key}-t{config.threshold:g}-v{SUMMARY_VERSION}"  # the key covers the sample, incl. max_norm_ratio
    matryoshka = results.sae_path(sae_name("matryoshka", k))
    chain = sweep_chain(results, k)
    return {
        "Matryoshka": cached_view(matryoshka.parent / "evals" / f"latent_tree-{tag}.json", lambda: build_view(
            f"Matryoshka, L0 {k}: groups as levels", [matryoshka], results.model, text(), key, config)),
        "BatchTopK": cached_view(chain[-1].parent / "evals" / f"latent_tree_chain-{tag}.json", lambda: build_view(
            f"BatchTopK, L0 {k}: SAEs of each prefix's width as levels", chain, results.model, text(), key, config)),
    }


def verdict_line(views: dict[str, TreeView]) -> str:
    """App. F's claim beside our trees: for each view, how many second-level latents hang under a
    first-level one and the largest tree (the paper shows trees; it gives no number)."""
    from .verdicts import verdict_qualitative

    parts = []
    for name, view in views.items():
        rows = view.tree.level_rows()
        sizes = [len(view.tree.descendants(r)) for r in view.tree.roots()]
        if rows:
            first = rows[0]
            parts.append(f"{name}: {first['attached']} of {first['latents']} latents of level 2 ({first['level']}) under a "
                         f"level-1 latent (mean sim {first['mean score']:.2f}), largest tree {max(sizes, default=0)} latents")
        else:
            parts.append(f"{name}: one level, no tree")
    claim = ("App F, latent trees, Matryoshka vs BatchTopK: paper (qualitative): Matryoshka latents form trees, "
             "general parents above specific children")
    return verdict_qualitative(claim, "; ".join(parts))


def diagnostic_rows(views: dict[str, TreeView]) -> list[dict[str, Any]]:
    """What can distort a tree, per view: the spread of the first level's largest activations
    (the score scales by their ratio), the share of attachments whose score exceeds 1 (the child's
    largest activation dwarfs its parent's), and the token most latents peak on (one token with a
    huge residual norm can be the top context of many latents)."""
    rows = []
    for name, view in views.items():
        roots = [view.summaries[r.key] for r in view.tree.roots()]
        maxima = np.array([s["max"] for s in roots if s["max"] > 0])
        scores = np.array(list(view.tree.score.values()))
        peaks = [s["contexts"][0]["tokens"][s["contexts"][0]["peak"]] for s in view.summaries.values() if s["contexts"]]
        top, count = max(((t, peaks.count(t)) for t in set(peaks)), key=lambda tc: (tc[1], tc[0]), default=("", 0))
        rows.append({
            "tree": name,
            "level-1 max act p10": float(np.percentile(maxima, 10)) if len(maxima) else float("nan"),
            "level-1 max act p90": float(np.percentile(maxima, 90)) if len(maxima) else float("nan"),
            "median score": float(np.median(scores)) if len(scores) else float("nan"),
            "scores > 1": float((scores > 1).mean()) if len(scores) else float("nan"),
            "commonest peak token": repr(top),
            "latents peaking on it": count / max(len(peaks), 1),
        })
    return rows
