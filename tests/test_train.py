import json
import os
import signal

import pytest
import torch

from msae.data.toy import FeatureTree, ToyData, paper_tree
from msae.evals.metrics import variance_explained
from msae.io import load_sae
from msae.saes.l1 import L1SAE, L1Config
from msae.saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig
from msae.training.checkpoint import CheckpointError
from msae.training.loop import NonFiniteError, TrainConfig, lr_factor, train

STEPS = 60


def matryoshka(seed):
    return MatryoshkaBatchTopKSAE(
        MatryoshkaConfig(d_in=32, d_sae=64, k=3, n_random_prefixes=4, threshold_start_step=10,
                         dead_after_tokens=2000, seed=seed)
    )


def l1(seed):
    return L1SAE(L1Config(d_in=32, d_sae=20, target_l0=1.1, n_prefixes=5, sort_latents=True, seed=seed))


class Data(ToyData):
    """The toy stream, with hooks to interrupt it or poison a batch."""

    def __init__(self, seed, interrupt_at=None, nan_at=None, gain=1.0):
        super().__init__(FeatureTree(paper_tree()), d_model=32, batch_size=64, seed=seed)
        self.calls, self.interrupt_at, self.nan_at, self.gain = 0, interrupt_at, nan_at, gain

    def next_batch(self):
        self.calls += 1
        batch = super().next_batch() * self.gain
        if self.calls == self.interrupt_at:
            os.kill(os.getpid(), signal.SIGINT)  # as if the user pressed Ctrl-C
        if self.calls == self.nan_at:
            batch[3, 5] = float("nan")
        return batch


def call_of_step(step, normalization_batches=2):
    """Which next_batch call draws the batch of ``step``: the scale estimate comes first."""
    return normalization_batches + step + 1


def config(**overrides):
    return TrainConfig(**{**dict(steps=STEPS, lr=3e-3, warmup_steps=5, checkpoint_every=25, log_every=10,
                                 normalization_batches=2), **overrides})


def test_lr_schedule():
    cfg = TrainConfig(steps=1000, warmup_steps=100, decay_fraction=0.2, final_lr_fraction=0.1)
    assert lr_factor(0, cfg) == pytest.approx(0.01)
    assert lr_factor(49, cfg) == pytest.approx(0.5)
    assert lr_factor(500, cfg) == 1.0
    assert lr_factor(800, cfg) == pytest.approx(1.0)
    assert lr_factor(900, cfg) == pytest.approx(0.55)
    assert lr_factor(999, cfg) == pytest.approx(0.1 + 0.9 / 200)


