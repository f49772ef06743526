"""Files written atomically: a crash leaves the old file or the new one, never half of one."""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

try:
    import fcntl
except ImportError:  # Windows: nothing is locked there
    fcntl = None

# The name atomic_write gives its temporary files: ".<name>.<8 characters>.tmp". Eight of
# [a-z0-9_] also covers the names tempfile.mkstemp gave them in earlier versions of msae.
_TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
# errnos that mean the disk (or the user's quota on it) is full
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
# below this many free bytes, a write torch reports without an errno is taken as a full disk
_NEARLY_FULL_BYTES = 1 << 20


def atomic_write(path: Path, write) -> None:
    """Call ``write(file)`` on a temporary file beside ``path``, then rename it over ``path``,
    so a crash leaves either the old file or the new one, never half of one.

    The file gets the mode a plain ``open(path, "wb")`` would give it (0o666 less the umask).
    A full disk raises ``OSError(ENOSPC)`` naming ``path``; the previous file is then kept."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = _create_temp(path)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as error:
        full = _is_disk_full(error, path.parent)  # asked while the temp file still takes its space
        tmp.unlink(missing_ok=True)
        if full:
            kept = f"the previous {path.name} is kept" if path.exists() else "nothing was written"
            raise OSError(errno.ENOSPC, f"no space left on device (disk or quota full): could not write {path} "
                                        f"({kept}); free some space and run again") from error
        raise
    _fsync_directory(path.parent)


def _create_temp(path: Path) -> tuple[int, Path]:
    # Not tempfile.mkstemp: it creates its files 0600 whatever the umask, which made shared
    # runs folders and exported SAEs unreadable by others. Asking os.open for 0o666 lets the
    # kernel apply the umask (and a folder's default ACL) exactly as for a plain open(), with
    # no need to read the umask: os.umask can only be read by setting it, which races with
    # files other threads create meanwhile.
    for _ in range(100):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, f"no free temporary name for {path}")


def _is_disk_full(error: BaseException, folder: Path) -> bool:
    seen = set()
    cause = error
    while cause is not None and id(cause) not in seen:  # a full disk may be the cause of another error
        seen.add(id(cause))
        if isinstance(cause, OSError) and cause.errno in _DISK_FULL:
            return True
        cause = cause.__cause__ or cause.__context__
    # torch.save reports a failed write of its file as its own RuntimeError from
    # inline_container.cc ("unexpected pos", "file write failed"). The OSError behind it is its
    # __context__ in the torch versions seen so far, but nothing promises that: ask the disk.
    if isinstance(error, RuntimeError) and any(word in str(error) for word in ("inline_container", "write")):
        try:
            stats = os.statvfs(folder)
        except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
            return False
        return stats.f_bavail * stats.f_frsize < _NEARLY_FULL_BYTES
    return False


def _fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable: without this a power cut can undo it, leaving the
    old file (or none) even though atomic_write returned."""
    if os.name != "posix":  # Windows cannot open a folder to sync it
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):  # file systems that cannot sync a folder
            raise
    finally:
        os.close(fd)


def remove_stale_temp_files(folder: Path) -> list[Path]:
    """Delete the temporary files atomic_write leaves in ``folder`` (not its subfolders) when
    its process is killed mid-write; return them. Call it only while no other process writes
    to ``folder``: a write in progress has a temporary file of the same form."""
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return []
    removed = []
    for entry in entries:
        if _TEMP_NAME.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(Path(entry.path))
    return removed


def write_json(path: Path, data: Any, indent: int | None = 2) -> None:
    """``data`` as JSON, written atomically; ``indent=None`` writes it compact (large caches)."""
    separators = None if indent is not None else (",", ":")
    atomic_write(path, lambda f: f.write((json.dumps(data, indent=indent, separators=separators, default=json_default)
                                          + "\n").encode()))


@contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the file ``path`` (created, with its folder) for the block,
    waiting while another process holds it. For what several processes (two notebooks open at
    once, make's parallel lanes) may do to one place: a read-modify-write of a shared file, or
    building a cache that the others should wait for rather than build again."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError as error:
                if error.errno != errno.ENOLCK:  # a file system without locks (some NFS): go on unlocked
                    raise
        yield
    finally:
        os.close(fd)  # releases the lock


def update_json(path: Path, update: Callable[[Any], Any], missing: Any = None) -> Any:
    """Rewrite the JSON file ``path`` as ``update(its content)`` (``missing`` when there is no
    file yet), atomically and under :func:`waiting_lock`, so that processes updating one file at
    once do not lose each other's entries; return what was written."""
    path = Path(path)
    with waiting_lock(path.parent / f".{path.name}.lock"):
        data = update(json.loads(path.read_text()) if path.is_file() else missing)
        write_json(path, data)
    return data


def json_default(value: Any) -> Any:
    if isinstance(value, (tuple, set)):
        return list(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
