"""The training loop every experiment shares.

``train(sae, data, config, run_dir)`` runs Adam with a warm-up/decay schedule and gradient
clipping on a stream of batches, with:

- inputs scaled by one scalar so that ``E||x||^2 = 1`` (or ``normalized_sq_norm``; folded into the weights at the end, so
  the returned and saved SAE runs on raw inputs);
- a progress bar showing loss, L0 and variance explained every ``log_every`` steps (the only
  points where values leave the device);
- checkpoints written atomically every ``checkpoint_every`` steps and on Ctrl-C, and resumed
  automatically when ``train`` is called again on the same run folder;
- the run's config written beside its results (``config.json``), the finished SAE in the
  SAELens layout (``sae/``) and the logged statistics (``history.json``).

A data source is any object with ``next_batch() -> (B, d_in) tensor``, ``state_dict()``,
``load_state_dict(state)`` and ``describe() -> dict``.
"""

from __future__ import annotations

import math
import signal
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal, NamedTuple

import torch
from tqdm import tqdm

from ..data.sources import DataSource
from ..files import write_json
from ..io import save_sae
from ..saes.base import SparseAutoencoder
from .checkpoint import CheckpointError, load_checkpoint, save_checkpoint

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainConfig:
    """How :func:`train` trains: the run's length, Adam and its schedule, input scaling,
    logging, checkpoints and device. Saved with every checkpoint: a run folder only resumes
    under an equal config.

    Attributes:
        steps: number of optimizer steps (one batch each); > 0.
        lr: Adam's learning rate after warm-up, before decay.
        betas: Adam's (beta1, beta2).
        warmup_steps: the learning rate ramps up linearly over these first steps; 0: no warm-up.
        decay_fraction: the learning rate decays linearly over this last fraction of the
            steps, in [0, 1]; 0: no decay.
        final_lr_fraction: the learning rate at the end, relative to ``lr``.
        grad_clip: the largest global gradient norm; None: no clipping.
        normalize_inputs: scale the inputs by one scalar so that E||x||^2 =
            ``normalized_sq_norm`` (folded into the weights at the end, so the returned SAE
            runs on raw inputs); False: train on raw inputs.
        normalized_sq_norm: the E||x||^2 the inputs are scaled to.
        normalization_batches: batches drawn (and not trained on) to estimate the scale.
        checkpoint_every: steps between checkpoints (with a run folder); > 0.
        log_every: steps between entries of the history and the progress bar (the only
            points where values leave the device); > 0.
        device: the torch device to train on, e.g. "cpu" or "cuda".
        autocast_dtype: None: float32 throughout; "bfloat16" or "float16": run the forward
            pass under autocast (weights, Adam state and the threshold stay float32). Meant for
            GPUs; msae's SAEs keep their sparse parts in float32.
    """

    steps: int
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 1000
    decay_fraction: float = 0.2
    final_lr_fraction: float = 0.0
    grad_clip: float | None = 1.0
    normalize_inputs: bool = True
    normalized_sq_norm: float = 1.0
    normalization_batches: int = 8
    checkpoint_every: int = 1000
    log_every: int = 100
    device: str = "cpu"
    autocast_dtype: Literal["bfloat16", "float16"] | None = None

    def __post_init__(self):
        self.betas = tuple(self.betas)
        if self.steps <= 0:
            raise ValueError(f"steps must be positive, got {self.steps}")
        if not 0 <= self.decay_fraction <= 1:
            raise ValueError(f"decay_fraction must be in [0, 1], got {self.decay_fraction}")
        if self.log_every <= 0 or self.checkpoint_every <= 0:
            raise ValueError("log_every and checkpoint_every must be positive")
        if self.autocast_dtype not in (None, "bfloat16", "float16"):
            raise ValueError(f"autocast_dtype must be None, 'bfloat16' or 'float16', got {self.autocast_dtype!r}")


