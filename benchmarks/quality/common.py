"""What the quality scripts share: where results go, the machine they ran on, headless figures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import machine, machine_slug  # noqa: E402

from rda_ext.estimator import resolve_device  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"

__all__ = ["RESULTS", "plt", "report_path", "save_json"]


def report_path(name: str, device: str, quick: bool) -> Path:
    kind = resolve_device(device).type
    return RESULTS / f"{name}-{machine_slug(kind)}{'-quick' if quick else ''}.json"


def save_json(path: Path, result: dict, device: str) -> None:
    kind = resolve_device(device).type
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(kind), **result}, indent=2, default=float) + "\n")
