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

import dataclasses
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


class SAEFileError(ValueError):
    """A saved SAE that cannot be loaded as it is; the message names the file and what is wrong.
    A ValueError, so callers that catch those still catch it."""


# The class load_sae gives an SAE another tool saved; written out again it is still that tool's
# SAE, described by the SAELens fields of cfg.json, so it loads the foreign way.
_FOREIGN_CLASSES = ("InferenceSAE",)


def _read_json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text())
    except ValueError as error:  # JSONDecodeError (truncated, not JSON) and UnicodeDecodeError (binary)
        raise SAEFileError(f"{path} is not valid JSON, perhaps truncated ({error})") from error
    if not isinstance(value, dict):
        raise SAEFileError(f"{path} must hold a JSON object, found a {type(value).__name__}")
    return value


def _check_finite(tensors: dict[str, Any], file: Path) -> None:
    """NaN or inf weights load and run without complaint and turn the outputs they touch into NaN: refuse them."""
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            bad = int((~torch.isfinite(value)).sum())
            if bad:
                raise SAEFileError(f"{file}: tensor {name!r} has {bad} NaN or infinite value(s) of {value.numel()}")


def load_sae(path: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load an SAE from a SAELens-layout folder: ours back into its own class, others (standard,
    JumpReLU, TopK or Gated) as :func:`_load_foreign_saelens` says. A folder that cannot be
    loaded as it is raises :class:`SAEFileError` naming the file."""
    path = Path(path)
    cfg_path, weights_path = path / CFG_FILE, path / WEIGHTS_FILE
    if not cfg_path.is_file() or not weights_path.is_file():
        raise FileNotFoundError(f"{path} is not an SAE folder: it needs {CFG_FILE} and {WEIGHTS_FILE}")
    cfg = _read_json_object(cfg_path)
    try:
        tensors = load_file(weights_path)
    except Exception as error:
        raise SAEFileError(f"cannot read {weights_path} ({type(error).__name__}: {error})") from error
    _check_finite(tensors, weights_path)
    own = cfg.get("msae")
    if own is None or (isinstance(own, dict) and own.get("class") in _FOREIGN_CLASSES):
        return _load_foreign_saelens(cfg, tensors, path).to(device)
    return _load_own(own, tensors, cfg_path, weights_path).to(device)


def _load_own(own: Any, tensors: dict[str, torch.Tensor], cfg_path: Path, weights_path: Path) -> SparseAutoencoder:
    """An SAE msae saved, from cfg.json's "msae" object, back into its class."""
    if not isinstance(own, dict):
        raise SAEFileError(f"{cfg_path}: 'msae' must be an object (msae's own config), found a {type(own).__name__}")
    name = own.get("class")
    if name not in _MSAE_CLASSES:
        known = ", ".join([*_MSAE_CLASSES, *_FOREIGN_CLASSES])
        raise SAEFileError(f"{cfg_path}: msae.class {name!r} is not a class this version of msae can load "
                           f"(known: {known}); a newer msae may have written it")
    cls, config_cls = _MSAE_CLASSES[name]
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(own) - fields - {"class"})
    if unknown:
        # Warned about and ignored, not refused. Each class's forward pass is fixed by its code, its
        # tensors (checked for names and shapes) and the fields this version knows; msae gives a
        # changed computation a new class name, refused above. A new field of a known class is
        # therefore a training setting (as most config fields are), which inference does not read,
        # and refusing it would make every SAE a newer msae saves unloadable here.
        warnings.warn(f"{cfg_path}: msae config field(s) {unknown} are unknown to this version's {name} "
                      "(written by a newer msae?) and are ignored", stacklevel=3)
    try:
        config = config_cls(**{k: v for k, v in own.items() if k in fields})
    except (TypeError, ValueError) as error:  # a required field missing, or one out of range
        raise SAEFileError(f"{cfg_path}: msae config of a {name} is invalid ({error})") from error
    sae = cls(config)
    _import_tensors(sae, tensors, weights_path)
    return sae


FOREIGN_SAELENS_ARCHITECTURES = ("standard", "jumprelu", "topk", "gated")


