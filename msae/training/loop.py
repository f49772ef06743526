"""The training loop every experiment shares.

``train(sae, data, config, run_dir)`` runs Adam with a warm-up/decay schedule and gradient
clipping on a stream of batches, with:

- inputs scaled by one scalar so that ``E||x||^2 = 1`` (or ``normalized_sq_norm``; folded into the weights at the end, so
  the returned and saved SAE runs on raw inputs);
- a progress bar showing loss, L0 and variance explained every ``log_every`` steps (the only
  points where values leave the device);
- checkpoints written atomically every ``checkpoint_every`` steps and on Ctrl-C, and resumed
  automatically when ``train`` is called again on the same run folder (also with a larger
  ``steps``, to extend a run: see :class:`TrainConfig`);
- the run's config written beside its results (``config.json``), the finished SAE in the
  SAELens layout (``sae/``) and the logged statistics (``history.json``).

``train_data_parallel`` takes the same steps with each batch spread over the processes of a
``torch.distributed`` group (torchrun; gloo on CPUs, NCCL on GPUs): see its docstring.

A data source is any object with ``next_batch() -> (B, d_in) tensor``, ``state_dict()``,
``load_state_dict(state)`` and ``describe() -> dict``. Every batch is checked before the SAEs see
it (:class:`BatchCheck`): NumPy arrays and tensors of another floating dtype than the SAE's are
converted with a warning; other types, shapes and dtypes, empty batches, and NaN or inf stop
the run with an error naming the step.
"""

from __future__ import annotations

import json
import math
import numbers
import signal
import threading
import warnings
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from ..data.sources import DataSource
from ..distributed import all_rows, all_sum, average_in_place
from ..files import json_default, write_json
from ..io import save_sae
from ..saes.base import SparseAutoencoder
from ..validation import ConfigTypeError, check_bool, check_int, check_real, check_str
from .checkpoint import (
    CheckpointError,
    _describe_difference,
    _same_config,
    holding_run_folders,
    load_checkpoint,
    save_checkpoint,
)

CHECKPOINT_FILE = "checkpoint.pt"


