"""``rda-ext fit`` under torchrun (gloo, 2 processes of one thread): row shards read from a memory
map, the result as one .npz or a folder, a rank lost mid-fit and resumed from the checkpoint, and
bad input on one rank. Every launch is bounded by a timeout."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from distributed_ranks import free_port, torchrun_env

from rda_ext import RobustAutoencoder
from rda_ext.data.datasets import load_mnist_5k, make_outlier_set
from rda_ext.io.checkpoint import LATEST

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not built")

TIMEOUT = 240
# One network (hidden="auto" would train a second, wide one on the 784 features, and checkpoint
# each in a folder of its own: test_network_shape).
FIT = ["--seed", "0", "--device", "cpu", "--outer-iter", "6", "--hidden", "128,32"]


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> str:
    X, y = load_mnist_5k()
    path = str(tmp_path_factory.mktemp("data") / "mnist4.npy")
    np.save(path, make_outlier_set(X, y, nominal=4, fraction=0.05, seed=0)[0])
    return path


def _torchrun(*args, restarts: int = 0) -> subprocess.Popen:
    # --standalone: a rendezvous on a free port.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "--max-restarts", str(restarts), "-m", "rda_ext", *args]
    # Not from the source tree, whose rda_ext has no compiled kernels.
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"}, cwd=os.path.dirname(args[1]))


def _wait(proc: subprocess.Popen) -> tuple[int, str, str]:
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"the job ran past {TIMEOUT} s")
    return proc.returncode, out, err


def _run(*args, restarts: int = 0) -> str:
    code, out, err = _wait(_torchrun(*args, restarts=restarts))
    assert code == 0, err[-3000:]
    return out


def test_the_ranks_write_one_npz_or_one_folder_and_the_model_scores_alone(mnist, tmp_path):
    # Rows beyond [0, 1] under a sigmoid output: every rank's fit warns, rank 0 says it for the job.
    data = str(tmp_path / "x.npy")
    np.save(data, np.load(mnist) * 1.5)
    sigmoid = ["--preprocessing", "none", "--output-activation", "sigmoid"]
    code, out, err = _wait(_torchrun("fit", data, "--out", str(tmp_path / "r.npz"), "--model", str(tmp_path / "m.pt"),
                                     *FIT, *sigmoid))
    assert code == 0, err[-3000:]
    assert "on 2 ranks (gloo)" in out and out.count("rows flagged") == 1  # rank 0 speaks for the job
    assert err.count("rda-ext: warning: ") == 1 and "sigmoid" in err, err[-3000:]
    _run("fit", data, "--out", str(tmp_path / "folder") + "/", *FIT, *sigmoid)
    r = np.load(tmp_path / "r.npz")
    folder = tmp_path / "folder"
    meta = json.loads((folder / "result.json").read_text())
    assert meta["world_size"] == 2 and meta["backend"] == "gloo" and meta["rows"] == len(np.load(data))
    # The same seed and the same shards on a CPU: the same fit, to the bit.
    for key in ("L", "S", "scores", "labels"):
        assert np.array_equal(r[key], np.load(folder / f"{key}.npy")), key
    assert meta["lam"] == float(r["lam"]) and meta["threshold"] == float(r["threshold"])
    seconds = meta["history_columns"].index("seconds")
    assert np.array_equal(np.delete(meta["history"], seconds, 1), np.delete(r["history"], seconds, 1))
    assert sorted(os.listdir(tmp_path)) == ["folder", "m.pt", "r.npz", "x.npy"]  # no temporary left
    # The model file of the job scores new rows on one process, as a single-process fit's does.
    subprocess.run([sys.executable, "-m", "rda_ext", "score", str(tmp_path / "m.pt"), data, "--out",
                    str(tmp_path / "s.npz"), "--device", "cpu"], check=True, timeout=TIMEOUT, capture_output=True,
                   cwd=tmp_path)
    s = np.load(tmp_path / "s.npz")
    assert float(s["threshold"]) == float(r["threshold"])
    # Where S is 0 the residual is X - AE(X), as for new rows; the local term of a training row among
    # the model's neighbours leaves the row itself out, that of a new row counts it: at most as far.
    kept = (r["S"] == 0).all(axis=1)
    model = RobustAutoencoder.load(tmp_path / "m.pt")
    X = np.load(data)
    among = np.array([(model.neighbours_ == x.astype(np.float32)).all(1).any() for x in X])
    assert among.sum() == len(model.neighbours_) > 0
    np.testing.assert_allclose(s["scores"][kept & ~among], r["scores"][kept & ~among], rtol=1e-5)
    inside = kept & among
    assert inside.sum() > 0.5 * among.sum()
    assert (s["scores"][inside] <= r["scores"][inside] * (1 + 1e-5)).all()
    assert (s["scores"][inside] < r["scores"][inside] * (1 - 1e-3)).mean() > 0.5


def _workers(parent: int) -> list[int]:
    """The worker processes torchrun started (children of its agent)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == parent:
            found.append(int(pid))
    return found


def _iterations_done(checkpoint) -> int:
    try:
        return json.loads((checkpoint / LATEST).read_text())["iteration"]
    except (OSError, ValueError):
        return 0


