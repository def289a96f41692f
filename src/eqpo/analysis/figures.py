"""Paper figures from the collected run frames (docs/method.md §5).

Every ``draw_*`` function draws with matplotlib's object-oriented API on a fresh ``Figure`` (Agg
canvas; no pyplot state, no global backend switch) and returns it; its ``plot_*`` twin takes the
same arguments plus ``out_stem``, writes ``<out_stem>.png`` (150 dpi) and ``<out_stem>.pdf`` and
returns the two paths. Methods use the colours and names of :mod:`eqpo.analysis.style` everywhere;
a frame with nothing to plot gives a figure that says so (so a pipeline rule still gets its outputs).

- :func:`draw_training_dynamics`: F1, Acc and delta_F1 over training steps (rows = base models).
- :func:`draw_group_f1`: per-group F1, GRPO vs EQPO (paper Table 4 / Fig. 3), drawn with seaborn:
  bars are means over seeds with 95% bootstrap intervals, dots the seeds.
- :func:`draw_cluster_stability`: ARI / NMI of implicit clusters vs true groups, consecutive-step
  ARI and the chosen k over steps.
- :func:`draw_runtime_split`: time per training step by phase (paper Fig. 2(d)).
- :func:`draw_pareto`: F1 vs 1 - delta_F1 over validation checkpoints (paper Fig. 2(e)).

The numbers behind the last two come from :mod:`eqpo.analysis.runtime`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from eqpo.analysis.runtime import pareto_points, runtime_split
from eqpo.analysis.style import (
    EMPHASISED_METHODS,
    method_color,
    method_label,
    method_marker,
    model_label,
    order_methods,
)
from eqpo.core.groups import AGE_BINS, SEXES
from eqpo.core.methods import EMPHASISED
from eqpo.core.metrics import PAPER_SCALE

DPI = 150
FONT_SIZE = 9
# Metric -> panel title (the scale the values are drawn at and the better direction).
METRIC_TITLES: dict[str, str] = {
    "F1": "F1 ↑",
    "Acc": "Accuracy (%) ↑",
    "delta_F1": "ΔF1: max − min F1 over groups ↓",
    "sigma_F1": "σF1: std of F1 over groups ↓",
    "delta_Acc": "ΔAcc (%) ↓",
    "sigma_Acc": "σAcc (%) ↓",
    "PP": "PP (%) ↓",
    "EOD": "EOD (%) ↓",
    "FPR_diff": "FPR diff (%) ↓",
    "Acc_ES": "Acc ES (%) ↑",
    "F1_ES": "F1 ES ↑",
}
# Group key -> x tick label (age bins per docs/method.md §1).
GROUP_TICKS: dict[str, str] = {
    "a1": "a1\n≤25",
    "a2": "a2\n26–50",
    "a3": "a3\n51–75",
    "a4": "a4\n>75",
    "F": "F",
    "M": "M",
    "all": "all",
}
MODEL_LINESTYLES = ("-", "--", ":", "-.")
STABILITY_PANELS = (
    ("ari", "ARI\nclusters vs true groups"),
    ("nmi", "NMI\nclusters vs true groups"),
    ("consecutive_ari", "ARI\nvs previous logged step"),
    ("k", "chosen k"),
)
_RC = {
    "font.size": FONT_SIZE,
    "axes.titlesize": FONT_SIZE + 1,
    "axes.labelsize": FONT_SIZE,
    "legend.fontsize": FONT_SIZE,
    "xtick.labelsize": FONT_SIZE - 1,
    "ytick.labelsize": FONT_SIZE - 1,
}


# ----------------------------------------------------------------------------------------------
# Shared helpers
# ----------------------------------------------------------------------------------------------


def _styled(function):
    """Run a plotting function under the module's font sizes (rcParams restored afterwards)."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        with matplotlib.rc_context(_RC):
            return function(*args, **kwargs)

    return wrapper


def _new_figure(width: float, height: float) -> Figure:
    """Empty figure of width x height inches with constrained layout."""
    return Figure(figsize=(width, height), layout="constrained")