@dataclass
class TrainConfig:
    """How :func:`train` trains: the run's length, Adam and its schedule, input scaling,
    logging, checkpoints and device. Every field is checked when the config is built.

    Saved with every checkpoint: a run folder only resumes under an equal config, except for
    ``steps``. Training a run folder again with a larger ``steps`` extends the run, finished
    or not, from the step its checkpoint holds to the new total; its history continues. The
    learning-rate schedule is that of the new total from the resume point on (:func:`lr_factor`
    with the new ``steps``), so an extended run differs from one trained for the new total from
    the start: a finished run's decayed lr jumps back to what the new schedule gives at that
    step. The SAE's own config (e.g. a penalty warm-up over ``total_steps``) does not change.
    A ``steps`` below the steps a checkpoint has done is refused.

    Attributes:
        steps: number of optimizer steps (one batch each); > 0. Must be more than a
            Matryoshka SAE's ``threshold_start_step``.
        lr: Adam's learning rate after warm-up, before decay; > 0.
        betas: Adam's (beta1, beta2), each in [0, 1).
        warmup_steps: the learning rate ramps up linearly over these first steps; 0: no warm-up.
        decay_fraction: the learning rate decays linearly over this last fraction of the
            steps, in [0, 1]; 0: no decay.
        final_lr_fraction: the learning rate at the end, relative to ``lr``, in [0, 1].
        grad_clip: the largest global gradient norm, > 0; None: no clipping.
        normalize_inputs: scale the inputs by one scalar so that E||x||^2 =
            ``normalized_sq_norm`` (folded into the weights at the end, so the returned SAE
            runs on raw inputs); False: train on raw inputs.
        normalized_sq_norm: the E||x||^2 the inputs are scaled to; > 0.
        normalization_batches: batches drawn (and not trained on) to estimate the scale; > 0
            (>= 0 without ``normalize_inputs``).
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
        check_int(self, "steps", 1)
        check_real(self, "lr", 0, low_open=True)
        betas = self.betas
        if (isinstance(betas, (str, bytes)) or not isinstance(betas, (tuple, list)) or len(betas) != 2
                or not all(isinstance(b, numbers.Real) and not isinstance(b, bool) for b in betas)):
            raise ConfigTypeError(f"betas must be a pair of numbers (Adam's beta1, beta2), got {betas!r}")
        if not all(0 <= b < 1 for b in betas):
            raise ValueError(f"betas must both be in [0, 1), got {betas!r}")
        self.betas = tuple(b if type(b) in (int, float) else float(b) for b in betas)
        check_int(self, "warmup_steps", 0)
        check_real(self, "decay_fraction", 0, 1)
        check_real(self, "final_lr_fraction", 0, 1)  # below 0 the lr turns negative; above 1 it does nothing
        check_real(self, "grad_clip", 0, low_open=True, optional=True, hint="; use None for no clipping")
        check_bool(self, "normalize_inputs")
        check_real(self, "normalized_sq_norm", 0, low_open=True)  # 0 would scale the inputs to 0 (NaN weights)
        # the scale is estimated from these batches; without normalisation none are drawn
        check_int(self, "normalization_batches", 1 if self.normalize_inputs else 0)
        check_int(self, "checkpoint_every", 1)
        check_int(self, "log_every", 1)
        if isinstance(self.device, torch.device):
            self.device = str(self.device)  # the config is saved as JSON
        check_str(self, "device")
        try:
            torch.device(self.device)
        except RuntimeError as error:
            raise ValueError(f"device must name a torch device such as 'cpu' or 'cuda', got {self.device!r} ({error})") from None
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


class BatchCheck:
    """Checks what a data source's ``next_batch`` returned before any SAE sees it: a 2-d,
    non-empty (B, d_in) floating-point tensor. A NumPy array, or a tensor of another floating
    dtype than the SAEs', is converted (one warning per kind and per :func:`train` call);
    anything else raises ``TypeError`` or ``ValueError`` naming the batch. Reads only shapes
    and dtypes, so a batch on an accelerator costs no host sync."""

    def __init__(self, d_in: int, dtype: torch.dtype):
        self.d_in, self.dtype = d_in, dtype
        self.warned: set[str] = set()

    def __call__(self, batch, where: str) -> torch.Tensor:
        expected = f"a (batch, d_in={self.d_in}) torch.Tensor"
        source = None  # a numpy batch: its dtype, for the warning
        if isinstance(batch, np.ndarray):
            source = str(batch.dtype)
            if batch.dtype.kind not in "fiub":  # object, str, complex...: nothing torch trains on
                raise TypeError(f"{where} is a numpy array of dtype {batch.dtype}; next_batch() must return {expected}")
            # torch.from_numpy would share a read-only array (a memory map) and warn; copy those
            batch = torch.from_numpy(batch) if batch.flags.writeable else torch.tensor(batch)
        elif not isinstance(batch, torch.Tensor):
            raise TypeError(f"{where} is a {type(batch).__name__}; next_batch() must return {expected}")
        if batch.ndim != 2:
            raise ValueError(f"{where} has shape {tuple(batch.shape)}; next_batch() must return {expected}")
        if batch.shape[0] == 0:
            raise ValueError(f"{where} is empty (shape {tuple(batch.shape)}); next_batch() must return at least one row")
        if batch.shape[1] != self.d_in:
            raise ValueError(f"{where} has width {batch.shape[1]} (shape {tuple(batch.shape)}), "
                             f"but the SAE expects d_in={self.d_in}")
        if not batch.dtype.is_floating_point:
            raise TypeError(f"{where} has dtype {batch.dtype}; the SAE trains on floating-point inputs ({self.dtype})")
        if source is not None or batch.dtype != self.dtype:
            what = f"a numpy array of {source}" if source is not None else f"a {batch.dtype} tensor"
            if what not in self.warned:
                self.warned.add(what)
                warnings.warn(f"{where} is {what}; msae converts such batches to {self.dtype} tensors, the dtype of "
                              "the SAE's weights (warned once per train call)", UserWarning, stacklevel=2)
            batch = batch.to(self.dtype)
        return batch


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


def estimate_input_scale(data: DataSource, n_batches: int, target_sq_norm: float = 1.0,
                         check: BatchCheck | None = None, group=None) -> float:
    """The scalar s with E||s x||^2 = ``target_sq_norm`` over ``n_batches`` batches (each
    passed through ``check`` first, if given); with a process ``group``, over the batches'
    rows on all its ranks."""
    total, count = 0.0, 0
    for i in range(n_batches):
        batch = data.next_batch()
        if check is not None:
            batch = check(batch, f"batch {i} of the input-scale estimate (drawn before step 0)")
        if not _all_finite(batch):
            raise NonFiniteError("a batch used to estimate the input scale contains NaN or inf")
        total += float(batch.double().pow(2).sum())
        count += batch.shape[0]
    if group is not None:
        total, count = all_sum(torch.tensor([total, float(count)], dtype=torch.float64), group).tolist()
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
    if sae.batch_group is not None:  # data-parallel: the mean of the ranks' gradients, the whole batch's
        for parameter in sae.parameters():
            if parameter.grad is not None:
                average_in_place(parameter.grad, sae.batch_group)
    sae.before_optimizer_step()
    if config.grad_clip is not None:
        torch.nn.utils.clip_grad_norm_(sae.parameters(), config.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    sae.after_optimizer_step(optimizer)
    return out


class _Run:
    """One SAE's side of a training loop: its optimizer, checkpoint, history and results."""

    def __init__(self, name: str, sae: SparseAutoencoder, data: DataSource, config: TrainConfig, run_dir,
                 writer: bool = True):
        self.name, self.sae, self.config = name, sae, config
        self.writer = writer  # False: a data-parallel rank other than 0, which reads the run folder only
        sae.to(torch.device(config.device))
        self.optimizer = torch.optim.Adam(sae.optimizer_groups(), lr=config.lr, betas=config.betas)
        self.run_config = {"sae": sae.export_config(), "train": asdict(config), "data": data.describe()}
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.path = self.run_dir / CHECKPOINT_FILE if self.run_dir else None
        self.start, self.scale, self.history, self.finished, self.data_state = 0, None, [], False, None
        self.last_saved = 0
        self.steps_changed = False  # resumed under another TrainConfig.steps than the checkpoint's

    def restore(self) -> None:
        """Load this run's checkpoint, if it has one. Its config must equal this run's except
        for ``train.steps``, which may change as long as it is not below the steps done."""
        if self.path is None or not self.path.exists():
            return
        state = load_checkpoint(self.path)  # the config is compared here, where steps may differ
        saved_steps = _check_same_run(self.path, state.get("config"), self.run_config)
        done, steps = state["step"], self.config.steps
        if done > steps:
            raise CheckpointError(
                f"checkpoint {self.path} has already trained {done} steps, more than steps={steps}; a run "
                f"cannot be shortened below what it has done: train with steps >= {done}, or use another run folder"
            )
        try:
            self.sae.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (KeyError, RuntimeError, ValueError) as error:
            raise CheckpointError(f"checkpoint {self.path} does not fit this SAE ({error})") from error
        self.start = self.last_saved = done
        self.scale, self.history, self.finished, self.data_state = (
            state["input_scale"], state["history"], state["finished"], state["data"])
        self.steps_changed = saved_steps != steps
        if self.finished and done < steps:
            # Extending a finished run: its checkpoint holds the SAE in raw input units (finish
            # folded the scale in); unfold it to train on (exact up to float32 rounding).
            self.sae.fold_input_scale(1.0 / self.scale)
            self.finished = False

    def save(self, step: int, data: DataSource, finished: bool = False) -> None:
        if self.path is None or not self.writer:
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
        if self.run_dir is not None and self.writer:
            save_sae(self.sae, self.run_dir / "sae")
            write_json(self.run_dir / "history.json", self.history)
            self.save(self.config.steps, data, finished=True)


