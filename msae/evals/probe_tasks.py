"""Probing tasks: which texts, with which labels, each evaluation trains and tests on.

A task refers to rows of one set of texts (the stories of a :class:`TextActivations`, or texts
sampled from a Hugging Face dataset), so the activations are collected and pooled once and
every task indexes them.

- ``ProbeTask``: a binary task (sparse probing) or a multi-class one (TPP); class ids index
  ``classes``.
- ``SpuriousCorrelationTask`` (SCR): a biased training set where target and spurious attribute
  agree perfectly ((A, male) labelled 1, (B, female) labelled 0), and balanced sets (all four
  combinations equally often) labelled by each attribute, for training and testing.

Story tasks (:func:`story_tasks`, the ``default`` profile) stand in for SAEBench's datasets:
sentiment, setting, profession and gender probes; SCR with profession group as target and the
hero's gender as spurious attribute (the Bias in Bios analogue); TPP over the six profession
groups. :func:`hf_text_tasks` builds the same objects from SAEBench's Hugging Face datasets
(``paper`` profile). :func:`evaluate_suite` runs all three evaluations for one SAE.

Train and test texts never overlap: every text is assigned to one side once (stories by a seeded
split, Hugging Face rows by the dataset's own splits), and every task samples within the sides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..data.story_vocab import PROFESSION_GROUPS
from . import probing

GROUP_OF_PROFESSION = {p: group for group, professions in PROFESSION_GROUPS.items() for p in professions}


@dataclass
class Labelled:
    """Rows of a suite's texts with a class id each.

    Attributes:
        rows: (n,) long, rows of the suite's texts.
        labels: (n,) long, their class ids.
    """

    rows: torch.Tensor
    labels: torch.Tensor

    def __post_init__(self):
        if self.rows.shape != self.labels.shape or self.rows.ndim != 1:
            raise ValueError(f"rows {tuple(self.rows.shape)} and labels {tuple(self.labels.shape)} "
                             "must be equal 1-d shapes")


@dataclass
class ProbeTask:
    """A binary (sparse probing) or multi-class (TPP) task.

    Attributes:
        name: the task's name.
        classes: the name of each class id; (negative, positive) for a binary task.
        train: the training rows and labels.
        test: the test rows and labels (no text in ``train``).
    """

    name: str
    classes: tuple[str, ...]
    train: Labelled
    test: Labelled


@dataclass
class SpuriousCorrelationTask:
    """An SCR task: a target attribute and a spurious one that agree on the biased set.

    Attributes:
        name: the task's name.
        target_classes: the names of target labels 0 and 1.
        spurious_classes: the names of spurious labels 0 and 1.
        biased_train: labelled 1 for (target 1, spurious 1), 0 for (target 0, spurious 0).
        target_train: balanced over the four combinations, labelled by the target.
        spurious_train: the same rows, labelled by the spurious attribute.
        target_test: test rows balanced over the four combinations, labelled by the target.
        spurious_test: the same rows, labelled by the spurious attribute.
        biased_test: test rows labelled like ``biased_train``; SAEBench keeps the biased probe's
            best epoch on it. None: the biased probe is its last epoch's.
    """

    name: str
    target_classes: tuple[str, str]
    spurious_classes: tuple[str, str]
    biased_train: Labelled
    target_train: Labelled
    spurious_train: Labelled
    target_test: Labelled
    spurious_test: Labelled
    biased_test: Labelled | None = None


@dataclass
class TaskSuite:
    """Every task of one set of texts; the tasks' rows index ``labels`` (and ``texts``).

    Attributes:
        labels: one dict of labels per text.
        probing: the binary sparse-probing tasks.
        scr: the spurious-correlation (SCR) tasks.
        tpp: the multi-class targeted-probe-perturbation (TPP) tasks.
        texts: the texts to run the model on, when the suite chose them (Hugging Face
            datasets); None: the caller's texts (stories).
    """

    labels: list[dict[str, Any]]
    probing: list[ProbeTask] = field(default_factory=list)
    scr: list[SpuriousCorrelationTask] = field(default_factory=list)
    tpp: list[ProbeTask] = field(default_factory=list)
    texts: list[str] | None = None

    def describe(self) -> dict[str, Any]:
        """Task names and sizes, for printing."""
        return {
            "n_texts": len(self.labels),
            "probing": {t.name: {"train": len(t.train.rows), "test": len(t.test.rows)} for t in self.probing},
            "scr": {t.name: {"biased_train": len(t.biased_train.rows), "balanced_train": len(t.target_train.rows),
                             "test": len(t.target_test.rows),
                             "biased_test": 0 if t.biased_test is None else len(t.biased_test.rows)} for t in self.scr},
            "tpp": {t.name: {"classes": list(t.classes), "train": len(t.train.rows), "test": len(t.test.rows)}
                    for t in self.tpp},
        }


# --- generic builders on per-row class ids (-1: not in the task) ---------------------------------


def split_rows(n: int, test_fraction: float, seed: int) -> torch.Tensor:
    """(n,) bool: which rows are test rows (a seeded random ``test_fraction`` of them)."""
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    is_test = torch.zeros(n, dtype=torch.bool)
    is_test[order[: round(n * test_fraction)]] = True
    return is_test


def balanced_sample(class_ids: torch.Tensor, n_classes: int, allowed: torch.Tensor, generator: torch.Generator,
                    max_per_class: int | None = None, what: str = "task") -> Labelled:
    """Equally many rows of each class among ``allowed`` rows: the smallest class's count, at
    most ``max_per_class``, sampled without replacement."""
    pools = [((class_ids == c) & allowed).nonzero()[:, 0] for c in range(n_classes)]
    count = min(len(p) for p in pools)
    if max_per_class is not None:
        count = min(count, max_per_class)
    if count == 0:
        raise ValueError(f"{what}: a class has no examples here (class sizes {[len(p) for p in pools]})")
    rows = [p[torch.randperm(len(p), generator=generator)[:count]].sort().values for p in pools]
    labels = [torch.full((count,), c, dtype=torch.long) for c in range(n_classes)]
    return Labelled(torch.cat(rows), torch.cat(labels))


def class_task(name: str, classes: Sequence[str], class_ids: torch.Tensor, is_test: torch.Tensor, seed: int,
               max_per_class: int | None = None) -> ProbeTask:
    """A balanced task from per-row class ids (-1 for rows outside it)."""
    generator = torch.Generator().manual_seed(seed)
    train = balanced_sample(class_ids, len(classes), ~is_test, generator, max_per_class, f"{name} (train)")
    test = balanced_sample(class_ids, len(classes), is_test, generator, max_per_class, f"{name} (test)")
    return ProbeTask(name, tuple(classes), train, test)


def one_vs_rest(task: ProbeTask, positive: int, seed: int) -> ProbeTask:
    """Class ``positive`` against as many rows drawn evenly from the task's other classes."""
    generator = torch.Generator().manual_seed(seed)

    def side(split: Labelled) -> Labelled:
        rows, labels = probing.one_vs_rest_rows(split.labels, positive, generator)
        return Labelled(split.rows[rows], labels)

    return ProbeTask(f"{task.name}/{task.classes[positive]}", ("other", task.classes[positive]),
                     side(task.train), side(task.test))


