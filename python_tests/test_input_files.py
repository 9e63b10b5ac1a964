"""Reading inputs (read_matrix and the CLI): the quirks of real .csv files round-trip exactly, the
header rule, and every malformed file (.csv, .npy, .npz, empty, special) is one ValueError (or
OSError) naming the file (line and column where there is one), with no numpy warning and nothing
printed."""

import io
import os
import re
import subprocess
import sys
import threading
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_cli import assert_user_error, run_main

from rda_ext.io import csv as csv_parser
from rda_ext.io.readers import read_matrix

TINY = ["--hidden", "4", "--outer-iter", "1", "--inner-epochs", "1", "--batch-size", "8",
        "--output-activation", "linear", "--device", "cpu"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


PLAIN_NUMBER = re.compile(r"[ \t]*[-+]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][-+]?[0-9]+)?[ \t]*"
                          r"|[ \t]*[-+]?(inf|infinity|nan)[ \t]*", flags=re.IGNORECASE | re.ASCII)


def is_number(text: str) -> bool:
    """A cell the reader takes for a number: a plain ASCII decimal one (or inf/nan), spaces or
    tabs around it; not everything float() takes ('1_000', '٣', Unicode spaces)."""
    return PLAIN_NUMBER.fullmatch(text) is not None


def read_quietly(path, **kwargs):
    """read_matrix, failing on any warning: the errors must come as exceptions, never as warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            return read_matrix(path, **kwargs)
        finally:
            assert not caught, [str(w.message) for w in caught]


def exact(v) -> str:
    """The shortest text that reads back as exactly ``v``."""
    return repr(float(v))


def write(path, text: str, bom: bool = False) -> str:
    with open(path, "wb") as f:
        f.write((b"\xef\xbb\xbf" if bom else b"") + text.encode())
    return str(path)


# -- what a CSV writer may do -----------------------------------------------------------------------

finite = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=True)
matrices = hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=6), elements=finite)
names = st.from_regex(r"[A-Za-z_][A-Za-z0-9_ .,;-]{0,8}", fullmatch=True).filter(lambda s: not is_number(s))
spaces = st.sampled_from(["", " ", "  "])


@st.composite
def cell_text(draw, value: float) -> str:
    """A cell holding ``value`` exactly, written as some tool would: repr or %.17g, maybe quoted,
    maybe padded with spaces."""
    number = draw(st.sampled_from([exact, lambda v: "%.17g" % v, lambda v: "%.17e" % v]))(value)
    if draw(st.booleans()):
        number = f'"{number}"'
    return draw(spaces) + number + draw(spaces)


def quote(name: str) -> str:
    return f'"{name}"' if "," in name or name != name.strip() else name


@st.composite
def csv_files(draw):
    """(text, bom, matrix, header cells or None) of a well-formed CSV file with random quirks."""
    X = draw(matrices)
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    header = None
    if draw(st.booleans()):
        # Header cells: names (quoted when they hold commas), some maybe empty, never all empty
        # in one column (that is a blank line).
        header = draw(st.lists(st.one_of(names, st.just("")), min_size=X.shape[1], max_size=X.shape[1]))
        assume(any(header) or X.shape[1] > 1)
    lines = [",".join(quote(h) for h in header)] if header is not None else []
    lines += [",".join(draw(cell_text(v)) for v in row) for row in X]
    blank = draw(st.lists(st.sampled_from(["", " ", "\t"]), max_size=3))  # trailing blank lines
    end = newline + "".join(b + newline for b in blank) if blank or draw(st.booleans()) else ""
    return newline.join(lines) + end, draw(st.booleans()), X, header


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype == np.float64 and a.shape == b.shape and a.tobytes() == b.tobytes()


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("csv")


@SETTINGS
@given(f=csv_files())
def test_quirky_files_round_trip_exactly(folder, f):
    text, bom, X, header = f
    path = write(folder / "m.csv", text, bom)
    A, skipped = read_quietly(path, return_header=True)
    assert skipped == (header is not None)
    assert same_bits(A, X), (text, A, X)
    # The explicit option gives the same matrix; the wrong one does not read silently.
    assert same_bits(read_quietly(path, header=header is not None), X)
    if header is not None:
        with pytest.raises(ValueError, match=r"m\.csv: line 1, column \d+: (empty cell|.* is not a number)"):
            read_quietly(path, header=False)
    elif len(X) > 1:
        assert same_bits(read_quietly(path, header=True), X[1:])


@SETTINGS
@given(X=matrices, first=st.lists(st.one_of(finite.map(exact), names), min_size=1, max_size=6), bom=st.booleans())
def test_header_rule(folder, X, first, bom):
    """The first line is a header if none of its cells is a number; one mixing numbers and text
    is an error naming line 1, unless header= says what it is."""
    first = [c for c in first if c.strip()] or ["x"]
    X = np.resize(X, (X.shape[0], len(first)))
    text = "\n".join([",".join(quote(c) for c in first), *(",".join(map(exact, row)) for row in X)]) + "\n"
    path = write(folder / "h.csv", text, bom)
    numeric = [is_number(c) for c in first]
    if all(numeric):
        assert same_bits(read_quietly(path), np.vstack([np.array(first, dtype=np.float64), X]))
    elif not any(numeric):
        assert same_bits(read_quietly(path), X)
    else:
        with pytest.raises(ValueError, match=r"h\.csv: line 1, column \d+: .* neither a header nor data"):
            read_quietly(path)
    assert same_bits(read_quietly(path, header=True), X)
    if not all(numeric):
        column = numeric.index(False) + 1
        with pytest.raises(ValueError, match=rf"h\.csv: line 1, column {column}: .* is not a number"):
            read_quietly(path, header=False)


# -- malformed files ----------------------------------------------------------------------------

bad_cells = st.one_of(
    st.sampled_from(["", " ", "NA", "n/a", "abc", "1;2", "1.2.3", "--", "1e", "0x1F", "'3'", "\t", "?", "1 2"]),
    st.text(st.characters(blacklist_characters=',"\r\n', blacklist_categories=("Cs",)), max_size=6),
).filter(lambda s: not is_number(s))


@SETTINGS
@given(X=matrices, data=st.data(), bad=bad_cells, header=st.booleans(), bom=st.booleans(),
       newline=st.sampled_from(["\n", "\r\n"]), option=st.sampled_from([None, "explicit"]))
def test_a_bad_cell_is_named_by_line_and_column(folder, X, data, bad, header, bom, newline, option):
    """An empty or non-numeric cell anywhere is an error naming the file, its line and column:
    never a silent NaN, never a dropped row."""
    n, d = X.shape
    i, j = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, d - 1))
    cells = [[exact(v) for v in row] for row in X]
    cells[i][j] = bad
    lines = [",".join(f"c{k}" for k in range(d))] if header else []
    lines += [",".join(row) for row in cells]
    path = write(folder / "b.csv", newline.join(lines) + newline, bom)
    line, column = i + 1 + header, j + 1
    kwargs = {"header": header} if option else {}
    blank_line = d == 1 and not bad.strip()  # in one column, a missing value is a blank line
    if (blank_line and i == n - 1) or (d == 1 and i == 0 and not header and not option and not blank_line):
        # A blank last line is a trailing blank line, allowed; a first line with no number is,
        # by the rule, a header. Either way the row is not read, and the rest is.
        rest = X[:-1] if blank_line else X[1:]
        if len(rest):
            assert same_bits(read_quietly(path, **kwargs), rest)
        else:
            with pytest.raises(ValueError, match=r"b\.csv: (the file is empty|no data rows)"):
                read_quietly(path, **kwargs)
        return
    with pytest.raises(ValueError) as e:
        read_quietly(path, **kwargs)
    message = str(e.value)
    assert message.startswith(f"{path}: line {line}"), message
    if blank_line:
        assert f"line {line} is blank" in message
    else:
        assert f"line {line}, column {column}: " in message
        assert ("empty cell" in message) == (not bad.strip()), message


@SETTINGS
@given(X=matrices, data=st.data(), extra=st.sampled_from([-1, 1, 2]), header=st.booleans())
def test_rows_of_unequal_length_are_named(folder, X, data, extra, header):
    n, d = X.shape
    assume(n > 1 and d + extra > 0)
    i = data.draw(st.integers(1, n - 1))
    rows = [[exact(v) for v in row] for row in X]
    rows[i] = (rows[i] + ["1"] * extra)[: d + extra]
    lines = ([",".join(f"c{k}" for k in range(d))] if header else []) + [",".join(r) for r in rows]
    path = write(folder / "r.csv", "\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=rf"r\.csv: line {i + 1 + header} has {d + extra} cells?, .*has {d}"):
        read_quietly(path)


MALFORMED = {
    "empty": ("", "the file is empty"),
    "only blank lines": ("\n \r\n\n", "the file is empty"),
    "header only": ("a,b,c\n", "no data rows, only a header line 1"),
    "header only, BOM, CRLF": ("\ufeffa,b,c\r\n\r\n", "no data rows, only a header line 1"),
    "semicolons": ("1;2;3\n", "not ';'"),
    "semicolons, two lines": ("1;2;3\n4;5;6\n", "line 2, column 1: '4;5;6' is not a number"),
    "tabs": ("1\t2\n3\t4\n", "not a tab"),
    "one column of text": ("a\nb\nc\n", "line 2, column 1: 'b' is not a number"),
    "ragged": ("1,2,3\n4,5\n", "line 2 has 2 cells, line 1 has 3"),
    "one cell short": ("1,2\n4\n", "line 2 has 1 cell, line 1 has 2"),
    "a long text cell": ("1,2\n3," + "x" * 41 + "\n", "'" + "x" * 37 + "...'"),
    "a text cell of 40": ("1,2\n3," + "y" * 40 + "\n", "'" + "y" * 40 + "'"),
    "ragged after a header": ("x,y\n1,2\n3,4,5\n", "line 3 has 3 cells, the header (line 1) has 2"),
    "empty cell": ("1,2\n3,\n", "line 2, column 2: empty cell"),
    "empty cell in line 1": ("1,,3\n", "line 1, column 2: empty cell"),
    "text cell": ("1,2\n3,abc\n", "line 2, column 2: 'abc' is not a number"),
    "mixed first line": ("id,2019\n1,2\n", "line 1, column 1: 'id' is not a number"),
    "blank line inside": ("1\n\n3\n", "line 2 is blank"),
    "not UTF-8": (b"\xe9t\xe9,a\n1,2\n", "not UTF-8 text"),
}


@pytest.mark.parametrize("which", ["npy", "npz"])
def test_a_backslash_in_a_header_is_a_value_error_not_a_warning(tmp_path, which):
    # Found by the damage test above: numpy warned of an invalid escape sequence while parsing.
    buf = io.BytesIO()
    np.save(buf, np.arange(6.0).reshape(2, 3))
    raw = buf.getvalue().replace(b"'<f8'", b"'\\e8'", 1)
    path = tmp_path / f"d.{which}"
    if which == "npy":
        path.write_bytes(raw)
    else:
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("X.npy", raw)
    with pytest.raises(ValueError, match=re.escape(str(path))):
        read_quietly(path)


@pytest.mark.parametrize("name", MALFORMED)
def test_malformed_files_are_one_error_naming_the_file(tmp_path, capfd, name):
    content, message = MALFORMED[name]
    path = tmp_path / "bad.csv"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(ValueError) as e:
        read_quietly(path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value), str(e.value)
    assert capfd.readouterr() == ("", "")  # nothing printed, not even by C code


alphabet = st.sampled_from(list("0123456789.,,,-+eE \t\r\n\n\";ainfINF\ufeff#x") + ["\r\n", "nan", "1e400", "\x00"])


@settings(max_examples=300, deadline=None)
@given(text=st.lists(alphabet, max_size=40).map("".join), bom=st.booleans(), header=st.sampled_from([None, True, False]))
def test_any_text_reads_or_fails_with_a_value_error_naming_the_file(tmp_path_factory, text, bom, header):
    """Fuzz: whatever the text, a float64 matrix with a row per non-header line, or a ValueError
    naming the file; no other exception, no warning."""
    path = write(tmp_path_factory.getbasetemp() / "fuzz.csv", text, bom)
    try:
        A = read_quietly(path, header=header)
    except ValueError as e:
        assert str(e).startswith(f"{path}: "), str(e)
        return
    assert A.dtype == np.float64 and A.ndim == 2 and A.size > 0
    assert len(A) <= text.count("\n") + text.count("\r") + 1


@pytest.mark.parametrize("ext", [".npy", ".npz"])
def test_npy_and_npz_are_unchanged_and_have_no_header(tmp_path, ext):
    X = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    path = tmp_path / f"x{ext}"
    np.save(path, X) if ext == ".npy" else np.savez(path, X=X)
    A, skipped = read_matrix(path, return_header=True)
    assert skipped is None and A.dtype == np.float32 and np.array_equal(A, X.reshape(2, 12))
    for header in (True, False):
        with pytest.raises(ValueError, match=rf"x\{ext}: .*applies to \.csv files only"):
            read_matrix(path, header=header)


def test_header_must_be_none_true_or_false(tmp_path):
    with pytest.raises(ValueError, match="header must be None, True or False"):
        read_matrix(write(tmp_path / "x.csv", "1\n"), header="yes")


# -- the command line ---------------------------------------------------------------------------

@pytest.fixture
def matrix(gen):
    return np.random.default_rng(int(gen.initial_seed())).normal(size=(20, 3))


@pytest.mark.parametrize("name", ["empty", "header only", "semicolons", "empty cell", "mixed first line", "ragged"])
def test_fit_on_a_bad_csv_is_one_line_exit_2_and_no_output(tmp_path, capsys, name):
    content, message = MALFORMED[name]
    bad = write(tmp_path / "bad.csv", content)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err = run_main(capsys, "fit", bad, "--out", tmp_path / "r.npz", *TINY)
    assert not caught, [str(w.message) for w in caught]
    assert_user_error(code, err, f"{bad}: ")
    assert message in err and out == ""
    assert sorted(os.listdir(tmp_path)) == ["bad.csv"]


@pytest.mark.child_process
def test_fit_on_an_empty_csv_in_a_subprocess(tmp_path):
    """The real command, so that a warning printed by numpy (3 stderr lines) would show."""
    bad = write(tmp_path / "bad.csv", "")
    result = subprocess.run([sys.executable, "-m", "rda_ext", "fit", bad, "--out", str(tmp_path / "r.npz"), *TINY],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.splitlines() == [f"rda-ext: error: {bad}: the file is empty (no data rows)"]
    assert not (tmp_path / "r.npz").exists()


def test_fit_and_score_report_the_rows_read(tmp_path, capsys, matrix):
    capsys.readouterr()  # the seed printed by the gen fixture
    text = "\r\n".join(["a,b,c", *(",".join(map(exact, row)) for row in matrix)]) + "\r\n\r\n"
    with_header = write(tmp_path / "h.csv", text, bom=True)
    code, out, err = run_main(capsys, "fit", with_header, "--out", tmp_path / "r.npz", "--model", tmp_path / "m.pt", *TINY)
    assert code == 0, err
    assert out.startswith(f"20 rows x 3 features read from {with_header} (header: yes), network 3-4, 1 outer iterations")
    with np.load(tmp_path / "r.npz") as res:
        assert res["L"].shape == res["S"].shape == (20, 3)

    # A BOM before a number: data, not a header (the first row used to be dropped).
    no_header = write(tmp_path / "n.csv", "\n".join(",".join(map(exact, row)) for row in matrix), bom=True)
    code, out, err = run_main(capsys, "score", tmp_path / "m.pt", no_header, "--out", tmp_path / "s.npz")
    assert code == 0, err
    assert out.startswith(f"20 rows scored (3 features read from {no_header} (header: no)), ")
    with np.load(tmp_path / "s.npz") as s:
        assert s["scores"].shape == (20,)

    # --header skips a numeric first line; --no-header refuses a text one, naming it.
    code, out, err = run_main(capsys, "score", tmp_path / "m.pt", no_header, "--header", "--out", tmp_path / "s.npz")
    assert code == 0 and out.startswith(f"19 rows scored (3 features read from {no_header} (header: yes)), "), err
    code, _, err = run_main(capsys, "fit", with_header, "--no-header", "--out", tmp_path / "q.npz", *TINY)
    assert_user_error(code, err, f"{with_header}: line 1, column 1: 'a' is not a number")
    np.save(tmp_path / "x.npy", matrix)
    code, out, err = run_main(capsys, "fit", tmp_path / "x.npy", "--out", tmp_path / "q.npz", *TINY)
    assert code == 0 and out.startswith(f"20 rows x 3 features read from {tmp_path / 'x.npy'}, network 3-4, 1 outer"), err
    code, _, err = run_main(capsys, "fit", tmp_path / "x.npy", "--header", "--out", tmp_path / "q.npz", *TINY)
    assert_user_error(code, err, "applies to .csv files only")



@pytest.mark.parametrize("text, header, message", [
    ("a,b\n", None, "no data rows, only a header line 1, taken as a header because none of its cells is a number"),
    ("a,b\n", True, "no data rows, only a header line 1"),
    ("a;b\n", None, "no data rows, only a header line 1, taken as a header because none of its cells is a number; "
     "cells must be separated by commas, not ';'"),
    ("1,2\n3|4\n", None, "line 2 has 1 cell, line 1 has 2; cells must be separated by commas, not '|'"),
    ("1,2\n3\t4\n", None, "line 2 has 1 cell, line 1 has 2; cells must be separated by commas, not a tab"),
    ("1,2\n3\n", None, "line 2 has 1 cell, line 1 has 2"),
    ("1," + "2" * 200_000 + "\n", None, "line 1: not CSV text (field larger than field limit (131072))"),
], ids=[f"csv{i}" for i in range(7)])
def test_csv_messages_in_full(tmp_path, text, header, message):
    path = write(tmp_path / "x.csv", text)
    with pytest.raises(ValueError) as e:
        read_quietly(path, header=header)
    assert str(e.value) == f"{path}: {message}"


def test_npy_and_npz_messages_in_full(tmp_path):
    a = np.arange(6.0).reshape(2, 3)
    np.savez(tmp_path / "two.npz", a=a, b=a)
    np.savez(tmp_path / "none.npz")
    np.save(tmp_path / "obj.npy", np.array([[1, "x"]], dtype=object), allow_pickle=True)
    (tmp_path / "x.txt").write_text("1\n")
    (tmp_path / "noext").write_text("1\n")
    cases = [
        (tmp_path / "x.txt", None, "unsupported file type '.txt'; use one of .npy, .npz, .csv"),
        (tmp_path / "noext", None, "unsupported file type '(none)'; use one of .npy, .npz, .csv"),
        (tmp_path / "two.npz", None, "cannot read: it holds the arrays a, b: choose one with --key"),
        (tmp_path / "none.npz", None, "cannot read: it holds no arrays"),
        (tmp_path / "two.npz", "c", "cannot read: it has no array 'c' (it holds a, b)"),
        (tmp_path / "obj.npy", None, "cannot read: Object arrays cannot be loaded when allow_pickle=False"),
    ]
    for path, key, message in cases:
        with pytest.raises(ValueError) as e:
            read_matrix(path, key)
        assert str(e.value) == f"{path}: {message}"


def test_big_endian_integers_keep_their_type(tmp_path):
    np.save(tmp_path / "be.npy", np.arange(6, dtype=">i4").reshape(2, 3))
    a = read_matrix(tmp_path / "be.npy")
    assert a.dtype == np.dtype("=i4") and a.tolist() == [[0, 1, 2], [3, 4, 5]]


# -- what counts as a number ----------------------------------------------------------------------

@pytest.mark.parametrize("cell", ["1_000", "٣", "１", "\u00a01", "1\u2003", "1e1_0", "ınf", "0x1F", "1e", "+-1", "."])
def test_only_plain_ascii_numbers_are_numbers(tmp_path, cell):
    """Some of these float() takes; a .csv reader does not: line and column named, and a hint where
    float() would have taken it."""
    path = write(tmp_path / "x.csv", f"1,2\n3,{cell}\n")
    with pytest.raises(ValueError) as e:
        read_quietly(path)
    assert str(e.value).startswith(f"{path}: line 2, column 2: "), str(e.value)
    try:
        float(cell)
    except ValueError:
        assert "is not a number" in str(e.value)
    else:
        assert "is not a plain decimal number" in str(e.value)


@pytest.mark.parametrize("first, skipped", [("١,٢", True), ("1_0,x", True), ("٣,5", False), ("nan,inf", False)])
def test_the_header_rule_uses_the_same_numbers(tmp_path, first, skipped):
    """A first line of no plain number is a header (digits of other scripts included); one that
    mixes them with plain numbers is neither."""
    path = write(tmp_path / "h.csv", f"{first}\n1,2\n")
    if first.startswith("٣"):
        with pytest.raises(ValueError, match=r"h\.csv: line 1, column 1: '٣' is not a plain decimal number .* neither"):
            read_quietly(path)
        return
    A, was_skipped = read_quietly(path, return_header=True)
    assert was_skipped == skipped and len(A) == (1 if skipped else 2)


@pytest.mark.parametrize("cell", ["+1", "-.5", "7.", "1E+05", " 1 ", "\t2", "  -3e-2\t", "inf", "-Infinity", "NaN", "+nan",
                                  "1e400", '"4"', '" 5 "'])
def test_plain_numbers_read_as_float_reads_them(tmp_path, cell):
    A = read_quietly(write(tmp_path / "x.csv", f"1,{cell}\n"))
    assert A.tolist()[0][0] == 1 and same_bits(A[:, 1], np.array([float(cell.strip().strip('"'))]))


@settings(max_examples=300, deadline=None)
@given(cell=st.text(st.sampled_from(list("0123456789+-.eE_ \tinfaINFA") + ["٣", "１", "\u00a0", "\u2003", "ı", "x"]),
                    min_size=1, max_size=8).filter(lambda c: c.strip()))
def test_a_cell_is_a_number_exactly_when_it_is_plain(tmp_path_factory, cell):
    path = write(tmp_path_factory.getbasetemp() / "cell.csv", f"0,{cell}\n")
    if is_number(cell):
        assert same_bits(read_quietly(path, header=False)[0, 1:], np.array([float(cell)]))
    else:
        with pytest.raises(ValueError, match=r"cell\.csv: line 1, column 2: "):
            read_quietly(path, header=False)


# -- .npy and .npz files that are not what they say ---------------------------------------------

def npy_bytes(a) -> bytes:
    f = io.BytesIO()
    np.save(f, a, allow_pickle=True)
    return f.getvalue()


def with_shape(data: bytes, shape: str) -> bytes:
    """``data``, an .npy of shape (2, 3), with its header's shape text replaced, the header length kept."""
    end = data.index(b"\n")
    header = data[:end].replace(b"(2, 3)", shape.encode())
    return header[:end].ljust(end) + data[end:]


def zip_of(members: dict, compression=zipfile.ZIP_STORED) -> bytes:
    f = io.BytesIO()
    with zipfile.ZipFile(f, "w", compression) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return f.getvalue()


GOOD = npy_bytes(np.arange(6.0).reshape(2, 3))
DEFLATED = bytearray(zip_of({"X.npy": npy_bytes(np.random.default_rng(0).random((50, 4)))}, zipfile.ZIP_DEFLATED))
DEFLATED[100:140] = bytes(40)  # inside the compressed data

BAD_NPZ = {
    "a member of some bytes": (zip_of({"X.npy": b"some bytes"}), "the member X.npy is not a valid .npy array: it does "
                               "not start with the .npy magic string"),
    "a member that is not .npy": (zip_of({"X.txt": b"1,2\n"}), "the member X.txt is not a valid .npy array"),
    "an empty member": (zip_of({"X.npy": b""}), "the member X.npy is not a valid .npy array: it is empty"),
    "a truncated member": (zip_of({"X.npy": GOOD[:-10]}), "the member X.npy is not a valid .npy array: truncated: "
                           "the header declares an array of shape (2, 3) and dtype float64, 48 bytes, but 38"),
    "a member cut in its header": (zip_of({"X.npy": GOOD[:20]}), "the member X.npy is not a valid .npy array: "),
    "a member of a huge shape": (zip_of({"X.npy": with_shape(GOOD, "(9999999999999, 3)")}),
                                 "the member X.npy is not a valid .npy array: truncated: the header declares an "
                                 "array of shape (9999999999999, 3)"),
    "a member of a damaged header": (zip_of({"X.npy": with_shape(GOOD, "(2, 3")}),
                                     "the member X.npy is not a valid .npy array: cannot parse the header"),
    "an object member": (zip_of({"X.npy": npy_bytes(np.array([[1, "x"]], dtype=object))}),
                         "the member X.npy is not a valid .npy array: Object arrays cannot be loaded when "
                         "allow_pickle=False"),
    "damaged compressed data": (bytes(DEFLATED), "the member X.npy is not a valid .npy array: "),
    "an empty zip": (zip_of({}), "cannot read: it holds no arrays"),
    "an empty file": (b"", "not an .npz file (a zip archive of .npy files): it is empty"),
    "an .npy named .npz": (GOOD, "not an .npz file (a zip archive of .npy files): it is an .npy file"),
    "text": (b"1,2\n3,4\n", "not an .npz file (a zip archive of .npy files): it does not start with the signature"),
    "a truncated zip": (zip_of({"X.npy": GOOD})[:-30], "a damaged or truncated zip archive"),
}


@pytest.mark.parametrize("name", BAD_NPZ)
def test_a_malformed_npz_is_one_error_naming_the_file_and_member(tmp_path, capfd, name):
    content, message = BAD_NPZ[name]
    path = tmp_path / "X.npz"
    path.write_bytes(content)
    for shard in (None, (0, 2)):
        with pytest.raises(ValueError) as e:
            read_quietly(path, shard=shard)
        assert str(e.value).startswith(f"{path}: cannot read: ") and message in str(e.value), str(e.value)
        assert "\n" not in str(e.value)
    assert capfd.readouterr() == ("", "")


BAD_NPY = {
    "an empty file": (b"", "not an .npy file: it is empty"),
    "text": (b"1,2\n3,4\n", "not an .npy file: it does not start with the .npy magic string"),
    "a pickle": (b"\x80\x04K\x01.", "not an .npy file: it does not start with the .npy magic string"),
    "an .npz named .npy": (zip_of({"X.npy": GOOD}), "not an .npy file: it is a zip archive (an .npz file?)"),
    "truncated data": (GOOD[:-10], "truncated: the header declares an array of shape (2, 3) and dtype float64, "
                       "48 bytes, but 38 bytes follow it"),
    "a huge shape": (with_shape(GOOD, "(9999999999999, 3)"), "truncated: the header declares an array of shape "
                     "(9999999999999, 3)"),
    "a negative shape": (with_shape(GOOD, "(-1, 3)"), "the header declares a negative shape (-1, 3)"),
    "a damaged header": (with_shape(GOOD, "(2, 3"), "cannot parse the header"),
    "cut in its header": (GOOD[:20], "cannot read: "),
}


@pytest.mark.parametrize("name", BAD_NPY)
def test_a_malformed_npy_is_one_error_naming_the_file(tmp_path, capfd, name):
    content, message = BAD_NPY[name]
    path = tmp_path / "X.npy"
    path.write_bytes(content)
    for shard in (None, (0, 2)):  # sharded: through a memory map
        with pytest.raises(ValueError) as e:
            read_quietly(path, shard=shard)
        assert str(e.value).startswith(f"{path}: cannot read: ") and message in str(e.value), str(e.value)
    assert capfd.readouterr() == ("", "")


@settings(max_examples=200, deadline=None)
@given(which=st.sampled_from(["npy", "npz", "compressed"]), edits=st.lists(
    st.tuples(st.sampled_from(["set", "cut", "insert"]), st.floats(0, 1, exclude_max=True), st.binary(min_size=1, max_size=4)),
    min_size=1, max_size=4), shard=st.sampled_from([None, (1, 2)]))
def test_any_damage_to_npy_or_npz_reads_or_is_a_value_error_naming_the_file(tmp_path_factory, which, edits, shard):
    """Fuzz: a damaged file reads as a matrix or fails with a ValueError naming the file; never
    another exception, nor an allocation of the size a damaged header declares."""
    a = np.random.default_rng(0).random((10, 3))
    f = io.BytesIO()
    {"npy": np.save, "npz": np.savez, "compressed": np.savez_compressed}[which](f, a)
    data = bytearray(f.getvalue())
    for op, where, b in edits:
        i = int(where * len(data))
        if op == "set":
            data[i:i + len(b)] = b
        elif op == "cut":
            del data[i:]
        else:
            data[i:i] = b
        if not data:
            break
    path = tmp_path_factory.getbasetemp() / ("d.npy" if which == "npy" else "d.npz")
    path.write_bytes(bytes(data))
    try:
        A = read_quietly(path, shard=shard)
    except ValueError as e:
        assert str(e).startswith(f"{path}: "), str(e)
        return
    assert A.ndim == 2 and A.size > 0


# -- empty matrices and shards --------------------------------------------------------------------

def save_as(path, a):
    if path.suffix == ".npy":
        np.save(path, a)
    elif path.suffix == ".npz":
        np.savez(path, X=a)
    else:
        path.write_text("\n".join(",".join(map(exact, row)) for row in a) + "\n")
    return path


@pytest.mark.parametrize("ext", [".npy", ".npz"])
@pytest.mark.parametrize("shape, message", [((0, 5), "no rows (shape (0, 5))"), ((0, 0), "no rows (shape (0, 0))"),
                                            ((5, 0), "no features (shape (5, 0))"), ((0, 2, 3), "no rows (shape (0, 2, 3))"),
                                            ((3, 0, 2), "no features (shape (3, 0, 2))")])
def test_no_rows_or_no_features_is_named(tmp_path, ext, shape, message):
    path = save_as(tmp_path / f"X{ext}", np.zeros(shape))
    for shard in (None, (0, 1), (1, 4)):
        with pytest.raises(ValueError) as e:
            read_quietly(path, shard=shard)
        assert str(e.value) == f"{path}: {message}"


@pytest.mark.parametrize("text, message", [("", "the file is empty (no data rows)"),
                                           ("\n\n", "the file is empty (no data rows)"),
                                           ("a,b\n", "no data rows, only a header line 1")])
def test_an_empty_csv_is_named_sharded_or_not(tmp_path, text, message):
    path = write(tmp_path / "X.csv", text)
    for shard in (None, (2, 4)):
        with pytest.raises(ValueError) as e:
            read_quietly(path, shard=shard)
        assert str(e.value).startswith(f"{path}: {message}")


@pytest.mark.parametrize("ext", [".npy", ".npz", ".csv"])
def test_fewer_rows_than_ranks_fails_alike_on_every_rank(tmp_path, ext):
    """Every rank, not only those left without rows, fails, with the same message: none of them
    then waits for the others in a collective."""
    path = save_as(tmp_path / f"X{ext}", np.arange(6.0).reshape(3, 2))
    for world, which in ((4, "rank 0"), (8, "5 ranks (0, 1, 3, 4, 6)"), (11, "8 ranks (0, 1, 2, 4, 5, 6, 8, 9)"),
                         (12, "9 ranks (0, 1, 2, 4, 5, 6, 8, 9, ...)"), (30, "27 ranks (0, 1, 2, 3, 4, 5, 6, 7, ...)")):
        messages = set()
        for rank in range(world):
            with pytest.raises(ValueError) as e:
                read_quietly(path, shard=(rank, world))
            messages.add(str(e.value))
        assert messages == {f"{path}: 3 rows cannot be split over {world} ranks: {which} would have none; run at most 3"}
    parts = [read_quietly(path, shard=(rank, 3)) for rank in range(3)]  # as many rows as ranks: one each
    assert [p.tolist() for p in parts] == [[[0, 1]], [[2, 3]], [[4, 5]]]


@pytest.mark.parametrize("shard", [(4, 4), (-1, 4), (0, 0)])
def test_a_rank_outside_the_world_is_refused(tmp_path, shard):
    path = save_as(tmp_path / "X.npy", np.zeros((8, 2)))
    with pytest.raises(ValueError, match=r"shard=\(.*\): expected \(rank, world\) with 0 <= rank < world"):
        read_matrix(path, shard=shard)


# -- what is not a regular file -------------------------------------------------------------------

@pytest.fixture
def fifo(tmp_path):
    """A FIFO maker; a writer waits on each one, so that a reader that opens it (which the checks
    must not) is not left blocked: the test then fails on ``opened`` instead of hanging."""
    made = []

    def make(name):
        path = tmp_path / name
        os.mkfifo(path)
        opened = threading.Event()

        def writer():
            fd = os.open(path, os.O_WRONLY)  # returns once a reader opens it
            opened.set()
            os.close(fd)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        made.append((path, thread))
        return path, opened

    yield make
    for path, thread in made:
        reader = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # open while the writer opens: it returns
        try:
            thread.join()
        finally:
            os.close(reader)


@pytest.mark.parametrize("ext", [".npy", ".npz", ".csv"])
def test_a_fifo_is_refused_without_opening_it(fifo, ext):
    path, opened = fifo(f"X{ext}")
    for shard in (None, (0, 2)):
        with pytest.raises(ValueError) as e:
            read_matrix(path, shard=shard)
        assert str(e.value) == f"{path}: not a regular file but a FIFO; only regular files are read"
    if ext == ".npz":  # not even when asked to: a zip archive is read by seeking
        with pytest.raises(ValueError, match=r"X\.npz: not a regular file but a FIFO; an \.npz file must be a regular"):
            read_matrix(path, allow_special=True)
    assert not opened.is_set()


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
@pytest.mark.parametrize("ext", [".npy", ".npz", ".csv"])
def test_a_symlink_to_a_device_is_refused(tmp_path, ext):
    path = tmp_path / f"X{ext}"
    path.symlink_to("/dev/zero")
    with pytest.raises(ValueError) as e:
        read_matrix(path)
    assert str(e.value) == f"{path}: not a regular file but a character device (/dev/zero); only regular files are read"


@pytest.mark.parametrize("ext", [".npy", ".npz", ".csv"])
def test_a_folder_is_refused_even_when_special_files_are_allowed(tmp_path, ext):
    path = tmp_path / f"X{ext}"
    path.mkdir()
    for allow_special in (False, True):
        with pytest.raises(IsADirectoryError) as e:
            read_matrix(path, allow_special=allow_special)
        assert str(e.value) == f"{path}: a folder, not a file"


def test_a_symlink_to_a_regular_file_is_read(tmp_path):
    target = save_as(tmp_path / "real.npy", np.ones((2, 2)))
    (tmp_path / "link.npy").symlink_to(target)
    assert read_matrix(tmp_path / "link.npy").tolist() == [[1, 1], [1, 1]]


def _pipe(path, data: bytes):
    """A FIFO at ``path`` and a thread that writes ``data`` into it; join the thread after reading."""
    os.mkfifo(path)

    def writer():
        with open(path, "wb") as f:
            f.write(data)

    thread = threading.Thread(target=writer)
    thread.start()
    return thread


def test_allow_special_reads_a_pipe(tmp_path):
    """For a Python caller feeding a FIFO: .csv and .npy (read as a stream, a shard too)."""
    X = np.arange(40.0).reshape(20, 2)
    for name, data, shard in (("p.csv", "\n".join(",".join(map(exact, r)) for r in X).encode(), None),
                              ("p.npy", npy_bytes(X), None), ("p.npy", npy_bytes(X), (1, 2))):
        path = tmp_path / name
        if path.exists():
            path.unlink()
        thread = _pipe(path, data)
        try:
            A = read_quietly(path, allow_special=True, shard=shard)
        finally:
            thread.join()
        assert same_bits(A.astype(np.float64), X[10:] if shard else X)


@pytest.mark.skipif(not os.path.exists("/dev/zero"), reason="no /dev/zero")
def test_allow_special_keeps_the_line_bound(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_parser, "CSV_LINE_LIMIT", 1000)
    path = tmp_path / "zero.csv"
    path.symlink_to("/dev/zero")
    with pytest.raises(ValueError) as e:
        read_matrix(path, allow_special=True)
    assert str(e.value) == f"{path}: line 1 is longer than 1000 characters, the bound on a line of a .csv file"
    (tmp_path / "zero.npy").symlink_to("/dev/zero")
    with pytest.raises(ValueError, match=r"zero\.npy: cannot read: not an \.npy file: it does not start with"):
        read_matrix(tmp_path / "zero.npy", allow_special=True)


# -- the bound on a line ------------------------------------------------------------------------

@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_a_line_of_the_bound_reads_one_past_it_does_not(tmp_path, monkeypatch, newline):
    monkeypatch.setattr(csv_parser, "CSV_LINE_LIMIT", 40)
    row = ",".join(["1.0"] * 10)  # 39 characters
    assert len(row) == 39
    for extra, ok in (("", True), ("0", True), ("00", False)):
        text = newline.join(["1," * 9 + "1", row + extra, row]) + newline
        path = write(tmp_path / "x.csv", text)
        if ok:
            assert read_quietly(path).shape == (3, 10)
        else:
            with pytest.raises(ValueError) as e:
                read_quietly(path)
            assert str(e.value) == f"{path}: line 2 is longer than 40 characters, the bound on a line of a .csv file"


def test_a_row_spanning_lines_is_bounded_as_a_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_parser, "CSV_LINE_LIMIT", 50)
    path = write(tmp_path / "x.csv", '1,2\n3,"' + ("x" * 20 + "\n") * 3 + '"\n')
    with pytest.raises(ValueError) as e:
        read_quietly(path)
    assert str(e.value) == (f"{path}: lines 2 to 4, one row (a quoted cell spans lines), are longer than 50 "
                            "characters, the bound on a row of a .csv file")


