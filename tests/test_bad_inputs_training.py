"""Bad inputs to training, each refused before it can train silently wrong, with an exception
that names the field (or the step) and the value: config fields of every config dataclass, the
batches a data source returns, a Matryoshka run too short to estimate its threshold, and a
run folder's ``steps`` lowered below what it has done. Also: what is converted rather than
refused (NumPy arrays, other float dtypes), and extending a finished run."""

import json
import os
import re
import signal
import warnings

import numpy as np
import pytest
import torch

import msae
from msae.saes import GatedConfig, JumpReLUConfig, PAnnealConfig, ReLUL1Config, TopKConfig
from msae.training.checkpoint import CheckpointError
from msae.training.loop import lr_factor

D_IN, D_SAE = 8, 16


def train_config(**overrides):
    return msae.TrainConfig(**{**dict(steps=6, lr=3e-3, warmup_steps=2, log_every=2, normalization_batches=1),
                               **overrides})


def tiny_sae(seed, **overrides):
    return msae.MatryoshkaBatchTopKSAE(msae.MatryoshkaConfig(
        **{**dict(d_in=D_IN, d_sae=D_SAE, k=2, group_sizes=[4, 12], threshold_start_step=2, seed=seed), **overrides}))


# --- 1. config fields ------------------------------------------------------------------------

BUILDERS = {
    "train": lambda **f: msae.TrainConfig(**{"steps": 10, **f}),
    "matryoshka": lambda **f: msae.MatryoshkaConfig(**{"d_in": D_IN, "d_sae": D_SAE, "k": 2, **f}),
    "l1": lambda **f: msae.L1Config(**{"d_in": D_IN, "d_sae": D_SAE, **f}),
    "relu": lambda **f: ReLUL1Config(**{"d_in": D_IN, "d_sae": D_SAE, **f}),
    "topk": lambda **f: TopKConfig(**{"d_in": D_IN, "d_sae": D_SAE, "k": 2, **f}),
    "gated": lambda **f: GatedConfig(**{"d_in": D_IN, "d_sae": D_SAE, **f}),
    "jumprelu": lambda **f: JumpReLUConfig(**{"d_in": D_IN, "d_sae": D_SAE, **f}),
    "p_anneal": lambda **f: PAnnealConfig(**{"d_in": D_IN, "d_sae": D_SAE, "total_steps": 10, **f}),
}

NAN, INF = float("nan"), float("inf")

