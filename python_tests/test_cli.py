import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig

import numpy as np
import pytest
from test_estimator import planted

from rda_ext import RobustAutoencoder
from rda_ext.cli import main

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
    code, out, err = run_main(capsys, "fit", tmp_path / "X.npy", "--contamination", "0.05",
                              "--out", tmp_path / "r.npz", "--model", tmp_path / "m.pt", *FAST)
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
        (["fit", tmp_path / "X.npy", "--lam", "1", "--contamination", "0.1", "--out", out], "not allowed with"),
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


def test_demo_runs_the_paper_experiment(tmp_path):
    pytest.importorskip("sklearn")
    result = subprocess.run([RDA_EXT, "demo", "--json", str(tmp_path / "demo.json")],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for name in ("RDA (l21_rows)", "IsolationForest", "plain autoencoder"):
        assert name in result.stdout
    report = json.loads((tmp_path / "demo.json").read_text())
    assert report["n_outliers"] == 27 and report["n_rows"] == 527
    rda = report["methods"]["RDA (l21_rows)"]
    assert rda["n_flagged"] == 27 and 0 <= rda["f1"] <= 1
    # A detector that learned the digit, not chance: the outliers rank high.
    assert rda["auroc"] > 0.85


def test_fit_options_are_the_estimators_parameters(tmp_path, monkeypatch):
    """Every parameter but warm_start is an option of fit, with the estimator's own default, and
    the options reach the estimator unchanged."""
    from rda_ext import cli

    seen = {}
    monkeypatch.setattr(RobustAutoencoder, "fit", lambda self, X, y=None: seen.update(self.get_params()) or 1 / 0)
    np.save(tmp_path / "X.npy", np.random.rand(5, 3))
    with pytest.raises(ZeroDivisionError):
        cli.main(["fit", str(tmp_path / "X.npy"), "--out", str(tmp_path / "r.npz")])
    assert seen == {**RobustAutoencoder().get_params(), "warm_start": False}

    args = ["--hidden", "7,3", "--penalty", "l1", "--lam", "0.25", "--outer-iter", "4", "--inner-epochs", "0",
            "--batch-size", "9", "--lr", "0.5", "--optimizer", "sgd", "--activation", "relu",
            "--output-activation", "linear", "--no-tied-weights", "--tol", "0.125", "--device", "cpu",
            "--dtype", "float64", "--seed", "11", "-v"]
    with pytest.raises(ZeroDivisionError):
        cli.main(["fit", str(tmp_path / "X.npy"), "--out", str(tmp_path / "r.npz"), *args])
    assert seen == dict(
        hidden=(7, 3), penalty="l1", lam=0.25, contamination=0.1, outer_iter=4, inner_epochs=0, batch_size=9,
        lr=0.5, optimizer="sgd", activation="relu", output_activation="linear", tied_weights=False, tol=0.125,
        warm_start=False, device="cpu", dtype="float64", random_state=11, verbose=True,
    )


def test_fit_help_is_the_estimators_docstring(capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--inner-epochs INNER_EPOCHS epochs of autoencoder training per outer iteration. (default: 5)" in out
    assert "--penalty {l1,l21_rows,l21_cols}" in out
    assert "--lam LAM | --contamination CONTAMINATION" in out


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