def _load_foreign_saelens(cfg: dict[str, Any], tensors: dict[str, torch.Tensor], path: Path) -> SparseAutoencoder:
    """An SAE that SAELens (or another tool writing its layout) saved: "standard" and "jumprelu"
    into an :class:`InferenceSAE`, "topk" and "gated" into our own classes, which compute the same
    encoding."""
    cfg_path, weights_path = path / CFG_FILE, path / WEIGHTS_FILE
    architecture = cfg.get("architecture", "standard")
    if architecture not in FOREIGN_SAELENS_ARCHITECTURES:
        raise SAEFileError(f"{cfg_path}: SAELens architecture {architecture!r} is not supported "
                           f"({', '.join(FOREIGN_SAELENS_ARCHITECTURES)})")
    d_in, d_sae = _encoder_shape(tensors, weights_path)
    if (cfg.get("d_in"), cfg.get("d_sae")) not in ((d_in, d_sae), (None, None)):
        raise SAEFileError(f"{cfg_path} says d_in={cfg.get('d_in')}, d_sae={cfg.get('d_sae')} but W_enc in "
                           f"{weights_path.name} is {d_in}x{d_sae}")
    normalization = cfg.get("normalize_activations") or "none"
    if normalization != "none":
        # SAELens applies it at run time (with a scale estimated from data for
        # "expected_average_only_in"); the file holds only the weights, so it cannot be folded here.
        warnings.warn(f"{cfg_path} says normalize_activations={normalization!r}, which SAELens applies "
                      "to the inputs at run time and load_sae does not: feed this SAE inputs normalized that "
                      "way (its reconstructions are then in the normalized space too)", stacklevel=3)
    apply_b_dec_to_input = bool(cfg.get("apply_b_dec_to_input", True))
    if architecture in ("standard", "jumprelu"):
        sae = InferenceSAE(d_in, d_sae, apply_b_dec_to_input, architecture)
        _load_weights(sae, tensors, weights_path)
        if architecture == "jumprelu":
            if "threshold" not in tensors:
                raise SAEFileError(f"{weights_path}: a jumprelu SAE needs a 'threshold' of shape ({d_sae},); "
                                   f"the file has {sorted(tensors)}")
            _copy_threshold(sae, tensors["threshold"], weights_path)
        return sae
    if cfg.get("rescale_acts_by_decoder_norm"):
        raise SAEFileError(f"{cfg_path}: activations rescaled by decoder norm are not supported")
    if architecture == "topk":
        k = cfg.get("k", (cfg.get("activation_fn_kwargs") or {}).get("k"))
        if k is None:
            raise SAEFileError(f"{cfg_path}: a TopK SAE's cfg.json needs its k ('k' or activation_fn_kwargs.k)")
        sae = TopKSAE(TopKConfig(d_in=d_in, d_sae=d_sae, k=int(k)))
    else:
        sae = GatedSAE(GatedConfig(d_in=d_in, d_sae=d_sae))
    _import_tensors(sae, tensors, weights_path)
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


def _encoder_shape(tensors: dict[str, Any], file: Path) -> tuple[int, int]:
    """(d_in, d_sae) from W_enc, which every layout has."""
    W_enc = tensors.get("W_enc")
    if W_enc is None:
        raise SAEFileError(f"{file}: weights file has no 'W_enc'")
    if W_enc.ndim != 2:
        raise SAEFileError(f"{file}: W_enc has shape {tuple(W_enc.shape)}, expected (d_in, d_sae)")
    return tuple(W_enc.shape)


def _copy_threshold(sae: InferenceSAE, threshold: torch.Tensor, file: Path) -> None:
    try:  # a per-latent threshold, or one that broadcasts to it (as loading always allowed)
        sae.threshold.copy_(threshold)
    except RuntimeError as error:
        raise SAEFileError(f"{file}: threshold has shape {tuple(threshold.shape)}, expected ({sae.d_sae},)") from error


def _load_weights(sae: SparseAutoencoder, tensors: dict[str, torch.Tensor], where: Path) -> None:
    _import_tensors(sae, tensors, where, ["W_enc", "b_enc", "W_dec", "b_dec"])


def _import_tensors(sae: SparseAutoencoder, tensors: dict[str, torch.Tensor], file: Path,
                    names: list[str] | None = None) -> None:
    """The SAE's own import (or just ``names``); its checks (missing tensors, shapes) raise
    ValueErrors that name ``file``, raised again as SAEFileError so every load problem is one."""
    try:
        if names is None:
            sae.import_tensors(tensors, file)
        else:
            load_named_tensors(sae, tensors, names, file)
    except ValueError as error:
        raise SAEFileError(str(error)) from error


# What each supported dictionary_learning class's ae.pt holds (k may instead be in config.json).
_DICTIONARY_LEARNING_KEYS = {
    "MatryoshkaBatchTopKSAE": ("W_enc", "b_enc", "W_dec", "b_dec", "group_sizes", "threshold"),
    "BatchTopKSAE": ("encoder.weight", "encoder.bias", "decoder.weight", "b_dec", "threshold"),
    "AutoEncoder": ("encoder.weight", "encoder.bias", "decoder.weight", "bias"),
    "JumpReluAutoEncoder": ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"),
}