def read_history(run_dir: str | Path) -> list[dict[str, float]]:
    """The statistics a finished run logged (``history.json`` in its ``run_dir``: ``step``,
    ``loss``, ``variance_explained``, ``l0``, and each SAE's own, such as ``l1_coefficient``),
    one record every ``log_every`` steps."""
    path = Path(run_dir) / "history.json"
    if not path.is_file():
        raise FileNotFoundError(f"no training history in {run_dir}: it is written when the run finishes")
    return json.loads(path.read_text())


def train_many(
    saes: dict[str, SparseAutoencoder],
    data: DataSource,
    config: TrainConfig,
    run_dirs: dict[str, str | Path | None] | None = None,
    progress: bool = True,
    description: str = "training",
    _writer: bool = True,
) -> dict[str, TrainResult]:
    """Train several SAEs in lockstep on one data stream: every batch is read once and used by
    all of them, so they see the same data in the same order. Each SAE keeps its own run folder
    (``run_dirs[name]``), checkpoints and results, exactly as :func:`train` writes them."""
    run_dirs = run_dirs or {}
    group = next((sae.batch_group for sae in saes.values()), None)  # data-parallel (train_data_parallel)
    # shared while restoring (many processes may read finished runs at once), exclusive to train;
    # a data-parallel rank other than 0 only reads, and rank 0 holds the locks for all
    with holding_run_folders(run_dirs if _writer else {}) as locks:
        check = _batch_check(saes, config.steps)
        runs = [_Run(name, sae, data, config, run_dirs.get(name), _writer) for name, sae in saes.items()]
        for run in runs:
            run.restore()
            if group is not None:  # every rank starts from rank 0's weights and state
                for tensor in run.sae.state_dict().values():
                    if isinstance(tensor, torch.Tensor):  # (not the extra state: seeded alike on every rank)
                        dist.broadcast(tensor, 0, group=group)
        pending = [run for run in runs if not run.finished]
        starts = sorted({run.start for run in pending})
        if len(starts) > 1:
            raise CheckpointError(
                f"the SAEs trained together here were saved at different steps {starts}; "
                "delete the run folders of the ones to restart, or train them separately"
            )
        if pending:
            locks.for_writing(run.run_dir for run in pending if _writer)
            start = starts[0]
            if start > 0:
                data.load_state_dict(pending[0].data_state)
                scale = pending[0].scale
            else:
                scale = (estimate_input_scale(data, config.normalization_batches, config.normalized_sq_norm, check,
                                              group) if config.normalize_inputs else 1.0)
            for run in pending:
                run.scale = scale
                if run.run_dir is not None and _writer and (start == 0 or run.steps_changed):
                    write_json(run.run_dir / "config.json", run.run_config)
            _loop(pending, data, config, start, scale, progress, description, check)
            for run in pending:
                run.finish(data)
        return {
            run.name: TrainResult(run.sae, run.history, run.scale, run.start if run.start and run in pending else None)
            for run in runs
        }


