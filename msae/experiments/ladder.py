"""A scale ladder (issue 14): BatchTopK and Matryoshka SAEs at the sweep's matched L0 on a grid of
widths and token budgets, to see whether the gap between them shrinks, closes or reverses as the
SAEs move toward the paper's scale (65,536 latents, 500M tokens).

Each token budget is a *rung*: the profile's sweep with ``n_tokens`` set to the budget and
``steps`` scaled so that every rung sees its distinct tokens as many times as the sweep does
(:func:`rung_steps`); everything else (corpus, batch, learning-rate schedule, dead-latent window,
threshold estimate) is the sweep's. A rung is a sweep config, so it lives where that sweep would:
``<runs_dir>/sweeps/<rung.name()>``, its activations in ``<runs_dir>/activations/<key>``. The
rung whose budget is the sweep's own *is* the sweep: its SAEs at the sweep's width are the
sweep's ``batchtopk_k{k}`` and ``matryoshka_k{k}``, found finished and not retrained; its other
widths are named like the scaling study's (``{architecture}_d{width}_k{k}``,
``msae.experiments.names``) and share their configs, so either study reuses the other's SAEs. A
corpus that runs out before a budget gives a smaller rung, with a warning: the same passes over
what it holds, reported at its real size.

``run_ladder`` trains what is missing (resumably: ``msae.training.loop.train_many`` and its
checkpoints, one stream per rung and width, as ``run_sweep`` trains its studies), evaluates each
new SAE on the sweep's held-out tokens (``msae.evals.lm_eval.evaluate_sae``) and returns a
:class:`LadderResults`, whose ``rows(evaluator)`` adds first-letter absorption
(``FeatureEvaluator``, its letter data shared with notebook 07).

The ladder of each profile is in ``msae.experiments.profiles`` (``ladder_config``).
"""

from __future__ import annotations

import json
import os
import statistics
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ..data.activations import ActivationConfig, CachedActivations, LiveActivations, collect_activations
from ..files import atomic_write, write_json
from .feature_evals import flat_columns
from .studies import architecture_fields, scaling_name
from .sweep import SweepConfig, SweepResults, sae_configs, train_and_evaluate
from .verdicts import CLAIMS, observed_direction, verdict

LADDER_ARCHITECTURES = ("batchtopk", "matryoshka")

# Rough rules for the runtime estimate when the sweep's own run does not say (2 CPU cores):
# a BatchTopK step of 2,304 latents on a batch of 1,024 takes 51.7 ms (benchmarks/baseline_speed.py),
# and the step's cost grows with width x batch (the dense encoder matmul dominates it);
SECONDS_PER_LATENT_TOKEN = 51.7e-3 / (2304 * 1024)
# SmolLM2-135M activations are collected at about 870 tokens/s (README).
COLLECTED_TOKENS_PER_SECOND = 870.0


@dataclass
class LadderConfig:
    """The scale ladder of one profile (``msae.experiments.profiles.LADDERS``).

    Attributes:
        widths: the SAE widths (latents) of every rung; the sweep's own width reuses its SAEs.
        token_budgets: distinct training tokens of each rung (its activation cache); the sweep's
            own ``n_tokens`` is the sweep itself.
        k: the L0 (BatchTopK's k) of every SAE; None: the sweep's ``matched_k`` (L0 40 at default).
        architectures: which of "batchtopk" and "matryoshka" to train.
    """

    widths: list[int]
    token_budgets: list[int]
    k: int | None = None
    architectures: list[str] = field(default_factory=lambda: list(LADDER_ARCHITECTURES))

    def __post_init__(self):
        for name in ("widths", "token_budgets"):
            values = getattr(self, name)
            if not values or not all(isinstance(v, int) and v > 0 for v in values):
                raise ValueError(f"{name} must be a non-empty list of positive integers, got {values!r}")
            if len(set(values)) != len(values):
                raise ValueError(f"{name} has repeated values: {values!r}")
        if self.k is not None and not (isinstance(self.k, int) and self.k > 0):
            raise ValueError(f"k must be a positive integer or None (the sweep's matched_k), got {self.k!r}")
        unknown = sorted(set(self.architectures) - set(LADDER_ARCHITECTURES))
        if unknown or not self.architectures:
            raise ValueError(f"architectures must be some of {list(LADDER_ARCHITECTURES)}, got {self.architectures!r}")