def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier at ``step`` (0-based): linear warm-up over ``warmup_steps``,
    flat, then linear decay to ``final_lr_fraction`` over the last ``decay_fraction`` of steps."""
    warm = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps > 0 else 1.0
    decay_start = config.steps * (1 - config.decay_fraction)
    if step < decay_start or config.decay_fraction == 0:
        return warm
    progress = (step - decay_start) / (config.steps - decay_start)
    return min(warm, 1.0 - (1.0 - config.final_lr_fraction) * progress)


class NonFiniteError(RuntimeError):
    """A batch or the loss held NaN or inf; the run folder keeps the last good checkpoint."""


class TrainResult(NamedTuple):
    """What :func:`train` returns for one SAE.

    Attributes:
        sae: the trained SAE, in raw input units (the input scale folded into its weights).
        history: one dict per log step: ``step``, ``loss``, ``variance_explained`` and the
            SAE's own statistics (``mse``, ``l0``, ...).
        input_scale: the factor the inputs were multiplied by during training.
        resumed_from: the step a checkpoint resumed this call from; None if it started afresh
            or the run had already finished.
    """

    sae: SparseAutoencoder
    history: list[dict[str, float]]
    input_scale: float
    resumed_from: int | None


def estimate_input_scale(data: DataSource, n_batches: int, target_sq_norm: float = 1.0) -> float:
    """The scalar s with E||s x||^2 = ``target_sq_norm`` over ``n_batches`` batches."""
    total, count = 0.0, 0
    for _ in range(n_batches):
        batch = data.next_batch()
        if not _all_finite(batch):
            raise NonFiniteError("a batch used to estimate the input scale contains NaN or inf")
        total += float(batch.double().pow(2).sum())
        count += batch.shape[0]
    mean_sq_norm = total / count
    if mean_sq_norm <= 0:
        raise ValueError("the input batches are all zero; cannot normalise them")
    return math.sqrt(target_sq_norm / mean_sq_norm)


def optimization_step(
    sae: SparseAutoencoder, optimizer: torch.optim.Optimizer, x: torch.Tensor, step: int, config: TrainConfig
):
    """One update on the (already scaled) batch ``x``; returns the SAE's StepOutput."""
    for group in optimizer.param_groups:
        group["lr"] = config.lr * lr_factor(step, config) * group.get("lr_scale", 1.0)
    dtype = getattr(torch, config.autocast_dtype) if config.autocast_dtype else None
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None):
        out = sae.training_step(x, step)
    out.loss.backward()
    sae.before_optimizer_step()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), config.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sae.after_optimizer_step(optimizer)
    return out


class _Run:
    """One SAE's side of a training loop: its optimizer, checkpoint, history and results."""

    def __init__(self, name: str, sae: SparseAutoencoder, data: DataSource, config: TrainConfig, run_dir):
        self.name, self.sae, self.config = name, sae, config
        sae.to(torch.device(config.device))
        self.optimizer = torch.optim.Adam(sae.optimizer_groups(), lr=config.lr, betas=config.betas)
        self.run_config = {"sae": sae.export_config(), "train": asdict(config), "data": data.describe()}
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.path = self.run_dir / CHECKPOINT_FILE if self.run_dir else None
        self.start, self.scale, self.history, self.finished, self.data_state = 0, None, [], False, None
        self.last_saved = 0

    def restore(self) -> None:
        """Load this run's checkpoint, if it has one."""
        if self.path is None or not self.path.exists():
            return
        state = load_checkpoint(self.path, expected_config=self.run_config)
        try:
            self.sae.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as error:
            raise CheckpointError(f"checkpoint {self.path} does not fit this SAE ({error})") from error
        self.start = self.last_saved = state["step"]
        self.scale, self.history, self.finished, self.data_state = (
            state["input_scale"], state["history"], state["finished"], state["data"])

    def save(self, step: int, data: DataSource, finished: bool = False) -> None:
        if self.path is None:
            return
        if not all(torch.isfinite(p).all() for p in self.sae.parameters()):
            raise NonFiniteError(f"{self.name}: parameters are not finite at step {step}; its checkpoint was not overwritten")
        save_checkpoint(self.path, {
            "step": step, "finished": finished, "config": self.run_config, "model": self.sae.state_dict(),
            "optimizer": self.optimizer.state_dict(), "data": data.state_dict(), "input_scale": self.scale,
            "history": self.history,
        })
        self.last_saved = step

    def log(self, done: int, out, x: torch.Tensor) -> dict[str, float]:
        entry = _log_entry(done, out, x)
        if not math.isfinite(entry["loss"]):
            where = f"; its checkpoint in {self.run_dir} still holds step {self.last_saved}" if self.run_dir else ""
            raise NonFiniteError(f"{self.name}: the loss became {entry['loss']} by step {done - 1}{where}")
        self.history.append(entry)
        return entry

    def finish(self, data: DataSource) -> None:
        self.sae.fold_input_scale(self.scale)
        if self.run_dir is not None:
            save_sae(self.sae, self.run_dir / "sae")
            write_json(self.run_dir / "history.json", self.history)
            self.save(self.config.steps, data, finished=True)


