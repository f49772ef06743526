"""The architecture registry: every entry builds the right class with the L0 where it belongs,
and Table 1's hyper-parameters are the config dataclasses' own defaults."""

import inspect

import pytest
import torch

from msae.io import _MSAE_CLASSES
from msae.saes import GatedSAE, JumpReLUSAE, PAnnealSAE, ReLUL1SAE, TopKSAE
from msae.saes.matryoshka import MatryoshkaBatchTopKSAE
from msae.saes.prefixes import PAPER_GROUP_FRACTIONS, group_sizes_from_fractions
from msae.saes.registry import ARCHITECTURES, SHARED_FIELDS, build_sae, table1_markdown, table1_rows

TABLE1 = ["relu", "topk", "batchtopk", "matryoshka", "gated", "jumprelu", "p_anneal"]
EXPECTED_CLASS = {"relu": ReLUL1SAE, "topk": TopKSAE, "batchtopk": MatryoshkaBatchTopKSAE,
                  "matryoshka": MatryoshkaBatchTopKSAE, "gated": GatedSAE, "jumprelu": JumpReLUSAE,
                  "p_anneal": PAnnealSAE}


def test_the_registry_holds_table_1():
    assert sorted(ARCHITECTURES) == sorted(TABLE1)


@pytest.mark.parametrize("name", TABLE1)
def test_every_entry_builds_and_runs(name, gen, seed):
    sae = build_sae(name, d_in=16, d_sae=64, l0=6, steps=200, seed=seed)
    assert type(sae) is EXPECTED_CLASS[name]
    assert type(sae).__name__ in _MSAE_CLASSES  # msae.io can load it back
    target = sae.config.k if name in ("topk", "batchtopk", "matryoshka") else sae.config.target_l0
    assert target == 6
    x = torch.randn(32, 16, generator=gen)
    sae.initialize_from_batch(x)
    out = sae.training_step(x, 0)
    assert torch.isfinite(out.loss) and out.dense_acts().shape == (32, 64) and "l0" in out.stats


def test_l0_and_steps_go_where_each_architecture_takes_them(seed):
    assert build_sae("topk", d_in=8, d_sae=32, l0=4.0).config.k == 4
    assert build_sae("jumprelu", d_in=8, d_sae=32, l0=2.5).config.target_l0 == 2.5
    assert build_sae("gated", d_in=8, d_sae=32, l0=3, steps=400).n_warmup == 20  # 5% of the run
    assert build_sae("relu", d_in=8, d_sae=32, l0=3, steps=400).config.l1_warmup_steps == 20
    assert build_sae("p_anneal", d_in=8, d_sae=32, l0=3, steps=400).config.total_steps == 400
    # Fields only some architectures use are dropped by the others, so one sweep entry fits all.
    shared = dict(steps=100, threshold_beta=0.9, threshold_start_step=10, dead_after_tokens=500, seed=seed,
                  model_name="m", hook_name="blocks.0.hook_resid_post")
    assert set(shared) == set(SHARED_FIELDS)
    for name in TABLE1:
        sae = build_sae(name, d_in=8, d_sae=32, l0=3, **shared)
        assert sae.config.seed == seed and sae.config.hook_name == "blocks.0.hook_resid_post"
    assert build_sae("batchtopk", d_in=8, d_sae=32, l0=3, **shared).config.threshold_beta == 0.9


def test_matryoshka_defaults_to_the_papers_groups_and_batchtopk_has_one():
    sae = build_sae("matryoshka", d_in=8, d_sae=256, l0=4)
    assert sae.config.group_sizes == group_sizes_from_fractions(256, PAPER_GROUP_FRACTIONS) == [8, 16, 32, 64, 136]
    assert build_sae("matryoshka", d_in=8, d_sae=64, l0=4, group_sizes=[16, 48]).config.group_sizes == [16, 48]
    assert build_sae("matryoshka", d_in=8, d_sae=64, l0=4, n_random_prefixes=3).config.group_sizes == [64]
    assert build_sae("batchtopk", d_in=8, d_sae=64, l0=4).config.group_sizes == [64]
    with pytest.raises(ValueError, match="one group"):
        build_sae("batchtopk", d_in=8, d_sae=64, l0=4, group_sizes=[16, 48])


@pytest.mark.parametrize(
    "name, fields, message",
    [
        ("transcoder", {}, "unknown architecture 'transcoder'; choose one of"),
        ("gated", dict(l1_penalty=0.1), r"unknown config fields \['l1_penalty'\]"),
        ("topk", dict(l0=4, k=4), "either l0 or k"),
        ("topk", dict(l0=4.5), "whole number"),
        ("relu", dict(l0=4, steps=10, total_steps=10), "either steps or total_steps"),
        ("p_anneal", dict(l0=4), "give total_steps"),
    ],
)
def test_bad_requests_say_what_is_wrong(name, fields, message):
    with pytest.raises(ValueError, match=message):
        build_sae(name, d_in=8, d_sae=32, **fields)


def test_table1_rows_read_their_defaults_off_the_config_dataclasses():
    rows = table1_rows()
    assert [row["name"] for row in rows] == list(ARCHITECTURES)
    for row in rows:
        assert set(row) == {"name", "architecture", "sae_class", "config_class", "reference", "sparsity",
                            "l0_control", "hyperparameters"}
        arch = ARCHITECTURES[row["name"]]
        assert row["sae_class"] == arch.sae_class.__name__ and row["config_class"] == arch.config_class.__name__
        assert row["hyperparameters"] and all(isinstance(row[k], str) and row[k] for k in ("reference", "sparsity"))
        signature = inspect.signature(arch.config_class).parameters
        for name, value in row["hyperparameters"].items():
            if name in signature:
                assert value == signature[name].default, (row["name"], name)
    by_name = {row["name"]: row for row in rows}
    assert by_name["jumprelu"]["hyperparameters"]["bandwidth"] == 1e-3
    assert by_name["p_anneal"]["hyperparameters"]["p_end"] == 0.2
    assert by_name["topk"]["hyperparameters"]["auxk_alpha"] == 1 / 32
    assert by_name["matryoshka"]["hyperparameters"]["group_fractions"][0] == 1 / 32


def test_table1_markdown_has_one_line_per_architecture():
    lines = table1_markdown().splitlines()
    assert len(lines) == 2 + len(ARCHITECTURES)
    assert all(line.startswith("| ") and line.count(" | ") == 4 for line in lines[2:])
    assert "P-annealing" in lines[-1] and "p_end=0.2" in lines[-1]
