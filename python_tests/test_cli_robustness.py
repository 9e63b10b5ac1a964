"""Hardening of the rda-ext command: unsupported dtypes and allocations too large for
memory are one-line user errors; outputs follow the umask, a read-only OUT is refused, and
SIGINT / SIGTERM / SIGKILL leave no temporary file and OUT whole or absent."""

import os
import select
import signal
import stat
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from rda_ext.cli import main
from rda_ext.io import atomic
from rda_ext.io.atomic import atomic_write, save_npz
from rda_ext.io.readers import read_matrix

TINY = ["--hidden", "4", "--outer-iter", "1", "--inner-epochs", "1", "--batch-size", "8",
        "--output-activation", "linear", "--device", "cpu", "--seed", "0"]
TEMP_PREFIXES = (".rda-ext-tmp", ".tmp-")


def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line(err, code, expected_code, *parts):
    lines = err.strip().splitlines()
    assert code == expected_code and len(lines) == 1, (code, err)
    for part in parts:
        assert part in lines[0], err
    return lines[0]


def temps(folder):
    return sorted(n for n in os.listdir(folder) if n.startswith(TEMP_PREFIXES))


@pytest.fixture
def X(tmp_path):
    X = np.random.default_rng(0).random((24, 5))
    np.save(tmp_path / "X.npy", X)
    return X


@pytest.fixture
def model(tmp_path, X, capsys):
    code, _, err = run_main(capsys, "fit", tmp_path / "X.npy", "--out", tmp_path / "fit.npz",
                            "--model", tmp_path / "m.pt", *TINY)
    assert code == 0, err
    return tmp_path / "m.pt"


# -- dtypes -------------------------------------------------------------------------------------

UNSUPPORTED = {
    "longdouble": lambda X: X.astype(np.longdouble),
    "complex128": lambda X: X.astype(np.complex128),
    "datetime64": lambda X: X.astype("datetime64[s]"),
    "timedelta64": lambda X: (X * 100).astype("timedelta64[s]"),
    "str": lambda X: X.astype(str),
}


@pytest.mark.parametrize("kind", sorted(UNSUPPORTED))
@pytest.mark.parametrize("command", ["fit", "score"])
def test_unsupported_dtype_is_one_line(tmp_path, X, model, capsys, kind, command):
    if kind == "longdouble" and np.dtype(np.longdouble).itemsize <= 8:
        pytest.skip("long double is float64 on this platform")
    bad = tmp_path / f"{kind}.npy"
    np.save(bad, UNSUPPORTED[kind](X))
    out = tmp_path / "out.npz"
    if command == "fit":
        code, _, err = run_main(capsys, "fit", bad, "--out", out, *TINY)
    else:
        code, _, err = run_main(capsys, "score", model, bad, "--out", out)
    dtype = str(np.load(bad).dtype)
    assert_one_line(err, code, 2, "rda-ext: error: ", str(bad), f"dtype {dtype}")
    assert not out.exists() and not temps(tmp_path)


@pytest.mark.parametrize("dtype", ["bool", "int8", "uint8", "int32", "uint64", "float16", "float32", ">f8", "<f8"])
def test_real_dtypes_are_accepted(tmp_path, X, dtype):
    a = (X * 3).astype(dtype)
    np.save(tmp_path / "a.npy", a)
    got = read_matrix(tmp_path / "a.npy")
    assert got.dtype.isnative and got.dtype.kind == a.dtype.kind
    np.testing.assert_array_equal(got, a)


def test_big_endian_fit(tmp_path, X, capsys):
    np.save(tmp_path / "be.npy", X.astype(">f8"))
    code, _, err = run_main(capsys, "fit", tmp_path / "be.npy", "--out", tmp_path / "r.npz", *TINY)
    assert code == 0, err


# -- allocation ---------------------------------------------------------------------------------

@pytest.mark.parametrize("hidden", ["100000000000000", "4611686018427387904"])
def test_network_too_large_for_memory(tmp_path, X, capsys, hidden):
    argv = ["fit", tmp_path / "X.npy", "--out", tmp_path / "r.npz", "--model", tmp_path / "m.pt", *TINY]
    argv[argv.index("--hidden") + 1] = hidden
    code, _, err = run_main(capsys, *argv)
    assert_one_line(err, code, 2, "rda-ext: error: ", "does not fit in", "memory", "--hidden", "--batch-size")
    assert not (tmp_path / "r.npz").exists() and not (tmp_path / "m.pt").exists()


def test_layer_size_beyond_int64(tmp_path, X, capsys):
    argv = ["fit", tmp_path / "X.npy", "--out", tmp_path / "r.npz", *TINY]
    argv[argv.index("--hidden") + 1] = str(10**20)
    code, _, err = run_main(capsys, *argv)
    assert_one_line(err, code, 2, "rda-ext: error: ", "--hidden")


def test_other_runtime_errors_are_not_disguised(monkeypatch, tmp_path, X):
    def broken(self, X):
        raise RuntimeError("a bug")

    monkeypatch.setattr("rda_ext.cli.RobustAutoencoder.fit", broken)
    with pytest.raises(RuntimeError, match="a bug"):
        main(["fit", str(tmp_path / "X.npy"), "--out", str(tmp_path / "r.npz")])


# -- modes and read-only OUT --------------------------------------------------------------------

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


