"""The numbers behind the runtime split (paper Fig. 2(d)) and the F1 vs equity Pareto view of
checkpoints (Fig. 2(e)); :mod:`eqpo.analysis.figures` draws them.

- :func:`runtime_split`: mean seconds per training step in generation, policy update, advantage
  estimation and the rest, per (model, method), with the advantage share (from steps.jsonl).
- :func:`pareto_points` / :func:`pareto_mask`: every validation checkpoint as a point (F1,
  1 - delta_F1), flagged when on the Pareto frontier of its base model and when it is a run's last.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from eqpo.analysis.tables import timing_summary

__all__ = ["pareto_mask", "pareto_points", "runtime_split"]


# ----------------------------------------------------------------------------------------------
# Runtime split
# ----------------------------------------------------------------------------------------------


def runtime_split(steps_df: pd.DataFrame, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean seconds per step in each phase, per (model, method).

    steps_df: :func:`eqpo.analysis.collect.read_steps` output. Returns a (model, method)-indexed
    frame (models in order of appearance, methods in METHOD_ORDER) with time_generate_s,
    time_update_s, time_advantage_s, time_other_s (time_step_s minus the three, floored at 0),
    time_step_s (means over steps and seeds), advantage_share (sum of advantage time / sum of step
    time, a fraction), n_steps and n_seeds.
    """
    summary = timing_summary(steps_df, methods)
    other = (
        summary["time_step_s"] - summary["time_generate_s"] - summary["time_update_s"] - summary["time_advantage_s"]
    ).clip(lower=0.0)
    summary["time_other_s"] = other
    columns = [
        "time_generate_s",
        "time_update_s",
        "time_advantage_s",
        "time_other_s",
        "time_step_s",
        "advantage_share",
        "n_steps",
        "n_seeds",
    ]
    return summary[columns]


# ----------------------------------------------------------------------------------------------
# Pareto view of checkpoints
# ----------------------------------------------------------------------------------------------


def pareto_mask(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n,) bool: True for the points not dominated when both x and y are to be maximised.

    A point is dominated when another has x and y at least as large and one of them larger;
    of several identical points one is kept. NaN points are never on the frontier.
    """
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    mask = np.zeros(len(x), dtype=bool)
    finite = np.flatnonzero(np.isfinite(x) & np.isfinite(y))
    order = finite[np.lexsort((-y[finite], -x[finite]))]  # x descending, then y descending
    best_y = -np.inf
    for i in order:
        if y[i] > best_y:
            mask[i] = True
            best_y = y[i]
    return mask


def pareto_points(dynamics_df: pd.DataFrame, methods: Sequence[str] | None = None) -> pd.DataFrame:
    """Every validation checkpoint as a point of the F1 vs equity plane.

    dynamics_df: :func:`eqpo.analysis.collect.read_dynamics` output. Returns columns model,
    method, seed, step, F1, delta_F1, equity (= 1 - delta_F1; higher is fairer), final (True on
    each run's last logged step) and on_front (on the Pareto frontier of all checkpoints of its
    base model, both F1 and equity maximised). Rows with NaN F1 or delta_F1 are dropped.
    """
    frame = dynamics_df if methods is None else dynamics_df[dynamics_df["method"].isin(methods)]
    keys = ["model", "method", "seed"]
    out = frame[[*keys, "step", "F1", "delta_F1"]].copy()
    out[["F1", "delta_F1"]] = out[["F1", "delta_F1"]].astype(float)
    out = out.dropna(subset=["F1", "delta_F1"]).reset_index(drop=True)
    out["equity"] = 1.0 - out["delta_F1"]
    last = out.groupby(keys, sort=False)["step"].transform("max")
    out["final"] = out["step"] == last
    out["on_front"] = False
    for _, rows in out.groupby("model", sort=False):
        mask = pareto_mask(rows["F1"].to_numpy(), rows["equity"].to_numpy())
        out.loc[rows.index[mask], "on_front"] = True
    return out
