"""The paths of a command, checked together before any work: every pair of them that may name the
same file or folder (input, --out as a file or a folder, --model, --checkpoint; the model and the
input of score), however it is spelled (./, .., a symlink, a hard link), is refused with one line
and leaves every file as it was; an output that exists and is not a regular file (or, for a
folder, a directory) is never replaced; a folder output is all or nothing, its model file too."""

import os
import signal
import socket
import stat

import numpy as np
import pytest

from rda_ext.cli import main
from rda_ext.io import result_folder

TINY = ["--hidden", "3", "--outer-iter", "1", "--inner-epochs", "1", "--batch-size", "8",
        "--output-activation", "linear", "--device", "cpu", "--seed", "0"]


def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def work(tmp_path, monkeypatch, capsys):
    """A folder with X.npy, X.npz, a model m.pt and an empty folder E; the current folder."""
    monkeypatch.chdir(tmp_path)
    X = np.random.default_rng(1).random((24, 4))
    np.save("X.npy", X)
    np.savez("X.npz", X=X)
    os.mkdir("E")
    code, _, err = run_main(capsys, "fit", "X.npy", "--out", "fit.npz", "--model", "m.pt", *TINY)
    assert code == 0, err
    os.remove("fit.npz")
    return tmp_path


def _content(path):
    if os.path.islink(path):
        return ("symlink", os.readlink(path))
    if not stat.S_ISREG(os.lstat(path).st_mode):
        return stat.S_IFMT(os.lstat(path).st_mode)
    with open(path, "rb") as f:
        return f.read()


def _snapshot(folder):
    return {os.path.relpath(os.path.join(d, f), folder): _content(os.path.join(d, f))
            for d, _, names in os.walk(folder) for f in names}


def _entries(folder):
    return sorted(os.path.relpath(os.path.join(d, n), folder) for d, dirs, files in os.walk(folder)
                  for n in dirs + files)


# (setup, argv, part of the message). Each argv is refused before any work.
def _link(target, name):
    def make():
        os.symlink(target, name)
    return make


def _hardlink(target, name):
    def make():
        os.link(target, name)
    return make


def _folder(name):
    def make():
        os.mkdir(name)
    return make


COLLISIONS = {
    "fit: --out is the .npz input": (None, ["fit", "X.npz", "--out", "X.npz"],
                                     "--out X.npz is the same file as input X.npz: it would be replaced by the output; "
                                     "choose another path"),
    "fit: --out is the input through ./ and ..": (None, ["fit", "X.npz", "--out", "./E/../X.npz"], "same file as input"),
    "fit: --out is the input by its absolute path": ("abs", ["fit", "X.npz", "--out", "{abs}/X.npz"], "same file"),
    "fit: --out a symlink to the input": (_link("X.npz", "l.npz"), ["fit", "X.npz", "--out", "l.npz"], "same file"),
    "fit: --out a hard link of the input": (_hardlink("X.npz", "h.npz"), ["fit", "X.npz", "--out", "h.npz"],
                                            "same file"),
    "fit: the input a symlink to --out": (_link("X.npy", "in.npy"), ["fit", "in.npy", "--out", "X.npy"], "same file"),
    "fit: --model is the input": (None, ["fit", "X.npy", "--out", "r.npz", "--model", "X.npy"],
                                  "--model X.npy is the same file as input"),
    "fit: --model is --out": (None, ["fit", "X.npy", "--out", "r.npz", "--model", "./r.npz"],
                              "--out and --model are the same file"),
    "fit: --model a symlink to --out": (_link("r.npz", "lm.pt"), ["fit", "X.npy", "--out", "r.npz", "--model", "lm.pt"],
                                        "--out and --model are the same file"),
    "fit: --model inside the --out folder": (_folder("D"), ["fit", "X.npy", "--out", "D/", "--model", "D/m2.pt"],
                                             "lies inside the --out folder"),
    "fit: --checkpoint is the --out folder": (None, ["fit", "X.npy", "--out", "D/", "--checkpoint", "D"],
                                              "the --out folder D/ and the --checkpoint folder D overlap: each must be "
                                              "a folder of its own"),
    "fit: --checkpoint inside the --out folder": (_folder("D"), ["fit", "X.npy", "--out", "D/", "--checkpoint", "D/ck"],
                                                  "overlap"),
    "fit: the --out folder inside --checkpoint": (_folder("ck"), ["fit", "X.npy", "--out", "ck/r/", "--checkpoint",
                                                                  "ck"], "overlap"),
    "fit: --out inside --checkpoint": (_folder("ck"), ["fit", "X.npy", "--out", "ck/r.npz", "--checkpoint", "ck"],
                                       "lies inside the --checkpoint folder"),
    "fit: --model inside --checkpoint": (_folder("ck"), ["fit", "X.npy", "--out", "r.npz", "--model", "ck/m.pt",
                                                         "--checkpoint", "ck"], "lies inside the --checkpoint folder"),
    "fit: --checkpoint is the input": (None, ["fit", "X.npy", "--out", "r.npz", "--checkpoint", "X.npy"],
                                       "--checkpoint X.npy exists and is a regular file, not a folder"),
    "fit: --out folder is the input": (None, ["fit", "X.npy", "--out", "X.npy/"], "a file of that name exists"),
    "score: --out is the model": (None, ["score", "m.pt", "X.npy", "--out", "m.pt"],
                                  "--out m.pt is the same file as model"),
    "score: --out is the input": (None, ["score", "m.pt", "X.npz", "--out", "X.npz"], "same file as input"),
    "score: --out a symlink to the model": (_link("m.pt", "s.npz"), ["score", "m.pt", "X.npy", "--out", "s.npz"],
                                            "same file as model"),
}


