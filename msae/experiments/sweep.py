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
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..data.activations import ActivationConfig, CachedActivations, CorpusConfig, LiveActivations, collect_activations
from ..data.models import load_model
from ..evals.lm_eval import build_eval_set, evaluate_sae
from ..files import write_json
from ..saes.prefixes import PAPER_GROUP_FRACTIONS, group_sizes_from_fractions, prefix_ends
from ..saes.registry import build_sae
from ..training.loop import TrainConfig, train_many
from .report import format_table
from .studies import StudyConfig, study_configs


@dataclass
class SweepConfig:
    model_name: str
    hook_name: str
    corpus: CorpusConfig
    eval_corpus: CorpusConfig
    d_sae: int
    k_values: list[int]
    matched_k: int  # Fig 13 matches the prefixes of the Matryoshka SAE with this k
    n_tokens: int  # activations collected
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
    threshold_beta: float = 0.999  # shorter runs need a faster EMA to settle
    exclude_first: int = 1
    prepend_bos: bool = False
    storage: str = "disk"  # "disk": collect once and reuse; "live": compute into a shuffled buffer
    buffer_tokens: int = 250_000  # live storage only
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
        configs[f"batchtopk_k{k}"] = dict(shared, k=k)
        configs[f"matryoshka_k{k}"] = dict(shared, k=k, group_sizes=groups)
    return configs


class SweepResults:
    """``metrics[name]`` for every SAE of the sweep, and where each one lives."""

    def __init__(self, folder: Path, config: SweepConfig, metrics: dict[str, dict], model=None):
        self.folder, self.config, self.metrics = folder, config, metrics
        self.model = model  # the language model the SAEs read, for further evaluations

    def sae_path(self, name: str) -> Path:
        return self.folder / name / "sae"

    def names(self, architecture: str) -> list[str]:
        """Main-sweep SAEs of one architecture, by increasing k."""
        return [f"{architecture}_k{k}" for k in self.config.k_values]

    def matched_batchtopk(self, prefix: dict, k: int) -> dict:
        """Metrics of the BatchTopK SAE matched to a prefix of ``matryoshka_k{k}`` (Fig 13); the
        full-width prefix is matched by the main sweep's BatchTopK SAE with the same k."""
        if prefix["width"] == self.config.d_sae:
            return self.metrics[f"batchtopk_k{k}"]
        return next(m for n, m in self.metrics.items() if n.startswith(f"batchtopk_w{prefix['width']}_"))

    def table(self, names: list[str], columns: list[str]) -> str:
        """Key numbers of the named SAEs, as text."""
        return format_table([{"sae": name, **self.metrics[name]} for name in names], ["sae", *columns])


def run_sweep(
    config: SweepConfig, runs_dir: str | Path, cache_dir: str | Path | None = None, progress: bool = True, model=None,
    studies: Sequence[str] = (), study_config: StudyConfig | None = None,
) -> SweepResults:
    """Run (or finish) the sweep, then the named ``studies`` (``msae.studies``: "baselines",
    "scaling", "ablations") with the sizes of ``study_config``; ``model`` overrides loading
    ``config.model_name`` (tests pass small stand-ins of the same architecture)."""
    check_device(config)
    runs_dir = Path(runs_dir)
    cache_dir = Path(cache_dir) if cache_dir is not None else runs_dir / "cache"
    folder = runs_dir / "sweeps" / config.name()
    results_path = folder / "results.json"
    metrics: dict[str, dict] = json.loads(results_path.read_text()) if results_path.is_file() else {}

    if model is None:
        model = load_model(config.model_name, cache_dir, config.device)
    if config.storage == "disk":
        activations = collect_activations(model, config.activation_config(), runs_dir / "activations", progress)
    write_json(folder / "config.json", asdict(config))
    eval_set = build_eval_set(
        model, config.hook_name, config.eval_corpus, config.eval_contexts, config.eval_context_size,
        config.exclude_first, config.prepend_bos,
    )

    def stream():
        if config.storage == "live":
            data = LiveActivations(model, config.activation_config(), config.batch_size, config.buffer_tokens, config.seed)
        else:
            data = CachedActivations(activations, config.batch_size, seed=config.seed)
        data.check(data.d_model, config.model_name, config.hook_name)
        return data

    def train_and_evaluate(group: dict[str, dict], description: str, prefixes: bool = True) -> None:
        """Train the SAEs of ``group`` together on one stream, then evaluate the new ones (and
        each prefix of a Matryoshka SAE when ``prefixes``)."""
        data = stream()
        # the main sweep's fields name no architecture: Matryoshka when they have groups
        saes = {name: build_sae(fields.get("architecture") or ("matryoshka" if fields.get("group_sizes") else "batchtopk"),
                                d_in=data.d_model,
                                **{k: v for k, v in fields.items() if k != "architecture"})
                for name, fields in group.items()}
        trained = train_many(saes, data, config.train_config(), {name: folder / name for name in group}, progress, description)
        for name, result in trained.items():
            if name not in metrics:
                groups = group[name].get("group_sizes")
                ends = prefix_ends(groups) if prefixes and groups and len(groups) > 1 else None
                metrics[name] = {"config": result.sae.export_config(), **evaluate_sae(result.sae, model, eval_set, ends)}
                write_json(results_path, metrics)

    train_and_evaluate(sae_configs(config), "sweep")
    # Fig 13: a BatchTopK SAE as wide as each Matryoshka prefix, with that prefix's L0
    reference = sae_configs(config)[f"batchtopk_k{config.matched_k}"]
    matched = {}
    for prefix in metrics[f"matryoshka_k{config.matched_k}"]["prefixes"][:-1]:
        k = max(1, round(prefix["l0"]))
        matched[f"batchtopk_w{prefix['width']}_k{k}"] = dict(reference, d_sae=prefix["width"], k=k)
    train_and_evaluate(matched, "prefix-matched BatchTopK")

    if studies:
        study_config = study_config or StudyConfig()
        studies_path = folder / "studies.json"  # the sizes each study last ran with
        recorded = json.loads(studies_path.read_text()) if studies_path.is_file() else {}
        write_json(studies_path, {**recorded, **{study: asdict(study_config) for study in studies}})
    for study in studies:
        group = study_configs(config, study_config, study)
        for width in sorted({fields["d_sae"] for fields in group.values()}):  # one stream per width
            # full width only: no figure reads a study SAE's prefixes, and each costs a pass of the model
            train_and_evaluate({n: f for n, f in group.items() if f["d_sae"] == width}, f"{study}, width {width}",
                               prefixes=False)
    return SweepResults(folder, config, metrics, model)