def _loop(runs: list[_Run], data: DataSource, config: TrainConfig, start: int, scale: float, progress, description,
          check: BatchCheck) -> None:
    device = torch.device(config.device)
    label = description if len(runs) == 1 else f"{description} ({len(runs)} SAEs)"
    bar = tqdm(total=config.steps, initial=start, desc=label, disable=not progress, mininterval=2.0)
    # A batch on the CPU is checked for NaN/inf before the SAEs see it (no cost to the
    # device). A batch already on an accelerator is checked there, and the first bad step is
    # read back only at log and checkpoint steps, so the step has no host sync.
    first_bad_step = torch.full((), -1, dtype=torch.long, device=device)
    with bar, _deferred_interrupt() as interrupted:
        for step in range(start, config.steps):
            batch = check(data.next_batch(), f"the batch for step {step}")
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
                if step == 0:  # (the whole batch, when it is spread over data-parallel ranks)
                    run.sae.initialize_from_batch(all_rows(x, run.sae.batch_group))
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


def _batch_check(saes: dict[str, SparseAutoencoder], steps: int) -> BatchCheck:
    """Check, before anything is read or written, that ``steps`` suits every SAE and that the
    SAEs trained together read the same batches; returns the check each batch goes through."""
    for name, sae in saes.items():
        try:
            sae.check_training_length(steps)
        except ValueError as error:
            raise (ValueError(f"{name}: {error}") if len(saes) > 1 else error) from None
    shapes = {name: (sae.d_in, sae.W_dec.dtype) for name, sae in saes.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"SAEs trained together read the same batches, so they need one d_in and dtype; got {shapes}")
    d_in, dtype = next(iter(shapes.values()), (0, torch.float32))  # no SAEs: no batch is read
    return BatchCheck(d_in, dtype)


