"""Model files and the fitted state, random_state included.

- save -> load gives back the parameters, the fitted state and the scores (the data only where
  saved); a save that fails leaves the file it would have replaced as it was.
- Parameters given as numpy scalars (which fit accepts) survive save -> load, stored as plain
  Python values, without the estimator's own parameters being changed.
- pickle and joblib round-trip a fitted model, whatever its activations (a lambda would not pickle).
- A model file keeps what the fit ran with (precision, preprocessing, the data's fingerprint), and a
  loaded model warm-starts as the original does.
- A file that is not a whole rda_ext model is a ValueError naming the file and what is wrong,
  never a KeyError/RuntimeError traceback nor torch's advice to load it with weights_only=False;
  loading runs no code from the file.
- random_state takes None, an integer seed or a numpy RandomState/Generator, and nothing else.

Most fits are tiny (one hidden layer of 4 units, 2 outer iterations of one epoch, 48 rows)."""

from __future__ import annotations

import io
import math
import copy
import os
import pickle
import re
import tempfile
import warnings

import numpy as np
import pytest
import torch
from conftest import requires_cuda
from helpers import SMALL, TINY, TINY_X as X, assert_same_model, planted
from hypothesis import given, settings
from hypothesis import strategies as st

from rda_ext import RobustAutoencoder
from rda_ext.io.model_file import FORMAT, _ADDED_PARAMS as ADDED_PARAMS
from rda_ext.solver.autoencoder import ACTIVATIONS
from rda_ext.validation import check_params

TOP_KEYS = ("format", "params", "sizes", "weights", "fitted")
FITTED_KEYS = ("n_features_in_", "n_iter_", "lam_", "threshold_", "history_", "decision_scores_", "labels_", "batch_seed")
DATA_KEYS = ("L_", "S_", "input")

INTS = (np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64)
FLOATS = (np.float16, np.float32, np.float64)


def numpy_scalar(types, values):
    """A value of ``values`` as one of the numpy scalar types ``types``."""
    return st.builds(lambda t, v: t(v), st.sampled_from(types), st.sampled_from(values))


# Every numeric parameter, each with valid values in every numpy scalar type that can hold them
# (np.logspace gives np.float64 lams; np.arange, np.int64 sizes; a small int fits np.uint8).
NUMPY_PARAMS = {
    "hidden": st.lists(numpy_scalar(INTS, [2, 3, 5]), min_size=1, max_size=2).map(tuple),
    "lam": numpy_scalar(FLOATS, [0.0, 0.25, 0.5, 1.5]) | numpy_scalar(INTS, [0, 1, 2]),
    "contamination": numpy_scalar(FLOATS, [0.05, 0.1, 0.25]),
    "outer_iter": numpy_scalar(INTS, [1, 2]),
    "inner_epochs": numpy_scalar(INTS, [0, 1, 2]),
    "batch_size": numpy_scalar(INTS, [7, 16, 100]),
    "lr": numpy_scalar(FLOATS, [1e-3, 1e-2, 0.05]),
    "tol": numpy_scalar(FLOATS, [0.0, 1e-7, 0.5]) | numpy_scalar(INTS, [0, 1]),
    "random_state": numpy_scalar(INTS, [0, 7, 127]) | st.just(np.uint64(2**64 - 1)),
}


