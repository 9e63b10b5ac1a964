"""The inner loop of RDA: minibatch training of the autoencoder on a matrix that stays on its device.

Batches are gathered with an index permutation drawn on the device, never through a DataLoader, and
the losses are summed on the device: nothing here waits for the host."""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rda_ext.solver.fused_step import FusedStep
from rda_ext.solver.schedule import Schedule

OPTIMIZERS = ("adam", "sgd")

# Rows per chunk when the whole matrix goes through the network (reconstruction, encoding,
# scoring): bounds the activations' memory independently of the data size, and keeps a chunk's
# activations in the cache while the layers read them (the reconstruction of 567,498 x 3 rows
# through 3-128-32 took 2.5x as long in chunks of 65,536 rows: benchmarks/RESULTS.md).
CHUNK_ROWS = 4096


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam or SGD (momentum 0.9) with the fused (single-kernel) update, which torch provides on CPU
    and CUDA and which ``FusedStep`` calls directly."""
    params = list(model.parameters())
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, fused=True)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autoencoder's computations in ``dtype`` (bfloat16) under autocast, or as they are (None)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def capture_cuda_graph(step: Callable[[], Tensor]) -> Callable[[], Tensor]:
    """``step`` recorded into a CUDA graph (not run); returns what replays it and gives its loss
    (a tensor the graph overwrites at every replay)."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = step()

    def replay() -> Tensor:
        graph.replay()
        return loss

    return replay


