"""Training-step speed of the penalty-based baselines, products on the non-zeros vs dense.

ReLU-L1, Gated, JumpReLU and P-annealing SAEs run the products after their encoder's forward
on the non-zeros of their codes when those are few (``msae.kernels.sparse.decode_sparse`` and
``encode_sparse_grad``, on a CPU). Each architecture is timed both ways, side by side and
interleaved round by round, from the same weights on the same batches, with its biases (or
thresholds) set so that the codes have the target L0, as they have after the first few hundred
steps of a run. Every arm is one full update (forward, backward, Adam, renormalisation); TopK,
BatchTopK and the encoder matmul alone are printed for reference.

    python benchmarks/baseline_speed.py                       # the default profile's size
    python benchmarks/baseline_speed.py --size 576,2304,1024,40 --rounds 5
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch

import msae.kernels.sparse
from msae.saes.registry import build_sae
from msae.training.loop import TrainConfig, optimization_step
from train_speed import batches  # the same activation-like data as the Matryoshka benchmark

PENALTY_ARCHITECTURES = ["relu", "gated", "jumprelu", "p_anneal"]


@torch.no_grad()
def set_l0(sae, x: torch.Tensor, l0: int) -> None:
    """Shift each latent's bias (or threshold) so that it fires on l0/d_sae of the tokens of x."""
    proj = (x - sae.b_dec) @ sae.W_enc  # (B, d_sae)
    cut = proj.quantile(1 - l0 / sae.d_sae, dim=0)  # (d_sae,)
    if hasattr(sae, "b_gate"):
        sae.b_gate.copy_(-cut)
        sae.b_mag.copy_(-cut + 0.1)
    elif hasattr(sae, "log_threshold"):
        sae.b_enc.zero_()
        sae.log_threshold.copy_(cut.clamp_min(1e-3).log())
    else:
        sae.b_enc.copy_(-cut)


class Arm:
    def __init__(self, name: str, sae, max_density: float | None, config: TrainConfig):
        self.name, self.sae, self.max_density, self.config = name, sae, max_density, config
        self.optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)

    def step(self, x: torch.Tensor, step: int) -> None:
        saved = msae.kernels.sparse.SPARSE_PRODUCTS_MAX_DENSITY
        if self.max_density is not None:
            msae.kernels.sparse.SPARSE_PRODUCTS_MAX_DENSITY = self.max_density
        try:
            optimization_step(self.sae, self.optimizer, x, step, self.config)
        finally:
            msae.kernels.sparse.SPARSE_PRODUCTS_MAX_DENSITY = saved


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="576,2304,1024,40", help="d_in,d_sae,batch,L0")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--steps-per-round", type=int, default=3)
    args = parser.parse_args()
    d_in, d_sae, batch, l0 = map(int, args.size.split(","))
    data = batches(d_in, batch, 4, "cpu")
    config = TrainConfig(steps=10_000, lr=1e-5, warmup_steps=0)  # small steps: the L0 stays put
    arms = []
    for architecture in PENALTY_ARCHITECTURES:
        sae = build_sae(architecture, d_in=d_in, d_sae=d_sae, l0=l0, steps=10_000)
        sae.initialize_from_batch(data[0])
        set_l0(sae, data[0], l0)
        arms.append(Arm(f"{architecture}, sparse products", sae, None, config))
        arms.append(Arm(f"{architecture}, dense", copy.deepcopy(sae), -1.0, config))
    for architecture in ("topk", "batchtopk"):
        sae = build_sae(architecture, d_in=d_in, d_sae=d_sae, k=l0, steps=10_000)
        sae.initialize_from_batch(data[0])
        arms.append(Arm(architecture, sae, None, config))

    times = {arm.name: [] for arm in arms}
    times["encoder matmul"] = []
    W_enc, b_enc = arms[0].sae.W_enc.detach(), arms[0].sae.b_enc.detach()
    step = 0
    for round_ in range(args.rounds + 1):  # round 0 warms up
        for arm in [*arms, None]:
            for j in range(args.steps_per_round):
                x = data[(step + j) % len(data)]
                start = time.perf_counter()
                if arm is None:
                    torch.relu(torch.addmm(b_enc, x, W_enc))
                else:
                    arm.step(x, 1000 + step + j)  # past every warm-up
                if round_ > 0:
                    times[arm.name if arm else "encoder matmul"].append(time.perf_counter() - start)
        step += args.steps_per_round
    medians = {name: statistics.median(ts) for name, ts in times.items()}
    print(f"d_in {d_in}, d_sae {d_sae}, batch {batch}, L0 {l0}; {torch.get_num_threads()} threads; "
          f"median of {args.rounds * args.steps_per_round} steps")
    for arm in arms:
        l0_now = float(arm.sae.training_step(data[0], 1000).stats["l0"])
        line = f"{arm.name:32s} {1000 * medians[arm.name]:8.1f} ms/step   L0 {l0_now:6.1f}"
        if arm.name.endswith("sparse products"):
            dense = arm.name.replace("sparse products", "dense")
            line += f"   dense / sparse = {medians[dense] / medians[arm.name]:.2f}x"
        print(line)
    print(f"{'encoder matmul':32s} {1000 * medians['encoder matmul']:8.1f} ms")


if __name__ == "__main__":
    main()