def save_figure(fig: Figure, out_stem: str | Path) -> list[Path]:
    """Write ``<out_stem>.png`` (150 dpi) and ``<out_stem>.pdf``; returns [png, pdf] paths."""
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [out_stem.with_name(out_stem.name + ext) for ext in (".png", ".pdf")]
    for path in paths:
        fig.savefig(path, dpi=DPI)
    return paths


def _message_figure(message: str) -> Figure:
    """A small figure that only states ``message`` (a figure rule still gets its outputs)."""
    fig = _new_figure(5, 1.6)
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=FONT_SIZE + 1)
    return fig


def _writer(draw):
    """``plot_<name>(frame, out_stem, ...)`` from ``draw_<name>(frame, ...)``: draws under the
    module's font sizes, writes ``<out_stem>.png`` and ``.pdf`` and returns the two paths."""

    @functools.wraps(draw)
    def plot(frame: pd.DataFrame, out_stem: str | Path, *args, **kwargs) -> list[Path]:
        return save_figure(draw(frame, *args, **kwargs), out_stem)

    plot.__name__ = plot.__qualname__ = draw.__name__.replace("draw_", "plot_", 1)
    plot.__doc__ = (
        f"Draw :func:`{draw.__name__}` and write it to ``<out_stem>.png`` and ``.pdf``; returns the [png, pdf] paths."
    )
    return plot


def _grid(fig: Figure, rows: int, cols: int, **kwargs) -> np.ndarray:
    """(rows, cols) array of axes, whatever the grid size."""
    return np.asarray(fig.subplots(rows, cols, squeeze=False, **kwargs))


def _seed_band(frame: pd.DataFrame, x: str, y: str) -> pd.DataFrame:
    """Mean, min, max of ``y`` over seeds at each ``x``: columns x, mean, lo, hi, n (x sorted)."""
    stats = frame.groupby(x, sort=True)[y].agg(["mean", "min", "max", "count"]).reset_index()
    return stats.rename(columns={"min": "lo", "max": "hi", "count": "n"})


def _method_handles(methods: Sequence[str], markers: bool = False) -> list[Line2D]:
    """One legend line per method, in the given order, with its colour (marker) and paper name."""
    return [
        Line2D(
            [],
            [],
            color=method_color(m),
            lw=_line_width(m),
            label=method_label(m),
            marker=method_marker(m) if markers else None,
            ms=4,
        )
        for m in methods
    ]


def _step_locator(nbins: int) -> MaxNLocator:
    """Integer tick locator preferring multiples of 1, 2, 5, 10 (steps are logged every 5)."""
    return MaxNLocator(nbins=nbins, integer=True, steps=[1, 2, 5, 10])


def _line_width(method: str) -> float:
    """Thicker lines for the two methods the paper compares most (GRPO, EQPO)."""
    return 2.2 if method in EMPHASISED_METHODS else 1.4


def _figure_legend(fig: Figure, handles: list, ncol: int | None = None) -> None:
    """One legend for the whole figure, above the panels."""
    fig.legend(handles=handles, loc="outside upper center", ncol=ncol or len(handles), frameon=False)


def _ordered_models(frame: pd.DataFrame) -> list[str]:
    """Models in order of first appearance."""
    return list(dict.fromkeys(frame["model"]))


# ----------------------------------------------------------------------------------------------
# Training dynamics
# ----------------------------------------------------------------------------------------------


@_styled
def draw_training_dynamics(
    dynamics_df: pd.DataFrame,
    metrics: Sequence[str] = ("F1", "Acc", "delta_F1"),
    methods: Sequence[str] | None = None,
    scale: Mapping[str, float] = PAPER_SCALE,
) -> Figure:
    """Validation metrics over training steps: rows = base models, columns = ``metrics``.

    dynamics_df: :func:`eqpo.analysis.collect.read_dynamics` output (model, method, seed, step,
    metric columns as raw fractions). Each method is one line, the mean over seeds at each logged
    step, with a shaded min-max band where several seeds logged that step. Values are drawn at the
    paper's print scale (Acc in %). One legend for the figure. Returns the figure.
    """
    if dynamics_df.empty:
        return _message_figure("no validation logs (dynamics.jsonl) to plot")
    frame = dynamics_df if methods is None else dynamics_df[dynamics_df["method"].isin(methods)]
    models = _ordered_models(frame)
    method_order = list(methods) if methods is not None else order_methods(frame["method"])
    method_order = [m for m in method_order if m in set(frame["method"])]
    fig = _new_figure(3.9 * len(metrics), 2.7 * len(models) + 0.5)
    axes = _grid(fig, len(models), len(metrics))
    for r, model in enumerate(models):
        for c, metric in enumerate(metrics):
            ax = axes[r, c]
            _draw_dynamics_panel(ax, frame[frame["model"] == model], metric, method_order, scale.get(metric, 1.0))
            ax.set_title(METRIC_TITLES.get(metric, metric))
            ax.set_xlabel("training step")
        axes[r, 0].set_ylabel(model_label(model), fontweight="bold")
    _figure_legend(fig, _method_handles(method_order))
    return fig


