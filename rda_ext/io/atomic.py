"""Writing files whole or not at all: a reader sees the old file or the whole new one, never a
part, and a process killed while writing leaves nothing behind that the next write does not
remove. Also the checks that an output can be written, made before any work."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import threading

import numpy as np


def check_parent(name: str) -> None:
    """Fails where the folder that would hold ``name`` (a file, or a folder; a symlink's target)
    is missing or read-only."""
    directory = os.path.dirname(os.path.realpath(name))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{name}: the folder {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise PermissionError(f"{name}: the folder {directory} is not writable")


def kind_of(mode: int) -> str:
    """What a file of ``os.stat`` mode ``mode`` is, in words."""
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder"),
                       (stat.S_ISREG, "a regular file")):
        if test(mode):
            return name
    return "not a regular file"


def check_writable(path: str | os.PathLike, label: str | None = None) -> None:
    """Fails early, before a long computation, if ``path`` could not be written, or is an
    existing read-only file: like ``cp`` without ``-f``, a file without write permission is not
    replaced. (A file with no write bit at all is refused even for root, whom ``access`` lets
    write anything.) Anything else that exists under that name (a FIFO, a device such as
    /dev/null, a socket) is refused too: the file written is renamed over the name, which would
    replace it. A symlink is followed: the file it names is replaced, the link stays.
    ``label``: how the caller named the path (e.g. ``--out``), for the message."""
    name = os.fspath(path)
    check_parent(name)
    if os.path.isdir(name):
        raise IsADirectoryError(f"{name} is a folder")
    if os.path.exists(name):
        mode = os.stat(name).st_mode
        if not stat.S_ISREG(mode):
            raise FileExistsError(f"{label + ' ' if label else ''}{name} exists and is {kind_of(mode)}, not a "
                                  "regular file: only a regular file is replaced")
        if not os.access(name, os.W_OK) or not mode & 0o222:
            raise PermissionError(
                f"{name}: the file exists and is read-only (mode {stat.filemode(mode)}); "
                f"make it writable or remove it to replace it"
            )


# Temporary files are named ``.rda-ext-tmp-<pid>-<random>`` so that one left by a process that
# died (SIGKILL, power loss) can be told apart and removed by the next write to the folder.
_TMP_PREFIX = ".rda-ext-tmp-"
_umask_lock = threading.Lock()
_umask_cache: list[int] = []


def _umask() -> int:
    """The process umask, read without changing it from /proc (Linux 4.7+), else by setting and
    restoring it once (under a lock, and cached, since the two calls are not atomic)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    with _umask_lock:
        if not _umask_cache:
            mask = os.umask(0)
            os.umask(mask)
            _umask_cache.append(mask)
        return _umask_cache[0]


def is_temporary(name: str) -> bool:
    """Whether ``name`` is that of a temporary file of ``atomic_write``."""
    return name.startswith(_TMP_PREFIX)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # someone else's process (or an odd number): keep its file
    return True


def _remove_stale_temps(directory: str) -> None:
    """Removes ``.rda-ext-tmp-<pid>-*`` files of processes that no longer run."""
    try:
        entries = list(os.scandir(directory))
    except OSError:
        return
    for entry in entries:
        if not entry.name.startswith(_TMP_PREFIX):
            continue
        pid = entry.name[len(_TMP_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            try:
                if entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
            except OSError:
                pass


def _temp_name(directory: str) -> str:
    return os.path.join(directory, f"{_TMP_PREFIX}{os.getpid()}-{os.urandom(6).hex()}")


_links_unnamed: dict[int, bool] = {}  # st_dev -> whether an O_TMPFILE file can be linked there


def _open_unnamed(directory: str) -> int | None:
    """An unnamed file in ``directory`` (O_TMPFILE, Linux 3.11+ on most file systems): if the
    process dies before it is linked, nothing is left. ``None`` where it is unsupported, or where
    it cannot be given a name (some sandboxes refuse to link /proc/self/fd/N: EXDEV), which is
    tried once per file system."""
    flag = getattr(os, "O_TMPFILE", 0)
    if not flag or not os.path.isdir("/proc/self/fd"):
        return None
    try:
        dev = os.stat(directory).st_dev
        fd = os.open(directory, flag | os.O_RDWR | getattr(os, "O_CLOEXEC", 0), 0o666)  # umask applies
    except OSError:  # EOPNOTSUPP, EISDIR (old kernel), EINVAL...: the named fallback
        return None
    if dev not in _links_unnamed:
        tmp = _temp_name(directory)
        try:
            os.link(f"/proc/self/fd/{fd}", tmp)
        except OSError:
            _links_unnamed[dev] = False
        else:
            _links_unnamed[dev] = True
            os.unlink(tmp)
    if not _links_unnamed[dev]:
        os.close(fd)
        return None
    return fd


def atomic_write(path: str | os.PathLike, write) -> None:
    """Writes through ``write(file)`` to a temporary file beside ``path``, then renames it over
    ``path``: a reader sees the old file or the whole new one, never a part. The new file's mode
    is 0666 less the umask, like any new file.

    On Linux the data goes to an unnamed file (O_TMPFILE), linked under a temporary name only once
    complete and at once renamed over ``path``, so that a process killed while writing leaves
    nothing behind; elsewhere to a named temporary file ``.rda-ext-tmp-<pid>-<random>``, removed
    on any exception (including KeyboardInterrupt). A temporary file of a process that died (in
    the fallback while writing, or between the link and the rename) is removed by the next write
    to the same folder."""
    atomic_write_all([(path, write)])


def atomic_write_all(files) -> None:
    """``atomic_write`` for several ``(path, write)`` pairs, all or none: every file is complete
    under its temporary name before the first rename, so that a failed write (a full disk, an
    error while serialising, an interrupt) leaves every path as it was. SIGINT and SIGTERM wait
    until the renames are done, so that an interrupt cannot fall between two of them; a rename
    that the system refuses (which a writable folder makes all but impossible) is not undone."""
    files = [(os.fspath(path), write) for path, write in files]
    for path, _ in files:
        check_writable(path)
    files = [(os.path.realpath(path), write) for path, write in files]  # a symlink stays, its file is replaced
    staged: list[str] = []
    try:
        for path, write in files:
            staged.append(stage(path, write))
        with signals_held():
            for tmp, (path, _) in zip(staged, files):
                os.replace(tmp, path)
    except BaseException:
        for tmp in staged:  # those already renamed are gone from their temporary names
            unlink_quietly(tmp)
        raise


@contextlib.contextmanager
def signals_held():
    """SIGINT and SIGTERM that arrive in the block are delivered after it. (A signal mask would
    not do: the kernel hands a process's signal to any thread that does not block it, such as
    torch's workers, and Python runs its handler in the main thread at once.)"""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can be set only from the main thread, where signals are handled anyway
        return
    pending: list[int] = []
    replaced = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(sig)
        if handler not in (signal.SIG_IGN, None):
            replaced[sig] = signal.signal(sig, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for sig, handler in replaced.items():
            signal.signal(sig, handler)
        for sig in pending:
            signal.raise_signal(sig)


def stage(path: str, write) -> str:
    """The data of ``write`` in a complete file beside ``path``; returns its temporary name."""
    directory = os.path.dirname(os.path.abspath(path))
    _remove_stale_temps(directory)
    fd = _open_unnamed(directory)
    if fd is None:
        return _write_named(directory, write)
    with os.fdopen(fd, "w+b") as f:
        write(f)
        f.flush()
        tmp = _temp_name(directory)
        try:
            os.link(f"/proc/self/fd/{f.fileno()}", tmp)  # linkat(AT_SYMLINK_FOLLOW): a name
        except OSError:  # refused after all: copy it to a named file
            f.seek(0)
            return _write_named(directory, lambda g: shutil.copyfileobj(f, g))
        return tmp


def _write_named(directory: str, write) -> str:
    tmp = _temp_name(directory)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            write(f)
    except BaseException:
        unlink_quietly(tmp)
        raise
    return tmp


def unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def save_npz(path: str | os.PathLike, **arrays) -> None:
    """``np.savez`` to exactly ``path`` (no suffix added), whole or not at all."""
    atomic_write(path, npz_writer(**arrays))


def npz_writer(**arrays):
    """What writes ``arrays`` as an .npz file, for ``atomic_write_all``."""
    return lambda f: np.savez(f, **arrays)
