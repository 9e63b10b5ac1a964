import importlib.metadata
import json
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import warnings

import numpy as np
import pytest
from helpers import planted

from rda_ext import RobustAutoencoder
from rda_ext.cli import main
from rda_ext.solver import HISTORY_KEYS

FAST = ["--hidden", "16,4", "--outer-iter", "3", "--inner-epochs", "5", "--batch-size", "16",
        "--lr", "0.01", "--activation", "elu", "--seed", "3"]
RDA_EXT = os.path.join(sysconfig.get_path("scripts"), "rda-ext")


@pytest.fixture
def data(tmp_path, gen):
    X, _ = planted(int(gen.initial_seed()), n=120, n_out=6)
    np.save(tmp_path / "X.npy", X)
    return X


def run_main(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_user_error(code, err, message):
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rda-ext: error: ") and message in lines[0], err


def test_fit_then_score(tmp_path, capsys, data):
    """With the paper's score: the norm of the residual, and lam as the threshold."""
    code, out, err = run_main(capsys, "fit", tmp_path / "X.npy", "--contamination", "0.05",
                              "--out", tmp_path / "r.npz", "--model", tmp_path / "m.pt", *FAST,
                              "--outlier-score", "residual")
    assert code == 0 and "rows flagged" in out
    with np.load(tmp_path / "r.npz") as r:
        assert r["L"].shape == r["S"].shape == data.shape
        np.testing.assert_allclose(r["scores"], np.linalg.norm(data - r["L"], axis=1), rtol=1e-5)
        assert r["scores"].shape == r["labels"].shape == (len(data),)
        assert r["history"].shape == (3, len(r["history_columns"]))
        assert float(r["threshold"]) == float(r["lam"])
        train_scores = r["scores"]
    model = RobustAutoencoder.load(tmp_path / "m.pt")
    assert not hasattr(model, "L_")  # the CLI keeps the data in OUT only

    code, out, _ = run_main(capsys, "score", tmp_path / "m.pt", tmp_path / "X.npy", "--out", tmp_path / "s.npz")
    assert code == 0 and "rows scored" in out
    with np.load(tmp_path / "s.npz") as s:
        np.testing.assert_array_equal(s["scores"], model.decision_function(data))
        assert np.array_equal(s["labels"], (s["scores"] > s["threshold"]).astype(int))
    assert train_scores.dtype == np.float64


@pytest.mark.parametrize("fmt", ["npz", "csv"])
def test_input_formats(tmp_path, capsys, data, fmt):
    if fmt == "npz":
        np.savez(tmp_path / "in.npz", labels=np.arange(len(data)), X=data)
        path, extra = tmp_path / "in.npz", ["--key", "X"]
        code, _, err = run_main(capsys, "fit", path, "--out", tmp_path / "r.npz", *FAST)
        assert_user_error(code, err, "choose one with --key")
    else:
        np.savetxt(tmp_path / "in.csv", data, delimiter=",", header=",".join(f"f{i}" for i in range(data.shape[1])),
                   comments="")
        path, extra = tmp_path / "in.csv", []
    code, _, err = run_main(capsys, "fit", path, *extra, "--lam", "0.5", "--penalty", "l1",
                            "--out", tmp_path / "r.npz", *FAST)
    assert code == 0, err
    with np.load(tmp_path / "r.npz") as r:
        assert r["S"].shape == data.shape and float(r["lam"]) == 0.5


def test_user_errors(tmp_path, capsys, data):
    out = tmp_path / "r.npz"
    nan = data.copy()
    nan[2, 3] = np.nan
    np.save(tmp_path / "nan.npy", nan)
    np.save(tmp_path / "vec.npy", data[0])
    (tmp_path / "junk.npz").write_bytes(b"this is not a zip file")
    cases = [
        (["fit", tmp_path / "missing.npy", "--out", out], "no such file"),
        (["fit", tmp_path / "junk.npz", "--out", out], "cannot read"),
        (["fit", tmp_path / "X.txt", "--out", out], "unsupported file type"),
        (["fit", tmp_path / "vec.npy", "--out", out], "expected a matrix"),
        (["fit", tmp_path / "nan.npy", "--out", out], "X contains NaN or infinite values"),
        (["fit", tmp_path / "X.npy", "--lam", "-1", "--out", out], "lam must be None or a finite number >= 0"),
        (["fit", tmp_path / "X.npy", "--contamination", "0.9", "--out", out], "contamination must be"),
        (["fit", tmp_path / "X.npy", "--hidden", "400,x", "--out", out], "layer sizes"),
        (["fit", tmp_path / "X.npy", "--out", tmp_path / "no" / "r.npz"], "does not exist"),
        (["score", tmp_path / "X.npy", tmp_path / "X.npy", "--out", out], "not a readable rda_ext model"),
        (["fit"], "required"),
        ([], "required"),
    ]
    for argv, message in cases:
        code, _, err = run_main(capsys, *argv)
        assert_user_error(code, err, message)
        assert not out.exists()


def test_failed_run_keeps_an_existing_out(tmp_path, capsys, data):
    out = tmp_path / "r.npz"
    out.write_bytes(b"previous result")
    code, _, _ = run_main(capsys, "fit", tmp_path / "X.npy", "--lam", "-2", "--out", out)
    assert code == 2 and out.read_bytes() == b"previous result"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X.npy", "r.npz"]


def test_score_rejects_wrong_width(tmp_path, capsys, data):
    assert run_main(capsys, "fit", tmp_path / "X.npy", "--out", tmp_path / "r.npz", "--model", tmp_path / "m.pt", *FAST)[0] == 0
    np.save(tmp_path / "narrow.npy", data[:, :10])
    code, _, err = run_main(capsys, "score", tmp_path / "m.pt", tmp_path / "narrow.npy", "--out", tmp_path / "s.npz")
    assert_user_error(code, err, "X has 10 features, but RobustAutoencoder is expecting 30 features as input")


def test_info(capsys):
    code, out, _ = run_main(capsys, "info")
    assert code == 0 and "cuda_kernels: " in out and "intra_op_threads: " in out


@pytest.mark.child_process
@pytest.mark.parametrize("command", [[RDA_EXT], [sys.executable, "-m", "rda_ext"]])
def test_subprocess_entry_points(tmp_path, data, command):
    def run(*argv):
        return subprocess.run([*command, *map(str, argv)], capture_output=True, text=True, cwd=tmp_path)

    ok = run("fit", tmp_path / "X.npy", "--out", tmp_path / "r.npz", "--model", tmp_path / "m.pt", *FAST)
    assert ok.returncode == 0, ok.stderr
    assert (tmp_path / "r.npz").exists()
    scored = run("score", tmp_path / "m.pt", tmp_path / "X.npy", "--out", tmp_path / "s.npz")
    assert scored.returncode == 0 and "rows scored" in scored.stdout, scored.stderr
    info = run("info")
    assert info.returncode == 0 and "cuda_kernels:" in info.stdout
    bad = subprocess.run([*command, "fit", str(tmp_path / "none.npy"), "--out", str(tmp_path / "q.npz")],
                         capture_output=True, text=True, cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().startswith("rda-ext: error:") and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.child_process
def test_demo_runs_the_paper_experiment(tmp_path):
    pytest.importorskip("sklearn")
    result = subprocess.run([RDA_EXT, "demo", "--digits", "4", "--json", str(tmp_path / "demo.json")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("RDA (l21_rows)", "IsolationForest", "plain autoencoder"):
        assert name in result.stdout
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["n_outliers"] == 27 and report["n_rows"] == 527
    rda = report["methods"]["RDA (l21_rows)"]
    # The rows above the (1 - 0.052) quantile of 527 scores, as for both autoencoders: 28.
    assert rda["n_flagged"] == report["methods"]["plain autoencoder"]["n_flagged"] == 28
    assert report["methods"]["autoencoder, RDA's score"]["n_flagged"] == 28
    # A detector that learned the digit, not chance: the outliers rank high.
    assert rda["auroc"] > 0.85
    # hidden="auto" on 784 features: both shapes measured, the one kept named, as printed.
    assert list(report["shape_contrast"]) == ["784-128-32", "784-392-196"]
    assert report["rda_network"] in report["shape_contrast"]
    # The construction's table (its other digits: the in-process test below): the digit asked for,
    # the paper's own instance measured above, and the mean over the digits.
    construction = report["construction"]
    assert list(construction["digits"]) == ["4"] and construction["seed"] == 0
    for name in ("RDA (l21_rows)", "RDA (paper setting)", "IsolationForest"):
        assert construction["digits"]["4"][name] == {m: report["methods"][name][m] for m in ("f1", "auroc")}
        assert construction["mean"][name] == construction["digits"]["4"][name]
    assert "The paper's construction: each digit nominal in turn" in result.stdout
    assert result.stdout.count("\nmean ") == 1
    assert f'RDA, hidden="auto": residual contrast 784-128-32 ' in result.stdout
    assert f"RDA and the plain autoencoder: {report['rda_network']}, " in result.stdout


def test_fit_options_are_the_estimators_parameters(tmp_path, monkeypatch):
    """Every parameter but warm_start and distributed (torchrun decides it) is an option of fit,
    with the estimator's own default, and the options reach the estimator unchanged."""
    from rda_ext import cli

    seen = {}
    monkeypatch.setattr(RobustAutoencoder, "fit", lambda self, X, y=None: seen.update(self.get_params()) or 1 / 0)
    np.save(tmp_path / "X.npy", np.random.rand(5, 3))
    with pytest.raises(ZeroDivisionError):
        cli.main(["fit", str(tmp_path / "X.npy"), "--out", str(tmp_path / "r.npz")])
    assert seen == {**RobustAutoencoder().get_params(), "warm_start": False, "distributed": "auto"}

    args = ["--hidden", "7,3", "--penalty", "l1", "--lam", "0.25", "--outer-iter", "4", "--inner-epochs", "0",
            "--batch-size", "9", "--lr", "0.5", "--optimizer", "sgd", "--activation", "relu",
            "--output-activation", "linear", "--no-tied-weights", "--preprocessing", "standardize", "--tol", "0.125",
            "--device", "cpu",
            "--dtype", "float64", "--precision", "auto", "--cuda-graphs", "--seed", "11", "-v",
            "--checkpoint", str(tmp_path / "ck"), "--outlier-score", "residual"]
    with pytest.raises(ZeroDivisionError):
        cli.main(["fit", str(tmp_path / "X.npy"), "--out", str(tmp_path / "r.npz"), *args])
    assert seen == dict(
        hidden=(7, 3), penalty="l1", lam=0.25, contamination=0.1, outer_iter=4, inner_epochs=0, batch_size=9,
        lr=0.5, optimizer="sgd", activation="relu", output_activation="linear", tied_weights=False,
        preprocessing="standardize", tol=0.125,
        warm_start=False, device="cpu", dtype="float64", precision="auto", cuda_graphs=True, random_state=11,
        verbose=True, distributed="auto", checkpoint=str(tmp_path / "ck"), outlier_score="residual",
    )


def test_fit_help_is_the_estimators_docstring(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--inner-epochs INNER_EPOCHS epochs of autoencoder training per outer iteration, or \"auto\" (default): " \
           "the fewest whole epochs that make at least 50 minibatch steps" in out
    assert "(default: 'auto')" in out
    assert "--penalty {l1,l21_rows,l21_cols}" in out
    assert "--precision {float32,bfloat16,auto}" in out
    assert "--preprocessing {auto,none,minmax,standardize}" in out
    assert "--outlier-score {residual+code+knn,residual+code,knn,residual}" in out


@pytest.mark.child_process
def test_import_asks_nothing_of_cuda():
    """Importing the package must not create a CUDA context (it breaks a later fork on a GPU host):
    any question to torch.cuda during the import fails this subprocess."""
    code = (
        "import torch\n"
        "def asked(*a, **k):\n"
        "    raise AssertionError('torch.cuda was asked during import rda_ext')\n"
        "for name in ('is_available', 'get_device_name', 'device_count', 'init', 'current_device'):\n"
        "    setattr(torch.cuda, name, asked)\n"
        "import rda_ext, rda_ext.cli, rda_ext.solver\n"
        "assert not torch.cuda.is_initialized()\n"
        "print(rda_ext.__version__)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=os.path.dirname(RDA_EXT))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == importlib.metadata.version("rda_ext")


@pytest.mark.parametrize("how", [["--lam", "0.5"], ["--contamination", "0.1"]])
def test_diverging_fit_is_a_user_error_and_writes_nothing(tmp_path, capsys, data, how):
    out = tmp_path / "r.npz"
    code, _, err = run_main(capsys, "fit", tmp_path / "X.npy", "--out", out, "--model", tmp_path / "m.pt",
                            "--optimizer", "sgd", "--lr", "1e20", "--output-activation", "linear",
                            "--hidden", "8", "--outer-iter", "4", "--inner-epochs", "2", *how)
    assert_user_error(code, err, "training diverged at outer iteration")
    assert not out.exists() and not (tmp_path / "m.pt").exists()


def test_out_and_model_the_same_file_is_refused(tmp_path, capsys, data):
    same = tmp_path / "r.npz"
    code, _, err = run_main(capsys, "fit", tmp_path / "X.npy", "--out", same, "--model", tmp_path / "." / "r.npz", *FAST)
    assert_user_error(code, err, "--out and --model are the same file")
    assert not same.exists()


@pytest.mark.parametrize("how", [["--lam", "0.9"], ["--contamination", "0.1"], ["--lam", "0.9", "--contamination", "0.05"]])
def test_fit_writes_the_estimators_exact_results(tmp_path, capsys, data, how):
    code, out, _ = run_main(capsys, "fit", tmp_path / "X.npy", "--out", tmp_path / "r.npz", *how, *FAST)
    assert code == 0
    kwargs = {name.removeprefix("--"): float(value) for name, value in zip(how[::2], how[1::2])}
    est = RobustAutoencoder(hidden=(16, 4), outer_iter=3, inner_epochs=5, batch_size=16, lr=0.01, activation="elu",
                            random_state=3, **kwargs).fit(data)
    with np.load(tmp_path / "r.npz") as r:
        np.testing.assert_array_equal(r["L"], est.L_)
        np.testing.assert_array_equal(r["S"], est.S_)
        np.testing.assert_array_equal(r["scores"], est.decision_scores_)
        assert float(r["lam"]) == est.lam_ and float(r["threshold"]) == est.threshold_
        # The labels are the rows above the threshold (the default score's quantile), and the
        # history its rows in HISTORY_KEYS order.
        np.testing.assert_array_equal(r["labels"], est.labels_)
        np.testing.assert_array_equal(r["labels"], (r["scores"] > float(r["threshold"])).astype(np.int64))
        assert list(r["history_columns"]) == list(HISTORY_KEYS)
        expected = np.array([[h[k] for k in HISTORY_KEYS] for h in est.history_])
        seconds = list(HISTORY_KEYS).index("seconds")
        np.testing.assert_array_equal(np.delete(r["history"], seconds, 1), np.delete(expected, seconds, 1))
        flagged, lam = int(r["labels"].sum()), float(r["lam"])
    # contamination (0.1 unless given) is the fraction flagged, with lam or without.
    assert flagged == round(kwargs.get("contamination", 0.1) * len(data))
    h = est.history_[-1]
    assert out.strip().splitlines()[-1] == (
        f"{len(data)} rows x {data.shape[1]} features read from {tmp_path / 'X.npy'}, network "
        f"{'-'.join(map(str, (data.shape[1], *est.hidden_)))}, 3 outer iterations, lam {lam:.6g}: "
        f"{flagged} rows flagged, {h['n_nonzero']} non-zero groups in S (c1 {h['c1']:.3g}, c2 {h['c2']:.3g}) "
        f"-> {tmp_path / 'r.npz'}"
    )


def test_score_writes_the_norms_of_the_residual_of_the_saved_network(tmp_path, capsys, data):
    assert run_main(capsys, "fit", tmp_path / "X.npy", "--out", tmp_path / "r.npz", "--model", tmp_path / "m.pt",
                    *FAST, "--outlier-score", "residual")[0] == 0
    model = RobustAutoencoder.load(tmp_path / "m.pt")
    new = data[::-1] * 0.9
    np.save(tmp_path / "new.npy", new)
    code, out, _ = run_main(capsys, "score", tmp_path / "m.pt", tmp_path / "new.npy", "--out", tmp_path / "s.npz")
    assert code == 0
    with np.load(tmp_path / "s.npz") as s:
        expected = np.linalg.norm(new - model.reconstruct(new), axis=1)
        np.testing.assert_allclose(s["scores"], expected, rtol=1e-5)
        assert float(s["threshold"]) == model.threshold_
        np.testing.assert_array_equal(s["labels"], (s["scores"] > model.threshold_).astype(np.int64))
        flagged = int(s["labels"].sum())
    assert out.strip().splitlines()[-1] == (f"{len(new)} rows scored ({new.shape[1]} features read from {tmp_path / 'new.npy'}), "
                           f"{flagged} above the threshold {model.threshold_:.6g} -> {tmp_path / 's.npz'}")


def test_score_writes_the_saved_models_default_score(tmp_path, capsys, data):
    assert run_main(capsys, "fit", tmp_path / "X.npy", "--out", tmp_path / "r.npz", "--model", tmp_path / "m.pt",
                    *FAST)[0] == 0
    model = RobustAutoencoder.load(tmp_path / "m.pt")
    assert model.outlier_score == "residual+code+knn" and model.neighbours_ is not None
    new = data[::-1] * 0.9
    np.save(tmp_path / "new.npy", new)
    assert run_main(capsys, "score", tmp_path / "m.pt", tmp_path / "new.npy", "--out", tmp_path / "s.npz")[0] == 0
    with np.load(tmp_path / "s.npz") as s, np.load(tmp_path / "r.npz") as r:
        np.testing.assert_array_equal(s["scores"], model.decision_function(new))
        np.testing.assert_array_equal(s["labels"], (s["scores"] > float(r["threshold"])).astype(np.int64))


@pytest.mark.parametrize("existing", [False, True])
def test_a_failed_model_save_writes_neither_output(tmp_path, capsys, data, monkeypatch, existing):
    from rda_ext.io import results

    out, model = tmp_path / "r.npz", tmp_path / "m.pt"
    if existing:
        out.write_bytes(b"previous result")
        model.write_bytes(b"previous model")

    def failing_writer(est, *, data=True):
        def write(f):
            f.write(b"part of a model")
            raise OSError(28, "No space left on device")
        return write

    monkeypatch.setattr(results, "model_writer", failing_writer)
    code, _, err = run_main(capsys, "fit", tmp_path / "X.npy", "--out", out, "--model", model, *FAST)
    assert_user_error(code, err, "No space left on device")
    if existing:
        assert out.read_bytes() == b"previous result" and model.read_bytes() == b"previous model"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["X.npy"] + (["m.pt", "r.npz"] if existing else []))


def test_demo_writes_what_the_experiment_returns(tmp_path, capsys, monkeypatch):
    import rda_ext.experiments.demo as demo

    calls = []

    def fake(seed, device, digits=demo.DIGITS):
        calls.append((seed, device, digits))
        return {"seed": seed, "f1": 0.5}

    monkeypatch.setattr(demo, "run_demo", fake)
    assert run_main(capsys, "demo", "--seed", "4", "--device", "cpu", "--digits", "3", "1", "3",
                    "--json", tmp_path / "d.json")[0] == 0
    assert calls == [(4, "cpu", [3, 1, 3])]
    assert (tmp_path / "d.json").read_text() == json.dumps({"seed": 4, "f1": 0.5}, indent=2)
    assert run_main(capsys, "demo")[0] == 0 and calls[-1] == (0, "auto", demo.DIGITS)
    # A digit that is not one fails before the experiment runs.
    code, _, err = run_main(capsys, "demo", "--digits", "10")
    assert_user_error(code, err, "argument --digits: invalid choice: 10")
    assert sorted(os.listdir(tmp_path)) == ["d.json"]
    # An unwritable --json fails before the experiment runs.
    code, _, err = run_main(capsys, "demo", "--json", tmp_path / "none" / "d.json")
    assert_user_error(code, err, f"{tmp_path / 'none' / 'd.json'}: the folder {tmp_path / 'none'} does not exist")
    assert len(calls) == 2


def test_the_demo_construction_reuses_the_paper_instance_and_fits_each_other_digit_once(monkeypatch):
    import rda_ext.experiments.demo as demo

    fitted = []

    def detectors(forest, X, is_out, seed, device):
        fitted.append(len(X))
        return None, {name: {"f1": 0.25, "auroc": 0.5} for name in demo.CONSTRUCTION}

    monkeypatch.setattr(demo, "_construction_detectors", detectors)
    X, y = demo.load_mnist_5k()
    paper = {name: {"f1": 0.75, "auroc": 0.9, "ap": 0.1} for name in demo.CONSTRUCTION}
    printed = []
    result = demo._construction(None, X, y, 0, "cpu", (7, 4), paper, printed.append)
    assert fitted == [len(demo.make_outlier_set(X, y, 7, demo.FRACTION, 0)[0])]
    assert list(result["digits"]) == ["7", "4"]
    assert result["digits"]["4"] == {name: {"f1": 0.75, "auroc": 0.9} for name in demo.CONSTRUCTION}
    assert result["mean"]["IsolationForest"] == pytest.approx({"f1": 0.5, "auroc": 0.7})
    assert printed[-1].splitlines()[-1].startswith("mean ")


def test_fit_warnings_are_one_line_each(tmp_path, capsys, data):
    np.save(tmp_path / "big.npy", data * 10)  # outside the sigmoid output's range
    code, _, err = run_main(capsys, "fit", tmp_path / "big.npy", "--out", tmp_path / "r.npz", *FAST,
                            "--output-activation", "sigmoid", "--preprocessing", "none")
    assert code == 0
    lines = err.strip().splitlines()
    assert lines and all(line.startswith("rda-ext: warning: ") for line in lines), err
    assert any("sigmoid" in line for line in lines)


def test_fit_shows_the_fits_warnings_but_not_resource_warnings(tmp_path, capsys, data, monkeypatch):
    """A file left to the collector (e.g. by an import that Ctrl-C cut short) is not the user's
    concern: Python hides ResourceWarning by default, and so does the command."""
    fit = RobustAutoencoder.fit

    def noisy_fit(self, X, y=None):
        warnings.warn("an unclosed file", ResourceWarning)
        warnings.warn("something the user should know", UserWarning)
        return fit(self, X)

    monkeypatch.setattr(RobustAutoencoder, "fit", noisy_fit)
    np.save(tmp_path / "X.npy", data)
    code, _, err = run_main(capsys, "fit", tmp_path / "X.npy", "--out", tmp_path / "r.npz", *FAST)
    assert code == 0 and err.strip().splitlines() == ["rda-ext: warning: something the user should know"], err


def test_score_with_a_device_and_a_threshold_at_a_score(tmp_path, capsys, data):
    est = RobustAutoencoder(hidden=(16, 4), outer_iter=2, inner_epochs=3, batch_size=16, lr=0.01,
                            activation="elu", random_state=3, device="cpu").fit(data)
    scores = est.decision_function(data)
    est.threshold_ = float(np.sort(scores)[len(scores) // 2])  # a row scoring exactly the threshold is not above it
    est.set_params(device="cuda:7").save(tmp_path / "m.pt")  # which --device cpu overrides
    code, _, err = run_main(capsys, "score", tmp_path / "m.pt", tmp_path / "X.npy", "--out", tmp_path / "s.npz",
                            "--device", "cpu")
    assert code == 0, err
    with np.load(tmp_path / "s.npz") as s:
        assert s["labels"].dtype == np.int64
        np.testing.assert_array_equal(s["labels"], (scores > est.threshold_).astype(np.int64))
        assert s["labels"].sum() == len(scores) - len(scores) // 2 - 1


HELP = {
    (): """usage: rda-ext [-h] [--version] {demo,fit,score,info} ...

Robust Deep Autoencoders: X = L + S.

positional arguments:
  {demo,fit,score,info}
    demo                the outlier experiment of the paper on the embedded MNIST subset
    fit                 decompose a matrix into L + S and score its rows
    score               score new rows with a saved model
    info                build information: CUDA kernels, GPU, threads

options:
  -h, --help            show this help message and exit
  --version             show program's version number and exit
""",
    ("demo",): """usage: rda-ext demo [-h] [--seed SEED] [--device DEVICE] [--digits D [D ...]] [--json PATH]

options:
  -h, --help          show this help message and exit
  --seed SEED         data mixture and training seed (default 0)
  --device DEVICE     "auto" (default), "cpu" or "cuda"
  --digits D [D ...]  the nominal digits of the construction's table (default all ten)
  --json PATH         also write the numbers as JSON
""",
    ("score",): """usage: rda-ext score [-h] [--key KEY] [--header | --no-header] --out OUT [--device DEVICE]
                     model input

positional arguments:
  model                 a model saved by rda-ext fit --model
  input                 data matrix: .npy, .npz (see --key) or .csv

options:
  -h, --help            show this help message and exit
  --key KEY             the array to use in an .npz holding several
  --header, --no-header
                        whether the first line of a .csv input is a header to skip (default: a
                        header if none of its cells is a number; a first line mixing numbers and
                        text is an error)
  --out OUT             result .npz: scores, labels, threshold
  --device DEVICE       overrides the saved device
""",
}


@pytest.mark.parametrize("command", list(HELP), ids=lambda c: " ".join(c) or "rda-ext")
def test_help_texts(capsys, monkeypatch, command):
    """The command line's own words (fit's come from the estimator and have their own test)."""
    monkeypatch.setenv("COLUMNS", "100")
    monkeypatch.setenv("NO_COLOR", "1")  # Python 3.14's argparse colours otherwise
    monkeypatch.setenv("PYTHON_COLORS", "0")
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    with pytest.raises(SystemExit) as e:
        main([*command, "--help"])
    assert e.value.code == 0
    assert capsys.readouterr().out == HELP[command]


def test_fit_help_names_its_inputs_and_outputs(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    for line in ("usage: rda-ext fit [-h] [--key KEY] [--header | --no-header] --out OUT [--model MODEL]",
                 "  input                 data matrix: .npy, .npz (see --key) or .csv; rows = instances",
                 "  --key KEY             the array to use in an .npz holding several",
                 "  --out OUT             result .npz: L, S, scores, labels, lam, threshold, history",
                 "  --model MODEL         also save the fitted model here (for rda-ext score; it holds up to 1,000 "
                 "training rows, the default score's neighbours)",
                 '  --hidden "auto" or N,N,...\n                        encoder layer sizes after the input, e.g. (128, 32); '
                 'the decoder mirrors them. "auto" (default): (128, 32), ',
                 "A warm start continues the network it kept. (default: 'auto')\n",
                 "  -v, --verbose, --no-verbose\n                        show a progress bar over the outer iterations, "):
        assert line in out, line
    assert out.endswith("(default: False)\n")


def test_fit_help_spells_out_the_result_files(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "3000")
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = capsys.readouterr().out
    assert ("  --out OUT             result .npz: L, S, scores, labels, lam, threshold, history, history_columns; "
            "or a folder (a path ending in /): L.npy, S.npy, scores.npy, labels.npy and result.json (lam, threshold, "
            "history_columns, history, rows, world_size, backend), which the ranks of a torchrun job write their rows "
            "into\n") in out
    assert ("\nWhat the result holds: L: the part of X that the autoencoder reconstructs, in X's units; S: the sparse "
            "part, X - L; scores: the outlier score of each row; labels: 1 for a row that scores above threshold (an "
            "outlier), else 0; lam: the lam of the last proximal step; threshold: the score above which a row is an "
            "outlier; history: one row per outer iteration, in the columns named by history_columns; "
            "history_columns: the names of the columns of history; rows: the number of rows (result.json only); "
            "world_size: the number of processes that fitted them (result.json only); backend: their "
            "torch.distributed backend, null for one process (result.json only).\n") in out


def test_a_percent_sign_in_a_parameters_help_is_shown_as_is(capsys, monkeypatch):
    from rda_ext import cli

    helps = cli._parameter_help()
    monkeypatch.setattr(cli, "_parameter_help", lambda: {**helps, "lr": "learning rate, e.g. 1e-3 (100% of the step)."})
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    assert "  --lr LR               learning rate, e.g. 1e-3 (100% of the step). (default: 0.001)\n" in capsys.readouterr().out


def test_version_and_usage_errors(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"rda_ext {importlib.metadata.version('rda_ext')}\n"
    code, _, err = run_main(capsys)
    assert err == "rda-ext: error: the following arguments are required: command (see rda-ext --help)\n"
    code, _, err = run_main(capsys, "fit")
    assert code == 2
    assert err == "rda-ext: error: the following arguments are required: input, --out (see rda-ext fit --help)\n"


@pytest.mark.parametrize("raised, code, line", [
    (KeyboardInterrupt, 130, "rda-ext: interrupted\n"),
    (lambda: __import__("rda_ext.cli").cli.Terminated(), 143, "rda-ext: terminated\n"),
    (lambda: __import__("torch").OutOfMemoryError("CUDA out of memory. Tried to allocate 3.00 GiB"), 2,
     "rda-ext: error: the network or the data does not fit in GPU memory (an allocation of 3.00 GiB failed): "
     "use smaller --hidden layer sizes or a smaller --batch-size\n"),
])
def test_interrupts_and_allocation_failures_in_fit(tmp_path, capsys, data, monkeypatch, raised, code, line):
    def fit(self, X):
        raise raised()

    monkeypatch.setattr(RobustAutoencoder, "fit", fit)
    got, _, err = run_main(capsys, "fit", tmp_path / "X.npy", "--out", tmp_path / "r.npz")
    assert (got, err) == (code, line)
    assert sorted(os.listdir(tmp_path)) == ["X.npy"]


@pytest.fixture
def own_signal_handlers():
    """Handlers of the test's own, whatever this process inherited (a background job ignores
    SIGINT): a SIGTERM that reaches the previous handler fails the test instead of ending the
    process that runs it."""

    def previous_sigterm(signum, frame):
        raise AssertionError("SIGTERM reached the handler from before rda-ext's")

    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                signal.SIGTERM: signal.signal(signal.SIGTERM, previous_sigterm)}
    yield
    for sig, handler in previous.items():
        signal.signal(sig, handler)


@pytest.mark.usefixtures("own_signal_handlers")
@pytest.mark.parametrize("sig, code, line", [(signal.SIGINT, 130, "rda-ext: interrupted\n"),
                                             (signal.SIGTERM, 143, "rda-ext: terminated\n")])
def test_a_signal_during_fit_is_one_line_and_the_handlers_come_back(tmp_path, capsys, data, monkeypatch, sig, code,
                                                                     line):
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    seen = {}

    def fit(self, X):
        try:
            os.kill(os.getpid(), sig)
            time.sleep(5)  # the handler raises before this ends
        except BaseException:
            # After the first signal both are ignored, so that a second cannot break the cleanup.
            seen.update({s: signal.getsignal(s) for s in before})
            raise
        raise AssertionError("no handler ran")

    monkeypatch.setattr(RobustAutoencoder, "fit", fit)
    got, _, err = run_main(capsys, "fit", tmp_path / "X.npy", "--out", tmp_path / "r.npz")
    assert (got, err) == (code, line)
    assert seen == {signal.SIGINT: signal.SIG_IGN, signal.SIGTERM: signal.SIG_IGN}
    assert {s: signal.getsignal(s) for s in before} == before


@pytest.mark.usefixtures("own_signal_handlers")
def test_an_ignored_signal_stays_ignored_and_threads_leave_handlers_alone(tmp_path, capsys, data, monkeypatch):
    seen = []

    def fit(self, X):
        seen.append((signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)))
        raise ValueError("stop")

    monkeypatch.setattr(RobustAutoencoder, "fit", fit)
    int_handler = signal.getsignal(signal.SIGINT)
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)  # as under nohup
    try:
        assert run_main(capsys, "fit", tmp_path / "X.npy", "--out", tmp_path / "r.npz")[0] == 2
        assert seen[-1][1] is signal.SIG_IGN and seen[-1][0] is not int_handler
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
    # Called from another thread (signals reach only the main thread), main leaves the handlers alone.
    worker = threading.Thread(target=main, args=(["fit", str(tmp_path / "X.npy"), "--out", str(tmp_path / "r.npz")],))
    worker.start()
    worker.join(60)
    assert not worker.is_alive()
    assert seen[-1] == (int_handler, previous)


def test_the_last_parameters_help_ends_where_the_fitted_attributes_begin():
    from rda_ext import cli

    assert cli._parameter_help()["verbose"] == (
        "show a progress bar over the outer iterations, with c1, c2, lam, the non-zero groups and the throughput "
        "(rows trained per second over the iteration's time).")