def test_the_bound_counts_each_row_afresh(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_parser, "CSV_LINE_LIMIT", 50)
    row = ",".join(["1.5"] * 12)  # 47 characters, far less than the whole file
    assert read_quietly(write(tmp_path / "x.csv", "\n".join([row] * 30) + "\n")).shape == (30, 12)


def test_the_default_bound_is_generous():
    assert csv_parser.CSV_LINE_LIMIT >= 2**24


# -- key= on files that have no arrays to choose from -------------------------------------------

@pytest.mark.parametrize("ext", [".npy", ".csv"])
def test_key_applies_to_npz_only(tmp_path, capsys, ext):
    path = save_as(tmp_path / f"X{ext}", np.ones((20, 3)))
    with pytest.raises(ValueError) as e:
        read_matrix(path, key="X")
    assert str(e.value) == f"{path}: an array name (key='X', --key) applies to .npz files only"
    code, _, err = run_main(capsys, "fit", path, "--key", "X", "--out", tmp_path / "r.npz", *TINY)
    assert_user_error(code, err, f"{path}: an array name (key='X', --key) applies to .npz files only")
    assert not (tmp_path / "r.npz").exists()


# -- on the command line: one line, exit 2 ------------------------------------------------------

def test_the_command_line_reports_each_kind_in_one_line(tmp_path, capsys, fifo):
    np.save(tmp_path / "rows0.npy", np.zeros((0, 5)))
    np.save(tmp_path / "cols0.npy", np.zeros((5, 0)))
    (tmp_path / "member.npz").write_bytes(zip_of({"X.npy": b"some bytes"}))
    (tmp_path / "dir.npy").mkdir()
    pipe, opened = fifo("pipe.csv")
    cases = [("rows0.npy", "rows0.npy: no rows (shape (0, 5))"), ("cols0.npy", "cols0.npy: no features (shape (5, 0))"),
             ("member.npz", "member.npz: cannot read: the member X.npy is not a valid .npy array"),
             ("dir.npy", "dir.npy: a folder, not a file"), ("pipe.csv", "pipe.csv: not a regular file but a FIFO")]
    for name, message in cases:
        for command in (["fit", tmp_path / name, "--out", tmp_path / "r.npz", *TINY],):
            code, out, err = run_main(capsys, *command)
            assert_user_error(code, err, message)
            assert out == ""
    assert not opened.is_set() and not (tmp_path / "r.npz").exists()


