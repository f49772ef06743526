import json

import pytest
import torch

from msae.data.stories import generate_stories
from msae.evals import probes
from msae.evals.probe_tasks import (
    GROUP_OF_PROFESSION,
    STORY_SCR,
    HFTextSource,
    LabelContrast,
    evaluate_suite,
    hf_text_tasks,
    story_tasks,
)


@pytest.fixture
def labels(seed):
    return [s.labels for s in generate_stories(900, seed)]


def value(row, key):
    return GROUP_OF_PROFESSION[row["profession"]] if key == "profession_group" else row[key]


def class_counts(split, n_classes):
    return torch.bincount(split.labels, minlength=n_classes).tolist()


def test_story_probing_tasks_are_balanced_and_correctly_labelled(labels, seed):
    suite = story_tasks(labels, seed=seed)
    assert [t.name for t in suite.probing] == ["sentiment", "setting", "profession", "gender"]
    contrasts = {"sentiment": ("sentiment", "sad", "happy"), "setting": ("place_kind", "town", "nature"),
                 "profession": ("profession_group", "service", "food"), "gender": ("gender", "male", "female")}
    train_rows, test_rows = set(), set()
    for task in suite.probing:
        key, negative, positive = contrasts[task.name]
        for split in (task.train, task.test):
            counts = class_counts(split, 2)
            assert counts[0] == counts[1] > 0
            names = [value(labels[r], key) for r in split.rows.tolist()]
            assert names == [positive if y else negative for y in split.labels.tolist()]
            assert len(set(split.rows.tolist())) == len(split.rows)
        train_rows |= set(task.train.rows.tolist())
        test_rows |= set(task.test.rows.tolist())
    assert not train_rows & test_rows  # one split for every task


def test_story_tasks_are_deterministic_per_seed(labels, seed):
    a, b, c = story_tasks(labels, seed=seed), story_tasks(labels, seed=seed), story_tasks(labels, seed=seed + 1)
    assert torch.equal(a.probing[0].train.rows, b.probing[0].train.rows)
    assert not torch.equal(a.probing[0].train.rows, c.probing[0].train.rows)


def test_story_scr_task(labels, seed):
    (task,) = story_tasks(labels, seed=seed).scr
    target, spurious = STORY_SCR[0]

    def attributes(r):
        group = GROUP_OF_PROFESSION[labels[r]["profession"]]
        return int(group in target.positive), int(labels[r]["gender"] in spurious.positive)

    # biased: only (A, male) labelled 1 and (B, female) labelled 0, equally many, on each side
    for biased in (task.biased_train, task.biased_test):
        for r, y in zip(biased.rows.tolist(), biased.labels.tolist()):
            assert attributes(r) == (y, y)
        assert class_counts(biased, 2)[0] == class_counts(biased, 2)[1]
    # balanced: the four combinations equally often, labelled by each attribute
    for t_split, s_split in ((task.target_train, task.spurious_train), (task.target_test, task.spurious_test)):
        assert torch.equal(t_split.rows, s_split.rows)
        pairs = [attributes(r) for r in t_split.rows.tolist()]
        assert pairs == list(zip(t_split.labels.tolist(), s_split.labels.tolist()))
        assert len({pairs.count(q) for q in [(0, 0), (0, 1), (1, 0), (1, 1)]}) == 1
    train = set(task.biased_train.rows.tolist()) | set(task.target_train.rows.tolist())
    assert not train & (set(task.target_test.rows.tolist()) | set(task.biased_test.rows.tolist()))
    assert task.target_classes == ("food+service+travel", "care+craft+arts")


def test_story_tpp_task(labels, seed):
    (task,) = story_tasks(labels, seed=seed, max_per_class=25).tpp
    assert len(task.classes) >= 4
    assert class_counts(task.train, len(task.classes)) == [25] * len(task.classes)
    for split in (task.train, task.test):
        names = [task.classes[y] for y in split.labels.tolist()]
        assert names == [GROUP_OF_PROFESSION[labels[r]["profession"]] for r in split.rows.tolist()]


