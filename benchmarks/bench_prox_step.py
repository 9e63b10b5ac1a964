"""The proximal part of one RDA outer iteration (everything after L = AE(L): lam from
contamination, S = prox(X - L), the convergence numbers, LS_prev = L + S, the penalty and the
non-zero groups of S, read back in one synchronisation), before and after the fewer-passes change,
in one run on the same inputs.

"before" is the op sequence of rda_ext 0.1's estimator, replayed with today's operators (its ops
are still there); "after" is ``RDASolver.proximal_step`` itself.

    python benchmarks/bench_prox_step.py [--rows 60000] [--cols 784] [--repeats 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from machine import machine, machine_slug

from rda_ext import ops
from rda_ext.solver import RDASolver, survival_threshold
from rda_ext.validation import resolve_device

RESULTS = Path(__file__).resolve().parent / "results"
CONTAMINATION = 0.05


def before(X, L, S, P, penalty: str, lam: float | None) -> list[float]:
    """rda_ext 0.1: X - L written into S for the threshold, the shrink, the convergence pass, then
    L + S, and the group norms of S computed again for the statistics."""
    dim = ops.GROUP_DIM[penalty]

    def group_norms(T):
        return T.abs() if dim is None else ops.group_norms(T, dim)

    if lam is None:
        lam = survival_threshold(group_norms(torch.sub(X, L, out=S)), CONTAMINATION)
    ops.shrink_residual(X, L, lam, penalty, out=S)
    c = ops.convergence(X, L, S, P)
    torch.add(L, S, out=P)
    norms = group_norms(S)
    return torch.stack([norms.sum(dtype=torch.float64), (norms > 0).sum().to(torch.float64), c[0], c[1]]).tolist()


def after(solver: RDASolver) -> list[float]:
    _, stats = solver.proximal_step()
    return torch.stack(stats).tolist()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=60000)
    parser.add_argument("--cols", type=int, default=784)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON results")
    args = parser.parse_args()
    device = resolve_device(args.device)
    gen = torch.Generator(device=device).manual_seed(int(time.time_ns() % 2**31))
    n, d = args.rows, args.cols
    # Image-like data and a reconstruction close to it, a few rows far off (the outliers).
    X = torch.rand(n, d, generator=gen, device=device)
    L = X + 0.05 * torch.randn(n, d, generator=gen, device=device)
    L[: n // 20] = torch.rand(n // 20, d, generator=gen, device=device)
    rows = []
    for penalty in ops.PENALTIES:
        for lam_mode in ("contamination", "fixed"):
            S_a, P_a, S_b, P_b = (torch.zeros_like(X) for _ in range(4))
            lam = None if lam_mode == "contamination" else survival_threshold(
                (X - L).abs() if ops.GROUP_DIM[penalty] is None else ops.group_norms(X, ops.GROUP_DIM[penalty], minus=L),
                CONTAMINATION,
            )
            solver = RDASolver(X, S_b, P_b, penalty=penalty, lam=lam, contamination=CONTAMINATION)
            solver.L = L
            # The same numbers both ways, checked on the first call of each.
            ref, new = before(X, L, S_a, P_a, penalty, lam), after(solver)
            assert all(abs(a - b) <= 1e-5 * max(1.0, abs(a)) for a, b in zip(ref, new)), (penalty, ref, new)
            times = {"before": [], "after": []}
            for _ in range(args.repeats):
                for name, fn in (("before", lambda: before(X, L, S_a, P_a, penalty, lam)), ("after", lambda: after(solver))):
                    sync(device)
                    t0 = time.perf_counter()
                    fn()
                    sync(device)
                    times[name].append(time.perf_counter() - t0)
            med = {k: statistics.median(v) for k, v in times.items()}
            rows.append(dict(penalty=penalty, lam=lam_mode, before_ms=1e3 * med["before"], after_ms=1e3 * med["after"],
                             speedup=med["before"] / med["after"]))
            print(f"{penalty:9s} {lam_mode:13s} before {1e3 * med['before']:8.1f} ms  after {1e3 * med['after']:8.1f} ms"
                  f"  {med['before'] / med['after']:.2f}x", flush=True)
    slug = machine_slug(device.type)
    result = dict(machine=machine(device.type), rows=n, cols=d, dtype="float32", repeats=args.repeats,
                  contamination=CONTAMINATION, timing="median wall time per call, host-synchronised", results=rows)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"prox-step-{slug}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
