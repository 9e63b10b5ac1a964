"""One training step of RDA's autoencoder (or of K stacked ones) without autograd: the loss and
every gradient from one call of the ``autoencoder_grads`` operator (forward and backward,
csrc/ops/autoencoder_grads.cpp), the gradients averaged over the ranks of a row-sharded fit in one
all-reduce, then the optimizer's update by the fused kernels that ``torch.optim.Adam`` and ``SGD``
run with ``fused=True``, on the optimizer's own state: its ``state_dict``, a warm start and a
checkpoint see the optimizer they would see after ``optimizer.step()``.

A step of a small network is a few dozen small products; autograd's graph and the optimizer's
Python bookkeeping cost more than they do (benchmarks/RESULTS.md, "The cost of a training step")."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from rda_ext import ops


class FusedStep:
    """``step(batch)``: one step of ``model`` (a DeepAutoencoder on a batch (rows, d), or a
    StackedAutoencoder on (K, rows, d)) with ``optimizer`` (Adam or SGD from
    ``training.make_optimizer``); returns the loss (0-dim, or (K,)). ``amp``: the dtype the
    products run in (bfloat16), as under autocast. ``average``: what averages the gradients over
    the ranks (given one flat tensor holding all of them), None for one process."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, amp: torch.dtype | None = None,
                 average: Callable[[Tensor], None] | None = None):
        self.params = [p for group in optimizer.param_groups for p in group["params"]]
        if len(optimizer.param_groups) != 1 or [id(p) for p in self.params] != [id(p) for p in model.parameters()]:
            raise ValueError("the optimizer must hold the model's parameters, in their order, in one group")
        if not isinstance(optimizer, (torch.optim.Adam, torch.optim.SGD)) or not optimizer.defaults.get("fused"):
            raise ValueError(f"a fused step updates with fused Adam or SGD, not {type(optimizer).__name__}")
        self.optimizer, self.amp, self.average = optimizer, amp, average
        sizes, activation, output_activation, _ = model.architecture
        self.layers = (len(sizes) - 1, activation, output_activation)
        # The gradients are views of one buffer: a row-sharded fit averages them in one all-reduce.
        self.flat = torch.zeros(sum(p.numel() for p in self.params), dtype=self.params[0].dtype,
                                device=self.params[0].device)
        self.grads, start = [], 0
        for p in self.params:
            self.grads.append(self.flat[start : start + p.numel()].view_as(p))
            start += p.numel()
            p.grad = self.grads[-1]

    @torch.no_grad()
    def __call__(self, batch: Tensor) -> Tensor:
        loss = ops.autoencoder_grads(batch, self.params, self.grads, *self.layers, self.amp)
        if self.average is not None:
            self.average(self.flat)
        if isinstance(self.optimizer, torch.optim.Adam):
            self._adam()
        else:
            self._sgd()
        return loss

    def _adam(self) -> None:
        group, state = self.optimizer.param_groups[0], self.optimizer.state
        for p in self.params:
            if not state[p]:  # as Adam initialises a fused step's state
                state[p].update(step=torch.zeros((), dtype=torch.float32, device=p.device),
                                exp_avg=torch.zeros_like(p, memory_format=torch.preserve_format),
                                exp_avg_sq=torch.zeros_like(p, memory_format=torch.preserve_format))
        states = [state[p] for p in self.params]
        steps = [s["step"] for s in states]
        torch._foreach_add_(steps, 1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_(self.params, self.grads, [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states],
                           [], steps, amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                           weight_decay=group["weight_decay"], eps=group["eps"], maximize=False)

    def _sgd(self) -> None:
        group, state = self.optimizer.param_groups[0], self.optimizer.state
        first = not state[self.params[0]]
        buffers = [torch.empty_like(g) if first else state[p]["momentum_buffer"] for p, g in zip(self.params, self.grads)]
        torch._fused_sgd_(self.params, self.grads, buffers, weight_decay=group["weight_decay"],
                          momentum=group["momentum"], lr=group["lr"], dampening=group["dampening"],
                          nesterov=group["nesterov"], maximize=False, is_first_step=first)
        if first:
            for p, b in zip(self.params, buffers):
                state[p]["momentum_buffer"] = b
