"""The SAEs: the shared unit-norm base (``base``), the Matryoshka BatchTopK SAE and its loss
(``matryoshka``; plain BatchTopK is its one-group case), the toy model's L1 SAE (``l1``), the
Matryoshka prefixes and groups (``prefixes``), the AuxK mixin (``auxk``), the registry that builds
any architecture by name and generates Table 1 (``registry``), and the baselines of Table 1, one
module each (each module's docstring states its loss):

- ``relu_l1``  ReLU + decoder-norm-weighted L1 (Anthropic, April 2024)      :class:`ReLUL1SAE`
- ``topk``     per-token TopK with AuxK (Gao et al. 2024)                  :class:`TopKSAE`
- ``gated``    Gated SAE (Rajamanoharan et al. 2024a)                      :class:`GatedSAE`
- ``jumprelu`` JumpReLU with an L0 penalty (Rajamanoharan et al. 2024b)    :class:`JumpReLUSAE`
- ``p_anneal`` L_p^p penalty with p annealed from 1 (Karvonen et al. 2024) :class:`PAnnealSAE`

BatchTopK and Matryoshka are :class:`msae.saes.matryoshka.MatryoshkaBatchTopKSAE`;
``msae.saes.registry`` lists them all and builds any of them by name (``build_sae``).

How each reaches a target L0 (the sweep trains every architecture at the same L0s): TopK and
BatchTopK take ``k``. The penalty-based ones take ``target_l0``: their penalty coefficient starts
at the config's value, ramps up linearly over the first 5% of ``total_steps``, and is then steered
by a multiplicative controller (x exp(rate * clip(log2(L0 / target), -1, 1)) after every batch;
``penalty.steer_towards_l0``), so the coefficient is set by the target rather than
swept by hand. JumpReLU also starts its thresholds at the level giving the target L0 on the
first batch (see ``jumprelu``). Without ``target_l0`` the coefficient stays where it is set.

All are trained by ``msae.training.loop.train`` (``training_step``, the optimizer hooks, ``fold_input_scale``)
and saved by ``msae.io`` in the SAELens layout under the architecture named by ``architecture``.
"""

from .base import UnitNormSAE
from .gated import GatedConfig, GatedSAE
from .jumprelu import JumpReLUConfig, JumpReLUSAE, firing_count, jump_relu
from .p_anneal import PAnnealConfig, PAnnealSAE
from .penalty import steer_towards_l0
from .relu_l1 import ReLUL1Config, ReLUL1SAE
from .topk import TopKConfig, TopKSAE, per_token_top_k

__all__ = [
    "GatedConfig",
    "GatedSAE",
    "JumpReLUConfig",
    "JumpReLUSAE",
    "PAnnealConfig",
    "PAnnealSAE",
    "ReLUL1Config",
    "ReLUL1SAE",
    "TopKConfig",
    "TopKSAE",
    "UnitNormSAE",
    "firing_count",
    "jump_relu",
    "per_token_top_k",
    "steer_towards_l0",
]
