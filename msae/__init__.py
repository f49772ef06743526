"""msae: Matryoshka sparse autoencoders, a reproducible companion to Bussmann et al. (ICML 2025).

Where things are: ``msae.saes`` (the Matryoshka BatchTopK SAE and its loss in
``saes/matryoshka.py``, the baselines, the registry), ``msae.kernels`` (the sparse and one-pass
prefix-loss kernels), ``msae.training`` (the training loop, checkpoints), ``msae.data`` (toy
trees, stories, models, activations), ``msae.evals`` (metrics, absorption, probing, meta-SAEs,
concepts, autointerp), ``msae.experiments`` (the toy experiment, the sweep, the studies, their
profiles) and ``msae.plots`` (one function per figure). ``msae.io`` reads and writes the SAELens
and dictionary_learning layouts; ``msae.distributed`` splits work over torchrun's processes.
"""

from .io import load_dictionary_learning, load_sae, save_sae
from .saes import (
    GatedConfig,
    GatedSAE,
    JumpReLUConfig,
    JumpReLUSAE,
    PAnnealConfig,
    PAnnealSAE,
    ReLUL1Config,
    ReLUL1SAE,
    TopKConfig,
    TopKSAE,
)
from .saes.l1 import L1SAE, L1Config
from .saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig, batch_top_k
from .saes.registry import ARCHITECTURES, build_sae
from .training.loop import TrainConfig, train, train_data_parallel

__all__ = [
    "ARCHITECTURES",
    "GatedConfig",
    "GatedSAE",
    "JumpReLUConfig",
    "JumpReLUSAE",
    "L1Config",
    "L1SAE",
    "MatryoshkaBatchTopKSAE",
    "MatryoshkaConfig",
    "PAnnealConfig",
    "PAnnealSAE",
    "ReLUL1Config",
    "ReLUL1SAE",
    "TopKConfig",
    "TopKSAE",
    "TrainConfig",
    "batch_top_k",
    "build_sae",
    "load_dictionary_learning",
    "load_sae",
    "save_sae",
    "train",
    "train_data_parallel",
]
