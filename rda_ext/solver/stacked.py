"""K autoencoders of one architecture trained side by side: their weights stacked along a first
dimension, every layer one batched matrix product (``torch.baddbmm``) for all K, one optimizer
step for all K. Adam and SGD update each entry on its own, and the loss is the sum of the K mean
squared errors, so network k follows exactly the updates it would get alone (to the rounding of
the batched products): K fits at the cost of one step's fixed overheads.

``StackedRDASolver`` runs K RDA fits of one X on these networks (e.g. K values of lam), each with
its own L and S, on the same minibatches."""

from __future__ import annotations

import copy
import time

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from rda_ext.solver.autoencoder import ACTIVATIONS, DeepAutoencoder
from rda_ext.solver.loop import RDASolver
from rda_ext.solver.training import CHUNK_ROWS, autocast


class StackedAutoencoder(nn.Module):
    """The networks ``nets`` (DeepAutoencoders of one architecture) as one module whose forward
    maps x of shape (K, rows, features) to the K reconstructions."""

    def __init__(self, nets: list[DeepAutoencoder]):
        super().__init__()
        self.architecture = nets[0].architecture
        if any(net.architecture != self.architecture for net in nets):
            raise ValueError("stacked networks must share one architecture")
        self.sizes, activation, output_activation, self.tied = self.architecture
        self.act, self.out_act = ACTIVATIONS[activation], ACTIVATIONS[output_activation]

        def stack(name):
            return nn.ParameterList(
                nn.Parameter(torch.stack([getattr(net, name)[i].detach() for net in nets]))
                for i in range(len(getattr(nets[0], name)))
            )

        self.enc_weight, self.enc_bias = stack("enc_weight"), stack("enc_bias")
        self.dec_weight, self.dec_bias = stack("dec_weight"), stack("dec_bias")

    def __len__(self) -> int:
        return self.enc_weight[0].shape[0]

    def forward(self, x: Tensor) -> Tensor:
        for w, b in zip(self.enc_weight, self.enc_bias):
            x = self.act(torch.baddbmm(b.unsqueeze(1), x, w.transpose(1, 2)))
        # Tied: the decoder's weight is the encoder's transposed, so x @ w (shapes (K, in, out) after
        # the mirror) without a transpose.
        weights = list(reversed(self.enc_weight)) if self.tied else [w.transpose(1, 2) for w in self.dec_weight]
        last = len(weights) - 1
        for i, (w, b) in enumerate(zip(weights, self.dec_bias)):
            x = (self.out_act if i == last else self.act)(torch.baddbmm(b.unsqueeze(1), x, w))
        return x

    def network(self, k: int) -> DeepAutoencoder:
        """Network k as a DeepAutoencoder of its own (a copy of its weights)."""
        # Its own generator: the initial weights, overwritten next, must not draw from torch's global one.
        net = DeepAutoencoder(*self.architecture, torch.Generator()).to(device=self.enc_bias[0].device,
                                                                        dtype=self.enc_bias[0].dtype)
        with torch.no_grad():
            for name in ("enc_weight", "enc_bias", "dec_weight", "dec_bias"):
                for mine, theirs in zip(getattr(net, name), getattr(self, name)):
                    mine.copy_(theirs[k])
        return net


def stacked_train_epochs(model: StackedAutoencoder, optimizer: torch.optim.Optimizer, data: Tensor, epochs: int,
                         batch_size: int, generator: torch.Generator, amp: torch.dtype | None = None) -> Tensor:
    """``train_epochs`` for K networks on data of shape (K, n, d), network k on data[k], all on the
    same minibatch rows (one permutation per epoch, drawn as ``train_epochs`` draws it). Returns the
    K mean batch losses of the last epoch (float64, on the device)."""
    n = data.shape[1]
    starts = range(0, n, batch_size)
    total = torch.zeros(data.shape[0], dtype=torch.float64, device=data.device)
    model.train()
    for epoch in range(epochs):
        perm = torch.randperm(n, device=data.device, generator=generator)
        last = epoch == epochs - 1
        for start in starts:
            batch = data.index_select(1, perm[start : start + batch_size])
            with autocast(data.device, amp):
                losses = F.mse_loss(model(batch), batch, reduction="none").mean(dim=(1, 2))
            optimizer.zero_grad(set_to_none=True)
            losses.sum().backward()
            optimizer.step()
            if last:
                total += losses.detach()
    return total / len(starts)


