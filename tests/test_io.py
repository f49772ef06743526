"""Round trips through the SAELens layout, and reading dictionary_learning's, checked against
each library's forward pass written out from its documented formula."""

import json
import warnings

import pytest
import torch
from safetensors.torch import save_file

from msae.io import load_dictionary_learning, load_sae, save_sae
from msae.saes.l1 import L1SAE, L1Config
from msae.saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig


def randomise(sae, gen):
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
    return sae


def test_matryoshka_round_trip_gives_identical_outputs(tmp_path, gen, seed):
    cfg = MatryoshkaConfig(d_in=16, d_sae=40, k=4, group_sizes=[4, 12, 24], seed=seed,
                           model_name="smollm2-135m", hook_name="blocks.15.hook_resid_post")
    sae = randomise(MatryoshkaBatchTopKSAE(cfg), gen)
    sae.threshold.fill_(0.25)
    save_sae(sae, tmp_path, context_size=128)
    cfg_json = json.loads((tmp_path / "cfg.json").read_text())
    assert cfg_json["architecture"] == "jumprelu" and cfg_json["d_sae"] == 40 and cfg_json["hook_layer"] == 15
    assert cfg_json["context_size"] == 128 and cfg_json["msae"]["group_sizes"] == [4, 12, 24]

    loaded = load_sae(tmp_path)
    assert isinstance(loaded, MatryoshkaBatchTopKSAE) and loaded.config == sae.config
    x = torch.randn(30, 16, generator=gen)
    assert torch.equal(loaded.encode(x), sae.encode(x))
    assert torch.equal(loaded(x), sae(x))
    assert torch.equal(loaded.encode(x, use_threshold=False), sae.encode(x, use_threshold=False))


def test_l1_round_trip(tmp_path, gen, seed):
    sae = randomise(L1SAE(L1Config(d_in=8, d_sae=12, target_l0=1.0, seed=seed)), gen)
    save_sae(sae, tmp_path)
    assert json.loads((tmp_path / "cfg.json").read_text())["architecture"] == "standard"
    loaded = load_sae(tmp_path)
    x = torch.randn(30, 8, generator=gen)
    assert isinstance(loaded, L1SAE) and torch.equal(loaded(x), sae(x))


def test_export_refuses_an_unestimated_threshold(tmp_path, seed):
    sae = MatryoshkaBatchTopKSAE(MatryoshkaConfig(d_in=8, d_sae=16, k=2, seed=seed))
    with pytest.raises(RuntimeError, match="threshold has not been estimated"):
        save_sae(sae, tmp_path)


def random_weights(gen, d_in, d_sae):
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=gen),
        "b_enc": torch.randn(d_sae, generator=gen),
        "W_dec": torch.randn(d_sae, d_in, generator=gen),
        "b_dec": torch.randn(d_in, generator=gen),
    }


def saelens_forward(t, x, architecture, apply_b_dec_to_input=True, k=None):
    """SAELens's encoders, from their formulas: sae_in = x - b_dec (when apply_b_dec_to_input);
    standard ReLU(sae_in @ W_enc + b_enc), JumpReLU masks it by threshold, TopK keeps the k
    largest pre-activations per row then ReLU, Gated: [sae_in @ W_enc + b_gate > 0] *
    ReLU(sae_in @ (W_enc * exp(r_mag)) + b_mag). Returns (acts, reconstruction)."""
    sae_in = x - t["b_dec"] if apply_b_dec_to_input else x
    if architecture == "gated":
        gate = sae_in @ t["W_enc"] + t["b_gate"] > 0
        acts = gate * torch.relu(sae_in @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"])
    else:
        hidden = sae_in @ t["W_enc"] + t["b_enc"]
        acts = torch.relu(hidden)
        if architecture == "jumprelu":
            acts = acts * (hidden > t["threshold"])
        if architecture == "topk":
            top = hidden.topk(k, dim=-1)
            acts = torch.zeros_like(hidden).scatter_(-1, top.indices, torch.relu(top.values))
    return acts, acts @ t["W_dec"] + t["b_dec"]


@pytest.mark.parametrize("apply_b_dec_to_input", [True, False])
@pytest.mark.parametrize("architecture", ["standard", "jumprelu", "topk", "gated"])
def test_reads_foreign_saelens_sae(tmp_path, gen, architecture, apply_b_dec_to_input):
    d_in, d_sae, k = 10, 30, 4
    t = random_weights(gen, d_in, d_sae)
    cfg = {"architecture": architecture, "d_in": d_in, "d_sae": d_sae, "apply_b_dec_to_input": apply_b_dec_to_input}
    if architecture == "jumprelu":
        t["threshold"] = torch.rand(d_sae, generator=gen)
    if architecture == "topk":
        cfg["k"] = k
    if architecture == "gated":
        del t["b_enc"]
        t.update(b_gate=torch.randn(d_sae, generator=gen), b_mag=torch.randn(d_sae, generator=gen),
                 r_mag=torch.randn(d_sae, generator=gen) * 0.5)
    save_file(t, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    sae = load_sae(tmp_path)
    assert sae.architecture == architecture
    x = torch.randn(25, d_in, generator=gen)
    # the reference in float64; ours runs in float32, and for apply_b_dec_to_input=False folds
    # b_dec @ W_enc into its biases: rounding of O(10)-sized sums, far below the 1e-4 allowed
    acts, x_hat = saelens_forward({n: v.double() for n, v in t.items()}, x.double(), architecture,
                                  apply_b_dec_to_input, k)
    torch.testing.assert_close(sae.encode(x).double(), acts, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(sae(x).double(), x_hat, rtol=1e-4, atol=1e-4)
    save_sae(sae, tmp_path / "again")  # and out again
    torch.testing.assert_close(load_sae(tmp_path / "again")(x), sae(x))


def test_foreign_topk_reads_k_from_older_configs(tmp_path, gen):
    t = random_weights(gen, 6, 12)
    save_file(t, tmp_path / "sae_weights.safetensors")
    cfg = {"architecture": "topk", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 3}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    assert load_sae(tmp_path).config.k == 3
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "topk"}))
    with pytest.raises(ValueError, match="needs its k"):
        load_sae(tmp_path)


