"""A short run shaped like the paper's, timed stage by stage on the device at hand: SmolLM2-135M
activations harvested to disk, then a Matryoshka and a BatchTopK SAE of 16,384 latents trained
together on them (as msae's sweep trains its SAEs), with tokens/s and peak memory per stage.

    python benchmarks/paper_shaped.py                         # CUDA if present: 2M tokens, 16k latents, bf16
    python benchmarks/paper_shaped.py --device cpu --tokens 20000 --width 1024 --steps 20 --batch 512

The text is the generated stories (offline; ``--corpus english`` for the Debian texts, which
need their download or cache). Everything is written under a fresh ``--runs-dir``, so the
harvest really runs.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import time
from pathlib import Path

import torch

from msae.data.activations import ActivationConfig, CachedActivations, CorpusConfig, collect_activations
from msae.data.models import load_model
from msae.saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig
from msae.saes.prefixes import PAPER_GROUP_FRACTIONS, group_sizes_from_fractions
from msae.training.loop import TrainConfig, train_many


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_mib(device: str) -> float:
    """Peak allocated GPU memory since the last reset; on a CPU the process's peak RSS so far."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--tokens", type=int, default=2_000_000)
    parser.add_argument("--width", type=int, default=16_384)
    parser.add_argument("--k", type=int, default=40)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--autocast", choices=["bfloat16", "float16", "none"], default=None,
                        help="default: bfloat16 on CUDA, none on a CPU")
    parser.add_argument("--corpus", choices=["stories", "english"], default="stories")
    parser.add_argument("--runs-dir", default="build/paper-shaped")
    args = parser.parse_args()
    device = args.device
    autocast = args.autocast or ("bfloat16" if device.startswith("cuda") else "none")
    runs = Path(args.runs_dir)
    shutil.rmtree(runs / "activations", ignore_errors=True)
    name = torch.cuda.get_device_name() if device.startswith("cuda") else "CPU"
    print(f"paper-shaped run on {device} ({name}), torch {torch.__version__}: {args.tokens:,} tokens, "
          f"2 SAEs of {args.width:,} latents at k {args.k}, {args.steps} steps of {args.batch}, autocast {autocast}")

    start = time.perf_counter()
    model = load_model("smollm2-135m-instruct", runs / "cache", device)
    synchronize(device)
    print(f"  load model                {time.perf_counter() - start:8.1f} s")

    corpus = CorpusConfig(source=args.corpus, n_documents=10**9 if args.corpus == "english" else 200_000)
    config = ActivationConfig("smollm2-135m-instruct", "blocks.15.hook_resid_post", corpus, context_size=1024,
                              n_tokens=args.tokens, batch_contexts=16,
                              shard_contexts=min(512, args.tokens // 1024 + 1))  # whole shards: no more than asked
    reset_peak(device)
    start = time.perf_counter()
    folder = collect_activations(model, config, runs / "activations", progress=False)
    synchronize(device)
    seconds = time.perf_counter() - start
    print(f"  harvest                   {seconds:8.1f} s  {args.tokens / seconds:12,.0f} tokens/s  "
          f"peak {peak_mib(device):8,.0f} MiB")
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    groups = group_sizes_from_fractions(args.width, PAPER_GROUP_FRACTIONS)
    saes = {arch: MatryoshkaBatchTopKSAE(MatryoshkaConfig(d_in=576, d_sae=args.width, k=args.k,
                                                          group_sizes=groups if arch == "matryoshka" else None,
                                                          threshold_start_step=args.steps // 2))
            for arch in ("matryoshka", "batchtopk")}
    train = TrainConfig(steps=args.steps, warmup_steps=min(100, args.steps // 5), device=device,
                        autocast_dtype=None if autocast == "none" else autocast, log_every=max(1, args.steps // 10))
    data = CachedActivations(folder, args.batch, seed=0)
    reset_peak(device)
    start = time.perf_counter()
    results = train_many(saes, data, train, progress=False)
    synchronize(device)
    seconds = time.perf_counter() - start
    tokens = args.steps * args.batch
    print(f"  train (2 SAEs together)   {seconds:8.1f} s  {tokens / seconds:12,.0f} tokens/s  "
          f"peak {peak_mib(device):8,.0f} MiB")
    for arch, result in results.items():
        last = result.history[-1]
        print(f"    {arch:<11} L0 {last['l0']:6.1f}, variance explained {last['variance_explained']:.3f}")


if __name__ == "__main__":
    main()
