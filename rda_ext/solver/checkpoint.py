"""The state of a fit after each outer iteration, in a directory, so that a fit started again
(a job restarted after a lost process) resumes from the last complete iteration.

Layout: ``iter-<k>/shared.pt`` (the network, the optimizer, the history: the same on every rank,
written by rank 0), ``iter-<k>/rank-<r>/state.pt`` (rank r's L and S and its batch generator: a
folder per rank, since a writer clears the folder it writes into of what looks like the temporary
file of a dead process, which a rank on another node would be) and
``latest.json``, which names the last iteration whose files are all written. Each file is
written whole or not at all; ``latest.json`` moves on only after every rank has written its
part, and the older iterations are removed after that, so the directory always holds one
complete state. LS_prev is not stored: after an iteration it is exactly L + S, and L is.
Files are read with ``weights_only=True``.
"""

from __future__ import annotations

import json
import os
import shutil

import torch
from torch import Tensor

from rda_ext.data.files import atomic_write
from rda_ext.solver.collectives import RowGroup, agreed
from rda_ext.solver.loop import RDASolver

LATEST = "latest.json"


class Checkpoint:
    """``directory`` for one fit; ``identity``: what must match for a resume (the parameters and
    the data's shape and sums, per rank), so that a state is never resumed by another fit."""

    def __init__(self, directory, ranks: RowGroup | None, identity: dict):
        self.directory = os.fspath(directory)
        self.ranks = ranks
        self.rank = ranks.rank if ranks else 0
        self.size = ranks.size if ranks else 1
        self.identity = identity

    def _folder(self, iteration: int) -> str:
        return os.path.join(self.directory, f"iter-{iteration:06d}")

    def _part(self, folder: str) -> str:
        return os.path.join(folder, f"rank-{self.rank}")

    def save(self, solver: RDASolver, generator: torch.Generator, history: list[dict]) -> None:
        """Writes the state after the solver's last iteration (``history`` ends with it)."""
        iteration = len(history)
        folder = self._folder(iteration)

        def write_part():
            os.makedirs(self._part(folder), exist_ok=True)
            own = dict(identity=self.identity, L=solver.L.cpu(), S=solver.S.cpu(), generator=generator.get_state())
            atomic_write(os.path.join(self._part(folder), "state.pt"), lambda f: torch.save(own, f))
            if self.rank == 0:
                shared = dict(identity=_shared(self.identity), model=solver.model.state_dict(),
                              optimizer=solver.optimizer.state_dict(), history=history, world_size=self.size)
                atomic_write(os.path.join(folder, "shared.pt"), lambda f: torch.save(shared, f))

        def move_on():
            if self.rank != 0:
                return
            latest = json.dumps({"iteration": iteration, "world_size": self.size}).encode()
            atomic_write(os.path.join(self.directory, LATEST), lambda f: f.write(latest))
            for name in os.listdir(self.directory):
                if name.startswith("iter-") and name != os.path.basename(folder):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

        # Each step on every rank before the next: every part on disk before latest.json names it.
        agreed(self.ranks, write_part)
        agreed(self.ranks, move_on)

    def resume(self, solver: RDASolver, generator: torch.Generator) -> list[dict]:
        """Loads the last complete state into the solver (its network, optimizer, L, S and LS_prev =
        L + S) and the generator; returns its history, or [] where the directory holds none. The
        caller then recomputes the group norms of the last step (a collective for "l21_cols")."""
        try:
            with open(os.path.join(self.directory, LATEST), "rb") as f:
                latest = json.loads(f.read())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise ValueError(f"checkpoint {self.directory}: {LATEST} is unreadable ({e})") from None
        if latest.get("world_size") != self.size:
            raise ValueError(
                f"checkpoint {self.directory} was written by {latest.get('world_size')} processes, this fit runs on "
                f"{self.size}: resume with as many, or use another directory"
            )
        folder = self._folder(int(latest["iteration"]))
        shared = _load(os.path.join(folder, "shared.pt"))
        own = _load(os.path.join(self._part(folder), "state.pt"))
        if own["identity"] != self.identity or shared["identity"] != _shared(self.identity):
            raise ValueError(
                f"checkpoint {self.directory} holds the state of another fit (other parameters or data): "
                "remove it, or choose another directory"
            )
        solver.model.load_state_dict(shared["model"])
        solver.optimizer.load_state_dict(shared["optimizer"])
        for mine, saved in ((solver.L, own["L"]), (solver.S, own["S"])):
            mine.copy_(saved)
        torch.add(solver.L, solver.S, out=solver.LS_prev)
        generator.set_state(own["generator"])
        return shared["history"]


def data_identity(X: Tensor) -> dict:
    """The shape and two float64 sums of a rank's X: a resume on other data is refused."""
    return dict(shape=list(X.shape), sum=float(X.sum(dtype=torch.float64)),
                norm=float(torch.linalg.vector_norm(X, dtype=torch.float64)))


def _shared(identity: dict) -> dict:
    return {k: v for k, v in identity.items() if k != "data"}


def _load(path: str) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError, EOFError) as e:
        raise ValueError(f"checkpoint file {path} is unreadable ({e})") from None