@contextmanager
def _side_stream(device: torch.device):
    """The warm-up before a capture runs on a stream of its own, as torch.cuda.graph requires."""
    if device.type != "cuda":
        yield
        return
    main, side = torch.cuda.current_stream(device), torch.cuda.Stream(device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        yield
    main.wait_stream(side)


class GraphedStep:
    """The training step of full batches (``FusedStep``: forward, backward, optimizer update),
    captured once in a CUDA graph and replayed for every later full batch, across epochs and outer
    iterations. A step of a small network at a small batch is bound by kernel launches on a GPU; a
    replay launches all of them at once. The caller gathers each batch into ``batch`` (a static
    buffer, the graph's input); a last partial batch is trained eagerly.

    The first ``WARMUP`` steps run eagerly on a side stream (they are training steps like any
    other: they build the optimizer's state and let the allocator settle), the next one captures
    and replays. ``capture`` turns the step into its replay (``capture_cuda_graph``; tests give a
    function that runs the step eagerly, the only way to run this path on a CPU)."""

    WARMUP = 3

    def __init__(self, batch: Tensor, capture: Callable = capture_cuda_graph):
        self.batch, self.capture = batch, capture
        self.warmed, self.replay = 0, None

    @property
    def captured(self) -> bool:
        return self.replay is not None

    def __call__(self, step: FusedStep) -> Tensor:
        """One ``step`` on what ``batch`` holds; returns its loss (valid until the next step)."""
        if self.replay is None:
            if self.warmed < self.WARMUP:
                self.warmed += 1
                with _side_stream(self.batch.device):
                    return step(self.batch)
            self.replay = self.capture(lambda: step(self.batch))
        return self.replay()


def train_epochs(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: Tensor,
    schedule: Schedule,
    generator: torch.Generator,
    target: Tensor | None = None,
    loss_fn: Callable[[Tensor], Tensor] | None = None,
    amp: torch.dtype | None = None,
) -> Tensor:
    """Trains ``model`` through autograd to map the rows of ``data`` to the same rows of ``target``
    (default: ``data`` itself) with the mean squared error, or to minimise ``loss_fn(batch)``, on
    the minibatches of ``schedule``: the networks of the baselines (a VAE, RCAE's target X - N).
    RDA's own networks train with ``Network``'s fused step. Returns the mean batch loss of the last
    epoch as a 0-dim tensor on the device. ``amp``: the dtype of the forward pass under autocast
    (None: none); the loss is formed in float32 either way."""

    def step(rows: Tensor) -> Tensor:
        batch = data.index_select(0, rows)
        with autocast(data.device, amp):
            if loss_fn is not None:
                loss = loss_fn(batch)
            else:
                loss = F.mse_loss(model(batch), batch if target is None else target.index_select(0, rows))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    model.train()
    return schedule.train(step, data.shape[0], generator, data.device)


@torch.no_grad()
def reconstruct_into(model: nn.Module, data: Tensor, out: Tensor, amp: torch.dtype | None = None) -> Tensor:
    """``out = model(data)`` chunk by chunk of rows (``out`` may be ``data``: each chunk is read
    before it is written), the network under autocast to ``amp`` where given. ``data`` is one
    matrix (n, d), or K matrices (K, n, d) for K stacked networks. Returns the squared Frobenius
    norm of ``data - model(data)`` (of each of the K) as float64 on the device."""
    model.eval()
    err = torch.zeros(data.shape[:-2], dtype=torch.float64, device=data.device)
    chunk = max(1, CHUNK_ROWS // math.prod(data.shape[:-2]))  # the activations of K networks at once
    for start in range(0, data.shape[-2], chunk):
        x = data[..., start : start + chunk, :]
        with autocast(data.device, amp):
            r = model(x)
        err += (x - r).square().sum(dim=(-2, -1), dtype=torch.float64)
        out[..., start : start + chunk, :] = r
    return err


class Network:
    """The one network of a fit and how it trains: its optimizer, the schedule and the batch order
    (``generator``), each step a ``FusedStep``. ``share`` gives, on first use (once a checkpoint's
    weights are loaded), what averages the gradients over the ranks of a row-sharded fit (None for
    one process). ``graphed``: full batches go through a captured CUDA graph. Trains and
    reconstructs the L of its one fit."""

    batch_dim = 0  # the dim of L that holds its rows

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, schedule: Schedule,
                 generator: torch.Generator, amp: torch.dtype | None = None, graphed: GraphedStep | None = None,
                 share: Callable[[nn.Module], Callable | None] = lambda model: None):
        self.model, self.optimizer, self.schedule, self.generator = model, optimizer, schedule, generator
        self.amp, self.graphed, self._share, self._step = amp, graphed, share, None

    def __len__(self) -> int:
        return 1

    def new_L(self, X: Tensor) -> Tensor:
        return torch.empty_like(X)

    def part(self, L: Tensor, k: int) -> Tensor:
        return L

    def train(self, L: Tensor) -> Tensor:
        """Trains on the rows of L; the mean loss of the last epoch, of each network (shape (K,))."""
        if self._step is None:
            self._step = FusedStep(self.model, self.optimizer, self.amp, self._share(self.model))
        graphed, full = self.graphed, self.schedule.batch_size

        def step(rows: Tensor) -> Tensor:
            if graphed is not None and len(rows) == full:
                torch.index_select(L, self.batch_dim, rows, out=graphed.batch)
                return graphed(self._step)
            return self._step(L.index_select(self.batch_dim, rows))

        self.model.train()
        return self.schedule.train(step, L.shape[self.batch_dim], self.generator, L.device,
                                   (len(self),)).reshape(len(self))

    def reconstruct(self, L: Tensor) -> Tensor:
        """L = AE(L) in place; the squared reconstruction error of each network (shape (K,))."""
        return reconstruct_into(self.model, L, L, self.amp).reshape(len(self))

    def network(self, k: int) -> nn.Module:
        return self.model


@torch.no_grad()
def map_chunks(fn, data: Tensor) -> Tensor:
    """``fn`` applied to consecutive row chunks of ``data``, the results concatenated."""
    return torch.cat([fn(data[s : s + CHUNK_ROWS]) for s in range(0, max(data.shape[0], 1), CHUNK_ROWS)])


def in_precision(fn, amp: torch.dtype | None):
    """``fn`` (a network or its encoder) under autocast to ``amp``, returning its input's dtype."""

    def run(x: Tensor) -> Tensor:
        with autocast(x.device, amp):
            return fn(x).to(x.dtype)

    return run
