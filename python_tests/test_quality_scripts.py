"""Smoke test of the experiment scripts (benchmarks/quality): the quickest one runs end to end,
and the table generator reads the committed results."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("sklearn")

QUALITY = Path(__file__).resolve().parents[1] / "benchmarks" / "quality"
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


def test_tables_from_committed_results():
    files = sorted(RESULTS.glob("outliers-*.json")) + sorted(RESULTS.glob("denoising-*.json"))
    assert files
    run = subprocess.run([sys.executable, str(QUALITY / "tables.py"), *map(str, files)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "| RDA |" in run.stdout and "| k | forest error AE |" in run.stdout
