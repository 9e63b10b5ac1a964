"""What the quality scripts share: where results go, the machine they ran on, headless figures."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import machine, machine_slug  # noqa: E402

from rda_ext.validation import resolve_device  # noqa: E402

RESULTS = Path(__file__).resolve().parents[1] / "results"

__all__ = ["mean_sd", "parser", "plt", "report_path", "save_figure", "save_json"]


def mean_sd(values) -> dict:
    """Mean and sample standard deviation (ddof 1; 0 for a single value)."""
    v = np.asarray(values, dtype=np.float64)
    return dict(mean=float(v.mean()), sd=float(v.std(ddof=1)) if len(v) > 1 else 0.0)


def parser(doc: str) -> argparse.ArgumentParser:
    """The options every quality script takes: --quick, --device, --out-dir."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the few-minutes version")
    p.add_argument("--device", default="auto", help='"auto" (default), "cpu" or "cuda"')
    p.add_argument("--out-dir", type=Path, default=RESULTS, help="where JSON and PNG go (default benchmarks/results)")
    return p


def report_path(name: str, args: argparse.Namespace) -> Path:
    kind = resolve_device(args.device).type
    return args.out_dir / f"{name}-{machine_slug(kind)}{'-quick' if args.quick else ''}.json"


def save_figure(fig, args: argparse.Namespace, name: str) -> str:
    """Saves ``name``.png in the output folder (``name``-quick.png in quick mode)."""
    file = f"{name}{'-quick' if args.quick else ''}.png"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(args.out_dir / file, dpi=110)
    plt.close(fig)
    return file


def save_json(path: Path, result: dict, device: str) -> None:
    kind = resolve_device(device).type
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"machine": machine(kind), **result}, indent=2, default=float) + "\n")
