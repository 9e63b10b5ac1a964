"""The step budget of inner_epochs="auto": the defaults' quality and fit time against the most
minibatch steps an outer iteration takes (``rda_ext.solver.schedule.STEP_BUDGET``), on every
ADBench table (../shared/data/adbench, or --data-dir) with more rows than AUTO_STEPS batches: the
tables where a budget cuts the epoch. "none" trains whole epochs, as before the budget.
Label-free: contamination is the true rate; full tables, every row fitted and scored.

    python benchmarks/quality/budget.py --quick   # 1 seed, budgets 50 and none, the tables below 100,000 rows
    python benchmarks/quality/budget.py           # 3 seeds, budgets 50, 100, 200, 400, none
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from common import mean_sd, parser, report_path, save_json

from rda_ext import RobustAutoencoder
from rda_ext.experiments.metrics import average_precision, roc_auc
from rda_ext.solver import schedule

ADBENCH = Path(__file__).resolve().parents[3] / "shared" / "data" / "adbench"
WHOLE_EPOCHS = 10**12  # a budget no table reaches


def tables(folder: Path, quick: bool) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {}
    for path in sorted(folder.glob("*.npz")):
        with np.load(path) as f:
            X, y = f["X"].astype(np.float32), f["y"].astype(np.int64)
        if len(X) > schedule.AUTO_STEPS * 128 and not (quick and len(X) > 100_000):
            out[path.stem] = (X, y)
    return out


def main() -> None:
    p = parser(__doc__)
    p.add_argument("--data-dir", type=Path, default=ADBENCH)
    p.add_argument("--budgets", default=None, help="comma-separated budgets; 'none' for whole epochs")
    args = p.parse_args()
    budgets = (args.budgets or ("50,none" if args.quick else "50,100,200,400,none")).split(",")
    seeds = range(1 if args.quick else 3)
    data = tables(args.data_dir, args.quick)
    runs = []
    for name, (X, y) in data.items():
        for budget in budgets:
            schedule.STEP_BUDGET = WHOLE_EPOCHS if budget == "none" else int(budget)
            for seed in seeds:
                t = time.perf_counter()
                est = RobustAutoencoder(contamination=float(y.mean()), random_state=seed, device=args.device).fit(X)
                runs.append(dict(table=name, rows=len(X), budget=budget, seed=seed, seconds=time.perf_counter() - t,
                                 auroc=roc_auc(y, est.decision_scores_), ap=average_precision(y, est.decision_scores_)))
                print(f"{name:20s} budget {budget:>5s} seed {seed}: AUROC {runs[-1]['auroc']:.4f} "
                      f"AP {runs[-1]['ap']:.4f} {runs[-1]['seconds']:6.1f} s", flush=True)
    summary = {name: {b: {k: mean_sd([r[k] for r in runs if r["table"] == name and r["budget"] == b])
                          for k in ("auroc", "ap", "seconds")} for b in budgets} for name in data}
    save_json(report_path("budget", args), dict(mode="quick" if args.quick else "full", budgets=budgets,
                                                seeds=list(seeds), runs=runs, summary=summary), args.device)


if __name__ == "__main__":
    main()
