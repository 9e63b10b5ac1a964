"""Writing outputs whole or not at all (rda_ext.io.atomic), by both ways of writing: an unnamed
O_TMPFILE file where the system allows it, else a named temporary file beside the target.

- A new or replaced output has the mode the umask gives, also where /proc cannot be read.
- An exception while writing leaves the old file as it was and no temporary file; signals wait
  until the renames are done.
- The temporary files of dead processes are removed, those of live processes kept, and so is a
  symlink named like one; asking whether a process lives sends it no signal.
- Whether an unnamed file can be given a name is probed once per file system; a named temporary
  file lies beside its target, and an unnamed file that cannot be linked is copied to a named one.
- A folder, a read-only file or a folder without write access is refused as an output, each with
  its own message."""

import os
import signal
import stat
import subprocess
import sys
import time

import numpy as np
import pytest
from helpers import temps

from rda_ext.io import atomic
from rda_ext.io.atomic import atomic_write, save_npz


@pytest.fixture(params=["unnamed", "named"])
def write_path(request, monkeypatch):
    """Both ways of writing: O_TMPFILE where the system allows it, and the named fallback."""
    if request.param == "named":
        monkeypatch.setattr(atomic, "_open_unnamed", lambda directory: None)
    return request.param


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_mode_follows_umask(tmp_path, write_path, umask, mode):
    old = os.umask(umask)
    try:
        save_npz(tmp_path / "new.npz", a=np.zeros(3))
        (tmp_path / "old.npz").write_bytes(b"old")
        os.chmod(tmp_path / "old.npz", 0o600)
        save_npz(tmp_path / "old.npz", a=np.ones(3))
    finally:
        os.umask(old)
    for name in ("new.npz", "old.npz"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == mode, name
    assert np.load(tmp_path / "old.npz")["a"].tolist() == [1, 1, 1]
    assert not temps(tmp_path)


def test_umask_without_proc(monkeypatch):
    from rda_ext.io import atomic

    def no_proc(*args, **kwargs):
        raise OSError("no /proc")

    mask = os.umask(0o027)
    try:
        monkeypatch.setattr(atomic, "open", no_proc, raising=False)
        monkeypatch.setattr(atomic, "_umask_cache", [])
        assert atomic._umask() == 0o027 and atomic._umask_cache == [0o027]
        assert os.umask(0o027) == 0o027  # set back as it was
        assert atomic._umask() == 0o027  # from the cache
    finally:
        os.umask(mask)


def test_exception_while_writing_leaves_nothing(tmp_path, write_path):
    (tmp_path / "r.npz").write_bytes(b"old")

    def fail(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "r.npz", fail)
    assert (tmp_path / "r.npz").read_bytes() == b"old" and not temps(tmp_path)


def test_signals_wait_until_the_renames_are_done():
    from rda_ext.io.atomic import signals_held

    got = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: got.append(signum))
    try:
        with signals_held():
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.1)
            assert got == []
        time.sleep(0.1)
        assert got == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_stale_temp_of_dead_process_is_removed(tmp_path, write_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".rda-ext-tmp-{dead.pid}-0123abcd").write_bytes(b"stale")
    (tmp_path / ".rda-ext-tmp-1-0123abcd").write_bytes(b"pid 1 runs: not ours to remove")
    (tmp_path / "unrelated").write_bytes(b"x")
    save_npz(tmp_path / "r.npz", a=np.zeros(2))
    assert temps(tmp_path) == [".rda-ext-tmp-1-0123abcd"]
    assert (tmp_path / "unrelated").exists()


def test_pid_alive_asks_without_signalling(tmp_path):
    from rda_ext.io.atomic import _pid_alive

    # Every signal at its default action (a parent such as nohup may have set SIGHUP to ignored,
    # which a child inherits): any signal but 0 would then end the child.
    child = subprocess.Popen([sys.executable, "-c", "import signal, time\n"
                              "for s in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):\n"
                              "    signal.signal(s, signal.SIG_DFL)\n"
                              "time.sleep(60)"])
    try:
        assert _pid_alive(child.pid)
        time.sleep(0.2)
        assert child.poll() is None  # still running: signal 0 only asks
    finally:
        child.kill()
        child.wait()
    assert not _pid_alive(child.pid)
    assert _pid_alive(2**70)  # an odd number: its file is kept


def test_a_symlink_named_like_a_stale_temporary_is_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    link = tmp_path / f".rda-ext-tmp-{dead.pid}-abcdef"
    link.symlink_to(target)
    atomic_write(tmp_path / "r.bin", lambda f: f.write(b"x"))
    assert link.is_symlink() and target.read_bytes() == b"keep"


