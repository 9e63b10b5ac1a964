"""What the ranks of a row-sharded fit exchange: each collective is named after what it reduces.

A fit whose rows are split over the processes of a ``torch.distributed`` group needs few numbers
from the other ranks: sums and extremes of a few values, the column norms of "l21_cols" (d
numbers), the three convergence norms, and order statistics over all groups (the contamination
threshold, the score quantile). The order statistics are found by a radix selection over the
float bit patterns, a histogram of 2**16 counts per round: exact, and no rank ever gathers
another's values (an l1 fit selects among n x d entries).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from rda_ext.solver.loop import survivors_of, threshold_between

# Bits of the float pattern resolved per round of the selection: 2 rounds for float32 data,
# 4 for float64, each an all-reduce of 2**16 int64 counts (512 KiB) and one pass over the values.
DIGIT_BITS = 16
# Values binned at once: bounds the temporaries of a selection over a large shard.
SELECT_CHUNK = 1 << 24

_BITS = {torch.float64: torch.int64, torch.float32: torch.int32, torch.float16: torch.int16,
         torch.bfloat16: torch.int16}


def row_group(distributed) -> RowGroup:
    """The row group of a fit with the estimator's ``distributed`` parameter: the default process
    group where one is initialised ("auto", True), else a single process (``SINGLE_PROCESS``)."""
    active = dist.is_available() and dist.is_initialized()
    if distributed is True and not active:
        raise ValueError("distributed=True needs an initialised torch.distributed process group "
                         "(torch.distributed.init_process_group, or a launch with torchrun)")
    return RowGroup() if active and distributed is not False else SINGLE_PROCESS


def agreed(ranks: RowGroup, fn):
    """``fn()``, where an exception on any rank is raised on every rank (a ValueError with the
    lowest failing rank's message on the others), so that no rank waits alone in a collective."""
    error, result = None, None
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - exchanged, then raised again
        error = e
    message = ranks.first_error(error)
    if error is not None:
        raise error
    if message is not None:
        raise ValueError(message)
    return result


# What may differ between the ranks' estimators of one fit, since each rank passes its own: the
# device (each rank computes on its own, e.g. the GPU of its LOCAL_RANK) and verbose (only rank 0
# shows progress). Two more differ in part: checkpoint's path (one shared folder may be mounted at
# another path on each node; whether there is one must agree, since saving it takes collectives)
# and a random_state that is not an integer (None, a RandomState or a Generator: rank 0's draw is
# broadcast; an integer seeds each rank as it is, so integers must be equal, and every rank must
# pass one or none, or only some join the broadcast). Everything else must be equal, parameters
# added later included: the ranks of one fit run the same collectives in the same order only when
# they take the same steps, and a parameter that changes no collective (lr) would still let the
# replicas of the network drift apart.
PER_RANK_PARAMETERS = ("device", "verbose")


def agree_on_parameters(ranks: RowGroup, params: dict, check) -> None:
    """Before the first collective of a fit: raises the same ValueError on every rank where the
    ranks' estimator parameters ``params`` (``get_params()``) differ beyond what may differ per rank
    (``PER_RANK_PARAMETERS``, checkpoint's path, a random_state that is not an integer), naming each
    parameter and which ranks have which value. ``check()`` (the parameters' own checks, whose
    outcome may differ by device) then runs on every rank, and its error is raised on every rank."""
    error = None
    try:
        check()
    except Exception as e:  # noqa: BLE001 - exchanged, then raised again
        error = e
    ranks.agree({name: _parameter_description(name, value) for name, value in params.items()
                 if name not in PER_RANK_PARAMETERS}, error,
                note="every rank's estimator must have the same parameters but device, verbose, checkpoint's "
                     "path and a random_state that is not an integer")


def agree_on_width(ranks: RowGroup, width: int) -> None:
    """Raises the same ValueError on every rank where the ranks' rows have different numbers of
    columns (their dtypes may differ: every rank converts its rows to the fit's dtype)."""
    ranks.agree({"the width of X (columns)": (repr(width), repr(width))},
                note="every rank passes its rows of the same columns")


def _parameter_description(name: str, value) -> tuple[str, str]:
    """What must be equal of a parameter's ``value`` (a key compared between ranks) and what the
    error shows. Values that act alike compare equal ((8, 3) and [8, 3], 2 and numpy's 2, None and
    "float32" as dtype); values that the checks tell apart do not (3 and 3.0, True and 1), so that
    ranks passing the agreement also pass or fail the checks alike."""
    shown = repr(_plain(value))
    if name == "random_state" and (value is None or isinstance(value, (np.random.RandomState, np.random.Generator))):
        return "drawn on rank 0", shown
    if name == "checkpoint" and value is not None:
        return "a folder", shown
    if name == "dtype":
        return ("float32" if value is None else str(value).removeprefix("torch.")), shown
    return shown, shown


def _plain(value):
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def _ranks_text(ranks: list[int]) -> str:
    """"rank 1", "ranks 0, 2" or "ranks 0-3, 5": runs of consecutive ranks as ranges."""
    runs: list[list[int]] = []
    for r in ranks:
        if runs and r == runs[-1][1] + 1:
            runs[-1][1] = r
        else:
            runs.append([r, r])
    text = ", ".join(str(a) if a == b else f"{a}, {b}" if b == a + 1 else f"{a}-{b}" for a, b in runs)
    return f"rank {text}" if len(ranks) == 1 else f"ranks {text}"


class RowGroup:
    """This process's place in a row-sharded fit over the default process group: its rank and
    size, and the device collectives run on (the data's own with NCCL, the CPU with gloo).
    ``distributed``: the fit's rows are split over processes (a ``SingleProcess`` holds them all)."""

    distributed = True

    def __init__(self):
        self.rank = dist.get_rank()
        self.size = dist.get_world_size()
        self.backend = dist.get_backend()

    def _on_wire(self, t: Tensor) -> Tensor:
        if self.backend == "nccl":
            return t if t.is_cuda else t.cuda()
        return t.cpu()

    def _reduce(self, t: Tensor, op) -> Tensor:
        wire = self._on_wire(t).clone()
        dist.all_reduce(wire, op=op)
        return wire.to(t.device)

    def sum(self, t: Tensor) -> Tensor:
        """The sum over the ranks of ``t`` (the same shape on every rank), on ``t``'s device."""
        return self._reduce(t, dist.ReduceOp.SUM)

    def max(self, t: Tensor) -> Tensor:
        return self._reduce(t, dist.ReduceOp.MAX)

    def min(self, t: Tensor) -> Tensor:
        return self._reduce(t, dist.ReduceOp.MIN)

    def broadcast_int(self, value: int) -> int:
        """Rank 0's ``value`` on every rank."""
        wire = self._on_wire(torch.tensor([value], dtype=torch.int64))
        dist.broadcast(wire, src=0)
        return int(wire.item())

    def shared_gradients(self, model: nn.Module) -> Callable[[Tensor], None]:
        """For training ``model`` on this rank's rows as one network of the job: rank 0's weights
        on every rank, then what averages a step's gradients (one flat tensor) over the ranks."""
        with torch.no_grad():
            for p in model.parameters():
                wire = self._on_wire(p.detach())
                dist.broadcast(wire, src=0)
                p.copy_(wire)

        def average_gradients(flat: Tensor) -> None:
            wire = self._on_wire(flat)  # flat itself, but for a GPU's gradients over gloo
            dist.all_reduce(wire)
            if wire is not flat:
                flat.copy_(wire)
            flat.div_(self.size)

        return average_gradients

    @property
    def shard(self) -> tuple[int, int] | None:
        """This rank's part of an input file, as ``read_matrix`` takes it."""
        return self.rank, self.size

    def gather_to_first(self, obj) -> list | None:
        """Every rank's ``obj`` (picklable), in rank order, on rank 0; None on the others."""
        parts = [None] * self.size if self.rank == 0 else None
        dist.gather_object(obj, parts, dst=0)
        return parts

    def rows_per_rank(self, n_local: int) -> list[int]:
        """Every rank's number of rows, in rank order."""
        counts = torch.zeros(self.size, dtype=torch.int64)
        counts[self.rank] = n_local
        return self.sum(counts).tolist()

    def all_rows(self, local: Tensor, counts: list[int]) -> Tensor:
        """Every rank's rows ``local`` (``counts[r]`` rows on rank r, the same width and dtype),
        concatenated in rank order, on every rank and on ``local``'s device."""
        wire = self._on_wire(local.new_zeros(max(counts), *local.shape[1:]))
        wire[: local.shape[0]] = local
        parts = [torch.empty_like(wire) for _ in range(self.size)]
        dist.all_gather(parts, wire)  # padded to the most rows: all_gather takes one shape
        return torch.cat([p[:c] for p, c in zip(parts, counts)]).to(local.device)

    def first_error(self, error: BaseException | None) -> str | None:
        """The message of the lowest rank's error, on every rank (None where no rank has one): a
        rank that fails alone would leave the others waiting in their next collective."""
        messages: list[str | None] = [None] * self.size
        dist.all_gather_object(messages, None if error is None else str(error))
        return next((m for m in messages if m is not None), None)

    def agree(self, values: dict[str, tuple[str, str]], error: BaseException | None = None, *,
              note: str = "") -> None:
        """One all-gather of every rank's ``values`` (name -> (key, shown)) and error: where the
        keys of a name differ, the same ValueError on every rank, naming each such name and which
        ranks have which value (the shown one), followed by ``note``; else, where a rank has an
        error, that error on it and a ValueError with the lowest failing rank's message on the
        others."""
        everyone: list = [None] * self.size
        dist.all_gather_object(everyone, (values, None if error is None else str(error)))
        names = list(dict.fromkeys(name for theirs, _ in everyone for name in theirs))
        missing = ("", "nothing")
        differ = []
        for name in names:
            groups: dict[str, list] = {}  # key -> (shown, ranks), in the order of the lowest rank
            for rank, (theirs, _) in enumerate(everyone):
                key, shown = theirs.get(name, missing)
                groups.setdefault(key, [shown, []])[1].append(rank)
            if len(groups) > 1:
                differ.append(f"{name}: " + ", ".join(
                    f"{_ranks_text(rs)} {'has' if len(rs) == 1 else 'have'} {shown}" for shown, rs in groups.values()))
        if differ:
            raise ValueError("the ranks disagree on " + "; on ".join(differ) + (f" ({note})" if note else ""))
        if error is not None:
            raise error
        message = next((m for _, m in everyone if m is not None), None)
        if message is not None:
            raise ValueError(message)

    # ------------------------------------------------------------------ norms
    def norms(self, local: Tensor) -> Tensor:
        """The l2 norms of groups whose entries are split over the ranks, from each rank's norms of
        its part (float64; also the three convergence norms). Summed as squares relative to the
        largest part, so that float64 norms beyond 1e154 do not overflow."""
        local = local.double()
        top = self.max(local)
        unit = torch.where((top > 0) & top.isfinite(), top, torch.ones_like(top))
        total = self.sum((local / unit).square())
        return torch.where(top.isinf(), top, total.sqrt() * unit)

    # ------------------------------------------------------------------ order statistics
    def count(self, n_local: int) -> int:
        return int(self.sum(torch.tensor(n_local, dtype=torch.int64)).item())

    def kth_largest(self, values: Tensor, k: int) -> Tensor:
        """The k-th largest (k >= 1) of the non-negative ``values`` of all ranks, exactly, as a
        0-dim tensor of their dtype: a radix selection over their bit patterns (which sort as the
        values do for numbers >= 0, +inf and NaN last), ``DIGIT_BITS`` per round."""
        flat = values.reshape(-1)
        bits_dtype = _BITS[flat.dtype]
        width = torch.iinfo(bits_dtype).bits - 1  # the sign bit is 0
        rounds = math.ceil(width / DIGIT_BITS)
        prefix, bins = 0, 1 << DIGIT_BITS
        for r in range(rounds):
            shift = max(width - (r + 1) * DIGIT_BITS, 0)
            span = width - r * DIGIT_BITS - shift  # bits this round resolves
            counts = torch.zeros(bins, dtype=torch.int64, device=flat.device)
            for start in range(0, flat.numel(), SELECT_CHUNK):
                # The sign bit cleared: a NaN may carry one (and sorts last either way).
                b = flat[start : start + SELECT_CHUNK].contiguous().view(bits_dtype).long() & ((1 << width) - 1)
                if r:
                    b = b[(b >> (shift + span)) == prefix]
                counts += torch.bincount((b >> shift) & ((1 << span) - 1), minlength=bins)
            counts = self.sum(counts).cpu()
            above = counts.flip(0).cumsum(0)  # above[i]: values whose digit >= bins - 1 - i
            i = int(torch.searchsorted(above, k))
            digit = bins - 1 - i
            k -= int(above[i] - counts[digit])
            prefix = (prefix << span) | digit
        return torch.tensor(prefix, dtype=bits_dtype).view(flat.dtype)

    def survival_threshold(self, values: Tensor, fraction: float) -> float:
        """``loop.survival_threshold`` over the values of all ranks (the same number, to the bit)."""
        total = self.count(values.numel())
        survivors = survivors_of(total, fraction)
        largest_shrunk = self.kth_largest(values, survivors + 1)
        if not survivors:
            return threshold_between(largest_shrunk, None)
        flat = values.reshape(-1)
        above = flat[flat > largest_shrunk]
        if self.count(above.numel()) >= survivors:  # else the smallest survivor ties with it
            floor = torch.full((), math.inf, dtype=torch.float64)
            smallest = self.min(above.min().double().cpu() if above.numel() else floor).to(flat.dtype)
        else:
            smallest = largest_shrunk
        return threshold_between(largest_shrunk, smallest)

    def quantile(self, values: Tensor, q: float) -> float:
        """``numpy.quantile(all values, q)`` (linear interpolation) for values >= 0."""
        total = self.count(values.numel())
        pos = q * (total - 1)
        k = math.floor(pos)
        lo = self.kth_largest(values, total - k)
        hi = self.kth_largest(values, total - k - 1) if k + 1 < total else lo
        return float(np.quantile(np.array([float(lo), float(hi)]), pos - k))


class SingleProcess(RowGroup):
    """A fit on one process, as a row group of size one: every collective is the identity and the
    quantile is taken locally (exactly the number the selection gives, without its rounds). Its
    proximal step is ``RDASolver``'s own (``fitting.new_solver``), which never asks a row group
    for norms or a survival threshold."""

    distributed = False
    rank, size, backend = 0, 1, None

    def __init__(self):
        pass

    def sum(self, t: Tensor) -> Tensor:
        return t

    def max(self, t: Tensor) -> Tensor:
        return t

    def min(self, t: Tensor) -> Tensor:
        return t

    def broadcast_int(self, value: int) -> int:
        return value

    def shared_gradients(self, model: nn.Module) -> None:
        return None

    shard = None  # the whole file, read as it is (no memory map)

    def gather_to_first(self, obj) -> list:
        return [obj]

    def rows_per_rank(self, n_local: int) -> list[int]:
        return [n_local]

    def all_rows(self, local: Tensor, counts: list[int]) -> Tensor:
        return local

    def first_error(self, error: BaseException | None) -> str | None:
        return None if error is None else str(error)

    def agree(self, values: dict[str, tuple[str, str]], error: BaseException | None = None, *,
              note: str = "") -> None:
        if error is not None:
            raise error

    def count(self, n_local: int) -> int:
        return n_local

    def quantile(self, values: Tensor, q: float) -> float:
        return float(np.quantile(values.cpu().numpy(), q))


SINGLE_PROCESS = SingleProcess()
