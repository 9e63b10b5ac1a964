"""The ``rda-ext`` command (also ``python -m rda_ext``): demo, fit, score, info.

User errors (missing or unreadable files, bad shapes, NaN/Inf in the data, bad parameter values)
print one line on stderr and exit with status 2, without a traceback. Output files are written
whole or not at all."""

from __future__ import annotations

import argparse
import json
import sys
import warnings

import numpy as np
import torch

from rda_ext import __version__, build_info
from rda_ext.estimator import HISTORY_KEYS, RobustAutoencoder
from rda_ext.files import atomic_write, check_writable, read_matrix, save_npz
from rda_ext.ops import PENALTIES

EXIT_USAGE = 2


class UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see {self.prog} --help)")


def main(argv: list[str] | None = None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        return args.run(args)
    except (ValueError, OSError, torch.OutOfMemoryError) as e:
        print(f"rda-ext: error: {' '.join(str(e).split())}", file=sys.stderr)
        return EXIT_USAGE


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rda-ext", description="Robust Deep Autoencoders: X = L + S.")
    parser.add_argument("--version", action="version", version=f"rda_ext {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="the outlier experiment of the paper on the embedded MNIST subset")
    demo.add_argument("--seed", type=int, default=0, help="data mixture and training seed (default 0)")
    demo.add_argument("--device", default="auto", help='"auto" (default), "cpu" or "cuda"')
    demo.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    demo.set_defaults(run=_demo)

    fit = sub.add_parser("fit", help="decompose a matrix into L + S and score its rows")
    fit.add_argument("input", help="data matrix: .npy, .npz (see --key) or .csv; rows = instances")
    fit.add_argument("--key", help="the array to use in an .npz holding several")
    fit.add_argument("--out", required=True, help="result .npz: L, S, scores, labels, lam, threshold, history")
    fit.add_argument("--model", help="also save the fitted model here (for rda-ext score)")
    fit.add_argument("--penalty", choices=PENALTIES, default="l21_rows")
    how = fit.add_mutually_exclusive_group()
    how.add_argument("--lam", type=float, help="the proximal threshold")
    how.add_argument("--contamination", type=float, help="expected anomalous fraction (default 0.1), sets lam")
    fit.add_argument("--hidden", type=_sizes, default=(400, 200), help="encoder layer sizes, e.g. 400,200")
    fit.add_argument("--outer-iter", type=int, default=20)
    fit.add_argument("--inner-epochs", type=int, default=5)
    fit.add_argument("--batch-size", type=int, default=128)
    fit.add_argument("--lr", type=float, default=1e-3)
    fit.add_argument("--optimizer", default="adam")
    fit.add_argument("--activation", default="sigmoid")
    fit.add_argument("--output-activation", default="sigmoid", help='"linear" for data outside [0, 1]')
    fit.add_argument("--untied", action="store_true", help="decoder weights of its own")
    fit.add_argument("--tol", type=float, default=1e-7)
    fit.add_argument("--device", default="auto")
    fit.add_argument("--dtype", default=None, choices=("float32", "float64"))
    fit.add_argument("--seed", type=int, default=None)
    fit.add_argument("-v", "--verbose", action="store_true", help="progress bar")
    fit.set_defaults(run=_fit)

    score = sub.add_parser("score", help="score new rows with a saved model")
    score.add_argument("model", help="a model saved by rda-ext fit --model")
    score.add_argument("input", help="data matrix: .npy, .npz (see --key) or .csv")
    score.add_argument("--key")
    score.add_argument("--out", required=True, help="result .npz: scores, labels, threshold")
    score.add_argument("--device", default=None, help="overrides the saved device")
    score.set_defaults(run=_score)

    info = sub.add_parser("info", help="build information: CUDA kernels, GPU, threads")
    info.set_defaults(run=_info)
    return parser


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes like 400,200, got {text!r}") from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    return sizes


def _demo(args) -> int:
    from rda_ext.demo import run_demo

    if args.json:
        check_writable(args.json)
    results = run_demo(seed=args.seed, device=args.device)
    if args.json:
        atomic_write(args.json, lambda f: f.write(json.dumps(results, indent=2).encode()))
    return 0


def _fit(args) -> int:
    for path in filter(None, (args.out, args.model)):
        check_writable(path)
    X = read_matrix(args.input, args.key)
    est = RobustAutoencoder(
        hidden=args.hidden, penalty=args.penalty, lam=args.lam,
        contamination=0.1 if args.contamination is None else args.contamination,
        outer_iter=args.outer_iter, inner_epochs=args.inner_epochs, batch_size=args.batch_size,
        lr=args.lr, optimizer=args.optimizer, activation=args.activation,
        output_activation=args.output_activation, tied_weights=not args.untied, tol=args.tol,
        device=args.device, dtype=args.dtype, random_state=args.seed, verbose=args.verbose,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.showwarning = _warning_line
        est.fit(X)
    history = np.array([[h[k] for k in HISTORY_KEYS] for h in est.history_], dtype=np.float64)
    save_npz(
        args.out, L=est.L_, S=est.S_, scores=est.decision_scores_, labels=est.labels_,
        lam=np.float64(est.lam_), threshold=np.float64(est.threshold_), history=history,
        history_columns=np.array(HISTORY_KEYS),
    )
    if args.model:
        est.save(args.model, data=False)
    h = est.history_[-1]
    print(
        f"{len(X)} rows x {X.shape[1]} features, {est.n_iter_} outer iterations, lam {est.lam_:.6g}: "
        f"{int(est.labels_.sum())} rows flagged, {h['n_nonzero']} non-zero groups in S "
        f"(c1 {h['c1']:.3g}, c2 {h['c2']:.3g}) -> {args.out}"
    )
    return 0


def _score(args) -> int:
    check_writable(args.out)
    est = RobustAutoencoder.load(args.model, device=args.device)
    X = read_matrix(args.input, args.key)
    scores = est.decision_function(X)
    labels = (scores > est.threshold_).astype(np.int64)
    save_npz(args.out, scores=scores, labels=labels, threshold=np.float64(est.threshold_))
    print(f"{len(X)} rows scored, {int(labels.sum())} above the threshold {est.threshold_:.6g} -> {args.out}")
    return 0


def _info(args) -> int:
    for key, value in build_info().items():
        print(f"{key}: {value}")
    return 0


def _warning_line(message, category, filename, lineno, file=None, line=None):
    print(f"rda-ext: warning: {message}", file=sys.stderr)