def rung_steps(sweep: SweepConfig, tokens: int) -> int:
    """Training steps at a budget of ``tokens``: the sweep's steps scaled by ``tokens / n_tokens``,
    so every rung makes the same number of passes over its data as the sweep (2.5 at default:
    1,500 steps of 1,024 on 600k tokens). Equal epochs keep overfitting out of the comparison: a
    bigger budget means more distinct data *and* proportionally more steps, as in the paper,
    whose SAEs see each token about once."""
    return max(1, round(sweep.steps * tokens / sweep.n_tokens))


def rung_config(sweep: SweepConfig, tokens: int) -> SweepConfig:
    """The sweep at a budget of ``tokens``: equal to ``sweep`` at its own ``n_tokens``."""
    return replace(sweep, n_tokens=tokens, steps=rung_steps(sweep, tokens))


def ladder_k(sweep: SweepConfig, ladder: LadderConfig) -> int:
    return ladder.k if ladder.k is not None else sweep.matched_k


def ladder_sae_fields(rung: SweepConfig, architecture: str, width: int, k: int) -> tuple[str, dict[str, Any]]:
    """``(name, fields)`` of one ladder SAE: at the rung's own width (and a k of its sweep) the main
    sweep's SAE, field for field, so the sweep's rung finds it trained; elsewhere the scaling
    study's SAE of that width (its Matryoshka groups follow the sweep's fractions)."""
    name = scaling_name(rung, architecture, width, k)
    if width == rung.d_sae and k in rung.k_values:
        return name, sae_configs(rung)[name]
    return name, architecture_fields(rung, architecture, width, k)


def rung_saes(rung: SweepConfig, ladder: LadderConfig, k: int) -> dict[str, dict[str, Any]]:
    """Every ladder SAE of one rung, ``{name: fields}`` (:func:`ladder_sae_fields`), by width then
    architecture: what ``run_ladder`` trains there, ``estimate_runtime`` and the plan
    (``msae.experiments.pipeline``) count."""
    return dict(ladder_sae_fields(rung, architecture, width, k) for width in sorted(ladder.widths)
                for architecture in ladder.architectures)


def link_smaller_cache(config: ActivationConfig, cache_root: str | Path) -> int:
    """Before collecting ``config``'s activations, link in the shards another complete cache of the
    same text, model and hook already holds (one that differs only in ``n_tokens``): shard i is
    the same contexts run the same way in both, and ``collect_activations`` skips a shard whose
    file exists. Saves the sweep's 600k tokens (~11 min on 2 cores) when the 3M rung is collected.
    Returns the number of tokens linked."""
    cache_root = Path(cache_root)
    folder = cache_root / config.key()
    donors = _compatible_caches(config, cache_root)
    if (folder / "meta.json").is_file() or not donors:
        return 0
    _, donor, meta = max(donors, key=lambda d: d[0])
    folder.mkdir(parents=True, exist_ok=True)
    linked = 0
    for shard in meta["shards"]:
        if linked >= config.n_tokens:
            break
        for name in (shard["tokens_file"], shard["file"]):  # the activations last, as collect_activations writes them
            target = folder / name
            if not target.exists():
                try:
                    os.link(donor / name, target)
                except FileExistsError:  # another rank linked it first (msae.distributed)
                    pass
                except OSError:  # another file system, or no hard links there
                    atomic_write(target, lambda f, source=donor / name: f.write(source.read_bytes()))
        linked += shard["n_tokens"]
    return linked


