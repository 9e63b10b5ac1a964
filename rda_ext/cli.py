"""The ``rda-ext`` command (also ``python -m rda_ext``): demo, fit, score, info.

User errors (missing or unreadable files, bad shapes, NaN/Inf in the data, bad parameter values)
print one line on stderr and exit with status 2, without a traceback. Output files are written
whole or not at all."""

from __future__ import annotations

import argparse
import inspect
import json
import os
import re
import signal
import sys
import threading
import warnings

import numpy as np
import torch

from rda_ext import __version__, build_info
from rda_ext.estimator import RobustAutoencoder
from rda_ext.estimator.network_shape import sizes_text
from rda_ext.io import result_schema
from rda_ext.io.atomic import atomic_write
from rda_ext.io.paths import asks_for_folder, check_paths
from rda_ext.io.readers import read_matrix
from rda_ext.io.results import write_fit, write_scores
from rda_ext.solver.collectives import SINGLE_PROCESS, RowGroup, agreed
from rda_ext.validation import CHOICES, DTYPES

EXIT_USAGE = 2
EXIT_INTERRUPTED = 128 + signal.SIGINT  # 130, as a shell reports Ctrl-C
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143


class UsageError(ValueError):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see {self.prog} --help)")


class Terminated(BaseException):
    """Raised by the SIGTERM handler, so that what is being written is cleaned up on the way out
    (a BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it)."""


# Set once this process has joined a torchrun job's process group.
_torchrun_worker = False


def main(argv: list[str] | None = None) -> int:
    code = _main(argv)
    if _torchrun_worker:
        # A rank's outputs are written and its group destroyed: it leaves without the interpreter's
        # finalisation, during which gloo's threads may still release tensors and abort a rank that
        # has finished (SIGABRT, "terminate called without an active exception", seen here about
        # once in ten jobs).
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _main(argv: list[str] | None) -> int:
    parser = _build_parser()
    restore = _handle_signals()
    try:
        args = parser.parse_args(argv)
        return args.run(args)
    except KeyboardInterrupt:
        return _fail("interrupted", EXIT_INTERRUPTED)
    except Terminated:
        return _fail("terminated", EXIT_TERMINATED)
    except RuntimeError as e:  # torch.OutOfMemoryError is one
        if not _allocation_failure(e):
            raise
        return _fail(f"error: {_out_of_memory(e)}", EXIT_USAGE)
    except (ValueError, OSError) as e:
        return _fail(f"error: {e}", EXIT_USAGE)
    finally:
        restore()


def _fail(message: str, code: int) -> int:
    print(f"rda-ext: {' '.join(message.split())}", file=sys.stderr)
    return code


