"""What msae writes survives interruption and full disks, is readable in shared folders, and a
run folder has one writer at a time."""

import errno
import fcntl
import json
import os
import re
import socket
import stat
import subprocess
import sys
import textwrap

import pytest
import torch

from msae.files import atomic_write, write_json
from msae.saes.l1 import L1SAE, L1Config
from msae.training.checkpoint import LOCK_FILE, RunFolderLocked, load_checkpoint
from msae.training.loop import NonFiniteError, TrainConfig, train, train_many
from test_train import Data, call_of_step

STEPS = 20


def sae(seed):
    return L1SAE(L1Config(d_in=32, d_sae=16, target_l0=1.1, n_prefixes=4, seed=seed))


def config(**overrides):
    return TrainConfig(**{**dict(steps=STEPS, lr=3e-3, warmup_steps=3, checkpoint_every=10, log_every=5,
                                 normalization_batches=2), **overrides})


def temp_files(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


@pytest.fixture
def umask():
    """Set the process's umask for one test, restoring it after."""
    previous = os.umask(0o022)
    yield os.umask
    os.umask(previous)


# --- 1. file modes follow the umask -------------------------------------------------------------

@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)], ids=["022", "077", "002"])
def test_written_files_get_the_mode_a_plain_open_gives(tmp_path, umask, mask, mode):
    umask(mask)
    atomic_write(tmp_path / "a.bin", lambda f: f.write(b"x"))
    (tmp_path / "plain.bin").write_bytes(b"x")
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == stat.S_IMODE((tmp_path / "plain.bin").stat().st_mode)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == mode


def test_run_folder_and_exported_sae_are_readable_by_others(tmp_path, umask, seed):
    umask(0o022)
    train(sae(seed), Data(seed), config(), tmp_path / "run", progress=False)
    modes = {p.relative_to(tmp_path / "run").as_posix(): oct(stat.S_IMODE(p.stat().st_mode))
             for p in (tmp_path / "run").rglob("*") if p.is_file()}
    assert set(modes) >= {"checkpoint.pt", "config.json", "history.json", "sae/cfg.json", "sae/sae_weights.safetensors"}
    assert modes == dict.fromkeys(modes, "0o644")


# --- 2. temp files of a killed write, and the rename's durability ------------------------------

def test_rename_is_followed_by_a_sync_of_the_folder(tmp_path, monkeypatch):
    calls = []
    real_replace, real_fsync = os.replace, os.fsync

    def replace(*args):
        calls.append("replace")
        real_replace(*args)

    def fsync(fd):
        calls.append("fsync folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "fsync file")
        real_fsync(fd)

    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "fsync", fsync)
    write_json(tmp_path / "x.json", {"a": 1})
    assert calls == ["fsync file", "replace", "fsync folder"]


HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from msae.files import atomic_write
    from msae.training.checkpoint import run_folder_lock

    folder = Path(sys.argv[1])

    def write(f):  # a checkpoint write that is killed halfway
        f.write(b"half a checkpoint")
        f.flush()
        print("writing", flush=True)
        time.sleep(120)

    with run_folder_lock(folder):
        atomic_write(folder / "checkpoint.pt", write)
""")


def test_second_writer_is_refused_and_a_killed_writer_leaves_nothing_behind(tmp_path, seed):
    folder = tmp_path / "run"
    (folder / "sae").mkdir(parents=True)
    # a temp file of an earlier killed export, and files that are not msae's temp files
    (folder / "sae" / ".sae_weights.safetensors.k_3x9zq1.tmp").write_bytes(b"old")
    for name in ("notes.tmp", ".keep", "x.checkpoint.pt.abcd1234.tmp"):
        (folder / name).write_bytes(b"mine")
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "writing\n"
        [partial] = [name for name in temp_files(folder) if name.startswith(".checkpoint.pt.")]

        with pytest.raises(RunFolderLocked) as refused:
            train(sae(seed), Data(seed), config(), folder, progress=False)
        assert str(folder) in str(refused.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in str(refused.value)
        assert partial in temp_files(folder)  # the live writer's temp file is left alone
        assert not (folder / "config.json").exists()
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()

    assert (folder / LOCK_FILE).exists() and partial in temp_files(folder)  # as a kill leaves them
    result = train(sae(seed), Data(seed), config(), folder, progress=False)  # the dead holder blocks nothing
    assert result.resumed_from is None and load_checkpoint(folder / "checkpoint.pt")["finished"]
    assert temp_files(folder) == ["notes.tmp", "x.checkpoint.pt.abcd1234.tmp"]
    assert temp_files(folder / "sae") == []
    assert (folder / ".keep").exists()


# --- 3. the lock is released however train ends --------------------------------------------------

def lock_is_free(folder):
    with open(folder / LOCK_FILE, "rb") as f:  # another open file: flock conflicts within one process too
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def test_lock_is_held_during_train_and_released_on_interrupt_and_error(tmp_path, seed):
    class Probe(Data):
        def next_batch(self):
            self.held = getattr(self, "held", []) + [not lock_is_free(tmp_path)]
            return super().next_batch()

    probe = Probe(seed, interrupt_at=call_of_step(4))
    with pytest.raises(KeyboardInterrupt):
        train(sae(seed), probe, config(), tmp_path, progress=False)
    assert probe.held and all(probe.held)
    assert lock_is_free(tmp_path) and (tmp_path / LOCK_FILE).read_text() == ""

    with pytest.raises(NonFiniteError, match="step 7 contains NaN"):  # resumed at step 5: no scale batches
        train(sae(seed), Data(seed, nan_at=3), config(), tmp_path, progress=False)
    assert lock_is_free(tmp_path)
    assert train(sae(seed), Data(seed), config(), tmp_path, progress=False).resumed_from == 7


def test_two_saes_given_one_run_folder_are_refused(tmp_path, seed):
    with pytest.raises(ValueError, match="same run folder"):
        train_many({"a": sae(seed), "b": sae(seed + 1)}, Data(seed), config(),
                   {"a": tmp_path / "x", "b": tmp_path / "y" / ".." / "x"}, progress=False)


READER = textwrap.dedent("""
    import sys, time
    from msae.training.checkpoint import run_folder_lock

    with run_folder_lock(sys.argv[1], exclusive=False):  # a notebook that has loaded a finished run
        print("reading", flush=True)
        time.sleep(120)