def train_many(
    saes: dict[str, SparseAutoencoder],
    data: DataSource,
    config: TrainConfig,
    run_dirs: dict[str, str | Path | None] | None = None,
    progress: bool = True,
    description: str = "training",
) -> dict[str, TrainResult]:
    """Train several SAEs in lockstep on one data stream: every batch is read once and used by
    all of them, so they see the same data in the same order. Each SAE keeps its own run folder
    (``run_dirs[name]``), checkpoints and results, exactly as :func:`train` writes them."""
    run_dirs = run_dirs or {}
    runs = [_Run(name, sae, data, config, run_dirs.get(name)) for name, sae in saes.items()]
    for run in runs:
        run.restore()
    pending = [run for run in runs if not run.finished]
    starts = sorted({run.start for run in pending})
    if len(starts) > 1:
        raise CheckpointError(
            f"the SAEs trained together here were saved at different steps {starts}; "
            "delete the run folders of the ones to restart, or train them separately"
        )
    if pending:
        start = starts[0]
        if start > 0:
            data.load_state_dict(pending[0].data_state)
            scale = pending[0].scale
        else:
            scale = estimate_input_scale(data, config.normalization_batches, config.normalized_sq_norm) if config.normalize_inputs else 1.0
            for run in pending:
                if run.run_dir is not None:
                    write_json(run.run_dir / "config.json", run.run_config)
        for run in pending:
            run.scale = scale
        _loop(pending, data, config, start, scale, progress, description)
        for run in pending:
            run.finish(data)
    return {
        run.name: TrainResult(run.sae, run.history, run.scale, run.start if run.start and run in pending else None)
        for run in runs
    }


def _loop(runs: list[_Run], data: DataSource, config: TrainConfig, start: int, scale: float, progress, description) -> None:
    device = torch.device(config.device)
    label = description if len(runs) == 1 else f"{description} ({len(runs)} SAEs)"
    bar = tqdm(total=config.steps, initial=start, desc=label, disable=not progress, mininterval=2.0)
    # A batch on the CPU is checked for NaN/inf before the SAEs see it (no cost to the
    # device). A batch already on an accelerator is checked there, and the first bad step is
    # read back only at log and checkpoint steps, so the step has no host sync.
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
    with bar, _deferred_interrupt() as interrupted:
        for step in range(start, config.steps):
            batch = data.next_batch()
            if batch.device.type == "cpu":
                if not _all_finite(batch):
                    for run in runs:  # the SAEs have not seen this batch: their state is good
                        run.save(step, data)
                    _stop_for_bad_batch(runs, step)
            else:
                bad = ~torch.isfinite(batch).all()
                first_bad_step = torch.where((first_bad_step < 0) & bad, step, first_bad_step)
            x = batch.to(device, non_blocking=True) * scale
            done = step + 1
            checking = done % config.log_every == 0 or done == config.steps or done % config.checkpoint_every == 0
            if checking and int(first_bad_step) >= 0:
                _stop_for_bad_batch(runs, int(first_bad_step))
            for i, run in enumerate(runs):
                if step == 0:
                    run.sae.initialize_from_batch(x)
                out = optimization_step(run.sae, run.optimizer, x, step, config)
                if done % config.log_every == 0 or done == config.steps:
                    entry = run.log(done, out, x)
                    if i == 0:
                        bar.set_postfix(loss=f"{entry['loss']:.4g}", l0=f"{entry['l0']:.1f}",
                                        ve=f"{entry['variance_explained']:.3f}", refresh=False)
            bar.update(1)
            if done % config.checkpoint_every == 0 or interrupted.is_set():
                if int(first_bad_step) >= 0:
                    _stop_for_bad_batch(runs, int(first_bad_step))
                for run in runs:
                    run.save(done, data)
            if interrupted.is_set():
                raise KeyboardInterrupt(f"interrupted after step {done}; call train again to resume")


def _stop_for_bad_batch(runs: list[_Run], step: int) -> None:
    saved = f"; the checkpoints hold the state after step {runs[0].last_saved}" if runs[0].run_dir else ""
    raise NonFiniteError(f"the batch for step {step} contains NaN or inf; training stopped{saved}")


def train(
    sae: SparseAutoencoder,
    data: DataSource,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    progress: bool = True,
    description: str = "training",
) -> TrainResult:
    """Train ``sae`` in place on ``data``; see the module docstring. With ``run_dir`` the run is
    checkpointed there and a finished run is reloaded instead of retrained."""
    return train_many({description: sae}, data, config, {description: run_dir}, progress, description)[description]


def _log_entry(step: int, out, x: torch.Tensor) -> dict[str, float]:
    with torch.no_grad():
        variance = (x - x.mean(0)).pow(2).sum()
        unexplained = (out.residual - out.residual.mean(0)).pow(2).sum()
        values = {"loss": out.loss.detach(), "variance_explained": 1 - unexplained / variance, **out.stats}
        return {"step": step, **{k: float(v) for k, v in values.items()}}


def _all_finite(batch: torch.Tensor) -> bool:
    return bool(torch.isfinite(batch).all())


@contextmanager
def _deferred_interrupt():
    """Turn the first Ctrl-C into a flag the loop checks between steps, so it can save a
    consistent checkpoint before stopping. A second Ctrl-C interrupts at once."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum, frame):
        if flag.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        flag.set()

    signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)
