"""The training methods, one record each: what every table, figure, backend and rule knows of a method.

:data:`METHODS` lists them in the order of table rows and legend entries (baselines first, then the
EQPO variants, then DRPO). Each :class:`Method` says

- ``key``: the id in ``config.yaml``'s ``methods:``, the run paths and :func:`eqpo.core.advantages.make_estimator`;
- ``label``: the name printed in our tables and figures;
- ``paper_names``: every spelling the paper uses for the row it is compared with (the paper calls
  EQPO "FairGRPO" and EQPO-ND "FairGRPO_ND"); empty for a method the paper does not report;
- ``color`` / ``marker``: fixed for every figure. Colours come from the Okabe-Ito palette
  (distinguishable under the common colour-vision deficiencies): EQPO vermillion (the strongest
  colour), GRPO the contrasting blue, EQPO-ND a lighter warm orange; grey for GRPO+DRO, black for
  DRPO. Markers let a greyscale print tell the methods apart;
- ``verl_estimator``: the ``algorithm.adv_estimator`` that runs it under verl, and ``verl_builtin``:
  whether that is verl's own estimator (else :mod:`eqpo.backends.verl.estimators` registers it);
- ``clusters``: whether the estimator forms implicit groups (K-means over reward vectors), so the run
  writes cluster assignments for the stability analysis;
- ``baseline``: the paper's family of a baseline ("grpo"; "rl" for the other RL estimators;
  "bias_mitigated" for resampling and Group DRO), None for the EQPO variants and DRPO, which the
  paper's claims compare against the baselines;
- ``resampled``: trained on the demographically resampled training set (``train_rs``);
- ``emphasised``: one of the two methods the paper compares most (drawn thicker, paper Fig. 3).

The estimators themselves are registered in :mod:`eqpo.core.advantages` (a user may register more; a
method without a record here gets a neutral colour and its key as label).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    key: str
    label: str
    paper_names: tuple[str, ...]
    color: str
    marker: str
    verl_estimator: str
    verl_builtin: bool
    clusters: bool = False
    baseline: str | None = None
    resampled: bool = False
    emphasised: bool = False

    @property
    def is_baseline(self) -> bool:
        return self.baseline is not None


METHODS: tuple[Method, ...] = (
    Method("grpo", "GRPO", ("GRPO",), "#0072B2", "s", "grpo", True, baseline="grpo", emphasised=True),
    Method("rloo", "RLOO", ("RLOO",), "#56B4E9", "v", "rloo", True, baseline="rl"),
    # verl's reinforce_plus_plus whitens over tokens, so it weights long responses more than
    # eqpo.core.advantages' reinforce_pp does (one advantage per response).
    Method("reinforce_pp", "REINFORCE++", ("REINFORCE++",), "#009E73", "P", "reinforce_plus_plus", True, baseline="rl"),
    Method("grpo_rs", "GRPO+RS", ("GRPO+RS",), "#CC79A7", "D", "grpo", True, baseline="bias_mitigated", resampled=True),
    Method("grpo_dro", "GRPO+DRO", ("GRPO+DRO",), "#7F7F7F", "X", "grpo_dro", False, baseline="bias_mitigated"),
    # The qoq_med3 estimator (inverse-size domain mean, clamps); released after the paper's numbers.
    Method("eqpo_nd", "EQPO-ND", (), "#E69F00", "^", "eqpo_nd", False, clusters=True),
    # EQPO with every prompt unlabeled: the authors' paper-era EQPO-ND run (DDVD233/mirl, "Add no
    # demographic training", 2025-08-27: FairGRPO on a training file without demographics), so the
    # paper's EQPO-ND row is compared with this one.
    Method(
        "eqpo_nodemo",
        "EQPO-ND (no-demo file)",
        ("EQPO-ND", "FairGRPO_ND", "FairGRPO-ND"),
        "#F0E442",
        "<",
        "eqpo_nodemo",
        False,
        clusters=True,
    ),
    Method("eqpo", "EQPO", ("EQPO", "FairGRPO"), "#D55E00", "o", "eqpo", False, clusters=True, emphasised=True),
    Method("drpo", "DRPO", (), "#000000", "*", "drpo", False, clusters=True),
)

BY_KEY: dict[str, Method] = {m.key: m for m in METHODS}
#: Method keys in table and legend order.
METHOD_KEYS: tuple[str, ...] = tuple(BY_KEY)
#: Methods whose estimator forms implicit groups (their runs log cluster assignments).
CLUSTERING: tuple[str, ...] = tuple(m.key for m in METHODS if m.clusters)
#: The paper's baselines, and the two families its claims name.
BASELINES: tuple[str, ...] = tuple(m.key for m in METHODS if m.is_baseline)
RL_BASELINES: tuple[str, ...] = tuple(m.key for m in METHODS if m.baseline == "rl")
BIAS_MITIGATED: tuple[str, ...] = tuple(m.key for m in METHODS if m.baseline == "bias_mitigated")
#: The pair the paper compares most (per-group F1, thicker lines).
EMPHASISED: tuple[str, ...] = tuple(m.key for m in METHODS if m.emphasised)
#: Methods trained on the demographically resampled training set.
RESAMPLED: tuple[str, ...] = tuple(m.key for m in METHODS if m.resampled)
#: Paper method name (every spelling) -> our method key.
PAPER_NAMES: dict[str, str] = {name: m.key for m in METHODS for name in m.paper_names}
#: verl estimator name -> method, for the estimators eqpo.backends.verl registers with verl.
VERL_REGISTERED: dict[str, str] = {m.verl_estimator: m.key for m in METHODS if not m.verl_builtin}


def get_method(key: str) -> Method:
    """The record of a method key; a clear error for an unknown one."""
    try:
        return BY_KEY[key]
    except KeyError:
        raise ValueError(f"unknown method {key!r}; choose one of {list(METHOD_KEYS)}") from None


__all__ = [
    "BASELINES",
    "BIAS_MITIGATED",
    "BY_KEY",
    "CLUSTERING",
    "EMPHASISED",
    "METHODS",
    "METHOD_KEYS",
    "Method",
    "PAPER_NAMES",
    "RESAMPLED",
    "RL_BASELINES",
    "VERL_REGISTERED",
    "get_method",
]
