"""Feature-quality evaluations of a sweep's saved SAEs (paper Figs 1, 4, 6, 7, 9, 14).

``FeatureEvaluator(results, profile)`` builds each metric's shared data once per model and hook
(the first-letter words and their probes, the story activations, the probing tasks), caches it
under ``<runs_dir>/eval_data``, and writes each SAE's result to
``<sweep folder>/<sae>/evals/<metric>.json`` with the seconds it took; later calls read it back.

Metrics (``METRICS``):

- ``absorption``: first-letter absorption fraction and split latents (``msae.evals.absorption``);
- ``probing``: sparse probing, SCR and TPP (``msae.evals.probing`` on ``msae.evals.probe_tasks``);
- ``meta_sae``: variance of the decoder rows a meta-SAE explains (``msae.evals.meta_sae``);
- ``concepts``: each latent's best F1 against the stories' labelled concepts (``msae.evals.concepts``);
- ``autointerp``: the LLM-judge detection score, when a judge is configured (``msae.evals.autointerp``).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import torch

from ..data import story_activations
from ..evals import absorption, autointerp, concepts, meta_sae, probe_tasks
from ..files import waiting_lock, write_json
from ..io import load_sae
from .names import parse_sae_name, sae_name

METRICS = ("absorption", "probing", "meta_sae", "concepts", "autointerp")
MIN_FIRES = 5  # a latent needs this many firing tokens for its concept F1 to count
# Part of the key of saved results: raise it when a metric's code changes what it computes, so
# results saved by older code are recomputed rather than read back.
EVAL_CODE_VERSION = 2  # 2: absorption's letter filter, letter-probe recipe and unit-norm rescaling; SAEBench's probes


# SAEBench's probing datasets used on the paper profile (Bias in Bios also gives SCR and TPP).
SAEBENCH_PROBE_SOURCES = ("LabHC/bias_in_bios_class_set1", "canrager/amazon_reviews_mcauley_1and5", "fancyzhx/ag_news")


@dataclass
class EvalConfig:
    """The settings of the feature evaluations of one profile (``msae.experiments.profiles``).

    Attributes:
        letter_max_words: a seeded sample of this many letter-only vocabulary tokens for absorption;
            None: all of them, as SAEBench (47k tokens for SmolLM2: about an hour of CPU, once).
        letter_seed: the seed of that sample, of the letter probes' train/test split and of their training.
        letter_probe_recipe: how the letter probes are fitted (``msae.evals.absorption.train_letter_probes``).
        n_stories: stories for probing (train and test).
        concept_stories: the first stories, whose tokens the concept F1 and Fig 4 use.
        story_seed: the seed of the evaluation stories: neither the training corpus's (0) nor the held-out one's (1).
        context_size: tokens per probing text (SAEBench's probing context).
        probe_source: "stories" (the story labels, offline) or "saebench" (its HF datasets).
        meta_sae_steps: training steps of each meta-SAE.
        meta_sae_batch_size: decoder rows per meta-SAE batch.
        autointerp_latents: latents the LLM judge scores per SAE.
        seed: the seed of everything else drawn at random.
    """

    letter_max_words: int | None = None
    letter_seed: int = 0
    letter_probe_recipe: absorption.ProbeRecipe = "saebench"
    n_stories: int = 1500
    concept_stories: int = 400
    story_seed: int = 2
    context_size: int = 128
    probe_source: Literal["stories", "saebench"] = "stories"
    meta_sae_steps: int = 800
    meta_sae_batch_size: int = 1024
    autointerp_latents: int = 100
    seed: int = 0

    def __post_init__(self):
        if self.letter_probe_recipe not in ("saebench", "converged"):
            raise ValueError(f"letter_probe_recipe must be 'saebench' or 'converged', got {self.letter_probe_recipe!r}")
        if self.probe_source not in ("stories", "saebench"):
            raise ValueError(f"probe_source must be 'stories' or 'saebench', got {self.probe_source!r}")
        if not 0 < self.concept_stories <= self.n_stories:
            raise ValueError(f"concept_stories must be in 1..n_stories={self.n_stories}, got {self.concept_stories}")


def flat_columns(metric: str, result: dict[str, Any]) -> dict[str, Any]:
    """The scalar columns one SAE's ``metric`` result adds to its row (:meth:`FeatureEvaluator.rows`)."""
    if metric == "absorption":
        diagnostics = result["diagnostics"]
        return {"absorption": result["mean_absorption_fraction"], "full_absorption": result["mean_full_absorption_rate"],
                "split_latents": result["mean_num_split_latents"], "letters_scored": result["n_letters_scored"],
                "absorption_scored": result["scored"],
                "absorption_all_letters": diagnostics["mean_absorption_fraction_all_letters"],
                "split_latents_all_letters": diagnostics["mean_num_split_latents_all_letters"],
                "absorption_missed_words": diagnostics["mean_absorption_fraction_missed_words"],
                "absorption_scaled_cos": diagnostics["mean_absorption_fraction_scaled_cos"],
                "l0_letter_prompts": diagnostics["l0_letter_prompts"],
                **{f"probe_share_{part}": diagnostics[f"share_{part}"] for part in ("all_latents", "main_latents", "absorbers")}}
    if metric == "probing":
        summary = result["summary"]
        return {**{f"sparse_probing_top{k}": v for k, v in summary["sparse_probing_top_k"].items()},
                "sparse_probing_llm": summary["sparse_probing_llm"],
                **{f"scr_{n}": v for n, v in summary["scr"].items()}, **{f"tpp_{n}": v for n, v in summary["tpp"].items()}}
    if metric == "concepts":
        return {"concept_f1": result["mean_f1"], "concept_f1_above": result["fraction_above"],
                "concept_latents": result["n_alive"]}
    if metric == "meta_sae":
        return {"meta_sae_variance_explained": result["variance_explained"]}
    if metric == "autointerp":
        return {} if result.get("skipped") else {"autointerp_score": result["score"]}
    raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")


def reported_absorption(results: dict[str, dict[str, Any]]) -> tuple[str, dict[str, float | None]]:
    """``(label, {name: value})`` for a figure's absorption of several SAEs' ``absorption``
    results: SAEBench's official mean when every SAE is scored; otherwise, so that the figure
    still shows something, the diagnostic mean over every letter with a probe-correct word,
    with a label that says so."""
    if all(result["scored"] for result in results.values()):
        return "absorption (first letter)", {n: r["mean_absorption_fraction"] for n, r in results.items()}
    return ("absorption, every letter (not scored by SAEBench's rule)",
            {n: r["diagnostics"]["mean_absorption_fraction_all_letters"] for n, r in results.items()})


def absorption_table_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The absorption notebook's table: per SAE (rows of :meth:`FeatureEvaluator.rows` with
    the absorption columns) the official numbers, or "not scored", then the diagnostics."""
    def official(row, key):
        return row[key] if row["absorption_scored"] else "not scored"

    return [{"sae": r["sae"], "L0": r["l0"], "L0 letters": r["l0_letter_prompts"],
             "absorption": official(r, "absorption"), "full": official(r, "full_absorption"),
             "split": official(r, "split_latents"), "every letter": r["absorption_all_letters"],
             "missed words": r["absorption_missed_words"], "scaled cos": r["absorption_scaled_cos"],
             "share all": r["probe_share_all_latents"], "share main": r["probe_share_main_latents"],
             "share absorbers": r["probe_share_absorbers"]} for r in rows]


def absorption_group_rows(results: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Per Matryoshka SAE of ``{name: absorption result}``: the share of the main latents, and
    of the absorbed probe projection, in each group (one-group SAEs are left out)."""
    rows = []
    for name, result in results.items():
        diagnostics = result["diagnostics"]
        if "group_sizes" not in diagnostics:
            continue
        for label, key in (("main latents", "main_latents_by_group"), ("absorbed projection", "absorbed_projection_by_group")):
            shares = diagnostics[key] or [None] * len(diagnostics["group_sizes"])
            rows.append({"sae": name, "share of": label,
                         **{f"group {g + 1} ({size})": share for g, (size, share) in
                            enumerate(zip(diagnostics["group_sizes"], shares))}})
    return rows