def test_foreign_input_normalization_is_warned_about(tmp_path, gen):
    save_file(random_weights(gen, 6, 12), tmp_path / "sae_weights.safetensors")
    cfg = {"architecture": "standard", "normalize_activations": "expected_average_only_in"}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="normalize_activations='expected_average_only_in'"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "none"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_sae(tmp_path)


def test_unsupported_or_broken_saelens_folders(tmp_path, gen):
    with pytest.raises(FileNotFoundError, match="needs cfg.json and sae_weights.safetensors"):
        load_sae(tmp_path)
    save_file({"W_enc": torch.randn(4, 6)}, tmp_path / "sae_weights.safetensors")
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "transcoder"}))
    with pytest.raises(ValueError, match="'transcoder' is not supported"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({"architecture": "standard", "d_in": 5, "d_sae": 6}))
    with pytest.raises(ValueError, match="says d_in=5"):
        load_sae(tmp_path)
    (tmp_path / "sae_weights.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="cannot read"):
        load_sae(tmp_path)


def write_dictionary_learning(path, state, trainer):
    path.mkdir()
    torch.save(state, path / "ae.pt")
    (path / "config.json").write_text(json.dumps({"trainer": trainer, "buffer": {"ctx_len": 128}}))


def test_reads_dictionary_learning_matryoshka(tmp_path, gen):
    d_in, d_sae = 12, 32
    state = {
        **random_weights(gen, d_in, d_sae),
        "k": torch.tensor(3, dtype=torch.int),
        "threshold": torch.tensor(0.4),
        "group_sizes": torch.tensor([4, 8, 20]),
    }
    write_dictionary_learning(tmp_path / "m", state, {"dict_class": "MatryoshkaBatchTopKSAE", "lm_name": "gemma", "layer": 12})
    sae = load_dictionary_learning(tmp_path / "m")
    assert sae.config.group_sizes == [4, 8, 20] and sae.config.k == 3
    assert sae.config.hook_name == "blocks.12.hook_resid_post"
    x = torch.randn(20, d_in, generator=gen)
    post = torch.relu((x - state["b_dec"]) @ state["W_enc"] + state["b_enc"])
    acts = post * (post > 0.4)
    torch.testing.assert_close(sae.encode(x), acts)
    torch.testing.assert_close(sae(x), acts @ state["W_dec"] + state["b_dec"])


def test_reads_dictionary_learning_linear_layouts(tmp_path, gen):
    d_in, d_sae = 12, 32
    enc_w, enc_b = torch.randn(d_sae, d_in, generator=gen), torch.randn(d_sae, generator=gen)
    dec_w, bias = torch.randn(d_in, d_sae, generator=gen), torch.randn(d_in, generator=gen)
    x = torch.randn(20, d_in, generator=gen)

    batch_topk = {"encoder.weight": enc_w, "encoder.bias": enc_b, "decoder.weight": dec_w, "b_dec": bias,
                  "k": torch.tensor(4, dtype=torch.int), "threshold": torch.tensor(0.3)}
    write_dictionary_learning(tmp_path / "b", batch_topk, {"dict_class": "BatchTopKSAE"})
    post = torch.relu((x - bias) @ enc_w.T + enc_b)
    acts = post * (post > 0.3)
    torch.testing.assert_close(load_dictionary_learning(tmp_path / "b")(x), acts @ dec_w.T + bias)

    relu = {"encoder.weight": enc_w, "encoder.bias": enc_b, "decoder.weight": dec_w, "bias": bias}
    write_dictionary_learning(tmp_path / "r", relu, {"dict_class": "AutoEncoder"})
    acts = torch.relu((x - bias) @ enc_w.T + enc_b)
    torch.testing.assert_close(load_dictionary_learning(tmp_path / "r")(x), acts @ dec_w.T + bias)

    threshold = torch.rand(d_sae, generator=gen)
    jump = {"W_enc": enc_w.T, "b_enc": enc_b, "W_dec": dec_w.T, "b_dec": bias, "threshold": threshold}
    write_dictionary_learning(tmp_path / "j", jump, {"dict_class": "JumpReluAutoEncoder"})
    pre = x @ enc_w.T + enc_b  # this class does not subtract b_dec
    acts = torch.relu(pre) * (pre > threshold)
    torch.testing.assert_close(load_dictionary_learning(tmp_path / "j")(x), acts @ dec_w.T + bias)


def test_unsupported_dictionary_learning_class(tmp_path):
    write_dictionary_learning(tmp_path / "g", {}, {"dict_class": "GatedAutoEncoder"})
    with pytest.raises(ValueError, match="'GatedAutoEncoder' is not supported"):
        load_dictionary_learning(tmp_path / "g")
    with pytest.raises(FileNotFoundError, match="needs ae.pt and config.json"):
        load_dictionary_learning(tmp_path)
