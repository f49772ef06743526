"""The CUDA path against the CPU: skipped without a GPU (benchmarks/gpu_check.sh runs these
first on a GPU machine). Each compares a step on the GPU with the same step on the CPU."""

import pytest
import torch

from msae.kernels.sparse import batch_top_k
from msae.saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig
from msae.training.loop import TrainConfig, optimization_step

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here")


def sae(seed, kernels, d_sae=2048, dead_after_tokens=10**9):
    model = MatryoshkaBatchTopKSAE(MatryoshkaConfig(d_in=64, d_sae=d_sae, k=8, group_sizes=[128, 384, d_sae - 512],
                                                    threshold_start_step=0, dead_after_tokens=dead_after_tokens,
                                                    seed=seed))
    model.kernels = kernels
    return model


def batch(seed, n=256):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 64, generator=gen) + torch.relu(torch.randn(n, 64, generator=gen) - 1) * 3


@pytest.mark.parametrize("kernels", ["dense", "sparse"])
@pytest.mark.parametrize("dead", [False, True], ids=["all alive", "AuxK"])
def test_a_training_step_on_the_gpu_equals_the_cpu(seed, kernels, dead):
    x = batch(seed)
    steps = {}
    for device in ("cpu", "cuda"):
        model = sae(seed, kernels, dead_after_tokens=1 if dead else 10**9).to(device)
        if dead:  # every latent dead: AuxK (sync-free on the GPU) has the most to do
            model.tokens_since_fired.fill_(10)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        out = optimization_step(model, optimizer, x.to(device), 0, TrainConfig(steps=1, warmup_steps=1, device=device))
        steps[device] = (float(out.loss), {n: p.detach().cpu() for n, p in model.named_parameters()})
    assert steps["cuda"][0] == pytest.approx(steps["cpu"][0], rel=1e-4)
    for name, value in steps["cpu"][1].items():
        assert torch.allclose(steps["cuda"][1][name], value, rtol=1e-4, atol=1e-6), name


def test_batch_top_k_on_the_gpu_keeps_the_cpus_values(seed):
    pre = torch.relu(torch.randn(512, 4096, generator=torch.Generator().manual_seed(seed)))
    cpu, gpu = batch_top_k(pre, 16), batch_top_k(pre.cuda(), 16).cpu()
    assert int((gpu != 0).sum()) == int((cpu != 0).sum()) == 16 * 512
    assert torch.equal(gpu.flatten().sort().values, cpu.flatten().sort().values)


def test_sync_free_auxk_equals_the_synced_one_on_the_gpu(seed):
    x = batch(seed).cuda()
    losses = []
    for sync_free in (True, False):
        model = sae(seed, "sparse", dead_after_tokens=1).cuda()
        model.tokens_since_fired[::3] = 10  # a third of the latents dead
        model.sync_free_auxk = sync_free
        losses.append(float(model.training_step(x, 0).stats["auxk"]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5) and losses[0] > 0


def test_bfloat16_autocast_on_the_gpu_keeps_float32_weights_and_a_close_loss(seed):
    x = batch(seed).cuda()
    losses = {}
    for cast in (None, "bfloat16"):
        model = sae(seed, "sparse").cuda()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        config = TrainConfig(steps=1, warmup_steps=1, device="cuda", autocast_dtype=cast)
        losses[cast] = float(optimization_step(model, optimizer, x, 0, config).loss)
        assert all(p.dtype == torch.float32 for p in model.parameters())
    assert losses["bfloat16"] == pytest.approx(losses[None], rel=2e-2)