""")


def test_finished_runs_are_read_side_by_side_but_not_written_while_read(tmp_path, seed):
    folder = tmp_path / "run"
    finished = train(sae(seed), Data(seed), config(), folder, progress=False)
    before = (folder / "checkpoint.pt").read_bytes()
    reader = subprocess.Popen([sys.executable, "-c", READER, str(folder)], stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout.readline() == "reading\n"
        again = train(sae(seed), Data(seed), config(), folder, progress=False)  # a second reader: loads it
        assert torch.equal(again.sae.W_dec, finished.sae.W_dec) and not torch.equal(again.sae.W_dec, sae(seed).W_dec)
        with pytest.raises(RunFolderLocked, match="one reading it"):  # extending it would write
            train(sae(seed), Data(seed), config(steps=STEPS + 5), folder, progress=False)
        assert (folder / "checkpoint.pt").read_bytes() == before
    finally:
        reader.kill()
        reader.wait()
        reader.stdout.close()
    assert train(sae(seed), Data(seed), config(steps=STEPS + 5), folder, progress=False).resumed_from == STEPS


WRITER = textwrap.dedent("""
    import sys
    from msae.files import update_json

    for i in range(40):
        update_json(sys.argv[1], lambda saved: {**saved, f"{sys.argv[2]}-{i}": i}, {})
""")


def test_processes_updating_one_json_file_keep_each_others_entries(tmp_path):
    path = tmp_path / "results.json"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), name]) for name in "abc"]
    assert [w.wait(timeout=120) for w in writers] == [0, 0, 0]
    assert json.loads(path.read_text()) == {f"{name}-{i}": i for name in "abc" for i in range(40)}
    assert temp_files(tmp_path) == []


# --- 4. a full disk ------------------------------------------------------------------------------

class FullDisk:
    """A file whose disk fills after ``room`` bytes."""

    def __init__(self, file, room):
        self.file, self.room = file, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self.room -= len(data)
        return self.file.write(data)

    def __getattr__(self, name):
        return getattr(self.file, name)


@pytest.mark.parametrize("room", [0, 300, 5000])
def test_full_disk_during_a_checkpoint_is_reported_and_keeps_the_last_one(tmp_path, seed, monkeypatch, room):
    with pytest.raises(KeyboardInterrupt):
        train(sae(seed), Data(seed, interrupt_at=call_of_step(6)), config(), tmp_path, progress=False)
    good = (tmp_path / "checkpoint.pt").read_bytes()

    real_save = torch.save
    raised = []

    def save(obj, f, *args, **kwargs):  # the real torch.save, on a disk that fills up
        try:
            return real_save(obj, FullDisk(f, room), *args, **kwargs)
        except BaseException as error:
            raised.append(error)
            raise

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(OSError, match="no space left on device") as full:
        train(sae(seed), Data(seed), config(), tmp_path, progress=False)
    assert full.value.errno == errno.ENOSPC
    assert str(tmp_path / "checkpoint.pt") in str(full.value) and "previous checkpoint.pt is kept" in str(full.value)
    if room:  # what torch itself raises when its file's write fails midway
        assert isinstance(raised[0], RuntimeError) and "inline_container" in str(raised[0])
    assert (tmp_path / "checkpoint.pt").read_bytes() == good
    assert load_checkpoint(tmp_path / "checkpoint.pt")["step"] == 7
    assert temp_files(tmp_path) == []
    assert lock_is_free(tmp_path)


def test_full_disk_on_a_plain_write_names_the_file(tmp_path):
    path = tmp_path / "history.json"
    write_json(path, [1])

    def write(f):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(OSError, match=f"no space left on device.*could not write {re.escape(str(path))}"):
        atomic_write(path, write)
    with pytest.raises(OSError, match="nothing was written"):
        atomic_write(tmp_path / "new.json", write)
    assert json.loads(path.read_text()) == [1] and temp_files(tmp_path) == []


class Free:
    def __init__(self, free_bytes):
        self.f_bavail, self.f_frsize = free_bytes // 4096, 4096


@pytest.mark.parametrize("free, full", [(0, True), (10 << 30, False)])
def test_torch_write_error_without_an_errno_asks_the_disk(tmp_path, monkeypatch, free, full):
    """A torch that dropped the OSError behind its write error: a nearly full disk still says so,
    and the same error on a disk with room is passed on as it is."""
    monkeypatch.setattr(os, "statvfs", lambda folder: Free(free))

    def write(f):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    with pytest.raises(OSError if full else RuntimeError,
                       match="no space left on device" if full else "PytorchStreamWriter failed") as raised:
        atomic_write(tmp_path / "checkpoint.pt", write)
    assert isinstance(raised.value, OSError) == full
    assert temp_files(tmp_path) == []
