"""The training the language-model notebooks read, as one command: to run it on several
processes (torchrun) before the notebooks, and to see what a profile costs before running it.

    python -m msae.experiments.pipeline --profile default            # the sweep
    python -m msae.experiments.pipeline --profile default --studies --ladder
    torchrun --standalone --nproc_per_node 4 -m msae.experiments.pipeline --profile paper --studies
    python -m msae.experiments.pipeline --profile paper --nproc 8 --dry-run    # the plan only

The run is :func:`msae.experiments.sweep.run_sweep` with the profile's config (and the studies
of notebooks 14-16, and the scale ladder of notebook 17), exactly as the notebooks call it, so
that the notebooks then find every SAE trained and evaluated and only read them back. Under
torchrun the ranks share the harvesting and the SAEs (:mod:`msae.distributed`).

The dry run loads no model: it counts the tokens and SAEs of each stage, the memory a rank
needs for the SAEs it trains at once, and estimates each stage's time from throughput measured
here and now on this machine's device (an SAE training step at the profile's width, and a
matmul rate for the language model's forward pass); see :func:`plan`.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from . import profiles
from .studies import STUDY_CONFIGS, StudyConfig, study_configs
from .sweep import SweepConfig, sae_configs

# Parameters of each model's transformer blocks (embeddings excluded), for the FLOPs of a forward
# pass up to the hook: Gemma-2-2B has 2.61B parameters of which 0.59B are its 256k x 2304
# embedding; SmolLM2-135M has 135M of which 28M are its (tied) 49k x 576 embedding.
BLOCK_PARAMETERS = {"gemma-2-2b": 2.02e9, "smollm2-135m-instruct": 1.07e8}
ADAM_COPIES = 4  # weights, gradients and Adam's two moments, in float32


@dataclass
class Stage:
    """One stage of a run.

    Attributes:
        name: the stage ("harvest", "sweep", a study, ...).
        detail: what it does: tokens, SAEs, widths, steps.
        seconds: its estimated time on all ranks together, from throughput measured here; None
            when not estimated.
    """

    name: str
    detail: str
    seconds: float | None


def run(profile: str, runs_dir: str | Path = "runs", cache_dir: str | Path | None = None, studies: bool = False,
        ladder: bool = False, progress: bool = True):
    """Train and evaluate the profile's sweep (with the studies, the ladder), as the notebooks do."""
    from .ladder import run_ladder
    from .sweep import run_sweep

    config = profiles.sweep_config(profile)
    results = run_sweep(config, runs_dir, cache_dir, progress=progress, studies=list(STUDY_CONFIGS) if studies else (),
                        study_config=profiles.study_config(profile))
    if ladder:
        run_ladder(results, profiles.ladder_config(profile), runs_dir, progress)
    return results


def sae_groups(config: SweepConfig, study_config: StudyConfig | None = None) -> dict[str, dict[str, dict]]:
    """The groups of SAEs the run trains together, ``{stage: {name: fields}}``: the main sweep,
    the prefix-matched BatchTopK SAEs (their k is the matched Matryoshka prefix's measured L0,
    unknown before the run: the plan puts the sweep's matched k) and, given ``study_config``,
    each study."""
    groups = {"sweep": sae_configs(config)}
    reference = groups["sweep"][f"batchtopk_k{config.matched_k}"]
    ends = [round(config.d_sae * sum(config.group_fractions[: i + 1])) for i in range(len(config.group_fractions) - 1)]
    groups["prefix-matched BatchTopK"] = {f"batchtopk_w{width}": dict(reference, d_sae=width) for width in ends}
    if study_config is not None:
        for study in STUDY_CONFIGS:
            groups[study] = study_configs(config, study_config, study)
    return groups


