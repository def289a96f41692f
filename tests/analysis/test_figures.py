"""What the paper figures draw, read back from the matplotlib objects: bar heights, line data, dots,
intervals, annotations and titles against values computed here from the input frames."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from matplotlib.collections import PathCollection
from matplotlib.patches import Rectangle

from eqpo.analysis import figures
from eqpo.analysis.style import method_color

GROUPS = [("a1", "age"), ("a2", "age"), ("F", "sex"), ("M", "sex")]


def group_rows(seeds=(0, 1, 5)) -> pd.DataFrame:
    """Per-group F1 of two methods on one dataset; F1 = 0.2 * group index + 0.1 * method + 0.01 * seed."""
    rows = []
    for m, method in enumerate(("grpo", "eqpo")):
        for seed in seeds:
            for g, (group, attribute) in enumerate(GROUPS):
                rows.append(
                    {
                        "model": "m",
                        "method": method,
                        "seed": seed,
                        "dataset": "HAM10000",
                        "attribute": attribute,
                        "group": group,
                        "n": 10,
                        "F1": 0.2 * g + 0.1 * m + 0.01 * seed,
                    }
                )
    return pd.DataFrame(rows)


def visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible()]


def bars(ax) -> list[Rectangle]:
    return [p for p in ax.patches if isinstance(p, Rectangle) and p.get_width() > 0]


def test_group_f1_bars_are_seed_means_with_intervals_inside_the_seed_range_and_a_dot_per_seed():
    frame = group_rows()
    fig = figures.draw_group_f1(frame)
    (ax,) = visible_axes(fig)
    assert ax.get_title() == "HAM10000"
    assert [t.get_text() for t in ax.get_xticklabels()] == [figures.GROUP_TICKS.get(g, g) for g, _ in GROUPS]
    drawn = sorted(bars(ax), key=lambda r: r.get_x())
    assert len(drawn) == 8  # 4 groups x 2 methods
    expected = frame.groupby(["group", "method"])["F1"].mean()
    order = [(g, m) for g, _ in GROUPS for m in ("grpo", "eqpo")]
    for rect, (group, method) in zip(drawn, order, strict=False):
        assert rect.get_height() == pytest.approx(expected[(group, method)])
        assert np.allclose(rect.get_facecolor()[:3], matplotlib_rgb(method_color(method)))
    # the interval of each bar: a vertical line from lo to hi around the mean, within the seeds' range
    found = intervals(ax)
    assert len(found) == 8
    for (x, lo, hi), rect in zip(sorted(found), drawn, strict=False):
        assert x == pytest.approx(rect.get_x() + rect.get_width() / 2)
        # the seeds span 0.05 (mean 0.02 above the group value, median 0.01)
        assert lo <= rect.get_height() <= hi and hi - lo <= 0.05 + 1e-9
    dots = np.concatenate([c.get_offsets()[:, 1] for c in ax.collections if isinstance(c, PathCollection)])
    assert sorted(np.round(dots, 6)) == sorted(np.round(frame["F1"].to_numpy(), 6))  # one dot per seed
    # the dotted separator between the age and the sex groups
    separators = [line for line in ax.lines if line.get_linestyle() == ":"]
    assert len(separators) == 1 and separators[0].get_xdata()[0] == pytest.approx(1.5)


def intervals(ax) -> list[tuple[float, float, float]]:
    """(x, lo, hi) of every drawn error bar (seaborn draws a bar's interval and caps as one line
    with NaN breaks; an undefined interval is all NaN)."""
    out = []
    for line in ax.lines:
        y = np.asarray(line.get_ydata(), dtype=float)
        if line.get_linestyle() == ":" or not np.isfinite(y).any():
            continue
        x = np.asarray(line.get_xdata(), dtype=float)
        out.append((float(np.nanmedian(x)), float(np.nanmin(y)), float(np.nanmax(y))))
    return out


def matplotlib_rgb(color):
    from matplotlib.colors import to_rgb

    return to_rgb(color)


def test_group_f1_with_one_seed_has_no_interval_and_no_dots():
    fig = figures.draw_group_f1(group_rows(seeds=(0,)))
    (ax,) = visible_axes(fig)
    assert len(bars(ax)) == 8
    assert not [c for c in ax.collections if isinstance(c, PathCollection)]
    assert intervals(ax) == []


def dynamics_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model": model,
                "method": method,
                "seed": seed,
                "step": step,
                "F1": 0.1 * step + 0.01 * seed + (0.5 if method == "eqpo" else 0),
                "Acc": 0.5 + 0.01 * seed,
                "delta_F1": 0.2,
            }
            for model in ("m1", "m2")
            for method in ("grpo", "eqpo")
            for seed in (0, 2)
            for step in (0, 5, 10)
        ]
    )


def test_training_dynamics_lines_are_seed_means_at_the_paper_scale():
    frame = dynamics_rows()
    fig = figures.draw_training_dynamics(frame)
    axes = visible_axes(fig)
    assert len(axes) == 6  # 2 models x (F1, Acc, delta_F1)
    assert [ax.get_title() for ax in axes[:3]] == [figures.METRIC_TITLES[m] for m in ("F1", "Acc", "delta_F1")]
    f1 = {line.get_color(): line for line in axes[0].lines}
    eqpo = f1[method_color("eqpo")]
    assert list(eqpo.get_xdata()) == [0, 5, 10]
    np.testing.assert_allclose(eqpo.get_ydata(), [0.5 + 0.1 * s + 0.01 for s in (0, 5, 10)])
    acc = axes[1].lines[0]
    np.testing.assert_allclose(acc.get_ydata(), [51.0] * 3)  # Acc drawn in % (mean of 50 and 52)
    assert len(axes[0].collections) == 2  # a min-max band per method (two seeds)


def runtime_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model": "m",
                "method": method,
                "seed": 0,
                "step": step,
                "reward_mean": 0.5,
                "time_generate_s": 6.0,
                "time_update_s": 3.0,
                "time_advantage_s": adv,
                "time_step_s": 10.0,
            }
            for method, adv in (("grpo", 0.1), ("eqpo", 0.5))
            for step in (1, 2)
        ]
    )


def test_runtime_split_stacks_the_phase_means_and_writes_the_advantage_share():
    fig = figures.draw_runtime_split(runtime_rows())
    (ax,) = visible_axes(fig)
    heights = sorted(round(r.get_height(), 6) for r in bars(ax))
    # generation 6, update 3, advantage 0.1 / 0.5, other 10 - 9.1 = 0.9 / 10 - 9.5 = 0.5
    assert heights == sorted([6.0, 6.0, 3.0, 3.0, 0.1, 0.5, 0.9, 0.5])
    assert sorted(t.get_text() for t in ax.texts) == ["1%", "5%"]  # 0.1 / 10 and 0.5 / 10


def pareto_rows() -> pd.DataFrame:
    rows = [
        {"model": "m", "method": "grpo", "seed": 0, "step": s, "F1": f, "delta_F1": d}
        for s, f, d in ((0, 0.2, 0.3), (5, 0.4, 0.2), (10, 0.5, 0.4))
    ]
    rows += [
        {"model": "m", "method": "eqpo", "seed": 0, "step": s, "F1": f, "delta_F1": d}
        for s, f, d in ((0, 0.3, 0.1), (5, 0.35, 0.15))
    ]
    return pd.DataFrame(rows)


def test_pareto_stars_each_runs_last_checkpoint_and_draws_the_frontier():
    fig = figures.draw_pareto(pareto_rows())
    (ax,) = visible_axes(fig)
    stars = [c for c in ax.collections if isinstance(c, PathCollection) and c.get_sizes().max() == 150]
    finals = sorted(tuple(np.round(o, 6)) for c in stars for o in c.get_offsets())
    assert finals == [(0.35, 0.85), (0.5, 0.6)]  # (F1, 1 - delta_F1) of each run's last step
    frontier = [line for line in ax.lines if line.get_linestyle() == "--"]
    # undominated: (0.3, 0.9), (0.4, 0.8), (0.5, 0.6); (0.35, 0.85) is dominated by none either
    assert len(frontier) == 1
    assert sorted(np.round(frontier[0].get_xdata(), 6)) == [0.3, 0.35, 0.4, 0.5]


def stability_rows() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model": "m",
                "method": method,
                "seed": 0,
                "dataset": dataset,
                "step": step,
                "ari": (0.5 if dataset == "A" else np.nan),
                "nmi": 0.4 if dataset == "A" else np.nan,
                "consecutive_ari": 0.9 if dataset == "A" else np.nan,
                "k": 2,
                "n": 10,
                "n_labeled": 3,
            }
            for method in ("eqpo", "eqpo_nd")
            for dataset in ("A", "B")
            for step in (10, 20)
        ]
    )


def test_cluster_stability_draws_a_line_per_method_and_says_when_nothing_is_defined():
    fig = figures.draw_cluster_stability(stability_rows())
    axes = np.array(visible_axes(fig)).reshape(len(figures.STABILITY_PANELS), 2)
    ari_a, ari_b = axes[0]
    assert ari_a.get_title() == "A" and len(ari_a.lines) == 2
    assert all(list(line.get_ydata()) == [0.5, 0.5] for line in ari_a.lines)
    assert not ari_b.lines and "no defined values" in ari_b.texts[0].get_text()
    assert all(list(line.get_ydata()) == [2, 2] for line in axes[3][1].lines)  # k is defined for B


@pytest.mark.parametrize(
    "draw, frame",
    [
        (figures.draw_training_dynamics, pd.DataFrame(columns=["model", "method", "seed", "step"])),
        (figures.draw_group_f1, pd.DataFrame(columns=["model", "method", "seed", "dataset"])),
        (figures.draw_runtime_split, pd.DataFrame()),
        (figures.draw_pareto, pd.DataFrame()),
    ],
)
def test_nothing_to_plot_gives_a_figure_that_says_so(draw, frame):
    fig = draw(frame)
    texts = [t.get_text() for ax in fig.axes for t in ax.texts]
    assert len(texts) == 1 and texts[0].startswith("no ")


@pytest.mark.parametrize(
    "name, frame",
    [
        ("group_f1", group_rows),
        ("training_dynamics", dynamics_rows),
        ("runtime_split", runtime_rows),
        ("pareto", pareto_rows),
        ("cluster_stability", stability_rows),
    ],
)
def test_plot_writes_the_drawn_figure_as_one_png_and_one_pdf_page(tmp_path, name, frame):
    """plot_<name> writes what draw_<name> draws: a PNG of the figure's size at DPI holding every
    method's colour, and a one-page PDF of the same size in points."""
    from matplotlib.image import imread

    png, pdf = getattr(figures, f"plot_{name}")(frame(), tmp_path / name)
    assert (png.name, pdf.name) == (f"{name}.png", f"{name}.pdf")
    width, height = getattr(figures, f"draw_{name}")(frame()).get_size_inches()
    pixels = imread(png)[..., :3]
    assert pixels.shape[:2] == (round(height * figures.DPI), round(width * figures.DPI))
    for method in frame()["method"].unique():
        distance = np.abs(pixels - np.array(matplotlib_rgb(method_color(method)))).max(axis=-1)
        assert (distance < 2 / 255).sum() >= 10, method  # some pixels in the method's own colour
    document = pdf.read_bytes()
    assert len(re.findall(rb"/Type\s*/Page\b(?!s)", document)) == 1
    box = [float(v) for v in re.search(rb"/MediaBox\s*\[([^\]]+)\]", document).group(1).split()]
    assert box[2:] == pytest.approx([width * 72, height * 72])