def open_evaluator(profile: str, corpus: str | None, runs_dir: str | Path, cache_dir: str | Path, progress: bool = True,
                   judge: autointerp.JudgeConfig | None = None, studies=(), study_config=None):
    """What every evaluation notebook starts with: the profile's sweep (run or reused, with any
    ``studies``) and an evaluator over its SAEs. Returns ``(results, evaluator)``."""
    from ..data.activations import corpus_from_spec
    from . import profiles  # which imports this module
    from .sweep import run_sweep

    config = profiles.sweep_config(profile, corpus=corpus_from_spec(corpus))
    results = run_sweep(config, runs_dir, cache_dir, progress=progress, studies=studies, study_config=study_config)
    evaluator = FeatureEvaluator(results, profiles.eval_config(profile), Path(runs_dir) / "eval_data", progress, judge)
    return results, evaluator


def general_latent_saes(results, prefix: int = 1) -> dict[str, str]:
    """The three SAEs of the Fig 4 analogue, ``{label: name}``: the BatchTopK SAE as wide as
    prefix ``prefix`` of the Matryoshka SAE with ``matched_k`` (small), the full-width BatchTopK
    and Matryoshka SAEs with that k."""
    k, d_sae = results.config.matched_k, results.config.d_sae
    width = results.metrics[sae_name("matryoshka", k)]["prefixes"][prefix]["width"]
    small = next(n for n in results.metrics if parse_sae_name(n).prefix_width == width)
    return {f"BatchTopK, {width} latents": small, f"BatchTopK, {d_sae} latents": sae_name("batchtopk", k),
            f"Matryoshka, {d_sae} latents": sae_name("matryoshka", k)}


