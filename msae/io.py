"""Reading and writing SAEs in the layouts other tools use, without importing those tools.

SAELens (and SAEBench, which loads through it): a folder with ``cfg.json`` and
``sae_weights.safetensors`` holding W_enc (d_in, d_sae), b_enc, W_dec (d_sae, d_in), b_dec and,
for JumpReLU SAEs, a per-latent ``threshold``. A Matryoshka BatchTopK SAE is written as a
JumpReLU SAE with its one global threshold repeated per latent, which is exactly how it runs at
inference. Our own config rides along under the ``"msae"`` key, so :func:`load_sae` rebuilds the
same class; SAELens ignores keys it does not know. SAELens's own "standard", "jumprelu", "topk"
and "gated" SAEs load too.

dictionary_learning (saprmarks): a folder with ``ae.pt`` (a state dict) and ``config.json``
(``{"trainer": {...}, "buffer": {...}}``).
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save

from .files import atomic_write, write_json
from .saes import (
    GatedConfig,
    GatedSAE,
    JumpReLUConfig,
    JumpReLUSAE,
    PAnnealConfig,
    PAnnealSAE,
    ReLUL1Config,
    ReLUL1SAE,
    TopKConfig,
    TopKSAE,
)
from .saes.base import InferenceSAE, SparseAutoencoder, load_named_tensors
from .saes.l1 import L1SAE, L1Config
from .saes.matryoshka import MatryoshkaBatchTopKSAE, MatryoshkaConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
_MSAE_CLASSES = {
    "MatryoshkaBatchTopKSAE": (MatryoshkaBatchTopKSAE, MatryoshkaConfig),
    "L1SAE": (L1SAE, L1Config),
    "ReLUL1SAE": (ReLUL1SAE, ReLUL1Config),
    "TopKSAE": (TopKSAE, TopKConfig),
    "GatedSAE": (GatedSAE, GatedConfig),
    "JumpReLUSAE": (JumpReLUSAE, JumpReLUConfig),
    "PAnnealSAE": (PAnnealSAE, PAnnealConfig),
}


def save_sae(sae: SparseAutoencoder, path: str | Path, **metadata: Any) -> Path:
    """Write ``sae`` in the SAELens layout under ``path``. ``metadata`` (e.g. ``context_size``,
    ``dataset_path``, ``prepend_bos``) goes into cfg.json beside the fields SAELens needs."""
    path = Path(path)
    tensors = {name: t.detach().to("cpu", torch.float32).contiguous() for name, t in sae.export_tensors().items()}
    own = sae.export_config()
    model_name = metadata.pop("model_name", own.get("model_name", ""))
    hook_name = metadata.pop("hook_name", own.get("hook_name", ""))
    layer = re.match(r"blocks\.(\d+)\.", hook_name or "")
    cfg = {
        "architecture": sae.architecture,
        "d_in": sae.d_in,
        "d_sae": sae.d_sae,
        "dtype": "float32",
        "device": "cpu",
        "model_name": model_name,
        "hook_name": hook_name,
        "hook_layer": int(layer.group(1)) if layer else None,
        "hook_head_index": None,
        "activation_fn_str": "relu",
        "apply_b_dec_to_input": bool(getattr(sae, "apply_b_dec_to_input", True)),
        "finetuning_scaling_factor": False,
        "normalize_activations": "none",  # any input scaling is folded into the weights
        **getattr(sae, "saelens_config", dict)(),  # fields an architecture adds (TopK: its k)
        **metadata,
        "msae": own,
    }
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / WEIGHTS_FILE, lambda f: f.write(save(tensors)))
    write_json(path / CFG_FILE, cfg)
    return path


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load an SAE from a SAELens-layout folder: ours back into its own class, others (standard,
    JumpReLU, TopK or Gated) as :func:`_load_foreign_saelens` says."""
    path = Path(path)
    cfg_path, weights_path = path / CFG_FILE, path / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"{path} is not an SAE folder: it needs {CFG_FILE} and {WEIGHTS_FILE}")
    cfg = json.loads(cfg_path.read_text())
    try:
        tensors = load_file(weights_path)
    except Exception as error:
        raise ValueError(f"cannot read {weights_path} ({type(error).__name__}: {error})") from error
    own = cfg.get("msae")
    if own and own.get("class") in _MSAE_CLASSES:
        cls, config_cls = _MSAE_CLASSES[own["class"]]
        fields = {k: v for k, v in own.items() if k != "class"}
        sae = cls(config_cls(**fields))
        sae.import_tensors(tensors, path)
        return sae.to(device)
    return _load_foreign_saelens(cfg, tensors, path).to(device)


FOREIGN_SAELENS_ARCHITECTURES = ("standard", "jumprelu", "topk", "gated")


