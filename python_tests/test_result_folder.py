"""The result folder as its ranks write it (rda_ext.io.result_folder), below the command line:
allocated under a temporary name beside its target, whatever the current folder; each rank's rows
written at their offset and in the dtype allocated, however few bytes each write takes; a
temporary left by a killed job replaced; rows of another width refused; and where the model file
cannot be put in place after the folder, the caller sees that error, not the cleanup's."""

import json
import os

import numpy as np
import pytest

from rda_ext.io import result_folder

SHAPES = {"L": ((5, 3), np.dtype(np.float32)), "scores": ((5,), np.dtype(np.float64))}


def _rows(seed, n):
    rng = np.random.default_rng(seed)
    return {"L": rng.standard_normal((n, 3)), "scores": rng.standard_normal(n)}


def _write(path, seed):
    """The folder of two ranks (rows 0-1 and 2-4), given in float64; returns what was written."""
    first, second = _rows(seed, 2), _rows(seed + 1, 3)
    result_folder.create(path, SHAPES)
    result_folder.write_rows(path, 0, first)
    result_folder.write_rows(path, 2, second)
    result_folder.finish(path, {"rows": 5})
    return {name: np.concatenate([first[name], second[name]]) for name in SHAPES}


def test_each_rank_writes_its_rows_in_the_dtype_allocated(tmp_path, gen):
    path = str(tmp_path / "out")
    expected = _write(path, int(gen.initial_seed()))
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert sorted(os.listdir(path)) == ["L.npy", "result.json", "scores.npy"]
    for name, (shape, dtype) in SHAPES.items():
        back = np.load(os.path.join(path, f"{name}.npy"))
        assert back.shape == shape and back.dtype == dtype
        np.testing.assert_array_equal(back, expected[name].astype(dtype))
    assert json.loads((tmp_path / "out" / "result.json").read_text()) == {"rows": 5}


def test_rows_are_whole_when_the_system_writes_a_few_bytes_at_a_time(tmp_path, monkeypatch, gen):
    real = os.pwrite
    monkeypatch.setattr(result_folder.os, "pwrite", lambda fd, data, offset: real(fd, data[:7], offset))
    path = str(tmp_path / "out")
    expected = _write(path, int(gen.initial_seed()))
    np.testing.assert_array_equal(np.load(os.path.join(path, "L.npy")), expected["L"].astype(np.float32))
    np.testing.assert_array_equal(np.load(os.path.join(path, "scores.npy")), expected["scores"])


def test_the_temporary_lies_beside_the_target_not_in_the_current_folder(tmp_path, monkeypatch):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "results").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    result_folder.create(str(tmp_path / "results" / "out"), SHAPES)
    assert os.listdir(tmp_path / "results") == [".out.partial"]
    assert os.listdir(tmp_path / "elsewhere") == []
    result_folder.discard(str(tmp_path / "results" / "out"))
    assert os.listdir(tmp_path / "results") == []


def test_a_temporary_left_by_a_killed_job_is_replaced(tmp_path, gen):
    stale = tmp_path / ".out.partial"
    stale.mkdir()
    (stale / "L.npy").write_bytes(b"half of an old write")
    (stale / "notes").write_text("left behind")
    path = str(tmp_path / "out")
    expected = _write(path, int(gen.initial_seed()))
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert sorted(os.listdir(path)) == ["L.npy", "result.json", "scores.npy"]
    np.testing.assert_array_equal(np.load(os.path.join(path, "L.npy")), expected["L"].astype(np.float32))


def test_rows_of_another_width_are_refused(tmp_path):
    path = str(tmp_path / "out")
    result_folder.create(path, SHAPES)
    with pytest.raises(ValueError) as e:
        result_folder.write_rows(path, 0, {"L": np.zeros((2, 4))})
    assert str(e.value) == f"{tmp_path / '.out.partial' / 'L.npy'}: not the array this fit allocated"


def test_a_model_that_cannot_be_put_in_place_is_the_error_even_where_the_cleanup_fails(tmp_path, monkeypatch):
    """After the folder's rename, a failing rename of the model file removes the folder again; a
    removal that fails too (a file system gone read-only) must not hide why the write failed."""
    path = str(tmp_path / "out")
    result_folder.create(path, SHAPES)
    result_folder.write_rows(path, 0, _rows(0, 5))
    real_replace, real_rmdir = os.replace, os.rmdir

    def replace(src, dst):
        if dst.endswith("m.pt"):
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)

    def rmdir(name, *args, **kwargs):
        if str(name).endswith("out"):
            raise PermissionError(13, "Permission denied")
        return real_rmdir(name, *args, **kwargs)

    monkeypatch.setattr(result_folder.os, "replace", replace)
    monkeypatch.setattr(os, "rmdir", rmdir)
    with pytest.raises(OSError) as e:
        result_folder.finish(path, {"rows": 5}, [(str(tmp_path / "m.pt"), lambda f: f.write(b"model"))])
    assert e.value.errno == 28
    assert not (tmp_path / "m.pt").exists()
