"""Reading data matrices from .npy, .npz and .csv files, whole or one rank's rows of them."""

from __future__ import annotations

import math
import os
import stat
import tokenize
import warnings
import zipfile
import zlib

import numpy as np

from rda_ext.io.atomic import kind_of
from rda_ext.io.csv import CsvError, read_csv

FORMATS = (".npy", ".npz", ".csv")


def read_matrix(
    path: str | os.PathLike, key: str | None = None, header: bool | None = None, *, return_header: bool = False,
    shard: tuple[int, int] | None = None, allow_special: bool = False,
):
    """A numeric matrix (rows = instances) from ``.npy``, ``.npz`` (the array named ``key``, which
    may be left out when the file holds one array) or ``.csv``. Arrays of images (n, h, w) become
    (n, h * w).

    A ``.csv`` file is UTF-8 text (a byte order mark is allowed), comma-separated, LF or CRLF line
    ends, blank lines allowed only at the end; cells may have spaces or tabs around them and may be
    quoted. A number is a plain decimal one in ASCII: an optional sign, digits with an optional
    point, an optional exponent (``-1.5e-3``, ``.5``, ``7.``), or a spelling of inf or nan that
    ``float`` takes; not ``1_000`` nor the digits of other scripts. ``header`` says whether its
    first line is a header to skip: ``True``, ``False``, or ``None`` (default) to decide by the
    rule that the first line is a header if none of its cells is a number; a first line that mixes numbers and text is an error (say which with ``header``). Every
    other fault (empty file, no data rows, rows of unequal length, an empty or non-numeric cell) is
    a ``ValueError`` naming the file, and the line and column where it can.

    With ``return_header=True`` the result is ``(matrix, header_skipped)``, where
    ``header_skipped`` is ``None`` for ``.npy`` and ``.npz`` files.

    ``shard=(rank, world)``: only that rank's rows (``row_range``); a ``.npy`` file is then read
    through a memory map, so that only those rows are ever loaded. Fewer rows than ranks is an
    error (on every rank alike), as is a matrix with no rows or no features.

    Only a regular file (or a symlink to one) is read: a folder is an ``IsADirectoryError``, a
    FIFO, device or socket a ``ValueError`` (reading /dev/zero would never end, nor would opening
    a FIFO that nobody writes to), unless ``allow_special=True``: then it is read as a stream,
    never memory-mapped, except an ``.npz``, which must still be a regular file (a zip archive is
    read by seeking). A line of a ``.csv`` file (or a row spanning lines through a quoted line
    end) may have at most ``CSV_LINE_LIMIT`` characters, whatever the file."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        raise ValueError(f"{path}: unsupported file type {ext or '(none)'!r}; use one of {', '.join(FORMATS)}")
    if header not in (None, True, False):
        raise ValueError(f"header must be None, True or False, got {header!r}")
    if header is not None and ext != ".csv":
        raise ValueError(f"{path}: a header line (header={header}, --header/--no-header) applies to .csv files only")
    if key is not None and ext != ".npz":
        raise ValueError(f"{path}: an array name (key={key!r}, --key) applies to .npz files only")
    regular = _check_input(path, ext, allow_special)
    skipped = None
    try:
        with warnings.catch_warnings():
            # numpy parses an .npy header as a Python literal: a damaged one (a backslash in it)
            # would warn of an invalid escape (a DeprecationWarning before Python 3.12); as an
            # error, numpy reports it as an unparsable header.
            for category in (SyntaxWarning, DeprecationWarning):
                warnings.filterwarnings("error", "invalid escape sequence", category)
            if ext == ".npy":
                a = _read_npy(path, stream=not regular, mmap=shard is not None)
            elif ext == ".npz":
                a = _read_npz(path, key)
            else:
                a, skipped = read_csv(path, header)
    except CsvError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, tokenize.TokenError) as e:
        raise ValueError(f"{path}: cannot read: {e}") from e
    a = _supported(path, a)
    if a.ndim < 2:
        raise ValueError(f"{path}: expected a matrix (rows = instances, columns = features), got shape {a.shape}")
    if len(a) == 0:
        raise ValueError(f"{path}: no rows (shape {a.shape})")
    if 0 in a.shape[1:]:
        raise ValueError(f"{path}: no features (shape {a.shape})")
    if shard is not None:
        start, stop = _shard_rows(path, len(a), shard)
        try:
            a = np.array(a[start:stop])  # from a memory map: reads these rows only
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: cannot read rows {start} to {stop}: {e}") from e
    a = a.reshape(len(a), -1)
    return (a, skipped) if return_header else a


def row_range(n: int, rank: int, world: int) -> tuple[int, int]:
    """The rows [start, stop) of ``rank`` when ``n`` rows are split over ``world`` ranks in
    order, as evenly as they go (the shard sizes differ by at most one row)."""
    return n * rank // world, n * (rank + 1) // world


def _shard_rows(path: str, n: int, shard) -> tuple[int, int]:
    """``row_range`` of ``shard``, refused on every rank alike where some rank would get no rows,
    so that all of them fail with the same message."""
    rank, world = shard
    if not 0 <= rank < world:
        raise ValueError(f"shard={tuple(shard)}: expected (rank, world) with 0 <= rank < world")
    if n < world:
        empty = [r for r in range(world) if row_range(n, r, world)[0] == row_range(n, r, world)[1]]
        shown = ", ".join(map(str, empty[:8])) + (", ..." if len(empty) > 8 else "")
        which = f"rank {shown}" if len(empty) == 1 else f"{len(empty)} ranks ({shown})"
        raise ValueError(
            f"{path}: {n} rows cannot be split over {world} ranks: {which} would have none; run at most {n}"
        )
    return row_range(n, rank, world)


def _check_input(path: str, ext: str, allow_special: bool) -> bool:
    """Whether ``path`` is a regular file; fails where it is missing or cannot be read as one.
    ``os.stat``, not ``open``: opening a FIFO blocks until someone writes to it."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        raise FileNotFoundError(f"{path}: no such file") from None
    except OSError as e:
        raise ValueError(f"{path}: cannot read: {e.strerror or e}") from None
    if stat.S_ISREG(mode):
        return True
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{path}: a folder, not a file")
    target = os.path.realpath(path)
    what = f"not a regular file but {kind_of(mode)}" + (f" ({target})" if target != os.path.abspath(path) else "")
    if not allow_special:
        raise ValueError(f"{path}: {what}; only regular files are read")
    if ext == ".npz":
        raise ValueError(f"{path}: {what}; an .npz file must be a regular file (a zip archive is read by seeking)")
    return False