def test_story_task_errors(labels):
    with pytest.raises(ValueError, match="no text has the label"):
        story_tasks(labels, probes=[LabelContrast("x", "colour_of_sky", ("a",), ("b",))])
    with pytest.raises(ValueError, match="no text has sentiment"):
        story_tasks(labels, probes=[LabelContrast("x", "sentiment", ("sad",), ("ecstatic",))])
    with pytest.raises(ValueError, match="test_fraction"):
        story_tasks(labels, test_fraction=1.5)


# --- Hugging Face datasets, read from local files through the same code path -------------------


def write_fake_bios(folder, gen):
    """A Bias-in-Bios-shaped dataset: columns hard_text, profession (int), gender (0/1). Each
    text spells its row's labels, so tests can check texts and labels stay together."""
    paths = {}
    for split, n in (("train", 600), ("test", 300)):
        profession = torch.randint(4, (n,), generator=gen).tolist()
        gender = torch.randint(2, (n,), generator=gen).tolist()
        rows = [{"hard_text": f"{split} bio {i}: profession {p} gender {g}", "profession": p, "gender": g}
                for i, (p, g) in enumerate(zip(profession, gender))]
        rows.append({"hard_text": "", "profession": 0, "gender": 0})  # empty texts are skipped
        paths[split] = str(folder / f"{split}.jsonl")
        with open(paths[split], "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    return paths


def parse(text):
    words = text.split()
    return words[0], int(words[4]), int(words[6])  # split, profession, gender


@pytest.fixture
def fake_bios(tmp_path, gen):
    source = HFTextSource("fake_bios", path="json", text_column="hard_text", class_column="profession",
                          classes=(0, 2, 3), balance_column="gender", spurious_values=(0, 1),
                          class_names={0: "accountant", 2: "attorney", 3: "chiropractor"})
    return source, {"data_files": write_fake_bios(tmp_path, gen), "cache_dir": str(tmp_path / "hf_cache")}


def test_hf_tasks_from_local_files(fake_bios, seed):
    source, load_kwargs = fake_bios
    suite = hf_text_tasks(source, train_per_class=40, test_per_class=20, seed=seed, scr_pairs=[(2, 3)],
                          load_kwargs=load_kwargs)
    assert len(suite.texts) == len(suite.labels)
    for text, row in zip(suite.texts, suite.labels):
        assert parse(text) == (row["split"], row["profession"], row["gender"])
    assert [t.name for t in suite.probing] == ["fake_bios/accountant", "fake_bios/attorney", "fake_bios/chiropractor"]
    (multi,) = suite.tpp
    assert multi.classes == ("accountant", "attorney", "chiropractor")
    for split, side, per_class in ((multi.train, "train", 40), (multi.test, "test", 20)):
        assert class_counts(split, 3) == [per_class] * 3
        for c, value in enumerate(source.classes):
            rows = split.rows[split.labels == c].tolist()
            assert all(suite.labels[r]["profession"] == value and suite.labels[r]["split"] == side for r in rows)
            genders = [suite.labels[r]["gender"] for r in rows]
            assert genders.count(0) == genders.count(1)  # balanced within the class, as SAEBench
    for task, value in zip(suite.probing, source.classes):
        for split in (task.train, task.test):
            positives = split.rows[split.labels == 1].tolist()
            negatives = split.rows[split.labels == 0].tolist()
            assert len(positives) == len(negatives)
            assert all(suite.labels[r]["profession"] == value for r in positives)
            assert all(suite.labels[r]["profession"] in source.classes and suite.labels[r]["profession"] != value
                       for r in negatives)

    (scr,) = suite.scr
    assert scr.name == "fake_bios/attorney_chiropractor"
    for biased, side, per_class in ((scr.biased_train, "train", 40), (scr.biased_test, "test", 20)):
        assert class_counts(biased, 2) == [per_class, per_class]
        for r, y in zip(biased.rows.tolist(), biased.labels.tolist()):
            assert (suite.labels[r]["profession"], suite.labels[r]["gender"]) == ((2, 0) if y else (3, 1))
            assert suite.labels[r]["split"] == side
    for t_split, s_split, side in ((scr.target_train, scr.spurious_train, "train"), (scr.target_test, scr.spurious_test, "test")):
        quadrants = [(suite.labels[r]["profession"], suite.labels[r]["gender"]) for r in t_split.rows.tolist()]
        assert all(suite.labels[r]["split"] == side for r in t_split.rows.tolist())
        assert [(2 if t else 3, 0 if s else 1) for t, s in zip(t_split.labels.tolist(), s_split.labels.tolist())] == quadrants
        assert len({quadrants.count(q) for q in [(2, 0), (2, 1), (3, 0), (3, 1)]}) == 1


def test_hf_tasks_report_what_is_missing(fake_bios):
    source, load_kwargs = fake_bios
    with pytest.raises(ValueError, match="rows wanted"):
        hf_text_tasks(source, train_per_class=10_000, test_per_class=20, load_kwargs=load_kwargs)
    wrong = HFTextSource("x", path="json", text_column="text", class_column="profession", classes=(0, 1))
    with pytest.raises(ValueError, match="no column"):
        hf_text_tasks(wrong, load_kwargs=load_kwargs)
    with pytest.raises(ValueError, match="unknown dataset"):
        hf_text_tasks("not/a_saebench_dataset")


# --- running all three evaluations ---------------------------------------------------------


def test_evaluate_suite_on_hand_built_latents(labels, seed, gen):
    """One latent per probed label, firing on its positive class; the other latents are noise.
    Top-1 sparse probing then finds it on every task."""
    suite = story_tasks(labels, seed=seed)
    n, d_model, d_sae = len(labels), 32, 24
    latents = torch.relu(torch.randn(n, d_sae, generator=gen)) * 0.3
    for j, task in enumerate(suite.probing):
        contrast_rows = torch.cat([task.train.rows[task.train.labels == 1], task.test.rows[task.test.labels == 1]])
        latents[contrast_rows, j] = 2.0
    W_dec = torch.nn.functional.normalize(torch.randn(d_sae, d_model, generator=gen), dim=1)
    resid = latents @ W_dec + 0.1 * torch.randn(n, d_model, generator=gen)
    cache = {}
    result = evaluate_suite(suite, resid, latents, W_dec, n_values=(2, 5), seed=seed, probe_cache=cache)
    for j, task in enumerate(suite.probing):
        assert result["sparse_probing"][task.name]["sae_top_k_latents"]["1"] == [j]
        assert result["sparse_probing"][task.name]["sae_top_k_accuracy"]["1"] > 0.97
    summary = result["summary"]
    assert set(summary) == {"sparse_probing_top_k", "sparse_probing_llm", "scr", "tpp"}
    assert summary["sparse_probing_top_k"]["1"] > 0.97 and set(summary["scr"]) == set(summary["tpp"]) == {"2", "5"}
    json.dumps(result)
    assert any(k.startswith("scr/") for k in cache) and any(k.startswith("tpp/") for k in cache)
    # the biased probe is SAEBench's: kept at its best epoch on the biased test set
    task = suite.scr[0]
    train, test = task.biased_train, task.biased_test
    fit = probes.fit_adamw_probe(resid[train.rows], train.labels, probes.SCR_TPP_PROBE, seed + 2,
                                 select_on=(resid[test.rows], test.labels))
    assert torch.equal(cache[f"scr/{task.name}"]["biased"].weight, fit.probe.weight)
    again = evaluate_suite(suite, resid, latents, W_dec, n_values=(2, 5), seed=seed, probe_cache=cache)
    assert again["summary"] == summary
    with pytest.raises(ValueError, match="texts"):
        evaluate_suite(suite, resid[:10], latents[:10], W_dec)

