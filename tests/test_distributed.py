"""Work split over ranks (msae.distributed): harvesting by shards and a sweep by SAEs give what
one process gives, and a rank that is interrupted resumes from its files."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import msae.data.activations as activations
import msae.distributed as distributed
from lm_helpers import tiny_model, tiny_sweep_config
from msae.distributed import Ranks, wait_for
from msae.experiments import sweep
from test_train import Data

TESTS = Path(__file__).parent


# --- which rank does what ------------------------------------------------------------------------

def test_ranks_from_torchruns_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert Ranks.from_environment() == Ranks(0, 1, 0) and Ranks().is_main
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    ranks = Ranks.from_environment()
    assert ranks == Ranks(3, 4, 1) and not ranks.is_main and str(ranks) == "rank 3 of 4"
    assert ranks.device("cuda") == "cuda:1" and ranks.device("cpu") == "cpu" and Ranks().device("cuda") == "cuda"
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ValueError, match="must be integers"):
        Ranks.from_environment()
    with pytest.raises(ValueError, match="rank < world_size"):
        Ranks(2, 2)


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_every_part_has_exactly_one_rank(world_size):
    names = [f"sae{i}" for i in range(11)]
    shares = [Ranks(r, world_size).mine(names) for r in range(world_size)]
    assert sorted(sum(shares, [])) == sorted(names)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    assert all(Ranks(r, world_size).owns(i) == (names[i] in shares[r]) for r in range(world_size) for i in range(11))


def test_waiting_gives_up_saying_what_for():
    with pytest.raises(TimeoutError, match="rank 0's meta.json"):
        wait_for(lambda: False, "rank 0's meta.json", timeout_s=0.05, poll_s=0.01)
    calls = []
    wait_for(lambda: calls.append(1) or len(calls) == 3, "three polls", timeout_s=5, poll_s=0.001)
    assert len(calls) == 3


# --- harvesting by shards ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def model():
    return tiny_model()


def harvest_config():
    config = tiny_sweep_config(60, shard_contexts=4)  # ~1200 tokens in shards of 4 contexts: 10 shards
    return config.activation_config()


def test_ranks_harvest_their_own_shards_resume_and_match_one_process(tmp_path, model, monkeypatch):
    config = harvest_config()
    serial = activations.collect_activations(model, config, tmp_path / "serial", progress=False, ranks=Ranks())
    meta = json.loads((serial / "meta.json").read_text())
    n_shards = len(meta["shards"])
    assert n_shards >= 6

    real_run_shard = activations._run_shard
    computed = []

    def counting(model, tokens, *args):
        computed.append(tokens.clone())
        if interrupt_after is not None and len(computed) > interrupt_after:
            raise KeyboardInterrupt("killed")
        return real_run_shard(model, tokens, *args)

    monkeypatch.setattr(activations, "_run_shard", counting)
    split = tmp_path / "split"
    folder = split / config.key()

    # rank 1 of 2 is killed after its first shard, then started again: it does the rest of its
    # shards (not the first again), and waits for rank 0's meta.json
    interrupt_after = 1
    with pytest.raises(KeyboardInterrupt):
        activations.collect_activations(model, config, split, progress=False, ranks=Ranks(1, 2))
    assert sorted(p.name for p in folder.glob("shard_*.npy")) == ["shard_00001.npy"]
    interrupt_after, computed = None, []
    monkeypatch.setattr(distributed, "WAIT_TIMEOUT_S", 0.2)
    with pytest.raises(TimeoutError, match="rank 0 to finish"):
        activations.collect_activations(model, config, split, progress=False, ranks=Ranks(1, 2))
    assert len(computed) == len(range(3, n_shards, 2))  # shards 3, 5, ...
    assert not (folder / "meta.json").exists()

    # rank 0 does the even shards, finds rank 1's, and writes the meta
    computed = []
    assert activations.collect_activations(model, config, split, progress=False, ranks=Ranks(0, 2)) == folder
    assert len(computed) == len(range(0, n_shards, 2))
    assert json.loads((folder / "meta.json").read_text()) == meta
    for shard in meta["shards"]:
        for name in (shard["file"], shard["tokens_file"]):
            assert np.array_equal(np.load(folder / name), np.load(serial / name)), name
    computed = []  # and once done, any rank reads it back
    assert activations.collect_activations(model, config, split, progress=False, ranks=Ranks(1, 2)) == folder
    assert computed == []


# --- a sweep by SAEs, under torchrun ---------------------------------------------------------------

WORKER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, sys.argv[1])
    import msae.experiments.sweep as sweep
    from lm_helpers import tiny_model, tiny_sweep_config
    from msae.distributed import Ranks

    trained = []
    real_train_many = sweep.train_many

    def recording(saes, *args, **kwargs):  # which SAEs this rank trains
        trained.extend(saes)
        return real_train_many(saes, *args, **kwargs)

    sweep.train_many = recording
    config = tiny_sweep_config(60, k_values=[4, 8], matched_k=4, shard_contexts=4)
    results = sweep.run_sweep(config, sys.argv[2], progress=False, model=tiny_model())
    print(json.dumps({"ranks": str(Ranks.from_environment()), "saes": sorted(results.metrics), "trained": trained}),
          flush=True)
""")