_NPY_MAGIC = b"\x93NUMPY"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a zip archive's first entry, or an empty archive


def _not_npy(head: bytes) -> str:
    """Why a file (or an .npz member) starting with ``head`` is not an .npy array."""
    if not head:
        return "it is empty"
    if head.startswith(_ZIP_MAGICS):
        return "it is a zip archive (an .npz file?)"
    return f"it does not start with the .npy magic string {_NPY_MAGIC!r}"


class _Prefixed:
    """``head`` then the rest of the stream ``f``. Only ``read``: numpy then reads in chunks,
    where with a real file it would seek."""

    def __init__(self, head: bytes, f):
        self.head, self.f = head, f

    def read(self, n: int = -1) -> bytes:
        if 0 <= n <= len(self.head):
            data, self.head = self.head[:n], self.head[n:]
            return data
        data, self.head = self.head, b""
        return data + self.f.read(-1 if n < 0 else n - len(data))


def _check_npy_size(f, size: int) -> None:
    """Fails where the header of the .npy array that ``f`` starts with declares more data than
    the ``size`` bytes of the whole (a file, an .npz member) hold: numpy would allocate the
    declared size before reading, and a damaged shape can ask for terabytes."""
    fmt = np.lib.format
    read_header = {(1, 0): fmt.read_array_header_1_0, (2, 0): fmt.read_array_header_2_0}.get(fmt.read_magic(f))
    if read_header is None:  # version 3.0 (rare): left to numpy
        return
    try:
        shape, _, dtype = read_header(f)
    except tokenize.TokenError as e:  # from numpy's parse of a damaged header
        raise ValueError(f"cannot parse the header ({e.args[0] if e.args else e})") from None
    if dtype.hasobject:  # numpy refuses it (allow_pickle=False) with its own message
        return
    if any(n < 0 for n in shape):
        raise ValueError(f"the header declares a negative shape {shape}")
    need, held = math.prod(shape) * dtype.itemsize, max(size - f.tell(), 0)
    if need > held:
        raise ValueError(f"truncated: the header declares an array of shape {shape} and dtype {dtype}, "
                         f"{need} bytes, but {held} bytes follow it")


