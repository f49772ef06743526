"""Time a Matryoshka BatchTopK training step against a BatchTopK step of the same width.

Both arms run the full update (encode, global top-k, prefix losses, AuxK, backward, decoder
projection, clipping, Adam, renormalisation) on the same batch, interleaved round by round so
that drifts in machine speed hit both alike. A third arm decodes every prefix from scratch, to
show what the one-pass prefix loss saves.

    python benchmarks/matryoshka_step.py [--d-in 256 --d-sae 4096 --batch 4096 --k 32]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from unittest import mock

import torch

from msae.prefixes import PAPER_GROUP_FRACTIONS, group_sizes_from_fractions
from msae.sae import MatryoshkaBatchTopKSAE, MatryoshkaConfig
from msae.train import TrainConfig, optimization_step


def naive_prefix_mse(acts, W_dec, b_dec, x, ends, stop_gradient=False):
    """Every prefix decoded from scratch: costs sum(ends) decoder rows instead of d_sae."""
    mse = torch.stack([(x - acts[:, :m] @ W_dec[:m] - b_dec).pow(2).sum(-1).mean() for m in ends])
    return mse, (x - acts @ W_dec - b_dec).detach()


def make_arm(args, group_sizes):
    config = MatryoshkaConfig(d_in=args.d_in, d_sae=args.d_sae, k=args.k, group_sizes=group_sizes, seed=0)
    sae = MatryoshkaBatchTopKSAE(config)
    optimizer = torch.optim.Adam(sae.parameters(), lr=3e-4)
    return sae, optimizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d-in", type=int, default=256)
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps-per-round", type=int, default=4)
    args = parser.parse_args()

    groups = group_sizes_from_fractions(args.d_sae, PAPER_GROUP_FRACTIONS)
    train_config = TrainConfig(steps=10**9, warmup_steps=0)
    x = torch.randn(args.batch, args.d_in, generator=torch.Generator().manual_seed(0))
    x = x / x.pow(2).sum(1).mean().sqrt()
    arms = {
        "batchtopk": (make_arm(args, None), None),
        "matryoshka": (make_arm(args, groups), None),
        "matryoshka, prefixes decoded separately": (make_arm(args, groups), naive_prefix_mse),
    }
    times = {name: [] for name in arms}
    step = 0
    for round_ in range(args.rounds + 1):  # round 0 warms up and is discarded
        for name, ((sae, optimizer), prefix_fn) in arms.items():
            patch = mock.patch("msae.sae.cumulative_prefix_mse", prefix_fn) if prefix_fn else mock.MagicMock()
            with patch:
                for _ in range(args.steps_per_round):
                    start = time.perf_counter()
                    optimization_step(sae, optimizer, x, step, train_config)
                    elapsed = time.perf_counter() - start
                    if round_ > 0:
                        times[name].append(elapsed)
            step += 1

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}")
    print(f"d_in {args.d_in}, d_sae {args.d_sae}, batch {args.batch}, k {args.k}, groups {groups}")
    print(f"{'arm':42s} {'median step (ms)':>17s} {'steps/s':>8s} {'tokens/s':>10s}")
    median = {name: statistics.median(ts) for name, ts in times.items()}
    for name, seconds in median.items():
        print(f"{name:42s} {1e3 * seconds:17.1f} {1 / seconds:8.2f} {args.batch / seconds:10.0f}")
    base = median["batchtopk"]
    print(f"ratio matryoshka / batchtopk: {median['matryoshka'] / base:.3f}  (target <= 1.05)")
    print(f"ratio separate-prefix decoding / batchtopk: {median['matryoshka, prefixes decoded separately'] / base:.3f}")


if __name__ == "__main__":
    main()
