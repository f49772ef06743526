"""Training checkpoints: written atomically, checked on load.

A checkpoint is one ``torch.save`` file holding everything needed to continue a run exactly:
the SAE's parameters and buffers, the optimizer state, the data stream's position, the input
scale, the step and the run's config (to refuse a checkpoint of a different run).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write, json_default

FORMAT = "msae-checkpoint-1"


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, of another format, or of another run."""


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    atomic_write(path, lambda f: torch.save({"format": FORMAT, **state}, f))


def load_checkpoint(path: Path, expected_config: dict[str, Any] | None = None) -> dict[str, Any]:
    """Load a checkpoint; raise :class:`CheckpointError` saying why it cannot be used."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises several types for truncated or foreign files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or unreadable ({type(error).__name__}: {error}); "
            "delete it to start the run afresh"
        ) from error
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an msae checkpoint (expected format {FORMAT!r})")
    if expected_config is not None:
        saved = json.loads(json.dumps(state.get("config"), default=json_default))
        expected = json.loads(json.dumps(expected_config, default=json_default))
        if not _same_config(saved, expected):
            raise CheckpointError(
                f"checkpoint {path} belongs to a different run: {_describe_difference(saved, expected)}; "
                "use another run folder, or delete the checkpoint to start afresh"
            )
    return state


def _same_config(saved: Any, expected: Any) -> bool:
    """Equal configs, where a missing key counts: an option added to msae later, left
    unset (None), matches a checkpoint written before the option existed."""
    if isinstance(saved, dict) and isinstance(expected, dict):
        return all(_same_config(saved.get(key), expected.get(key)) for key in set(saved) | set(expected))
    return saved == expected


def _describe_difference(saved: Any, expected: Any, prefix: str = "") -> str:
    if isinstance(saved, dict) and isinstance(expected, dict):
        for key in sorted(set(saved) | set(expected)):
            if not _same_config(saved.get(key), expected.get(key)):
                return _describe_difference(saved.get(key), expected.get(key), f"{prefix}{key}.")
    return f"{prefix.rstrip('.') or 'config'} is {saved!r} in the checkpoint but {expected!r} now"