@dataclass
class Rung:
    """One token budget of a trained ladder.

    Attributes:
        tokens: its distinct training tokens: the budget, or what the corpus held when that is less.
        token_budget: the budget asked for (``LadderConfig.token_budgets``).
        results: the rung's sweep folder and metrics (the sweep's own at its budget).
        names: the ladder's SAEs in it, by width then architecture.
        tokens_collected: distinct tokens in its activation cache (whole shards: a little over
            the budget; under it when the corpus ran out); None for a live stream.
    """

    tokens: int
    token_budget: int
    results: SweepResults
    names: list[str]
    tokens_collected: int | None

    @property
    def epochs(self) -> float | None:
        """Passes over the distinct tokens the SAEs make."""
        config = self.results.config
        return config.steps * config.batch_size / self.tokens_collected if self.tokens_collected else None


class LadderResults:
    """The trained ladder: one :class:`Rung` per token budget, in increasing order."""

    def __init__(self, ladder: LadderConfig, k: int, rungs: list[Rung]):
        self.ladder, self.k, self.rungs = ladder, k, rungs

    def rows(self, evaluator=None) -> list[dict[str, Any]]:
        """One flat record per SAE, by tokens, width, architecture: ``sae``, ``architecture``,
        ``width``, ``k``, ``tokens`` (:attr:`Rung.tokens`), ``token_budget``, ``tokens_collected``,
        ``steps``, ``epochs``,
        the sweep's metrics (``l0``, ``variance_explained``, ``ce_sae``, ``kl_sae``, ...) and,
        with a ``FeatureEvaluator``, absorption's columns (``absorption``: SAEBench's score,
        None where it declines to score; ``absorption_all_letters``: the diagnostic mean over
        every letter; ``absorption_scored``, ``split_latents``, ...), computed once per SAE and
        cached in its folder."""
        rows = []
        for rung in self.rungs:
            # the evaluator's letter data and probes serve every rung; results are cached in the rung's folder
            absorption = ({name: evaluator.evaluate(name, "absorption", rung.results) for name in rung.names}
                          if evaluator is not None else {})
            for row in rung.results.rows(rung.names):
                row.update(tokens=rung.tokens, token_budget=rung.token_budget, tokens_collected=rung.tokens_collected,
                           steps=rung.results.config.steps, epochs=rung.epochs)
                if row["sae"] in absorption:
                    row.update(flat_columns("absorption", absorption[row["sae"]]))
                rows.append(row)
        return sorted(rows, key=lambda r: (r["tokens"], r["width"], r["architecture"]))

    def sae_path(self, tokens: int, name: str) -> Path:
        return next(r for r in self.rungs if r.tokens == tokens).results.sae_path(name)


