"""msae: Matryoshka sparse autoencoders, a reproducible companion to Bussmann et al. (ICML 2025).

Start with ``msae.sae`` (the Matryoshka BatchTopK SAE and its loss), ``msae.train`` (the
training loop) and ``msae.io`` (SAELens and dictionary_learning layouts).
"""

from .io import load_dictionary_learning, load_sae, save_sae
from .saes.l1 import L1SAE, L1Config
from .saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig, batch_top_k
from .training.loop import TrainConfig, train

__all__ = [
    "L1Config",
    "L1SAE",
    "MatryoshkaBatchTopKSAE",
    "MatryoshkaConfig",
    "TrainConfig",
    "batch_top_k",
    "load_dictionary_learning",
    "load_sae",
    "save_sae",
    "train",
]
