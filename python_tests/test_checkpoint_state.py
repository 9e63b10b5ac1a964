"""A checkpoint is taken up only by the fit it was written for, whatever changed in the data; a
folder whose state is corrupt or foreign is one clear error; what the folder holds besides the
checkpoint's own files is never removed."""

import json
import os
import pickle

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rda_ext import RobustAutoencoder
from rda_ext.io.fingerprint import fingerprint
from rda_ext.io.checkpoint import LATEST

FIT = dict(hidden=(3,), outer_iter=2, inner_epochs=1, batch_size=16, output_activation="linear",
           device="cpu", random_state=0, tol=0)


def _data(seed=0, n=30, d=4):
    return np.random.default_rng(seed).random((n, d)).astype(np.float32)


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """A checkpoint of a finished 2-iteration fit of ``_data()``."""
    ck = tmp_path_factory.mktemp("ck") / "ck"
    est = RobustAutoencoder(**FIT, checkpoint=ck).fit(_data())
    return ck, est


def _resume(ck, X, **params):
    return RobustAutoencoder(**{**FIT, **params}, checkpoint=ck).fit(X)


def test_the_same_data_resumes_the_finished_fit(written):
    ck, est = written
    again = _resume(ck, _data().copy())
    assert again.n_iter_ == est.n_iter_ and np.array_equal(again.S_, est.S_) and again.history_ == est.history_


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.permutations(range(30)), cols=st.permutations(range(4)))
def test_the_data_in_any_other_order_is_refused(written, rows, cols):
    ck, _ = written
    X = _data()[np.ix_(rows, cols)]
    if np.array_equal(X, _data()):  # the identity permutation is the same data
        return
    with pytest.raises(ValueError, match=r"holds the state of another fit, which differs in its data"):
        _resume(ck, X)


@pytest.mark.parametrize("change", ["swap two entries", "last bit", "one more row", "float64"])
def test_other_data_of_the_same_sums_or_shape_is_refused(written, change):
    ck, _ = written
    X = _data()
    params = {}
    if change == "swap two entries":  # the same sum and norm
        X[0, 0], X[1, 1] = X[1, 1], X[0, 0]
    elif change == "last bit":
        X[5, 2] = np.nextafter(X[5, 2], np.float32(2))
    elif change == "one more row":
        X = np.vstack([X, X[:1]])
    else:
        params = dict(dtype="float64")
    with pytest.raises(ValueError, match="holds the state of another fit, which differs in its"):
        _resume(ck, X, **params)


def test_the_fingerprint_reads_the_values_not_the_layout():
    X = torch.rand(50, 7, dtype=torch.float64)
    assert fingerprint(X) == fingerprint(X.t().contiguous().t()) == fingerprint(X.clone())
    assert fingerprint(X) != fingerprint(X.float().double()) or torch.equal(X, X.float().double())
    assert fingerprint(X) != fingerprint(X.reshape(7, 50))  # the same bytes, another shape
    assert fingerprint(X) != fingerprint(X.float())
    assert fingerprint(torch.empty(0, 3)) != fingerprint(torch.empty(3, 0))
    Y = X.clone()
    Y[49, 6] = -Y[49, 6]
    assert fingerprint(X) != fingerprint(Y)


# ---- corrupt or foreign state -------------------------------------------------------------------