@torch.no_grad()
def stacked_reconstruct_into(model: StackedAutoencoder, data: Tensor, out: Tensor,
                             amp: torch.dtype | None = None) -> Tensor:
    """``reconstruct_into`` for K networks: out[k] = net_k(data[k]) chunk by chunk; returns the K
    squared reconstruction errors (float64, on the device)."""
    model.eval()
    err = torch.zeros(data.shape[0], dtype=torch.float64, device=data.device)
    chunk = max(1, CHUNK_ROWS // data.shape[0])  # the activations of K networks at once
    for start in range(0, data.shape[1], chunk):
        x = data[:, start : start + chunk]
        with autocast(data.device, amp):
            r = model(x)
        err += (x - r).square().sum(dim=(1, 2), dtype=torch.float64)
        out[:, start : start + chunk] = r
    return err


class StackedRDASolver:
    """K RDA fits of one X trained together: ``solvers`` hold each fit's S, LS_prev, lam and
    penalty (built without a model and optimizer); ``model`` stacks the K networks and
    ``optimizer`` updates them all. Each outer iteration sets L_k = X - S_k, trains the stack on
    the L_k on shared minibatches, sets L_k = AE_k(L_k), then runs each fit's proximal step.
    A fit whose training diverges stops them all (TrainingDiverged)."""

    def __init__(self, model: StackedAutoencoder, optimizer: torch.optim.Optimizer, solvers: list[RDASolver], *,
                 inner_epochs: int, batch_size: int, generator: torch.Generator, amp: torch.dtype | None = None):
        if len(solvers) != len(model):
            raise ValueError(f"{len(model)} stacked networks for {len(solvers)} fits")
        self.model, self.optimizer, self.solvers = model, optimizer, solvers
        X = solvers[0].X
        self.L = torch.empty((len(solvers), *X.shape), dtype=X.dtype, device=X.device)
        for k, solver in enumerate(solvers):
            solver.L = self.L[k]  # each fit's L is its slice of the stack
        self.inner_epochs, self.batch_size, self.generator, self.amp = inner_epochs, batch_size, generator, amp

    def iterate(self) -> list[dict]:
        """One outer iteration of every fit; each row's ``seconds`` is the joint iteration's."""
        t0 = time.perf_counter()
        for solver in self.solvers:
            solver.iterations += 1
            torch.sub(solver.X, solver.S, out=solver.L)
        losses = stacked_train_epochs(self.model, self.optimizer, self.L, self.inner_epochs, self.batch_size,
                                      self.generator, self.amp)
        recon_sq = stacked_reconstruct_into(self.model, self.L, self.L, self.amp)
        rows = [solver.finish(losses[k], recon_sq[k], t0) for k, solver in enumerate(self.solvers)]
        seconds = time.perf_counter() - t0
        return [dict(row, seconds=seconds) for row in rows]

    def run(self, outer_iter: int, tol: float) -> list[tuple[list[dict], RDASolver, DeepAutoencoder]]:
        """Up to ``outer_iter`` outer iterations. A fit whose c1 and c2 fall below ``tol`` stops
        there, as it would alone: its network, L and S are kept as they were then (the stack
        trains on until every fit has stopped, its later rows ignored). Returns per fit its
        history rows, its solver (L, S and the last residual norms) and its network."""
        histories = [[] for _ in self.solvers]
        finished = [None] * len(self.solvers)
        for _ in range(outer_iter):
            rows = self.iterate()
            for k, (history, row) in enumerate(zip(histories, rows)):
                if finished[k] is None:
                    history.append(row)
                    if row["c1"] < tol and row["c2"] < tol:
                        finished[k] = self._snapshot(k)
            if all(finished):
                break
        return [(history, *(done or self._snapshot(k)))
                for k, (history, done) in enumerate(zip(histories, finished))]

    def _snapshot(self, k: int) -> tuple[RDASolver, DeepAutoencoder]:
        solver = copy.copy(self.solvers[k])
        solver.L, solver.S = solver.L.clone(), solver.S.clone()
        solver.norms = None if solver.norms is None else solver.norms.clone()
        return solver, self.model.network(k)