BAD_FIELDS = [
    # TrainConfig: wrong types
    ("train", "steps", "100", TypeError, "steps must be an integer, got '100'"),
    ("train", "steps", 40.5, TypeError, "steps must be an integer, got 40.5"),
    ("train", "steps", True, TypeError, "steps must be an integer, got True"),
    ("train", "lr", "3e-4", TypeError, "lr must be a number, got '3e-4'"),
    ("train", "betas", 0.9, TypeError, "betas must be a pair of numbers"),
    ("train", "betas", (0.9,), TypeError, "betas must be a pair of numbers"),
    ("train", "warmup_steps", 10.0, TypeError, "warmup_steps must be an integer, got 10.0"),
    ("train", "normalize_inputs", "yes", TypeError, "normalize_inputs must be True or False, got 'yes'"),
    ("train", "log_every", 2.5, TypeError, "log_every must be an integer, got 2.5"),
    ("train", "device", 0, TypeError, "device must be a string, got 0"),
    # TrainConfig: values that train silently wrong or crash late
    ("train", "steps", 0, ValueError, "steps must be a positive integer, got 0"),
    ("train", "lr", 0.0, ValueError, "lr must be positive, got 0.0"),
    ("train", "lr", NAN, ValueError, "lr must be a finite number, got nan"),
    ("train", "betas", (0.9, 1.0), ValueError, r"betas must both be in \[0, 1\)"),
    ("train", "warmup_steps", -1, ValueError, "warmup_steps must be a non-negative integer, got -1"),
    ("train", "decay_fraction", 1.5, ValueError, r"decay_fraction must be in \[0, 1\], got 1.5"),
    ("train", "final_lr_fraction", -0.1, ValueError, r"final_lr_fraction must be in \[0, 1\], got -0.1"),
    ("train", "grad_clip", -1.0, ValueError, "grad_clip must be positive, got -1.0; use None for no clipping"),
    ("train", "grad_clip", 0, ValueError, "grad_clip must be positive, got 0"),
    ("train", "normalized_sq_norm", 0, ValueError, "normalized_sq_norm must be positive, got 0"),
    ("train", "normalized_sq_norm", INF, ValueError, "normalized_sq_norm must be a finite number, got inf"),
    ("train", "normalization_batches", 0, ValueError, "normalization_batches must be a positive integer, got 0"),
    ("train", "checkpoint_every", 0, ValueError, "checkpoint_every must be a positive integer, got 0"),
    ("train", "log_every", -5, ValueError, "log_every must be a positive integer, got -5"),
    ("train", "device", "gpu", ValueError, "device must name a torch device .* got 'gpu'"),
    ("train", "autocast_dtype", "float64", ValueError, "autocast_dtype must be None"),
    # MatryoshkaConfig
    ("matryoshka", "d_in", "8", TypeError, "d_in must be an integer, got '8'"),
    ("matryoshka", "k", 2.0, TypeError, "k must be an integer, got 2.0"),
    ("matryoshka", "k", True, TypeError, "k must be an integer, got True"),
    ("matryoshka", "k", D_SAE + 1, ValueError, f"k must be an integer in 1..d_sae={D_SAE}, got {D_SAE + 1}"),
    ("matryoshka", "group_sizes", 16, TypeError, "group_sizes must be a list"),
    ("matryoshka", "group_weighting", [1.0, NAN], TypeError, "group_weighting must be .* finite numbers"),
    ("matryoshka", "stop_gradient", 1, TypeError, "stop_gradient must be True or False, got 1"),
    ("matryoshka", "n_random_prefixes", -1, ValueError, "n_random_prefixes must be an integer in 0..d_sae"),
    ("matryoshka", "pareto_exponent", 1.0, ValueError, r"pareto_exponent must be in \(0, 1\), got 1.0"),
    ("matryoshka", "auxk_alpha", -0.1, ValueError, "auxk_alpha must be >= 0, got -0.1"),
    ("matryoshka", "auxk_k", 0, ValueError, "auxk_k must be a positive integer, got 0"),
    ("matryoshka", "dead_after_tokens", 0, ValueError, "dead_after_tokens must be a positive integer, got 0"),
    ("matryoshka", "threshold_beta", 1.0, ValueError, r"threshold_beta must be in \[0, 1\), got 1.0"),
    ("matryoshka", "threshold_start_step", -1, ValueError, "threshold_start_step must be a non-negative integer"),
    ("matryoshka", "threshold_start_step", 10.0, TypeError, "threshold_start_step must be an integer, got 10.0"),
    ("matryoshka", "seed", 1.5, TypeError, "seed must be an integer, got 1.5"),
    ("matryoshka", "model_name", None, TypeError, "model_name must be a string, got None"),
    # L1Config and its ReLU-L1 subclass
    ("l1", "target_l0", 0, ValueError, rf"target_l0 must be in \(0, d_sae={D_SAE}\], got 0"),
    ("l1", "target_l0", "2", TypeError, "target_l0 must be a number or None, got '2'"),
    ("l1", "l1_coefficient", -1.0, ValueError, "l1_coefficient must be >= 0, got -1.0"),
    ("l1", "controller_rate", 1.0, ValueError, r"controller_rate must be in \[0, 1\), got 1.0"),
    ("l1", "l1_warmup_steps", -1, ValueError, "l1_warmup_steps must be a non-negative integer"),
    ("l1", "n_prefixes", 0, ValueError, f"n_prefixes must be an integer in 1..d_sae={D_SAE}, got 0"),
    ("l1", "sort_latents", "no", TypeError, "sort_latents must be True or False"),
    ("l1", "sort_ema", 1.0, ValueError, r"sort_ema must be in \[0, 1\), got 1.0"),
    ("l1", "decoder_init_norm", 0.0, ValueError, "decoder_init_norm must be positive, got 0.0"),
    ("relu", "penalty_warmup_fraction", 2.0, ValueError, r"penalty_warmup_fraction must be in \[0, 1\], got 2.0"),
    ("relu", "total_steps", True, TypeError, "total_steps must be an integer or None, got True"),
    # the baselines
    ("topk", "k", 0, ValueError, "k must be an integer in 1..d_sae"),
    ("topk", "auxk_alpha", "x", TypeError, "auxk_alpha must be a number, got 'x'"),
    ("gated", "l1_coefficient", NAN, ValueError, "l1_coefficient must be a finite number, got nan"),
    ("gated", "total_steps", 10.5, TypeError, "total_steps must be an integer or None, got 10.5"),
    ("gated", "dead_after_tokens", -3, ValueError, "dead_after_tokens must be a positive integer, got -3"),
    ("jumprelu", "threshold_lr_scale", 0.0, ValueError, "threshold_lr_scale must be positive, got 0.0"),
    ("jumprelu", "l0_coefficient", -1e-3, ValueError, "l0_coefficient must be >= 0"),
    ("p_anneal", "n_p_updates", 0, ValueError, "n_p_updates must be a positive integer, got 0"),
    ("p_anneal", "rescale_batches", 1.5, TypeError, "rescale_batches must be an integer, got 1.5"),
    ("p_anneal", "p_start", "1", TypeError, "p_start must be a number, got '1'"),
    ("p_anneal", "lp_coefficient", -1.0, ValueError, "lp_coefficient must be >= 0, got -1.0"),
]


