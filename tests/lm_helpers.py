"""Tiny, offline stand-ins for real language models: a word-level tokenizer and randomly
initialised transformer-lens models of the Llama and Gemma-2 shapes."""

import functools
import re
import tempfile

import torch

from msae.data.stories import generate_stories


@functools.cache
def tiny_tokenizer_dir() -> str:
    """Saved to a folder: transformer-lens reloads tokenizers by path."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for s in generate_stories(300, 0) for w in re.findall(r"\w+|[^\w\s]", s.text)})
    vocab = {tok: i for i, tok in enumerate(["<unk>", "<bos>", "<eos>", "<pad>", *words])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>"
    )
    folder = tempfile.mkdtemp(prefix="tiny-tokenizer-")
    tokenizer.save_pretrained(folder)
    return folder


def tiny_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_tokenizer_dir())


def tiny_model(shape: str = "llama", seed: int = 0):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    tokenizer = tiny_tokenizer()
    common = dict(d_model=48, d_head=12, n_heads=4, d_mlp=96, n_layers=3, n_ctx=256, d_vocab=len(tokenizer),
                  normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True, final_rms=True,
                  n_key_value_heads=2, seed=seed, default_prepend_bos=False)
    if shape == "llama":
        extra = dict(act_fn="silu", rotary_dim=12, rotary_adjacent_pairs=False)
    elif shape == "gemma2":  # the features of gemma-2-2b's transformer-lens config, scaled down
        extra = dict(act_fn="gelu_pytorch_tanh", use_attn_scale=True, use_local_attn=True, window_size=16,
                     attn_types=["local", "global", "local"], attn_scores_soft_cap=50.0,
                     output_logits_soft_cap=30.0, use_normalization_before_and_after=True, rotary_dim=12)
    else:
        raise ValueError(shape)
    torch.manual_seed(seed)
    return HookedTransformer(HookedTransformerConfig(**common, **extra), tokenizer=tokenizer)


def local_text_sweep_config(profile: str, folder, **fields):
    """A tiny sweep at ``profile`` whose train and held-out text are local story files read through
    the Hugging Face ``datasets`` "text" loader (the paper profile's code path, offline)."""
    from msae.data.activations import CorpusConfig
    from msae.experiments import profiles

    corpora = {}
    for name, seed in (("train", 0), ("eval", 1)):
        path = folder / f"{name}.txt"
        path.write_text("\n".join(s.text for s in generate_stories(150, seed)))
        corpora[name] = CorpusConfig(source="hf", path="text", data_files=[str(path)], n_documents=10**9)
    tiny = dict(hook_name="blocks.1.hook_resid_post", d_sae=64, k_values=[4], matched_k=4, n_tokens=1500, steps=30,
                batch_size=64, context_size=32, eval_context_size=24, eval_contexts=4, warmup_steps=5,
                dead_after_tokens=500, threshold_start_step=10, threshold_beta=0.9)
    return profiles.sweep_config(profile, corpus=corpora["train"], eval_corpus=corpora["eval"], **{**tiny, **fields})


def tiny_sweep_config(n_documents: int, **fields):
    """The smoke sweep shrunk to the tiny models' sizes (layer 1, 32 latents, 12 steps of 64) on
    ``n_documents`` training stories: seconds to train, for the sweep and study tests."""
    from dataclasses import replace

    from msae.experiments import profiles

    tiny = dict(
        corpus=replace(profiles.STORIES, n_documents=n_documents),
        eval_corpus=replace(profiles.HELD_OUT_STORIES, n_documents=20),
        hook_name="blocks.1.hook_resid_post", d_sae=32, k_values=[4], matched_k=4, n_tokens=1200, steps=12,
        batch_size=64, context_size=32, eval_context_size=24, eval_contexts=4, warmup_steps=3, dead_after_tokens=300,
        threshold_start_step=4,
    )
    return profiles.sweep_config("smoke", **{**tiny, **fields})