def _copy(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def _shared(ck):
    return ck / "iter-000002" / "shared.pt"


def _own(ck):
    return ck / "iter-000002" / "rank-0" / "state.pt"


def _edit(path, fn):
    state = torch.load(path, weights_only=True)
    torch.save(fn(state), path)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran from a checkpoint",))


CORRUPTIONS = {
    "latest.json a list": (lambda ck: (ck / LATEST).write_text("[1, 2]"), "latest.json: its content is a list"),
    "latest.json without iteration": (lambda ck: (ck / LATEST).write_text('{"world_size": 1}'),
                                      "lacks 'iteration'"),
    "iteration a string": (lambda ck: (ck / LATEST).write_text('{"iteration": "2", "world_size": 1}'),
                           "iteration is '2', not an integer >= 1"),
    "iteration 0": (lambda ck: (ck / LATEST).write_text('{"iteration": 0, "world_size": 1}'),
                    "iteration is 0, not an integer >= 1"),
    "a missing iteration": (lambda ck: (ck / LATEST).write_text('{"iteration": 7, "world_size": 1}'),
                            "names a state that is not there"),
    "shared.pt a list": (lambda ck: torch.save([1, 2], _shared(ck)), "shared.pt: its content is a list"),
    "shared.pt empty": (lambda ck: _shared(ck).write_bytes(b""), "shared.pt: "),
    "shared.pt a pickle": (lambda ck: _shared(ck).write_bytes(pickle.dumps(_Payload())), "shared.pt: "),
    "state.pt a tensor": (lambda ck: torch.save(torch.zeros(3), _own(ck)), "state.pt: its content is a Tensor"),
    "an empty model state": (lambda ck: _edit(_shared(ck), lambda s: {**s, "model": {}}), "missing weight"),
    "a weight of another shape": (lambda ck: _edit(_shared(ck), lambda s: {
        **s, "model": {k: v[:1] for k, v in s["model"].items()}}), "weight shape mismatch"),
    "a NaN weight": (lambda ck: _edit(_shared(ck), lambda s: {
        **s, "model": {k: torch.full_like(v, float("nan")) for k, v in s["model"].items()}}), "NaN or infinite"),
    "a float64 weight": (lambda ck: _edit(_shared(ck), lambda s: {
        **s, "model": {k: v.double() for k, v in s["model"].items()}}), "dtype torch.float64, not torch.float32"),
    "the optimizer a list": (lambda ck: _edit(_shared(ck), lambda s: {**s, "optimizer": []}), "optimizer is a list"),
    "Adam's moment of another shape": (lambda ck: _edit(_shared(ck), lambda s: {
        **s, "optimizer": {**s["optimizer"], "state": {
            i: {k: (v if v.numel() == 1 else v.reshape(-1)[:2]) for k, v in st_.items()}
            for i, st_ in s["optimizer"]["state"].items()}}}), "optimizer state 0"),
    "a short history": (lambda ck: _edit(_shared(ck), lambda s: {**s, "history": s["history"][:1]}),
                        "the history has 1 iterations"),
    "a history without c1": (lambda ck: _edit(_shared(ck), lambda s: {
        **s, "history": [{k: v for k, v in h.items() if k != "c1"} for h in s["history"]]}), "lacks 'c1'"),
    "L of one row": (lambda ck: _edit(_own(ck), lambda s: {**s, "L": s["L"][:1]}), "L has shape (1, 4), not (30, 4)"),
    "S with inf": (lambda ck: _edit(_own(ck), lambda s: {**s, "S": s["S"].fill_(float("inf"))}), "S holds NaN"),
    "S a list": (lambda ck: _edit(_own(ck), lambda s: {**s, "S": s["S"].tolist()}), "S is a list, not a tensor"),
    "L float64": (lambda ck: _edit(_own(ck), lambda s: {**s, "L": s["L"].double()}), "L has dtype torch.float64"),
    "a generator of other bytes": (lambda ck: _edit(_own(ck), lambda s: {**s, "generator": s["generator"][:5]}),
                                   "generator"),
    "a generator of floats": (lambda ck: _edit(_own(ck), lambda s: {**s, "generator": s["generator"].float()}),
                              "generator has dtype torch.float32, not torch.uint8"),
    "identity a string": (lambda ck: _edit(_own(ck), lambda s: {**s, "identity": "x"}),
                          "its identity is a str"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_corrupt_checkpoint_is_one_clear_error_and_stays_as_it_was(written, tmp_path, name, capsys):
    corrupt, message = CORRUPTIONS[name]
    ck = _copy(written[0], tmp_path / "ck")
    corrupt(ck)
    before = {p: p.read_bytes() for p in ck.rglob("*") if p.is_file()}
    with pytest.raises(ValueError) as e:
        _resume(ck, _data())
    text = str(e.value)
    assert text.startswith(f"checkpoint {ck}") and message in text and "weights_only" not in text, text
    assert "\n" not in text
    assert "code ran" not in capsys.readouterr().out
    assert {p: p.read_bytes() for p in ck.rglob("*") if p.is_file()} == before


def test_the_cleanup_removes_only_the_checkpoints_own_entries(tmp_path):
    ck = tmp_path / "ck"
    (ck / "iter-notes").mkdir(parents=True)
    (ck / "iter-notes" / "a.txt").write_text("mine")
    (ck / "iter-000001").mkdir()  # an iteration folder holding a file of the user's
    (ck / "iter-000001" / "keep.txt").write_text("mine")
    (ck / "iter-7").write_text("a file")
    (ck / "notes.txt").write_text("mine")
    RobustAutoencoder(**{**FIT, "outer_iter": 3}, checkpoint=ck).fit(_data())
    assert sorted(os.listdir(ck)) == ["iter-000001", "iter-000003", "iter-7", "iter-notes", "latest.json",
                                      "notes.txt"]
    assert (ck / "iter-000001" / "keep.txt").read_text() == "mine"
    assert json.loads((ck / LATEST).read_text())["iteration"] == 3


def test_a_checkpoint_path_that_is_a_file_is_refused_before_the_fit(tmp_path):
    (tmp_path / "ck").write_text("x")
    with pytest.raises(ValueError, match="exists and is not a directory"):
        RobustAutoencoder(**FIT, checkpoint=tmp_path / "ck").fit(_data())
