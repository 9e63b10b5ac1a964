"""hidden="auto" (rda_ext.estimator.network_shape): the candidate shapes, the residual contrast
against numpy's, the choice and its margin, and a fit that keeps a candidate against the fit of that
shape alone: in fit, fit_together, a warm start, a checkpoint, a model file and the command line."""

import math
import os
import random

import numpy as np
import pytest
import torch
from helpers import planted

from rda_ext import RobustAutoencoder, fit_together
from rda_ext.cli import main as cli_main
from rda_ext.estimator import network_shape
from rda_ext.solver.collectives import SINGLE_PROCESS

# A fit small enough for the suite on 300 features, where "auto" has two candidates: (128, 32), and
# (150, 75) at twice the outer iterations.
FIT = dict(outer_iter=2, inner_epochs=1, batch_size=32, device="cpu", random_state=0)
WIDE = (150, 75)


@pytest.fixture(scope="module")
def X():
    seed = int(os.environ.get("RDA_EXT_TEST_SEED", random.SystemRandom().randrange(2**31)))
    print(f"seed={seed}")
    return planted(seed, n=96, d=300, n_out=5)[0]


def test_candidates():
    assert network_shape.candidates((7, 3), 5, 1000) == [((7, 3), 5)]
    assert network_shape.candidates("auto", 5, 257) == [((128, 32), 5)]
    assert network_shape.candidates("auto", 5, 258) == [((128, 32), 5), ((129, 64), 10)]
    assert network_shape.candidates("auto", 10, 784) == [((128, 32), 10), ((392, 196), 20)]


@pytest.mark.parametrize("contamination", [0.01, 0.1, 0.37])
def test_contrast_is_the_mean_of_the_top_rows_over_the_median(gen, contamination):
    norms = torch.rand(101, generator=gen, dtype=torch.float64) + 0.5
    n = norms.numpy()
    top = n >= np.quantile(n, 1 - contamination)
    want = n[top].mean() / np.median(n)
    assert network_shape.contrast(norms, contamination, SINGLE_PROCESS) == pytest.approx(want, rel=1e-12)


def test_contrast_with_ties_and_a_zero_median():
    ties = torch.tensor([1.0, 1.0, 1.0, 1.0, 3.0], dtype=torch.float64)
    assert network_shape.contrast(ties, 0.1, SINGLE_PROCESS) == pytest.approx(3.0)
    assert network_shape.contrast(torch.tensor([0.0, 0.0, 0.0, 2.0]), 0.25, SINGLE_PROCESS) == math.inf
    assert network_shape.contrast(torch.zeros(4), 0.25, SINGLE_PROCESS) == 1.0


def test_choose_keeps_the_first_unless_a_later_one_is_larger_by_more_than_the_margin():
    m = network_shape.MARGIN
    assert network_shape.choose([1.5]) == 0
    assert network_shape.choose([1.5, 1.5 * m]) == 0
    assert network_shape.choose([1.5, 1.5 * m * (1 + 1e-9)]) == 1
    assert network_shape.choose([1.5, 1.2]) == 0
    # a third is measured against the one kept so far
    assert network_shape.choose([1.0, 1.0 * m * 1.01, 1.0 * m * 1.02]) == 1
    assert network_shape.choose([1.0, 1.0 * m * 1.01, 1.0 * m * m * 1.02]) == 2


def test_auto_on_narrow_inputs_is_the_narrow_network_alone(seed):
    X = planted(seed, n=64, d=40, n_out=3)[0]
    auto = RobustAutoencoder(**FIT).fit(X)
    narrow = RobustAutoencoder(hidden=(128, 32), **FIT).fit(X)
    assert auto.hidden_ == (128, 32) and auto.shape_contrast_ is None and narrow.shape_contrast_ is None
    np.testing.assert_array_equal(auto.decision_scores_, narrow.decision_scores_)


@pytest.mark.parametrize("margin, kept", [(math.inf, (128, 32)), (0.0, WIDE)])
def test_auto_keeps_the_fit_of_the_chosen_shape(X, monkeypatch, margin, kept):
    monkeypatch.setattr(network_shape, "MARGIN", margin)
    auto = RobustAutoencoder(**FIT).fit(X)
    alone = {shape: RobustAutoencoder(**dict(FIT, hidden=shape, outer_iter=outer)).fit(X)
             for shape, outer in network_shape.candidates("auto", FIT["outer_iter"], X.shape[1])}
    assert auto.hidden_ == kept and auto.model_.sizes == (300, *kept)
    assert list(auto.shape_contrast_) == [(128, 32), WIDE]
    for shape, est in alone.items():
        residual = torch.from_numpy(np.linalg.norm(X - est.L_, axis=1).astype(np.float64))
        assert auto.shape_contrast_[shape] == pytest.approx(
            network_shape.contrast(residual, est.contamination, SINGLE_PROCESS), rel=1e-5)
    np.testing.assert_array_equal(auto.decision_scores_, alone[kept].decision_scores_)
    np.testing.assert_array_equal(auto.labels_, alone[kept].labels_)
    assert auto.n_iter_ == alone[kept].n_iter_ and auto.n_iter_ == (2 if kept == (128, 32) else 4)
    np.testing.assert_array_equal(auto.decision_function(X[:7]), alone[kept].decision_function(X[:7]))