def _check_same_run(path: Path, saved: Any, expected: dict[str, Any]) -> Any:
    """Raise :class:`CheckpointError` unless the checkpoint's run config ``saved`` equals
    ``expected`` (as :func:`load_checkpoint` compares them), ``train.steps`` aside; returns the
    checkpoint's ``train.steps``."""
    saved = json.loads(json.dumps(saved, default=json_default))
    expected = json.loads(json.dumps(expected, default=json_default))
    saved_train = saved.get("train") if isinstance(saved, dict) else None
    saved_steps = saved_train.get("steps") if isinstance(saved_train, dict) else None
    if isinstance(saved_train, dict):
        expected["train"]["steps"] = saved_steps  # a run may be extended (see TrainConfig)
    if not _same_config(saved, expected):
        raise CheckpointError(
            f"checkpoint {path} belongs to a different run: {_describe_difference(saved, expected)}; "
            "use another run folder, or delete the checkpoint to start afresh"
        )
    return saved_steps


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


class RankRows:
    """The batches of ``data`` cut in ``world_size`` equal parts; this rank's part of each.

    Every rank reads the same batches of the whole stream (its position is the same on all) and
    keeps rows ``[rank * b, (rank + 1) * b)``, so the ranks together see exactly the batches one
    process would. ``describe`` is the stream's own: a data-parallel run's checkpoint belongs to
    the same run as a single process's, and either can resume the other."""

    def __init__(self, data: DataSource, rank: int, world_size: int):
        self.data, self.rank, self.world_size = data, rank, world_size

    def next_batch(self) -> torch.Tensor:
        batch = self.data.next_batch()
        if batch.shape[0] % self.world_size:
            raise ValueError(f"a batch of {batch.shape[0]} rows cannot be split evenly over {self.world_size} "
                             "data-parallel ranks: use a batch size divisible by the number of processes")
        part = batch.shape[0] // self.world_size
        return batch[self.rank * part : (self.rank + 1) * part]

    def state_dict(self) -> dict[str, Any]:
        return self.data.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.data.load_state_dict(state)

    def describe(self) -> dict[str, Any]:
        return self.data.describe()


def train_data_parallel(
    sae: SparseAutoencoder,
    data: DataSource,
    config: TrainConfig,
    run_dir: str | Path | None = None,
    progress: bool = True,
    description: str = "training",
    group=None,
) -> TrainResult:
    """:func:`train` one SAE on the ranks of a ``torch.distributed`` process group (default:
    the whole world; start the processes with torchrun and call
    ``torch.distributed.init_process_group`` first, "gloo" on CPUs, "nccl" on GPUs).

    Every rank passes the same ``data`` stream and keeps its share of each batch
    (:class:`RankRows`): ``data``'s batch is the global batch, split over the ranks. The step is
    the one a single process takes on the whole batch: the BatchTopK selection, the firing
    statistics, the inference threshold and AuxK's variance span the ranks
    (:mod:`msae.distributed`), and the gradients are averaged. Rank 0 writes the run folder
    (checkpoints, the SAE); every rank resumes from it. Every rank returns the trained SAE; the
    logged statistics are each rank's own rows'."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("data-parallel training needs torch.distributed: launch the processes with torchrun and "
                           "call torch.distributed.init_process_group('gloo' or 'nccl') first")
    if not sae.supports_data_parallel:
        raise ValueError(f"{type(sae).__name__} does not train data-parallel; train it with msae.train "
                         "(Matryoshka and BatchTopK SAEs do)")
    group = dist.group.WORLD if group is None else group
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    sae.batch_group = group
    try:
        return train_many({description: sae}, RankRows(data, rank, world), config, {description: run_dir},
                          progress and rank == 0, description, _writer=rank == 0)[description]
    finally:
        sae.batch_group = None


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
