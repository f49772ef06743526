"""Check that SAELens itself loads the SAEs msae saves and computes the same outputs.

Run by `make interop`, in a separate virtualenv that has sae-lens installed beside msae (its
dependency pins are not part of msae's environment).
"""

import tempfile
from pathlib import Path

import torch
from sae_lens import SAE

import msae
from msae.saes.l1 import L1SAE, L1Config
from msae.saes.matryoshka import MatryoshkaBatchTopKSAE
from msae.saes.registry import ARCHITECTURES, build_sae

# SAELens's Gated SAE multiplies W_enc by exp(r_mag) before the product, ours after it: the same
# map, rounded differently, so float32 outputs of size ~10 may differ in the last few bits.
TOLERANCE = {"gated": 1e-5}


def randomised(sae, generator):
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    return sae


def main():
    generator = torch.Generator().manual_seed(0)
    saes = {}
    for name in ARCHITECTURES:  # every architecture of Table 1
        sae = randomised(build_sae(name, d_in=16, d_sae=40, l0=4, steps=100, model_name="m",
                                   hook_name="blocks.3.hook_resid_post"), generator)
        if isinstance(sae, MatryoshkaBatchTopKSAE):
            sae.threshold.fill_(0.25)  # (Matryoshka) BatchTopK: the global inference threshold
        saes[name] = sae
    saes["l1 (toy)"] = randomised(L1SAE(L1Config(d_in=16, d_sae=20)), generator)
    x = torch.randn(64, 16, generator=generator)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, sae in saes.items():
            path = msae.save_sae(sae, Path(tmp) / name.replace(" ", "_"))
            loaded = SAE.load_from_disk(str(path))
            with torch.no_grad():
                acts_error = (loaded.encode(x) - sae.encode(x)).abs().max().item()
                out_error = (loaded(x) - sae(x)).abs().max().item()
                active = (loaded.encode(x) > 0).float().sum(-1).mean().item()
            ok = max(acts_error, out_error) <= TOLERANCE.get(name, 0.0)
            failures += not ok
            print(f"{name}: SAELens {type(loaded).__name__}, mean L0 {active:.1f}, max |acts diff| {acts_error:.3g}, "
                  f"max |output diff| {out_error:.3g}: {'ok' if ok else 'MISMATCH'}")
    raise SystemExit(failures)


if __name__ == "__main__":
    main()
