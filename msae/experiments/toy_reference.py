"""The paper authors' reference toy code, run beside msae's toy SAEs on the same trees, seeds and
batches (notebook 19).

The reference is Noa Nabeshima's ``matryoshka-saes`` repository (MIT): its ``sae.py`` holds the
``MatryoshkaSAE`` class and its ``step`` (loss, adaptive L1 controller, optimiser, schedule and
latent sorting in one call). It is not part of msae: ``make toy-reference`` clones it at
``REFERENCE_COMMIT`` into ``build/reference``, and :func:`load_reference` imports that file. The
SAEs are built with the settings of the repository's training notebook (``train_saes_on_toy``):
40,000 steps of 200, lr 3e-2, 10 prefixes and latent sorting for Matryoshka, one prefix and no
sorting for the vanilla SAE, L1 start 0.2, the target L0 the tree's own (msae's choice too).
Each is fed msae's data stream for the seed (same feature directions, same batches) and scored
by ``msae.experiments.toy.evaluate`` through :class:`ReferenceAdapter`.
"""

from __future__ import annotations

import importlib.util
import json
import warnings
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch

from ..files import write_json
from . import toy
from .toy import SAE_KINDS, ToyExperimentConfig

REFERENCE_REPO = "https://github.com/noanabeshima/matryoshka-saes"
REFERENCE_COMMIT = "7b80f5fe36598f43f3181c5466a0365c7ce07807"
STARTING_L1 = 0.2  # the training notebook's starting_sparsity_loss_scale


def load_reference(reference_dir: str | Path) -> ModuleType:
    """The reference ``sae.py`` in ``reference_dir``, imported as a module."""
    path = Path(reference_dir) / "sae.py"
    if not path.is_file():
        raise FileNotFoundError(f"no reference sae.py in {reference_dir}: `make toy-reference` clones {REFERENCE_REPO} "
                                f"at {REFERENCE_COMMIT[:7]} into build/reference")
    spec = importlib.util.spec_from_file_location("matryoshka_saes_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ReferenceAdapter:
    """A trained reference SAE as ``toy.evaluate`` reads an SAE: ``encode`` gives codes in input
    units (the reference scales inputs by a running norm), ``decode`` maps them back, and
    ``W_dec`` is its decoder, so ``codes * ||W_dec||`` is the reference's own ``get_acts`` (when,
    as in the toy model, it has as many latents as input dimensions: its ``get_acts`` unnormalises
    by the square root of the number of latents, its reconstruction by that of ``d_model``)."""

    def __init__(self, sae):
        self.sae = sae

    def _scale(self) -> torch.Tensor:
        return self.sae.normalizer.running_avg.detach() / np.sqrt(self.sae.d_model)

    @property
    def W_dec(self) -> torch.Tensor:
        return self.sae.W_dec.detach()

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        x = self.sae.normalizer.normalize(x, update=False)
        return torch.relu(x @ self.sae.W_enc + self.sae.b_enc) * self._scale()

    @torch.no_grad()
    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return codes @ self.sae.W_dec + self.sae.b_dec * self._scale()


def train_reference(module: ModuleType, config: ToyExperimentConfig, kind: str) -> ReferenceAdapter:
    """One reference SAE (``kind`` "vanilla" or "matryoshka") trained on msae's stream for
    ``config.seed``. Its own randomness (torch init, numpy prefix draws) is seeded from it too."""
    if kind not in SAE_KINDS:
        raise ValueError(f"unknown SAE kind {kind!r}; choose one of {SAE_KINDS}")
    data = toy.make_data(config)
    target = config.target_l0 if config.target_l0 is not None else data.tree.expected_l0()
    matryoshka = kind == "matryoshka"
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    with warnings.catch_warnings():
        # its GradScaler("cuda") warns on a CPU-only torch (and the warning names the checkout's path)
        warnings.filterwarnings("ignore", message=".*GradScaler.*", category=UserWarning)
        sae = module.MatryoshkaSAE(
            d_model=data.d_model, n_latents=data.tree.n_features, n_prefixes=config.n_prefixes if matryoshka else 1,
            target_l0=target, n_steps=config.steps, lr=config.lr, permute_latents=matryoshka, sparsity_type="l1",
            starting_sparsity_loss_scale=STARTING_L1,
        )
    for _ in range(config.steps):
        sae.step(data.next_batch())
    return ReferenceAdapter(sae)


def result_path(config: ToyExperimentConfig, runs_dir: str | Path, kind: str) -> Path:
    return Path(runs_dir) / "toy_reference" / config.run_name() / f"{kind}.json"


def run_reference(config: ToyExperimentConfig, seeds: list[int], runs_dir: str | Path,
                  reference_dir: str | Path | None) -> dict[int, dict[str, dict[str, float]]] | None:
    """``{seed: {kind: toy.summary}}`` of the reference SAEs: read from ``runs_dir`` where a run
    left them, else trained (needs ``reference_dir``). None when some are missing and there is
    no reference source to train them with."""
    module = None
    out: dict[int, dict[str, dict[str, float]]] = {}
    for seed in seeds:
        seeded = replace(config, seed=seed)
        out[seed] = {}
        for kind in SAE_KINDS:
            path = result_path(seeded, runs_dir, kind)
            if path.is_file():
                out[seed][kind] = json.loads(path.read_text())["summary"]
                continue
            if reference_dir is None or not (Path(reference_dir) / "sae.py").is_file():
                return None
            module = module or load_reference(reference_dir)
            evaluation = toy.evaluate(train_reference(module, seeded, kind), toy.make_data(seeded), config.eval_samples)
            summary = toy.summary(evaluation)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_json(path, {"summary": summary, "reference_commit": REFERENCE_COMMIT, "config": _config_record(seeded)})
            out[seed][kind] = summary
    return out


def _config_record(config: ToyExperimentConfig) -> dict[str, Any]:
    return {"tree": toy.tree_key(config.tree), "steps": config.steps, "seed": config.seed, "lr": config.lr,
            "n_prefixes": config.n_prefixes, "batch_size": config.batch_size}