def _draw_dynamics_panel(ax, frame: pd.DataFrame, metric: str, methods: Sequence[str], factor: float) -> None:
    """One metric of one model: a mean-over-seeds line (and min-max band) per method."""
    for method in methods:
        runs = frame[frame["method"] == method]
        if runs.empty or metric not in runs.columns:
            continue
        runs = runs.assign(**{metric: runs[metric].astype(float) * factor})
        band = _seed_band(runs, "step", metric)
        color = method_color(method)
        ax.plot(
            band["step"],
            band["mean"],
            color=color,
            lw=_line_width(method),
            label=method_label(method),
            zorder=3 if method in EMPHASISED_METHODS else 2,
        )
        if runs["seed"].nunique() > 1:
            ax.fill_between(band["step"], band["lo"], band["hi"], color=color, alpha=0.15, lw=0)
    ax.grid(alpha=0.3)
    ax.xaxis.set_major_locator(_step_locator(6))


# ----------------------------------------------------------------------------------------------
# Per-group F1
# ----------------------------------------------------------------------------------------------


def _group_order(groups: Sequence[str]) -> list[str]:
    """Age bins a1..a4, then F, M, then anything else (sorted)."""
    known = [*AGE_BINS, *SEXES]
    present = set(groups)
    return [g for g in known if g in present] + sorted(present - set(known), key=str)


@_styled
def draw_group_f1(
    group_df: pd.DataFrame,
    methods: Sequence[str] = EMPHASISED,
    metric: str = "F1",
    max_cols: int = 4,
) -> Figure:
    """Per-group ``metric`` (default F1) per dataset, methods side by side (paper Table 4 / Fig. 3).

    group_df: :func:`eqpo.analysis.collect.read_group_tables` output. One subplot per dataset
    (at most ``max_cols`` per figure row, wrapping), the datasets of each base model on their own
    row(s); x = demographic groups (age bins a1..a4, then sex F, M), one bar per method: the mean
    over seeds with its 95% bootstrap interval over seeds (seaborn, 1000 resamples, seeded; none
    with a single seed), and one dot per seed. Raw values (F1 in [0, 1]), shared y axis. Returns the
    figure.
    """
    frame = group_df[group_df["method"].isin(methods)] if not group_df.empty else group_df
    if frame.empty:
        return _message_figure(f"no per-group results for {', '.join(methods)}")
    method_order = [m for m in methods if m in set(frame["method"])]
    models = _ordered_models(frame)
    layout = []  # (model, [datasets]) per figure row
    for model in models:
        datasets = list(dict.fromkeys(frame.loc[frame["model"] == model, "dataset"]))
        for start in range(0, len(datasets), max_cols):
            layout.append((model, datasets[start : start + max_cols]))
    cols = max(len(d) for _, d in layout)
    fig = _new_figure(max(3.1 * cols, 5.0), 2.6 * len(layout) + 0.5)
    axes = _grid(fig, len(layout), cols, sharey=True)
    top = np.nanmax(frame[metric].to_numpy(dtype=float))
    for r, (model, datasets) in enumerate(layout):
        for c in range(cols):
            ax = axes[r, c]
            if c >= len(datasets):
                ax.set_visible(False)
                continue
            at = frame[(frame["model"] == model) & (frame["dataset"] == datasets[c])]
            _draw_group_bars(ax, at, method_order, metric)
            ax.set_title(str(datasets[c]))
        axes[r, 0].set_ylabel(f"{model_label(model)}\nper-group {metric}")
    axes[0, 0].set_ylim(0, min(1.0, top * 1.15) if np.isfinite(top) and top > 0 else 1.0)
    handles = [Patch(facecolor=method_color(m), label=method_label(m)) for m in method_order]
    if frame.groupby(["model", "method"])["seed"].nunique().max() > 1:
        handles += [
            Line2D([], [], color="black", lw=0.8, marker="_", ms=6, label="95% bootstrap interval over seeds"),
            Line2D([], [], color="grey", ls="none", marker="o", ms=3, label="one seed"),
        ]
    _figure_legend(fig, handles)
    return fig


