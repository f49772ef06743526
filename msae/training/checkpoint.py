"""Training checkpoints: written atomically, checked on load.

A checkpoint is one ``torch.save`` file holding everything needed to continue a run exactly:
the SAE's parameters and buffers, the optimizer state, the data stream's position, the input
scale, the step and the run's config (to refuse a checkpoint of a different run).

A run folder is locked (:class:`RunFolderLock`): exclusively while a run trains in it, so that a
second process cannot write into it at the same time; shared while finished runs are only read.
"""

from __future__ import annotations

import json
import os
import socket
import warnings
from collections.abc import Iterable, Iterator
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


class RunFolderLock:
    """The lock of one run folder: an ``flock`` on its file ``.msae-lock``, which the system
    releases when the process ends, however it ends (a lock file left by a dead process does not
    block). Shared while a process only reads a finished run, so that any number of notebooks can
    load one sweep at once; exclusive while one trains (writes) in it. Neither waits: a process
    that cannot have the lock gets :class:`RunFolderLocked` naming the process that holds it."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / LOCK_FILE
        self.exclusive = False
        try:
            self._fd, self._writable = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666), True
        except PermissionError:  # another user's lock file in a shared folder: flock needs no write access
            self._fd, self._writable = os.open(self.path, os.O_RDONLY), False

    def acquire(self, exclusive: bool) -> None:
        """Take the lock (shared or exclusive) without waiting, then delete the temp files a killed
        earlier writer left: while we hold it, no one else can be writing them."""
        if fcntl is not None and not _flock(self._fd, self.path, exclusive):
            # (a refused upgrade from shared leaves no lock at all: see flock(2); we raise anyway)
            raise RunFolderLocked(
                f"run folder {self.folder} is in use by {_holder(self.path)}; wait for that process to end, "
                "or use another folder"
            )
        self.exclusive = exclusive
        if exclusive and self._writable:  # who holds it, for the message another process gets
            os.ftruncate(self._fd, 0)
            os.pwrite(self._fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        for stale in (self.folder, *(self.folder / sub for sub in RUN_SUBFOLDERS)):
            remove_stale_temp_files(stale)

    def release(self) -> None:
        if self.exclusive and self._writable:  # the next writer writes its own name; until then, name no one
            try:
                os.ftruncate(self._fd, 0)
            except OSError:
                pass
        os.close(self._fd)  # releases the lock


@contextmanager
def run_folder_lock(folder: Path, exclusive: bool = True) -> Iterator[RunFolderLock]:
    """Hold ``folder``'s lock (creating the folder) for the ``with`` block: exclusive to write
    a run there, shared to read a finished one (see :class:`RunFolderLock`)."""
    lock = RunFolderLock(folder)
    try:
        lock.acquire(exclusive)
        yield lock
    finally:
        lock.release()


def _flock(fd: int, path: Path, exclusive: bool = True) -> bool:
    """Take the lock without waiting; False if another process holds it."""
    try:
        fcntl.flock(fd, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as error:  # e.g. ENOLCK: an NFS mount without a lock service
        warnings.warn(f"cannot lock {path} ({error}); working there unlocked", RuntimeWarning, stacklevel=4)
    return True


def _holder(path: Path) -> str:
    try:
        holder = path.read_text().strip()
    except OSError:
        holder = ""
    return holder or "another process (one reading it, or one that has not written its pid yet)"


class RunFolderLocks:
    """The locks of several run folders, held shared; :meth:`for_writing` makes some exclusive."""

    def __init__(self, locks: dict[Path, RunFolderLock]):
        self._locks = locks

    def for_writing(self, folders: Iterable[str | Path | None]) -> None:
        """Make the locks of ``folders`` exclusive (raise :class:`RunFolderLocked` if another
        process reads or writes one). The reads done under the shared lock stay valid: no one can
        write while we hold it, and flock's conversion is immediate or refused."""
        for folder in folders:
            if folder is not None:
                lock = self._locks[Path(folder).resolve()]
                if not lock.exclusive:
                    lock.acquire(exclusive=True)


@contextmanager
def holding_run_folders(run_dirs: dict[str, str | Path | None]) -> Iterator[RunFolderLocks]:
    """Hold the lock of every folder in ``run_dirs`` (``{SAE name: folder or None}``), shared,
    for the ``with`` block, exceptions and Ctrl-C included; refuse two SAEs given one folder."""
    owners: dict[Path, tuple[str, Path]] = {}  # resolved folder -> the SAE and the folder as given
    for name, folder in run_dirs.items():
        if folder is None:
            continue
        key = Path(folder).resolve()
        if key in owners:  # two SAEs in one folder would overwrite each other's files
            raise ValueError(f"SAEs {owners[key][0]!r} and {name!r} are given the same run folder {folder}")
        owners[key] = name, Path(folder)
    with ExitStack() as stack:
        locks = {key: stack.enter_context(run_folder_lock(folder, exclusive=False))
                 for key, (_, folder) in owners.items()}
        yield RunFolderLocks(locks)


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