def test_an_object_array_from_a_pipe_is_refused_not_unpickled(tmp_path):
    thread = _pipe(tmp_path / "p.npy", npy_bytes(np.array([[1, "x"]], dtype=object)))
    try:
        with pytest.raises(ValueError) as e:
            read_matrix(tmp_path / "p.npy", allow_special=True)
    finally:
        thread.join()
    assert str(e.value) == f"{tmp_path / 'p.npy'}: cannot read: Object arrays cannot be loaded when allow_pickle=False"


def test_a_stream_is_read_through_its_first_bytes_then_the_rest():
    from rda_ext.io.readers import _Prefixed

    p = _Prefixed(b"abc", io.BytesIO(b"defg"))
    assert [p.read(0), p.read(3), p.read(0), p.read(2), p.read(-1), p.read()] == [b"", b"abc", b"", b"de", b"fg", b""]
    p = _Prefixed(b"abc", io.BytesIO(b"defg"))
    assert [p.read(2), p.read(3), p.read(5)] == [b"ab", b"cde", b"fg"]
    p = _Prefixed(b"abc", io.BytesIO(b"defg"))
    assert p.read() == b"abcdefg"


def test_a_version_2_npy_is_read_and_its_size_checked(tmp_path):
    a = np.arange(12.0).reshape(4, 3)
    f = io.BytesIO()
    np.lib.format.write_array(f, a, version=(2, 0))
    (tmp_path / "v2.npy").write_bytes(f.getvalue())
    assert same_bits(read_matrix(tmp_path / "v2.npy"), a)
    (tmp_path / "cut.npy").write_bytes(f.getvalue()[:-8])
    with pytest.raises(ValueError) as e:
        read_matrix(tmp_path / "cut.npy")
    assert str(e.value) == (f"{tmp_path / 'cut.npy'}: cannot read: truncated: the header declares an array of shape "
                            "(4, 3) and dtype float64, 96 bytes, but 88 bytes follow it")


