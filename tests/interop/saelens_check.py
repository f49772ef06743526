"""Check that SAELens itself loads the SAEs msae saves and computes the same outputs.

Run by `make interop`, in a separate virtualenv that has sae-lens installed beside msae (its
dependency pins are not part of msae's environment).
"""

import tempfile
from pathlib import Path

import torch
from sae_lens import SAE

import msae
from msae.l1_sae import L1Config, L1SAE
from msae.sae import MatryoshkaBatchTopKSAE, MatryoshkaConfig


def randomised(sae, generator):
    with torch.no_grad():
        for param in sae.parameters():
            param.copy_(0.5 * torch.randn(param.shape, generator=generator))
    return sae


def main():
    generator = torch.Generator().manual_seed(0)
    matryoshka = randomised(
        MatryoshkaBatchTopKSAE(MatryoshkaConfig(d_in=16, d_sae=40, k=4, group_sizes=[4, 12, 24],
                                                model_name="m", hook_name="blocks.3.hook_resid_post")),
        generator,
    )
    matryoshka.threshold.fill_(0.25)
    l1 = randomised(L1SAE(L1Config(d_in=16, d_sae=20)), generator)
    x = torch.randn(64, 16, generator=generator)
    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name, sae in [("matryoshka", matryoshka), ("l1", l1)]:
            path = msae.save_sae(sae, Path(tmp) / name)
            loaded = SAE.load_from_disk(str(path))
            with torch.no_grad():
                acts_error = (loaded.encode(x) - sae.encode(x)).abs().max().item()
                out_error = (loaded(x) - sae(x)).abs().max().item()
            ok = acts_error == 0 and out_error == 0
            failures += not ok
            print(f"{name}: SAELens {type(loaded).__name__}, max |acts diff| {acts_error:.3g}, "
                  f"max |output diff| {out_error:.3g}: {'ok' if ok else 'MISMATCH'}")
    raise SystemExit(failures)


if __name__ == "__main__":
    main()
