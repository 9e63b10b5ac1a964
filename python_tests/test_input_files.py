"""Reading .csv inputs (read_matrix and the CLI): the quirks of real files round-trip exactly, the
header rule, and every malformed file is one ValueError naming the file (line and column where
there is one), with no numpy warning and nothing printed."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from test_cli import assert_user_error, run_main

from rda_ext.data.files import read_matrix

TINY = ["--hidden", "4", "--outer-iter", "1", "--inner-epochs", "1", "--batch-size", "8",
        "--output-activation", "linear", "--device", "cpu"]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


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
    assert out.startswith(f"20 rows x 3 features read from {with_header} (header: yes), 1 outer iterations")
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
    assert code == 0 and out.startswith(f"20 rows x 3 features read from {tmp_path / 'x.npy'}, 1 outer"), err
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
        (tmp_path / "none.npz", None, "cannot read: it holds the arrays (none): choose one with --key"),
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
