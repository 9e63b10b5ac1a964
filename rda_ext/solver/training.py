"""The inner loop of RDA: minibatch training of the autoencoder on a matrix that stays on its device.

Batches are gathered with an index permutation drawn on the device, never through a DataLoader, and
the losses are summed on the device: nothing here waits for the host."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

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
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    target: Tensor | None = None,
    loss_fn: Callable[[Tensor], Tensor] | None = None,
    amp: torch.dtype | None = None,
    graphed: GraphedStep | None = None,
    steps: int | None = None,
) -> Tensor:
    """Trains ``model`` to map the rows of ``data`` to the same rows of ``target`` (default:
    ``data`` itself, an autoencoder) with the mean squared error, or to minimise
    ``loss_fn(batch)``, for ``epochs`` passes in shuffled minibatches. Returns the mean batch loss
    of the last epoch as a 0-dim tensor on the device (reading it is the caller's one
    synchronisation). ``amp``: the dtype of the forward pass under autocast (None: none); the loss is
    formed in float32 either way, and the backward follows the forward's dtypes. ``graphed``: the
    full batches of an autoencoder (no ``target``, no ``loss_fn``) go through this captured step
    (its batch size is ``batch_size``). ``steps``: the number of batches per epoch instead, each
    epoch's permutation split into that many batches of near-equal size (at most ``batch_size``
    when ``steps >= ceil(rows / batch_size)``; rows are drawn again where fewer than ``steps``):
    the ranks of a row-sharded fit must all step together."""
    if graphed is not None and (target is not None or loss_fn is not None):
        raise ValueError("a graphed step trains an autoencoder's own loss: no target or loss_fn with it")
    if graphed is not None and steps is not None:
        raise ValueError("a graphed step trains full batches: no steps with it")
    n = data.shape[0]
    total = torch.zeros((), dtype=torch.float64, device=data.device)
    batches = []
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, device=data.device, generator=generator)
        if steps is None:
            batches = [perm[start : start + batch_size] for start in range(0, n, batch_size)]
        else:
            batches = torch.tensor_split(perm.repeat(-(-steps // n)) if n < steps else perm, steps)
        last = epoch == epochs - 1
        for rows in batches:
            if graphed is not None and len(rows) == batch_size:
                torch.index_select(data, 0, rows, out=graphed.batch)
                loss = graphed()
                if last:
                    total += loss
                continue
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
            if last:
                total += loss.detach()
    return total / max(len(batches), 1)


@torch.no_grad()
def reconstruct_into(model: nn.Module, data: Tensor, out: Tensor, amp: torch.dtype | None = None) -> Tensor:
    """``out = model(data)`` chunk by chunk (``out`` may be ``data``: each chunk is read before it
    is written), the network under autocast to ``amp`` where given. Returns
    ``||data - model(data)||_F^2`` as a 0-dim float64 tensor on the device."""
    model.eval()
    err = torch.zeros((), dtype=torch.float64, device=data.device)
    for start in range(0, data.shape[0], CHUNK_ROWS):
        x = data[start : start + CHUNK_ROWS]
        with autocast(data.device, amp):
            r = model(x)
        err += (x - r).square().sum(dtype=torch.float64)
        out[start : start + CHUNK_ROWS] = r
    return err


@torch.no_grad()
def map_chunks(fn, data: Tensor) -> Tensor:
    """``fn`` applied to consecutive row chunks of ``data``, the results concatenated."""
    return torch.cat([fn(data[s : s + CHUNK_ROWS]) for s in range(0, max(data.shape[0], 1), CHUNK_ROWS)])
