"""Training-step speed of msae's Matryoshka SAE, side by side with BatchTopK and the paper's trainer.

Arms, all on the same batches from the same initial weights, interleaved round by round so
that drifts in machine speed hit every arm alike:

- ``msae matryoshka``: the paper's 5 groups, the kernels msae picks for this size;
- ``msae batchtopk``: one group, same width and k;
- ``msae matryoshka, dense``: the dense kernels (the trainer before the sparse work);
- ``dictionary_learning``: ``MatryoshkaBatchTopKTrainer.update`` from dictionary_learning
  0.1.0, the paper's own trainer, when it is importable (``make bench`` installs it in a
  separate virtualenv);
- ``encoder matmul``: ReLU((x - b_dec) @ W_enc + b_enc) alone, the floor of any step.

Every arm is one full update (forward, backward, gradient projection, clipping, Adam,
renormalisation); the data loading and logging of a training loop are left out of all of them.
Peak memory is measured per arm in a fresh process (peak RSS growth on a CPU, peak allocated
memory on a GPU).

    python benchmarks/train_speed.py                 # every size below
    python benchmarks/train_speed.py --sizes 576,4608,2048,40 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time

import torch

from msae.saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig
from msae.saes.prefixes import PAPER_GROUP_FRACTIONS, group_sizes_from_fractions
from msae.training.loop import TrainConfig, optimization_step

# (d_in, d_sae, batch, k, steps per round)
SIZES = {
    "576,4608,2048,40": 3,  # SmolLM2-135M width, the default profile's scale
    "2304,16384,2048,40": 1,  # Gemma-2-2B width, the paper's 16k SAEs
    "256,4096,4096,32": 3,  # the foundation issue's size
}
ARMS = ["msae matryoshka", "msae batchtopk", "msae matryoshka, dense", "dictionary_learning", "encoder matmul"]


def batches(d_in: int, batch: int, n: int, device) -> list[torch.Tensor]:
    """Activation-like data: sparse non-negative codes over a random dictionary, plus noise,
    scaled so that E||x||^2 = 1 (as msae's trainer scales its inputs)."""
    gen = torch.Generator().manual_seed(0)
    dictionary = torch.randn(4 * d_in, d_in, generator=gen) / d_in**0.5
    out = []
    for _ in range(n):
        codes = torch.relu(torch.randn(batch, 4 * d_in, generator=gen) - 2.0)
        x = codes @ dictionary + 0.05 * torch.randn(batch, d_in, generator=gen)
        out.append((x / x.pow(2).sum(1).mean().sqrt()).to(device))
    return out


def dictionary_learning_available() -> bool:
    try:
        import dictionary_learning.trainers.matryoshka_batch_top_k  # noqa: F401
    except ImportError:
        return False
    return True


class Arm:
    """One contender: ``step(x, i)`` runs update ``i`` on batch ``x``."""

    def __init__(self, name: str, d_in: int, d_sae: int, k: int, device: str, autocast: str | None = None):
        self.name = name
        groups = group_sizes_from_fractions(d_sae, PAPER_GROUP_FRACTIONS)
        self.train_config = TrainConfig(steps=10**9, warmup_steps=10, device=device, autocast_dtype=autocast)
        if name == "dictionary_learning":
            from dictionary_learning.trainers.matryoshka_batch_top_k import MatryoshkaBatchTopKTrainer

            self.trainer = MatryoshkaBatchTopKTrainer(
                steps=10**9, activation_dim=d_in, dict_size=d_sae, k=k, layer=0, lm_name="benchmark",
                group_fractions=[s / d_sae for s in groups], lr=3e-4, warmup_steps=10, seed=0, device=device)
            return
        config = MatryoshkaConfig(d_in=d_in, d_sae=d_sae, k=k, group_sizes=None if name == "msae batchtopk" else groups)
        self.sae = MatryoshkaBatchTopKSAE(config).to(device)
        if name == "msae matryoshka, dense":
            self.sae.kernels = "dense"
        self.optimizer = torch.optim.Adam(self.sae.parameters(), lr=3e-4)
        self.kernels = "" if name == "encoder matmul" else ("sparse" if self.sae.uses_sparse_kernels() else "dense")

    def step(self, x: torch.Tensor, i: int) -> None:
        if self.name == "dictionary_learning":
            self.trainer.update(i, x)
        elif self.name == "encoder matmul":
            with torch.no_grad():
                torch.relu((x - self.sae.b_dec) @ self.sae.W_enc + self.sae.b_enc)
        else:
            if i == 0:
                self.sae.initialize_from_batch(x)
            optimization_step(self.sae, self.optimizer, x, i, self.train_config)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_size(d_in, d_sae, batch, k, steps_per_round, rounds, device, arms, autocast=None):
    data = batches(d_in, batch, 4, device)
    contenders = [Arm(name, d_in, d_sae, k, device, autocast) for name in arms]
    times = {arm.name: [] for arm in contenders}
    step = 0
    for round_ in range(rounds + 1):  # round 0 warms up (and runs the geometric-median init)
        for arm in contenders:
            for j in range(steps_per_round):
                x = data[(step + j) % len(data)]
                synchronize(device)
                start = time.perf_counter()
                arm.step(x, step + j)
                synchronize(device)
                if round_ > 0:
                    times[arm.name].append(time.perf_counter() - start)
        step += steps_per_round
    kernels = {arm.name: getattr(arm, "kernels", "") for arm in contenders}
    return {name: statistics.median(ts) for name, ts in times.items()}, kernels


def peak_memory(arm: str, size: str, device: str) -> float:
    """MiB the arm's first steps add to the process at peak, measured in a fresh process."""
    result = subprocess.run(
        [sys.executable, __file__, "--memory-of", arm, "--sizes", size, "--device", device],
        capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def _rss_mib(field: str) -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure_memory_here(arm_name: str, size: str, device: str) -> float:
    d_in, d_sae, batch, k = map(int, size.split(","))
    data = batches(d_in, batch, 2, device)
    arm = Arm(arm_name, d_in, d_sae, k, device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        base = _rss_mib("VmRSS")
    for i in range(3):
        arm.step(data[i % 2], i)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return _rss_mib("VmHWM") - base


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default=";".join(SIZES), help="d_in,d_sae,batch,k[;...]")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the per-arm memory runs")
    parser.add_argument("--autocast", choices=["bfloat16", "float16"], help="msae's arms under autocast (GPU)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        print(measure_memory_here(args.memory_of, args.sizes, args.device))
        return

    arms = [a for a in ARMS if a != "dictionary_learning" or dictionary_learning_available()]
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else (platform.processor() or platform.machine())
    print(f"torch {torch.__version__}, {args.device} ({device_name}), {torch.get_num_threads()} threads")
    if "dictionary_learning" not in arms:
        print("dictionary_learning is not installed here: its arm is skipped (make bench installs it)")
    results = []
    for size in args.sizes.split(";"):
        d_in, d_sae, batch, k = map(int, size.split(","))
        medians, kernels = time_size(d_in, d_sae, batch, k, SIZES.get(size, 2), args.rounds, args.device, arms,
                                     args.autocast)
        memory = {} if args.no_memory else {a: peak_memory(a, size, args.device) for a in arms if a != "encoder matmul"}
        cast = f", {args.autocast} autocast" if args.autocast else ""
        print(f"\nd_in {d_in}, d_sae {d_sae}, batch {batch}, k {k}{cast}; median of {args.rounds} rounds")
        print(f"{'arm':28s} {'kernels':>7s} {'step (ms)':>10s} {'steps/s':>8s} {'tokens/s':>10s} {'peak MiB':>9s}")
        for name, seconds in medians.items():
            mem = f"{memory[name]:9.0f}" if name in memory else f"{'':9s}"
            print(f"{name:28s} {kernels[name]:>7s} {1e3 * seconds:10.1f} {1 / seconds:8.2f} {batch / seconds:10.0f} {mem}")
        ours = medians["msae matryoshka"]
        print(f"matryoshka / batchtopk (msae):          {ours / medians['msae batchtopk']:.3f}")
        print(f"msae matryoshka speed-up over dense:    {medians['msae matryoshka, dense'] / ours:.2f}x")
        if "dictionary_learning" in medians:
            print(f"msae matryoshka speed-up over dictionary_learning: {medians['dictionary_learning'] / ours:.2f}x")
        print(f"step / encoder matmul (the floor):      {ours / medians['encoder matmul']:.2f}")
        results.append({"d_in": d_in, "d_sae": d_sae, "batch": batch, "k": k, "median_step_s": medians,
                        "peak_mib": memory, "kernels": kernels})
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"torch": torch.__version__, "device": args.device, "results": results}, f, indent=1)


if __name__ == "__main__":
    main()
