"""The toy experiment's claim, checked end to end at the smoke scale on fresh seeds.

Measured over seeds 0-29 at this scale: the vanilla SAE's parent-absorption rate was 1.00 every
time and its mean matched cosine 0.801-0.888; the Matryoshka SAE's absorption was 0.00 in 25 of
30 seeds (0.35 at worst) and its mean matched cosine 0.914-0.970, except seed 26 (0.879, against
the vanilla SAE's 0.888: a local optimum that splits a parent). So the absorption bounds hold per
seed, and the cosine margin is asked of the two seeds' mean, as the paper's claim is made.
"""

import pytest

from msae.experiments import profiles
from msae.experiments import toy as toy_experiment


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory):
    from conftest import SEED

    seeds = [SEED % 1000, SEED % 1000 + 1]
    config = profiles.toy_config("smoke")
    return toy_experiment.run(config, seeds, tmp_path_factory.mktemp("runs"), progress=False)


def test_vanilla_absorbs_parents_and_matryoshka_does_not(evaluations):
    for seed, by_kind in evaluations.items():
        vanilla, matryoshka = by_kind["vanilla"], by_kind["matryoshka"]
        assert vanilla.parent_absorption >= 0.9, seed
        assert matryoshka.parent_absorption <= vanilla.parent_absorption - 0.5, seed
    mean_cosine = {kind: sum(float(e[kind].matched_cosine.mean()) for e in evaluations.values()) / len(evaluations)
                   for kind in ("vanilla", "matryoshka")}
    assert mean_cosine["matryoshka"] >= mean_cosine["vanilla"] + 0.03, (sorted(evaluations), mean_cosine)


def test_matryoshka_recovers_the_true_features(evaluations):
    mean_cosine = sum(float(e["matryoshka"].matched_cosine.mean()) for e in evaluations.values()) / len(evaluations)
    assert mean_cosine >= 0.9


def test_both_saes_reach_about_the_true_l0(evaluations):
    # Matryoshka keeps parents and children apart: about the true L0, 1.12. Vanilla merges each
    # parent into its children's latents, so it needs fewer: 1.12 - 0.27 = 0.85 with all nine pairs
    # merged. Measured over seeds 0-29, 555 and 556: vanilla 0.865 in 29 seeds and 0.987 in 3 (12,
    # 13, 556; parent absorption still 1.00), Matryoshka 1.108-1.169; the gap never under 0.15.
    merged = 1.12 - 3 * 3 * 0.15 * 0.2
    for by_kind in evaluations.values():
        matryoshka, vanilla = by_kind["matryoshka"].l0, by_kind["vanilla"].l0
        assert matryoshka == pytest.approx(1.12, abs=0.1)
        assert merged - 0.1 <= vanilla <= matryoshka - 0.1


def test_median_seed_and_table(evaluations):
    seed = toy_experiment.median_seed(evaluations)
    assert seed in evaluations
    table = toy_experiment.summary_table(evaluations)
    assert table.count("\n") == 1 + 2 * (len(evaluations) + 1) - 1


def test_unknown_profile_is_refused():
    with pytest.raises(ValueError, match="unknown profile 'fast'"):
        profiles.toy_config("fast")