def _draw_group_bars(ax, frame: pd.DataFrame, methods: Sequence[str], metric: str) -> None:
    """Bars of one dataset: groups on x, one bar per method (mean over seeds with a 95% bootstrap
    interval over seeds), one dot per seed; a dotted line between the age and sex groups."""
    data = frame.assign(group=frame["group"].astype(str), **{metric: frame[metric].astype(float)})
    groups = _group_order(data["group"].unique())
    attributes = data.groupby("group")["attribute"].first()
    palette = {m: method_color(m) for m in methods}
    common = dict(
        data=data,
        x="group",
        y=metric,
        hue="method",
        order=groups,
        hue_order=list(methods),
        palette=palette,
        ax=ax,
        legend=False,
    )
    sns.barplot(
        **common,
        saturation=1.0,
        errorbar=("ci", 95),
        n_boot=1000,
        seed=0,
        capsize=0.15,
        err_kws={"linewidth": 0.8, "color": "black"},
        zorder=2,
    )
    if data.groupby(["method", "group"])["seed"].nunique().max() > 1:
        sns.stripplot(**common, dodge=True, jitter=False, size=3, edgecolor="black", linewidth=0.4, zorder=3)
    for left, (g_left, g_right) in enumerate(zip(groups[:-1], groups[1:], strict=False)):
        if attributes[g_left] != attributes[g_right]:
            ax.axvline(left + 0.5, color="grey", lw=0.8, ls=":")
    ax.set_xticks(range(len(groups)), [GROUP_TICKS.get(g, g) for g in groups])
    ax.set_xlabel("")
    ax.set_ylabel("")
    ax.grid(axis="y", alpha=0.3, zorder=0)


# ----------------------------------------------------------------------------------------------
# Cluster stability
# ----------------------------------------------------------------------------------------------


@_styled
def draw_cluster_stability(
    stability_df: pd.DataFrame,
    methods: Sequence[str] = ("eqpo_nd", "eqpo"),
    max_datasets: int | None = None,
) -> Figure:
    """Implicit-cluster quality over training: rows = ARI and NMI vs the masked true groups, ARI
    with the previous logged step, chosen k; columns = datasets.

    stability_df: :func:`eqpo.analysis.tables.cluster_stability` output. Colour = method, line
    style = base model; each line is the mean over seeds with a min-max band where several seeds
    logged that step. A panel whose values are all NaN (e.g. no labeled prompts) says so.
    Returns the figure.
    """
    frame = stability_df
    if not frame.empty and "method" in frame.columns:
        frame = frame[frame["method"].isin(methods)]
    if frame.empty:
        return _message_figure("no cluster logs (clusters.parquet) to plot")
    frame = frame.copy()
    for column in ("model", "method"):
        if column not in frame.columns:
            frame[column] = ""
    method_order = [m for m in methods if m in set(frame["method"])]
    models = _ordered_models(frame)
    datasets = list(dict.fromkeys(frame["dataset"]))[:max_datasets]
    fig = _new_figure(max(3.0 * len(datasets), 5.5), 2.1 * len(STABILITY_PANELS) + 0.7)
    axes = _grid(fig, len(STABILITY_PANELS), len(datasets), sharex="col")
    for c, dataset in enumerate(datasets):
        for r, (column, title) in enumerate(STABILITY_PANELS):
            ax = axes[r, c]
            _draw_stability_panel(ax, frame[frame["dataset"] == dataset], column, method_order, models)
            if r == 0:
                ax.set_title(str(dataset), fontweight="bold")
            if c == 0:
                ax.set_ylabel(title)
        axes[-1, c].set_xlabel("training step")
    handles = _method_handles(method_order, markers=True)
    if len(models) > 1:
        handles += [
            Line2D([], [], color="black", ls=MODEL_LINESTYLES[i % len(MODEL_LINESTYLES)], label=model_label(m))
            for i, m in enumerate(models)
        ]
    _figure_legend(fig, handles)
    return fig