def test_a_sweep_split_over_two_torchrun_ranks_gives_the_serial_sweep(tmp_path, model):
    config = tiny_sweep_config(60, k_values=[4, 8], matched_k=4, shard_contexts=4)
    serial = sweep.run_sweep(config, tmp_path / "serial", progress=False, model=model, ranks=Ranks())
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MSAE_WAIT_TIMEOUT_S": "300"}
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(TESTS), str(tmp_path / "split")],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    reports = sorted((json.loads(line) for line in run.stdout.splitlines() if line.startswith("{")),
                     key=lambda report: report["ranks"])
    assert [r["ranks"] for r in reports] == ["rank 0 of 2", "rank 1 of 2"]
    assert all(r["saes"] == sorted(serial.metrics) for r in reports)  # every rank returns the whole sweep
    assert all(r["trained"] for r in reports) and not set(reports[0]["trained"]) & set(reports[1]["trained"])
    assert sorted(reports[0]["trained"] + reports[1]["trained"]) == sorted(serial.metrics)

    split = tmp_path / "split" / "sweeps" / config.name()
    saved = json.loads((split / "results.json").read_text())
    assert sorted(saved) == sorted(serial.metrics)
    for name in serial.metrics:
        for key in ("variance_explained", "l0", "ce_sae", "kl_sae"):
            assert saved[name][key] == pytest.approx(serial.metrics[name][key], rel=1e-5, abs=1e-7), (name, key)
        ours, theirs = load_file(serial.sae_path(name) / "sae_weights.safetensors"), load_file(
            split / name / "sae" / "sae_weights.safetensors")
        assert all(torch.allclose(ours[t], theirs[t], rtol=1e-5, atol=1e-6) for t in ours), name


# --- one SAE, data-parallel over gloo ---------------------------------------------------------------

DP_WORKER = textwrap.dedent("""
    import os
    import sys
    import torch
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[1])
    from test_distributed import NoisyData, dp_config, dp_sae
    from test_train import call_of_step
    from msae.training.loop import train_data_parallel

    seed, run_dir, kernels, interrupt_step, out = int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    data = NoisyData(seed, interrupt_at=call_of_step(interrupt_step) if interrupt_step >= 0 else None)
    try:
        result = train_data_parallel(dp_sae(seed, kernels), data, dp_config(), run_dir, progress=False)
    except KeyboardInterrupt:
        sys.exit(3)
    if rank == 1:  # rank 0 wrote the run folder; rank 1's copy must be the same SAE
        torch.save(result.sae.state_dict(), out)
    # Tear down together, then leave without the interpreter's exit: gloo's teardown at exit has
    # aborted a finished rank ("terminate called without an active exception", twice in make test,
    # the second time after the barrier was added). The marker says, should a rank fail again,
    # whether it got this far: past it, every result the test reads is on disk.
    dist.barrier()
    dist.destroy_process_group()
    print(f"rank {rank} finished", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(0)
""")