def _load_foreign_saelens(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> SparseAutoencoder:
    """An SAE that SAELens (or another tool writing its layout) saved: "standard" and "jumprelu"
    into an :class:`InferenceSAE`, "topk" and "gated" into our own classes, which compute the same
    encoding."""
    architecture = cfg.get("architecture", "standard")
    if architecture not in FOREIGN_SAELENS_ARCHITECTURES:
        raise ValueError(f"{path}: SAELens architecture {architecture!r} is not supported "
                         f"({', '.join(FOREIGN_SAELENS_ARCHITECTURES)})")
    if "W_enc" not in tensors:
        raise ValueError(f"{path}: weights file has no 'W_enc'")
    d_in, d_sae = tensors["W_enc"].shape
    if (cfg.get("d_in"), cfg.get("d_sae")) not in ((d_in, d_sae), (None, None)):
        raise ValueError(f"{path}: cfg.json says d_in={cfg.get('d_in')}, d_sae={cfg.get('d_sae')} but W_enc is {d_in}x{d_sae}")
    normalization = cfg.get("normalize_activations") or "none"
    if normalization != "none":
        # SAELens applies it at run time (with a scale estimated from data for
        # "expected_average_only_in"); the file holds only the weights, so it cannot be folded here.
        warnings.warn(f"{path}: cfg.json says normalize_activations={normalization!r}, which SAELens applies "
                      "to the inputs at run time and load_sae does not: feed this SAE inputs normalized that "
                      "way (its reconstructions are then in the normalized space too)", stacklevel=3)
    apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", True))
    if architecture in ("standard", "jumprelu"):
        sae = InferenceSAE(d_in, d_sae, apply_b_dec_to_input, architecture)
        _load_weights(sae, tensors, path)
        if architecture == "jumprelu":
            sae.threshold.copy_(tensors["threshold"])
        return sae
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise ValueError(f"{path}: activations rescaled by decoder norm are not supported")
    if architecture == "topk":
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if k is None:
            raise ValueError(f"{path}: a TopK SAE's cfg.json needs its k ('k' or activation_fn_kwargs.k)")
        sae = TopKSAE(TopKConfig(d_in=d_in, d_sae=d_sae, k=int(k)))
    else:
        sae = GatedSAE(GatedConfig(d_in=d_in, d_sae=d_sae))
    sae.import_tensors(tensors, path)
    if not apply_b_dec_to_input:
        # Ours always encode x - b_dec; one that encodes x itself is the same map with
        # b_dec @ W_enc added to each encoder bias (scaled by exp(r_mag) on the magnitude path).
        with torch.no_grad():
            shift = sae.b_dec @ sae.W_enc  # (d_sae,)
            if architecture == "topk":
                sae.b_enc += shift
            else:
                sae.b_gate += shift
                sae.b_mag += shift * sae.r_mag.exp()
    return sae


def _load_weights(sae: SparseAutoencoder, tensors: dict[str, torch.Tensor], path: Path) -> None:
    load_named_tensors(sae, tensors, ["W_enc", "b_enc", "W_dec", "b_dec"], path)


def load_dictionary_learning(path: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load a dictionary_learning SAE folder (``ae.pt`` + ``config.json``).

    Supported ``dict_class`` values: MatryoshkaBatchTopKSAE and BatchTopKSAE (into our
    :class:`MatryoshkaBatchTopKSAE`), AutoEncoder (ReLU) and JumpReluAutoEncoder (into an
    :class:`InferenceSAE`).
    """
    path = Path(path)
    ae_path, config_path = path / "ae.pt", path / "config.json"
    if not ae_path.is_file() or not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a dictionary_learning folder: it needs ae.pt and config.json")
    trainer = json.loads(config_path.read_text()).get("trainer", {})
    dict_class = trainer.get("dict_class")
    try:
        state = torch.load(ae_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise ValueError(f"cannot read {ae_path} ({type(error).__name__}: {error})") from error
    meta = {"model_name": str(trainer.get("lm_name") or ""), "hook_name": _hook_name(trainer)}

    if dict_class in ("MatryoshkaBatchTopKSAE", "BatchTopKSAE"):
        if dict_class == "BatchTopKSAE":  # nn.Linear layout
            tensors = {
                "W_enc": state["encoder.weight"].T,
                "b_enc": state["encoder.bias"],
                "W_dec": state["decoder.weight"].T,
                "b_dec": state["b_dec"],
            }
            group_sizes = None
        else:
            tensors = {name: state[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
            group_sizes = [int(s) for s in state["group_sizes"].tolist()]
        d_in, d_sae = tensors["W_enc"].shape
        k = int(state["k"]) if "k" in state else int(trainer["k"])
        sae = MatryoshkaBatchTopKSAE(MatryoshkaConfig(d_in, d_sae, k, group_sizes=group_sizes, **meta))
        _load_weights(sae, tensors, path)
        sae.threshold.fill_(float(state["threshold"]))
        return sae.to(device)

    if dict_class == "AutoEncoder":  # ReLU(encoder(x - bias)), decoder(f) + bias
        tensors = {
            "W_enc": state["encoder.weight"].T,
            "b_enc": state["encoder.bias"],
            "W_dec": state["decoder.weight"].T,
            "b_dec": state["bias"],
        }
        sae = InferenceSAE(*tensors["W_enc"].shape, apply_b_dec_to_input=True, architecture="standard")
    elif dict_class == "JumpReluAutoEncoder":  # x @ W_enc + b_enc, no b_dec subtraction by default
        tensors = {name: state[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
        sae = InferenceSAE(*tensors["W_enc"].shape, apply_b_dec_to_input=False, architecture="jumprelu")
        sae.threshold.copy_(state["threshold"])
    else:
        raise ValueError(
            f"{path}: dictionary_learning dict_class {dict_class!r} is not supported; supported: "
            "MatryoshkaBatchTopKSAE, BatchTopKSAE, AutoEncoder, JumpReluAutoEncoder"
        )
    _load_weights(sae, tensors, path)
    return sae.to(device)


def _hook_name(trainer: dict[str, Any]) -> str:
    """dictionary_learning records a layer index; its SAEs read that layer's output, which is
    the residual stream after the block."""
    layer = trainer.get("layer")
    return f"blocks.{layer}.hook_resid_post" if layer is not None else ""
