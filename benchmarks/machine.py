"""Which machine a benchmark ran on: recorded in every results file and in its name."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import torch

import rda_ext


def machine(device: str) -> dict:
    cpu = platform.processor()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name() if device == "cuda" else None,
        "torch": torch.__version__,
        "rda_ext": rda_ext.build_info()["version"],
        "python": platform.python_version(),
    }


def machine_slug(device: str) -> str:
    """A file-name tag for the machine: the GPU model, or the CPU model and thread count."""
    m = machine(device)
    name = m["gpu"] if device == "cuda" else f"{m['cpu']}-{m['torch_threads']}t"
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def write_result(result: dict, out: Path | None, name: str, device: str) -> Path:
    """Writes a benchmark's JSON to ``out``, or by default to results/<name>-<machine>.json."""
    out = out or Path(__file__).resolve().parent / "results" / f"{name}-{machine_slug(device)}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return out


def log_log(ax, xlabel: str, ylabel: str) -> None:
    """An axis of a cost figure: both scales logarithmic, labelled, a light grid."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="both", alpha=0.3)


def save_figure(fig, path: Path, title: str) -> None:
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")
