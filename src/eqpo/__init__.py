"""EQPO (FairGRPO): equitable group-relative advantage estimation for clinical reasoning.

Submodules: :mod:`eqpo.advantages` (estimators), :mod:`eqpo.groups` (demographic and latent
groups), :mod:`eqpo.rewards` (answer parsing and reward), :mod:`eqpo.metrics` (fairness metrics),
:mod:`eqpo.vocabularies` (the paper's datasets).
"""

from .advantages import ESTIMATORS, make_estimator
from .rewards import score_response

__version__ = "0.1.0"
__all__ = ["ESTIMATORS", "make_estimator", "score_response", "__version__"]