def dp_sae(seed, kernels):
    """In float64: a data-parallel step sums in another order than one process, and Adam turns
    float32 rounding in a zero gradient into steps of the learning rate's size; in float64 the
    two agree to ~1e-12 unless they differ for a reason."""
    from msae.saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig

    # fixed groups, latents dying within the run (AuxK) and the inference threshold estimated.
    # Dead after 5 batches of 64: in 600 seeds every run had a dead latent (at 10 batches, 1 in
    # 200 had none, which failed the test's precondition)
    sae = MatryoshkaBatchTopKSAE(MatryoshkaConfig(d_in=32, d_sae=64, k=3, group_sizes=[8, 24, 32],
                                                  threshold_start_step=10, dead_after_tokens=320, seed=seed))
    sae.kernels = kernels
    return sae.double()


class NoisyData(Data):
    """The toy stream with a little Gaussian noise, drawn from its own generator (so it resumes
    with it): the toy's rows repeat exactly, and BatchTopK breaks exact ties between repeated
    rows arbitrarily (one process keeps one of them, ranks that see one each keep both)."""

    def next_batch(self):
        batch = super().next_batch()
        return (batch + 0.01 * torch.randn(batch.shape, generator=self.generator)).double()


def dp_config():
    from msae.training.loop import TrainConfig

    return TrainConfig(steps=40, lr=3e-3, warmup_steps=5, checkpoint_every=10, log_every=10, normalization_batches=2)


def torchrun(script, *args, env=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           str(script), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


@pytest.mark.parametrize("kernels", ["dense", "sparse"])
def test_data_parallel_training_equals_one_process_on_the_whole_batch_and_resumes(tmp_path, seed, kernels):
    from msae.training.loop import train

    serial = train(dp_sae(seed, kernels), NoisyData(seed), dp_config(), tmp_path / "serial", progress=False)
    assert int(serial.sae.n_dead()) > 0 or any(h["dead"] > 0 for h in serial.history)  # AuxK had work to do
    script = tmp_path / "worker.py"
    script.write_text(DP_WORKER)
    run_dir, copy = tmp_path / "parallel", tmp_path / "rank1.pt"
    # Ctrl-C during step 23 on both ranks: the step finishes, rank 0 saves it, both stop ...
    stopped = torchrun(script, TESTS, seed, run_dir, kernels, 23, copy)
    assert stopped.returncode != 0 and not copy.exists()
    assert torch.load(run_dir / "checkpoint.pt", weights_only=True)["step"] == 24
    # ... and two fresh processes resume from rank 0's checkpoint to the end
    resumed = torchrun(script, TESTS, seed, run_dir, kernels, -1, copy)
    assert resumed.returncode == 0, resumed.stderr[-3000:]

    written = torch.load(run_dir / "checkpoint.pt", weights_only=True)["model"]  # rank 0's
    rank1 = torch.load(copy, weights_only=True)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
        ours = serial.sae.state_dict()[name]
        # the ranks' sums run in another order than one process's: float64 rounding, not more
        assert torch.allclose(written[name], ours, rtol=1e-9, atol=1e-11), name
        assert torch.equal(rank1[name], written[name]), name
    assert torch.equal(rank1["tokens_since_fired"], serial.sae.tokens_since_fired)


def test_data_parallel_needs_a_process_group_and_an_sae_that_supports_it(seed):
    from msae.saes.l1 import L1SAE, L1Config
    from msae.training.loop import RankRows, train_data_parallel

    with pytest.raises(RuntimeError, match="init_process_group"):
        train_data_parallel(dp_sae(seed, "dense"), Data(seed), dp_config())
    import torch.distributed as dist

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match="does not train data-parallel"):
            train_data_parallel(L1SAE(L1Config(d_in=32, d_sae=16, target_l0=1.1, seed=seed)), Data(seed), dp_config())
    finally:
        dist.destroy_process_group()
    with pytest.raises(ValueError, match="divisible by the number of processes"):
        RankRows(Data(seed), 0, 3).next_batch()  # 64 rows over 3 ranks