def _kill_a_rank_after(proc: subprocess.Popen, checkpoint, iterations: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while _iterations_done(checkpoint) < iterations:
        assert proc.poll() is None, "the job ended before the rank was killed"
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    workers = _workers(proc.pid)
    assert len(workers) == 2
    os.kill(max(workers), signal.SIGKILL)


def test_a_rank_killed_mid_fit_is_restarted_and_resumes_to_the_same_result(mnist, tmp_path):
    _run("fit", mnist, "--out", str(tmp_path / "whole.npz"), *FIT)
    checkpoint = tmp_path / "ck"
    proc = _torchrun("fit", mnist, "--out", str(tmp_path / "resumed.npz"), "--checkpoint", str(checkpoint), *FIT,
                     restarts=1)
    _kill_a_rank_after(proc, checkpoint, 3)
    code, _, err = _wait(proc)
    assert code == 0, err[-3000:]
    assert "restart" in err.lower() or "failed" in err.lower()  # torchrun saw the lost rank
    whole, resumed = np.load(tmp_path / "whole.npz"), np.load(tmp_path / "resumed.npz")
    for key in ("L", "S", "scores", "labels", "lam", "threshold"):
        assert np.array_equal(whole[key], resumed[key]), key
    seconds = list(whole["history_columns"]).index("seconds")
    assert np.array_equal(np.delete(whole["history"], seconds, 1), np.delete(resumed["history"], seconds, 1))


def test_a_job_killed_for_good_leaves_no_output(mnist, tmp_path):
    checkpoint = tmp_path / "ck"
    proc = _torchrun("fit", mnist, "--out", str(tmp_path / "out") + "/", "--checkpoint", str(checkpoint), *FIT)
    _kill_a_rank_after(proc, checkpoint, 2)
    code, _, _ = _wait(proc)
    assert code != 0
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()
    assert _iterations_done(checkpoint) >= 2  # what a new job would resume from


@pytest.mark.parametrize("fault", ["nan_in_rank_1", "no_file", "out_is_the_input"])
def test_bad_input_on_one_rank_stops_every_rank_with_one_line_and_status_2(mnist, tmp_path, fault):
    X = np.load(mnist)
    path = str(tmp_path / "x.npy")
    if fault == "nan_in_rank_1":
        X[-1, 3] = np.nan  # in the last rows: only rank 1 reads them
    if fault != "no_file":
        np.save(path, X)
    out = str(tmp_path / ".." / tmp_path.name / "x.npy") if fault == "out_is_the_input" else str(tmp_path / "r.npz")
    port = free_port()
    procs = [subprocess.Popen([sys.executable, "-m", "rda_ext", "fit", path, "--out", out, *FIT],
                              env=torchrun_env(rank, 2, port), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, start_new_session=True, cwd=tmp_path) for rank in range(2)]
    results = [_wait(p) for p in procs]
    expected = {"nan_in_rank_1": "X contains NaN or infinite values", "no_file": "no such file",
                "out_is_the_input": "is the same file as input"}[fault]
    for code, _, err in results:
        assert code == 2
        lines = [line for line in err.splitlines() if line.startswith("rda-ext:")]
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "r.npz").exists()
    if fault == "out_is_the_input":
        assert np.array_equal(np.load(path), X)


def test_a_single_process_writes_the_folder_too_and_refuses_a_full_one(mnist, tmp_path, capsys):
    from rda_ext.cli import main

    X = np.load(mnist)[:60]
    np.save(tmp_path / "x.npy", X)
    assert main(["fit", str(tmp_path / "x.npy"), "--out", str(tmp_path / "r") + "/", "--hidden", "3",
                 "--outer-iter", "2", "--device", "cpu", "--seed", "0"]) == 0
    meta = json.loads((tmp_path / "r" / "result.json").read_text())
    assert meta["world_size"] == 1 and meta["backend"] is None and meta["rows"] == 60
    assert np.load(tmp_path / "r" / "L.npy").shape == X.shape
    for out, message in ((tmp_path / "r", "the folder exists and is not empty"),
                         (tmp_path / "x.npy", "a file of that name exists")):
        capsys.readouterr()
        assert main(["fit", str(tmp_path / "x.npy"), "--out", str(out) + "/", "--device", "cpu"]) == 2
        assert message in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available() or not torch.distributed.is_nccl_available(),
                    reason="no CUDA device with NCCL visible")
def test_one_rank_on_a_gpu_runs_over_nccl(mnist, tmp_path):
    """The NCCL path with the one GPU a test machine has (several GPUs cannot be tested here)."""
    _run_one = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1",
                "-m", "rda_ext", "fit", mnist, "--out", str(tmp_path / "gpu") + "/", "--seed", "0", "--outer-iter", "6"]
    run = subprocess.run(_run_one, capture_output=True, text=True, timeout=TIMEOUT, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    meta = json.loads((tmp_path / "gpu" / "result.json").read_text())
    assert meta["backend"] == "nccl" and meta["world_size"] == 1
    single = tmp_path / "single.npz"
    subprocess.run([sys.executable, "-m", "rda_ext", "fit", mnist, "--out", str(single), *FIT[:2], "--device", "cuda",
                    "--outer-iter", "6"], check=True, capture_output=True, timeout=TIMEOUT, cwd=tmp_path)
    labels, alone = np.load(tmp_path / "gpu" / "labels.npy"), np.load(single)["labels"]
    assert labels.sum() == alone.sum() and (labels & alone).sum() >= 0.8 * alone.sum()
