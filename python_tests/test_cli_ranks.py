"""``rda-ext fit`` as a torchrun worker, in this process: the ranks run as threads of torch's
in-process group, with torchrun's rendezvous and the group's set-up replaced by recorders, so that
joining the job, reading one shard per rank, one summary for the job and leaving through
``os._exit`` are checked where `make mutation` can follow them. The real torchrun jobs are in
test_distributed_cli.py, and so is the one warning for the job: the threads share the warnings
module, which each rank's fit sets up for itself."""

from __future__ import annotations

import argparse
import os
import threading
import warnings
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as dist
from distributed_ranks import run_threads

from rda_ext import cli

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch.distributed not built")

FIT = ["--hidden", "4", "--outer-iter", "2", "--inner-epochs", "1", "--batch-size", "8", "--seed", "0",
       "--device", "cpu"]


class JobRecorder:
    """Stands in for torchrun's rendezvous and for the calls that set up and tear down the job's
    process group (the threads' group is already up); records what ``rda-ext fit`` asked of them."""

    def __init__(self, monkeypatch, world: int):
        self.world, self.lock, self.rank_done = world, threading.Lock(), threading.local()
        self.stores, self.joined, self.destroyed, self.exits = {}, [], [], []
        self._init, self._destroy = dist.init_process_group, dist.destroy_process_group
        monkeypatch.setattr(dist, "rendezvous", self.rendezvous)
        monkeypatch.setattr(dist, "init_process_group", self.init_process_group)
        monkeypatch.setattr(dist, "destroy_process_group", self.destroy_process_group)
        monkeypatch.setattr(os, "_exit", self.exit)

    def rendezvous(self, url):
        assert url == "env://"
        store = dist.HashStore()
        store.set_timeout(timedelta(seconds=5))  # a key not there fails the test at once
        self.stores[dist.get_rank()] = store
        yield store, dist.get_rank(), self.world

    def init_process_group(self, backend, *, store, rank, world_size):
        if backend == "threaded":  # run_threads' own, before the rank's work
            self._init(backend, store=store, rank=rank, world_size=world_size)
            return
        with self.lock:
            self.joined.append((backend, store, rank, world_size))

    def destroy_process_group(self):
        if getattr(self.rank_done, "value", False):  # run_threads' own, after the rank's work
            self._destroy()
            return
        self.rank_done.value = True
        with self.lock:
            self.destroyed.append(dist.get_rank())

    def exit(self, code):
        with self.lock:
            self.exits.append(code)


@pytest.fixture
def job(monkeypatch):
    monkeypatch.setattr(cli, "_torchrun_worker", False)  # main sets it: put back for the tests after
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "3")
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    # The ranks' fits enter and leave catch_warnings in any order: the state from before comes back.
    with warnings.catch_warnings():
        yield JobRecorder(monkeypatch, world=2)


def test_each_rank_joins_the_job_fits_its_shard_and_leaves_through_exit(job, tmp_path, capsys):
    X = np.random.default_rng(0).random((41, 5)).astype(np.float32)
    np.save(tmp_path / "X.npy", X)
    argv = ["fit", str(tmp_path / "X.npy"), "--out", str(tmp_path / "r.npz"), *FIT]

    codes = run_threads(lambda rank, world: cli.main(argv), 2)

    assert codes == [0, 0] and job.exits == [0, 0]
    assert sorted(job.destroyed) == [0, 1]
    assert sorted((backend, rank, world) for backend, _, rank, world in job.joined) == [("gloo", 0, 2), ("gloo", 1, 2)]
    for _, store, rank, _ in job.joined:  # each attempt's keys apart from those of a restarted job
        store.set("key", "value")
        assert dist.PrefixStore("rda_ext/attempt-3/", job.stores[rank]).get("key") == b"value"
    with np.load(tmp_path / "r.npz") as r:  # one shard per rank: every row once
        assert r["L"].shape == X.shape and r["S"].shape == X.shape and r["scores"].shape == (41,)
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and out.startswith("41 rows x 5 features read from ")
    assert " on 2 ranks (threaded), network 5-4, 2 outer iterations" in out and err == ""


def test_a_standardized_fit_is_refused_on_every_rank_of_a_job(job, tmp_path, capsys):
    np.save(tmp_path / "X.npy", np.random.default_rng(0).random((20, 3)).astype(np.float32))
    argv = ["fit", str(tmp_path / "X.npy"), "--out", str(tmp_path / "r.npz"), *FIT, "--preprocessing", "standardize"]

    assert run_threads(lambda rank, world: cli.main(argv), 2) == [2, 2]
    assert job.exits == [2, 2]
    assert capsys.readouterr().err.splitlines() == [
        'rda-ext: error: preprocessing="standardize" is not available in a distributed fit (its column quantiles '
        'span all ranks): use "minmax", or scale X beforehand'] * 2
    assert not (tmp_path / "r.npz").exists()


def _joined_alone(monkeypatch, device: str, cuda: bool, local_rank: str | None):
    """What ``_join_torchrun`` makes of a one-rank job on a machine with or without a GPU."""
    recorder = JobRecorder(monkeypatch, world=1)
    store = dist.HashStore()
    store.set_timeout(timedelta(seconds=5))
    monkeypatch.setattr(dist, "rendezvous", lambda url: iter([(store, 0, 1)]))
    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)  # a job's first attempt
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(cli, "RowGroup", lambda: "the job's row group")
    monkeypatch.setenv("WORLD_SIZE", "1")
    if local_rank is None:
        monkeypatch.delenv("LOCAL_RANK", raising=False)
    else:
        monkeypatch.setenv("LOCAL_RANK", local_rank)
    args = argparse.Namespace(device=device)
    assert cli._join_torchrun(args) == "the job's row group"
    (backend, prefixed, rank, world), = recorder.joined
    prefixed.set("key", "value")
    assert dist.PrefixStore("rda_ext/attempt-0/", store).get("key") == b"value" and (rank, world) == (0, 1)
    return args.device, chosen, [backend]


@pytest.mark.parametrize("device, cuda, local_rank, expected", [
    ("auto", True, "3", ("cuda:3", [3], ["nccl"])),
    ("cuda", True, None, ("cuda:0", [0], ["nccl"])),
    ("auto", False, "3", ("auto", [], ["gloo"])),
    ("cpu", True, "1", ("cpu", [], ["gloo"])),
])
def test_a_rank_takes_the_gpu_of_its_local_rank_and_nccl(monkeypatch, device, cuda, local_rank, expected):
    assert _joined_alone(monkeypatch, device, cuda, local_rank) == expected


def test_a_plain_run_is_a_single_process_and_a_numbered_gpu_is_refused_under_torchrun(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli._join_torchrun(argparse.Namespace(device="cuda:1")) is cli.SINGLE_PROCESS
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError) as e:
        cli._join_torchrun(argparse.Namespace(device="cuda:1"))
    assert str(e.value) == ('--device cuda:1: under torchrun each rank takes the GPU of its LOCAL_RANK; use --device '
                            'cuda (or "auto")')