def test_the_unnamed_file_probe(tmp_path, monkeypatch):
    """_open_unnamed tries once per file system whether an O_TMPFILE file can be given a name, and
    remembers it; where it can, it returns such a file (closed on exec), else None."""
    from rda_ext.io import atomic

    monkeypatch.setattr(atomic, "_links_unnamed", {})
    probe = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR, 0o666)
    try:
        os.link(f"/proc/self/fd/{probe}", tmp_path / "probe")
        linkable = True
    except OSError:
        linkable = False
    finally:
        os.close(probe)
    fd = atomic._open_unnamed(str(tmp_path))
    assert atomic._links_unnamed == {os.stat(tmp_path).st_dev: linkable}
    assert (fd is not None) == linkable
    if fd is not None:
        assert not os.get_inheritable(fd)
        os.close(fd)
    assert sorted(os.listdir(tmp_path)) == (["probe"] if linkable else [])


def test_a_temporary_file_is_named_beside_its_target(tmp_path, monkeypatch):
    from rda_ext.io import atomic

    monkeypatch.setattr(atomic, "_open_unnamed", lambda directory: None)  # the named way
    seen = []

    def write(f):
        seen.extend(os.listdir(tmp_path))
        f.write(b"data")

    atomic_write(tmp_path / "r.bin", write)
    (name,) = seen
    prefix = f".rda-ext-tmp-{os.getpid()}-"
    assert name.startswith(prefix) and len(name) == len(prefix) + 12 and int(name[len(prefix):], 16) >= 0
    assert os.listdir(tmp_path) == ["r.bin"] and (tmp_path / "r.bin").read_bytes() == b"data"


def test_an_unnamed_file_that_cannot_be_linked_is_copied(tmp_path, monkeypatch):
    """Where linking the unnamed file is refused after all, its data go to a named file."""
    from rda_ext.io import atomic

    fake = tmp_path / "unnamed"
    monkeypatch.setattr(atomic, "_open_unnamed", lambda directory: os.open(fake, os.O_RDWR | os.O_CREAT, 0o600))
    real_link = os.link

    def refuse(src, dst, *args, **kwargs):
        if str(src).startswith("/proc/self/fd/"):
            raise OSError(18, "Invalid cross-device link")
        return real_link(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "link", refuse)
    payload = os.urandom(100_000)
    atomic_write(tmp_path / "r.bin", lambda f: f.write(payload))
    assert (tmp_path / "r.bin").read_bytes() == payload
    assert sorted(os.listdir(tmp_path)) == ["r.bin", "unnamed"]


def test_where_an_output_cannot_go(tmp_path, monkeypatch):
    from rda_ext.io import atomic

    (tmp_path / "sub").mkdir()
    with pytest.raises(IsADirectoryError) as e:
        atomic.check_writable(tmp_path / "sub")
    assert str(e.value) == f"{tmp_path / 'sub'} is a folder"
    rx = tmp_path / "rx.npz"
    rx.write_bytes(b"")
    rx.chmod(0o555)  # no write bit (execute bits do not make it writable)
    with pytest.raises(PermissionError) as e:
        atomic.check_writable(rx)
    assert str(e.value) == f"{rx}: the file exists and is read-only (mode -r-xr-xr-x); make it writable or remove it to replace it"
    monkeypatch.setattr(atomic.os, "access", lambda path, mode: False)  # as a user without write access
    with pytest.raises(PermissionError) as e:
        atomic.check_writable(tmp_path / "new.npz")
    assert str(e.value) == f"{tmp_path / 'new.npz'}: the folder {tmp_path} is not writable"


def test_what_is_under_an_outputs_name_is_said_in_words(tmp_path):
    kinds = [(stat.S_IFIFO, "a FIFO"), (stat.S_IFCHR, "a character device"), (stat.S_IFBLK, "a block device"),
             (stat.S_IFSOCK, "a socket"), (stat.S_IFDIR, "a folder"), (stat.S_IFREG, "a regular file"),
             (stat.S_IFLNK, "not a regular file")]
    assert [atomic.kind_of(kind | 0o644) for kind, _ in kinds] == [words for _, words in kinds]
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    # Renaming over it would replace it: refused, with the name the caller gave the path.
    with pytest.raises(FileExistsError) as e:
        atomic.check_writable(fifo, "--out")
    assert str(e.value) == f"--out {fifo} exists and is a FIFO, not a regular file: only a regular file is replaced"
    with pytest.raises(FileExistsError) as e:
        atomic.check_writable(fifo)
    assert str(e.value) == f"{fifo} exists and is a FIFO, not a regular file: only a regular file is replaced"


def test_without_unnamed_files_the_named_way_writes(tmp_path, monkeypatch):
    monkeypatch.delattr(os, "O_TMPFILE", raising=False)  # a system without them
    assert atomic._open_unnamed(str(tmp_path)) is None
    save_npz(tmp_path / "r.npz", a=np.arange(3))
    assert np.load(tmp_path / "r.npz")["a"].tolist() == [0, 1, 2] and not temps(tmp_path)
