"""The inner loop of RDA: minibatch training of the autoencoder on a matrix that stays on its device.

Batches are gathered with an index permutation drawn on the device, never through a DataLoader, and
the losses are summed on the device: nothing here waits for the host."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

OPTIMIZERS = ("adam", "sgd")

# Rows per chunk when the whole matrix goes through the network (reconstruction, encoding,
# scoring): bounds the activations' memory independently of the data size.
CHUNK_ROWS = 65536


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float = 0.0) -> torch.optim.Optimizer:
    """Adam or SGD with the fused (single-kernel) update, which torch provides on CPU and CUDA."""
    params = list(model.parameters())
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True)
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay, fused=True)
    raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {name!r}")


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The autoencoder's computations in ``dtype`` (bfloat16) under autocast, or as they are (None)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


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
) -> Tensor:
    """Trains ``model`` to map the rows of ``data`` to the same rows of ``target`` (default:
    ``data`` itself, an autoencoder) with the mean squared error, or to minimise
    ``loss_fn(batch)``, for ``epochs`` passes in shuffled minibatches. Returns the mean batch loss
    of the last epoch as a 0-dim tensor on the device (reading it is the caller's one
    synchronisation). ``amp``: the dtype of the forward pass under autocast (None: none); the loss is
    formed in float32 either way, and the backward follows the forward's dtypes."""
    n = data.shape[0]
    starts = range(0, n, batch_size)
    total = torch.zeros((), dtype=torch.float64, device=data.device)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, device=data.device, generator=generator)
        last = epoch == epochs - 1
        for start in starts:
            rows = perm[start : start + batch_size]
            batch = data.index_select(0, rows)
            with autocast(data.device, amp):
                if loss_fn is not None:
                    loss = loss_fn(batch)
                else:
                    loss = F.mse_loss(model(batch), batch if target is None else target.index_select(0, rows))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if last:
                total += loss.detach()
    return total / len(starts)


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