@pytest.mark.parametrize("make_sae", [matryoshka, l1], ids=["matryoshka", "l1"])
def test_interrupted_run_resumes_to_identical_weights(tmp_path, seed, make_sae):
    straight = train(make_sae(seed), Data(seed), config(), tmp_path / "straight", progress=False)

    # Ctrl-C while the batch of step 37 is drawn: the step finishes, is saved, then we stop.
    with pytest.raises(KeyboardInterrupt):
        train(make_sae(seed), Data(seed, interrupt_at=call_of_step(37)), config(), tmp_path / "resumed", progress=False)
    saved = torch.load(tmp_path / "resumed" / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 38 and not saved["finished"]

    resumed = train(make_sae(seed), Data(seed), config(), tmp_path / "resumed", progress=False)
    assert resumed.resumed_from == 38
    for name, tensor in straight.sae.state_dict().items():
        if isinstance(tensor, torch.Tensor):
            assert torch.equal(tensor, resumed.sae.state_dict()[name]), name
    assert straight.history == resumed.history


def test_finished_run_is_reloaded_not_retrained(tmp_path, seed):
    first = train(matryoshka(seed), Data(seed), config(), tmp_path, progress=False)
    data = Data(seed)
    again = train(matryoshka(seed), data, config(), tmp_path, progress=False)
    assert data.calls == 0
    assert torch.equal(again.sae.W_enc, first.sae.W_enc) and again.input_scale == first.input_scale


def test_run_folder_holds_config_history_and_a_loadable_sae(tmp_path, seed):
    result = train(matryoshka(seed), Data(seed), config(), tmp_path, progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["sae"]["k"] == 3 and saved["train"]["steps"] == STEPS and saved["data"]["kind"] == "toy"
    assert len(json.loads((tmp_path / "history.json").read_text())) == STEPS // 10
    x = Data(seed).sample(100, torch.Generator().manual_seed(seed + 1))[1]
    loaded = load_sae(tmp_path / "sae")
    assert torch.equal(loaded.encode(x), result.sae.encode(x))


def test_saved_sae_runs_on_raw_inputs(seed):
    """Training saw x * scale; the returned SAE reconstructs raw x as well as training did."""
    result = train(matryoshka(seed), Data(seed, gain=10.0), config(steps=200, lr=1e-2), progress=False)
    # the scale is 1 / rms norm of the batches drawn first (2 of 64 rows: an estimate of E||x||^2
    # too noisy to test against its expectation), recomputed here in float64 from the same stream
    stream = Data(seed, gain=10.0)
    first = torch.cat([stream.next_batch() for _ in range(2)]).double()
    assert result.input_scale == pytest.approx(float(first.pow(2).sum(1).mean().rsqrt()), rel=1e-12)
    x = 10.0 * Data(seed).sample(4000, torch.Generator().manual_seed(seed + 1))[1]  # fresh samples
    trained_ve = sum(h["variance_explained"] for h in result.history[-5:]) / 5
    assert trained_ve > 0.3
    with torch.no_grad():
        raw_ve = variance_explained(x, result.sae(x))
    assert raw_ve == pytest.approx(trained_ve, abs=0.1)
    torch.testing.assert_close(result.sae.W_dec.norm(dim=1), torch.ones(64))


def test_nan_batch_stops_with_the_step_and_keeps_a_good_checkpoint(tmp_path, seed):
    with pytest.raises(NonFiniteError, match="batch for step 40 contains NaN"):
        train(matryoshka(seed), Data(seed, nan_at=call_of_step(40)), config(), tmp_path, progress=False)
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert saved["step"] == 40
    assert all(torch.isfinite(t).all() for t in saved["model"].values() if isinstance(t, torch.Tensor))


def test_nan_during_scale_estimation_is_refused(seed):
    with pytest.raises(NonFiniteError, match="estimate the input scale"):
        train(matryoshka(seed), Data(seed, nan_at=1), config(), progress=False)


def test_corrupt_checkpoint_is_refused_clearly(tmp_path, seed):
    with pytest.raises(KeyboardInterrupt):
        train(matryoshka(seed), Data(seed, interrupt_at=call_of_step(7)), config(), tmp_path, progress=False)
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt or unreadable"):
        train(matryoshka(seed), Data(seed), config(), tmp_path, progress=False)


def test_checkpoint_of_another_run_is_refused(tmp_path, seed):
    with pytest.raises(KeyboardInterrupt):
        train(matryoshka(seed), Data(seed, interrupt_at=call_of_step(7)), config(), tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="train.lr is 0.003 in the checkpoint but 0.001 now"):
        train(matryoshka(seed), Data(seed), config(lr=1e-3), tmp_path, progress=False)


def test_checkpoint_from_before_an_option_existed_resumes_while_the_option_is_unset(tmp_path, seed):
    with pytest.raises(KeyboardInterrupt):
        train(matryoshka(seed), Data(seed, interrupt_at=call_of_step(7)), config(), tmp_path / "a", progress=False)
    state = torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)
    del state["config"]["train"]["autocast_dtype"]  # as msae wrote it before the option existed
    for folder in ("a", "b"):
        (tmp_path / folder).mkdir(exist_ok=True)
        torch.save(state, tmp_path / folder / "checkpoint.pt")
    resumed = train(matryoshka(seed), Data(seed), config(), tmp_path / "a", progress=False)
    assert resumed.resumed_from == state["step"] > 0
    with pytest.raises(CheckpointError, match="train.autocast_dtype is None in the checkpoint but 'bfloat16' now"):
        train(matryoshka(seed), Data(seed), config(autocast_dtype="bfloat16"), tmp_path / "b", progress=False)


def test_lockstep_training_equals_separate_runs_and_resumes(tmp_path, seed):
    from msae.training.loop import train_many

    separate = {name: train(make(seed), Data(seed), config(), progress=False).sae
                for name, make in (("m", matryoshka), ("l", l1))}
    with pytest.raises(KeyboardInterrupt):
        train_many({"m": matryoshka(seed), "l": l1(seed)}, Data(seed, interrupt_at=call_of_step(20)), config(),
                   {"m": tmp_path / "m", "l": tmp_path / "l"}, progress=False)
    together = train_many({"m": matryoshka(seed), "l": l1(seed)}, Data(seed), config(),
                          {"m": tmp_path / "m", "l": tmp_path / "l"}, progress=False)
    for name, sae in separate.items():
        assert together[name].resumed_from == 21
        for key, tensor in sae.state_dict().items():
            if isinstance(tensor, torch.Tensor):
                assert torch.equal(tensor, together[name].sae.state_dict()[key]), (name, key)


def test_lockstep_refuses_runs_saved_at_different_steps(tmp_path, seed):
    from msae.training.loop import train_many

    with pytest.raises(KeyboardInterrupt):
        train(matryoshka(seed), Data(seed, interrupt_at=call_of_step(9)), config(), tmp_path / "m", progress=False)
    with pytest.raises(CheckpointError, match=r"different steps \[0, 10\]"):
        train_many({"m": matryoshka(seed), "l": l1(seed)}, Data(seed), config(),
                   {"m": tmp_path / "m", "l": tmp_path / "l"}, progress=False)
