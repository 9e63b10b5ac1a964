"""Smoke test of the experiment scripts (benchmarks/quality): the quickest one runs end to end,
and the table generator reads the committed results."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

QUALITY = Path(__file__).resolve().parents[1] / "benchmarks" / "quality"
PEERS = QUALITY / "peers"  # RDA against PyOD's detectors on ADBench's tables, and the score's parts there
RESULTS = QUALITY.parent / "results"


def test_convergence_quick(tmp_path):
    run = subprocess.run([sys.executable, str(QUALITY / "convergence.py"), "--quick", "--device", "cpu",
                          "--out-dir", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    (report,) = tmp_path.glob("convergence-*-quick.json")
    result = json.loads(report.read_text())
    assert result["machine"]["cpu"] and result["lams"] == [3.0, 4.5, 7.0]
    for history in result["histories"].values():
        assert len(history) == result["outer_iter"]
        assert history[-1]["objective"] < history[1]["objective"]
    assert (tmp_path / "convergence-quick.png").stat().st_size > 0


def tables(*files) -> list[str]:
    run = subprocess.run([sys.executable, str(QUALITY / "tables.py"), *map(str, files)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return [line for line in run.stdout.splitlines() if line.startswith("|")]


def test_the_results_page_shows_the_tables_of_the_committed_full_runs():
    """Every row of every table printed from the full-mode results is on RESULTS.md as printed:
    the page's numbers come from the committed files."""
    page = (QUALITY.parent / "RESULTS.md").read_text()
    files = [RESULTS / f"{name}-amd-epyc-1t.json" for name in ("outliers", "denoising", "stuck-pixels", "convergence")]
    rows = tables(*files)
    assert "| lam | proximal step lowers lam ‖S‖ | inner epochs lower the objective | objective at 1 -> last | " \
           "rows in S at the end | c1, c2 at the end |" in rows
    assert len(rows) > 40
    missing = [row for row in rows if row not in page]
    assert not missing, missing


def test_the_results_page_shows_the_sweep_tables_of_the_committed_runs():
    page = (QUALITY.parent / "RESULTS.md").read_text()
    rows = tables(RESULTS / "sweep-amd-epyc-2t.json", RESULTS / "sweep-extra-amd-epyc-2t.json")
    # Two data sets, then the extra run's two (the MNIST subset and Fashion-MNIST at its size), each
    # with the table of its cells and the table of the defaults' score and its parts.
    assert sum(row.startswith("| IsolationForest |") for row in rows) == 8
    missing = [row for row in rows if row not in page]
    assert not missing, missing


def test_the_results_page_shows_the_network_shape_run():
    page = (QUALITY.parent / "RESULTS.md").read_text()
    rows = tables(RESULTS / "sweep-network-shape-amd-epyc-2t.json")
    # Three data sets, each with its cells and the parts of the defaults' score.
    assert sum(row.startswith("| IsolationForest |") for row in rows) == 6
    assert sum(row.startswith("| auto 10 x auto, residual+code+knn |") for row in rows) == 3
    missing = [row for row in rows if row not in page]
    assert not missing, missing


def test_the_results_page_shows_the_local_term_alone_on_the_images():
    page = (QUALITY.parent / "RESULTS.md").read_text()
    rows = [row for row in tables(RESULTS / "sweep-local-term-alone-amd-epyc-2t.json")
            if row.startswith(("| auto 10 x auto, knn |", "| auto 10 x auto, residual+code+knn |", "| IsolationForest |"))]
    # Two data sets: IsolationForest in the cells table and the score's parts, and both cells.
    assert sum(row.startswith("| auto 10 x auto, knn |") for row in rows) == 2
    missing = [row for row in rows if row not in page]
    assert not missing, missing


def test_the_results_page_shows_the_score_variants_run(monkeypatch):
    monkeypatch.syspath_prepend(str(PEERS))
    from score_variants import VARIANTS, markdown

    page = (QUALITY.parent / "RESULTS.md").read_text()
    rows = markdown(json.loads((RESULTS / "score-variants-amd-epyc-2t.json").read_text()))
    assert len(rows) == 2 + len(VARIANTS)
    missing = [row for row in rows if row not in page]
    assert not missing, missing


def test_tables_read_every_committed_result():
    files = [f for name in ("outliers", "denoising", "stuck-pixels", "convergence")
             for f in sorted(RESULTS.glob(f"{name}-*.json"))]
    assert len(files) >= 8
    rows = tables(*files)
    assert sum(row.startswith("| RDA |") for row in rows) == sum("outliers" in f.name for f in files) * 2


