"""The language-model sweep behind Figs 5, 8, 12 and 13: Matryoshka and BatchTopK SAEs across
L0s on one activation stream, plus BatchTopK SAEs as wide as each Matryoshka prefix.

``run_sweep(config, runs_dir)`` does everything and skips what is already done: it loads the
model, collects the activations once, trains every SAE (each on the same batches in the same
order, each resumable), evaluates them on held-out text and writes ``results.json``.

Its profiles (``paper``, ``default``, ``smoke``) are in ``msae.experiments.profiles``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import torch

from ..data.activations import ActivationConfig, CachedActivations, CorpusConfig, LiveActivations, collect_activations
from ..data.models import load_model
from ..distributed import Ranks, wait_for
from ..evals.lm_eval import EvalSet, build_eval_set, evaluate_sae, splice_controls
from ..files import update_json, write_json
from ..io import load_sae
from ..saes.prefixes import PAPER_GROUP_FRACTIONS, group_sizes_from_fractions, prefix_ends
from ..saes.registry import build_sae
from ..training.loop import TrainConfig, read_history, train_many
from .names import parse_sae_name, sae_name
from .report import format_table
from .studies import StudyConfig, study_configs


@dataclass
class SweepConfig:
    """One language-model sweep: the model and text, the SAEs, their training and evaluation
    (the profiles' values are in ``msae.experiments.profiles``).

    Attributes:
        model_name: the language model (``msae.data.models``), e.g. "smollm2-135m-instruct", "gemma-2-2b".
        hook_name: the transformer-lens hook whose activations the SAEs read.
        corpus: the training text.
        eval_corpus: the held-out text the SAEs are evaluated on.
        d_sae: the SAEs' width.
        k_values: the L0s of the main sweep (one BatchTopK and one Matryoshka SAE each).
        matched_k: Fig 13 matches the prefixes of the Matryoshka SAE with this k.
        n_tokens: activations collected (``storage="disk"``: in whole shards, so at least this many)
            or streamed.
        steps: training steps of every SAE.
        batch_size: tokens per training batch.
        context_size: tokens per training context.
        eval_context_size: tokens per evaluation context.
        eval_contexts: evaluation contexts.
        group_fractions: the Matryoshka groups, as fractions of d_sae.
        lr: the peak learning rate.
        warmup_steps: linear warm-up steps of the learning rate.
        decay_fraction: the final fraction of steps over which the learning rate decays.
        dead_after_tokens: a latent silent for this many tokens counts as dead (AuxK).
        threshold_start_step: the step from which the inference threshold is estimated.
        threshold_beta: the EMA factor of that estimate; shorter runs need a faster one to settle.
        exclude_first: tokens at the start of each context left out (the attention sink).
        prepend_bos: whether each context starts with the BOS token.
        storage: "disk": collect the activations once and reuse them; "live": compute them into a shuffled buffer.
        shard_contexts: contexts per shard file of collected activations (disk storage only).
        buffer_tokens: the size of that buffer (live storage only).
        device: where the SAEs train ("cpu", "cuda").
        needs_gpu: refuse to start without a CUDA GPU.
        seed: the seed of the SAEs' initialisation and the batch order.
    """

    model_name: str
    hook_name: str
    corpus: CorpusConfig
    eval_corpus: CorpusConfig
    d_sae: int
    k_values: list[int]
    matched_k: int
    n_tokens: int
    steps: int
    batch_size: int
    context_size: int = 256
    eval_context_size: int = 128
    eval_contexts: int = 64
    group_fractions: list[float] = field(default_factory=lambda: list(PAPER_GROUP_FRACTIONS))
    lr: float = 3e-4
    warmup_steps: int = 1000
    decay_fraction: float = 0.2
    dead_after_tokens: int = 10_000_000
    threshold_start_step: int = 1000
    threshold_beta: float = 0.999
    exclude_first: int = 1
    prepend_bos: bool = False
    storage: Literal["disk", "live"] = "disk"
    shard_contexts: int = 256
    buffer_tokens: int = 250_000
    device: str = "cpu"
    needs_gpu: bool = False
    seed: int = 0

    def __post_init__(self):
        if self.storage not in ("disk", "live"):
            raise ValueError(f"storage must be 'disk' or 'live', got {self.storage!r}")
        if self.matched_k not in self.k_values:
            raise ValueError(f"matched_k={self.matched_k} must be one of k_values={self.k_values}")

    def name(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def activation_config(self) -> ActivationConfig:
        return ActivationConfig(
            model_name=self.model_name, hook_name=self.hook_name, corpus=self.corpus, context_size=self.context_size,
            n_tokens=self.n_tokens, exclude_first=self.exclude_first, prepend_bos=self.prepend_bos,
            shard_contexts=self.shard_contexts,
        )

    def train_config(self) -> TrainConfig:
        return TrainConfig(
            steps=self.steps, lr=self.lr, warmup_steps=self.warmup_steps, decay_fraction=self.decay_fraction,
            device=self.device, checkpoint_every=max(1, self.steps // 10), log_every=max(1, self.steps // 100),
        )


def check_device(config: SweepConfig) -> None:
    if config.needs_gpu and not torch.cuda.is_available():
        raise RuntimeError(
            f"this profile runs {config.model_name} and needs a CUDA GPU, and none is available here; "
            "use the default profile on a CPU"
        )


def sae_configs(config: SweepConfig) -> dict[str, dict[str, Any]]:
    """The main sweep: for each k, a BatchTopK and a Matryoshka SAE of width d_sae, as
    MatryoshkaConfig fields (all but d_in, which the activations give)."""
    groups = group_sizes_from_fractions(config.d_sae, config.group_fractions)
    shared = dict(
        d_sae=config.d_sae, dead_after_tokens=config.dead_after_tokens,
        threshold_start_step=config.threshold_start_step, threshold_beta=config.threshold_beta, seed=config.seed,
        model_name=config.model_name, hook_name=config.hook_name,
    )
    configs = {}
    for k in config.k_values:
        configs[sae_name("batchtopk", k)] = dict(shared, k=k)
        configs[sae_name("matryoshka", k)] = dict(shared, k=k, group_sizes=groups)
    return configs


class SweepResults:
    """``metrics[name]`` for every SAE of the sweep (names: ``msae.experiments.names``), and
    where each one lives. :meth:`rows` gives them flat, one record per SAE, as the plots take them."""

    def __init__(self, folder: Path, config: SweepConfig, metrics: dict[str, dict], model=None, load_model=None):
        self.folder, self.config, self.metrics = folder, config, metrics
        self._model = model
        self._load_model = load_model  # called on first use of .model when none was given
        self._eval_set: EvalSet | None = None

    @property
    def model(self):
        """The language model the SAEs read, for further evaluations; loaded on first use when
        the sweep had nothing left to train (a notebook that only reads results never loads it)."""
        if self._model is None and self._load_model is not None:
            self._model = self._load_model()
        return self._model

    def eval_set(self) -> EvalSet:
        """The held-out tokens the metrics were computed on (rebuilt once, a model pass)."""
        if self._eval_set is None:
            self._eval_set = sweep_eval_set(self.model, self.config)
        return self._eval_set

    def splice_control_rows(self, name: str, seed: int = 0) -> list[dict[str, Any]]:
        """One row per replacement spliced into the model for SAE ``name``
        (``msae.evals.lm_eval.splice_controls``): ``sae``, ``replacement``, ``ce``, ``kl``,
        ``variance_explained`` (and ``n_components`` for the PCA reconstruction)."""
        controls = splice_controls(load_sae(self.sae_path(name)).eval(), self.model, self.eval_set(), seed)
        return [{"sae": name, "replacement": replacement, **values} for replacement, values in controls.items()]

    def sae_path(self, name: str) -> Path:
        return self.folder / name / "sae"

    def history(self, name: str) -> list[dict[str, float]]:
        """The statistics SAE ``name`` logged while training (``msae.training.loop.read_history``)."""
        return read_history(self.folder / name)

    def names(self, architecture: str) -> list[str]:
        """Main-sweep SAEs of one architecture, by increasing k."""
        return [sae_name(architecture, k) for k in self.config.k_values]

    def rows(self, names: Sequence[str] | None = None) -> list[dict[str, Any]]:
        """One flat record per SAE (all of them, or ``names`` in that order): ``sae``, the parts
        of its name (``architecture``, ``k``, ``width``: its number of latents, ``prefix_width``),
        ``target_l0`` (the ``k`` or ``target_l0`` it was configured with) and every scalar metric
        (``l0``, ``variance_explained``, ``ce_sae``, ``loss_recovered``, ...)."""
        rows = []
        for name in self.metrics if names is None else names:
            metrics, parsed = self.metrics[name], parse_sae_name(name)
            config = metrics["config"]
            rows.append({
                "sae": name, "architecture": parsed.architecture, "k": parsed.k, "width": config["d_sae"],
                "prefix_width": parsed.prefix_width, "target_l0": _target_l0(config),
                **{key: value for key, value in metrics.items() if isinstance(value, (int, float))},
            })
        return rows

    def rows_at_sweep_width(self) -> list[dict[str, Any]]:
        """:meth:`rows` of the SAEs at the sweep's width, less the prefix-matched BatchTopK ones:
        the main sweep, the baselines and the ablation arms (Fig 5, Figs 16-19)."""
        return self.rows([n for n in self.metrics if (p := parse_sae_name(n)).width is None and p.prefix_width is None])

    def latent_rows(self, name: str) -> list[dict[str, Any]]:
        """One record per latent of SAE ``name`` (Fig 12): ``latent``, ``frequency`` (its firing
        frequency on the evaluation tokens) and ``group`` (its Matryoshka group, 1-based; 1 for
        an SAE without prefixes)."""
        metrics = self.metrics[name]
        ends = [p["width"] for p in metrics.get("prefixes", [])] + [len(metrics["frequency"])]
        group = 1
        rows = []
        for latent, frequency in enumerate(metrics["frequency"]):
            while latent >= ends[group - 1]:
                group += 1
            rows.append({"latent": latent, "frequency": frequency, "group": group})
        return rows

    def prefix_rows(self, k: int) -> list[dict[str, Any]]:
        """Fig 13: for each prefix of the Matryoshka SAE with this k (the last is the whole SAE),
        its metrics (``source`` "matryoshka prefix") and those of the BatchTopK SAE of that width
        trained at the prefix's L0 (``source`` "batchtopk"); ``width`` is the prefix's."""
        rows = []
        for prefix in self.metrics[sae_name("matryoshka", k)]["prefixes"]:
            rows.append({"source": "matryoshka prefix", **prefix})
            matched = self.matched_batchtopk(prefix, k)
            rows.append({"source": "batchtopk", "width": prefix["width"],
                         **{key: v for key, v in matched.items() if isinstance(v, (int, float))}})
        return rows

    def matched_batchtopk(self, prefix: dict, k: int) -> dict:
        """Metrics of the BatchTopK SAE matched to a prefix of the Matryoshka SAE with this k
        (Fig 13); the full-width prefix is matched by the main sweep's BatchTopK SAE with the same k."""
        if prefix["width"] == self.config.d_sae:
            return self.metrics[sae_name("batchtopk", k)]
        return next(m for n, m in self.metrics.items() if parse_sae_name(n).prefix_width == prefix["width"])

    def table(self, names: list[str], columns: list[str]) -> str:
        """Key numbers of the named SAEs, as text."""
        return format_table(self.rows(names), ["sae", *columns])


def _target_l0(config: dict[str, Any]) -> float | None:
    """The ``k`` or ``target_l0`` an SAE was configured with; None for a fixed penalty (``relu_fixed``)."""
    target = config.get("k", config.get("target_l0"))
    return None if target is None else float(target)


def train_and_evaluate(group: dict[str, dict], data, config: SweepConfig, folder: Path, metrics: dict[str, dict], model,
                       eval_set: EvalSet, progress: bool, description: str, prefixes: bool = True,
                       ranks: Ranks | None = None) -> None:
    """Train the SAEs of ``group`` (``{name: build_sae fields}``) together on the stream ``data``,
    each in ``folder / name``; evaluate the new ones in the model (and each prefix of a Matryoshka
    SAE when ``prefixes``) into ``metrics`` and ``folder / "results.json"``.

    Over several processes (``ranks``, default from torchrun's environment) each rank trains and
    evaluates its share of the group (:meth:`msae.distributed.Ranks.mine`) on its own copy of
    the stream, which gives every SAE the batches one process would, then waits until the
    others' results are in ``results.json`` and reads them into ``metrics``."""
    ranks = Ranks.from_environment() if ranks is None else ranks
    mine = ranks.mine(list(group))
    # the main sweep's fields name no architecture: Matryoshka when they have groups
    saes = {name: build_sae(group[name].get("architecture") or ("matryoshka" if group[name].get("group_sizes") else "batchtopk"),
                            d_in=data.d_model, **{k: v for k, v in group[name].items() if k != "architecture"})
            for name in mine}
    train = replace(config.train_config(), device=ranks.device(config.device))
    label = description if ranks.world_size == 1 else f"{description} ({ranks})"
    trained = train_many(saes, data, train, {name: folder / name for name in mine}, progress, label) if saes else {}
    for name, result in trained.items():
        if name not in metrics or "kl_sae" not in metrics[name]:  # new, or evaluated before KL was measured
            groups = group[name].get("group_sizes")
            ends = prefix_ends(groups) if prefixes and groups and len(groups) > 1 else None
            entry = {"config": result.sae.export_config(), **evaluate_sae(result.sae, model, eval_set, ends)}
            # merged under a lock: another process may be adding its own SAEs to this file
            metrics.update(update_json(folder / "results.json", lambda saved, n=name, e=entry: {**saved, n: e}, {}))
    if ranks.world_size > 1:
        path = folder / "results.json"

        def evaluated() -> bool:
            saved = json.loads(path.read_text()) if path.is_file() else {}
            return all("kl_sae" in saved.get(name, {}) for name in group)

        wait_for(evaluated, f"the other ranks' SAEs of the {description} in {folder}")
        metrics.update(json.loads(path.read_text()))


def prefix_matched_configs(config: SweepConfig, metrics: dict[str, dict]) -> dict[str, dict]:
    """Fig 13: a BatchTopK SAE as wide as each prefix of the Matryoshka SAE with the matched k, at
    that prefix's L0 (read from its evaluation, so known once that SAE is evaluated)."""
    reference = sae_configs(config)[sae_name("batchtopk", config.matched_k)]
    matched = {}
    for prefix in metrics[sae_name("matryoshka", config.matched_k)]["prefixes"][:-1]:
        k = max(1, round(prefix["l0"]))
        matched[sae_name("batchtopk", k, prefix_width=prefix["width"])] = dict(reference, d_sae=prefix["width"], k=k)
    return matched


def _nothing_to_train(config: SweepConfig, metrics: dict[str, dict], studies: Sequence[str], study_config: StudyConfig) -> bool:
    """Whether every SAE a run would train is already evaluated (an SAE is evaluated only once its
    training has finished, and a sweep's folder is named by its whole config, steps included)."""
    def evaluated(names) -> bool:
        return all("kl_sae" in metrics.get(name, {}) for name in names)

    if not evaluated(sae_configs(config)):
        return False
    names = list(prefix_matched_configs(config, metrics))
    for study in studies:
        names += list(study_configs(config, study_config, study))
    return evaluated(names)


def sweep_eval_set(model, config: SweepConfig) -> EvalSet:
    """The sweep's held-out evaluation tokens and their clean activations."""
    return build_eval_set(model, config.hook_name, config.eval_corpus, config.eval_contexts, config.eval_context_size,
                          config.exclude_first, config.prepend_bos)


def run_sweep(
    config: SweepConfig, runs_dir: str | Path, cache_dir: str | Path | None = None, progress: bool = True, model=None,
    studies: Sequence[str] = (), study_config: StudyConfig | None = None, ranks: Ranks | None = None,
) -> SweepResults:
    """Run (or finish) the sweep, then the named ``studies`` (``msae.experiments.studies``: "baselines",
    "scaling", "ablations", "relu_fixed"; the last reads the trained baselines, so it comes after
    them) with the sizes of ``study_config``; ``model`` overrides loading ``config.model_name``
    (tests pass small stand-ins of the same architecture). Under torchrun (``ranks``, default from
    its environment) the ranks share the harvesting and the SAEs (:mod:`msae.distributed`); every
    rank returns the whole sweep's results."""
    check_device(config)
    ranks = Ranks.from_environment() if ranks is None else ranks
    runs_dir = Path(runs_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else runs_dir / "cache"
    folder = runs_dir / "sweeps" / config.name()
    results_path = folder / "results.json"
    metrics: dict[str, dict] = json.loads(results_path.read_text()) if results_path.is_file() else {}

    study_config = study_config or StudyConfig()
    if studies:
        studies_path = folder / "studies.json"  # the sizes each study last ran with
        update_json(studies_path, lambda recorded: {**recorded, **{study: asdict(study_config) for study in studies}}, {})
    if model is None and ranks.world_size == 1 and _nothing_to_train(config, metrics, studies, study_config):
        # every SAE is trained and evaluated: the model loads only if a later evaluation asks for it
        return SweepResults(folder, config, metrics, load_model=lambda: load_model(
            config.model_name, cache_dir, ranks.device(config.device)))
    if model is None:
        model = load_model(config.model_name, cache_dir, ranks.device(config.device))
    if config.storage == "disk":
        activations = collect_activations(model, config.activation_config(), runs_dir / "activations", progress, ranks)
    write_json(folder / "config.json", asdict(config))
    eval_set = sweep_eval_set(model, config)

    def stream():
        if config.storage == "live":
            data = LiveActivations(model, config.activation_config(), config.batch_size, config.buffer_tokens, config.seed)
        else:
            data = CachedActivations(activations, config.batch_size, seed=config.seed)
        data.check(data.d_model, config.model_name, config.hook_name)
        return data

    def train_group(group: dict[str, dict], description: str, prefixes: bool = True) -> None:
        train_and_evaluate(group, stream(), config, folder, metrics, model, eval_set, progress, description, prefixes,
                           ranks)

    train_group(sae_configs(config), "sweep")
    train_group(prefix_matched_configs(config, metrics), "prefix-matched BatchTopK")
    for study in studies:
        group = study_configs(config, study_config, study, folder)
        for width in sorted({fields["d_sae"] for fields in group.values()}):  # one stream per width
            # full width only: no figure reads a study SAE's prefixes, and each costs a pass of the model
            train_group({n: f for n, f in group.items() if f["d_sae"] == width}, f"{study}, width {width}",
                        prefixes=False)
    return SweepResults(folder, config, metrics, model)