@pytest.mark.parametrize("case", list(COLLISIONS))
def test_an_output_that_would_replace_an_input_or_another_output_is_refused(work, capsys, case):
    setup, argv, message = COLLISIONS[case]
    if callable(setup):
        setup()
    argv = [a.replace("{abs}", str(work)) for a in argv]
    before, entries = _snapshot(work), _entries(work)
    code, out, err = run_main(capsys, *argv)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("rda-ext: error: ") and message in lines[0], err
    assert out == ""  # refused before the fit, which would print its summary
    assert _snapshot(work) == before and _entries(work) == entries


def test_paths_that_do_not_collide_are_taken(work, capsys):
    """The input inside the checkpoint folder, a model beside the result folder, an --out symlink:
    the link stays and the file it names receives the result."""
    os.mkdir("ck")
    os.rename("X.npy", "ck/X.npy")
    open("target.npz", "wb").close()
    os.symlink("target.npz", "link.npz")
    code, _, err = run_main(capsys, "fit", "ck/X.npy", "--out", "link.npz", "--model", "m2.pt", "--checkpoint",
                            "ck", *TINY)
    assert code == 0, err
    assert os.path.islink("link.npz") and np.load("target.npz")["L"].shape == (24, 4)
    code, _, err = run_main(capsys, "fit", "ck/X.npy", "--out", "D/", "--model", "m3.pt", *TINY)
    assert code == 0, err


def _special(kind, path):
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    elif kind == "device":
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root")
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))  # what /dev/null is
    else:
        os.mkdir(path)


@pytest.mark.parametrize("kind", ["fifo", "socket", "device"])
@pytest.mark.parametrize("flag", ["--out", "--model", "--json", "score --out"])
def test_an_output_that_exists_and_is_not_a_regular_file_is_never_replaced(work, capsys, kind, flag):
    _special(kind, "o")
    mode = os.lstat("o").st_mode
    argv = {"--out": ["fit", "X.npy", "--out", "o", *TINY],
            "--model": ["fit", "X.npy", "--out", "r.npz", "--model", "o", *TINY],
            "--json": ["demo", "--json", "o"],
            "score --out": ["score", "m.pt", "X.npy", "--out", "o"]}[flag]
    code, _, err = run_main(capsys, *argv)
    name = {"fifo": "a FIFO", "socket": "a socket", "device": "a character device"}[kind]
    label = flag.split()[-1]
    assert code == 2 and f"{label} o exists and is {name}, not a regular file" in err, err
    assert os.lstat("o").st_mode == mode and not os.path.exists("r.npz")


