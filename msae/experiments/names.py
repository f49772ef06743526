"""The names of a sweep's SAEs, and their inverse.

Every SAE of a sweep and its studies has one name, which is its folder under the sweep and its
key in ``results.json``:

- ``{architecture}_k{k}``: the main sweep and the baselines study, at the sweep's width;
  ``architecture`` is a registry name (``matryoshka``, ``batchtopk``, ``relu``, ...) or an
  ablation arm (``matryoshka_stop_gradient``, ``matryoshka_10groups``, ...);
- ``{architecture}_d{width}_k{k}``: the scaling study, at another width;
- ``batchtopk_w{width}_k{k}``: a BatchTopK SAE as wide as a prefix of the Matryoshka SAE, at the
  prefix's L0 (Fig 13).

``k`` is the SAE's target L0: its ``k`` or, for the penalty baselines, its ``target_l0``; a
``relu_fixed_k{k}`` SAE has no target (a fixed coefficient) and takes its twin ``relu_k{k}``'s.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_NAME = re.compile(r"(?P<architecture>[a-z][a-z0-9_]*?)(?:_d(?P<width>\d+)|_w(?P<prefix_width>\d+))?_k(?P<k>\d+)")


@dataclass(frozen=True)
class SAEName:
    """A parsed SAE name.

    Attributes:
        architecture: registry name or ablation arm, e.g. ``"matryoshka"``, ``"matryoshka_3groups"``.
        k: the target L0.
        width: the SAE's width when it is not the sweep's (scaling study), else None.
        prefix_width: for a prefix-matched BatchTopK SAE, the width of the prefix it matches, else None.
    """

    architecture: str
    k: int
    width: int | None = None
    prefix_width: int | None = None

    def __str__(self) -> str:
        return sae_name(self.architecture, self.k, width=self.width, prefix_width=self.prefix_width)


def sae_name(architecture: str, k: int, *, width: int | None = None, prefix_width: int | None = None) -> str:
    """The name of an SAE of a sweep; :func:`parse_sae_name` inverts it."""
    if width is not None and prefix_width is not None:
        raise ValueError("an SAE name has a width or a prefix width, not both")
    if not re.fullmatch(r"[a-z][a-z0-9_]*", architecture) or architecture.endswith("_"):
        raise ValueError(f"architecture {architecture!r} must be lower-case letters, digits and underscores")
    middle = f"_d{width}" if width is not None else f"_w{prefix_width}" if prefix_width is not None else ""
    name = f"{architecture}{middle}_k{int(k)}"
    if parse_sae_name(name) != SAEName(architecture, int(k), width, prefix_width):
        raise ValueError(f"architecture {architecture!r} makes the name {name!r} ambiguous")
    return name


def parse_sae_name(name: str) -> SAEName:
    """The parts of a name written by :func:`sae_name`; a ValueError for any other string."""
    match = _NAME.fullmatch(name)
    if match is None:
        raise ValueError(f"{name!r} is not an SAE name of a sweep ({{architecture}}[_d{{width}}|_w{{width}}]_k{{k}})")
    width, prefix_width = match["width"], match["prefix_width"]
    return SAEName(match["architecture"], int(match["k"]), int(width) if width else None,
                   int(prefix_width) if prefix_width else None)
