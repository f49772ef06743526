"""The saved-runs fixture of ``tests/test_saved_runs.py``: what it holds and the data it trained on.

``tests/fixtures/runs_v0_1/`` was written by msae 0.1.0 before the package was split into
subpackages (commit 2c13f26, flat ``msae/*.py``) with the recipe below, so that the test checks
that run folders, checkpoints and SAE folders written then still load and resume now. This
module imports nothing from msae so the same data reaches both versions.
"""

from __future__ import annotations

import torch

D_IN, D_SAE, STEPS, BATCH = 8, 32, 12, 64
# registry name -> config fields (besides d_in, d_sae, l0, steps); every architecture of Table 1
ARCHITECTURES = {
    "batchtopk": dict(threshold_start_step=2, threshold_beta=0.5, dead_after_tokens=128),
    "matryoshka": dict(group_sizes=[4, 8, 20], threshold_start_step=2, threshold_beta=0.5, dead_after_tokens=128),
    "topk": dict(dead_after_tokens=128),
    "relu": dict(dead_after_tokens=128),
    "gated": dict(dead_after_tokens=128),
    "jumprelu": dict(dead_after_tokens=128),
    "p_anneal": dict(dead_after_tokens=128),
}
# the toy model's SAE (msae's L1SAE), Matryoshka with sampled prefixes and sorted latents
TOY_L1 = dict(target_l0=4.0, n_prefixes=3, sort_latents=True, seed=1)
L0 = 4
CHECKPOINT_EVERY = 4
INTERRUPT_AT = 14  # batch index (the first 8 estimate the input scale): the interrupted runs stop in step 6


class SeededBatches:
    """A resumable data source: batch i is drawn from a generator seeded with (seed, i)."""

    def __init__(self, seed: int = 0, interrupt_at: int | None = None):
        self.seed, self.index, self.interrupt_at = seed, 0, interrupt_at

    def next_batch(self) -> torch.Tensor:
        if self.interrupt_at is not None and self.index == self.interrupt_at:
            raise KeyboardInterrupt("fixture: simulated interruption")
        generator = torch.Generator().manual_seed(1000 * self.seed + self.index)
        self.index += 1
        signs = torch.rand(BATCH, D_IN, generator=generator) < 0.3
        return torch.randn(BATCH, D_IN, generator=generator) * signs + 0.1 * torch.randn(BATCH, D_IN, generator=generator)

    def state_dict(self) -> dict:
        return {"index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.index = int(state["index"])

    def describe(self) -> dict:
        return {"source": "layout fixture", "seed": self.seed}
