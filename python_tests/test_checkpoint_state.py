"""A checkpoint is taken up only by the fit it was written for, whatever changed in the data; a
folder whose state is corrupt or foreign is one clear error; what the folder holds besides the
checkpoint's own files is never removed."""

import json
import os
import pickle
import re

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


def _optimizer_state(fn):
    """An edit of shared.pt's optimizer state (parameter index -> its Adam state) by ``fn``."""
    return lambda ck: _edit(_shared(ck), lambda s: {**s, "optimizer": {**s["optimizer"], "state": fn(
        s["optimizer"]["state"])}})


def _moments(fn):
    """An edit of every tensor of each parameter's Adam state that is not its step count."""
    return _optimizer_state(lambda state: {i: {k: (v if v.numel() == 1 else fn(v)) for k, v in st_.items()}
                                           for i, st_ in state.items()})


def _steps(fn):
    return _optimizer_state(lambda state: {i: {k: (fn(v) if k == "step" else v) for k, v in st_.items()}
                                           for i, st_ in state.items()})


SHARED_PT, STATE_PT = "iter-000002/shared.pt", "iter-000002/rank-0/state.pt"

# What is wrong, where, as the error says it in its parentheses. torch words the refusal of a
# pickle that would run code itself: only the file is named here for it.
CORRUPTIONS = {
    "latest.json a list": (lambda ck: (ck / LATEST).write_text("[1, 2]"), "latest.json: its content is a list, not a dict"),
    "latest.json without iteration": (lambda ck: (ck / LATEST).write_text('{"world_size": 1}'),
                                      "latest.json: its content lacks 'iteration'"),
    "iteration a string": (lambda ck: (ck / LATEST).write_text('{"iteration": "2", "world_size": 1}'),
                           "latest.json: iteration is '2', not an integer >= 1"),
    "iteration 0": (lambda ck: (ck / LATEST).write_text('{"iteration": 0, "world_size": 1}'),
                    "latest.json: iteration is 0, not an integer >= 1"),
    "world_size 0": (lambda ck: (ck / LATEST).write_text('{"iteration": 2, "world_size": 0}'),
                     "latest.json: world_size is 0, not an integer >= 1"),
    "latest.json not UTF-8": (lambda ck: (ck / LATEST).write_bytes(b"\x80{"),
                              "latest.json: not JSON ('utf-8' codec can't decode byte 0x80 in position 0: invalid "
                              "start byte)"),
    "shared.pt a list": (lambda ck: torch.save([1, 2], _shared(ck)), f"{SHARED_PT}: its content is a list, not a dict"),
    "shared.pt empty": (lambda ck: _shared(ck).write_bytes(b""), f"{SHARED_PT}: the file is empty or cut short"),
    "shared.pt a pickle": (lambda ck: _shared(ck).write_bytes(pickle.dumps(_Payload())), f"{SHARED_PT}: "),
    "shared.pt without world_size": (lambda ck: _edit(_shared(ck), lambda s: {
        k: v for k, v in s.items() if k != "world_size"}), f"{SHARED_PT}: its content lacks 'world_size'"),
    "state.pt without its generator": (lambda ck: _edit(_own(ck), lambda s: {
        k: v for k, v in s.items() if k != "generator"}), f"{STATE_PT}: its content lacks 'generator'"),
    "shared.pt holding a numpy number": (lambda ck: torch.save({"identity": np.float64(1)}, _shared(ck)),
                                         re.compile(re.escape(SHARED_PT) + r": it holds a numpy\.\S+ object, "
                                                    "which a checkpoint never does")),
    "state.pt holding a numpy number": (lambda ck: torch.save({"identity": np.float64(1)}, _own(ck)),
                                        re.compile(re.escape(STATE_PT) + r": it holds a numpy\.\S+ object, "
                                                   "which a checkpoint never does")),
    "the model a list": (lambda ck: _edit(_shared(ck), lambda s: {**s, "model": []}),
                         f"{SHARED_PT}: model is a list, not a dict"),
    "state.pt a tensor": (lambda ck: torch.save(torch.zeros(3), _own(ck)),
                          f"{STATE_PT}: its content is a Tensor, not a dict"),
    "a world_size other than latest.json's": (lambda ck: _edit(_shared(ck), lambda s: {**s, "world_size": 3}),
                                              f"{SHARED_PT}: world_size is 3, latest.json says 1"),
    "an empty model state": (lambda ck: _edit(_shared(ck), lambda s: {**s, "model": {}}),
                             f"{SHARED_PT}: missing weight 'enc_weight.0', 'enc_bias.0', 'dec_bias.0'"),
    "a weight of another shape": (lambda ck: _edit(_shared(ck), lambda s: {
        **s, "model": {k: v[:1] for k, v in s["model"].items()}}),
        f"{SHARED_PT}: weight shape mismatch: 'enc_weight.0' is (1, 4), the network needs (3, 4)"),
    "a NaN weight": (lambda ck: _edit(_shared(ck), lambda s: {
        **s, "model": {k: torch.full_like(v, float("nan")) for k, v in s["model"].items()}}),
        f"{SHARED_PT}: weight 'enc_weight.0' holds NaN or infinite values"),
    "a float64 weight": (lambda ck: _edit(_shared(ck), lambda s: {
        **s, "model": {k: v.double() for k, v in s["model"].items()}}),
        f"{SHARED_PT}: weight 'enc_weight.0' has dtype torch.float64, not torch.float32"),
    "the optimizer a list": (lambda ck: _edit(_shared(ck), lambda s: {**s, "optimizer": []}),
                             f"{SHARED_PT}: optimizer is a list, not a dict"),
    "an optimizer without param_groups": (lambda ck: _edit(_shared(ck), lambda s: {
        **s, "optimizer": {"state": s["optimizer"]["state"]}}), f"{SHARED_PT}: optimizer lacks 'param_groups'"),
    "the optimizer's state a list": (_optimizer_state(lambda state: list(state.values())),
                                     f"{SHARED_PT}: optimizer state is a list, not a dict"),
    "the state of a parameter past the last": (_optimizer_state(lambda state: {**state, 3: state[0]}),
                                               f"{SHARED_PT}: the optimizer's state names parameter 3 of 3"),
    "the state of a parameter named by a string": (_optimizer_state(lambda state: {**state, "0": state[0]}),
                                                   f"{SHARED_PT}: the optimizer's state names parameter '0' of 3"),
    "a parameter's state a list": (_optimizer_state(lambda state: {**state, 1: list(state[1].values())}),
                                   f"{SHARED_PT}: optimizer state 1 is a list, not a dict"),
    "Adam's moment of another shape": (_moments(lambda v: v.reshape(-1)[:2]),
                                       f"{SHARED_PT}: optimizer state 0 'exp_avg' has shape (2,), not (3, 4)"),
    "Adam's moment in float64": (_moments(lambda v: v.double()),
                                 f"{SHARED_PT}: optimizer state 0 'exp_avg' has dtype torch.float64, not torch.float32"),
    "a NaN step count": (_steps(lambda v: torch.full_like(v, float("nan"))),
                         f"{SHARED_PT}: optimizer state 0 'step' holds NaN or infinite values"),
    "param_groups of another network": (lambda ck: _edit(_shared(ck), lambda s: {**s, "optimizer": {
        **s["optimizer"], "param_groups": [{**s["optimizer"]["param_groups"][0], "params": [0, 1]}]}}),
        f"{SHARED_PT}: the optimizer's state does not fit this network ("),
    "a short history": (lambda ck: _edit(_shared(ck), lambda s: {**s, "history": s["history"][:1]}),
                        f"{SHARED_PT}: the history has 1 iterations, latest.json says 2"),
    "a history without c1": (lambda ck: _edit(_shared(ck), lambda s: {
        **s, "history": [{k: v for k, v in h.items() if k != "c1"} for h in s["history"]]}),
        f"{SHARED_PT}: the history[0] lacks 'c1'"),
    "L of one row": (lambda ck: _edit(_own(ck), lambda s: {**s, "L": s["L"][:1]}),
                     f"{STATE_PT}: L has shape (1, 4), not (30, 4)"),
    "S with inf": (lambda ck: _edit(_own(ck), lambda s: {**s, "S": s["S"].fill_(float("inf"))}),
                   f"{STATE_PT}: S holds NaN or infinite values"),
    "S a list": (lambda ck: _edit(_own(ck), lambda s: {**s, "S": s["S"].tolist()}), f"{STATE_PT}: S is a list, not a tensor"),
    "L float64": (lambda ck: _edit(_own(ck), lambda s: {**s, "L": s["L"].double()}),
                  f"{STATE_PT}: L has dtype torch.float64, not torch.float32"),
    "a generator of other bytes": (lambda ck: _edit(_own(ck), lambda s: {**s, "generator": s["generator"][:5]}),
                                   f"{STATE_PT}: generator is not the state of a torch generator"),
    "a generator of floats": (lambda ck: _edit(_own(ck), lambda s: {**s, "generator": s["generator"].float()}),
                              f"{STATE_PT}: generator has dtype torch.float32, not torch.uint8"),
    "identity a string": (lambda ck: _edit(_own(ck), lambda s: {**s, "identity": "x"}),
                          f"{STATE_PT}: its identity is a str, not a dict"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_a_corrupt_checkpoint_is_one_clear_error_and_stays_as_it_was(written, tmp_path, name, capsys):
    corrupt, what = CORRUPTIONS[name]
    ck = _copy(written[0], tmp_path / "ck")
    corrupt(ck)
    before = {p: p.read_bytes() for p in ck.rglob("*") if p.is_file()}
    with pytest.raises(ValueError) as e:
        _resume(ck, _data())
    text = str(e.value)
    head, tail = f"checkpoint {ck} is not a valid checkpoint (", "): remove it, or choose another directory"
    if isinstance(what, re.Pattern):  # a name of numpy's, which numpy's version decides
        assert text.startswith(head) and text.endswith(tail) and what.fullmatch(text[len(head):-len(tail)]), text
    elif what.endswith((": ", "(")):  # torch's own words follow
        assert text.startswith(head + what) and text.endswith(tail) and "weights_only" not in text, text
    else:
        assert text == head + what + tail
    assert "\n" not in text
    assert "code ran" not in capsys.readouterr().out
    assert {p: p.read_bytes() for p in ck.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("latest, message", [
    (lambda path: path.write_text('{"iteration": 7, "world_size": 1}'),
     "latest.json names a state that is not there ({ck}/iter-000007/shared.pt): remove the directory, or choose "
     "another"),
    (lambda path: path.unlink() or path.mkdir(), "latest.json is unreadable ([Errno 21] Is a directory: '{ck}/latest.json')"),
])
def test_a_latest_json_that_names_a_lost_state_or_cannot_be_read_is_named(written, tmp_path, latest, message):
    ck = _copy(written[0], tmp_path / "ck")
    latest(ck / LATEST)
    with pytest.raises(ValueError) as e:
        _resume(ck, _data())
    assert str(e.value) == f"checkpoint {ck}: " + message.format(ck=ck)


def test_a_state_left_half_written_by_a_lost_process_is_written_again(written, tmp_path):
    ck = _copy(written[0], tmp_path / "ck")
    (ck / "iter-000003" / "rank-0").mkdir(parents=True)  # the save of iteration 3 died here
    longer = _resume(ck, _data(), outer_iter=3)
    assert longer.n_iter_ == 3 and sorted(os.listdir(ck)) == ["iter-000003", "latest.json"]
    assert sorted(os.listdir(ck / "iter-000003" / "rank-0")) == ["state.pt"]


def _identities(fn):
    """An edit of the identity that both files of the state hold."""
    def edit(ck):
        _edit(_shared(ck), lambda s: {**s, "identity": fn(s["identity"])})
        _edit(_own(ck), lambda s: {**s, "identity": fn(s["identity"])})
    return edit


@pytest.mark.parametrize("change, params, differs", [
    (None, dict(lr=0.5), "parameters (lr)"),
    (None, dict(lr=0.5, hidden=(2,)), "parameters (hidden, lr)"),
    (_identities(lambda i: {**i, "params": {**i["params"], "momentum": 0.9}}), {}, "parameters (momentum)"),
    (_identities(lambda i: {**i, "params": list(i["params"])}), {}, "parameters (?)"),
    (_identities(lambda i: {**i, "rows": 31}), {}, "number of rows (31 there, 30 here)"),
    (_identities(lambda i: {**i, "warm": not i["warm"]}), {}, "warm start"),
    (_identities(lambda i: {**i, "rows": 31, "warm": not i["warm"]}), dict(lr=0.5),
     "parameters (lr), number of rows (31 there, 30 here), warm start"),
    (None, dict(X="other"), "data (other values, or the same in another order of rows or columns)"),
    (_identities(lambda i: {**i, "extra": 1}), {}, "identity"),
    # Only the rank's own file differs (the rows it was written for): its data is the same.
    (lambda ck: _edit(_own(ck), lambda s: {**s, "identity": {**s["identity"], "rows": 31}}), {},
     "number of rows (31 there, 30 here)"),
])
def test_a_foreign_state_names_what_differs(written, tmp_path, change, params, differs):
    ck = _copy(written[0], tmp_path / "ck")
    if change:
        change(ck)
    X = _data(seed=1) if params.pop("X", None) else _data()
    with pytest.raises(ValueError) as e:
        _resume(ck, X, **params)
    assert str(e.value) == (f"checkpoint {ck} holds the state of another fit, which differs in its {differs}: "
                            "remove it, or choose another directory")


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


def _tree(root, layout: dict) -> None:
    """Files ("file"), folders ("dir") and symlinks ("-> target", relative to ``root``) under ``root``."""
    for name, what in layout.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if what == "dir":
            path.mkdir()
        elif what.startswith("-> "):
            path.symlink_to(root / what[3:])
        else:
            path.write_text(what)


# An iteration folder of an earlier save, and whether it is the checkpoint's own (removed once a
# later state is complete) or holds anything of the user's (kept whole).
OLD_ITERATIONS = {
    "the checkpoint's own, with a dead process's temporary": (
        {"shared.pt": "x", "rank-0/state.pt": "x", "rank-0/.rda-ext-tmp-1-ab": "x", "rank-1/state.pt": "x"}, False),
    "shared.pt a symlink to a file of the user's": ({"shared.pt": "-> ../mine.txt"}, True),
    "shared.pt a folder": ({"shared.pt/mine.txt": "x"}, True),
    "a folder of the user's holding a state.pt": ({"notes/state.pt": "x"}, True),
    "rank-0 a symlink to a folder of the user's": ({"rank-0": "-> ../mine"}, True),
    "a file of the user's in rank-0": ({"rank-0/state.pt": "x", "rank-0/notes.txt": "x"}, True),
    "state.pt a symlink": ({"rank-0/state.pt": "-> ../mine.txt"}, True),
}


@pytest.mark.parametrize("name", list(OLD_ITERATIONS))
def test_an_old_iteration_folder_is_removed_only_when_it_holds_the_checkpoints_files_alone(tmp_path, name):
    layout, kept = OLD_ITERATIONS[name]
    ck = tmp_path / "ck"
    _tree(tmp_path, {"mine.txt": "mine", "mine/state.pt": "mine"})
    _tree(ck / "iter-000005", {k: v.replace("../", "../../") for k, v in layout.items()})
    _tree(ck, {"empty": "dir", "iter-000009": "a file of the user's"})
    RobustAutoencoder(**FIT, checkpoint=ck).fit(_data())
    expected = ["empty", "iter-000002", "iter-000009", "latest.json"] + (["iter-000005"] if kept else [])
    assert sorted(os.listdir(ck)) == sorted(expected)
    assert (tmp_path / "mine.txt").read_text() == (tmp_path / "mine" / "state.pt").read_text() == "mine"


def test_an_old_iteration_folder_that_cannot_be_removed_does_not_stop_the_fit(tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    _tree(ck / "iter-000005", {"shared.pt": "x"})
    rmdir = os.rmdir

    def refused(path, *args, **kwargs):
        if os.path.basename(os.fspath(path)) == "iter-000005":
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return rmdir(path, *args, **kwargs)

    monkeypatch.setattr(os, "rmdir", refused)
    est = RobustAutoencoder(**FIT, checkpoint=ck).fit(_data())
    assert est.n_iter_ == 2 and sorted(os.listdir(ck)) == ["iter-000002", "iter-000005", "latest.json"]


def test_a_warm_start_is_part_of_the_checkpoints_identity(tmp_path):
    X = _data()
    warm = RobustAutoencoder(**FIT).fit(X)
    warm.set_params(warm_start=True, checkpoint=tmp_path / "ck").fit(X)
    with pytest.raises(ValueError) as e:
        _resume(tmp_path / "ck", X, warm_start=True)  # the same data and parameters, but nothing to continue
    assert str(e.value).endswith("differs in its warm start: remove it, or choose another directory")


def _stopping_tol(history) -> tuple[float, int]:
    """A tol at which a fit with this history stops at its third iteration or later: (tol, iterations)."""
    size = [max(h["c1"], h["c2"]) for h in history]
    for k in range(2, len(size)):
        tol = size[k] * (1 + 1e-9)
        if all(s >= tol for s in size[:k]):
            return tol, k + 1
    raise AssertionError(f"no iteration after the second is below all before it: {size}")


def test_a_resumed_fit_that_had_converged_trains_no_further(tmp_path, capsys):
    X = _data(n=60)
    params = {**FIT, "outer_iter": 8}
    tol, stop = _stopping_tol(RobustAutoencoder(**params).fit(X).history_)
    est = RobustAutoencoder(**{**params, "tol": tol}, checkpoint=tmp_path / "ck").fit(X)
    assert est.n_iter_ == stop < 8
    again = RobustAutoencoder(**{**params, "tol": tol}, checkpoint=tmp_path / "ck", verbose=True).fit(X)
    assert again.history_ == est.history_ and again.n_iter_ == stop and np.array_equal(again.S_, est.S_)
    # The progress bar starts from the iterations restored, and stays there.
    assert set(re.findall(r"\| (\d+)/8 \[", capsys.readouterr().err)) == {str(stop)}


def test_a_resumed_fit_counts_its_restored_iterations_on_the_progress_bar(written, tmp_path, capsys):
    ck = _copy(written[0], tmp_path / "ck")
    _resume(ck, _data(), outer_iter=4, verbose=True)
    bar = capsys.readouterr().err.replace("\r", "\n")
    assert "| 2/4 [" in bar and "| 4/4 [" in bar and "| 3/4 [" in bar and "| 1/4 [" not in bar
