"""A fit's result as a folder that every rank of a row-sharded fit writes its own rows into: an
``.npy`` file per array of ``result_schema.ROWS`` (all rows, in order) and the fit's numbers in
``result_schema.RESULT_JSON``.

The folder is whole or absent: it is built under a temporary name beside it (``.<name>.partial``,
removed by rank 0 when the write fails or is interrupted, and by the next run if a job was
killed), each rank writes the bytes of its rows at their offset (``pwrite``: on a network file
system a shared memory map would write back whole pages, a neighbour's rows at a shard boundary
included), and rank 0 renames it into place only after every rank has synced its part. A
symlink to an empty folder is followed: the folder it names is the one replaced. Whether a path
can take it is ``paths.check_folder(..., whole=True)``."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np

from rda_ext.io.atomic import atomic_write, signals_held, stage, unlink_quietly
from rda_ext.io.result_schema import RESULT_JSON, array_file


def _target(path: str) -> str:
    return os.path.realpath(path)


def _partial(path: str) -> str:
    target = _target(path)
    return os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.partial")


def create(path: str, shapes: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
    """Rank 0: the temporary folder with each array allocated at its full shape."""
    tmp = _partial(path)
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name, (shape, dtype) in shapes.items():
        np.lib.format.open_memmap(os.path.join(tmp, array_file(name)), mode="w+", dtype=dtype, shape=shape).flush()


def write_rows(path: str, start: int, arrays: dict[str, np.ndarray]) -> None:
    """Every rank: its rows, from ``start``, into each array of the temporary folder."""
    tmp = _partial(path)
    for name, rows in arrays.items():
        with open(os.path.join(tmp, array_file(name)), "r+b") as f:
            version = np.lib.format.read_magic(f)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(f)
            if fortran or tuple(shape[1:]) != rows.shape[1:]:
                raise ValueError(f"{f.name}: not the array this fit allocated")
            row_bytes = dtype.itemsize * int(np.prod(shape[1:], dtype=np.int64))
            data = np.ascontiguousarray(rows, dtype=dtype).tobytes()
            offset = f.tell() + start * row_bytes
            while data:
                written = os.pwrite(f.fileno(), data, offset)
                data, offset = data[written:], offset + written
            os.fsync(f.fileno())


def finish(path: str, meta: dict, files=()) -> None:
    """Rank 0, after every rank's ``write_rows``: result.json, then the folder into place, with
    ``files`` (``(path, write)`` pairs, e.g. the model file) all or none: each is complete under a
    temporary name before the folder moves, and a failure after it removes the folder again."""
    tmp = _partial(path)
    text = json.dumps(meta, indent=1).encode()
    atomic_write(os.path.join(tmp, RESULT_JSON), lambda f: f.write(text))
    target = _target(path)
    staged = []
    try:
        for name, write in files:
            staged.append((stage(os.path.realpath(name), write), os.path.realpath(name)))
        with signals_held():
            if os.path.isdir(target):
                os.rmdir(target)  # empty (checked before the fit); rename cannot replace a folder
            os.rename(tmp, target)
            try:
                for staged_name, name in staged:
                    os.replace(staged_name, name)
            except BaseException:
                shutil.rmtree(target, ignore_errors=True)
                raise
    except BaseException:
        for staged_name, _ in staged:
            unlink_quietly(staged_name)
        raise


def discard(path: str) -> None:
    """Rank 0, when the write failed: removes the temporary folder."""
    shutil.rmtree(_partial(path), ignore_errors=True)