@pytest.mark.parametrize("kind", ["fifo", "socket"])
def test_a_folder_output_or_checkpoint_that_is_not_a_folder_is_refused(work, capsys, kind):
    _special(kind, "o")
    code, _, err = run_main(capsys, "fit", "X.npy", "--out", "o/", *TINY)
    assert code == 2 and "a file of that name exists" in err, err
    code, _, err = run_main(capsys, "fit", "X.npy", "--out", "r.npz", "--checkpoint", "o", *TINY)
    assert code == 2 and "exists and is" in err and "not a folder" in err, err
    assert stat.S_IFMT(os.lstat("o").st_mode) != stat.S_IFDIR and not os.path.exists("r.npz")


def test_a_folder_output_that_is_not_empty_is_refused(work, capsys):
    os.mkdir("F")
    open("F/mine", "wb").close()
    code, out, err = run_main(capsys, "fit", "X.npy", "--out", "F/", *TINY)
    assert code == 2 and out == "" and err == (
        "rda-ext: error: F/: the folder exists and is not empty; remove it or choose another --out\n")
    assert os.listdir("F") == ["mine"]


def test_within_takes_the_root_and_a_folder_whose_name_ends_in_a_space(tmp_path):
    from rda_ext.io.paths import within

    os.mkdir(tmp_path / "d ")
    assert within(str(tmp_path / "d " / "x"), str(tmp_path / "d "))
    assert not within(str(tmp_path / "d" / "x"), str(tmp_path / "d "))
    assert within(str(tmp_path), os.sep)


def test_a_symlink_to_an_empty_folder_receives_the_folder_output(work, capsys):
    os.symlink("E", "L")
    code, _, err = run_main(capsys, "fit", "X.npy", "--out", "L/", "--model", "m2.pt", *TINY)
    assert code == 0, err
    assert os.path.islink("L") and sorted(os.listdir("E")) == ["L.npy", "S.npy", "labels.npy", "result.json",
                                                              "scores.npy"]
    assert not [n for n in os.listdir(work) if n.startswith(".")]


def _fail_in(monkeypatch, target, name, exc):
    real = getattr(target, name)

    def failing(*args, **kwargs):
        raise exc

    monkeypatch.setattr(target, name, failing)
    return real


@pytest.mark.parametrize("step", ["create", "write_rows", "result.json", "rename", "model"])
@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_folder_output_that_fails_or_is_interrupted_leaves_nothing(work, capsys, monkeypatch, step, exc):
    """Whatever step of the folder write fails (a full disk) or is interrupted (SIGINT), neither the
    folder, nor its temporary, nor the model file written with it remain."""
    from rda_ext.io import atomic

    if step == "create":
        _fail_in(monkeypatch, result_folder, "create", exc)
    elif step == "write_rows":
        _fail_in(monkeypatch, result_folder, "write_rows", exc)
    elif step == "result.json":
        _fail_in(monkeypatch, result_folder, "atomic_write", exc)
    elif step == "rename":
        real = os.rename

        def rename(src, dst):
            if src.endswith(".partial"):
                raise exc
            return real(src, dst)

        monkeypatch.setattr(result_folder.os, "rename", rename)
    else:
        real = atomic.os.replace

        def replace(src, dst):
            if dst.endswith("m2.pt"):
                raise exc
            return real(src, dst)

        monkeypatch.setattr(result_folder.os, "replace", replace)
    before = _entries(work)
    code, _, err = run_main(capsys, "fit", "X.npy", "--out", "D/", "--model", "m2.pt", *TINY)
    assert code == (130 if isinstance(exc, KeyboardInterrupt) else 2), err
    assert _entries(work) == before


def test_a_sigterm_during_the_folder_write_leaves_nothing(work, capsys, monkeypatch):
    real = result_folder.write_rows

    def write_then_terminate(*args):
        real(*args)
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(result_folder, "write_rows", write_then_terminate)
    before = _entries(work)
    code, _, err = run_main(capsys, "fit", "X.npy", "--out", "D/", *TINY)
    assert code == 143 and "terminated" in err
    assert _entries(work) == before