def ladder_groups(config: SweepConfig, ladder, in_sweep: set[str] = frozenset()) -> dict[str, tuple[SweepConfig, dict[str, dict]]]:
    """The scale ladder's SAEs still to train, ``{"ladder <tokens>": (rung, {name: fields})}``, one
    group per token budget (``msae.experiments.ladder``): at the sweep's own budget the rung is
    the sweep, so its SAEs named in ``in_sweep`` (planned there already) are left out, and so is
    a budget with nothing left."""
    from .ladder import ladder_k, rung_config, rung_saes

    k, groups = ladder_k(config, ladder), {}
    for tokens in sorted(ladder.token_budgets):
        rung = rung_config(config, tokens)
        group = rung_saes(rung, ladder, k)
        if rung == config:
            group = {name: fields for name, fields in group.items() if name not in in_sweep}
        if group:
            groups[f"ladder {tokens:,} tokens"] = (rung, group)
    return groups


def sae_training_bytes(d_in: int, d_sae: int, batch: int) -> int:
    """Memory to train one SAE: its weights with gradients and Adam's moments, and the (batch,
    d_sae) pre-activations with their gradient, in float32."""
    return 4 * (ADAM_COPIES * (2 * d_in * d_sae + d_sae + d_in) + 2 * batch * d_sae)


def measure_sae_step(d_in: int, d_sae: int, k: int, batch: int, device: str, steps: int = 2) -> float:
    """Seconds per training step of one Matryoshka SAE of this shape on ``device`` (after one
    warm-up step), on random inputs."""
    from ..saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig
    from ..training.loop import TrainConfig, optimization_step

    sae = MatryoshkaBatchTopKSAE(MatryoshkaConfig(d_in=d_in, d_sae=d_sae, k=min(k, d_sae), threshold_start_step=0)).to(device)
    optimizer = torch.optim.Adam(sae.parameters(), lr=1e-4)
    config = TrainConfig(steps=steps + 1, warmup_steps=1, device=device)
    x = torch.randn(batch, d_in, device=device)
    optimization_step(sae, optimizer, x, 0, config)
    _synchronize(device)
    start = time.perf_counter()
    for step in range(1, steps + 1):
        optimization_step(sae, optimizer, x, step, config)
    _synchronize(device)
    return (time.perf_counter() - start) / steps