def test_a_warm_start_that_cannot_continue_the_kept_network_chooses_again(X, monkeypatch):
    monkeypatch.setattr(network_shape, "MARGIN", 0.0)
    est = RobustAutoencoder(**FIT).fit(X)
    assert est.hidden_ == WIDE
    est.set_params(warm_start=True, activation="tanh").fit(X)  # another network: both shapes afresh
    assert list(est.shape_contrast_) == [(128, 32), WIDE] and est.n_iter_ == 4


@pytest.mark.parametrize("margin", [math.inf, 0.0])
def test_fit_together_keeps_for_each_the_shape_its_own_fit_keeps(X, monkeypatch, margin):
    monkeypatch.setattr(network_shape, "MARGIN", margin)
    # one random_state: fit_together trains on the first one's batch order, as each one's own fit
    ests = [RobustAutoencoder(**dict(FIT, contamination=c)) for c in (0.05, 0.2)]
    fit_together(ests, X)
    for est in ests:
        alone = RobustAutoencoder(**est.get_params()).fit(X)
        assert est.hidden_ == alone.hidden_
        assert list(est.shape_contrast_) == list(alone.shape_contrast_)
        np.testing.assert_allclose(list(est.shape_contrast_.values()), list(alone.shape_contrast_.values()),
                                   rtol=1e-4)
        np.testing.assert_allclose(est.decision_scores_, alone.decision_scores_, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("margin", [math.inf, 0.0])
def test_a_warm_start_continues_the_shape_kept(X, monkeypatch, margin):
    monkeypatch.setattr(network_shape, "MARGIN", margin)
    est = RobustAutoencoder(**FIT).fit(X)
    kept = est.hidden_
    est.set_params(warm_start=True, outer_iter=1).fit(X)
    assert est.hidden_ == kept and est.shape_contrast_ is None and est.n_iter_ == (1 if kept == (128, 32) else 2)
    assert len(est.history_) == (3 if kept == (128, 32) else 6)


def test_a_checkpoint_keeps_each_candidate_in_a_folder_and_resumes(X, tmp_path):
    first = RobustAutoencoder(**FIT, checkpoint=tmp_path).fit(X)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hidden-128-32", "hidden-150-75"]
    again = RobustAutoencoder(**FIT, checkpoint=tmp_path).fit(X)  # both restored whole: nothing trains
    assert again.hidden_ == first.hidden_ and again.shape_contrast_ == first.shape_contrast_
    np.testing.assert_array_equal(again.decision_scores_, first.decision_scores_)


def test_the_model_file_keeps_the_shape_and_the_contrasts(X, tmp_path):
    est = RobustAutoencoder(**FIT).fit(X)
    est.save(tmp_path / "m.pt", data=False)
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert back.hidden == "auto" and back.hidden_ == est.hidden_ and back.shape_contrast_ == est.shape_contrast_
    np.testing.assert_array_equal(back.decision_function(X), est.decision_function(X))


@pytest.mark.parametrize("change, message", [
    (lambda s: s["fitted"].__setitem__("shape_contrast_", [[[128, 32], 1.2]]), "shape_contrast_ is not"),
    (lambda s: s["fitted"]["shape_contrast_"][1].__setitem__(1, -1.0), "shape_contrast_ is not"),
    (lambda s: s["fitted"]["shape_contrast_"][0].__setitem__(0, [128, 33]), "shape_contrast_ is not"),
    (lambda s: s["params"].__setitem__("hidden", [150, 70]), "do not match hidden"),
])
def test_a_model_file_with_a_wrong_shape_or_contrast_is_refused(X, tmp_path, change, message):
    est = RobustAutoencoder(**FIT).fit(X)
    est.save(tmp_path / "m.pt", data=False)
    state = torch.load(tmp_path / "m.pt", weights_only=True)
    change(state)
    torch.save(state, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=message):
        RobustAutoencoder.load(tmp_path / "bad.pt")


def test_a_model_file_of_one_network_has_no_contrasts(X, tmp_path):
    est = RobustAutoencoder(**dict(FIT, hidden=(8, 2))).fit(X)
    est.save(tmp_path / "m.pt", data=False)
    back = RobustAutoencoder.load(tmp_path / "m.pt")
    assert back.hidden_ == (8, 2) and back.shape_contrast_ is None


def test_the_command_line_takes_auto_and_sizes(X, tmp_path, capsys):
    np.save(tmp_path / "x.npy", X)
    for hidden, kept in (("auto", None), ("8,2", (8, 2))):
        out = tmp_path / f"out-{hidden.replace(',', '-')}"
        assert cli_main(["fit", str(tmp_path / "x.npy"), "--out", str(out), "--model", str(out) + ".pt",
                         "--hidden", hidden, "--outer-iter", "2", "--inner-epochs", "1", "--seed", "0",
                         "--device", "cpu"]) == 0
        said = capsys.readouterr().out
        model = RobustAutoencoder.load(str(out) + ".pt")
        network = "-".join(map(str, (300, *model.hidden_)))
        if kept is None:
            assert f", network {network} (kept by residual contrast: 300-128-32 " in said and ", 300-150-75 " in said
        else:
            assert f", network {network}, 2 outer iterations" in said
        assert model.hidden == ("auto" if kept is None else kept)
        assert model.hidden_ == kept or kept is None and model.hidden_ in ((128, 32), WIDE)
