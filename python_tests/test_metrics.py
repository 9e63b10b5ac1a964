import numpy as np
import pytest

sklearn_metrics = pytest.importorskip("sklearn.metrics")

from rda_ext.experiments import metrics  # noqa: E402


@pytest.fixture
def data(gen):
    rng = np.random.default_rng(int(gen.initial_seed()))
    y = rng.random(300) < 0.1
    y[:2] = [True, False]
    # Rounded scores make ties, which the definitions must handle as scikit-learn does.
    scores = np.round(rng.standard_normal(300) + 1.5 * y, 1)
    return y.astype(int), scores


def test_against_scikit_learn(data):
    y, s = data
    assert metrics.roc_auc(y, s) == pytest.approx(sklearn_metrics.roc_auc_score(y, s), abs=1e-12)
    assert metrics.average_precision(y, s) == pytest.approx(sklearn_metrics.average_precision_score(y, s), abs=1e-12)
    pred = s > 1.0
    p, r, f1 = metrics.precision_recall_f1(y, pred)
    assert p == pytest.approx(sklearn_metrics.precision_score(y, pred))
    assert r == pytest.approx(sklearn_metrics.recall_score(y, pred))
    assert f1 == pytest.approx(sklearn_metrics.f1_score(y, pred))


def test_precision_at_k():
    y = [0, 1, 1, 0, 1]
    s = [0.1, 0.9, 0.8, 0.7, 0.2]
    assert metrics.precision_at_k(y, s, 2) == 1.0
    assert metrics.precision_at_k(y, s, 3) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="k must be"):
        metrics.precision_at_k(y, s, 6)


def test_bad_input():
    with pytest.raises(ValueError, match="both outliers and inliers"):
        metrics.roc_auc([0, 0], [1.0, 2.0])
    with pytest.raises(ValueError, match="NaN"):
        metrics.average_precision([0, 1], [np.nan, 1.0])
    with pytest.raises(ValueError, match="entries"):
        metrics.precision_recall_f1([0, 1], [1])
