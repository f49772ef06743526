"""SAE names and their inverse; the sweep's results as flat rows."""

import random

import pytest
import torch

from msae.experiments import profiles, studies, sweep
from msae.experiments.names import SAEName, parse_sae_name, sae_name


def test_names_round_trip(seed):
    rng = random.Random(seed)
    architectures = ["matryoshka", "batchtopk", "p_anneal", "matryoshka_10groups", "matryoshka_random3", "relu"]
    for _ in range(200):
        parts = SAEName(rng.choice(architectures), rng.randrange(1, 10**4))
        which = rng.randrange(3)
        if which == 1:
            parts = SAEName(parts.architecture, parts.k, width=rng.randrange(1, 10**6))
        elif which == 2:
            parts = SAEName(parts.architecture, parts.k, prefix_width=rng.randrange(1, 10**6))
        name = sae_name(parts.architecture, parts.k, width=parts.width, prefix_width=parts.prefix_width)
        assert parse_sae_name(name) == parts and str(parts) == name


@pytest.mark.parametrize("profile", ["smoke", "default", "paper"])
def test_every_name_the_sweep_and_studies_make_parses_back(profile):
    config, study = profiles.sweep_config(profile), profiles.study_config(profile)
    every = {**sweep.sae_configs(config),  # the relu_fixed twins without their coefficient (a plan)
             **{n: f for s in studies.STUDY_CONFIGS for n, f in studies.study_configs(config, study, s).items()}}
    for name, fields in every.items():
        parsed = parse_sae_name(name)
        assert str(parsed) == name
        target = fields.get("l0", fields.get("k"))
        if parsed.architecture == "relu_fixed":  # no target of its own: k names its controlled twin's
            assert target is None and every[f"relu_k{parsed.k}"]["l0"] == parsed.k
        else:
            assert parsed.k == target
        assert (parsed.width or config.d_sae) == fields["d_sae"]


def test_bad_names_are_refused():
    for name in ["matryoshka", "matryoshka_k", "Matryoshka_k4", "_k4", "matryoshka_k4_", "relu_k4.5"]:
        with pytest.raises(ValueError, match="is not an SAE name"):
            parse_sae_name(name)
    with pytest.raises(ValueError, match="ambiguous"):
        sae_name("relu_d64", 4)  # would read back as relu at width 64
    with pytest.raises(ValueError, match="not both"):
        sae_name("batchtopk", 4, width=8, prefix_width=8)


def fake_sweep(gen):
    """A hand-built sweep: a Matryoshka SAE with prefixes 2, 6 and 16, BatchTopK SAEs matched
    to the first two, the full-width BatchTopK SAE and a scaling-study SAE."""
    config = profiles.sweep_config("smoke", d_sae=16, k_values=[4], matched_k=4)

    def metrics(d_sae, k, **more):
        v = torch.rand(3, generator=gen).tolist()
        return {"config": {"d_sae": d_sae, "k": k}, "l0": k * (0.5 + v[0]), "variance_explained": v[1],
                "ce_sae": 3 + v[2], "ce_clean": 2.5, "frequency": torch.rand(d_sae, generator=gen).tolist(), **more}

    prefixes = [{"width": w, "l0": 1.0 + i, "variance_explained": float(torch.rand((), generator=gen)), "ce_sae": 3.0}
                for i, w in enumerate([2, 6, 16])]
    results = {"matryoshka_k4": metrics(16, 4, prefixes=prefixes), "batchtopk_k4": metrics(16, 4),
               "batchtopk_w2_k1": metrics(2, 1), "batchtopk_w6_k2": metrics(6, 2), "relu_d8_k4": metrics(8, 4)}
    return sweep.SweepResults(None, config, results)


def test_rows_are_flat_and_carry_the_parts_of_each_name(gen):
    results = fake_sweep(gen)
    rows = results.rows()
    assert [r["sae"] for r in rows] == list(results.metrics)
    for row in rows:
        parsed, metrics = parse_sae_name(row["sae"]), results.metrics[row["sae"]]
        assert (row["architecture"], row["k"], row["prefix_width"]) == (parsed.architecture, parsed.k, parsed.prefix_width)
        assert row["width"] == metrics["config"]["d_sae"] and row["target_l0"] == metrics["config"]["k"]
        assert row["l0"] == metrics["l0"] and row["variance_explained"] == metrics["variance_explained"]
        assert not any(isinstance(v, (list, dict)) for v in row.values())  # frequency, prefixes, config left out
    assert [r["sae"] for r in results.rows_at_sweep_width()] == ["matryoshka_k4", "batchtopk_k4"]


def test_latent_and_prefix_rows(gen):
    results = fake_sweep(gen)
    latents = results.latent_rows("matryoshka_k4")
    assert [r["group"] for r in latents] == [1] * 2 + [2] * 4 + [3] * 10
    assert [r["frequency"] for r in latents] == results.metrics["matryoshka_k4"]["frequency"]
    assert {r["group"] for r in results.latent_rows("batchtopk_k4")} == {1}
    rows = results.prefix_rows(4)
    assert [(r["source"], r["width"]) for r in rows] == [
        (s, w) for w in (2, 6, 16) for s in ("matryoshka prefix", "batchtopk")]
    matched = {r["width"]: r for r in rows if r["source"] == "batchtopk"}
    for width, name in ((2, "batchtopk_w2_k1"), (6, "batchtopk_w6_k2"), (16, "batchtopk_k4")):
        assert matched[width]["variance_explained"] == results.metrics[name]["variance_explained"]