@pytest.fixture
def denoising(monkeypatch):
    monkeypatch.syspath_prepend(str(QUALITY))
    import denoising

    return denoising


def test_denoising_resume_reuses_complete_groups_only(denoising, tmp_path):
    grid = {"ks": [0, 25], "lams": [0.1, 0.2], "hidden": [196, 49], "outer_iter": 10, "inner_epochs": 5,
            "batch_size": 64}
    cells = [{"seed": 0, "k": k, "lam": lam, "rda_error": 0.1} for k in (0, 25) for lam in (0.1, 0.2)][:-1]
    earlier = tmp_path / "earlier.json"
    earlier.write_text(json.dumps({**grid, "seeds": [0], "cells": cells}))
    done = denoising.earlier_cells(earlier, grid)
    assert list(done) == [(0, 0)] and len(done[0, 0]) == 2
    with pytest.raises(SystemExit, match="lams"):
        denoising.earlier_cells(earlier, {**grid, "lams": [0.1, 0.3]})
    assert denoising.earlier_cells(None, grid) == {}


def test_sweep_quick_fits_every_cell_once_and_resumes_from_its_log(tmp_path):
    def sweep():
        run = subprocess.run([sys.executable, str(QUALITY / "sweep.py"), "--quick", "--device", "cpu",
                              "--out-dir", str(tmp_path), "--work", str(tmp_path / "work")],
                             capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
        (report,) = tmp_path.glob("sweep-*-quick.json")
        return json.loads(report.read_text()), (tmp_path / "work" / "runs.jsonl").read_text().splitlines()

    first, log = sweep()
    cells = list(first["cells"])
    assert len(cells) == 2 and first["summary"]["mnist"]["instances"] == 2
    assert len(log) == 2 * (1 + len(cells))  # IsolationForest and each cell, per instance
    for runs in first["runs"].values():
        for cell in cells:
            assert 0 <= runs[cell]["RDA"]["f1"] <= 1 and 0.5 < runs[cell]["RDA"]["auroc"] <= 1
    again, log_again = sweep()
    assert log_again == log and again["summary"] == first["summary"]
    rows = tables(next(tmp_path.glob("sweep-*-quick.json")))
    assert rows[2].startswith("| IsolationForest |") and rows[3 + len(cells)].startswith("| class |")
    # The defaults' cell keeps the parts of its score, and the autoencoder scored the same way.
    parts = rows[rows.index("| score | F1 | AUROC |"):]
    assert len(parts) == 2 + 1 + 7 and parts[-1].startswith("| autoencoder, residual+code+knn |")
    assert parts[3].startswith("| RDA, residual+code+knn (the defaults) |")


def _adbench_table(path: Path, seed: int, n: int, d: int) -> None:
    """An ADBench-format table: rows near a line, 10% of them (1 for an anomaly) far from it."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 10 == 0).astype(np.int64)
    t = rng.random((n, 1))
    X = t @ rng.random((1, d)) + 0.01 * rng.standard_normal((n, d)) + 3 * y[:, None] * rng.random((n, d))
    np.savez(path, X=X, y=y)


def test_adbench_quick_compares_rda_with_its_peers_in_both_settings(tmp_path):
    pytest.importorskip("pyod")
    pytest.importorskip("scipy")
    data = tmp_path / "tables"
    data.mkdir()
    _adbench_table(data / "1_line.npz", 0, 200, 5)
    _adbench_table(data / "2_plane.npz", 1, 300, 4)
    _adbench_table(data / "3_large.npz", 2, 6000, 3)  # above the quick mode's 5,000 rows: left out
    run = subprocess.run([sys.executable, str(PEERS / "adbench.py"), "--quick", "--device", "cpu", "--data-dir",
                          str(data), "--out-dir", str(tmp_path), "--max-rows", "250"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    (report,) = tmp_path.glob("adbench-*-quick.json")
    result = json.loads(report.read_text())
    assert result["machine"]["cpu"] and (tmp_path / result["figure"]).stat().st_size > 0
    for setting in ("transductive", "inductive"):
        s = result["settings"][setting]
        assert sorted(s["tables"]) == ["1_line", "2_plane"]
        assert set(s["summary"]) == {"RDA", "IsolationForest", "ECOD", "PCA"}
        # The transductive setting takes at most --max-rows of a table (a stratified 250 of 2_plane's
        # 300); the inductive one fits on 70% of each table's rows and scores the other 30%.
        rows = {r["table"]: r["rows"] for r in s["runs"]}
        assert rows == ({"1_line": 200, "2_plane": 250} if setting == "transductive" else {"1_line": 140, "2_plane": 210})
        for d, summary in s["summary"].items():
            assert 0 <= summary["auroc"] <= 1 and 1 <= summary["rank_auroc"] <= 4
            assert d == "RDA" or 0 <= summary["wilcoxon_p_auroc"] <= 1
        assert sum(v["rank_auroc"] for v in s["summary"].values()) == pytest.approx(10)  # 1 + 2 + 3 + 4 per table


def test_adbench_scales_every_table_by_the_rows_a_detector_fits_on(monkeypatch):
    monkeypatch.syspath_prepend(str(PEERS))
    from adbench import minmax

    X_fit = np.array([[1.0, 5.0, -2.0], [3.0, 5.0, 2.0], [2.0, 5.0, 0.0]])
    X_score = np.array([[4.0, 6.0, 0.0]])
    fit, score = minmax(X_fit, X_score)
    np.testing.assert_array_equal(fit, [[0.0, 0.0, 0.0], [1.0, 0.0, 1.0], [0.5, 0.0, 0.5]])
    np.testing.assert_array_equal(score, [[1.5, 1.0, 0.5]])  # new rows may leave [0, 1]


def test_score_terms_quick_measures_each_variant_in_both_settings(tmp_path):
    pytest.importorskip("pyod")  # for adbench.py's peers
    pytest.importorskip("scipy")
    data = tmp_path / "tables"
    data.mkdir()
    _adbench_table(data / "1_line.npz", 0, 200, 5)
    _adbench_table(data / "2_plane.npz", 1, 300, 4)
    common = ["--quick", "--device", "cpu", "--data-dir", str(data), "--out-dir", str(tmp_path)]
    for script, extra in (("adbench.py", []), ("score_terms.py", ["--peers", "PEERS"])):
        extra = [str(next(tmp_path.glob("adbench-*-quick.json"))) if a == "PEERS" else a for a in extra]
        run = subprocess.run([sys.executable, str(PEERS / script), *common, *extra], capture_output=True, text=True)
        assert run.returncode == 0, run.stderr
    (peers,) = tmp_path.glob("adbench-*-quick.json")
    (report,) = tmp_path.glob("score-terms-*-quick.json")
    result, peers = json.loads(report.read_text()), json.loads(peers.read_text())
    for setting in ("transductive", "inductive"):
        s, p = result["settings"][setting], peers["settings"][setting]
        assert sorted(s["tables"]) == ["1_line", "2_plane"] and list(s["summary"]) == result["variants"]
        assert len(s["runs"]) == 2 * len(result["variants"])
        assert all(0 <= r["auroc"] <= 1 and 0 < r["ap"] <= 1 for r in s["runs"])
        assert s["summary"]["default"]["above_default_auroc"] == 0
        # The default variant is adbench.py's RDA: the same rows, seeds and fit, so the same ranks.
        for t in s["tables"]:
            assert s["tables"][t]["default"]["auroc"]["mean"] == p["tables"][t]["RDA"]["auroc"]["mean"]
        assert s["summary"]["default"]["rank_auroc"] == p["summary"]["RDA"]["rank_auroc"]
        assert all(1 <= v["rank_ap"] <= 4 for v in s["summary"].values())


def test_score_terms_measures_the_synthetic_table_apart(tmp_path):
    run = subprocess.run([sys.executable, str(PEERS / "score_terms.py"), "--quick", "--device", "cpu", "--synthetic",
                          "800", "--out-dir", str(tmp_path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    (report,) = tmp_path.glob("score-terms-synthetic-*-quick.json")
    result = json.loads(report.read_text())
    assert result["data_dir"] == "bench_scale.py's synthetic table, 800 rows"
    for setting in ("transductive", "inductive"):
        s = result["settings"][setting]
        assert list(s["tables"]) == ["synthetic"] and list(s["summary"]) == result["variants"]
        assert len(s["runs"]) == len(result["variants"])
    run = subprocess.run([sys.executable, str(PEERS / "score_terms.py"), "--quick", "--synthetic", "800", "--peers",
                          str(report)], capture_output=True, text=True)
    assert run.returncode != 0 and "--peers are of ADBench's tables, not of --synthetic" in run.stderr


def test_score_variants_quick_measures_tables_the_synthetic_table_and_images(tmp_path):
    pytest.importorskip("pyod")  # for adbench.py's peers
    data = tmp_path / "tables"
    data.mkdir()
    _adbench_table(data / "1_line.npz", 0, 200, 5)
    common = ["--quick", "--device", "cpu", "--data-dir", str(data), "--out-dir", str(tmp_path)]
    run = subprocess.run([sys.executable, str(PEERS / "adbench.py"), *common], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    (peers,) = tmp_path.glob("adbench-*-quick.json")
    run = subprocess.run([sys.executable, str(PEERS / "score_variants.py"), *common, "--peers", str(peers),
                          "--synthetic", "800", "--images", "mnist"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    # With peers and the synthetic table, the script prints the results page's table.
    assert "| variant | ADBench transductive: AUROC / AP / rank |" in run.stdout
    (report,) = tmp_path.glob("score-variants-*-quick.json")
    result = json.loads(report.read_text())
    for part, table in (("adbench", "1_line"), ("synthetic", "synthetic")):
        for setting in ("transductive", "inductive"):
            s = result[part][setting]
            assert list(s["tables"]) == [table] and list(s["summary"]) == result["variants"]
            assert len(s["runs"]) == len(result["variants"])
            assert all(0 <= r["auroc"] <= 1 and 0 < r["ap"] <= 1 for r in s["runs"])
            if part == "adbench":
                # Ranked among adbench.py's quick peers (three of them and RDA's place): 1 to 4; the
                # default variant is adbench.py's RDA, the same rows, seeds and fit.
                assert all(1 <= x["rank_auroc"] <= 4 for x in s["summary"].values())
                rda = json.loads(peers.read_text())["settings"][setting]["tables"][table]["RDA"]
                assert s["tables"][table]["default"]["auroc"]["mean"] == rda["auroc"]["mean"]
    mnist = result["images"]["mnist"]
    assert len(mnist["runs"]) == 2 * len(result["variants"])  # quick: digits 0 and 1, one seed
    assert mnist["summary"]["default"]["f1_gain"] == 0 and mnist["summary"]["default"]["won"] == 0


def test_score_variants_recover_the_local_term_from_the_default_score(monkeypatch):
    """The variants take the local term out of the default score: it must be the local term alone of
    a fit with the same decomposition and neighbours (outlier_score="knn"), on training and new rows."""
    import torch

    from rda_ext import RobustAutoencoder
    from rda_ext.estimator.scoring import score_terms

    monkeypatch.syspath_prepend(str(PEERS))
    from score_terms import code_term, terms
    from score_variants import VARIANTS, spread_of, variants

    rng = np.random.default_rng(3)
    X = rng.random((150, 6))
    X_new = rng.random((40, 6))
    fit = dict(hidden=(4, 2), outer_iter=2, inner_epochs=2, random_state=0, device="cpu", dtype="float64")
    default = RobustAutoencoder(**fit).fit(X)
    alone = RobustAutoencoder(**fit, outlier_score="knn").fit(X)
    np.testing.assert_array_equal(default.neighbours_, alone.neighbours_)
    spreads = default.term_spread_
    statistics = tuple(torch.from_numpy(t) for t in (default.residual_scale_, default.code_center_,
                                                     default.code_precision_))
    for rows, local in ((X, alone.decision_scores_), (X_new, alone.decision_function(X_new))):
        v = variants(default, X, rows)
        assert list(v) == list(VARIANTS)
        _, code_fit = terms(default, X, fitted=True)
        _, code = terms(default, rows, fitted=rows is X)
        np.testing.assert_allclose(v["code + local"] - code / spread_of(code_fit), local / spreads[1],
                                   rtol=1e-9, atol=1e-9)
        # Weighed by R^2 where the network explains none of these uniform rows: the local term alone.
        norms = np.linalg.norm(X - default.L_, axis=1)
        kept = norms <= np.quantile(norms, 1 - default.contamination)
        assert ((X - default.L_)[kept] ** 2).sum() >= ((X[kept] - X[kept].mean(0)) ** 2).sum()
        np.testing.assert_allclose(v["weighed by R^2"], local / spreads[1], rtol=1e-9, atol=1e-9)
        # The shrunk code term is code_term under another precision matrix: under the fit's own it is
        # the estimator's code term.
        Z = default.transform(rows)
        L = default.L_ if rows is X else default.reconstruct(rows)
        _, expected = score_terms(*(torch.as_tensor(a) for a in (rows, L, Z)), statistics)
        np.testing.assert_allclose(code_term(Z.astype(np.float64), default.code_center_, default.code_precision_),
                                   expected.numpy(), rtol=1e-9, atol=1e-12)


def test_the_tail_term_counts_the_reference_rows_on_each_side_of_a_value(monkeypatch):
    """The two-sided per-feature tails (after ECOD), the reference rows as the sample, against counting by hand:
    ties count on both sides, and a value beyond every reference row scores log(m + 1)."""
    monkeypatch.syspath_prepend(str(PEERS))
    from score_variants import tails

    rng = np.random.default_rng(11)
    reference = rng.integers(0, 5, size=(37, 3)).astype(np.float64) + rng.random(3)  # ties in each column
    rows = np.vstack([reference[:9], rng.normal(2.0, 3.0, size=(6, 3))])
    m = len(reference)
    expected = [sum(-np.log(min((reference[:, j] <= x[j]).sum() + 1, (reference[:, j] >= x[j]).sum() + 1) / (m + 1))
                    for j in range(3)) for x in rows]
    np.testing.assert_allclose(tails(reference, rows), expected, rtol=1e-12)
    beyond = reference.max(0) + rng.random(3) + 0.5
    np.testing.assert_allclose(tails(reference, beyond[None]), [3 * np.log(m + 1)], rtol=1e-12)


def test_the_tail_and_r2_variants_build_on_the_default(monkeypatch):
    """The tail variants add the tails of the reference rows to the default; "weighed by R^2" scales
    the default's network part by the share of the reference rows' variance the network explains."""
    from rda_ext import RobustAutoencoder

    monkeypatch.syspath_prepend(str(PEERS))
    from score_variants import spread_of, tails, variants

    rng = np.random.default_rng(5)
    # Rows near a line, which the network learns in a few steps (R^2 between 0 and 1).
    line = rng.random(6) - 0.5
    X, X_new = (np.clip(0.5 + 0.8 * rng.random((n, 1)) * line + 0.02 * rng.normal(size=(n, 6)), 0, 1)
                for n in (150, 40))
    X_new[0] = 1.5  # beyond every reference row in every column
    est = RobustAutoencoder(hidden=(4, 2), outer_iter=2, inner_epochs=30, lr=0.1, random_state=0, device="cpu",
                            dtype="float64", contamination=0.1).fit(X)
    knn = RobustAutoencoder(hidden=(4, 2), outer_iter=2, inner_epochs=30, lr=0.1, random_state=0, device="cpu",
                            dtype="float64", contamination=0.1, outlier_score="knn").fit(X)
    norms = np.linalg.norm(X - est.L_, axis=1)
    reference = norms <= np.quantile(norms, 0.9)
    explained = 1 - ((X - est.L_)[reference] ** 2).sum() / ((X[reference] - X[reference].mean(0)) ** 2).sum()
    assert 0.5 < explained < 1
    for rows, default, local in ((X, est.decision_scores_, knn.decision_scores_),
                                 (X_new, est.decision_function(X_new), knn.decision_function(X_new))):
        v = variants(est, X, rows)
        local = local / est.term_spread_[1]
        np.testing.assert_allclose(v["weighed by R^2"], explained * (default - local) + local, rtol=1e-9, atol=1e-9)
        for name, fitted, scored in (("default + tails of X", X, rows),
                                     ("default + tails of the residual", X - est.L_,
                                      rows - (est.L_ if rows is X else est.reconstruct(rows)))):
            spread = spread_of(tails(fitted[reference], fitted))
            np.testing.assert_allclose(v[name], default + tails(fitted[reference], scored) / spread, rtol=1e-12)
            if name == "default + tails of X" and rows is X_new:
                # The row beyond every reference row: log(m + 1) in each of the 6 columns.
                np.testing.assert_allclose(v[name][0] - default[0], 6 * np.log(reference.sum() + 1) / spread,
                                           rtol=1e-12)


def test_the_score_without_its_local_term_is_its_residual_term_plus_its_code_term(monkeypatch):
    from rda_ext import RobustAutoencoder

    monkeypatch.syspath_prepend(str(PEERS))
    from score_terms import robust_z, terms

    X = np.random.default_rng(0).random((120, 6))
    fit = dict(hidden=(4, 2), outer_iter=2, inner_epochs=2, random_state=0, device="cpu", dtype="float64")
    default = RobustAutoencoder(**fit).fit(X)
    without = RobustAutoencoder(**fit, outlier_score="residual+code").fit(X)
    residual, code = terms(default, X[:30])
    np.testing.assert_allclose(residual + code, without.decision_function(X[:30]), rtol=1e-10)
    residual, code = terms(default, X, fitted=True)
    np.testing.assert_allclose(residual + code, without.decision_scores_, rtol=1e-10)
    # The default orders the rows otherwise: its local term is not a multiple of the other two.
    assert not np.array_equal(np.argsort(residual + code), np.argsort(default.decision_scores_))
    assert robust_z(np.array([1.0, 2.0, 3.0]), np.array([2.0, 5.0])).tolist() == [0.0, 3 / 1.4826]