def _draw_stability_panel(ax, frame: pd.DataFrame, column: str, methods: Sequence[str], models: Sequence[str]) -> None:
    """One quantity of one dataset over steps: a line per (method, model)."""
    drawn = False
    for i, model in enumerate(models):
        style = MODEL_LINESTYLES[i % len(MODEL_LINESTYLES)]
        for method in methods:
            runs = frame[(frame["model"] == model) & (frame["method"] == method)]
            runs = runs[np.isfinite(runs[column].to_numpy(dtype=float))]
            if runs.empty:
                continue
            band = _seed_band(runs.assign(**{column: runs[column].astype(float)}), "step", column)
            color = method_color(method)
            marker = method_marker(method) if len(band) <= 30 else None
            ax.plot(
                band["step"],
                band["mean"],
                color=color,
                ls=style,
                lw=_line_width(method),
                marker=marker,
                ms=4,
                drawstyle="steps-post" if column == "k" else "default",
            )
            if "seed" in runs.columns and runs["seed"].nunique() > 1:
                ax.fill_between(band["step"], band["lo"], band["hi"], color=color, alpha=0.08, lw=0)
            drawn = True
    if not drawn:
        ax.text(
            0.5,
            0.5,
            "no defined values\n(too few labeled or\ncommon prompts)",
            transform=ax.transAxes,
            ha="center",
            va="center",
            color="grey",
        )
    if column == "k":
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        top = frame["k"].max() if drawn else 3
        ax.set_ylim(0.5, (top if np.isfinite(top) else 3) + 0.5)
    else:
        values = frame[column].to_numpy(dtype=float)
        low = np.nanmin(values) if drawn else 0.0
        ax.set_ylim(min(-0.05, low - 0.05) if math.isfinite(low) else -0.05, 1.05)
    ax.xaxis.set_major_locator(_step_locator(5))
    ax.grid(alpha=0.3)


# ----------------------------------------------------------------------------------------------
# Runtime split and Pareto view (paper Fig. 2(d), 2(e)); the numbers come from eqpo.analysis.runtime
# ----------------------------------------------------------------------------------------------

# Phase -> (column of steps.jsonl, legend label, colour). Neutral greys for the big phases, yellow
# for the (usually tiny) advantage segment; none of them is a method colour (those mark the ticks).
PHASES: tuple[tuple[str, str, str], ...] = (
    ("time_generate_s", "generation (rollouts)", "#BDBDBD"),
    ("time_update_s", "policy update", "#6E6E6E"),
    ("time_advantage_s", "advantage estimation", "#F0E442"),
    ("time_other_s", "other (reward, logging)", "#FFFFFF"),
)
ANNOTATION_COLOR = "#222222"


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
def draw_runtime_split(steps_df: pd.DataFrame, methods: Sequence[str] | None = None) -> Figure:
    """Paper Fig. 2(d): mean time per training step split into generation, policy update,
    advantage estimation and the rest; one panel per base model, one stacked bar per method, the
    advantage share of the step time written above each bar. Returns the figure.
    """
    if steps_df is None or steps_df.empty:
        return _message_figure("no per-step timings (steps.jsonl) to plot")
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
            ax.bar(
                x,
                values,
                bottom=bottom,
                width=0.7,
                color=color,
                edgecolor="#444444",
                linewidth=0.5,
                label=label,
                zorder=2,
            )
            bottom += values
        top = float(np.nanmax(bottom)) if len(bottom) else 1.0
        for xi, height, share in zip(x, bottom, rows["advantage_share"], strict=False):
            ax.text(
                xi,
                height + 0.02 * top,
                _share_text(share),
                ha="center",
                va="bottom",
                fontsize=FONT_SIZE - 2,
                color=ANNOTATION_COLOR,
            )
        ax.set_ylim(0, top * 1.16 if top > 0 else 1.0)
        ax.set_xticks(x, [method_label(m) for m in rows.index], rotation=35, ha="right", rotation_mode="anchor")
        for tick, method in zip(ax.get_xticklabels(), rows.index, strict=False):
            tick.set_color(method_color(method))
            tick.set_fontweight("bold")
        ax.set_title(model_label(model))
        ax.grid(axis="y", alpha=0.3, zorder=0)
        ax.set_axisbelow(True)
    axes[0, 0].set_ylabel("seconds per training step (mean)")
    handles = [
        Patch(facecolor=color, edgecolor="#444444", linewidth=0.5, label=label)
        for column, label, color in PHASES
        if column != "time_other_s" or shown_other
    ]
    handles.append(
        Line2D(
            [],
            [],
            ls="none",
            marker="$\\%$",
            color=ANNOTATION_COLOR,
            ms=7,
            label="above bar: advantage share of step time",
        )
    )
    _figure_legend(fig, handles, ncol=min(len(handles), 3))
    return fig


