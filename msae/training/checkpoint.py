"""Training checkpoints: written atomically, checked on load.

A checkpoint is one ``torch.save`` file holding everything needed to continue a run exactly:
the SAE's parameters and buffers, the optimizer state, the data stream's position, the input
scale, the step and the run's config (to refuse a checkpoint of a different run).

A run folder is locked while a run trains in it (:func:`run_folder_lock`), so that a second
process cannot write a different run into it at the same time.
"""

from __future__ import annotations

import functools
import inspect
import json
import os
import socket
import warnings
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from ..files import atomic_write, json_default, remove_stale_temp_files

try:
    import fcntl
except ImportError:  # Windows: run folders are not locked there
    fcntl = None

FORMAT = "msae-checkpoint-1"
LOCK_FILE = ".msae-lock"
# subfolders of a run folder that msae writes (the exported SAE), cleared of stale temp files too
RUN_SUBFOLDERS = ("sae",)


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: corrupt, of another format, or of another run."""


class RunFolderLocked(RuntimeError):
    """A run folder another live process is training in."""


@contextmanager
def run_folder_lock(folder: Path) -> Iterator[None]:
    """Hold ``folder``'s lock (creating the folder) for the ``with`` block, or raise
    :class:`RunFolderLocked` naming the process that holds it. Once held, the temp files a
    killed earlier writer left in the folder are deleted: no one else can be writing them.

    The lock is an ``flock`` on the file ``.msae-lock``: the system releases it when its
    process ends, however it ends, so a lock file left by a dead process does not block."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    try:
        fd, writable = os.open(path, os.O_RDWR | os.O_CREAT, 0o666), True
    except PermissionError:  # another user's lock file in a shared folder: flock needs no write access
        fd, writable = os.open(path, os.O_RDONLY), False
    try:
        if fcntl is not None and not _flock(fd, path):
            raise RunFolderLocked(
                f"run folder {folder} is in use by {_holder(path)}; wait for that run to end, "
                "or train in another folder"
            )
        if writable:  # who holds it, for the message another writer gets
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        for stale in (folder, *(folder / sub for sub in RUN_SUBFOLDERS)):
            remove_stale_temp_files(stale)
        yield
    finally:
        if writable:  # the next holder writes its own name; until then, name no one
            try:
                os.ftruncate(fd, 0)
            except OSError:
                pass
        os.close(fd)  # releases the lock


def _flock(fd: int, path: Path) -> bool:
    """Take the lock without waiting; False if another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:  # e.g. ENOLCK: an NFS mount without a lock service
        warnings.warn(f"cannot lock {path} ({error}); training there unlocked", RuntimeWarning, stacklevel=4)
    return True


def _holder(path: Path) -> str:
    try:
        holder = path.read_text().strip()
    except OSError:
        holder = ""
    return holder or "another process (which has not written its pid yet)"


def holding_run_folders(train_many: Callable) -> Callable:
    """Decorate ``train_many`` so that each call holds the lock of every folder in its
    ``run_dirs`` argument (see :func:`run_folder_lock`) from start to end, exceptions and
    Ctrl-C included."""
    signature = inspect.signature(train_many)

    @functools.wraps(train_many)
    def locked(*args, **kwargs):
        run_dirs = signature.bind(*args, **kwargs).arguments.get("run_dirs") or {}
        owners: dict[Path, tuple[str, Path]] = {}  # resolved folder -> the SAE and the folder as given
        for name, folder in run_dirs.items():
            if folder is None:
                continue
            key = Path(folder).resolve()
            if key in owners:  # two SAEs in one folder would overwrite each other's files
                raise ValueError(f"SAEs {owners[key][0]!r} and {name!r} are given the same run folder {folder}")
            owners[key] = name, Path(folder)
        with ExitStack() as stack:
            for _, folder in owners.values():
                stack.enter_context(run_folder_lock(folder))
            return train_many(*args, **kwargs)

    return locked


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
