"""Which point of a run Table 2 reports (config ``report.point``).

The authors' published rows are validation-log values, not a final checkpoint scored on a test split:
their Fig. 2 series (mirl ``visualizations/fairness_tradeoff.py``, commit a89125d8) validate every
5 steps, and the Qwen2.5-VL FairGRPO row of paper Table 2 equals its step-90 validation (the run's
last); their later ``scripts/get_metrics.py`` (qoq_med3) averages the validations of steps 60-120.
So a run's Table 2 row is one of:

- ``validation_step`` (default): the validation at ``report.step``, or at each run's last validation
  when ``report.step`` is null (the run's step budget, ``train.steps``, as in the published row);
- ``validation_mean``: the mean of the validations with ``report.steps[0] <= step <=
  report.steps[1]``;
- ``final_test``: the final checkpoint scored on the test split (``metrics.json``), our addition.

The final-checkpoint test scores are always written too, in their own table (``table2_test``).
Bootstrap intervals, paired tests and the per-group tables (Table 4, Tables 5-17) need per-answer
predictions, which exist for the test split only: they always describe the final checkpoint on test.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from eqpo.core.metrics import TABLE2_COLUMNS

POINTS = ("validation_step", "validation_mean", "final_test")
DEFAULT_MEAN_STEPS = (60, 120)


@dataclass(frozen=True)
class ReportPoint:
    """point: one of :data:`POINTS`; step: the validation step of ``validation_step`` (None: each
    run's last); steps: the inclusive step range of ``validation_mean``."""

    point: str = "validation_step"
    step: int | None = None
    steps: tuple[int, int] = DEFAULT_MEAN_STEPS

    def __post_init__(self):
        if self.point not in POINTS:
            raise ValueError(f"report.point must be one of {list(POINTS)}, got {self.point!r}")
        if self.step is not None and self.step < 0:
            raise ValueError(f"report.step must be a step >= 0 or null (each run's last validation), got {self.step}")
        lo, hi = self.steps
        if lo > hi:
            raise ValueError(f"report.steps must be [first, last] with first <= last, got {list(self.steps)}")

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None) -> ReportPoint:
        block = (config or {}).get("report") or {}
        steps = block.get("steps") or DEFAULT_MEAN_STEPS
        if len(steps) != 2:
            raise ValueError(f"report.steps must be [first, last], got {steps!r}")
        step = block.get("step")
        return cls(
            point=block.get("point", "validation_step"),
            step=None if step is None else int(step),
            steps=(int(steps[0]), int(steps[1])),
        )

    @property
    def from_validation(self) -> bool:
        return self.point != "final_test"

    def describe(self) -> str:
        """One line saying which point the numbers are."""
        if self.point == "final_test":
            return "Point: the final checkpoint, scored on the test split (report.point = final_test)."
        if self.point == "validation_mean":
            return (
                f"Point: the mean of each run's validations at steps {self.steps[0]}-{self.steps[1]}, on the "
                "validation split (report.point = validation_mean)."
            )
        where = f"step {self.step}" if self.step is not None else "each run's last validation step"
        return f"Point: the validation at {where}, on the validation split (report.point = validation_step)."


FINAL_TEST = ReportPoint("final_test")


def _run_label(key: tuple) -> str:
    model, method, seed = key
    return f"{model}/{method}/seed{seed}"


def validation_rows(dynamics: pd.DataFrame, point: ReportPoint) -> pd.DataFrame:
    """One row per run (model, method, seed, the 11 :data:`TABLE2_COLUMNS`, ``steps``: the
    validation steps used, as text) from :func:`eqpo.analysis.collect.read_dynamics` output.

    A run without a validation at ``point.step``, or none inside ``point.steps``, is an error that
    names the run and the steps it has.
    """
    if not point.from_validation:
        raise ValueError("validation_rows is for report.point validation_step or validation_mean")
    rows = []
    for key, runs in dynamics.groupby(["model", "method", "seed"], sort=False):
        runs = runs.drop_duplicates("step", keep="last").sort_values("step")
        have = [int(s) for s in runs["step"]]
        if point.point == "validation_step":
            step = have[-1] if point.step is None else point.step
            chosen = runs[runs["step"] == step]
            if chosen.empty:
                raise ValueError(
                    f"run {_run_label(key)} has no validation at step {step} (report.step); its "
                    f"validations are at steps {have}"
                )
        else:
            lo, hi = point.steps
            chosen = runs[(runs["step"] >= lo) & (runs["step"] <= hi)]
            if chosen.empty:
                raise ValueError(
                    f"run {_run_label(key)} has no validation in steps {lo}-{hi} (report.steps); its "
                    f"validations are at steps {have}"
                )
        values = chosen[list(TABLE2_COLUMNS)].astype(float).mean()
        rows.append(
            {
                "model": key[0],
                "method": key[1],
                "seed": int(key[2]),
                **values.to_dict(),
                "steps": ",".join(str(int(s)) for s in chosen["step"]),
            }
        )
    return pd.DataFrame(rows, columns=["model", "method", "seed", *TABLE2_COLUMNS, "steps"])


def reported_rows(metrics: pd.DataFrame, dynamics: pd.DataFrame, point: ReportPoint) -> pd.DataFrame:
    """The per-run Table 2 rows of ``point``: :func:`validation_rows` of ``dynamics``, or the test
    summaries of ``metrics`` (:func:`eqpo.analysis.collect.read_metrics` output) for ``final_test``.
    A validation point for runs that have metrics but no validation record is an error naming them."""
    if not point.from_validation:
        return metrics
    keys = ["model", "method", "seed"]
    have = set(map(tuple, dynamics[keys].itertuples(index=False))) if len(dynamics) else set()
    missing = [k for k in map(tuple, metrics[keys].itertuples(index=False))] if len(metrics) else []
    missing = [_run_label(k) for k in missing if k not in have]
    if missing:
        raise ValueError(
            f"report.point = {point.point} reads each run's validations (dynamics.jsonl), but "
            f"{', '.join(missing)} has none; give the runs' dynamics.jsonl or set "
            "report.point: final_test"
        )
    return validation_rows(dynamics, point)