def _read_npy(path: str, stream: bool, mmap: bool) -> np.ndarray:
    # The magic string first: without it np.load takes the file for a pickle ("allow_pickle=True")
    # or, for a zip archive, returns an NpzFile.
    with open(path, "rb") as f:
        head = f.read(len(_NPY_MAGIC))
        if head != _NPY_MAGIC:
            raise ValueError(f"not an .npy file: {_not_npy(head)}")
        if stream:
            return np.lib.format.read_array(_Prefixed(head, f), allow_pickle=False)
        f.seek(0)
        _check_npy_size(f, os.fstat(f.fileno()).st_size)
    return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)


def _read_npz(path: str, key: str | None) -> np.ndarray:
    # Opened here, not by np.load, which leaves its file open when the archive is damaged.
    with open(path, "rb") as f:
        head = f.read(len(_NPY_MAGIC))
        if not head.startswith(_ZIP_MAGICS):
            why = ("it is empty" if not head else "it is an .npy file" if head == _NPY_MAGIC
                   else f"it does not start with the signature of a zip archive {_ZIP_MAGICS[0]!r}")
            raise ValueError(f"not an .npz file (a zip archive of .npy files): {why}")
        f.seek(0)
        try:
            z = np.load(f, allow_pickle=False)
        except (zipfile.BadZipFile, NotImplementedError) as e:  # NotImplementedError: "zip file version 9.8"
            raise ValueError(f"a damaged or truncated zip archive ({e})") from e
        with z:
            return _npz_member(z, key)


def _npz_member(z, key: str | None) -> np.ndarray:
    if key is None:
        if not z.files:
            raise ValueError("it holds no arrays")
        if len(z.files) != 1:
            raise ValueError(f"it holds the arrays {', '.join(z.files)}: choose one with --key")
        key = z.files[0]
    if key not in z.files:
        raise ValueError(f"it has no array {key!r} (it holds {', '.join(z.files) or 'none'})")
    member = key if key in z.zip.namelist() else key + ".npy"
    try:
        # The member's magic string first: without it numpy returns the member's bytes, all of
        # them, whatever their size.
        with z.zip.open(member) as m:
            head = m.read(len(_NPY_MAGIC))
        if head != _NPY_MAGIC:
            raise ValueError(_not_npy(head))
        with z.zip.open(member) as m:
            _check_npy_size(m, z.zip.getinfo(member).file_size)
        return z[key]
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError, RuntimeError,
            tokenize.TokenError) as e:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method.
        raise ValueError(f"the member {member} is not a valid .npy array: {e}") from e


def _supported(path: str, a: np.ndarray) -> np.ndarray:
    """``a`` if its dtype is a real bool, integer or float of at most 64 bits (in native byte
    order, converted if not); any other dtype (long double / float128, complex, object, datetime,
    timedelta, strings, records) is a ``ValueError`` naming the dtype and the file. Long double is
    refused rather than narrowed to float64, which would silently lose precision and range."""
    kind = a.dtype.kind
    if kind in "biu" or (kind == "f" and a.dtype.itemsize <= 8):
        return a if a.dtype.isnative else a.astype(a.dtype.newbyteorder("="))
    raise ValueError(
        f"{path}: unsupported dtype {a.dtype}; the data must be bool, integer, float16, "
        f"float32 or float64"
    )