@pytest.mark.parametrize("kind, field, value, error, message", BAD_FIELDS,
                         ids=[f"{k}-{f}={v!r}" for k, f, v, *_ in BAD_FIELDS])
def test_bad_config_field_is_refused_when_the_config_is_built(kind, field, value, error, message):
    with pytest.raises(error, match=message):
        BUILDERS[kind](**{field: value})


def test_a_wrongly_typed_field_is_also_a_value_error():
    """Callers that caught ValueError for every bad field (as msae raised before) still do."""
    with pytest.raises(ValueError, match="steps must be an integer"):
        msae.TrainConfig(steps="100")


def test_numpy_scalars_are_accepted_as_the_numbers_they_are(seed):
    rng = np.random.default_rng(seed)
    steps, lr = np.int64(rng.integers(1, 1000)), np.float32(rng.uniform(1e-4, 1e-2))
    config = msae.TrainConfig(steps=steps, lr=lr, betas=(np.float32(0.9), 0.99))
    assert type(config.steps) is int and config.steps == int(steps)
    assert type(config.lr) is float and config.lr == float(lr)
    d_sae = np.int64(rng.integers(2, 64))
    sae_config = msae.MatryoshkaConfig(d_in=np.int32(D_IN), d_sae=d_sae, k=np.int64(1))
    assert type(sae_config.d_sae) is int and sae_config.group_sizes == [int(d_sae)]
    json.dumps(msae.MatryoshkaBatchTopKSAE(sae_config).export_config())  # the run folder writes these


# --- 2. batches ------------------------------------------------------------------------------


