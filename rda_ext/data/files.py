"""Reading data matrices from files and writing results whole or not at all."""

from __future__ import annotations

import array
import contextlib
import csv
import math
import os
import re
import shutil
import signal
import stat
import threading
import tokenize
import zipfile
import zlib

import numpy as np

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
        if ext == ".npy":
            a = _read_npy(path, stream=not regular, mmap=shard is not None)
        elif ext == ".npz":
            a = _read_npz(path, key)
        else:
            a, skipped = _read_csv(path, header)
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


class CsvError(ValueError):
    """A fault in a ``.csv`` file; the message names the file (and the line and column)."""


# The most characters of a line of a .csv file (or of a row whose quoted cells span lines):
# without a bound, a file with no line end (a symlink to /dev/zero, a sparse file) is read into
# memory until the system kills the process. A row of a million cells fits several times over.
CSV_LINE_LIMIT = 16 * 1024 * 1024

# A plain decimal number, as CSV users write them, and the inf/nan spellings float() takes:
# float() alone would also take '1_000', other scripts' digits ('٣', '１') and Unicode spaces.
_NUMBER = re.compile(r"[ \t]*[+-]?(?:(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|(?i:inf|infinity|nan))[ \t]*",
                     re.ASCII)  # else (?i) takes 'ınf' (a dotless i) for inf


def _is_number(cell: str) -> bool:
    return _NUMBER.fullmatch(cell) is not None


def _float_would_take(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


class _Lines:
    """The lines of ``f`` for ``csv.reader``, none read whole past ``CSV_LINE_LIMIT`` characters;
    ``row_done`` after each row read, so that a row spanning lines is bounded too."""

    def __init__(self, f, path: str):
        self.f, self.path, self.line, self.first, self.chars = f, path, 0, 0, 0

    def __iter__(self):
        return self

    def row_done(self) -> None:
        self.chars = 0

    def __next__(self) -> str:
        limit = CSV_LINE_LIMIT
        # Two more: a line of the limit and its CRLF is read whole, so that a cut cannot fall
        # between CR and LF (the LF would read as a blank line).
        text = self.f.readline(limit + 2)
        if not text:
            raise StopIteration
        self.line += 1
        if not self.chars:
            self.first = self.line
        self.chars += len(text.rstrip("\r\n")) or 1  # or 1: a blank line inside a quoted cell
        if self.chars > limit:
            if self.first == self.line:
                raise CsvError(f"{self.path}: line {self.line} is longer than {limit} characters, the bound on a "
                               f"line of a .csv file")
            raise CsvError(f"{self.path}: lines {self.first} to {self.line}, one row (a quoted cell spans lines), "
                           f"are longer than {limit} characters, the bound on a row of a .csv file")
        return text


def _show(cell: str) -> str:
    return repr(cell if len(cell) <= 40 else cell[:37] + "...")


def _cells(n: int) -> str:
    return f"{n} cell" if n == 1 else f"{n} cells"


def _separator_hint(cells) -> str:
    for sep, name in ((";", "';'"), ("\t", "a tab"), ("|", "'|'")):
        if any(sep in c for c in cells):
            return f"; cells must be separated by commas, not {name}"
    return ""


def _read_csv(path: str, header: bool | None) -> tuple[np.ndarray, bool]:
    """Parsed by hand (csv module + float), so that every fault is one message naming the file,
    line and column, and nothing is printed (np.loadtxt warns on empty files)."""
    values = array.array("d")
    width = first = None  # cells per row, and the line that set it
    n_rows = 0
    blank = None  # the first of a run of blank lines, an error unless only blank lines follow
    head = None  # the cells of the header line, if one was skipped
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            lines = _Lines(f, path)
            reader = csv.reader(lines, delimiter=",", quotechar='"', skipinitialspace=True, strict=False)
            for row in reader:
                lines.row_done()
                line = reader.line_num
                if not row or (len(row) == 1 and not row[0].strip()):
                    blank = blank or line
                    continue
                if blank is not None:
                    raise CsvError(
                        f"{path}: line {blank} is blank (in a one-column file, a missing value); "
                        f"blank lines are allowed only at the end"
                    )
                if width is None:  # the first line: a header or the first row of data
                    if header or (header is None and not any(map(_is_number, row))):
                        head, width, first = row, len(row), line
                        continue
                elif len(row) != width:
                    what = f"the header (line {first})" if head is not None else f"line {first}"
                    raise CsvError(
                        f"{path}: line {line} has {_cells(len(row))}, {what} has {width}{_separator_hint(row)}"
                    )
                if not all(map(_is_number, row)):
                    raise _cell_error(path, line, row, auto_first=header is None and width is None)
                values.extend(map(float, row))
                if width is None:
                    width, first = len(row), line
                n_rows += 1
    except UnicodeDecodeError as e:
        raise CsvError(f"{path}: not UTF-8 text ({e})") from None
    except csv.Error as e:
        raise CsvError(f"{path}: line {reader.line_num}: not CSV text ({e})") from None
    if n_rows == 0:
        if head is None:
            raise CsvError(f"{path}: the file is empty (no data rows)")
        why = "" if header else ", taken as a header because none of its cells is a number"
        raise CsvError(f"{path}: no data rows, only a header line {first}{why}{_separator_hint(head)}")
    return np.frombuffer(values, dtype=np.float64).reshape(n_rows, width), head is not None


def _cell_error(path: str, line: int, row: list[str], auto_first: bool) -> CsvError:
    for column, cell in enumerate(row, 1):
        if _is_number(cell):
            continue
        where = f"{path}: line {line}, column {column}"
        if not cell.strip():
            return CsvError(f"{where}: empty cell (a missing value)")
        what = f"{_show(cell.strip())} is not a number"
        if _float_would_take(cell):
            what = (f"{_show(cell.strip())} is not a plain decimal number (ASCII digits 0-9, an optional sign, "
                    f"point and exponent; no '_')")
        if auto_first:
            return CsvError(
                f"{where}: {what} but other cells of the line are, so it is neither "
                f"a header nor data: say which with header=True/False (rda-ext: --header/--no-header)"
            )
        return CsvError(f"{where}: {what}{_separator_hint([cell])}")
    raise AssertionError("unreachable: a cell is not a number but each is")


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