def test_cli_outputs_follow_umask(tmp_path, X, capsys):
    old = os.umask(0o022)
    try:
        code, _, err = run_main(capsys, "fit", tmp_path / "X.npy", "--out", tmp_path / "r.npz",
                                "--model", tmp_path / "m.pt", *TINY)
    finally:
        os.umask(old)
    assert code == 0, err
    for name in ("r.npz", "m.pt"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o644, name


@pytest.mark.parametrize("which", ["--out", "--model"])
def test_read_only_output_is_refused(tmp_path, X, capsys, which):
    target = tmp_path / "readonly"
    target.write_bytes(b"keep me")
    os.chmod(target, 0o444)
    paths = {"--out": tmp_path / "r.npz", "--model": tmp_path / "m.pt", which: target}
    code, _, err = run_main(capsys, "fit", tmp_path / "X.npy", "--out", paths["--out"],
                            "--model", paths["--model"], *TINY)
    assert_one_line(err, code, 2, "rda-ext: error: ", str(target), "read-only")
    assert target.read_bytes() == b"keep me" and stat.S_IMODE(os.stat(target).st_mode) == 0o444
    with pytest.raises(PermissionError, match="read-only"):
        atomic_write(target, lambda f: f.write(b"x"))
    assert target.read_bytes() == b"keep me" and not temps(tmp_path)


# -- temporary files and signals ----------------------------------------------------------------

def test_stale_temp_of_dead_process_is_removed(tmp_path, write_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".rda-ext-tmp-{dead.pid}-0123abcd").write_bytes(b"stale")
    (tmp_path / ".rda-ext-tmp-1-0123abcd").write_bytes(b"pid 1 runs: not ours to remove")
    (tmp_path / "unrelated").write_bytes(b"x")
    save_npz(tmp_path / "r.npz", a=np.zeros(2))
    assert temps(tmp_path) == [".rda-ext-tmp-1-0123abcd"]
    assert (tmp_path / "unrelated").exists()


def test_exception_while_writing_leaves_nothing(tmp_path, write_path):
    (tmp_path / "r.npz").write_bytes(b"old")

    def fail(f):
        f.write(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "r.npz", fail)
    assert (tmp_path / "r.npz").read_bytes() == b"old" and not temps(tmp_path)


CHILD = textwrap.dedent("""
    import sys, time
    import numpy as np
    import rda_ext.cli as cli

    phase, argv = sys.argv[1], sys.argv[2:]
    if phase == "fit":  # the marker once fitting has begun; the fit itself is long
        fit = cli.RobustAutoencoder.fit
        def marked_fit(self, X):
            print("marker", flush=True)
            return fit(self, X)
        cli.RobustAutoencoder.fit = marked_fit
    else:  # a write that stalls once part of the data is written
        savez = np.savez
        def slow_savez(f, **arrays):
            savez(f, **arrays)
            f.flush()
            print("marker", flush=True)
            time.sleep(60)
        np.savez = slow_savez
    sys.exit(cli.main(argv))
""")


def start_child(tmp_path, phase, outer_iter):
    argv = ["fit", str(tmp_path / "X.npy"), "--out", str(tmp_path / "r.npz"), *TINY]
    argv[argv.index("--outer-iter") + 1] = str(outer_iter)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, phase, *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=tmp_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if ready:
            line = proc.stdout.readline()
            if line.strip() == "marker":
                return proc
            if not line:
                break
    proc.kill()
    _, err = proc.communicate(timeout=30)
    pytest.fail(f"the child did not reach the marker: {err[-2000:]}")


@pytest.mark.child_process
@pytest.mark.parametrize("phase", ["fit", "write"])
@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_signal_is_one_line_and_leaves_nothing(tmp_path, X, phase, sig, code, word):
    (tmp_path / "r.npz").write_bytes(b"old result")
    proc = start_child(tmp_path, phase, outer_iter=100000 if phase == "fit" else 1)
    time.sleep(0.2)
    proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail("the command did not stop")
    assert proc.returncode == code, err
    assert err.strip().splitlines() == [f"rda-ext: {word}"], err
    assert (tmp_path / "r.npz").read_bytes() == b"old result"
    assert not temps(tmp_path)


@pytest.mark.child_process
def test_sigkill_while_writing_leaves_nothing_after_next_write(tmp_path, X):
    (tmp_path / "r.npz").write_bytes(b"old result")
    proc = start_child(tmp_path, "write", outer_iter=1)
    proc.kill()
    proc.communicate(timeout=60)
    assert (tmp_path / "r.npz").read_bytes() == b"old result"
    left = temps(tmp_path)  # none with O_TMPFILE; the named fallback's, of the dead process
    assert all(n.startswith(f".rda-ext-tmp-{proc.pid}-") for n in left), left
    save_npz(tmp_path / "other.npz", a=np.zeros(2))
    assert not temps(tmp_path)
    assert (tmp_path / "r.npz").read_bytes() == b"old result"


def test_pid_alive_asks_without_signalling(tmp_path):
    from rda_ext.io.atomic import _pid_alive

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert _pid_alive(child.pid)
        time.sleep(0.2)
        assert child.poll() is None  # still running: signal 0 only asks
    finally:
        child.kill()
        child.wait()
    assert not _pid_alive(child.pid)
    assert _pid_alive(2**70)  # an odd number: its file is kept


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


def test_a_symlink_named_like_a_stale_temporary_is_kept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    target = tmp_path / "target"
    target.write_bytes(b"keep")
    link = tmp_path / f".rda-ext-tmp-{dead.pid}-abcdef"
    link.symlink_to(target)
    atomic_write(tmp_path / "r.bin", lambda f: f.write(b"x"))
    assert link.is_symlink() and target.read_bytes() == b"keep"


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