def plain_leaves(value):
    """Every leaf of a loaded file's nested lists and dicts."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield k
            yield from plain_leaves(v)
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from plain_leaves(v)
    else:
        yield value


# ---------------------------------------------------------------- save and load
def test_save_load_round_trip(tmp_path, seed):
    X, _ = planted(seed, n=120, n_out=6)
    est = RobustAutoencoder(random_state=seed, **SMALL).fit(X)
    est.save(tmp_path / "m.pt")
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert back.get_params() == est.get_params()
    assert np.array_equal(back.decision_function(X), est.decision_function(X))
    assert np.array_equal(back.L_, est.L_) and back.history_ == est.history_
    assert back.threshold_ == est.threshold_ and np.array_equal(back.labels_, est.labels_)
    est.save(tmp_path / "small.pt", data=False)
    assert not hasattr(RobustAutoencoder.load(tmp_path / "small.pt"), "L_")


def test_failed_save_keeps_the_old_file(tmp_path, seed, monkeypatch):
    X, _ = planted(seed, n=60, n_out=3)
    est = RobustAutoencoder(random_state=seed, **SMALL).fit(X)
    target = tmp_path / "m.pt"
    target.write_bytes(b"old")

    def broken(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        est.save(target)
    assert target.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


# ---------------------------------------------------------------- numpy scalars in the file
@settings(max_examples=30, deadline=None)
@given(st.fixed_dictionaries({}, optional=NUMPY_PARAMS).filter(bool))
def test_numpy_scalar_parameters_round_trip(numpy_params):
    params = {**TINY, **numpy_params}
    given_params = dict(params)
    est = RobustAutoencoder(**params).fit(X)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "m.pt")
        est.save(path)
        # The estimator's own parameters are not changed by fit or save (scikit-learn's rule).
        for name, value in given_params.items():
            assert getattr(est, name) is value, name
        # The file holds plain Python values only, so that weights_only=True reads it.
        state = torch.load(path, weights_only=True)
        for leaf in plain_leaves(state["params"]):
            assert leaf is None or type(leaf) in (bool, int, float, str), (type(leaf), leaf)
        back = RobustAutoencoder.load(path)
    loaded = back.get_params()
    assert loaded == est.get_params()
    for name in numpy_params:
        values = loaded[name] if name == "hidden" else (loaded[name],)
        assert all(type(v) in (int, float) for v in values), (name, loaded[name])
    assert_same_model(back, est)
    # The plain values are the numpy values exactly: a refit from the loaded parameters is the same fit.
    again = RobustAutoencoder(**loaded).fit(X)
    np.testing.assert_array_equal(again.decision_scores_, est.decision_scores_)
    assert again.history_[-1]["lam"] == est.history_[-1]["lam"]


def test_all_numpy_parameters_at_once(tmp_path):
    lams = np.logspace(-1, 0, 3)  # np.float64
    params = dict(
        hidden=tuple(np.array([5, 3], dtype=np.int64)), lam=lams[1], contamination=np.float32(0.1),
        outer_iter=np.int32(2), inner_epochs=np.uint8(1), batch_size=np.int64(16), lr=np.float32(1e-2),
        tol=np.float64(0.0), random_state=np.int64(3), device="cpu",
    )
    est = RobustAutoencoder(**params).fit(X)
    est.save(tmp_path / "m.pt")
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert back.get_params() == est.get_params()
    assert type(back.lam) is float and type(back.hidden[0]) is int and type(back.random_state) is int
    assert_same_model(back, est)
    assert est.lam is params["lam"] and est.hidden is params["hidden"]


# ---------------------------------------------------------------- pickle and joblib
@pytest.mark.parametrize(
    "activation, output_activation",
    [("linear", "linear"), *((name, "linear") for name in ACTIVATIONS if name != "linear"), ("linear", "sigmoid")],
)
def test_pickle_and_joblib_round_trip(tmp_path, activation, output_activation):
    data = X * 3 - 1 if output_activation == "linear" else X
    est = RobustAutoencoder(**TINY, activation=activation, output_activation=output_activation).fit(data)
    assert "<lambda>" not in repr((est.model_.act, est.model_.out_act))
    back = pickle.loads(pickle.dumps(est))
    assert_same_model(back, est)
    joblib = pytest.importorskip("joblib")
    joblib.dump(est, tmp_path / "m.joblib")
    assert_same_model(joblib.load(tmp_path / "m.joblib"), est)
    # The unpickled estimator goes on training like the original.
    est.set_params(warm_start=True).fit(data)
    back.set_params(warm_start=True).fit(data)
    assert_same_model(back, est)

def test_an_estimator_unpickled_from_before_the_fit_facts_saves_its_parameters_as_them(tmp_path):
    est = RobustAutoencoder(**TINY, preprocessing="minmax").fit(X)
    old = pickle.loads(pickle.dumps(est))
    for name in ("_fit_precision", "_fit_preprocessing", "_fit_fingerprint"):
        delattr(old, name)  # as a pickle of a fit from before they were kept
    old.save(tmp_path / "m.pt")
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert (back._fit_precision, back._fit_preprocessing, back._fit_fingerprint) == (est.precision, "minmax", None)


# ---------------------------------------------------------------- files that are not models
@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    """A valid model file (with data) and the estimator that wrote it."""
    est = RobustAutoencoder(**{**TINY, "hidden": (4, 3)}).fit(X)
    path = tmp_path_factory.mktemp("model") / "m.pt"
    est.save(path)
    return path, est


def load_state(path) -> dict:
    return torch.load(path, weights_only=True)


def write_state(path, state) -> None:
    torch.save(state, path)


def assert_clear_error(path, *fragments) -> str:
    """load(path) is a ValueError that names the file, says each of ``fragments`` and has none of
    torch's advice to load with weights_only=False."""
    with pytest.raises(ValueError) as info:
        RobustAutoencoder.load(path)
    message = str(info.value)
    assert os.fspath(path) in message, message
    assert "weights_only" not in message, message
    for fragment in fragments:
        assert fragment in message, (fragment, message)
    return message


def test_valid_file_loads(model_file):
    path, est = model_file
    assert_same_model(RobustAutoencoder.load(path), est)


def test_load_refuses_other_files(tmp_path):
    torch.save({"format": "something else"}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not an rda_ext model"):
        RobustAutoencoder.load(tmp_path / "x.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="not a readable rda_ext model"):
        RobustAutoencoder.load(tmp_path / "junk.pt")


def test_load_runs_no_code_from_the_file(tmp_path):
    class Payload:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "rda_ext.RobustAutoencoder/1", "x": Payload()}, tmp_path / "evil.pt")
    with pytest.raises(ValueError, match="not a readable rda_ext model"):
        RobustAutoencoder.load(tmp_path / "evil.pt")



@settings(max_examples=40, deadline=None)
@given(cut=st.floats(0, 1, exclude_max=True))
def test_truncated_file(model_file, cut):
    path, _ = model_file
    data = path.read_bytes()
    with tempfile.TemporaryDirectory() as tmp:
        short = os.path.join(tmp, "short.pt")
        with open(short, "wb") as f:
            f.write(data[: int(cut * len(data))])
        assert_clear_error(short, "not a readable rda_ext model")


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=4096))
def test_random_bytes(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "junk.pt")
        with open(path, "wb") as f:
            f.write(data)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert_clear_error(path, "rda_ext model")
        assert not caught, [str(w.message) for w in caught]  # the error says it all


