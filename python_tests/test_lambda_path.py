"""``lambda_path``'s inputs and checkpoints: the lams it takes and refuses, a checkpoint folder per
lam that a second call resumes, and the refusals (parallel with a checkpoint, a process group)."""

from __future__ import annotations

import math
import os
import re

import numpy as np
import pytest
import torch
from distributed_ranks import run_ranks

from rda_ext import lambda_path
from rda_ext.solver.engine import Engine

TINY = dict(hidden=(4,), outer_iter=3, inner_epochs=1, batch_size=16, tol=0, device="cpu", dtype="float64",
            outlier_score="residual", random_state=0)


def _data():
    rng = np.random.default_rng(0)
    X = rng.random((60, 6))
    X[:4] += 2  # a few rows that lam leaves in S
    return X


def _numbers(path, seconds=False):
    """A path's results as plain values, with or without the seconds of its history."""
    return [dict(lam=r["lam"], scores=r["decision_scores"].tolist(), labels=r["labels"].tolist(),
                 n_nonzero=r["n_nonzero"],
                 history=[{k: v for k, v in h.items() if seconds or k != "seconds"} for h in r["history"]])
            for r in path]


@pytest.fixture
def runs(monkeypatch):
    """The outer iterations each fit was asked to run, in order (0 for a fit restored whole)."""
    asked = []
    run = Engine.run

    def recording(self, remaining, *args, **kwargs):
        asked.append(remaining)
        return run(self, remaining, *args, **kwargs)

    monkeypatch.setattr(Engine, "run", recording)
    return asked


def test_a_checkpointed_path_keeps_a_folder_per_lam_and_a_second_call_resumes_each(tmp_path, runs):
    X, lams, ck = _data(), [0.5, 1.0, 0.25], tmp_path / "ck"
    uninterrupted = lambda_path(X, lams, warm_outer_iter=2, **TINY)
    # As if stopped during the second lam's fit: its first warm iteration done, the third lam not begun.
    lambda_path(X, [1.0, 0.5], warm_outer_iter=1, checkpoint=ck, **TINY)
    assert sorted(os.listdir(ck)) == ["lam-0-1.0", "lam-1-0.5"]
    del runs[:]
    resumed = lambda_path(X, lams, warm_outer_iter=2, checkpoint=ck, **TINY)
    assert runs == [0, 1, 2]  # the first restored whole, the second continued, the third fitted
    assert _numbers(resumed) == _numbers(uninterrupted)
    assert sorted(os.listdir(ck)) == ["lam-0-1.0", "lam-1-0.5", "lam-2-0.25"]
    del runs[:]
    again = lambda_path(X, lams, warm_outer_iter=2, checkpoint=ck, **TINY)
    assert runs == [0, 0, 0]
    assert _numbers(again, seconds=True) == _numbers(resumed, seconds=True)  # the saved histories
    # Another path's fits would start from other states: its folder is refused.
    with pytest.raises(ValueError, match=r"holds the fits of another lam path \(lam-0-1.0, where this path's fit 0 "
                                         r"is lam-0-2.0\)"):
        lambda_path(X, [2.0, 0.5], checkpoint=ck, **TINY)


def test_the_parallel_path_refuses_a_checkpoint(tmp_path):
    with pytest.raises(ValueError, match=r"lambda_path\(parallel=True\) does not checkpoint"):
        lambda_path(_data(), [1.0, 0.5], parallel=True, checkpoint=tmp_path / "ck", **TINY)
    assert not (tmp_path / "ck").exists()


@pytest.mark.parametrize("lams, message", [
    ((v for v in (1.0, 0.5)), r"^lams must be a number or a 1-D .* got generator .* pass list\(lams\)"),
    (np.ones((2, 2)), r"^lams must be a number or a 1-D .* got an array of shape \(2, 2\)"),
    ([[1.0, 0.5]], r"^lams must be a number or a 1-D .* got a nested sequence"),
    ("1.0", r"^lams must be a number or a 1-D .* got str '1.0'"),
    (["1.0", 0.5], r"^lams must hold numbers, got '1.0' \(str\)"),
    ([1.0, True], r"^lams must hold numbers, got True \(bool\)"),
    ({1.0, 0.5}, r"^lams must be a number or a 1-D .* got set"),
    ([1.0, math.nan], r"^lams must hold finite numbers >= 0 .* got nan"),
    ([1.0, -0.5], r"^lams must hold finite numbers >= 0 .* got -0.5"),
    (np.array([math.inf]), r"^lams must hold finite numbers >= 0 .* got np.float64\(inf\)|got inf"),
    ([], r"^lams must hold at least one value"),
    (np.array([]), r"^lams must hold at least one value"),
    ([1.0, 0.5, 1, 0.5], r"^lams holds 1.0, 0.5 more than once: each lam is fitted once"),
])
def test_bad_lams_are_refused_naming_lams(lams, message):
    with pytest.raises(ValueError, match=message):
        lambda_path(_data(), lams, **TINY)


@pytest.mark.parametrize("lams", [0.5, np.float32(0.5), [0.5], (1, 0.5), np.array([0.5, 1.0]), torch.tensor([0.5]),
                                  range(1, 2)])
def test_lams_may_be_a_number_or_a_1d_sequence(lams):
    path = lambda_path(_data(), lams, **{**TINY, "outer_iter": 1})
    assert [r["lam"] for r in path] == sorted((float(v) for v in np.atleast_1d(np.asarray(lams))), reverse=True)


def _path_in_a_process_group(rank, world):
    message = ("lambda_path runs on one process: with a torch.distributed process group initialised, "
               "pass distributed=False to fit each rank's rows alone")
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        lambda_path(_data(), [1.0, 0.5], **TINY)
    return len(lambda_path(_data(), [1.0, 0.5], **{**TINY, "outer_iter": 1}, distributed=False))


def test_a_path_refuses_a_process_group_unless_told_to_fit_alone():
    assert run_ranks(_path_in_a_process_group, 2) == [2, 2]
