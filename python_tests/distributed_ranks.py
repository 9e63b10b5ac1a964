"""Running a function on the ranks of a process group, bounded by a timeout so that a hang fails the
test instead of the suite: ``run_ranks`` spawns one process of one thread per rank in a gloo
group; ``run_threads`` runs the ranks as threads of this process in torch's in-process "threaded"
group. The processes are the real thing; the threads are what `make mutation` can follow (it
records which functions a test calls in the test's own process only), and they start in
milliseconds.

Lives in its own module so that the spawned processes import it, and the functions they run,
without importing a test module."""

from __future__ import annotations

import os
import socket
import sys
import tempfile
import threading
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
        hung = _hung(procs, timeout)
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
        assert not hung, f"ranks {hung} still running after {timeout} s"
        codes = [p.exitcode for p in procs]
        assert codes == [0] * world, f"exit codes of the ranks: {codes}"
        return [torch.load(os.path.join(tmp, f"{r}.pt"), weights_only=False) for r in range(world)]


def _hung(ranks, timeout: float) -> list[int]:
    """The ranks (processes or threads, started) still running after ``timeout`` seconds in all."""
    deadline = time.monotonic() + timeout
    for r in ranks:
        r.join(max(0.0, deadline - time.monotonic()))
    return [i for i, r in enumerate(ranks) if r.is_alive()]


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


def run_threads(fn, world: int, *args, timeout: float = TIMEOUT) -> list:
    """``fn(rank, world, *args)`` on each of ``world`` ranks, as threads of this process; their
    results in rank order. A rank's exception stops the others' collectives and is raised here."""
    # Internal to torch (its own tests' in-process group), imported here so that a torch without
    # it fails these runs only, not the spawned ones.
    from torch.testing._internal.distributed import multi_threaded_pg

    isolation = torch._C._distributed_c10d._set_thread_isolation_mode
    isolation(True)  # each thread registers its own group under the default name
    multi_threaded_pg._install_threaded_pg()
    multi_threaded_pg.ProcessLocalGroup.reset()  # a previous run's failure leaves its stop signal set
    store = dist.HashStore()
    results: list = [None] * world
    errors: list = [None] * world

    def rank_main(rank):
        dist.init_process_group("threaded", rank=rank, world_size=world, store=store)
        try:
            results[rank] = fn(rank, world, *args)
        except BaseException as e:  # noqa: BLE001 - raised again by the caller's thread
            errors[rank] = e
            multi_threaded_pg.ProcessLocalGroup.exception_handle(e)  # wakes the ranks waiting on this one
        finally:
            dist.destroy_process_group()

    threads = [threading.Thread(target=rank_main, args=(r,), daemon=True) for r in range(world)]
    try:
        for t in threads:
            t.start()
        hung = _hung(threads, timeout)
        assert not hung, f"ranks {hung} still running after {timeout} s"
    finally:
        multi_threaded_pg._uninstall_threaded_pg()
        isolation(False)
    first = next((e for e in errors if e is not None), None)
    if first is not None:
        raise first
    return results
