"""Convergence, KDD'17 Figure 7: the RDA objective ||L - AE(L)||_F + lam ||S||_2,1 over training
for several lam, from ``history_``. Each outer iteration gives two points: after the autoencoder's
inner epochs (new reconstruction, old S) and after the proximal step (new S), hence a staircase.

    python benchmarks/quality/convergence.py --quick   # 3 lam, 15 outer iterations
    python benchmarks/quality/convergence.py           # 5 lam, 30 outer iterations
"""

from __future__ import annotations

from common import parser, plt, report_path, save_figure, save_json

from rda_ext import RobustAutoencoder
from rda_ext.data.datasets import load_mnist_5k, make_outlier_set


def staircase(history: list[dict]) -> tuple[list[float], list[float]]:
    """(x, objective): for outer iteration k, x = k - 0.5 after the inner epochs, x = k after the
    proximal step. The penalty of the previous S is the previous objective minus its
    reconstruction term (lam is fixed here)."""
    xs, ys, penalty_prev = [], [], 0.0
    for h in history:
        k = h["iteration"]
        xs += [k - 0.5, k]
        ys += [h["recon_error"] + penalty_prev, h["objective"]]
        penalty_prev = h["objective"] - h["recon_error"]
    return xs, ys


HIDDEN = (400, 200)  # the outlier experiment's network, not the estimator's default


def main() -> None:
    cli = parser(__doc__)
    args = cli.parse_args()
    lams, outer = ((3.0, 4.5, 7.0), 15) if args.quick else ((2.0, 3.0, 4.5, 7.0, 10.0), 30)
    X, y = load_mnist_5k()
    X, _, _ = make_outlier_set(X, y, 4, 0.052, seed=0)
    runs = {}
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for lam in lams:
        est = RobustAutoencoder(lam=lam, hidden=HIDDEN, outer_iter=outer, inner_epochs=10, batch_size=64, tol=0,
                                outlier_score="residual", device=args.device, random_state=0).fit(X)
        xs, ys = staircase(est.history_)
        ax.plot(xs, ys, drawstyle="steps-post", label=f"lam {lam:g} ({est.labels_.sum()} rows in S)")
        runs[str(lam)] = est.history_
        h = est.history_[-1]
        print(f"lam {lam}: objective {est.history_[0]['objective']:.2f} -> {h['objective']:.2f}, "
              f"c1 {h['c1']:.3g}, c2 {h['c2']:.3g}, {h['n_nonzero']} non-zero rows", flush=True)
    ax.set_xlabel("outer iteration (inner epochs, then the proximal step)")
    ax.set_ylabel("||L - AE(L)||_F + lam ||S||_2,1")
    ax.set_yscale("log")
    ax.legend(fontsize=8)
    ax.set_title("l21_rows RDA on the MNIST subset (digit 4 + 5.2% others)", fontsize=9)
    save_figure(fig, args, "convergence")
    path = report_path("convergence", args)
    save_json(path, dict(mode="quick" if args.quick else "full", lams=list(lams), outer_iter=outer, inner_epochs=10,
                         histories=runs), args.device)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
