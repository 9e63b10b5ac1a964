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

from rda_ext.solver.schedule import Schedule

OPTIMIZERS = ("adam", "sgd")

# Rows per chunk when the whole matrix goes through the network (reconstruction, encoding,
# scoring): bounds the activations' memory independently of the data size.
CHUNK_ROWS = 65536


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0,
                   capturable: bool = False) -> torch.optim.Optimizer:
    """Adam or SGD with the fused (single-kernel) update, which torch provides on CPU and CUDA.
    ``capturable``: Adam keeps its step count on the device, so that a CUDA graph can capture the
    update (SGD's momentum update needs no host number)."""
    params = list(model.parameters())
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True, capturable=capturable)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, fused=True)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def autocast(device: torch.device, dtype: torch.dtype | None, cache: bool = True):
    """The autoencoder's computations in ``dtype`` (bfloat16) under autocast, or as they are (None).
    ``cache=False`` for a graph capture, whose replays must cast the weights of their own step."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None, cache_enabled=cache)


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
    """The autoencoder's training step on a full batch (forward, loss, backward, optimizer update),
    captured once in a CUDA graph and replayed for every later full batch, across epochs and outer
    iterations. A step of a small network at a small batch is bound by kernel launches on a GPU;
    a replay launches all of them at once. The caller gathers each batch into ``batch`` (a static
    buffer, the graph's input); a last partial batch is trained eagerly by ``train_epochs``.

    The first ``WARMUP`` steps run eagerly on a side stream (they are training steps like any
    other: they build the optimizer's state and let the allocator settle), the next one captures
    and replays. The optimizer must be capturable on CUDA (``make_optimizer(capturable=True)``).
    ``capture`` turns the step into its replay (``capture_cuda_graph``; tests give a function
    that runs the step eagerly, the only way to run this path on a CPU)."""

    WARMUP = 3

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, batch: Tensor,
                 amp: torch.dtype | None = None, capture: Callable = capture_cuda_graph):
        self.model, self.optimizer, self.batch, self.amp, self.capture = model, optimizer, batch, amp, capture
        self.warmed, self.replay = 0, None

    @property
    def captured(self) -> bool:
        return self.replay is not None

    def _step(self) -> Tensor:
        with autocast(self.batch.device, self.amp, cache=False):
            loss = F.mse_loss(self.model(self.batch), self.batch)
        loss.backward()
        self.optimizer.step()
        return loss.detach()

    def __call__(self) -> Tensor:
        """One step on what ``batch`` holds; returns its loss (valid until the next step)."""
        if self.replay is None:
            # Gradients set to None: the capture's backward then writes fresh ones in the graph's
            # memory pool instead of accumulating into the warm-up's.
            self.optimizer.zero_grad(set_to_none=True)
            if self.warmed < self.WARMUP:
                self.warmed += 1
                with _side_stream(self.batch.device):
                    return self._step()
            self.replay = self.capture(self._step)
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
    graphed: GraphedStep | None = None,
) -> Tensor:
    """Trains ``model`` to map the rows of ``data`` to the same rows of ``target`` (default:
    ``data`` itself, an autoencoder) with the mean squared error, or to minimise
    ``loss_fn(batch)``, on the minibatches of ``schedule``. Returns the mean batch loss of the last
    epoch as a 0-dim tensor on the device. ``amp``: the dtype of the forward pass under autocast
    (None: none); the loss is formed in float32 either way, and the backward follows the forward's
    dtypes. ``graphed``: the full batches of an autoencoder (no ``target``, no ``loss_fn``) go
    through this captured step (its batch size is the schedule's)."""
    if graphed is not None and (target is not None or loss_fn is not None):
        raise ValueError("a graphed step trains an autoencoder's own loss: no target or loss_fn with it")
    if graphed is not None and schedule.steps is not None:
        raise ValueError("a graphed step trains full batches: not with a schedule of lockstep batches")

    def step(rows: Tensor) -> Tensor:
        if graphed is not None and len(rows) == schedule.batch_size:
            torch.index_select(data, 0, rows, out=graphed.batch)
            return graphed()
        batch = data.index_select(0, rows)
        with autocast(data.device, amp):
            if loss_fn is not None:
                loss = loss_fn(batch)
            else:
                loss = F.mse_loss(model(batch), batch if target is None else target.index_select(0, rows))
        # Once a graph is captured its gradients live in the graph's memory: zeroed, kept.
        optimizer.zero_grad(set_to_none=graphed is None or not graphed.captured)
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
    (``generator``). ``replicate`` wraps it for training on first use (a row-sharded fit averages
    the gradients of its replicas), once a checkpoint's weights are loaded. ``graphed``: its full
    batches go through a captured CUDA graph. Trains and reconstructs the L of its one fit."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None, schedule: Schedule,
                 generator: torch.Generator | None, amp: torch.dtype | None = None,
                 graphed: GraphedStep | None = None, replicate: Callable[[nn.Module], nn.Module] = lambda m: m):
        self.model, self.optimizer, self.schedule, self.generator = model, optimizer, schedule, generator
        self.amp, self.graphed, self._replicate, self._training = amp, graphed, replicate, None

    def __len__(self) -> int:
        return 1

    def new_L(self, X: Tensor) -> Tensor:
        return torch.empty_like(X)

    def part(self, L: Tensor, k: int) -> Tensor:
        return L

    def train(self, L: Tensor) -> Tensor:
        """Trains on the rows of L; the mean loss of the last epoch, of each network (shape (1,))."""
        if self._training is None:
            self._training = self._replicate(self.model)
        return train_epochs(self._training, self.optimizer, L, self.schedule, self.generator, amp=self.amp,
                            graphed=self.graphed).reshape(1)

    def reconstruct(self, L: Tensor) -> Tensor:
        """L = AE(L) in place; the squared reconstruction error of each network (shape (1,))."""
        return reconstruct_into(self.model, L, L, self.amp).reshape(1)

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