def _handle_signals():
    """SIGTERM raises ``Terminated``, so that a temporary file is removed (O_TMPFILE needs no
    removal) and the exit is one line; after a first SIGINT or SIGTERM both are ignored, so that
    a second one cannot break the cleanup. Returns what restores the previous handlers (main is
    also called from Python, in tests)."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

    def handler(signum, frame):
        for sig in previous:
            signal.signal(sig, signal.SIG_IGN)
        raise KeyboardInterrupt if signum == signal.SIGINT else Terminated

    for sig, old in previous.items():
        if old is not signal.SIG_IGN:  # nohup / background jobs: stay ignored
            signal.signal(sig, handler)

    def restore():
        for sig, h in previous.items():
            signal.signal(sig, h if h is not None else signal.SIG_DFL)

    return restore


_ALLOCATION_FAILURE = ("can't allocate memory", "out of memory", "storage size calculation overflowed")


def _allocation_failure(e: RuntimeError) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or any(m in str(e).lower() for m in _ALLOCATION_FAILURE)


def _out_of_memory(e: RuntimeError) -> str:
    tried = re.search(r"tried to allocate ([\d.]+) ?(\w+)", str(e), flags=re.IGNORECASE)
    size = None
    if tried:
        number, unit = tried.groups()
        size = f"{int(number) / 2**30:.3g} GiB" if unit == "bytes" and number.isdigit() else f"{number} {unit}"
    where = "GPU" if isinstance(e, torch.OutOfMemoryError) or "cuda" in str(e).lower() else "CPU"
    return (
        f"the network or the data does not fit in {where} memory"
        + (f" (an allocation of {size} failed)" if size else "")
        + ": use smaller --hidden layer sizes or a smaller --batch-size"
    )


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="rda-ext", description="Robust Deep Autoencoders: X = L + S.")
    parser.add_argument("--version", action="version", version=f"rda_ext {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    demo = sub.add_parser("demo", help="the outlier experiment of the paper on the embedded MNIST subset")
    demo.add_argument("--seed", type=int, default=0, help="data mixture and training seed (default 0)")
    demo.add_argument("--device", default="auto", help='"auto" (default), "cpu" or "cuda"')
    demo.add_argument("--digits", type=int, nargs="+", choices=range(10), metavar="D",
                      help="the nominal digits of the construction's table (default all ten)")
    demo.add_argument("--json", metavar="PATH", help="also write the numbers as JSON")
    demo.set_defaults(run=_demo)

    fit = sub.add_parser("fit", help="decompose a matrix into L + S and score its rows",
                         description=result_schema.fit_description())
    fit.add_argument("input", help="data matrix: .npy, .npz (see --key) or .csv; rows = instances")
    fit.add_argument("--key", help="the array to use in an .npz holding several")
    _add_header_option(fit)
    fit.add_argument("--out", required=True, help=result_schema.fit_out_help())
    fit.add_argument("--model", help="also save the fitted model here (for rda-ext score; it holds up to 1,000 "
                     "training rows, the default score's neighbours)")
    _add_estimator_options(fit)
    fit.set_defaults(run=_fit)

    score = sub.add_parser("score", help="score new rows with a saved model")
    score.add_argument("model", help="a model saved by rda-ext fit --model")
    score.add_argument("input", help="data matrix: .npy, .npz (see --key) or .csv")
    score.add_argument("--key", help="the array to use in an .npz holding several")
    _add_header_option(score)
    score.add_argument("--out", required=True, help=result_schema.score_out_help())
    score.add_argument("--device", default=None, help="overrides the saved device")
    score.set_defaults(run=_score)

    info = sub.add_parser("info", help="build information: CUDA kernels, GPU, threads")
    info.set_defaults(run=_info)
    return parser


def _add_header_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--header", action=argparse.BooleanOptionalAction, default=None,
        help="whether the first line of a .csv input is a header to skip (default: a header if none of its "
             "cells is a number; a first line mixing numbers and text is an error)",
    )


def _read_input(args, shard: tuple[int, int] | None = None) -> tuple[np.ndarray, str]:
    """The input matrix (``shard``: of a rank, see ``read_matrix``), and where it came from for the
    summary line."""
    X, header = read_matrix(args.input, args.key, header=args.header, return_header=True, shard=shard)
    source = f"read from {args.input}" + ("" if header is None else f" (header: {'yes' if header else 'no'})")
    return X, source


# The fit options are the estimator's parameters: names, defaults and help come from
# RobustAutoencoder itself (its signature and docstring), choices from the checks of validation.
# Here only what is particular to the command line.
# Each rda-ext fit starts afresh; it is distributed when torchrun launched it.
_NOT_OPTIONS = ("warm_start", "distributed")
_OPTION_FLAGS = {"random_state": ("--seed",), "verbose": ("-v", "--verbose")}


def _inner_epochs(text: str) -> str | int:
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected "auto" or a number of epochs, got {text!r}') from None


def _hidden(text: str) -> str | tuple[int, ...]:
    return text if text == "auto" else _sizes(text)


_VALUE_TYPES = {"lam": float, "random_state": int, "dtype": str, "checkpoint": str,  # default None tells no type
                "inner_epochs": _inner_epochs, "hidden": _hidden}
_OPTION_CHOICES = {**CHOICES, "dtype": tuple(DTYPES)}


def _estimator_parameters() -> list[inspect.Parameter]:
    params = inspect.signature(RobustAutoencoder.__init__).parameters.values()
    return [p for p in params if p.name != "self" and p.name not in _NOT_OPTIONS]


def _parameter_help() -> dict[str, str]:
    """``name : text`` entries of the Parameters section of RobustAutoencoder's docstring."""
    doc = inspect.cleandoc(RobustAutoencoder.__doc__)
    section = doc.split("\nParameters", 1)[1].split("\nFitted attributes", 1)[0]
    entries = re.findall(r"^(\w+) : (.*?)(?=^\w+ : |\Z)", section, flags=re.M | re.S)
    return {name: " ".join(text.split()) for name, text in entries}


def _add_estimator_options(parser: argparse.ArgumentParser) -> None:
    helps = _parameter_help()
    for p in _estimator_parameters():
        default = p.default
        kwargs = dict(dest=p.name, default=default, help=f"{helps[p.name]} (default: {default!r})".replace("%", "%%"))
        if isinstance(default, bool):
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = _VALUE_TYPES.get(p.name, type(default))
        if p.name == "hidden":
            kwargs["metavar"] = '"auto" or N,N,...'
        if p.name in _OPTION_CHOICES:
            kwargs["choices"] = _OPTION_CHOICES[p.name]
        flags = _OPTION_FLAGS.get(p.name, ("--" + p.name.replace("_", "-"),))
        parser.add_argument(*flags, **kwargs)


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected "auto" or comma-separated layer sizes like 400,200, got {text!r}') from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"layer sizes must be positive, got {text!r}")
    if max(sizes) >= 2**63:
        raise argparse.ArgumentTypeError(f"layer sizes must be below 2**63, got {text!r}")
    return sizes