def spurious_correlation_task(
    name: str, target: torch.Tensor, spurious: torch.Tensor, is_test: torch.Tensor, seed: int,
    target_classes: tuple[str, str], spurious_classes: tuple[str, str],
    max_per_quadrant: int | None = None, max_biased_per_class: int | None = None,
) -> SpuriousCorrelationTask:
    """SCR sets from per-row 0/1 target and spurious labels (-1: not in the task). Balanced sets
    take the same count from each (target, spurious) quadrant; the biased set takes
    (1, 1) vs (0, 0) rows, as many as the smaller of the two holds (SAEBench's layout), on each side."""
    generator = torch.Generator().manual_seed(seed)
    quadrant = torch.where((target >= 0) & (spurious >= 0), 2 * target + spurious, -1)  # 0..3

    def balanced(allowed: torch.Tensor, side: str) -> tuple[Labelled, Labelled]:
        both = balanced_sample(quadrant, 4, allowed, generator, max_per_quadrant, f"{name} ({side})")
        return Labelled(both.rows, both.labels // 2), Labelled(both.rows, both.labels % 2)

    target_train, spurious_train = balanced(~is_test, "train")
    target_test, spurious_test = balanced(is_test, "test")
    agreeing = torch.where(quadrant == 3, 1, torch.where(quadrant == 0, 0, -1))
    biased = balanced_sample(agreeing, 2, ~is_test, generator, max_biased_per_class, f"{name} (biased train)")
    biased_test = balanced_sample(agreeing, 2, is_test, generator, max_biased_per_class, f"{name} (biased test)")
    return SpuriousCorrelationTask(name, target_classes, spurious_classes, biased, target_train, spurious_train,
                                   target_test, spurious_test, biased_test)


# --- tasks from story labels -----------------------------------------------------------------


@dataclass(frozen=True)
class LabelContrast:
    """Label ``key`` in ``negative`` values -> 0, in ``positive`` values -> 1, else not in the task.

    Attributes:
        name: the task's name.
        key: the story label it reads, e.g. "gender".
        negative: the label values of class 0.
        positive: the label values of class 1.
    """

    name: str
    key: str
    negative: tuple[str, ...]
    positive: tuple[str, ...]

    def class_ids(self, labels: Sequence[dict[str, Any]]) -> torch.Tensor:
        values = [row.get(self.key) for row in labels]
        if all(v is None for v in values):
            raise ValueError(f"no text has the label {self.key!r}")
        known = set(values) - {None}
        missing = [v for v in (*self.negative, *self.positive) if v not in known]
        if missing:
            raise ValueError(f"{self.name}: no text has {self.key} in {missing}; "
                             f"values seen: {sorted(map(str, known))[:12]}")
        return torch.tensor([0 if v in self.negative else 1 if v in self.positive else -1 for v in values])

    @property
    def classes(self) -> tuple[str, str]:
        return "+".join(self.negative), "+".join(self.positive)


STORY_PROBES = (
    LabelContrast("sentiment", "sentiment", ("sad",), ("happy",)),
    LabelContrast("setting", "place_kind", ("town",), ("nature",)),
    LabelContrast("profession", "profession_group", ("service",), ("food",)),
    LabelContrast("gender", "gender", ("male",), ("female",)),
)
# Bias in Bios analogue: two halves of the profession groups are the target, the hero's gender
# the spurious attribute; the biased set holds (care/craft/arts, male) stories labelled 1 and
# (food/service/travel, female) stories labelled 0.
STORY_SCR = (
    (LabelContrast("profession", "profession_group", ("food", "service", "travel"), ("care", "craft", "arts")),
     LabelContrast("gender", "gender", ("female",), ("male",))),
)
STORY_TPP = "profession_group"  # six classes; "animal_class" (four) also works


def with_derived_labels(labels: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Story labels plus ``profession_group`` (from story_vocab.PROFESSION_GROUPS)."""
    out = []
    for row in labels:
        row = dict(row)
        if "profession" in row:
            row["profession_group"] = GROUP_OF_PROFESSION.get(row["profession"])
        out.append(row)
    return out


def story_tasks(
    labels: Sequence[dict[str, Any]],
    seed: int = 0,
    test_fraction: float = 0.2,
    max_per_class: int | None = None,
    probes: Sequence[LabelContrast] = STORY_PROBES,
    scr_pairs: Sequence[tuple[LabelContrast, LabelContrast]] = STORY_SCR,
    tpp_label: str | None = STORY_TPP,
) -> TaskSuite:
    """The default profile's tasks on stories with these ``labels`` (rows of a TextActivations).
    ``max_per_class`` caps each class (each quadrant for SCR's balanced sets)."""
    rows = with_derived_labels(labels)
    is_test = split_rows(len(rows), test_fraction, seed)
    suite = TaskSuite(labels=rows)
    for i, contrast in enumerate(probes):
        suite.probing.append(class_task(contrast.name, contrast.classes, contrast.class_ids(rows), is_test,
                                        seed + 1 + i, max_per_class))
    for i, (target, spurious) in enumerate(scr_pairs):
        suite.scr.append(spurious_correlation_task(
            f"{target.name}_vs_{spurious.name}", target.class_ids(rows), spurious.class_ids(rows), is_test,
            seed + 101 + i, target.classes, spurious.classes, max_per_class,
            None if max_per_class is None else 2 * max_per_class,
        ))
    if tpp_label is not None:
        values = [row.get(tpp_label) for row in rows]
        classes = sorted({v for v in values if v is not None})
        if len(classes) < 2:
            raise ValueError(f"the TPP label {tpp_label!r} has {len(classes)} values; it needs several classes")
        class_ids = torch.tensor([classes.index(v) if v is not None else -1 for v in values])
        suite.tpp.append(class_task(tpp_label, classes, class_ids, is_test, seed + 201, max_per_class))
    return suite


# --- tasks from SAEBench's Hugging Face datasets (paper profile) --------------------------------


@dataclass(frozen=True)
class HFTextSource:
    """A text classification dataset the way SAEBench reads it.

    Attributes:
        name: SAEBench's name for it (task names start with it).
        path: what ``datasets.load_dataset`` loads.
        text_column: the column holding the text.
        class_column: the column holding the class.
        classes: the class values SAEBench probes (its "chosen classes").
        balance_column: each class is balanced over this column's values (SAEBench's
            column2); for SCR, the spurious attribute. None: no balancing, no SCR.
        spurious_values: (value labelled 1, value labelled 0) of ``balance_column``, for SCR;
            None: no SCR.
        class_names: class value -> readable name; None: the values themselves.
        train_split: the dataset split training rows come from.
        test_split: the dataset split test rows come from.
    """

    name: str
    path: str
    text_column: str
    class_column: str
    classes: tuple
    balance_column: str | None = None
    spurious_values: tuple | None = None
    class_names: dict | None = None
    train_split: str = "train"
    test_split: str = "test"


_BIOS = dict(path="LabHC/bias_in_bios", text_column="hard_text", class_column="profession",
             balance_column="gender", spurious_values=(0, 1))  # gender 0 = male, 1 = female
PROFESSIONS = ("accountant architect attorney chiropractor comedian composer dentist dietitian dj filmmaker "
               "interior_designer journalist model nurse painter paralegal pastor personal_trainer photographer "
               "physician poet professor psychologist rapper software_engineer surgeon teacher yoga_teacher").split()
_AMAZON = dict(path="canrager/amazon_reviews_mcauley_1and5", text_column="text")
AMAZON_CATEGORIES = ("All_Beauty Toys_and_Games Cell_Phones_and_Accessories Industrial_and_Scientific Gift_Cards "
                     "Musical_Instruments Electronics Handmade_Products Arts_Crafts_and_Sewing Baby_Products "
                     "Health_and_Household Office_Products Digital_Music Grocery_and_Gourmet_Food Sports_and_Outdoors "
                     "Home_and_Kitchen Subscription_Boxes Tools_and_Home_Improvement Pet_Supplies Video_Games "
                     "Kindle_Store Clothing_Shoes_and_Jewelry Patio_Lawn_and_Garden Unknown Books Automotive "
                     "CDs_and_Vinyl Beauty_and_Personal_Care Amazon_Fashion Magazine_Subscriptions Software "
                     "Health_and_Personal_Care Appliances Movies_and_TV").split()

# SAEBench's datasets that load with a plain load_dataset (codeparrot/github-code and
# Helsinki-NLP/europarl need their own loaders and are not included).
SAEBENCH_SOURCES = {
    "LabHC/bias_in_bios_class_set1": HFTextSource("LabHC/bias_in_bios_class_set1", classes=(0, 1, 2, 6, 9),
                                                  class_names=dict(enumerate(PROFESSIONS)), **_BIOS),
    "LabHC/bias_in_bios_class_set2": HFTextSource("LabHC/bias_in_bios_class_set2", classes=(11, 13, 14, 18, 19),
                                                  class_names=dict(enumerate(PROFESSIONS)), **_BIOS),
    "LabHC/bias_in_bios_class_set3": HFTextSource("LabHC/bias_in_bios_class_set3", classes=(20, 21, 22, 25, 26),
                                                  class_names=dict(enumerate(PROFESSIONS)), **_BIOS),
    "canrager/amazon_reviews_mcauley_1and5": HFTextSource(
        "canrager/amazon_reviews_mcauley_1and5", class_column="category", classes=(1, 2, 3, 5, 6),
        balance_column="rating", spurious_values=(1.0, 5.0), class_names=dict(enumerate(AMAZON_CATEGORIES)), **_AMAZON),
    "canrager/amazon_reviews_mcauley_1and5_sentiment": HFTextSource(
        "canrager/amazon_reviews_mcauley_1and5_sentiment", class_column="rating", classes=(1.0, 5.0), **_AMAZON),
    "fancyzhx/ag_news": HFTextSource("fancyzhx/ag_news", path="fancyzhx/ag_news", text_column="text",
                                     class_column="label", classes=(0, 1, 2, 3),
                                     class_names={0: "World", 1: "Sports", 2: "Business", 3: "Sci/Tech"}),
}
# SAEBench's SCR pairs: (class labelled 1, class labelled 0); the spurious attribute is the
# source's balance column (gender for Bias in Bios, rating for Amazon reviews).
SAEBENCH_SCR_PAIRS = {
    "LabHC/bias_in_bios_class_set1": [(21, 13), (1, 11), (25, 22), (2, 26)],  # professor/nurse, architect/journalist,
    # surgeon/psychologist, attorney/teacher
    "canrager/amazon_reviews_mcauley_1and5": [(24, 26), (30, 6), (18, 11), (3, 1)],  # Books/CDs, Software/Electronics,
    # Pet_Supplies/Office_Products, Industrial_and_Scientific/Toys_and_Games
}


class _RowRegistry:
    """The texts a suite uses, each dataset row once, with its labels and side."""

    def __init__(self, source: HFTextSource, tables: dict[str, dict[str, Any]]):
        self.source, self.tables = source, tables
        self.index: dict[tuple[str, int], int] = {}
        self.texts: list[str] = []
        self.labels: list[dict[str, Any]] = []

    def add(self, split: str, rows: np.ndarray) -> torch.Tensor:
        """Register dataset rows of ``split``; returns their (n,) rows in the suite."""
        table, src = self.tables[split], self.source
        out = []
        for r in rows.tolist():
            if (split, r) not in self.index:
                self.index[(split, r)] = len(self.texts)
                self.texts.append(table[src.text_column][r])
                row = {"split": split, src.class_column: table[src.class_column][r].item()}
                if src.balance_column:
                    row[src.balance_column] = table[src.balance_column][r].item()
                self.labels.append(row)
            out.append(self.index[(split, r)])
        return torch.tensor(out, dtype=torch.long)


def _sample(table: dict[str, Any], source: HFTextSource, where: dict[str, Any], n: int, rng: np.random.Generator,
            balance: bool, what: str) -> np.ndarray:
    """``n`` row indices where the columns equal ``where`` (and the text is not empty), with
    ``balance`` equally many per value of the balance column."""
    keep = table["nonempty"].copy()
    for column, value in where.items():
        keep &= table[column] == value
    if balance and source.balance_column:
        groups = table[source.balance_column]
        values = sorted(set(groups[keep].tolist()))
        if not values:
            raise ValueError(f"{what}: no rows with {where}")
        per_value = n // len(values)
        return np.concatenate([_choose(np.nonzero(keep & (groups == v))[0], per_value, rng,
                                       f"{what}, {source.balance_column}={v}") for v in values])
    return _choose(np.nonzero(keep)[0], n, rng, what)


def _choose(candidates: np.ndarray, n: int, rng: np.random.Generator, what: str) -> np.ndarray:
    if len(candidates) < n:
        raise ValueError(f"{what}: {n} rows wanted, the dataset has {len(candidates)}; ask for fewer")
    return np.sort(rng.choice(candidates, size=n, replace=False))


def _load_tables(source: HFTextSource, load_kwargs: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Per side ("train", "test"): the text column as a list, the label columns as arrays."""
    import datasets

    tables = {}
    for side, split in (("train", source.train_split), ("test", source.test_split)):
        dataset = datasets.load_dataset(source.path, split=split, **(load_kwargs or {}))
        columns = [c for c in (source.text_column, source.class_column, source.balance_column) if c]
        missing = [c for c in columns if c not in dataset.column_names]
        if missing:
            raise ValueError(f"{source.path} ({split}) has no column {missing}; it has {dataset.column_names}")
        texts = dataset[source.text_column]
        table = {source.text_column: texts, "nonempty": np.array([bool(t and t.strip()) for t in texts])}
        for c in columns[1:]:
            table[c] = np.asarray(dataset[c])
        tables[side] = table
    return tables


def hf_text_tasks(
    source: HFTextSource | str,
    train_per_class: int = 2000,
    test_per_class: int = 500,
    seed: int = 42,
    scr_pairs: Sequence[tuple[Any, Any]] | None = None,
    tpp: bool = True,
    load_kwargs: dict[str, Any] | None = None,
) -> TaskSuite:
    """Tasks from a Hugging Face dataset, as SAEBench builds them: per chosen class, a one-vs-rest
    probing task (each class balanced over ``balance_column``; negatives drawn evenly from the other
    chosen classes); optionally a TPP task over the chosen classes, and SCR tasks for
    ``scr_pairs`` (class labelled 1, class labelled 0; the spurious attribute is
    ``balance_column``, ``spurious_values[0]`` labelled 1). SAEBench's sizes: 4000 training and
    1000 test texts per probing task, i.e. 2000 and 500 per class; an SCR quadrant gets half a
    class, the biased training and test sets a class per label.

    ``source`` is an :class:`HFTextSource` or a key of ``SAEBENCH_SOURCES``; ``load_kwargs`` go to
    ``datasets.load_dataset`` (e.g. ``data_files`` with ``path="json"`` for local copies)."""
    if isinstance(source, str):
        if source not in SAEBENCH_SOURCES:
            raise ValueError(f"unknown dataset {source!r}; known: {', '.join(SAEBENCH_SOURCES)}")
        source = SAEBENCH_SOURCES[source]
    if scr_pairs is None:
        scr_pairs = SAEBENCH_SCR_PAIRS.get(source.name, [])
    if scr_pairs and (source.spurious_values is None or source.balance_column is None):
        raise ValueError(f"{source.name} has no spurious attribute (balance_column and spurious_values) for SCR")
    if train_per_class < 2 or test_per_class < 2:
        raise ValueError(f"train_per_class and test_per_class must be at least 2, got {train_per_class}, {test_per_class}")
    tables = _load_tables(source, load_kwargs)
    rng = np.random.default_rng(seed)
    registry = _RowRegistry(source, tables)

    def name_of(value) -> str:
        return str((source.class_names or {}).get(value, value))

    def labelled(parts: list[tuple[torch.Tensor, int]]) -> Labelled:
        return Labelled(torch.cat([rows for rows, _ in parts]),
                        torch.cat([torch.full((len(rows),), label, dtype=torch.long) for rows, label in parts]))

    sides = {}
    for side, per_class in (("train", train_per_class), ("test", test_per_class)):
        sides[side] = labelled([
            (registry.add(side, _sample(tables[side], source, {source.class_column: value}, per_class, rng, True,
                                        f"{source.name} {side}, class {value}")), c)
            for c, value in enumerate(source.classes)])
    multi = ProbeTask(source.name, tuple(name_of(v) for v in source.classes), sides["train"], sides["test"])
    suite = TaskSuite(labels=registry.labels, texts=registry.texts)
    suite.probing = [one_vs_rest(multi, c, seed + 1 + c) for c in range(len(source.classes))]
    if tpp:
        suite.tpp = [multi]

    spurious_1, spurious_0 = source.spurious_values or (None, None)
    for positive, negative in scr_pairs:
        balanced = {}
        for side, per_class in (("train", train_per_class), ("test", test_per_class)):
            quadrants = []  # (rows, target label, spurious label)
            for value, target in ((positive, 1), (negative, 0)):
                for spurious_value, spurious in ((spurious_1, 1), (spurious_0, 0)):
                    where = {source.class_column: value, source.balance_column: spurious_value}
                    rows = registry.add(side, _sample(tables[side], source, where, per_class // 2, rng, False,
                                                      f"{source.name} {side}, {where}"))
                    quadrants.append((rows, target, spurious))
            balanced[side] = (labelled([(rows, t) for rows, t, _ in quadrants]),
                              labelled([(rows, s) for rows, _, s in quadrants]))
        biased = {}  # (positive, spurious 1) labelled 1, (negative, spurious 0) labelled 0
        for side, per_class in (("train", train_per_class), ("test", test_per_class)):
            parts = []
            for value, spurious_value, label in ((positive, spurious_1, 1), (negative, spurious_0, 0)):
                where = {source.class_column: value, source.balance_column: spurious_value}
                rows = _sample(tables[side], source, where, per_class, rng, False, f"{source.name} biased {side}, {where}")
                parts.append((registry.add(side, rows), label))
            biased[side] = labelled(parts)
        suite.scr.append(SpuriousCorrelationTask(
            f"{source.name}/{name_of(positive)}_{name_of(negative)}", (name_of(negative), name_of(positive)),
            (str(spurious_0), str(spurious_1)), biased["train"], *balanced["train"], *balanced["test"], biased["test"]))
    return suite


# --- running the evaluations of one SAE on a suite ----------------------------------------------


def evaluate_suite(
    suite: TaskSuite,
    resid: torch.Tensor,
    latents: torch.Tensor,
    W_dec: torch.Tensor,
    ks: Sequence[int] = probing.SPARSE_PROBING_KS,
    n_values: Sequence[int] = probing.ABLATION_N_VALUES,
    C: float = 1.0,
    seed: int = 0,
    probe_cache: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Sparse probing, SCR and TPP of one SAE on a suite. ``resid (N, d_model)`` and ``latents
    (N, d_sae)`` are the pooled activations of every text of the suite. ``C``: the k-sparse
    probes' inverse regularisation; ``seed``: the model-activation probes' seeds and TPP's
    sampling. ``probe_cache``: pass the same dict for every SAE of a suite, and the
    model-activation probes are trained once.

    The summary holds the Fig 7 numbers: mean top-k accuracy over probing tasks, and the SCR and
    TPP scores per n, averaged over SCR pairs and TPP tasks."""
    if resid.shape[0] != len(suite.labels) or latents.shape[0] != len(suite.labels):
        raise ValueError(f"the suite has {len(suite.labels)} texts, resid has {resid.shape[0]} rows and "
                         f"latents {latents.shape[0]}")
    cache = {} if probe_cache is None else probe_cache

    def pooled(split: Labelled) -> probing.PooledSplit:
        return probing.PooledSplit(resid[split.rows], latents[split.rows], split.labels)

    result: dict[str, Any] = {"sparse_probing": {}, "scr": {}, "tpp": {}}
    for task in suite.probing:
        train, test = pooled(task.train), pooled(task.test)
        key = f"probing/{task.name}"
        if key not in cache:
            cache[key] = probing.train_llm_probe(train.resid, train.labels, test.resid, test.labels, seed)
        result["sparse_probing"][task.name] = probing.sparse_probing(
            train.latents, train.labels, test.latents, test.labels, ks, train.resid, test.resid, C=C,
            resid_probe=cache[key])
    for task in suite.scr:
        result["scr"][task.name] = probing.scr(
            pooled(task.biased_train), pooled(task.target_train), pooled(task.spurious_train),
            pooled(task.target_test), pooled(task.spurious_test), W_dec, n_values, seed=seed,
            probes=cache.setdefault(f"scr/{task.name}", {}),
            biased_test=None if task.biased_test is None else pooled(task.biased_test))
    for task in suite.tpp:
        result["tpp"][task.name] = probing.tpp(
            pooled(task.train), pooled(task.test), W_dec, n_values, seed=seed, class_names=task.classes,
            probes=cache.setdefault(f"tpp/{task.name}", {}))

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    sparse = result["sparse_probing"].values()
    result["summary"] = {
        "sparse_probing_top_k": {str(k): mean([r["sae_top_k_accuracy"][str(k)] for r in sparse]) for k in ks},
        "sparse_probing_llm": mean([r["llm_accuracy"] for r in sparse]),
        "scr": {str(n): mean([r["scr_metric"][str(n)] for r in result["scr"].values()]) for n in n_values},
        "tpp": {str(n): mean([r["tpp"][str(n)] for r in result["tpp"].values()]) for n in n_values},
    }
    return result