def test_an_array_of_one_byte_without_it_is_truncated(tmp_path):
    data = npy_bytes(np.ones((1, 1), np.uint8))[:-1]
    (tmp_path / "cut.npy").write_bytes(data)
    with pytest.raises(ValueError) as e:
        read_matrix(tmp_path / "cut.npy")
    assert str(e.value).endswith("truncated: the header declares an array of shape (1, 1) and dtype uint8, "
                                 "1 bytes, but 0 bytes follow it")


def test_a_header_that_does_not_parse_is_named(tmp_path):
    header = "{'descr': '<f8', 'fortran_order': False, 'shape': (3, 2, }"
    header += " " * (63 - len(header) % 64) + "\n"
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
    with pytest.raises(ValueError) as e:
        read_matrix(tmp_path / "bad.npy")
    assert str(e.value) == f"{tmp_path / 'bad.npy'}: cannot read: cannot parse the header (EOF in multi-line statement)"


def test_a_shard_of_an_npy_file_is_read_through_a_memory_map(tmp_path, monkeypatch):
    from rda_ext.io import readers

    np.save(tmp_path / "X.npy", np.arange(8.0).reshape(4, 2))
    modes = []
    load = np.load
    monkeypatch.setattr(readers.np, "load", lambda *a, **k: modes.append(k.get("mmap_mode")) or load(*a, **k))
    assert read_matrix(tmp_path / "X.npy", shard=(1, 2)).tolist() == [[4, 5], [6, 7]]
    assert read_matrix(tmp_path / "X.npy").shape == (4, 2)
    assert modes == ["r", None]


