"""Run folders written by msae before its move to subpackages (tests/fixtures/runs_v0_1, see
tests/layout_fixture.py) still load, are recognised as finished, and resume to the same SAE."""

import shutil

import pytest
import torch
from safetensors.torch import load_file

import layout_fixture as F
from msae import load_sae
from msae.saes.l1 import L1SAE, L1Config
from msae.saes.registry import build_sae
from msae.training.loop import TrainConfig, train

FIXTURE = __import__("pathlib").Path(__file__).parent / "fixtures" / "runs_v0_1"
NAMES = [*F.ARCHITECTURES, "toy_l1"]
CONFIG = TrainConfig(steps=F.STEPS, warmup_steps=2, checkpoint_every=F.CHECKPOINT_EVERY, log_every=2)


def make(name):
    if name == "toy_l1":
        return L1SAE(L1Config(d_in=F.D_IN, d_sae=F.D_SAE, **F.TOY_L1))
    return build_sae(name, d_in=F.D_IN, d_sae=F.D_SAE, l0=F.L0, steps=F.STEPS, **F.ARCHITECTURES[name])


def saved_tensors(folder):
    return load_file(folder / "sae" / "sae_weights.safetensors")


@pytest.mark.parametrize("name", NAMES)
def test_old_sae_folder_loads_into_the_same_class(name):
    sae = load_sae(FIXTURE / "finished" / name / "sae")
    assert type(sae) is type(make(name))
    for key, value in saved_tensors(FIXTURE / "finished" / name).items():
        assert torch.equal(sae.export_tensors()[key], value), key


@pytest.mark.parametrize("name", NAMES)
def test_old_finished_run_is_reloaded_not_retrained(name, tmp_path):
    run_dir = tmp_path / name
    shutil.copytree(FIXTURE / "finished" / name, run_dir)
    result = train(make(name), F.SeededBatches(), CONFIG, run_dir, progress=False)
    assert result.resumed_from is None and len(result.history) == F.STEPS // CONFIG.log_every
    for key, value in saved_tensors(FIXTURE / "finished" / name).items():
        assert torch.equal(result.sae.export_tensors()[key], value), key


@pytest.mark.parametrize("name", NAMES)
def test_old_interrupted_run_resumes_to_the_old_uninterrupted_result(name, tmp_path):
    """The checkpoint of step 4 written by the old code, resumed by this one, ends where the old
    code's uninterrupted run ended: the move changed no computation. Within float32 rounding, not
    bit for bit: the fixture was written on another CPU, whose BLAS kernels round differently
    (about 3e-8 seen after 12 steps, so a tolerance of 1e-6 is 30x that, and far below what any
    change to the maths moves). Bit-exact resumption on one machine is test_train's."""
    run_dir = tmp_path / name
    shutil.copytree(FIXTURE / "interrupted" / name, run_dir)
    result = train(make(name), F.SeededBatches(), CONFIG, run_dir, progress=False)
    assert result.resumed_from == F.CHECKPOINT_EVERY
    for key, value in saved_tensors(FIXTURE / "finished" / name).items():
        torch.testing.assert_close(result.sae.export_tensors()[key], value, rtol=1e-5, atol=1e-6, msg=key)