def run_ladder(results: SweepResults, ladder: LadderConfig, runs_dir: str | Path, progress: bool = True) -> LadderResults:
    """Train (or finish) and evaluate every SAE of ``ladder`` beside the sweep of ``results``
    (which carries the model, from ``run_sweep``); SAEs already trained and evaluated, the
    sweep's own among them, are read back."""
    sweep, model = results.config, results.model
    if model is None:
        raise ValueError("the sweep results carry no model: get them from msae.experiments.sweep.run_sweep")
    runs_dir = Path(runs_dir)
    k = ladder_k(sweep, ladder)
    rungs = []
    for tokens in sorted(ladder.token_budgets):
        rung = rung_config(sweep, tokens)
        collected = cache = None
        if rung.storage == "disk":
            cache_root = runs_dir / "activations"
            link_smaller_cache(rung.activation_config(), cache_root)
            cache = collect_activations(model, rung.activation_config(), cache_root, progress)
            collected = int(json.loads((cache / "meta.json").read_text())["n_tokens"])
            if collected < tokens and tokens != sweep.n_tokens:  # (the sweep's own rung stays the sweep)
                # The corpus ran out: train on what there is for the sweep's number of passes, and
                # call the rung by its real size rather than by the budget it could not fill.
                rung = replace(rung, steps=rung_steps(sweep, collected))
                warnings.warn(f"the corpus gave only {collected:,} of the {tokens:,} tokens asked for: that rung trains "
                              f"{rung.steps:,} steps on them (the sweep's passes over its data) and is reported at "
                              f"{collected:,} tokens; use a larger corpus for the full budget", UserWarning, stacklevel=2)
        folder = runs_dir / "sweeps" / rung.name()
        if folder == results.folder:
            metrics = results.metrics  # the sweep's own rung: keep the caller's results in step
        else:
            path = folder / "results.json"
            metrics = json.loads(path.read_text()) if path.is_file() else {}
        rung_results = SweepResults(folder, rung, metrics, model)
        write_json(folder / "config.json", asdict(rung))
        names, saes = [], rung_saes(rung, ladder, k)
        for width in sorted(ladder.widths):  # one stream per width, as run_sweep trains its studies
            group = {name: fields for name, fields in saes.items() if fields["d_sae"] == width}
            data = (CachedActivations(cache, rung.batch_size, seed=rung.seed) if rung.storage == "disk" else
                    LiveActivations(model, rung.activation_config(), rung.batch_size, rung.buffer_tokens, rung.seed))
            data.check(data.d_model, rung.model_name, rung.hook_name)
            train_and_evaluate(group, data, rung, folder, metrics, model, results.eval_set(), progress,
                               f"ladder, {tokens:,} tokens, width {width}", prefixes=False)
            names += list(group)
        rungs.append(Rung(min(tokens, collected or tokens), tokens, rung_results, names, collected))
    return LadderResults(ladder, k, rungs)


# --- what the rows say ----------------------------------------------------------------------------


