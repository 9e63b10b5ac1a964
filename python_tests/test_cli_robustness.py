"""Hardening of the rda-ext command: unsupported dtypes and allocations too large for
memory are one-line user errors, other errors are not disguised; outputs follow the umask, a
read-only OUT is refused, and SIGINT / SIGTERM / SIGKILL leave no temporary file and OUT whole or
absent. How one output is written whole is checked in test_output_files.py."""

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
from helpers import temps

from rda_ext.cli import main
from rda_ext.io.atomic import atomic_write, save_npz
from rda_ext.io.readers import read_matrix

TINY = ["--hidden", "4", "--outer-iter", "1", "--inner-epochs", "1", "--batch-size", "8",
        "--output-activation", "linear", "--device", "cpu", "--seed", "0"]


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
