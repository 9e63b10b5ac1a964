"""The PyOD adapter: RDADetector behaves as a PyOD BaseDetector built on RobustAutoencoder
(skipped without PyOD)."""

from __future__ import annotations

import importlib
import re
import sys

import numpy as np
import pytest
import torch

pyod = pytest.importorskip("pyod")

from pyod.utils.data import evaluate_print, generate_data  # noqa: E402
from pyod.utils.utility import standardizer  # noqa: E402
from sklearn.base import clone  # noqa: E402
from sklearn.exceptions import NotFittedError  # noqa: E402

from rda_ext import RobustAutoencoder  # noqa: E402
from rda_ext.estimator.pyod_detector import RDADetector  # noqa: E402

CONTAMINATION = 0.1


def small_estimator(**changes) -> RobustAutoencoder:
    # The data below are standardised by the test itself, hence no preprocessing of the estimator's.
    params = dict(hidden=(16,), outer_iter=3, inner_epochs=2, batch_size=32, output_activation="linear",
                  preprocessing="none", device="cpu", random_state=0)
    return RobustAutoencoder(**{**params, **changes})


@pytest.fixture(scope="module")
def data():
    X_train, X_test, y_train, y_test = generate_data(
        n_train=200, n_test=100, n_features=8, contamination=CONTAMINATION, random_state=0
    )
    # The inliers sit far from the origin: standardised, they are what a short-trained
    # autoencoder reconstructs well and the uniform outliers are not.
    X_train, X_test = standardizer(X_train, X_test)
    return X_train, X_test, y_train, y_test


@pytest.fixture(scope="module")
def fitted(data):
    template = small_estimator()
    return template, RDADetector(template, contamination=CONTAMINATION).fit(data[0])


def test_training_labels_and_threshold_are_the_estimators(fitted, data):
    _, det = fitted
    est = det.estimator_
    assert det.threshold_ == est.threshold_
    np.testing.assert_array_equal(det.labels_, est.labels_)
    np.testing.assert_array_equal(det.labels_, (det.decision_scores_ > det.threshold_).astype(int))
    # 200 distinct scores and contamination 0.1: the estimator flags the top 20.
    assert len(np.unique(det.decision_scores_)) == len(det.decision_scores_)
    assert det.labels_.sum() == int(len(det.decision_scores_) * CONTAMINATION) == 20
    np.testing.assert_array_equal(det.predict(data[1]), est.predict(data[1]))


def test_scores_are_the_wrapped_estimators(fitted, data):
    _, det = fitted
    X_test = data[1]
    assert isinstance(det.estimator_, RobustAutoencoder)
    assert det.decision_scores_.dtype == np.float64 and det.decision_scores_.shape == (200,)
    np.testing.assert_array_equal(det.decision_scores_, det.estimator_.decision_scores_)
    scores = det.decision_function(X_test)
    assert scores.dtype == np.float64 and scores.shape == (100,)
    np.testing.assert_array_equal(scores, det.estimator_.decision_function(X_test))


def test_fit_trains_the_template_parameters_with_the_detectors_contamination(data):
    template = small_estimator(contamination=0.2)
    det = RDADetector(template, contamination=CONTAMINATION).fit(data[0])
    assert det.estimator_ is not template
    assert det.estimator_.get_params() == {**template.get_params(), "contamination": CONTAMINATION}
    direct = small_estimator(contamination=CONTAMINATION).fit(data[0])
    np.testing.assert_array_equal(det.decision_scores_, direct.decision_scores_)


def test_fit_leaves_the_template_unfitted_and_unchanged(fitted):
    template, det = fitted
    assert template.get_params() == small_estimator().get_params()
    assert not hasattr(template, "model_") and not hasattr(template, "decision_scores_")
    assert det.estimator is template


def test_no_estimator_means_robust_autoencoder_defaults(monkeypatch, data):
    class Stop(Exception):
        pass

    def record_params(self, X, y=None):
        raise Stop(self.get_params())

    # A default fit takes many seconds; the parameters it would train with are what matters.
    monkeypatch.setattr(RobustAutoencoder, "fit", record_params)
    with pytest.raises(Stop) as stop:
        RDADetector(contamination=0.05).fit(data[0])
    assert stop.value.args[0] == {**RobustAutoencoder().get_params(), "contamination": 0.05}


def test_predict_on_new_rows_compares_scores_with_threshold(fitted, data):
    _, det = fitted
    X_test = data[1]
    expected = (det.decision_function(X_test) > det.threshold_).astype(int)
    np.testing.assert_array_equal(det.predict(X_test), expected)
    labels, confidence = det.predict(X_test, return_confidence=True)
    np.testing.assert_array_equal(labels, expected)
    np.testing.assert_array_equal(confidence, det.predict_confidence(X_test))


def test_predict_proba_is_min_max_scaled_score(fitted, data):
    _, det = fitted
    X_test = data[1]
    proba = det.predict_proba(X_test)
    scores = det.decision_function(X_test)
    assert proba.shape == (100, 2)
    assert np.all((proba >= 0) & (proba <= 1))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=0, atol=1e-12)
    lo, hi = det.decision_scores_.min(), det.decision_scores_.max()
    np.testing.assert_allclose(proba[:, 1], np.clip((scores - lo) / (hi - lo), 0, 1), rtol=0, atol=1e-12)
    # Ordered as the scores: a higher score never gets a lower outlier probability.
    assert np.all(np.diff(proba[np.argsort(scores, kind="stable"), 1]) >= 0)
    unify = det.predict_proba(X_test, method="unify")
    assert np.all((unify >= 0) & (unify <= 1))
    assert np.all(np.diff(unify[np.argsort(scores, kind="stable"), 1]) >= 0)