def _demo(args) -> int:
    from rda_ext.experiments.demo import DIGITS, run_demo

    check_paths({}, {"--json": args.json})
    results = run_demo(seed=args.seed, device=args.device, digits=args.digits or DIGITS)
    if args.json:
        atomic_write(args.json, lambda f: f.write(json.dumps(results, indent=2).encode()))
    return 0


def _fit(args) -> int:
    global _torchrun_worker
    ranks = _join_torchrun(args)
    if not ranks.distributed:  # no process group to close
        return _fit_rows(args, ranks)
    _torchrun_worker = True
    try:
        code = _fit_rows(args, ranks)
        torch.distributed.barrier()  # no rank closes its connections while another still reads from them
        return code
    finally:
        torch.distributed.destroy_process_group()


def _join_torchrun(args) -> RowGroup:
    """Under torchrun (its WORLD_SIZE in the environment) the process group of the job: NCCL on
    GPUs (each rank on the GPU of its LOCAL_RANK), gloo on CPUs. A single process for a plain run."""
    if "WORLD_SIZE" not in os.environ:
        return SINGLE_PROCESS
    if args.device.startswith("cuda:"):
        raise ValueError(f"--device {args.device}: under torchrun each rank takes the GPU of its LOCAL_RANK; "
                         'use --device cuda (or "auto")')
    cuda = args.device != "cpu" and torch.cuda.is_available()
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        args.device = f"cuda:{local}"
    store, rank, world = next(torch.distributed.rendezvous("env://"))
    # torchrun keeps its store across restarts (--max-restarts): the keys of each attempt apart,
    # or the new ranks would find the dead ones' addresses there.
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    store = torch.distributed.PrefixStore(f"rda_ext/attempt-{attempt}/", store)
    torch.distributed.init_process_group("nccl" if cuda else "gloo", store=store, rank=rank, world_size=world)
    return RowGroup()


def _fit_rows(args, ranks: RowGroup) -> int:
    # Rank 0 decides for all: the collectives that follow depend on it.
    folder = bool(ranks.broadcast_int(int(asks_for_folder(args.out))))

    def prepare():
        # Every path of the job at once, on every rank: a collision fails before the fit, not after.
        check_paths({"input": args.input}, {"--out": None if folder else args.out, "--model": args.model},
                    {"--out": args.out if folder else None, "--checkpoint": args.checkpoint}, whole=("--out",))
        return _read_input(args, ranks.shard)

    X, source = agreed(ranks, prepare)
    est = RobustAutoencoder(**{p.name: getattr(args, p.name) for p in _estimator_parameters()})
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        # Python's own default: an import cut short by Ctrl-C leaves a file for the collector to close.
        warnings.simplefilter("ignore", ResourceWarning)
        warnings.showwarning = _warning_line if ranks.rank == 0 else _no_warning
        est.fit(X)
    n = ranks.count(len(X))
    flagged = write_fit(est, args.out, args.model, folder, ranks)
    if ranks.rank == 0:
        h = est.history_[-1]
        print(
            f"{n} rows x {X.shape[1]} features {source}"
            + (f" on {ranks.size} ranks ({ranks.backend})" if ranks.distributed else "")
            + f", network {sizes_text((X.shape[1], *est.hidden_))}"
            + ("" if est.shape_contrast_ is None else " (kept by residual contrast: " + ", ".join(
                f"{sizes_text((X.shape[1], *hidden))} {c:.3g}" for hidden, c in est.shape_contrast_.items()) + ")")
            + f", {est.n_iter_} outer iterations, lam {est.lam_:.6g}: {flagged} rows flagged, {h['n_nonzero']} "
            f"non-zero groups in S (c1 {h['c1']:.3g}, c2 {h['c2']:.3g}) -> {args.out}"
        )
    return 0


def _score(args) -> int:
    check_paths({"model": args.model, "input": args.input}, {"--out": args.out})
    est = RobustAutoencoder.load(args.model, device=args.device)
    X, source = _read_input(args)
    scores = est.decision_function(X)
    labels = (scores > est.threshold_).astype(np.int64)
    write_scores(args.out, scores, labels, est.threshold_)
    print(
        f"{len(X)} rows scored ({X.shape[1]} features {source}), {int(labels.sum())} above the threshold "
        f"{est.threshold_:.6g} -> {args.out}"
    )
    return 0


def _info(args) -> int:
    for key, value in build_info().items():
        print(f"{key}: {value}")
    return 0


def _warning_line(message, category, filename, lineno, file=None, line=None):
    print(f"rda-ext: warning: {message}", file=sys.stderr)


def _no_warning(*args, **kwargs):
    """Ranks other than 0 keep quiet: rank 0 says it once for the job."""
