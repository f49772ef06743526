"""The one line each language-model notebook prints about the scale it runs at."""

import pytest

from msae.data.activations import CorpusConfig
from msae.experiments import profiles
from msae.experiments.feature_evals import METRICS
from msae.experiments.studies import STUDY_CONFIGS


@pytest.mark.parametrize("profile", profiles.PROFILE_NAMES)
def test_each_profile_line_names_its_model_width_and_tokens(profile):
    sweep = profiles.sweep_config(profile)
    line = profiles.describe(profile, sweep)
    assert line.startswith(f"profile {profile}: {sweep.model_name}, {sweep.hook_name}")
    assert f"SAEs of {sweep.d_sae:,} latents at L0 {'/'.join(map(str, sweep.k_values))}" in line
    assert f"{sweep.n_tokens:,} tokens" in line
    assert f"{sweep.steps:,} steps of {sweep.batch_size:,}" in line
    assert f"{sweep.eval_contexts:,} contexts of {sweep.eval_context_size} tokens" in line
    if sweep.corpus.source == "stories":
        assert f"trained on {sweep.corpus.n_documents:,} generated stories" in line
    elif sweep.corpus.source == "english":
        assert "trained on public-domain English (train split" in line
        assert "from public-domain English (test split" in line
    else:
        assert f"trained on the HF dataset {sweep.corpus.path}" in line


def test_the_profiles_differ_where_their_configs_do():
    lines = {profile: profiles.describe(profile, profiles.sweep_config(profile)) for profile in profiles.PROFILE_NAMES}
    assert "gemma-2-2b, blocks.12.hook_resid_post (26 layers, d_model 2304)" in lines["paper"]
    assert "65,536 latents" in lines["paper"] and "500,000,000 tokens streamed" in lines["paper"]
    assert "smollm2-135m-instruct" in lines["default"] and "(30 layers, d_model 576)" in lines["smoke"]
    assert len(set(lines.values())) == len(lines)


def test_overrides_show_in_the_line(tmp_path):
    sweep = profiles.sweep_config("smoke", corpus=CorpusConfig(source="text_dir", path=str(tmp_path), n_documents=10**9),
                                  d_sae=512, model_name="some-other-model")
    line = profiles.describe("smoke", sweep)
    assert f"trained on the .txt files of {tmp_path};" in line
    assert "SAEs of 512 latents" in line
    assert "some-other-model, blocks.15.hook_resid_post;" in line  # a model of unknown shape: its hook alone
    limited = profiles.sweep_config("default", corpus=CorpusConfig(source="hf", path="org/data", n_documents=5000))
    assert "the HF dataset org/data (train split, streamed, at most 5,000 documents)" in profiles.describe("default", limited)


def test_studies_and_feature_evaluations():
    sweep, study = profiles.sweep_config("default"), profiles.study_config("default")
    line = profiles.describe("default", sweep, study=study, studies=list(STUDY_CONFIGS))
    assert f"widths {'/'.join(map(str, sorted({sweep.d_sae, *study.widths})))} at L0 40" in line
    assert f"{len(study.ablation_arms)} ablation arms at L0 20/40/80" in line
    assert "at L0 20/40/80" in line.split("baselines ")[1]
    every = profiles.describe("default", sweep, evals=profiles.eval_config("default"), metrics=["absorption"])
    assert every.endswith("absorption on every letter-only vocabulary token (saebench letter probes)")
    sampled = profiles.eval_config("smoke", letter_max_words=123)
    assert "a sample of 123 letter-only vocabulary tokens" in profiles.describe("smoke", sweep, evals=sampled,
                                                                                metrics=["absorption"])
    assert "SAEBench's datasets" in profiles.describe("paper", sweep, evals=profiles.eval_config("paper"),
                                                      metrics=list(METRICS))
    with pytest.raises(ValueError, match="unknown metrics or studies"):
        profiles.describe("default", sweep, evals=profiles.eval_config("default"), metrics=["absorbtion"])
    with pytest.raises(ValueError, match="needs their study config"):
        profiles.describe("default", sweep, studies=["scaling"])