def test_predict_confidence(fitted, data):
    _, det = fitted
    confidence = det.predict_confidence(data[1])
    assert confidence.shape == (100,)
    assert np.all((confidence >= 0) & (confidence <= 1))


def test_finds_planted_outliers_through_pyod_utilities(fitted, data, capsys):
    _, det = fitted
    _, X_test, y_train, y_test = data
    for y, scores in ((y_train, det.decision_scores_), (y_test, det.decision_function(X_test))):
        evaluate_print("RDA", y, scores)
        roc = float(re.search(r"ROC:([0-9.]+)", capsys.readouterr().out).group(1))
        assert roc > 0.9


def test_pyod_score_combination(fitted, data):
    combination = pytest.importorskip("pyod.models.combination", reason="needs PyOD's optional combo package")
    _, det = fitted
    X_train, X_test, _, _ = data
    other = RDADetector(small_estimator(random_state=1, hidden=(8,)), contamination=CONTAMINATION).fit(X_train)
    train = np.column_stack([det.decision_scores_, other.decision_scores_])
    test = np.column_stack([det.decision_function(X_test), other.decision_function(X_test)])
    train_norm, test_norm = standardizer(train, test)
    np.testing.assert_allclose(combination.average(test_norm), test_norm.mean(axis=1))
    np.testing.assert_allclose(combination.maximization(test_norm), test_norm.max(axis=1))


def test_tensor_input_gives_numpy_scores(fitted, data):
    _, det = fitted
    X_test = data[1]
    scores = det.decision_function(torch.from_numpy(X_test))
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float64
    np.testing.assert_array_equal(scores, det.decision_function(X_test))
    np.testing.assert_array_equal(det.predict(torch.from_numpy(X_test)), det.predict(X_test))


def test_get_params_set_params_and_clone():
    template = small_estimator()
    det = RDADetector(template, contamination=0.05)
    assert det.get_params(deep=False) == {"estimator": template, "contamination": 0.05}
    deep = det.get_params()
    assert deep["estimator__hidden"] == (16,) and deep["estimator__outer_iter"] == 3
    rebuilt = RDADetector(**det.get_params(deep=False))
    assert rebuilt.get_params(deep=False) == det.get_params(deep=False)

    assert det.set_params(contamination=0.2, estimator__outer_iter=5) is det
    assert det.contamination == 0.2 and template.outer_iter == 5  # nested parameters reach the template

    copy = clone(det)
    assert copy.contamination == 0.2 and copy.estimator is not template
    assert copy.estimator.get_params() == template.get_params()
    assert RDADetector().get_params(deep=False) == {"estimator": None, "contamination": 0.1}


def test_contamination_bounds():
    with pytest.raises(ValueError, match="contamination"):
        RDADetector(contamination=0.6)
    X = np.random.default_rng(0).normal(size=(20, 3))
    # PyOD allows 0.5; RobustAutoencoder's quantile of lam needs a minority of outliers.
    with pytest.raises(ValueError, match=r"contamination must be a number in \(0, 0.5\)"):
        RDADetector(small_estimator(), contamination=0.5).fit(X)


def test_a_pyod_thresholder_sets_the_labels(data):
    class TopFive:
        """What PyOD uses of a PyThresh thresholder: fit(scores), labels_, thresh_ and predict
        (recent PyOD), or eval(scores) (older releases, e.g. 3.0)."""

        def fit(self, scores):
            self.thresh_ = float(np.sort(scores)[-6])
            self.labels_ = (scores > self.thresh_).astype(int)
            return self

        def predict(self, scores):
            return (scores > self.thresh_).astype(int)

        def eval(self, scores):
            if not hasattr(self, "thresh_"):
                self.fit(scores)
            return self.predict(scores)

    template = small_estimator(contamination=0.2)
    det = RDADetector(template, contamination=TopFive()).fit(data[0])
    assert det.estimator_.contamination == 0.2  # lam still comes from the estimator's own fraction
    assert det.labels_.sum() == 5
    X_test = data[1]
    np.testing.assert_array_equal(det.predict(X_test), (det.decision_function(X_test) > det.threshold_).astype(int))


def test_unfitted_detector_raises_not_fitted():
    det = RDADetector(small_estimator())
    X = np.zeros((4, 8))
    for method in (det.decision_function, det.predict, det.predict_proba, det.predict_confidence):
        with pytest.raises(NotFittedError):
            method(X)


def test_import_without_pyod_says_how_to_install(monkeypatch):
    # None in sys.modules makes `import pyod...` fail as if PyOD were not installed; the cached
    # submodules and the adapter must go too, or the import would be answered from the cache.
    monkeypatch.setitem(sys.modules, "pyod", None)
    for name in [m for m in sys.modules if m.startswith("pyod.") or m == "rda_ext.estimator.pyod_detector"]:
        monkeypatch.delitem(sys.modules, name)
    with pytest.raises(ImportError, match=r"pip install pyod.*rda_ext\[pyod\]"):
        importlib.import_module("rda_ext.estimator.pyod_detector")
