"""EQPO (FairGRPO): equitable group-relative advantage estimation for clinical reasoning.

Submodules: :mod:`eqpo.core.advantages` (estimators), :mod:`eqpo.core.groups` (demographic and latent
groups), :mod:`eqpo.core.rewards` (answer parsing and reward), :mod:`eqpo.core.metrics` (fairness metrics),
:mod:`eqpo.core.vocabularies` (the paper's datasets).
"""

from eqpo.core.advantages import ESTIMATORS, make_estimator
from eqpo.core.rewards import score_response

__version__ = "0.1.0"
__all__ = ["ESTIMATORS", "make_estimator", "score_response", "__version__"]
