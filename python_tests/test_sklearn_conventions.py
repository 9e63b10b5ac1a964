"""RobustAutoencoder under scikit-learn's own estimator checks. The few that do not apply are
expected to fail, each with its reason; every other check must pass."""

import numpy as np
import pytest

sklearn_checks = pytest.importorskip("sklearn.utils.estimator_checks")

from sklearn.base import clone, is_outlier_detector  # noqa: E402
from sklearn.utils import get_tags  # noqa: E402

from rda_ext import RobustAutoencoder  # noqa: E402

# Small and fast: scikit-learn's checks fit a few hundred times on tiny data.
# float32 whatever the CPU: under "auto" a CPU with fast bfloat16 rounds the network's output
# coarsely enough to hide the last-bit difference the sample-order check trips on.
FAST = dict(hidden=(4,), outer_iter=2, inner_epochs=1, batch_size=32, output_activation="linear",
            device="cpu", precision="float32", random_state=0)

PYOD_LABELS = (
    "PyOD's convention, which the estimator follows: predict gives 1 for an outlier and 0 for an "
    "inlier, and decision_function grows with outlyingness; scikit-learn's outlier checks expect "
    "-1/+1 and a decision_function that is negative for outliers"
)
EXPECTED_FAILURES = {
    "check_outliers_train": PYOD_LABELS,
    "check_outliers_fit_predict": PYOD_LABELS,
    "check_methods_sample_order_invariance": (
        "transform is the hidden code of a float32 network: the matrix product rounds the last bit "
        "differently when the rows come in another order (seen: 1 ulp in 1 of 80 values), while "
        "the check compares with rtol 1e-7"
    ),
    "check_methods_subset_invariance": (
        "decision_function's default score holds the Mahalanobis distance of that float32 code: the "
        "last-bit difference of a product over fewer rows, multiplied by the inverse covariance of "
        "the code, shows at about 1e-5 (seen: 7e-6 in 1 of 20 rows), while the check compares with "
        "rtol 1e-7; with outlier_score=\"residual\" the check passes"
    ),
}


@sklearn_checks.parametrize_with_checks(
    [RobustAutoencoder(**FAST)], expected_failed_checks=lambda est: EXPECTED_FAILURES
)
def test_scikit_learn_estimator_checks(estimator, check):
    check(estimator)


def test_declares_itself_an_outlier_detector():
    est = RobustAutoencoder()
    assert is_outlier_detector(est)
    assert est._estimator_type == "outlier_detector"
    tags = get_tags(est)
    assert tags.estimator_type == "outlier_detector" and not tags.target_tags.required
    assert not tags.input_tags.allow_nan


def test_expected_failures_really_are_the_pyod_convention():
    X = np.random.default_rng(0).random((60, 5)).astype(np.float32)
    est = clone(RobustAutoencoder(**FAST)).fit(X)
    assert set(np.unique(est.predict(X))) <= {0, 1}
    scores = est.decision_function(X)
    assert np.all(scores >= 0) and np.array_equal(est.predict(X), (scores > est.threshold_).astype(np.int64))