class FeatureEvaluator:
    """Evaluates the SAEs of one sweep (``msae.experiments.sweep.SweepResults``, which carries the model)."""

    def __init__(self, results, config: EvalConfig, data_dir: str | Path, progress: bool = True,
                 judge: autointerp.JudgeConfig | None = None):
        self.results, self.config, self.progress, self.judge = results, config, progress, judge
        sweep = results.config
        key = {"model": sweep.model_name, "hook": sweep.hook_name, "eval": asdict(config), "code": EVAL_CODE_VERSION}
        self._probe_cache: dict[str, dict] = {}  # model-activation probes, trained once per dataset
        self.data_dir = Path(data_dir) / hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:10]

    @property
    def model(self):
        """The sweep's language model (loaded on first use: cached evaluations do not need it)."""
        if self.results.model is None:
            raise ValueError("the sweep results carry no model: get them from msae.experiments.sweep.run_sweep")
        return self.results.model

    # --- shared data, built once ---------------------------------------------------------------
    @cached_property
    def letters(self) -> tuple[absorption.LetterDataset, absorption.LetterProbes]:
        folder = self.data_dir / "letters"
        with waiting_lock(self.data_dir / ".letters.lock"):  # another process collecting them: wait, then reuse
            if (folder / "letter_words.json").is_file():
                data = absorption.load_letter_dataset(folder)
            else:
                cfg = self.config
                data = absorption.collect_letter_dataset(
                    self.model, self.results.config.hook_name, seed=cfg.letter_seed, max_words=cfg.letter_max_words,
                    progress=self.progress)
                absorption.save_letter_dataset(data, folder)
        return data, absorption.train_letter_probes(data, self.config.letter_probe_recipe, self.config.letter_seed)

    @cached_property
    def stories(self) -> story_activations.TextActivations:
        cfg, sweep = self.config, self.results.config
        return story_activations.story_activations(
            self.model, sweep.hook_name, cfg.n_stories, cfg.story_seed, cfg.context_size, self.data_dir,
            model_name=sweep.model_name, progress=self.progress, exclude_first=sweep.exclude_first)

    @cached_property
    def concept_stories(self) -> story_activations.TextActivations:
        """The first ``concept_stories`` stories (the per-token evaluations)."""
        acts, n = self.stories, self.config.concept_stories
        return story_activations.TextActivations(
            acts.tokens[:n], acts.mask[:n], acts.resid[:n], acts.concepts, acts.token_concepts[:n],
            acts.labels[:n], acts.texts[:n], acts.hook_name)

    @cached_property
    def probe_suites(self) -> list[tuple[str, probe_tasks.TaskSuite, story_activations.TextActivations, torch.Tensor]]:
        """(name, tasks, text activations, pooled residual stream) of each probing dataset: the
        labelled stories offline, SAEBench's datasets through HF ``datasets`` on ``paper``."""
        cfg, sweep = self.config, self.results.config
        if cfg.probe_source == "stories":
            suites = [("stories", probe_tasks.story_tasks(self.stories.labels, seed=cfg.seed), self.stories)]
        else:
            suites = []
            for i, source in enumerate(SAEBENCH_PROBE_SOURCES):
                suite = probe_tasks.hf_text_tasks(source, seed=cfg.seed)
                tag = "" if sweep.exclude_first == 1 else f"_x{sweep.exclude_first}"
                path = self.data_dir / f"probe_texts_{i}{tag}.pt"
                with waiting_lock(self.data_dir / f".probe_texts_{i}{tag}.lock"):
                    if path.is_file():
                        acts = story_activations.TextActivations.load(path)
                    else:
                        acts = story_activations.collect_text_activations(
                            self.model, sweep.hook_name, suite.texts, cfg.context_size, progress=self.progress,
                            exclude_first=sweep.exclude_first)
                        acts.save(path)
                suites.append((source, suite, acts))
        return [(name, suite, acts, story_activations.pooled_resid(acts)) for name, suite, acts in suites]

    # --- per SAE -------------------------------------------------------------------------------
    def result_path(self, name: str, metric: str, results=None) -> Path:
        return (results or self.results).folder / name / "evals" / f"{metric}.json"

    def evaluate(self, name: str, metric: str, results=None) -> dict[str, Any]:
        """``metric`` of the SAE ``name`` of the sweep (or, given ``results``, of another sweep
        folder of the same model and hook, e.g. a scale-ladder rung): read back if done, computed
        and saved in that folder if not (an autointerp run without a judge is reported and not
        saved)."""
        if metric not in METRICS:
            raise ValueError(f"unknown metric {metric!r}; choose from {METRICS}")
        results = results or self.results
        path = self.result_path(name, metric, results)
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved.get("eval_data") == self.data_dir.name:  # else made with other settings: redo
                return saved
        sae = load_sae(results.sae_path(name)).eval()
        self._prepare(metric)  # shared data is built once and not counted in any one SAE's time
        start = time.perf_counter()
        result = getattr(self, f"_{metric}")(sae)
        if result.get("skipped"):
            return result
        result["seconds"] = time.perf_counter() - start
        result["eval_data"] = self.data_dir.name  # the settings' key (see __init__)
        write_json(path, result)
        return result

    def _prepare(self, metric: str) -> None:
        needs = {"absorption": ("letters",), "probing": ("probe_suites",), "concepts": ("concept_stories",),
                 "autointerp": ("concept_stories",)}
        for attribute in needs.get(metric, ()):
            getattr(self, attribute)

    def table(self, names: list[str], metric: str) -> dict[str, dict[str, Any]]:
        """``{name: result}`` of ``metric`` for each named SAE."""
        return {name: self.evaluate(name, metric) for name in names}

    def rows(self, names: list[str], metrics: list[str]) -> list[dict[str, Any]]:
        """The sweep's rows of the named SAEs (``SweepResults.rows``) with the scalar columns of
        each of ``metrics`` added (:func:`flat_columns`), as the plots take them."""
        rows = self.results.rows(names)
        for row in rows:
            for metric in metrics:
                row.update(flat_columns(metric, self.evaluate(row["sae"], metric)))
        return rows

    def _absorption(self, sae) -> dict[str, Any]:
        data, probes = self.letters
        return absorption.evaluate_absorption(sae, data, probes)

    def absorption_with_probe_recipe(self, name: str, recipe: absorption.ProbeRecipe) -> dict[str, Any]:
        """Absorption of the SAE ``name`` with the letter probes fitted by ``recipe`` instead of
        the configured one (not cached): does the probes' training move the result?"""
        data, _ = self.letters
        probes = absorption.train_letter_probes(data, recipe, self.config.letter_seed)
        return absorption.evaluate_absorption(load_sae(self.results.sae_path(name)).eval(), data, probes)

    def _probing(self, sae) -> dict[str, Any]:
        results = {}
        for name, suite, acts, resid in self.probe_suites:
            latents = story_activations.pooled(sae, acts)
            results[name] = probe_tasks.evaluate_suite(suite, resid, latents, sae.W_dec.detach().float(), seed=self.config.seed,
                                                       probe_cache=self._probe_cache.setdefault(name, {}))
        summaries = [r["summary"] for r in results.values()]
        return {"datasets": results, "summary": _mean_summaries(summaries)}

    def _autointerp(self, sae) -> dict[str, Any]:
        if not autointerp.judge_configured(self.judge):
            return {"skipped": "no LLM judge configured: pass judge_base_url and judge_model (and a key) to run it"}
        acts = self.concept_stories
        codes = torch.zeros(acts.n_texts, acts.tokens.shape[1], sae.d_sae)
        with torch.no_grad():
            codes[acts.mask] = torch.cat([latents for latents, _ in self._token_chunks(sae, acts)])
        tokenizer = self.model.tokenizer
        token_strings = [[tokenizer.decode([t]) for t in row.tolist()] for row in acts.tokens]
        judge = replace(self.judge, max_latents=self.config.autointerp_latents)
        result = autointerp.autointerp_scores(token_strings, codes, None, judge, seed=self.config.seed)
        return result

    def _meta_sae(self, sae) -> dict[str, Any]:
        cfg = self.config
        _, result = meta_sae.train_meta_sae(sae.W_dec.detach(), steps=cfg.meta_sae_steps,
                                            batch_size=cfg.meta_sae_batch_size, seed=cfg.seed)
        result.pop("history")
        return result

    def _concepts(self, sae) -> dict[str, Any]:
        """Each latent's best concept F1 on the concept stories' tokens; summarised over the
        latents that fire there at least ``MIN_FIRES`` times (rarer ones have no F1 to speak of)."""
        acts = self.concept_stories
        counts = concepts.ConceptCounts(sae.d_sae, len(acts.concepts))
        for latents, members in self._token_chunks(sae, acts):
            counts.update(latents, members)
        best = concepts.best_concept(counts.f1())
        alive = counts.fires >= MIN_FIRES
        summary = concepts.interpretability_summary(best.f1, alive) if alive.any() else {"mean_f1": float("nan")}
        top = best.f1.argsort(descending=True)[:20].tolist()
        return {**summary, "n_tokens": counts.n_tokens,
                "best_f1": best.f1.tolist(), "best_concept": [acts.concepts[c] if c >= 0 else None for c in best.concept.tolist()],
                "top_latents": [{"latent": i, "f1": float(best.f1[i]), "concept": acts.concepts[int(best.concept[i])]} for i in top]}

    def _token_chunks(self, sae, acts: story_activations.TextActivations, chunk: int = 64):
        """(latents (n_kept, d_sae), concepts (n_kept, n_concepts)) per chunk of stories."""
        for start, x, _, size in story_activations.kept_chunks(acts, chunk):
            with torch.no_grad():
                yield sae.encode(x), acts.token_concepts[start : start + size][acts.mask[start : start + size]]

    # --- Fig 4: a general latent and its holes -----------------------------------------------
    def general_latent_study(self, names: dict[str, str], concept: str = "female", n_examples: int = 3,
                             example_tokens: int = 40) -> dict[str, Any]:
        """For each SAE (``{label: sae name}``): its best latent for ``concept`` on the concept
        stories' tokens, the concept tokens where it is silent (holes), the latents that fire
        there instead with their own best concept, and, on ``n_examples`` stories (those where
        the SAEs together have the most holes in the first ``example_tokens`` tokens), the
        latent's activation on every token. Cached as ``<sweep folder>/evals_<concept>_latent.json``."""
        path = self.results.folder / f"evals_{concept}_latent.json"
        if path.is_file():
            saved = json.loads(path.read_text())
            if saved["names"] == names:
                return saved
        acts = self.concept_stories
        mask2d = acts.concept_mask(concept)  # (N, ctx)
        concept_tokens = mask2d[acts.mask]  # (n_kept,) in the order encode_tokens gives
        members = acts.token_concepts[acts.mask]  # (n_kept, n_concepts)
        rows = acts.mask.nonzero()  # (n_kept, 2): story, position
        per_sae, latent_on_tokens = {}, {}
        for label, name in names.items():
            sae = load_sae(self.results.sae_path(name)).eval()
            codes = torch.cat([latents.to_sparse() for latents, _ in self._token_chunks(sae, acts)])  # (n_kept, d_sae)
            general = concepts.general_latent(codes, concept_tokens)
            absorbers = concepts.absorbing_latents(codes, general.latent, concept_tokens, top=5)
            best = concepts.concept_f1(codes.index_select(1, absorbers.latents).to_dense(), members) \
                if absorbers.latents.numel() else None
            column = codes.index_select(1, torch.tensor([general.latent])).to_dense()[:, 0]  # (n_kept,)
            latent_on_tokens[label] = column
            per_sae[label] = {
                "sae": name, "d_sae": sae.d_sae, "latent": general.latent, "f1": general.f1,
                "precision": general.precision, "recall": general.recall, "n_holes": absorbers.n_holes,
                "absorbers": [{"latent": int(lat), "holes_covered": int(cov), "fraction_of_holes": float(frac),
                               "best_concept": acts.concepts[int(c)] if c >= 0 else None, "f1": float(f)}
                              for lat, cov, frac, c, f in zip(absorbers.latents, absorbers.holes_covered,
                                                              absorbers.fraction_of_holes,
                                                              best.concept if best else [], best.f1 if best else [])],
            }
        # Example stories: most holes (summed over the SAEs) among their first tokens.
        early = rows[:, 1] < example_tokens
        hole_count = torch.zeros(acts.n_texts)
        for column in latent_on_tokens.values():
            hole_count.index_add_(0, rows[:, 0], (concept_tokens & early & (column <= 0)).float())
        stories = hole_count.argsort(descending=True, stable=True)[:n_examples].tolist()
        tokenizer = self.model.tokenizer
        examples = []
        for story in stories:
            keep = (rows[:, 0] == story) & early
            ids = acts.tokens[story][rows[keep, 1]].tolist()
            examples.append({
                "story": story,
                "tokens": [tokenizer.decode([i]) for i in ids],
                "concept": concept_tokens[keep].tolist(),
                "activations": {label: column[keep].tolist() for label, column in latent_on_tokens.items()},
            })
        result = {"names": names, "concept": concept, "saes": per_sae, "examples": examples}
        write_json(path, result)
        return result


def _mean_summaries(summaries: list[dict[str, Any]]) -> dict[str, Any]:
    """The mean of each number (or dict of numbers) over datasets, skipping missing ones."""
    def mean(values):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else None

    out: dict[str, Any] = {}
    for key in summaries[0]:
        first = summaries[0][key]
        if isinstance(first, dict):
            out[key] = {k: mean([s[key].get(k) for s in summaries if s.get(key)]) for k in first}
        else:
            out[key] = mean([s.get(key) for s in summaries])
    return out