@_styled
def draw_pareto(dynamics_df: pd.DataFrame, methods: Sequence[str] | None = None) -> Figure:
    """Paper Fig. 2(e): F1 against 1 - delta_F1 for every validation checkpoint (both higher is
    better), one panel per base model. Each method's checkpoints in its colour and marker (a thin
    line joins a run's checkpoints in step order), the last checkpoint of every run as a large
    star, and the Pareto frontier over all checkpoints of the panel as a dashed staircase.
    Returns the figure.
    """
    if dynamics_df is None or dynamics_df.empty:
        return _message_figure("no validation logs (dynamics.jsonl) to plot")
    points = pareto_points(dynamics_df, methods)
    if points.empty:
        return _message_figure("no checkpoint with both F1 and ΔF1 to plot")
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
            ax.scatter(runs["F1"], runs["equity"], color=color, marker=marker, s=16, alpha=0.55, linewidths=0, zorder=2)
            final = runs[runs["final"]]
            ax.scatter(
                final["F1"],
                final["equity"],
                color=color,
                marker="*",
                s=150,
                edgecolors="black",
                linewidths=0.7,
                zorder=4,
            )
        front = at[at["on_front"]].sort_values("F1")
        if len(front):
            # boundary of the dominated region: at F1 = x the best equity among points with
            # F1 >= x, so each step drops at a frontier point and runs right at the next level
            ax.step(front["F1"], front["equity"], where="pre", color="black", ls="--", lw=1.1, zorder=3)
            ax.scatter(
                front["F1"], front["equity"], facecolors="none", edgecolors="black", s=42, linewidths=0.8, zorder=3
            )
        _pad_limits(ax, at["F1"].to_numpy(), at["equity"].to_numpy())
        ax.set_title(model_label(model))
        ax.set_xlabel("F1 ↑")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("1 − ΔF1 (equity) ↑")
    handles = [
        Line2D([], [], color=method_color(m), marker=method_marker(m), ls="-", lw=0.7, ms=5, label=method_label(m))
        for m in method_order
    ]
    handles += [
        Line2D(
            [], [], color="grey", marker="*", ms=12, mec="black", mew=0.7, ls="none", label="last checkpoint of a run"
        ),
        Line2D(
            [],
            [],
            color="black",
            ls="--",
            lw=1.1,
            marker="o",
            mfc="none",
            ms=5,
            label="Pareto frontier (all checkpoints)",
        ),
    ]
    _figure_legend(fig, handles, ncol=min(len(handles), 5))
    return fig


def _pad_limits(ax, x: np.ndarray, y: np.ndarray, pad: float = 0.08) -> None:
    """Axis limits around the data with a margin (room for the stars)."""
    for values, setter in ((x, ax.set_xlim), (y, ax.set_ylim)):
        finite = values[np.isfinite(values)]
        if not len(finite):
            continue
        lo, hi = float(finite.min()), float(finite.max())
        span = hi - lo if hi > lo else max(abs(hi), 1e-3) * 0.1
        setter(lo - pad * span, hi + pad * span)


plot_training_dynamics = _writer(draw_training_dynamics)
plot_group_f1 = _writer(draw_group_f1)
plot_cluster_stability = _writer(draw_cluster_stability)
plot_runtime_split = _writer(draw_runtime_split)
plot_pareto = _writer(draw_pareto)
