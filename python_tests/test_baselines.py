import numpy as np
import pytest
from helpers import planted

from rda_ext.experiments.baselines import autoencoder_scores, rcae, vae_scores
from rda_ext.experiments.metrics import roc_auc

FAST = dict(hidden=(16, 4), batch_size=16, lr=1e-2, activation="elu")


@pytest.fixture
def data(gen):
    return planted(int(gen.initial_seed()))


def test_autoencoder_scores_find_planted_outliers(data):
    X, is_out = data
    scores = autoencoder_scores(X, epochs=40, seed=1, device="cpu", **FAST)
    assert scores.shape == (len(X),) and roc_auc(is_out, scores) > 0.9


def test_vae_scores(data):
    X, is_out = data
    scores = vae_scores(X, hidden=32, latent=3, epochs=40, batch_size=16, lr=1e-2, seed=1, device="cpu")
    assert scores.shape == (len(X),) and np.isfinite(scores).all()
    assert roc_auc(is_out, scores) > 0.8


def test_rcae(data):
    X, is_out = data
    scores, flagged = rcae(X, contamination=0.05, outer_iter=6, inner_epochs=10, seed=1, device="cpu", **FAST)
    assert roc_auc(is_out, scores) > 0.9
    assert flagged.sum() == round(0.05 * len(X))
    # A threshold above every residual row norm flags nothing.
    _, none = rcae(X, lam=2 * (scores.max() + 1), outer_iter=1, inner_epochs=1, seed=1, device="cpu", **FAST)
    assert none.sum() == 0
    with pytest.raises(ValueError, match="exactly one of lam and contamination"):
        rcae(X, lam=1.0, contamination=0.1)


@pytest.mark.parametrize("score", ["residual+code", "residual+code+knn", "knn"])
def test_autoencoder_scores_with_rdas_score_find_planted_outliers_and_check_their_arguments(data, score):
    X, is_out = data
    # elu: a sigmoid network at this lr saturated on about one planted set in 20 (AUROC near 0.6).
    fit = dict(hidden=(16, 4), epochs=30, batch_size=32, lr=1e-2, activation="elu", contamination=0.05)
    scores = autoencoder_scores(X, **fit, outlier_score=score)
    assert scores.shape == (len(X),) and np.isfinite(scores).all()
    assert roc_auc(is_out, scores) > 0.9
    if score != "residual+code":  # the local term, alone or added: another order of the rows
        assert not np.array_equal(np.argsort(scores),
                                  np.argsort(autoencoder_scores(X, **fit, outlier_score="residual+code")))
    with pytest.raises(ValueError, match="outlier_score must be one of 'residual\\+code\\+knn', 'residual\\+code', "
                                         "'knn', 'residual', got 'cosine'"):
        autoencoder_scores(X, epochs=1, outlier_score="cosine")
    with pytest.raises(ValueError, match=f'outlier_score="{score}" needs a contamination'.replace("+", "\\+")):
        autoencoder_scores(X, epochs=1, outlier_score=score)
