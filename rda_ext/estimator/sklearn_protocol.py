"""What scikit-learn (and PyOD, which follows it) expects of an estimator: parameters read from the
constructor's signature, ``get_params``/``set_params``, a repr of the changed parameters, the
estimator tags of an outlier detector, and ``NotFittedError`` before ``fit``. scikit-learn itself
is optional."""

from __future__ import annotations

import inspect

try:
    from sklearn.exceptions import NotFittedError
except ImportError:

    class NotFittedError(ValueError, AttributeError):
        """A fitted-only method was called before ``fit`` (scikit-learn's class when installed)."""


class SklearnProtocol:
    """Mixin: the constructor's keyword parameters are the estimator's parameters."""

    _estimator_type = "outlier_detector"

    @classmethod
    def _param_names(cls) -> list[str]:
        params = inspect.signature(cls.__init__).parameters.values()
        return [p.name for p in params if p.name != "self" and p.kind == p.POSITIONAL_OR_KEYWORD]

    def get_params(self, deep: bool = True) -> dict:
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params):
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(f"unknown parameter {name!r} for {type(self).__name__}; valid: {', '.join(valid)}")
            setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
        changed = {k: v for k, v in self.get_params().items() if not _same(v, defaults.get(k))}
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in changed.items())})"

    def __sklearn_tags__(self):
        from sklearn.utils import InputTags, Tags, TargetTags, TransformerTags

        return Tags(
            estimator_type="outlier_detector",
            target_tags=TargetTags(required=False),
            # transform gives the hidden code of the autoencoder
            transformer_tags=TransformerTags() if hasattr(self, "transform") else None,
            input_tags=InputTags(allow_nan=False, two_d_array=True),
        )

    def _check_fitted(self) -> None:
        check_fitted(self)


def check_fitted(est) -> None:
    """NotFittedError where ``est`` has not been fitted."""
    if not hasattr(est, "model_"):
        raise NotFittedError(
            f"this {type(est).__name__} instance is not fitted yet: call fit with appropriate arguments first"
        )


def _same(a, b) -> bool:
    try:
        return bool(a == b) and type(a) is type(b)
    except Exception:
        return False
