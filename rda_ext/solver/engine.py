"""The outer iterations of RDA: K fits of one X (K = 1 for a plain fit) whose networks train
together on shared minibatches (``training.Network`` for one network, ``stacked.StackedNetworks``
for K). Each outer iteration sets L_k = X - S_k, trains on the L_k, sets L_k = AE_k(L_k), then
runs each fit's proximal step (``loop.RDASolver``)."""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from rda_ext.solver.loop import RDASolver
from rda_ext.solver.schedule import converged
from rda_ext.solver.training import Network


class Engine:
    """``fits`` (one RDASolver per network of ``network``, all of one X) trained by ``network``.
    A fit whose training diverges stops them all (TrainingDiverged)."""

    def __init__(self, network: Network, fits: list[RDASolver]):
        if len(fits) != len(network):
            raise ValueError(f"{len(network)} networks for {len(fits)} fits")
        self.network, self.fits = network, fits
        self.L = network.new_L(fits[0].X)
        for k, fit in enumerate(fits):
            fit.L = network.part(self.L, k)  # each fit's L is its part of what the networks train on

    def iterate(self) -> list[dict]:
        """One outer iteration of every fit; each row's ``seconds`` is the joint iteration's.
        Synchronises with the host once per fit (twice with contamination: the chosen lam is read
        before the shrinkage)."""
        t0 = time.perf_counter()
        for fit in self.fits:
            fit.iterations += 1
            torch.sub(fit.X, fit.S, out=fit.L)
        losses = self.network.train(self.L)
        recon_sq = self.network.reconstruct(self.L)
        rows = [fit.finish(losses[k], recon_sq[k]) for k, fit in enumerate(self.fits)]
        seconds = time.perf_counter() - t0
        return [dict(row, seconds=seconds) for row in rows]

    def run(self, outer_iter: int, tol: float,
            on_iteration: Callable[[list[dict]], None] | None = None) -> list[tuple[list[dict], RDASolver, nn.Module]]:
        """Up to ``outer_iter`` outer iterations. A fit whose c1 and c2 fall below ``tol`` stops
        there: its network, L and S are kept as they were then (the others train on, its later
        rows ignored). ``on_iteration`` receives every iteration's rows. Returns per fit its
        history rows (``HISTORY_KEYS`` but "iteration"), its solver and its network."""
        histories: list[list[dict]] = [[] for _ in self.fits]
        stopped: list[tuple | None] = [None] * len(self.fits)
        for _ in range(outer_iter):
            rows = self.iterate()
            if on_iteration is not None:
                on_iteration(rows)
            running = [k for k, done in enumerate(stopped) if done is None]
            for k in running:
                histories[k].append(rows[k])
            ending = [k for k in running if converged(rows[k], tol)]
            if len(ending) == len(running):
                break
            for k in ending:  # copies, while the others train on
                stopped[k] = self._snapshot(k)
        return [(history, *(done or (self.fits[k], self.network.network(k))))
                for k, (history, done) in enumerate(zip(histories, stopped))]

    def _snapshot(self, k: int) -> tuple[RDASolver, nn.Module]:
        fit = copy.copy(self.fits[k])
        fit.L, fit.S = fit.L.clone(), fit.S.clone()
        fit.norms = None if fit.norms is None else fit.norms.clone()
        return fit, self.network.network(k)  # a copy: only stacked networks stop one by one