class Batches:
    """(32, D_IN) float32 batches of sparse Gaussian features times ``gain``; ``convert`` is
    applied to every batch, ``bad`` to the batch of call ``bad_call`` (call 1 is the first
    input-scale batch); drawing call ``interrupt_at`` presses Ctrl-C."""

    def __init__(self, seed, convert=None, bad=None, bad_call=None, gain=1.0, interrupt_at=None):
        self.generator = torch.Generator().manual_seed(seed)
        self.convert, self.bad, self.bad_call, self.calls = convert, bad, bad_call, 0
        self.gain, self.interrupt_at = gain, interrupt_at
        self.drawn = 0  # batches this object served (calls is the stream position, restored on resume)

    def next_batch(self):
        self.calls += 1
        self.drawn += 1
        if self.calls == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C
        codes = torch.rand(32, 2 * D_IN, generator=self.generator) * (torch.rand(32, 2 * D_IN, generator=self.generator) < 0.2)
        batch = self.gain * codes @ torch.randn(2 * D_IN, D_IN, generator=torch.Generator().manual_seed(0))
        if self.convert is not None:
            batch = self.convert(batch)
        if self.calls == self.bad_call:
            batch = self.bad(batch)
        return batch

    def state_dict(self):
        return {"calls": self.calls, "generator": self.generator.get_state()}

    def load_state_dict(self, state):
        self.calls = state["calls"]
        self.generator.set_state(state["generator"])

    def describe(self):
        return {"kind": "test batches"}


BAD_BATCHES = [
    ("narrow", lambda b: b[:, :-1], ValueError, rf"has width {D_IN - 1} \(shape \(32, {D_IN - 1}\)\), but the SAE expects d_in={D_IN}"),
    ("wide", lambda b: torch.cat([b, b[:, :1]], 1), ValueError, f"has width {D_IN + 1} .* expects d_in={D_IN}"),
    ("1-d", lambda b: b[0], ValueError, rf"has shape \({D_IN},\); next_batch\(\) must return a \(batch, d_in={D_IN}\)"),
    ("3-d", lambda b: b[None], ValueError, rf"has shape \(1, 32, {D_IN}\)"),
    ("empty", lambda b: b[:0], ValueError, rf"is empty \(shape \(0, {D_IN}\)\)"),
    ("int64", lambda b: (10 * b).long(), TypeError, "has dtype torch.int64; the SAE trains on floating-point inputs"),
    ("bool", lambda b: b > 0, TypeError, "has dtype torch.bool"),
    ("complex", lambda b: b.to(torch.complex64), TypeError, "has dtype torch.complex64"),
    ("numpy-int", lambda b: (10 * b).long().numpy(), TypeError, "has dtype torch.int64"),
    ("numpy-object", lambda b: np.array([object()] * D_IN)[None].repeat(32, 0), TypeError, "is a numpy array of dtype object; next_batch"),
    ("list", lambda b: b.tolist(), TypeError, rf"is a list; next_batch\(\) must return a \(batch, d_in={D_IN}\) torch.Tensor"),
    ("none", lambda b: None, TypeError, "is a NoneType"),
]
# where the bad batch comes: the scale estimate, step 0 (before the SAE is initialised from it), a later step
WHERE = [(1, "batch 0 of the input-scale estimate (drawn before step 0)"), (2, "the batch for step 0"), (5, "the batch for step 3")]


@pytest.mark.parametrize("call, where", WHERE, ids=["scale-estimate", "step-0", "step-3"])
@pytest.mark.parametrize("name, bad, error, message", BAD_BATCHES, ids=[case[0] for case in BAD_BATCHES])
def test_bad_batch_is_refused_naming_the_step(seed, tmp_path, name, bad, error, message, call, where):
    data = Batches(seed, bad=bad, bad_call=call)
    sae = tiny_sae(seed)
    initial = {k: v.clone() for k, v in sae.state_dict().items() if isinstance(v, torch.Tensor)}
    with pytest.raises(error, match=f"^{re.escape(where)} " + message):
        msae.train(sae, data, train_config(checkpoint_every=3), tmp_path, progress=False)
    assert data.calls == call  # refused as soon as it was drawn
    if call <= 2:  # the SAE never saw it: not even initialize_from_batch ran
        for key, value in sae.state_dict().items():
            if key in initial:
                assert torch.equal(value, initial[key]), key
    else:  # the checkpoint holds the steps before the bad batch (3, saved every 3 steps)
        assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["step"] == call - 2


