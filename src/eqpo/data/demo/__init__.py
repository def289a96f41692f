"""Synthetic stand-ins for the paper's data, so the whole pipeline runs on a CPU without images.

:mod:`eqpo.data.demo.cohort` builds a deterministic demo cohort that mirrors the seven datasets (sizes,
label vocabularies and priors, demographic mixes, patient-level splits, masked demographics), with a
numeric feature vector per sample whose class signal differs by demographic group.

The names below are loaded lazily, so ``python -m eqpo.data.demo.cohort`` runs without a runpy warning.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["CohortConfig", "describe_cohort", "feature_columns", "make_cohort"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module(".cohort", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
