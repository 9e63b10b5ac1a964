"""Running a function on the ranks of a gloo process group, one spawned process of one thread per
rank, bounded by a timeout so that a hang fails the test instead of the suite.

Lives in its own module so that the spawned processes import it, and the functions they run,
without importing a test module."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

TIMEOUT = 180  # seconds for a whole run of all ranks; a collective gives up after COLLECTIVE_TIMEOUT
COLLECTIVE_TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_ranks(fn, world: int, *args, timeout: float = TIMEOUT) -> list:
    """``fn(rank, world, *args)`` on each of ``world`` ranks; their results in rank order."""
    ctx = mp.get_context("spawn")
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [ctx.Process(target=_rank_main, args=(fn, r, world, port, tmp, args)) for r in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout
        for p in procs:
            p.join(max(0.0, deadline - time.monotonic()))
        hung = [r for r, p in enumerate(procs) if p.is_alive()]
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        assert not hung, f"ranks {hung} still running after {timeout} s"
        codes = [p.exitcode for p in procs]
        assert codes == [0] * world, f"exit codes of the ranks: {codes}"
        return [torch.load(os.path.join(tmp, f"{r}.pt"), weights_only=False) for r in range(world)]


def _rank_main(fn, rank, world, port, tmp, args):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=COLLECTIVE_TIMEOUT))
    try:
        result = fn(rank, world, *args)
        dist.barrier()  # no rank closes its connections while another still reads from them
    finally:
        dist.destroy_process_group()
    torch.save(result, os.path.join(tmp, f"{rank}.pt"))
    # Without the interpreter's finalisation, where gloo's threads may abort a finished rank (as
    # rda_ext.cli.main does for a torchrun worker).
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def torchrun_env(rank: int, world: int, port: int) -> dict:
    """The environment torchrun gives a worker, for processes started without it."""
    return {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
            "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_WORLD_SIZE": str(world),
            "OMP_NUM_THREADS": "1"}