def table_rows(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The notebook's table: per SAE its rung, L0, variance explained, SAEBench's absorption (or
    "not scored") and the diagnostic mean over every letter."""
    return [{"tokens": r["tokens"], "width": r["width"], "architecture": r["architecture"],
             "tokens collected": r["tokens_collected"], "passes": r["epochs"], "steps": r["steps"], "L0": r["l0"],
             "variance explained": r["variance_explained"],
             "absorption": r.get("absorption") if r.get("absorption_scored") else "not scored",
             "every letter": r.get("absorption_all_letters")} for r in rows]


def absorption_column(rows: Sequence[dict[str, Any]]) -> str:
    """SAEBench's ``absorption`` where it scores every row, else the diagnostic
    ``absorption_all_letters`` (as Fig 6 falls back)."""
    return "absorption" if all(r.get("absorption_scored") for r in rows) else "absorption_all_letters"


def gap_rows(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Per rung (token budget, width): Matryoshka minus BatchTopK on each of ``columns``
    (``{column}_gap``; None where either is missing)."""
    found = {(r["tokens"], r["width"], r["architecture"]): r for r in rows}
    out = []
    for tokens, width in sorted({(t, w) for t, w, _ in found}):
        matryoshka, batchtopk = found.get((tokens, width, "matryoshka")), found.get((tokens, width, "batchtopk"))
        row = {"tokens": tokens, "width": width}
        for column in columns:
            values = [r.get(column) if r else None for r in (matryoshka, batchtopk)]
            row[f"{column}_gap"] = values[0] - values[1] if None not in values else None
        out.append(row)
    return out


def rung_verdicts(rows: Sequence[dict[str, Any]]) -> list[str]:
    """One verdict line per rung (width, tokens) on first-letter absorption (Fig 6's claim):
    SAEBench's score, or "not measured" where it declines to score, then the diagnostic mean
    over every letter where that is so."""
    found = {(r["tokens"], r["width"], r["architecture"]): r for r in rows}
    lines = []
    for tokens, width in sorted({(t, w) for t, w, _ in found}):
        pair = [found.get((tokens, width, a)) for a in ("matryoshka", "batchtopk")]
        if None in pair:
            continue
        k = pair[0]["k"]
        where = f"width {width}, {tokens:,} tokens, L0 {k}"
        scored = all(r.get("absorption_scored") for r in pair)
        lines.append(verdict("fig6_absorption", *[r.get("absorption") if scored else None for r in pair], where))
        if not scored:
            lines.append(verdict("fig6_absorption", *[r.get("absorption_all_letters") for r in pair],
                                 f"{where}, diagnostic over every letter: not SAEBench's score"))
    return lines


def gap_trends(rows: Sequence[dict[str, Any]], column: str, claim: str = "fig6_absorption") -> list[str]:
    """The study's question, one line per line of the ladder: along width at each token budget,
    and along tokens at each width, does Matryoshka minus BatchTopK on ``column`` shrink, close
    (comparable within ``claim``'s tolerance, as the verdicts judge it), grow or reverse from the
    smallest point to the largest?"""
    found = {(r["tokens"], r["width"], r["architecture"]): r.get(column) for r in rows}
    tolerance = CLAIMS[claim].tolerance
    tokens_values, widths = sorted({t for t, _, _ in found}), sorted({w for _, w, _ in found})

    def gap(tokens, width):
        m, b = found.get((tokens, width, "matryoshka")), found.get((tokens, width, "batchtopk"))
        return None if m is None or b is None else (m - b, observed_direction(m, b, tolerance))

    def trend(first, last) -> str:
        (start, start_direction), (end, end_direction) = first, last
        if end_direction == "comparable":
            return "stays closed" if start_direction == "comparable" else "closes"
        if start * end < 0:
            return "reverses"
        return "shrinks" if abs(end) < abs(start) else "grows"

    lines = []
    lines_of = [(f"{t:,} tokens, width", [(w, gap(t, w)) for w in widths]) for t in tokens_values]
    lines_of += [(f"width {w}, tokens", [(t, gap(t, w)) for t in tokens_values]) for w in widths]
    for label, points in lines_of:
        points = [(x, g) for x, g in points if g is not None]
        if len(points) < 2:
            continue
        (x0, g0), (x1, g1) = points[0], points[-1]
        lines.append(f"{column}, Matryoshka - BatchTopK, {label} {x0:,} -> {x1:,}: "
                     f"{g0[0]:+.3f} -> {g1[0]:+.3f}: {trend(g0, g1)}")
    return lines


def distance_from_paper(ladder: LadderConfig, paper: LadderConfig) -> str:
    """How far the ladder's largest point is from the paper's: one line."""
    width, tokens = max(ladder.widths), max(ladder.token_budgets)
    paper_width, paper_tokens = max(paper.widths), max(paper.token_budgets)
    return (f"largest rung: {width:,} latents, {tokens:,} tokens; the paper's: {paper_width:,} latents, "
            f"{paper_tokens:,} tokens ({paper_width / width:.3g}x wider, {paper_tokens / tokens:.3g}x more tokens)")


# --- how long it will take --------------------------------------------------------------------------


def measured_training_cost(results: SweepResults) -> float | None:
    """Seconds per latent per training token of the sweep's main SAEs, trained in lockstep, from
    their run folders: ``config.json`` is written when a run starts, ``history.json`` when it
    ends. None when they are missing (trained elsewhere). A run resumed after a pause counts the
    pause too, so this errs long."""
    config = results.config
    folders = [results.folder / name for name in sae_configs(config)]
    if not all((f / "config.json").is_file() and (f / "history.json").is_file() for f in folders):
        return None
    seconds = max((f / "history.json").stat().st_mtime for f in folders) - min((f / "config.json").stat().st_mtime for f in folders)
    latent_tokens = config.steps * config.batch_size * config.d_sae * len(folders)
    return seconds / latent_tokens if seconds > 0 else None


def measured_collection_rate(cache: str | Path) -> float | None:
    """Tokens per second of an activation cache's collection, from its shard files' times (the
    median interval between consecutive shards, so a pause does not count); None with fewer
    than three shards."""
    meta_path = Path(cache) / "meta.json"
    if not meta_path.is_file():
        return None
    shards = json.loads(meta_path.read_text())["shards"]
    if len(shards) < 3:
        return None
    times = [(Path(cache) / s["file"]).stat().st_mtime for s in shards]
    intervals = [later - earlier for earlier, later in zip(times, times[1:])]
    interval = statistics.median(intervals)
    return statistics.median(s["n_tokens"] for s in shards[1:]) / interval if interval > 0 else None


def estimate_runtime(results: SweepResults, ladder: LadderConfig, runs_dir: str | Path) -> tuple[list[dict[str, Any]], str]:
    """Before training: per rung, the SAEs still to train and the minutes their training and the
    rung's activation collection should take, from the sweep's own measured training and
    collection where its files say (:func:`measured_training_cost`, :func:`measured_collection_rate`),
    else the rough rules above. Returns ``(rows, note)``; the note says where the rates come from.
    Evaluation (held-out metrics and absorption per SAE) is not counted."""
    sweep, runs_dir = results.config, Path(runs_dir)
    k = ladder_k(sweep, ladder)
    cost = measured_training_cost(results)
    cost_source = "the sweep's own training" if cost else "the rough rule (51.7 ms per step of 2,304 latents x 1,024 tokens)"
    cost = cost or SECONDS_PER_LATENT_TOKEN
    sweep_cache = runs_dir / "activations" / sweep.activation_config().key()
    rate = measured_collection_rate(sweep_cache) if sweep.storage == "disk" else None
    rate_source = "the sweep's own collection" if rate else f"the rough rule ({COLLECTED_TOKENS_PER_SECOND:.0f} tokens/s)"
    rate = rate or COLLECTED_TOKENS_PER_SECOND
    rows = []
    for tokens in sorted(ladder.token_budgets):
        rung = rung_config(sweep, tokens)
        folder = runs_dir / "sweeps" / rung.name()
        to_train = [fields["d_sae"] for name, fields in rung_saes(rung, ladder, k).items()
                    if not (folder / name / "sae").is_dir()]
        training = sum(cost * width * rung.steps * rung.batch_size for width in to_train)
        collecting = 0.0
        if rung.storage == "disk" and not (runs_dir / "activations" / rung.activation_config().key() / "meta.json").is_file():
            have = max((n for n, _, _ in _compatible_caches(rung.activation_config(), runs_dir / "activations")), default=0)
            collecting = max(0, tokens - have) / rate
        rows.append({"tokens": tokens, "steps": rung.steps, "SAEs to train": len(to_train),
                     "training (min)": training / 60, "collection (min)": collecting / 60})
    note = f"training rate from {cost_source}; collection rate from {rate_source}; evaluation not counted"
    return rows, note


def _compatible_caches(config: ActivationConfig, cache_root: Path) -> list[tuple[int, Path, dict[str, Any]]]:
    """``(tokens, folder, meta)`` of each complete cache under ``cache_root`` that differs from
    ``config`` only in ``n_tokens`` (its folder is the key ``config`` would have with its
    ``n_tokens``; the key also holds the story generator's fingerprint, so a cache of older
    stories does not match)."""
    found = []
    for other in sorted(cache_root.iterdir()) if cache_root.is_dir() else []:
        meta_path = other / "meta.json"
        if other.name == config.key() or not meta_path.is_file():
            continue
        meta = json.loads(meta_path.read_text())
        if replace(config, n_tokens=meta["config"]["n_tokens"]).key() == other.name:
            found.append((int(meta["n_tokens"]), other, meta))
    return found
