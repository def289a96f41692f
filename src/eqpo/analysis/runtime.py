"""Runtime split (paper Fig. 2(d)) and the F1 vs equity Pareto view of checkpoints (Fig. 2(e)).

- :func:`runtime_split`: mean seconds per training step in generation, policy update, advantage
  estimation and the rest, per (model, method), with the advantage share (from steps.jsonl).
- :func:`pareto_points` / :func:`pareto_mask`: every validation checkpoint as a point (F1,
  1 - delta_F1), flagged when on the Pareto frontier of its base model and when it is a run's last.
- :func:`plot_runtime_split` / :func:`plot_pareto`: the two figures, drawn with the styling of
  :mod:`eqpo.analysis.figures` (also reachable as ``figures.plot_runtime_split`` /
  ``figures.plot_pareto``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from .figures import (
    FONT_SIZE,
    _empty_figure,
    _figure_legend,
    _grid,
    _new_figure,
    _ordered_models,
    _styled,
    save_figure,
)
from .style import method_color, method_label, method_marker, model_label, order_methods
from .tables import timing_summary

__all__ = ["pareto_mask", "pareto_points", "plot_pareto", "plot_runtime_split", "runtime_split"]

# Phase -> (column of steps.jsonl, legend label, colour). Neutral greys for the big phases, yellow
# for the (usually tiny) advantage segment; none of them is a method colour (those mark the ticks).
PHASES: tuple[tuple[str, str, str], ...] = (
    ("time_generate_s", "generation (rollouts)", "#BDBDBD"),
    ("time_update_s", "policy update", "#6E6E6E"),
    ("time_advantage_s", "advantage estimation", "#F0E442"),
    ("time_other_s", "other (reward, logging)", "#FFFFFF"),
)
ANNOTATION_COLOR = "#222222"


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
    other = (summary["time_step_s"] - summary["time_generate_s"] - summary["time_update_s"]
             - summary["time_advantage_s"]).clip(lower=0.0)
    summary["time_other_s"] = other
    columns = ["time_generate_s", "time_update_s", "time_advantage_s", "time_other_s",
               "time_step_s", "advantage_share", "n_steps", "n_seeds"]
    return summary[columns]


def _share_text(share: float) -> str:
    """Advantage share (a fraction) as a short percentage: '0.083%', '12%', '<0.001%'."""
    if not np.isfinite(share):
        return "n/a"
    percent = 100.0 * share
    if percent == 0:
        return "0%"
    if percent < 0.001:
        return "<0.001%"
    return f"{percent:.2g}%" if percent < 10 else f"{percent:.0f}%"


@_styled
def plot_runtime_split(steps_df: pd.DataFrame, out_stem: str | Path,
                       methods: Sequence[str] | None = None) -> list[Path]:
    """Paper Fig. 2(d): mean time per training step split into generation, policy update,
    advantage estimation and the rest; one panel per base model, one stacked bar per method, the
    advantage share of the step time written above each bar. Returns [png, pdf] paths.
    """
    if steps_df is None or steps_df.empty:
        return _empty_figure(out_stem, "no per-step timings (steps.jsonl) to plot")
    split = runtime_split(steps_df, methods)
    models = list(dict.fromkeys(split.index.get_level_values("model")))
    n_methods = max(len(split.loc[m]) for m in models)
    fig = _new_figure(max(3.8, 0.62 * n_methods + 1.4) * len(models), 3.6)
    axes = _grid(fig, 1, len(models))
    shown_other = bool((split["time_other_s"] > 0.005 * split["time_step_s"]).any())
    for c, model in enumerate(models):
        ax = axes[0, c]
        rows = split.loc[model]
        rows = rows.loc[[m for m in order_methods(rows.index)]]
        x = np.arange(len(rows))
        bottom = np.zeros(len(rows))
        for column, label, color in PHASES:
            if column == "time_other_s" and not shown_other:
                continue
            values = rows[column].to_numpy(dtype=float)
            ax.bar(x, values, bottom=bottom, width=0.7, color=color, edgecolor="#444444",
                   linewidth=0.5, label=label, zorder=2)
            bottom += values
        top = float(np.nanmax(bottom)) if len(bottom) else 1.0
        for xi, height, share in zip(x, bottom, rows["advantage_share"]):
            ax.text(xi, height + 0.02 * top, _share_text(share), ha="center", va="bottom",
                    fontsize=FONT_SIZE - 2, color=ANNOTATION_COLOR)
        ax.set_ylim(0, top * 1.16 if top > 0 else 1.0)
        ax.set_xticks(x, [method_label(m) for m in rows.index], rotation=35, ha="right",
                      rotation_mode="anchor")
        for tick, method in zip(ax.get_xticklabels(), rows.index):
            tick.set_color(method_color(method))
            tick.set_fontweight("bold")
        ax.set_title(model_label(model))
        ax.grid(axis="y", alpha=0.3, zorder=0)
        ax.set_axisbelow(True)
    axes[0, 0].set_ylabel("seconds per training step (mean)")
    handles = [Patch(facecolor=color, edgecolor="#444444", linewidth=0.5, label=label)
               for column, label, color in PHASES
               if column != "time_other_s" or shown_other]
    handles.append(Line2D([], [], ls="none", marker="$\\%$", color=ANNOTATION_COLOR, ms=7,
                          label="above bar: advantage share of step time"))
    _figure_legend(fig, handles, ncol=min(len(handles), 3))
    return save_figure(fig, out_stem)


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


@_styled
def plot_pareto(dynamics_df: pd.DataFrame, out_stem: str | Path,
                methods: Sequence[str] | None = None) -> list[Path]:
    """Paper Fig. 2(e): F1 against 1 - delta_F1 for every validation checkpoint (both higher is
    better), one panel per base model. Each method's checkpoints in its colour and marker (a thin
    line joins a run's checkpoints in step order), the last checkpoint of every run as a large
    star, and the Pareto frontier over all checkpoints of the panel as a dashed staircase.
    Returns [png, pdf] paths.
    """
    if dynamics_df is None or dynamics_df.empty:
        return _empty_figure(out_stem, "no validation logs (dynamics.jsonl) to plot")
    points = pareto_points(dynamics_df, methods)
    if points.empty:
        return _empty_figure(out_stem, "no checkpoint with both F1 and ΔF1 to plot")
    models = _ordered_models(points)
    method_order = list(methods) if methods is not None else order_methods(points["method"])
    method_order = [m for m in method_order if m in set(points["method"])]
    fig = _new_figure(4.4 * len(models), 4.0)
    axes = _grid(fig, 1, len(models))
    for c, model in enumerate(models):
        ax = axes[0, c]
        at = points[points["model"] == model]
        for method in method_order:
            runs = at[at["method"] == method]
            color, marker = method_color(method), method_marker(method)
            for _, run in runs.groupby("seed", sort=True):
                run = run.sort_values("step")
                ax.plot(run["F1"], run["equity"], color=color, lw=0.6, alpha=0.3, zorder=1)
            ax.scatter(runs["F1"], runs["equity"], color=color, marker=marker, s=16, alpha=0.55,
                       linewidths=0, zorder=2)
            final = runs[runs["final"]]
            ax.scatter(final["F1"], final["equity"], color=color, marker="*", s=150,
                       edgecolors="black", linewidths=0.7, zorder=4)
        front = at[at["on_front"]].sort_values("F1")
        if len(front):
            # boundary of the dominated region: at F1 = x the best equity among points with
            # F1 >= x, so each step drops at a frontier point and runs right at the next level
            ax.step(front["F1"], front["equity"], where="pre", color="black", ls="--", lw=1.1,
                    zorder=3)
            ax.scatter(front["F1"], front["equity"], facecolors="none", edgecolors="black",
                       s=42, linewidths=0.8, zorder=3)
        _pad_limits(ax, at["F1"].to_numpy(), at["equity"].to_numpy())
        ax.set_title(model_label(model))
        ax.set_xlabel("F1 ↑")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("1 − ΔF1 (equity) ↑")
    handles = [Line2D([], [], color=method_color(m), marker=method_marker(m), ls="-", lw=0.7,
                      ms=5, label=method_label(m)) for m in method_order]
    handles += [
        Line2D([], [], color="grey", marker="*", ms=12, mec="black", mew=0.7, ls="none",
               label="last checkpoint of a run"),
        Line2D([], [], color="black", ls="--", lw=1.1, marker="o", mfc="none", ms=5,
               label="Pareto frontier (all checkpoints)"),
    ]
    _figure_legend(fig, handles, ncol=min(len(handles), 5))
    return save_figure(fig, out_stem)


def _pad_limits(ax, x: np.ndarray, y: np.ndarray, pad: float = 0.08) -> None:
    """Axis limits around the data with a margin (room for the stars)."""
    for values, setter in ((x, ax.set_xlim), (y, ax.set_ylim)):
        finite = values[np.isfinite(values)]
        if not len(finite):
            continue
        lo, hi = float(finite.min()), float(finite.max())
        span = hi - lo if hi > lo else max(abs(hi), 1e-3) * 0.1
        setter(lo - pad * span, hi + pad * span)