def test_a_path_that_cannot_be_resolved_is_named_with_the_reason(tmp_path):
    os.symlink(tmp_path / "b.npy", tmp_path / "a.npy")
    os.symlink(tmp_path / "a.npy", tmp_path / "b.npy")
    with pytest.raises(ValueError) as e:
        read_matrix(tmp_path / "a.npy")
    assert str(e.value) == f"{tmp_path / 'a.npy'}: cannot read: Too many levels of symbolic links"


def test_what_is_not_a_zip_archive_is_said_with_the_signature(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"not a zip archive")
    with pytest.raises(ValueError) as e:
        read_matrix(tmp_path / "x.npz")
    assert str(e.value) == (f"{tmp_path / 'x.npz'}: cannot read: not an .npz file (a zip archive of .npy files): "
                            "it does not start with the signature of a zip archive b'PK\\x03\\x04'")
    np.savez(tmp_path / "none.npz")
    with pytest.raises(ValueError) as e:
        read_matrix(tmp_path / "none.npz", key="X")
    assert str(e.value) == f"{tmp_path / 'none.npz'}: cannot read: it has no array 'X' (it holds none)"


def test_a_blank_line_inside_a_quoted_cell_counts_one_character(tmp_path, monkeypatch):
    monkeypatch.setattr(csv_parser, "CSV_LINE_LIMIT", 20)
    # 2 + 10 blank lines + 3 = 15 characters: within the bound, so the cell itself is the fault.
    path = write(tmp_path / "x.csv", '"1' + "\n" * 10 + '",2\n')
    with pytest.raises(ValueError) as e:
        read_quietly(path)
    assert str(e.value).startswith(f"{path}: line 11, column 1: ")
    path = write(tmp_path / "y.csv", '"1' + "\n" * 19 + '",2\n')  # 24: past it
    with pytest.raises(ValueError) as e:
        read_quietly(path)
    assert str(e.value).startswith(f"{path}: lines 1 to 20, one row")
