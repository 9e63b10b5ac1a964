"""The state of a fit after each outer iteration, in a directory, so that a fit started again
(a job restarted after a lost process) resumes from the last complete iteration.

Layout: ``iter-<k>/shared.pt`` (the network, the optimizer, the history: the same on every rank,
written by rank 0), ``iter-<k>/rank-<r>/state.pt`` (rank r's L and S and its batch generator: a
folder per rank, since a writer clears the folder it writes into of what looks like the temporary
file of a dead process, which a rank on another node would be) and
``latest.json``, which names the last iteration whose files are all written. Each file is
written whole or not at all; ``latest.json`` moves on only after every rank has written its
part, and the older iterations are removed after that, so the directory always holds one
complete state. Only entries of exactly this layout are ever removed: anything else in the
directory is left as it is. LS_prev is not stored: after an iteration it is exactly L + S, and L is.

A state is taken up only by the fit it was written for: the parameters, the number of rows and,
per rank, a fingerprint of the bytes of the rows the network sees must all match. Every part is
read with ``weights_only=True`` and checked (keys, types, shapes, dtypes, finiteness) before
anything of it is loaded.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import torch
from torch import Tensor

from rda_ext.io.atomic import atomic_write, is_temporary
from rda_ext.io.state_files import (
    InvalidState,
    check_dict,
    check_history,
    check_int,
    check_tensor,
    check_weights,
    load_state,
)
from rda_ext.solver.collectives import RowGroup, agreed
from rda_ext.solver.engine import Engine
from rda_ext.solver.loop import HISTORY_KEYS
from rda_ext.solver.training import Network

LATEST = "latest.json"
SHARED = "shared.pt"
STATE = "state.pt"
_ITERATION = re.compile(r"iter-\d{6,}")
_RANK = re.compile(r"rank-\d+")


class Checkpoint:
    """``directory`` for one fit; ``identity``: what must match for a resume (the parameters, the
    rows and ``data_identity`` of each rank's rows), so that a state is never resumed by another fit."""

    def __init__(self, directory, ranks: RowGroup, identity: dict):
        self.directory = os.fspath(directory)
        if os.path.exists(self.directory) and not os.path.isdir(self.directory):
            raise ValueError(f"checkpoint {self.directory} exists and is not a directory")
        self.ranks = ranks
        self.rank, self.size = ranks.rank, ranks.size
        self.identity = identity

    def _folder(self, iteration: int) -> str:
        return os.path.join(self.directory, f"iter-{iteration:06d}")

    def _part(self, folder: str) -> str:
        return os.path.join(folder, f"rank-{self.rank}")

    def save(self, engine: Engine, history: list[dict]) -> None:
        """Writes the state after the engine's last iteration (``history`` ends with it) of its one fit."""
        (solver,), network = engine.fits, engine.network
        iteration = len(history)
        folder = self._folder(iteration)

        def write_part():
            os.makedirs(self._part(folder), exist_ok=True)
            own = dict(identity=self.identity, L=solver.L.cpu(), S=solver.S.cpu(), generator=network.generator.get_state())
            atomic_write(os.path.join(self._part(folder), STATE), lambda f: torch.save(own, f))
            if self.rank == 0:
                shared = dict(identity=_shared(self.identity), model=network.model.state_dict(),
                              optimizer=network.optimizer.state_dict(), history=history, world_size=self.size)
                atomic_write(os.path.join(folder, SHARED), lambda f: torch.save(shared, f))

        def move_on():
            if self.rank != 0:
                return
            latest = json.dumps({"iteration": iteration, "world_size": self.size}).encode()
            atomic_write(os.path.join(self.directory, LATEST), lambda f: f.write(latest))
            for entry in os.scandir(self.directory):
                if entry.path != folder and _written_here(entry):
                    shutil.rmtree(entry.path, ignore_errors=True)

        # Each step on every rank before the next: every part on disk before latest.json names it.
        agreed(self.ranks, write_part)
        agreed(self.ranks, move_on)

    def resume(self, engine: Engine) -> list[dict]:
        """Loads the last complete state into the engine's one fit (its network, optimizer, batch
        generator, L, S and LS_prev = L + S); returns its history, or [] where the directory holds
        none. The caller then recomputes the group norms of the last step (a collective for "l21_cols")."""
        (solver,), network = engine.fits, engine.network
        generator = network.generator
        try:
            with open(os.path.join(self.directory, LATEST), "rb") as f:
                text = f.read()
        except FileNotFoundError:
            return []
        except OSError as e:
            raise ValueError(f"checkpoint {self.directory}: {LATEST} is unreadable ({e})") from None
        where = LATEST
        try:
            latest = _latest(text)
            if latest["world_size"] != self.size:
                raise ValueError(
                    f"checkpoint {self.directory} was written by {latest['world_size']} processes, this fit runs on "
                    f"{self.size}: resume with as many, or use another directory"
                )
            folder = self._folder(latest["iteration"])
            where = os.path.relpath(os.path.join(folder, SHARED), self.directory)
            shared = check_dict(load_state(os.path.join(folder, SHARED), "a checkpoint"), "its content",
                                ("identity", "model", "optimizer", "history", "world_size"))
            self._check_identity(shared["identity"], _shared(self.identity))
            where = os.path.relpath(os.path.join(self._part(folder), STATE), self.directory)
            own = check_dict(load_state(os.path.join(self._part(folder), STATE), "a checkpoint"), "its content",
                             ("identity", "L", "S", "generator"))
            self._check_identity(own["identity"], self.identity)
            where = os.path.relpath(os.path.join(folder, SHARED), self.directory)
            _check_shared(shared, network, latest)
            where = os.path.relpath(os.path.join(self._part(folder), STATE), self.directory)
            for key in ("L", "S"):
                check_tensor(own[key], key, shape=solver.L.shape, dtype=solver.L.dtype)
            check_tensor(own["generator"], "generator", dtype=torch.uint8, finite=False)
            state = generator.get_state()
            try:
                generator.set_state(own["generator"])
            except (RuntimeError, TypeError, ValueError):
                raise InvalidState("generator is not the state of a torch generator") from None
            where = os.path.relpath(os.path.join(folder, SHARED), self.directory)
            try:
                network.optimizer.load_state_dict(shared["optimizer"])
            except (KeyError, TypeError, ValueError, RuntimeError) as e:
                generator.set_state(state)
                raise InvalidState(f"the optimizer's state does not fit this network ({e})") from None
        except FileNotFoundError as e:
            raise ValueError(f"checkpoint {self.directory}: {LATEST} names a state that is not there "
                             f"({e.filename}): remove the directory, or choose another") from None
        except InvalidState as e:
            raise ValueError(f"checkpoint {self.directory} is not a valid checkpoint ({where}: {e}): remove it, "
                             "or choose another directory") from None
        network.model.load_state_dict(shared["model"])
        for mine, saved in ((solver.L, own["L"]), (solver.S, own["S"])):
            mine.copy_(saved)
        torch.add(solver.L, solver.S, out=solver.LS_prev)
        return shared["history"]

    def _check_identity(self, saved, expected: dict) -> None:
        if saved == expected:
            return
        if not isinstance(saved, dict):
            raise InvalidState(f"its identity is a {type(saved).__name__}, not a dict")
        what = []
        params, own = saved.get("params"), expected["params"]
        if params != own:
            names = sorted(set(own) | set(params)) if isinstance(params, dict) else ["?"]
            what.append("parameters (" + ", ".join(n for n in names if not isinstance(params, dict)
                                                     or params.get(n) != own.get(n)) + ")")
        if saved.get("rows") != expected["rows"]:
            what.append(f"number of rows ({saved.get('rows')} there, {expected['rows']} here)")
        if saved.get("warm") != expected["warm"]:
            what.append("warm start")
        if "data" in expected and saved.get("data") != expected["data"]:
            rank = f" of rank {self.rank}" if self.size > 1 else ""
            what.append(f"data{rank} (other values, or the same in another order of rows or columns)")
        raise ValueError(
            f"checkpoint {self.directory} holds the state of another fit, which differs in its "
            f"{', '.join(what) or 'identity'}: remove it, or choose another directory"
        )


def data_identity(X: Tensor, digest: str) -> dict:
    """What identifies a rank's rows: their shape, dtype and ``digest``, the fingerprint of their
    bytes (``io.fingerprint``, taken while the fit prepared them)."""
    return dict(shape=list(X.shape), dtype=str(X.dtype), fingerprint=digest)


def _shared(identity: dict) -> dict:
    return {k: v for k, v in identity.items() if k != "data"}


def _latest(text: bytes) -> dict:
    try:
        latest = json.loads(text)
    except ValueError as e:
        raise InvalidState(f"not JSON ({e})") from None
    check_dict(latest, "its content", ("iteration", "world_size"))
    check_int(latest["iteration"], "iteration", 1)
    check_int(latest["world_size"], "world_size", 1)
    return latest


def _check_shared(shared: dict, network: Network, latest: dict) -> None:
    """The network's weights, the optimizer's state and the history of ``shared.pt``."""
    if shared["world_size"] != latest["world_size"]:
        raise InvalidState(f"world_size is {shared['world_size']!r}, {LATEST} says {latest['world_size']}")
    expected = network.model.state_dict()
    check_weights(shared["model"], expected, "model")
    for key, want in expected.items():
        if shared["model"][key].dtype != want.dtype:
            raise InvalidState(f"weight {key!r} has dtype {shared['model'][key].dtype}, not {want.dtype}")
    history = check_history(shared["history"], HISTORY_KEYS)
    if len(history) != latest["iteration"]:
        raise InvalidState(f"the history has {len(history)} iterations, {LATEST} says {latest['iteration']}")
    optimizer = check_dict(shared["optimizer"], "optimizer", ("state", "param_groups"))
    params = [p for group in network.optimizer.param_groups for p in group["params"]]
    state = check_dict(optimizer["state"], "optimizer state")
    for index, values in state.items():
        if not (isinstance(index, int) and 0 <= index < len(params)):
            raise InvalidState(f"the optimizer's state names parameter {index!r} of {len(params)}")
        for name, value in check_dict(values, f"optimizer state {index}").items():
            if isinstance(value, Tensor) and value.numel() != 1:  # a step count is one number
                check_tensor(value, f"optimizer state {index} {name!r}", shape=params[index].shape,
                             dtype=params[index].dtype)
            elif isinstance(value, Tensor):
                check_tensor(value, f"optimizer state {index} {name!r}")


def _written_here(entry: os.DirEntry) -> bool:
    """Whether ``entry`` is an iteration folder of this layout and holds nothing else (a user's
    ``iter-notes/``, or a folder with a file of theirs in it, is not)."""
    if not (_ITERATION.fullmatch(entry.name) and entry.is_dir(follow_symlinks=False)):
        return False
    for item in os.scandir(entry.path):
        if item.name == SHARED or is_temporary(item.name):
            if not item.is_file(follow_symlinks=False):
                return False
        elif _RANK.fullmatch(item.name) and item.is_dir(follow_symlinks=False):
            if any(not (f.name == STATE or is_temporary(f.name)) or not f.is_file(follow_symlinks=False)
                   for f in os.scandir(item.path)):
                return False
        else:
            return False
    return True
