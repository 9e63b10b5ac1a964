"""The CSV parser of ``read_matrix``: numbers only, every fault one message naming the file, the
line and the column."""

from __future__ import annotations

import array
import csv
import re

import numpy as np


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


def read_csv(path: str, header: bool | None) -> tuple[np.ndarray, bool]:
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