def test_a_pickle_of_another_protocol_is_the_error_without_torchs_warning(tmp_path):
    """torch warns of a pickle protocol other than its own 2 before it finds no torch file: the
    error says enough."""
    path = tmp_path / "p4.pt"
    path.write_bytes(pickle.dumps(1, protocol=4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        message = assert_clear_error(path)
    assert message == f"{str(path)!r} is not a readable rda_ext model (Invalid magic number; corrupt file?)"


def test_a_model_with_lam_zero_loads(tmp_path):
    """lam = 0 (S = X - L: no shrinkage) is a fit's own value, which the file checks accept."""
    est = RobustAutoencoder(**TINY, lam=0.0).fit(X)
    est.save(tmp_path / "m.pt")
    loaded = RobustAutoencoder.load(tmp_path / "m.pt")
    assert loaded.lam_ == est.lam_ == 0.0
    np.testing.assert_array_equal(loaded.decision_scores_, est.decision_scores_)


def test_file_with_objects_that_would_run_code(tmp_path):
    torch.save({"format": FORMAT, "params": np.float64(0.5)}, tmp_path / "np.pt")
    message = assert_clear_error(tmp_path / "np.pt", "not a readable rda_ext model", "numpy")
    assert re.fullmatch(rf"{re.escape(repr(str(tmp_path / 'np.pt')))} is not a readable rda_ext model "
                        r"\(it holds a numpy\.\S+ object, which a model file never does\)", message), message


def test_a_fault_the_checks_did_not_foresee_is_still_the_files(tmp_path, model_file, monkeypatch):
    from rda_ext.io import model_file as model_file_module

    def unforeseen(*args):
        raise RuntimeError("an unforeseen fault. More about it.")

    monkeypatch.setattr(model_file_module, "_build", unforeseen)
    with pytest.raises(ValueError) as e:
        RobustAutoencoder.load(model_file[0])
    assert str(e.value) == (f"{str(model_file[0])!r} is not a valid rda_ext model file: RuntimeError: "
                            "an unforeseen fault")


@pytest.mark.parametrize(
    "content",
    [
        torch.zeros(3),
        {"format": "something else"},
        {"format": "rda_ext.RobustAutoencoder/2"},
        {"weights": {"enc_weight.0": torch.zeros(4, 6)}},
        [1, 2, 3],
        "rda_ext.RobustAutoencoder/1",
        None,
    ],
    ids=["tensor", "other-format", "other-version", "no-format", "list", "string", "none"],
)
def test_torch_file_that_is_not_ours(tmp_path, content):
    torch.save(content, tmp_path / "other.pt")
    assert_clear_error(tmp_path / "other.pt", "not an rda_ext model file")


def test_state_dict_of_the_network_is_not_a_model(tmp_path, model_file):
    _, est = model_file
    torch.save(est.model_.state_dict(), tmp_path / "sd.pt")
    assert_clear_error(tmp_path / "sd.pt", "not an rda_ext model file")


@pytest.mark.parametrize("key", TOP_KEYS)
def test_each_top_level_key_missing(tmp_path, model_file, key):
    state = load_state(model_file[0])
    del state[key]
    write_state(tmp_path / "m.pt", state)
    assert_clear_error(tmp_path / "m.pt", "not an rda_ext model file" if key == "format" else f"missing key '{key}'")


@pytest.mark.parametrize("key", FITTED_KEYS + DATA_KEYS)
def test_each_fitted_key_missing(tmp_path, model_file, key):
    state = load_state(model_file[0])
    del state["fitted"][key]
    write_state(tmp_path / "m.pt", state)
    assert_clear_error(tmp_path / "m.pt", f"missing key 'fitted.{key}'")


def test_model_saved_without_data_loads(tmp_path, model_file):
    state = load_state(model_file[0])
    for key in DATA_KEYS:
        del state["fitted"][key]
    write_state(tmp_path / "m.pt", state)
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert not hasattr(back, "L_")
    assert_same_model(back, model_file[1])


@pytest.mark.parametrize("name", sorted(set(RobustAutoencoder()._param_names()) - set(ADDED_PARAMS)))
def test_each_parameter_missing(tmp_path, model_file, name):
    state = load_state(model_file[0])
    del state["params"][name]
    write_state(tmp_path / "m.pt", state)
    assert_clear_error(tmp_path / "m.pt", "parameters invalid", "missing", repr(name))


@pytest.mark.parametrize("name", sorted(ADDED_PARAMS))
def test_a_file_from_before_a_parameter_existed_loads_with_the_value_then_in_effect(tmp_path, name):
    est = RobustAutoencoder(**{**TINY, "hidden": (4, 3), name: ADDED_PARAMS[name]}).fit(X)
    est.save(tmp_path / "m.pt")
    state = load_state(tmp_path / "m.pt")
    del state["params"][name]
    write_state(tmp_path / "m.pt", state)
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert back.get_params()[name] == ADDED_PARAMS[name]
    assert_same_model(back, est)


def weight_names(model_file) -> list[str]:
    return list(load_state(model_file[0])["weights"])


@pytest.mark.parametrize("index", range(6))  # (4, 3) tied: 2 encoder weights, 2 + 2 biases
@pytest.mark.parametrize("change", ["missing", "wrong-shape", "extra", "nan", "int"])
def test_each_weight_wrong(tmp_path, model_file, index, change):
    state = load_state(model_file[0])
    names = list(state["weights"])
    assert len(names) == 6
    key = names[index]
    w = state["weights"][key]
    if change == "missing":
        del state["weights"][key]
        fragment = f"missing weight '{key}'"
    elif change == "wrong-shape":
        state["weights"][key] = torch.zeros(w.shape[0] + 1, *w.shape[1:])
        fragment = "weight shape mismatch"
    elif change == "extra":
        state["weights"][key.replace(".", "_extra.")] = w
        fragment = "unexpected weight"
    elif change == "nan":
        state["weights"][key] = torch.full_like(w, math.nan)
        fragment = "NaN"
    else:
        state["weights"][key] = w.to(torch.int64)
        fragment = "not a float tensor"
    write_state(tmp_path / "m.pt", state)
    message = assert_clear_error(tmp_path / "m.pt", fragment)
    if change != "extra":
        assert repr(key) in message


@pytest.mark.parametrize(
    "name, value",
    [
        ("lam", -1.0), ("lam", math.nan), ("contamination", 0.7), ("hidden", [4, 0]), ("hidden", "4,3"),
        ("outer_iter", 0), ("batch_size", 2.5), ("lr", 0), ("tol", -1), ("penalty", "l2"),
        ("optimizer", "lbfgs"), ("activation", "swish"), ("output_activation", None), ("dtype", "float16"),
        ("random_state", 1.5), ("random_state", {"numpy_random": "RandomState", "state": {"key": [1]}}),
        ("random_state", {"numpy_random": "Generator", "state": {"bit_generator": "RandomState"}}),
    ],
)
def test_each_invalid_parameter(tmp_path, model_file, name, value):
    state = load_state(model_file[0])
    state["params"][name] = value
    write_state(tmp_path / "m.pt", state)
    assert_clear_error(tmp_path / "m.pt", "parameters invalid", name)


def test_unknown_parameter_and_sizes_that_do_not_match(tmp_path, model_file):
    state = load_state(model_file[0])
    state["params"]["lamda"] = 1.0
    write_state(tmp_path / "a.pt", state)
    assert_clear_error(tmp_path / "a.pt", "parameters invalid", "unknown", "'lamda'")
    state = load_state(model_file[0])
    state["params"]["hidden"] = [4]
    write_state(tmp_path / "b.pt", state)
    assert_clear_error(tmp_path / "b.pt", "sizes", "hidden")
    state = load_state(model_file[0])
    state["params"]["tied_weights"] = False  # an untied network has decoder weights of its own
    write_state(tmp_path / "c.pt", state)
    assert_clear_error(tmp_path / "c.pt", "missing weight")


@pytest.mark.parametrize(
    "key, value, fragment",
    [
        ("n_features_in_", 7, "n_features_in_"),
        ("n_iter_", -1, "n_iter_"),
        ("batch_seed", "x", "batch_seed"),
        ("lam_", None, "lam_"),
        ("threshold_", math.nan, "threshold_"),
        ("threshold_", math.inf, "threshold_ is inf, not a finite number >= 0"),
        ("threshold_", -1.0, "threshold_ is -1.0"),
        ("lam_", math.inf, "lam_ is inf"),
        ("history_", {"lam": 1}, "history_"),
        ("history_", [{"lam": 1.0, "c1": math.nan, "c2": 0.0}], "history_[0]['c1'] is nan"),
        ("history_", [{"lam": 1.0}], "history_[0] lacks 'c1', 'c2'"),
        ("decision_scores_", torch.zeros(48, 2), "decision_scores_"),
        ("decision_scores_", torch.full((48,), math.inf, dtype=torch.float64), "decision_scores_ holds NaN or infinite"),
        ("labels_", torch.zeros(47, dtype=torch.int64), "labels_"),
        ("labels_", torch.zeros(48), "labels_"),
        ("labels_", torch.full((48,), 7), "labels_ holds [7], not only 0 and 1"),
        ("labels_", torch.full((48,), -1), "labels_ holds [-1]"),
        ("L_", torch.zeros(48, 5), "L_"),
        ("L_", torch.full((48, 6), math.nan), "L_ holds NaN or infinite values"),
        ("S_", torch.full((48, 6), math.inf), "S_ holds NaN or infinite values"),
        ("S_", np.zeros(3).tolist(), "S_"),
        ("input", "pandas", "input"),
    ],
)
def test_each_fitted_value_wrong(tmp_path, model_file, key, value, fragment):
    state = load_state(model_file[0])
    state["fitted"][key] = value
    write_state(tmp_path / "m.pt", state)
    assert_clear_error(tmp_path / "m.pt", "not a valid rda_ext model file", fragment)


JUNK = st.sampled_from([None, "x", -1, 1.5, math.nan, True, [], {}, [1, "a"], {"a": 1}, torch.zeros(2), torch.zeros(0, 3)])


def state_paths(state: dict) -> list[tuple]:
    """The place of every value in a model file, two levels deep."""
    paths = [(key,) for key in state]
    for key in ("params", "weights", "fitted"):
        paths += [(key, sub) for sub in state[key]]
    return paths


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_value_replaced_by_junk(model_file, data):
    """Whatever value of the file is replaced by whatever junk, load gives a model that works or a
    ValueError naming the file: never another exception."""
    path, _ = model_file
    state = load_state(path)
    where = data.draw(st.sampled_from(state_paths(state)), label="where")
    junk = data.draw(JUNK, label="junk")
    parent = state
    for key in where[:-1]:
        parent = parent[key]
    original = parent[where[-1]]
    parent[where[-1]] = junk
    buf = io.BytesIO()
    torch.save(state, buf)
    with tempfile.TemporaryDirectory() as tmp:
        bad = os.path.join(tmp, "m.pt")
        with open(bad, "wb") as f:
            f.write(buf.getvalue())
        try:
            back = RobustAutoencoder.load(bad)
        except ValueError as e:
            assert bad in str(e) and "weights_only" not in str(e), str(e)
            return
    # accepted: only where the junk is a value that the model does not depend on
    assert where in {
        ("params", "verbose"), ("params", "warm_start"), ("params", "tied_weights"), ("params", "cuda_graphs"),
        ("params", "lam"),
        ("params", "random_state"), ("params", "dtype"), ("params", "tol"), ("params", "lr"),
        ("params", "distributed"), ("params", "checkpoint"),
        ("fitted", "history_"), ("fitted", "lam_"), ("fitted", "threshold_"),
    } or (original is None and junk is None), (where, junk)
    back.decision_function(X)


def test_score_command_reports_a_broken_model(tmp_path, model_file, capsys):
    cli = pytest.importorskip("rda_ext.cli")
    state = load_state(model_file[0])
    del state["weights"]
    write_state(tmp_path / "broken.pt", state)
    np.save(tmp_path / "x.npy", X)
    rc = cli.main(["score", str(tmp_path / "broken.pt"), str(tmp_path / "x.npy"), "--out", str(tmp_path / "s.npz")])
    err = capsys.readouterr().err
    assert rc == 2 and str(tmp_path / "broken.pt") in err and "missing key 'weights'" in err, err
    assert "Traceback" not in err and not (tmp_path / "s.npz").exists()


def test_saved_device_not_available_here(tmp_path, model_file):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible")
    state = load_state(model_file[0])
    state["params"]["device"] = "cuda"
    write_state(tmp_path / "gpu.pt", state)
    assert_clear_error(tmp_path / "gpu.pt", "no CUDA device is visible", "device=")
    back = RobustAutoencoder.load(tmp_path / "gpu.pt", device="cpu")  # the override
    assert back.device == "cpu"
    assert_same_model(back, model_file[1])
    with pytest.raises(ValueError, match="device must be"):  # a bad override is the caller's error
        RobustAutoencoder.load(model_file[0], device="tpu")


def test_missing_file_is_still_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        RobustAutoencoder.load(tmp_path / "absent.pt")


# ---------------------------------------------------------------- random_state
@settings(max_examples=100, deadline=None)
@given(
    st.floats(allow_nan=True) | st.booleans() | st.text() | st.integers(max_value=-1) | st.integers(min_value=2**64)
    | numpy_scalar(FLOATS, [0.0, 1.5, 3.0]) | st.sampled_from([np.bool_(True), np.int64(-1), [0], (0,), b"0", object()])
)
def test_random_state_refuses_anything_else(value):
    with pytest.raises(ValueError, match="random_state must be None, an integer seed"):
        check_params(RobustAutoencoder(random_state=value).get_params())


@settings(max_examples=100, deadline=None)
@given(
    st.none() | st.integers(0, 2**64 - 1)
    | st.builds(lambda t, v: t(v % (int(np.iinfo(t).max) + 1)), st.sampled_from(INTS), st.integers(0, 2**64 - 1))
)
def test_random_state_accepts_seeds(value):
    check_params(RobustAutoencoder(random_state=value).get_params())


@pytest.mark.parametrize("value", [1.5, 2.0, np.float64(2.0), True, "0", -1, 2**64])
def test_fit_refuses_bad_random_state(value):
    est = RobustAutoencoder(**{**TINY, "random_state": value})
    with pytest.raises(ValueError, match="random_state"):
        est.fit(X)
    assert not hasattr(est, "model_")


@pytest.mark.parametrize("make", [np.random.RandomState, np.random.default_rng], ids=["RandomState", "Generator"])
def test_numpy_random_state(tmp_path, make):
    a = RobustAutoencoder(**{**TINY, "random_state": make(0)}).fit(X)
    b = RobustAutoencoder(**{**TINY, "random_state": make(0)}).fit(X)
    assert_same_model(a, b)  # the same state, the same fit
    rs = make(0)
    c = RobustAutoencoder(**{**TINY, "random_state": rs}).fit(X)
    assert c.random_state is rs  # fit leaves the parameter itself
    c_first = c.decision_scores_.copy()
    c.fit(X)  # draws the next seed from the same state: another fit
    assert not np.array_equal(c.decision_scores_, c_first)
    # saved as its state: the loaded estimator refits exactly as the original does
    c.save(tmp_path / "m.pt")
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert type(back.random_state) is type(rs) and back.random_state is not rs
    assert_same_model(back, c)
    assert_same_model(back.fit(X), c.fit(X))


def test_numpy_integer_seed_is_the_int_seed():
    a = RobustAutoencoder(**{**TINY, "random_state": np.uint8(7)}).fit(X)
    b = RobustAutoencoder(**{**TINY, "random_state": 7}).fit(X)
    assert_same_model(a, b)


# -- the one-line reason of a torch.load failure ------------------------------------------------

@pytest.mark.parametrize("error, expected", [
    (RuntimeError("\x1b[31mInvalid magic number\x1b[0m; corrupt file? More advice."), "Invalid magic number; corrupt file?"),
    (RuntimeError("Weights only load failed. This file can still be loaded, but with weights_only=False it runs "
                  "code.\n WeightsUnpickler error: Unsupported global: GLOBAL numpy.core.multiarray._reconstruct "
                  "was not an allowed global by default.\nPlease use safe_globals.\n\nCheck the documentation."),
     "it holds a numpy.core.multiarray._reconstruct object, which a model file never does"),
    (RuntimeError("Weights only load failed.\nWeightsUnpickler error: Unsupported operand 80\n\nRe-running with "
                  "weights_only=False will work."), "Unsupported operand 80"),
    (RuntimeError("WeightsUnpickler error: unsupported   global\n  GLOBAL x.y"), "unsupported global GLOBAL x.y"),
    (RuntimeError("Use weights_only=False. Or add_safe_globals. The   archive\nis   broken. Second."),
     "The archive is broken"),
    (RuntimeError("first sentence! second"), "first sentence!"),
    (RuntimeError("no key X. Another."), "no key X"),
    (RuntimeError("only weights_only advice."), "RuntimeError"),
    (EOFError(), "the file is empty or cut short"),
    (EOFError("Ran out of input"), "Ran out of input"),
    (ValueError(""), "ValueError"),
])
def test_reason_is_the_gist_of_the_load_error(error, expected):
    from rda_ext.io.state_files import reason

    assert reason(error, "a model file") == expected


@pytest.mark.parametrize("value, message", [
    (torch.zeros(3).to_sparse(), "w is a torch.sparse_coo tensor, not a dense one"),
    (torch.zeros(3, dtype=torch.int64), "w has dtype torch.int64, not a floating dtype"),
    (torch.zeros(3, dtype=torch.float32), "w has dtype torch.float32, not torch.float64"),
    (torch.zeros(3, dtype=torch.float64), "w has shape (3,), not (2,)"),
    (torch.tensor([0.0, math.nan], dtype=torch.float64), "w holds NaN or infinite values"),
])
def test_a_tensor_of_a_state_file_is_checked_for_layout_dtype_shape_and_values(value, message):
    from rda_ext.io.state_files import InvalidState, check_tensor

    dtype = None if message.endswith("floating dtype") or message.endswith("dense one") else torch.float64
    with pytest.raises(InvalidState) as e:
        check_tensor(value, "w", shape=(2,) if "shape" in message else None, dtype=dtype)
    assert str(e.value) == message


@requires_cuda
def test_a_model_fitted_on_the_cpu_loads_onto_a_gpu(tmp_path, gen):
    X = np.random.default_rng(int(gen.initial_seed())).random((40, 6)).astype(np.float32)
    est = RobustAutoencoder(hidden=(4, 2), outer_iter=1, inner_epochs=1, random_state=0).fit(X)
    est.save(tmp_path / "m.pt")
    back = RobustAutoencoder.load(tmp_path / "m.pt", device="cuda")
    assert all(p.device.type == "cuda" for p in back.model_.parameters())
    np.testing.assert_allclose(back.decision_function(X), est.decision_function(X), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("dtype", ["float64", torch.float64])
def test_a_float64_model_keeps_its_weights_exactly(tmp_path, gen, dtype):
    """The network is built in the saved dtype before the weights are copied in (a float32 network
    would round float64 weights to float32). The dtype is saved by its name."""
    X = np.random.default_rng(int(gen.initial_seed())).random((40, 6))
    est = RobustAutoencoder(hidden=(4, 2), outer_iter=1, inner_epochs=1, dtype=dtype, random_state=0).fit(X)
    est.save(tmp_path / "m.pt")
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert back.dtype == "float64"
    for a, b in zip(est.model_.parameters(), back.model_.parameters()):
        assert b.dtype == torch.float64 and torch.equal(a, b)
    np.testing.assert_array_equal(back.decision_function(X), est.decision_function(X))


def test_a_torch_device_parameter_and_tensor_data_round_trip(tmp_path):
    est = RobustAutoencoder(**{**TINY, "device": torch.device("cpu")}).fit(torch.from_numpy(X))
    est.save(tmp_path / "m.pt")
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert back.device == "cpu"  # saved by its name
    assert isinstance(back.L_, torch.Tensor) and isinstance(back.S_, torch.Tensor)  # the input's kind
    assert torch.equal(back.L_, est.L_) and torch.equal(back.S_, est.S_)
    est.fit(X).save(tmp_path / "n.pt")
    assert isinstance(RobustAutoencoder.load(tmp_path / "n.pt").L_, np.ndarray)


@pytest.mark.parametrize("sizes", [[6, 4.0, 3], [0, 4, 3], [6, 4, 0], [6], [6, True, 3], "6,4,3"])
def test_sizes_must_be_positive_integers_matching_hidden(tmp_path, model_file, sizes):
    state = load_state(model_file[0])
    state["sizes"] = sizes
    write_state(tmp_path / "m.pt", state)
    message = assert_clear_error(tmp_path / "m.pt")
    assert message == (f"{str(tmp_path / 'm.pt')!r} is not a valid rda_ext model file: sizes {sizes!r} do not match "
                       "hidden (4, 3)")


def test_a_layer_of_one_unit_loads(tmp_path):
    est = RobustAutoencoder(**{**TINY, "hidden": (1,)}).fit(X)
    est.save(tmp_path / "m.pt")
    assert RobustAutoencoder.load(tmp_path / "m.pt").model_.sizes == (6, 1)


def _edit(state, where, value):
    *path, last = where
    target = state
    for key in path:
        target = target[key]
    if value is _DELETE:
        del target[last]
    else:
        target[last] = value


_DELETE = object()
BROKEN = [
    ([("fitted",)], [[1]], "'fitted' is a list, not a dict"),
    ([("weights",)], [[1]], "'weights' is a list, not a dict"),
    ([("fitted", "n_iter_"), ("fitted", "lam_")], [_DELETE, _DELETE], "missing key 'fitted.n_iter_', 'fitted.lam_'"),
    ([("weights", "enc_weight.0"), ("weights", "enc_bias.0")], [_DELETE, _DELETE],
     "missing weight 'enc_weight.0', 'enc_bias.0'"),
    ([("weights", "x"), ("weights", "y")], [torch.zeros(1), torch.zeros(1)], "unexpected weight 'x', 'y' for this network"),
    ([("fitted", "history_")], [[1]], "history_[0] is an int, not a dict"),
    ([("fitted", "history_")], [{"a": 1}], "history_ is a dict, not a list"),
    ([("fitted", "input")], ["pandas"], "input is 'pandas', not 'numpy' or 'tensor'"),
    ([("fitted", "n_features_in_")], [7], "n_features_in_ is 7 but the network takes 6 features"),
    ([("fitted", "n_iter_")], [-1], "n_iter_ is -1, not an integer >= 0"),
    ([("fitted", "batch_seed")], [1.5], "batch_seed is 1.5, not an integer >= 0"),
    ([("params",)], [[1]], "'params' is a list, not a dict"),
    ([("sizes",), ("weights",)], [_DELETE, _DELETE], "missing key 'sizes', 'weights'"),
    ([("params", "lam"), ("params", "tol")], [_DELETE, _DELETE], "parameters invalid: missing 'lam', 'tol'"),
    ([("params", "lam"), ("params", "x")], [_DELETE, 1], "parameters invalid: missing 'lam'; unknown 'x'"),
    ([("params", "x"), ("params", "y")], [1, 2], "parameters invalid: unknown 'x', 'y'"),
    ([("params", "random_state")], [{"numpy_random": "Generator", "state": {"bit_generator": "RandomState"}}],
     "parameters invalid: random_state is not a readable numpy random state ('RandomState' is not a numpy bit "
     "generator)"),
    ([("params", "random_state")], [{"numpy_random": "Generator", "state": {"bit_generator": "random"}}],
     "parameters invalid: random_state is not a readable numpy random state ('random' is not a numpy bit "
     "generator)"),
    ([("params", "random_state")], [{"numpy_random": "Philox", "state": {}}],
     "parameters invalid: random_state is not a readable numpy random state (unknown kind 'Philox')"),
    ([("fitted", "output_activation_")], [_DELETE], "missing key 'fitted.output_activation_'"),
    ([("fitted", "S_"), ("fitted", "input")], [_DELETE, _DELETE], "missing key 'fitted.S_', 'fitted.input'"),
    ([("fitted", "decision_scores_")], [torch.zeros(48, 2)], "decision_scores_ is not a vector of floats"),
    ([("fitted", "decision_scores_")], [torch.zeros(48, dtype=torch.int64)], "decision_scores_ is not a vector of floats"),
    ([("fitted", "decision_scores_")], [[0.5] * 48], "decision_scores_ is not a vector of floats"),
    ([("fitted", "labels_")], [torch.tensor([0, 1, 9, 7, 3, 2] * 8)], "labels_ holds [2, 3, 7], not only 0 and 1"),
    ([("fitted", "L_")], [torch.zeros(48, 5)], "L_ is not a (48, 6) tensor but shape (48, 5)"),
    ([("fitted", "S_")], [[0.0] * 6], "S_ is not a (48, 6) tensor but a list"),
    ([("fitted", "center_")], [torch.zeros(6, dtype=torch.float64)], "center_ and scale_ are saved together or not at all"),
    ([("fitted", "center_"), ("fitted", "scale_")], [torch.zeros(6, dtype=torch.float64), torch.ones(5, dtype=torch.float64)],
     "scale_ is not a finite float64 vector of 6 numbers"),
    ([("fitted", "center_"), ("fitted", "scale_")], [torch.zeros(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)],
     "scale_ has entries <= 0"),
    ([("fitted", "residual_scale_")], [torch.zeros(6, dtype=torch.float64)], "residual_scale_ has entries <= 0"),
    ([("fitted", "residual_scale_")], [torch.ones(6)],
     "residual_scale_ is not a finite float64 tensor of shape (6,) (saved with residual_scale_, code_center_, "
     "code_precision_)"),
    ([("fitted", "code_center_")], [torch.ones(4, dtype=torch.float64)],
     "code_center_ is not a finite float64 tensor of shape (3,) (saved with residual_scale_, code_center_, "
     "code_precision_)"),
    ([("fitted", "residual_scale_"), ("fitted", "code_center_")], [_DELETE, _DELETE],
     "residual_scale_ is not a finite float64 tensor of shape (6,) (saved with code_precision_)"),
]


@pytest.mark.parametrize("where, values, detail", BROKEN, ids=[f"fault{i}" for i in range(len(BROKEN))])
def test_what_is_wrong_with_a_model_file_is_said_exactly(tmp_path, model_file, where, values, detail):
    state = load_state(model_file[0])
    for w, v in zip(where, values):
        _edit(state, w, v)
    write_state(tmp_path / "m.pt", state)
    message = assert_clear_error(tmp_path / "m.pt")
    assert message == f"{str(tmp_path / 'm.pt')!r} is not a valid rda_ext model file: {detail}"


def test_a_file_from_before_the_output_activation_was_saved_takes_its_parameter(tmp_path, model_file):
    state = load_state(model_file[0])
    del state["fitted"]["output_activation_"]
    state["params"]["output_activation"] = "linear"  # as such a file names it
    write_state(tmp_path / "m.pt", state)
    assert RobustAutoencoder.load(tmp_path / "m.pt").model_.architecture[2] == "linear"


def test_a_checkpoint_path_is_saved_as_text(tmp_path):
    est = RobustAutoencoder(**TINY, checkpoint=tmp_path / "ck").fit(X)
    est.save(tmp_path / "m.pt")
    assert RobustAutoencoder.load(tmp_path / "m.pt").get_params()["checkpoint"] == str(tmp_path / "ck")


def test_zero_counts_load_and_a_loaded_model_warm_starts_as_the_original(tmp_path, model_file):
    state = load_state(model_file[0])
    state["fitted"]["n_iter_"] = 0
    state["fitted"]["batch_seed"] = 0
    write_state(tmp_path / "zero.pt", state)
    zero = RobustAutoencoder.load(tmp_path / "zero.pt")
    assert zero.n_iter_ == 0 and zero._batch_seed == 0
    path, est = model_file
    back = RobustAutoencoder.load(path)
    assert back._batch_seed == est._batch_seed
    a = copy.deepcopy(est)
    a._optim = None  # a model file holds no optimizer state: both go on with a fresh one
    a.set_params(warm_start=True, outer_iter=1).fit(X)
    b = back.set_params(warm_start=True, outer_iter=1).fit(X)
    np.testing.assert_allclose(b.L_, a.L_, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("raw", [b"\x80\x07" + b"x" * 40, b"\x80\x05K\x01."], ids=["protocol7", "protocol5"])
def test_a_file_of_an_odd_pickle_protocol_is_an_error_without_a_warning(tmp_path, raw):
    (tmp_path / "odd.pt").write_bytes(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's note on the protocol would be an error here
        assert_clear_error(tmp_path / "odd.pt", "not a readable rda_ext model")


# ---------------------------------------------------------------- what the fit ran with
FIT_FACTS = ("precision", "preprocessing", "fingerprint")


def test_the_fits_precision_preprocessing_and_data_are_saved_not_a_later_set_params(tmp_path):
    data = X * 3 - 1  # outside [0, 1]: "auto" scales it
    est = RobustAutoencoder(**TINY, precision="bfloat16", preprocessing="auto").fit(data)
    est.set_params(precision="float32", preprocessing="minmax").save(tmp_path / "m.pt")
    state = load_state(tmp_path / "m.pt")
    assert state["params"]["precision"] == "float32" and state["params"]["preprocessing"] == "minmax"
    assert state["fitted"]["precision"] == "bfloat16" and state["fitted"]["preprocessing"] == "auto"
    assert state["fitted"]["fingerprint"] == est._fit_fingerprint
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert (back._fit_precision, back._fit_preprocessing, back._fit_fingerprint) == (
        "bfloat16", "auto", est._fit_fingerprint)
    np.testing.assert_array_equal(back.decision_function(data), est.decision_function(data))
    with pytest.raises(ValueError, match='scaled by preprocessing="auto"'):
        back.set_params(warm_start=True).fit(data)


def warm_L(est: RobustAutoencoder, data) -> np.ndarray:
    """L_ of one warm iteration that does not train: AE(X - S) for the S the warm start begins with."""
    return copy.deepcopy(est).set_params(warm_start=True, inner_epochs=0, outer_iter=1).fit(data).L_


def test_a_file_from_before_the_fit_facts_has_its_parameters_and_starts_s_from_zeros(tmp_path, model_file):
    path, est = model_file
    state = load_state(path)
    for key in FIT_FACTS:
        del state["fitted"][key]
    state["params"]["precision"] = "float32"
    write_state(tmp_path / "old.pt", state)
    old = RobustAutoencoder.load(tmp_path / "old.pt")
    assert (old._fit_precision, old._fit_preprocessing, old._fit_fingerprint) == ("float32", est.preprocessing, None)
    # It cannot tell its data: S starts from zeros. A file that has the fingerprint goes on from its S.
    np.testing.assert_allclose(warm_L(old, X), old.reconstruct(X), rtol=1e-6, atol=1e-7)
    back = RobustAutoencoder.load(path)
    np.testing.assert_allclose(warm_L(back, X), back.reconstruct(X - back.S_), rtol=1e-6, atol=1e-7)
    assert not np.allclose(back.reconstruct(X - back.S_), back.reconstruct(X), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("key, value, detail", [
    ("precision", "half", "precision is 'half', not one of ('float32', 'bfloat16', 'auto')"),
    ("precision", None, "precision is None, not one of ('float32', 'bfloat16', 'auto')"),
    ("precision", True, "precision is True, not one of ('float32', 'bfloat16', 'auto')"),
    ("preprocessing", "scale", "preprocessing is 'scale', not one of ('auto', 'none', 'minmax', 'standardize')"),
    ("preprocessing", None, "preprocessing is None, not one of ('auto', 'none', 'minmax', 'standardize')"),
    ("fingerprint", None, "fingerprint is None, not a hash in hexadecimal digits"),
    ("fingerprint", "xyz", "fingerprint is 'xyz', not a hash in hexadecimal digits"),
    ("fingerprint", 5, "fingerprint is 5, not a hash in hexadecimal digits"),
])
def test_each_fit_fact_wrong(tmp_path, model_file, key, value, detail):
    state = load_state(model_file[0])
    state["fitted"][key] = value
    write_state(tmp_path / "m.pt", state)
    message = assert_clear_error(tmp_path / "m.pt")
    assert message == f"{str(tmp_path / 'm.pt')!r} is not a valid rda_ext model file: {detail}"


def test_switches_given_as_numpy_bools_or_0_and_1_round_trip(tmp_path):
    switches = dict(tied_weights=np.bool_(False), warm_start=1, cuda_graphs=np.int64(0), verbose=0)
    est = RobustAutoencoder(**TINY, **switches).fit(X)
    est.save(tmp_path / "m.pt")
    saved = load_state(tmp_path / "m.pt")["params"]
    assert [type(saved[k]) for k in switches] == [bool, int, int, int]
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert back.get_params() == est.get_params() and not back.model_.tied
    assert_same_model(back, est)


@pytest.mark.parametrize("name", ["tied_weights", "warm_start", "cuda_graphs", "verbose"])
def test_a_file_with_a_switch_that_is_not_a_bool_is_refused(tmp_path, model_file, name):
    state = load_state(model_file[0])
    state["params"][name] = "no"
    write_state(tmp_path / "m.pt", state)
    message = assert_clear_error(tmp_path / "m.pt")
    assert message.endswith(f"parameters invalid: {name} must be True or False, got 'no'")