def readonly(array):
    array.setflags(write=False)  # as a memory-mapped cache of activations is
    return array


CONVERSIONS = [
    ("numpy-float32", lambda b: b.numpy(), "a numpy array of float32"),
    ("numpy-float64", lambda b: b.double().numpy(), "a numpy array of float64"),
    ("numpy-read-only", lambda b: readonly(b.numpy().copy()), "a numpy array of float32"),
    ("numpy-float16", lambda b: b.half().numpy(), "a numpy array of float16"),
    ("float64", lambda b: b.double(), "a torch.float64 tensor"),
    ("float16", lambda b: b.half(), "a torch.float16 tensor"),
    ("bfloat16", lambda b: b.bfloat16(), "a torch.bfloat16 tensor"),
]


@pytest.mark.parametrize("name, convert, described", CONVERSIONS, ids=[case[0] for case in CONVERSIONS])
def test_numpy_and_other_float_batches_are_cast_with_one_warning(seed, name, convert, described):
    """A converted batch trains exactly as the float32 tensor it is converted to would."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        converted = msae.train(tiny_sae(seed), Batches(seed, convert=convert), train_config(), progress=False)
    ours = [w for w in caught if "converts such batches" in str(w.message)]
    assert len(ours) == 1, [str(w.message) for w in caught]  # 7 batches drawn, one warning
    assert str(ours[0].message).startswith(f"batch 0 of the input-scale estimate (drawn before step 0) is {described}; "
                                           "msae converts such batches to torch.float32 tensors")

    def as_float32(batch):
        batch = convert(batch)
        return (torch.from_numpy(np.array(batch)) if isinstance(batch, np.ndarray) else batch).float()

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # float32 tensors need no conversion: no warning
        reference = msae.train(tiny_sae(seed), Batches(seed, convert=as_float32), train_config(), progress=False)
    for key, value in reference.sae.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(converted.sae.state_dict()[key], value), key
    assert converted.history == reference.history


def test_float64_sae_trains_on_float64_batches_without_a_warning(seed):
    sae = tiny_sae(seed).double()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        msae.train(sae, Batches(seed, convert=lambda b: b.double()), train_config(), progress=False)
    assert sae.W_enc.dtype == torch.float64


# --- 3. a Matryoshka run too short to estimate its inference threshold -------------------------


@pytest.mark.parametrize("steps, start", [(20, 1000), (20, 20)], ids=["default-start", "start-equals-steps"])
def test_matryoshka_run_not_longer_than_the_threshold_start_is_refused_before_step_0(seed, tmp_path, steps, start):
    data = Batches(seed)
    with pytest.raises(ValueError, match=rf"TrainConfig.steps={steps} is not more than "
                                         rf"MatryoshkaConfig.threshold_start_step={start}.*Train for more steps"):
        msae.train(tiny_sae(seed, threshold_start_step=start), data, train_config(steps=steps), tmp_path, progress=False)
    assert data.calls == 0 and not (tmp_path / "checkpoint.pt").exists()


def test_matryoshka_run_one_step_past_the_threshold_start_exports(seed, tmp_path):
    start = int(torch.randint(0, 8, (), generator=torch.Generator().manual_seed(seed)))
    result = msae.train(tiny_sae(seed, threshold_start_step=start), Batches(seed), train_config(steps=start + 1),
                        tmp_path, progress=False)
    assert float(result.sae.threshold) >= 0
    loaded = msae.load_sae(tmp_path / "sae")
    x = torch.randn(10, D_IN, generator=torch.Generator().manual_seed(seed + 1))
    assert torch.equal(loaded.encode(x), result.sae.encode(x))


def test_lockstep_names_the_sae_whose_threshold_start_is_too_late(seed):
    from msae.training.loop import train_many

    saes = {"early": tiny_sae(seed, threshold_start_step=2), "late": tiny_sae(seed, threshold_start_step=50)}
    with pytest.raises(ValueError, match="^late: TrainConfig.steps=6 is not more than"):
        train_many(saes, Batches(seed), train_config(), progress=False)


# --- 4. extending a run, and refusing to shorten one ---------------------------------------------

STEPS, MORE = 60, 90


def extend_config(steps):
    return msae.TrainConfig(steps=steps, lr=3e-3, warmup_steps=5, checkpoint_every=25, log_every=10,
                            normalization_batches=2)


def call_of_step(step):
    """The next_batch call that draws the batch of ``step`` (2 batches estimate the scale first)."""
    return 2 + step + 1


def test_finished_run_extends_to_more_steps(seed, tmp_path):
    # gain 10: the input scale is far from 1, so a finished SAE left in raw units would train wrong
    first = msae.train(tiny_sae(seed), Batches(seed, gain=10.0), extend_config(STEPS), tmp_path / "a", progress=False)
    data = Batches(seed, gain=10.0)
    extended = msae.train(tiny_sae(seed), data, extend_config(MORE), tmp_path / "a", progress=False)
    assert extended.resumed_from == STEPS and data.drawn == MORE - STEPS  # no new scale estimate
    assert data.calls == call_of_step(MORE - 1)  # the stream continued where it stopped
    assert extended.input_scale == first.input_scale
    assert [h["step"] for h in extended.history] == list(range(10, MORE + 1, 10))
    assert extended.history[: len(first.history)] == first.history
    saved = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == MORE and saved["finished"] and saved["config"]["train"]["steps"] == MORE
    # the last step's lr is that of the new total's schedule (decayed over its last 18 steps)
    new = extend_config(MORE)
    assert lr_factor(MORE - 1, new) != lr_factor(MORE - 1, extend_config(STEPS))
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(new.lr * lr_factor(MORE - 1, new), rel=1e-12)
    assert json.loads((tmp_path / "a" / "config.json").read_text())["train"]["steps"] == MORE
    assert len(json.loads((tmp_path / "a" / "history.json").read_text())) == MORE // 10

    # The same 60 steps stopped by Ctrl-C at the end (a checkpoint in training units, not
    # finished), then extended: the same SAE, up to the rounding of folding the scale in and out.
    with pytest.raises(KeyboardInterrupt):
        msae.train(tiny_sae(seed), Batches(seed, gain=10.0, interrupt_at=call_of_step(STEPS - 1)), extend_config(STEPS),
                   tmp_path / "b", progress=False)
    assert not torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)["finished"]
    unfinished = msae.train(tiny_sae(seed), Batches(seed, gain=10.0), extend_config(MORE), tmp_path / "b", progress=False)
    assert unfinished.resumed_from == STEPS
    for key, value in unfinished.sae.state_dict().items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            torch.testing.assert_close(extended.sae.state_dict()[key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert extended.history[-1]["loss"] == pytest.approx(unfinished.history[-1]["loss"], rel=1e-3)

    again = Batches(seed, gain=10.0)
    reloaded = msae.train(tiny_sae(seed), again, extend_config(MORE), tmp_path / "a", progress=False)
    assert again.drawn == 0 and reloaded.resumed_from is None
    assert torch.equal(reloaded.sae.W_enc, extended.sae.W_enc)


def test_lowering_steps_below_what_was_done_is_refused(seed, tmp_path):
    done = 12
    msae.train(tiny_sae(seed), Batches(seed), extend_config(done), tmp_path, progress=False)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(CheckpointError, match=f"has already trained {done} steps, more than steps={done - 1}; "
                                              f"a run cannot be shortened .* steps >= {done}"):
        msae.train(tiny_sae(seed), Batches(seed), extend_config(done - 1), tmp_path, progress=False)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    # other fields still tell runs apart
    with pytest.raises(CheckpointError, match="train.lr is 0.003 in the checkpoint but 0.001 now"):
        msae.train(tiny_sae(seed), Batches(seed), msae.TrainConfig(**{**extend_config(MORE).__dict__, "lr": 1e-3}),
                   tmp_path, progress=False)
