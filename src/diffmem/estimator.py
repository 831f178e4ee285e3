"""scikit-learn's estimator contract, shared by the detectors and concept vectors: the constructor
only stores its parameters (validation and defaults happen in ``fit``/``score``), ``get_params`` returns
exactly them and ``set_params`` sets them, so ``sklearn.base.clone`` builds an unfitted twin; fitted
attributes end in ``_``."""

from __future__ import annotations

import inspect

from diffmem.errors import check


class Params:
    """``get_params`` / ``set_params`` over the parameters of ``__init__``."""

    @classmethod
    def _param_names(cls) -> list[str]:
        return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]

    def get_params(self, deep: bool = False) -> dict:
        """The constructor's parameters, as given."""
        return {k: getattr(self, k) for k in self._param_names()}

    def set_params(self, **params):
        names = self._param_names()
        for k, v in params.items():
            check(k in names, f"{type(self).__name__}: no parameter {k!r}")
            setattr(self, k, v)
        return self