def measure_matmul_flops(device: str, size: int = 2048, repeats: int = 3) -> float:
    """Float32 matmul FLOP/s on ``device``: the rate the language model's forward pass is
    estimated at (an upper bound: attention and memory traffic make it slower)."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    _synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    _synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plan(profile: str, nproc: int = 1, studies: bool = True, measure: bool | None = None,
         device: str | None = None, ladder: bool = False) -> list[Stage]:
    """What running ``profile``'s training on ``nproc`` processes does, stage by stage, with
    times estimated from throughput measured on ``device`` (default: CUDA if present, else CPU;
    ``measure`` None: unless the profile needs a GPU and there is none; False: no times). A
    rank trains a group's SAEs together, so the memory per rank is that of its share of the
    largest group. With streamed activations ("live"), each group of one width runs the model
    over its tokens again, which the group's time includes. ``ladder``: also one stage per
    token budget of the scale ladder (notebook 17) that trains anything the sweep does not
    (``ladder_groups``), with the tokens it collects beyond the largest cache before it."""
    config = profiles.sweep_config(profile)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if measure is None:  # a GPU profile's times measured on a CPU would mislead
        measure = not (config.needs_gpu and not device.startswith("cuda"))
    n_layers, d_model = profiles.MODEL_SHAPES.get(config.model_name, (None, None))
    if d_model is None:
        raise ValueError(f"no shape known for {config.model_name!r}; add it to profiles.MODEL_SHAPES")
    stages = []
    layer = int(config.hook_name.split(".")[1]) + 1
    blocks = BLOCK_PARAMETERS.get(config.model_name)
    flops_per_token = 2 * blocks * layer / n_layers if blocks else None
    rate = measure_matmul_flops(device) * nproc if measure and flops_per_token else None
    tokens = config.n_tokens
    where = ("collected to disk once: " + f"{tokens * d_model * 2 / 1e9:,.1f} GB in float16"
             if config.storage == "disk" else "streamed: the model runs again for every group of SAEs")
    harvest = tokens * flops_per_token / rate if rate and config.storage == "disk" else None  # live: in each group
    stages.append(Stage("harvest", f"{tokens:,} tokens of {config.model_name} to {config.hook_name} (layer {layer} of "
                        f"{n_layers}), {where}", harvest))

    groups = {name: (config, group) for name, group in
              sae_groups(config, profiles.study_config(profile) if studies else None).items()}
    if ladder:
        in_sweep = {n for _, group in groups.values() for n in group}
        groups.update(ladder_groups(config, profiles.ladder_config(profile), in_sweep))
    largest, step_seconds, largest_cache = 0, {}, config.n_tokens
    for name, (run, group) in groups.items():
        by_width: dict[int, list[dict]] = {}
        for fields in group.values():
            by_width.setdefault(fields["d_sae"], []).append(fields)
        seconds = 0.0 if measure else None
        if name.startswith("ladder"):  # rungs come in increasing budgets
            if measure and rate and run.storage == "disk":
                # a rung's cache starts from the largest one collected before it (ladder.link_smaller_cache)
                seconds += max(0, run.n_tokens - largest_cache) * flops_per_token / rate
            largest_cache = max(largest_cache, run.n_tokens)
        for width, members in sorted(by_width.items()):  # one stream per width, as run_sweep trains them
            per_rank = math.ceil(len(members) / nproc)
            largest = max(largest, per_rank * sae_training_bytes(d_model, width, run.batch_size))
            if measure:
                k = max(f.get("k", 32) for f in members)
                if (width, k) not in step_seconds:  # measured once per shape
                    step_seconds[width, k] = measure_sae_step(d_model, width, k, run.batch_size, device)
                seconds += step_seconds[width, k] * run.steps * per_rank
                if run.storage == "live" and rate:  # every rank runs the model for its stream
                    seconds += run.steps * run.batch_size * flops_per_token / (rate / nproc)
        widths = ", ".join(f"{len(m)} x {w:,}" for w, m in sorted(by_width.items()))
        detail = f"{len(group)} SAEs ({widths} latents), {run.steps:,} steps of {run.batch_size:,}"
        if name.startswith("ladder"):
            detail = f"{run.n_tokens:,} tokens of activations ({run.storage}), " + detail
        stages.append(Stage(name, detail, seconds))
    stages.append(Stage("memory", f"{largest / 2**30:,.1f} GiB per rank for the SAEs it trains at once "
                        f"(weights, gradients, Adam; float32), plus the model on each rank", None))
    return stages


def format_plan(profile: str, nproc: int, stages: Sequence[Stage], device: str) -> str:
    timed = any(s.seconds is not None for s in stages)
    where = (f"times estimated from throughput measured on this machine's {device}" if timed else
             f"no times: this profile needs a GPU, and this machine has only a {device}")
    lines = [f"plan: profile {profile} on {nproc} process{'es' if nproc > 1 else ''} ({where})"]
    for stage in stages:
        when = f"  ~{_duration(stage.seconds)}" if stage.seconds is not None else ""
        lines.append(f"  {stage.name:<26} {stage.detail}{when}")
    total = sum(s.seconds for s in stages if s.seconds is not None)
    if timed:
        lines.append(f"  {'total':<26} ~{_duration(total)} (the evaluations of notebooks 03-17 come on top)")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 2 * 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m msae.experiments.pipeline", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", choices=profiles.PROFILE_NAMES, default="default")
    parser.add_argument("--runs-dir", default="runs", help="where the notebooks' runs_dir points (default: runs)")
    parser.add_argument("--cache-dir", default=None, help="converted model weights (default: <runs-dir>/cache)")
    parser.add_argument("--studies", action="store_true", help="also the baselines, widths and ablations (14-16)")
    parser.add_argument("--ladder", action="store_true", help="also the scale ladder (17)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan; load no model, train nothing")
    parser.add_argument("--nproc", type=int, default=None, help="processes to plan for (default: torchrun's, or 1)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.dry_run:
        from ..distributed import Ranks

        nproc = args.nproc or Ranks.from_environment().world_size
        device = "cuda" if torch.cuda.is_available() else "cpu"
        stages = plan(args.profile, nproc, args.studies, device=device, ladder=args.ladder)
        print(format_plan(args.profile, nproc, stages, device))
        return
    run(args.profile, args.runs_dir, args.cache_dir, args.studies, args.ladder, not args.no_progress)


if __name__ == "__main__":
    main()