def load_dictionary_learning(path: str | Path, device: str | torch.device = "cpu") -> SparseAutoencoder:
    """Load a dictionary_learning SAE folder (``ae.pt`` + ``config.json``).

    Supported ``dict_class`` values: MatryoshkaBatchTopKSAE and BatchTopKSAE (into our
    :class:`MatryoshkaBatchTopKSAE`), AutoEncoder (ReLU) and JumpReluAutoEncoder (into an
    :class:`InferenceSAE`). A folder that cannot be loaded as it is raises :class:`SAEFileError`
    naming the file.
    """
    path = Path(path)
    ae_path, config_path = path / "ae.pt", path / "config.json"
    if not ae_path.is_file() or not config_path.is_file():
        raise FileNotFoundError(f"{path} is not a dictionary_learning folder: it needs ae.pt and config.json")
    trainer = _read_json_object(config_path).get("trainer", {})
    if not isinstance(trainer, dict):
        raise SAEFileError(f"{config_path}: 'trainer' must be an object, found a {type(trainer).__name__}")
    dict_class = trainer.get("dict_class")
    if dict_class not in _DICTIONARY_LEARNING_KEYS:
        raise SAEFileError(f"{config_path}: dictionary_learning dict_class {dict_class!r} is not supported; "
                           f"supported: {', '.join(_DICTIONARY_LEARNING_KEYS)}")
    try:
        state = torch.load(ae_path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise SAEFileError(f"cannot read {ae_path} ({type(error).__name__}: {error})") from error
    expected = list(_DICTIONARY_LEARNING_KEYS[dict_class])
    if not isinstance(state, dict):
        raise SAEFileError(f"{ae_path} holds a {type(state).__name__}, not a state dict; a {dict_class} "
                           f"needs the keys {expected}")
    missing = [key for key in expected if not isinstance(state.get(key), torch.Tensor)]
    if missing:
        raise SAEFileError(f"{ae_path}: a {dict_class} needs the tensors {expected}; found keys "
                           f"{sorted(map(str, state))}, missing {missing} (saved by another dict_class?)")
    _check_finite(state, ae_path)
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
            group_sizes = [int(s) for s in state["group_sizes"].flatten().tolist()]
        d_in, d_sae = _encoder_shape(tensors, ae_path)
        k = state["k"] if "k" in state else trainer.get("k")
        if k is None:
            raise SAEFileError(f"{ae_path}: a {dict_class} needs its k, as 'k' in ae.pt or trainer.k in {config_path.name}")
        if state["threshold"].numel() != 1:
            raise SAEFileError(f"{ae_path}: a {dict_class} has one global 'threshold', found shape "
                               f"{tuple(state['threshold'].shape)}")
        try:
            config = MatryoshkaConfig(d_in, d_sae, int(k), group_sizes=group_sizes, **meta)
        except ValueError as error:  # k or group_sizes that do not fit d_sae
            raise SAEFileError(f"{ae_path}: {error}") from error
        sae = MatryoshkaBatchTopKSAE(config)
        _load_weights(sae, tensors, ae_path)
        sae.threshold.fill_(float(state["threshold"]))
        return sae.to(device)

    if dict_class == "AutoEncoder":  # ReLU(encoder(x - bias)), decoder(f) + bias
        tensors = {
            "W_enc": state["encoder.weight"].T,
            "b_enc": state["encoder.bias"],
            "W_dec": state["decoder.weight"].T,
            "b_dec": state["bias"],
        }
        sae = InferenceSAE(*_encoder_shape(tensors, ae_path), apply_b_dec_to_input=True, architecture="standard")
    else:  # JumpReluAutoEncoder: x @ W_enc + b_enc, no b_dec subtraction by default
        tensors = {name: state[name] for name in ("W_enc", "b_enc", "W_dec", "b_dec")}
        sae = InferenceSAE(*_encoder_shape(tensors, ae_path), apply_b_dec_to_input=False, architecture="jumprelu")
        _copy_threshold(sae, state["threshold"], ae_path)
    _load_weights(sae, tensors, ae_path)
    return sae.to(device)


def _hook_name(trainer: dict[str, Any]) -> str:
    """dictionary_learning records a layer index; its SAEs read that layer's output, which is
    the residual stream after the block."""
    layer = trainer.get("layer")
    return f"blocks.{layer}.hook_resid_post" if layer is not None else ""
