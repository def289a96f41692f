"""Paper tables from the collected run frames (docs/method.md §4-5).

- :func:`table2` / :func:`table2_std` / :func:`table2_long`: Table 2, mean (and spread) over seeds.
- :func:`write_table`: one table as CSV (raw fractions, full precision), Markdown and LaTeX
  (paper scales, paper names, best value per model in bold).
- :func:`cluster_stability` / :func:`cluster_stability_summary`: agreement of EQPO(-ND)'s implicit
  groups with the masked demographic groups, and between consecutive logged steps.
- :func:`timing_summary`: time per training step and the share spent on advantage estimation.

Values stay raw fractions in every returned frame; only the Markdown and LaTeX renderings apply
:data:`eqpo.core.metrics.PAPER_SCALE`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from eqpo.analysis.collect import RUN_KEYS
from eqpo.analysis.style import METHOD_LABELS, model_label, order_methods
from eqpo.core.advantages import MISSING_GROUP_TOKENS
from eqpo.core.metrics import PAPER_SCALE, TABLE2_COLUMNS

# Table 2 columns where a lower value is better (gaps and spreads); the rest are higher-is-better.
LOWER_IS_BETTER: frozenset[str] = frozenset({"PP", "EOD", "FPR_diff", "sigma_F1", "delta_F1", "sigma_Acc", "delta_Acc"})
HIGHER_IS_BETTER: frozenset[str] = frozenset({"Acc", "F1", "Acc_ES", "F1_ES"})
# Column -> header in Markdown / LaTeX (the scale and the better direction are appended).
COLUMN_LABELS_MD: dict[str, str] = {
    "PP": "PP",
    "EOD": "EOD",
    "FPR_diff": "FPR diff",
    "sigma_F1": "σ F1",
    "delta_F1": "Δ F1",
    "sigma_Acc": "σ Acc",
    "delta_Acc": "Δ Acc",
    "Acc": "Acc",
    "F1": "F1",
    "Acc_ES": "Acc ES",
    "F1_ES": "F1 ES",
    "n_seeds": "seeds",
}
COLUMN_LABELS_TEX: dict[str, str] = {
    "PP": "PP",
    "EOD": "EOD",
    "FPR_diff": r"FPR$_\mathrm{diff}$",
    "sigma_F1": r"$\sigma_\mathrm{F1}$",
    "delta_F1": r"$\Delta_\mathrm{F1}$",
    "sigma_Acc": r"$\sigma_\mathrm{Acc}$",
    "delta_Acc": r"$\Delta_\mathrm{Acc}$",
    "Acc": "Acc",
    "F1": "F1",
    "Acc_ES": r"Acc$_\mathrm{ES}$",
    "F1_ES": r"F1$_\mathrm{ES}$",
    "n_seeds": "Seeds",
}
SIGNIFICANT_DIGITS = 4  # the paper prints 4 significant digits ...
MAX_DECIMALS = 4  # ... with at most 4 decimals (0.0322, 7.788, 81.83)
_MISSING_MD = "–"
_MISSING_TEX = "--"


# ----------------------------------------------------------------------------------------------
# Table 2
# ----------------------------------------------------------------------------------------------


def _select(
    metrics_df: pd.DataFrame, models: Sequence[str] | None, methods: Sequence[str] | None
) -> tuple[pd.DataFrame, list[str], list[str]]:
    """Rows of the chosen models/methods, with the model order and method order to use.

    Models keep the given order (default: order of first appearance); methods the given order
    (default: :data:`METHOD_ORDER`, unknown methods after it).
    """
    model_order = list(models) if models is not None else list(dict.fromkeys(metrics_df["model"]))
    if methods is not None:
        method_order = list(methods)
    else:
        method_order = order_methods(metrics_df["method"])
    keep = metrics_df["model"].isin(model_order) & metrics_df["method"].isin(method_order)
    return metrics_df[keep], model_order, method_order


def _ordered(frame: pd.DataFrame, model_order: list[str], method_order: list[str]) -> pd.DataFrame:
    """Reindex a (model, method)-indexed frame to the given orders, dropping absent pairs."""
    pairs = [(m, k) for m in model_order for k in method_order if (m, k) in frame.index]
    index = pd.MultiIndex.from_tuples(pairs, names=["model", "method"])
    return frame.reindex(index)


def _per_seed_stat(metrics_df: pd.DataFrame, stat: str, models, methods, columns: Sequence[str]) -> pd.DataFrame:
    """(model, method)-indexed frame of ``stat`` ('mean' or 'std') over seeds, plus n_seeds."""
    selected, model_order, method_order = _select(metrics_df, models, methods)
    grouped = selected.groupby(["model", "method"], sort=False)
    if stat == "mean":
        values = grouped[list(columns)].mean()
    else:
        values = grouped[list(columns)].std(ddof=1)
    values["n_seeds"] = grouped["seed"].nunique().astype("int64")
    return _ordered(values, model_order, method_order)


def table2(
    metrics_df: pd.DataFrame,
    models: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Paper Table 2: the mean over seeds of each run's Table 2 summary.

    metrics_df: :func:`eqpo.analysis.collect.read_metrics` output (one row per run).
    Returns a frame indexed by (model, method), models in the given order (default: first
    appearance), methods in :data:`METHOD_ORDER` (or the given order); columns the 11
    :data:`TABLE2_COLUMNS` (mean over seeds, NaN skipped, raw fractions) and n_seeds (int).
    """
    return _per_seed_stat(metrics_df, "mean", models, methods, TABLE2_COLUMNS)


def table2_std(
    metrics_df: pd.DataFrame,
    models: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Companion of :func:`table2`: the sample standard deviation (ddof=1) over seeds.

    Same index and columns as :func:`table2`; NaN where a (model, method) has a single seed.
    """
    return _per_seed_stat(metrics_df, "std", models, methods, TABLE2_COLUMNS)


def table2_long(
    metrics_df: pd.DataFrame,
    models: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Table 2 in long form: one row per (model, method, column).

    Columns: model, method, column (a Table 2 column name), mean, std (ddof=1), min, max
    (over seeds, raw fractions), n_seeds.
    """
    selected, model_order, method_order = _select(metrics_df, models, methods)
    long = selected.melt(id_vars=list(RUN_KEYS), value_vars=list(TABLE2_COLUMNS), var_name="column")
    stats = long.groupby(["model", "method", "column"], sort=False)["value"].agg(["mean", "std", "min", "max"])
    stats["n_seeds"] = long.groupby(["model", "method", "column"], sort=False)["seed"].nunique()
    stats = stats.reset_index()
    stats["_model"] = stats["model"].map({m: i for i, m in enumerate(model_order)})
    stats["_method"] = stats["method"].map({m: i for i, m in enumerate(method_order)})
    stats["_column"] = stats["column"].map({c: i for i, c in enumerate(TABLE2_COLUMNS)})
    stats = stats.sort_values(["_model", "_method", "_column"]).drop(columns=["_model", "_method", "_column"])
    return stats.reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------


def format_number(value: float, digits: int = SIGNIFICANT_DIGITS, max_decimals: int = MAX_DECIMALS) -> str | None:
    """Fixed-point text with ``digits`` significant digits but at most ``max_decimals`` decimals.

    81.8312 -> '81.83', 7.7881 -> '7.788', 0.03221 -> '0.0322', 0.0 -> '0.0000'; None for NaN/inf.
    """
    if value is None or not math.isfinite(value):
        return None
    if value == 0:
        return f"{0:.{max_decimals}f}"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = min(max_decimals, max(0, digits - 1 - magnitude))
    text = f"{value:.{decimals}f}"
    if float(text) != 0 and math.floor(math.log10(abs(float(text)))) > magnitude and decimals > 0:
        text = f"{value:.{decimals - 1}f}"  # rounding carried a digit: 9.9996 -> '10.00'
    return text


def scaled(df: pd.DataFrame, scale: Mapping[str, float] = PAPER_SCALE) -> pd.DataFrame:
    """Copy of ``df`` with each column in ``scale`` multiplied by its factor (x100 columns)."""
    out = df.copy()
    for column, factor in scale.items():
        if column in out.columns:
            out[column] = out[column].astype(float) * factor
    return out


def best_mask(df: pd.DataFrame, texts: pd.DataFrame | None = None) -> pd.DataFrame:
    """Boolean frame: True on the best value of each Table 2 column within each model.

    Lower is better for :data:`LOWER_IS_BETTER`, higher for :data:`HIGHER_IS_BETTER`; other
    columns are never marked. Groups are the index level (or column) ``model`` when present, else
    the whole table. A group with fewer than two finite values marks nothing. When ``texts`` (the
    printed strings, same shape) is given, every cell printing the same as the best is marked too,
    so a tie on the page is bold on both cells.
    """
    mask = pd.DataFrame(False, index=df.index, columns=df.columns)
    if "model" in df.index.names:
        keys = df.index.get_level_values("model")
    elif "model" in df.columns:
        keys = df["model"].to_numpy()
    else:
        keys = np.zeros(len(df), dtype=int)
    keys = pd.Series(keys, index=df.index)
    for column in df.columns:
        if column not in LOWER_IS_BETTER and column not in HIGHER_IS_BETTER:
            continue
        values = pd.to_numeric(df[column], errors="coerce").astype(float)
        for _, rows in keys.groupby(keys, sort=False).groups.items():
            group = values.loc[rows]
            finite = group[np.isfinite(group.to_numpy())]
            if len(finite) < 2:
                continue
            best = finite.min() if column in LOWER_IS_BETTER else finite.max()
            hit = group == best
            if texts is not None:
                best_text = texts.loc[finite.idxmin() if column in LOWER_IS_BETTER else finite.idxmax(), column]
                hit |= texts.loc[rows, column] == best_text
            mask.loc[rows, column] = hit.to_numpy()
    return mask


def _header(column: str, labels: Mapping[str, str], scale: Mapping[str, float], tex: bool) -> str:
    """Column header with the print scale (x100) and the better direction (arrow)."""
    label = labels.get(column, _latex_escape(column) if tex else column)
    factor = scale.get(column, 1.0)
    if factor != 1.0:
        label += rf" ($\times${factor:g})" if tex else f" (×{factor:g})"
    if column in LOWER_IS_BETTER:
        label += r" $\downarrow$" if tex else " ↓"
    elif column in HIGHER_IS_BETTER:
        label += r" $\uparrow$" if tex else " ↑"
    return label


def _latex_escape(text: object) -> str:
    """Escape LaTeX's special characters (& % $ # _ { } ~ ^ \\) in plain text."""
    replacements = {
        "\\": r"\textbackslash{}",
        "&": r"\&",
        "%": r"\%",
        "$": r"\$",
        "#": r"\#",
        "_": r"\_",
        "{": r"\{",
        "}": r"\}",
        "~": r"\textasciitilde{}",
        "^": r"\textasciicircum{}",
    }
    return "".join(replacements.get(ch, ch) for ch in str(text))


def _cell_texts(values: pd.DataFrame) -> pd.DataFrame:
    """Printed strings of every cell (None for NaN): numbers via :func:`format_number`, integer
    columns as integers, other columns via str."""
    texts = pd.DataFrame(index=values.index, columns=values.columns, dtype=object)
    for column in values.columns:
        series = values[column]
        if pd.api.types.is_integer_dtype(series.dtype):
            texts[column] = [str(int(v)) for v in series]
        elif pd.api.types.is_numeric_dtype(series.dtype):
            texts[column] = [format_number(float(v)) for v in series]
        else:
            texts[column] = [None if pd.isna(v) else str(v) for v in series]
    return texts


def _with_std(texts: pd.DataFrame, std: pd.DataFrame | None, pm: str) -> pd.DataFrame:
    """Append '<pm> std' to the numeric cells that have a finite std in ``std``.

    The std gets as many decimals as the printed mean ('14.66 ± 7.03', '0.3550 ± 0.0071').
    """
    if std is None:
        return texts
    out = texts.copy()
    for column in out.columns:
        if column not in std.columns or column == "n_seeds":
            continue
        for row in out.index:
            mean_text = out.loc[row, column]
            spread = float(std.loc[row, column]) if row in std.index else math.nan
            if mean_text is None or not math.isfinite(spread):
                continue
            decimals = len(mean_text.split(".")[1]) if "." in mean_text else 0
            out.loc[row, column] = f"{mean_text}{pm}{spread:.{decimals}f}"
    return out


def _row_labels(index: pd.Index) -> pd.DataFrame:
    """Index -> frame of printable row labels (model and method through their paper names)."""
    frame = index.to_frame(index=False)
    if "model" in frame.columns:
        frame["model"] = frame["model"].map(model_label)
    if "method" in frame.columns:
        frame["method"] = frame["method"].map(lambda m: METHOD_LABELS.get(m, m))
    frame.columns = [str(c).capitalize() if c is not None else "" for c in frame.columns]
    return frame


def to_markdown_table(
    df: pd.DataFrame, scale: Mapping[str, float] = PAPER_SCALE, std: pd.DataFrame | None = None
) -> str:
    """Markdown text of a table: paper scales applied, paper names, best per model in **bold**.

    df: a frame like :func:`table2`'s (index levels become the leading columns); std: optional
    frame of the same shape whose values are printed as 'mean ± std' (scaled alike).
    """
    values = scaled(df, scale)
    texts = _cell_texts(values)
    bold = best_mask(values, texts)
    texts = _with_std(texts, None if std is None else scaled(std, scale), " ± ")
    body = texts.where(~bold, "**" + texts.astype(str) + "**").fillna(_MISSING_MD)
    body.columns = [_header(c, COLUMN_LABELS_MD, scale, tex=False) for c in df.columns]
    table = pd.concat([_row_labels(df.index), body.reset_index(drop=True)], axis=1)
    numeric = [pd.api.types.is_numeric_dtype(df[c].dtype) for c in df.columns]
    align = ["left"] * (table.shape[1] - len(numeric)) + ["right" if n else "left" for n in numeric]
    return table.to_markdown(index=False, colalign=align, disable_numparse=True)


def to_latex_table(df: pd.DataFrame, scale: Mapping[str, float] = PAPER_SCALE, std: pd.DataFrame | None = None) -> str:
    """booktabs LaTeX tabular of a table (needs ``\\usepackage{booktabs}``).

    Same content as :func:`to_markdown_table`: paper scales, paper names (escaped), best per model
    in ``\\textbf``; the model name is printed once per block and blocks are separated by
    ``\\midrule``.
    """
    values = scaled(df, scale)
    texts = _cell_texts(values)
    bold = best_mask(values, texts)
    texts = _with_std(texts, None if std is None else scaled(std, scale), r"$\pm$")
    cells = texts.where(~bold, r"\textbf{" + texts.astype(str) + "}").fillna(_MISSING_TEX)
    labels = _row_labels(df.index)
    n_label = labels.shape[1]
    lines = [
        "% generated by eqpo.analysis.tables.write_table; "
        "columns marked (x100) are percentages, arrows give the better direction",
        r"\begin{tabular}{" + "l" * n_label + "r" * df.shape[1] + "}",
        r"\toprule",
        " & ".join(
            [_latex_escape(c) for c in labels.columns]
            + [_header(c, COLUMN_LABELS_TEX, scale, tex=True) for c in df.columns]
        )
        + r" \\",
        r"\midrule",
    ]
    previous = None
    for i in range(len(df)):
        label_cells = [_latex_escape(v) for v in labels.iloc[i]]
        if "Model" in labels.columns:
            at = list(labels.columns).index("Model")
            model = labels.iloc[i, at]
            if previous is not None and model != previous:
                lines.append(r"\midrule")
            if model == previous:
                label_cells[at] = ""
            previous = model
        lines.append(" & ".join(label_cells + list(cells.iloc[i])) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def write_table(
    df: pd.DataFrame,
    stem: str | Path,
    scale: Mapping[str, float] = PAPER_SCALE,
    std: pd.DataFrame | None = None,
    note: str | None = None,
) -> dict[str, Path]:
    """Write a table as ``<stem>.csv``, ``<stem>.md`` and ``<stem>.tex``; returns {ext: path}.

    - CSV: ``df`` as is (index levels as leading columns, raw fractions, full float precision:
      reading it back with pandas gives the same numbers bit for bit).
    - Markdown / LaTeX: see :func:`to_markdown_table` / :func:`to_latex_table` (``scale`` applied,
      4 significant digits with at most 4 decimals, best value per model in bold; ``std`` printed
      as '± std' when given). ``note`` (e.g. which metric and reward options produced the
      numbers) follows the Markdown table as a paragraph and heads the LaTeX file as a comment.
    Parent directories are created.
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = {ext: stem.with_name(stem.name + "." + ext) for ext in ("csv", "md", "tex")}
    df.to_csv(paths["csv"], float_format=None)
    md = to_markdown_table(df, scale, std) + "\n"
    tex = to_latex_table(df, scale, std)
    if note:
        md += "\n" + note + "\n"
        tex = "".join(f"% {line}\n" for line in note.splitlines()) + tex
    paths["md"].write_text(md, encoding="utf-8")
    paths["tex"].write_text(tex, encoding="utf-8")
    return paths


# ----------------------------------------------------------------------------------------------
# Cluster stability
# ----------------------------------------------------------------------------------------------

STABILITY_COLUMNS = ("n", "k", "n_labeled", "ari", "nmi", "consecutive_ari", "n_common")


def _has_group(values: pd.Series) -> np.ndarray:
    """(n,) bool: True where a true_group is present (not None/NaN, not '' or 'UNK')."""
    present = values.notna().to_numpy()
    text = values.astype(object).where(values.notna(), "").astype(str).str.strip()
    return present & ~text.isin(MISSING_GROUP_TOKENS).to_numpy()


def alignment_scores(clusters: Sequence, groups: Sequence) -> tuple[float, float]:
    """(ARI, NMI) of a cluster assignment against true groups (equal-length sequences).

    NaN for both when there are fewer than 2 items or fewer than 2 distinct true groups.
    """
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    groups = list(groups)
    if len(groups) < 2 or len(set(groups)) < 2:
        return math.nan, math.nan
    clusters = list(clusters)
    return (float(adjusted_rand_score(groups, clusters)), float(normalized_mutual_info_score(groups, clusters)))


def consecutive_agreement(previous: pd.Series, current: pd.Series) -> tuple[float, int]:
    """(ARI, n_common) between two steps' assignments of the prompts present in both.

    previous, current: cluster ids indexed by sample_id. ARI is invariant to relabelling of the
    clusters; NaN when fewer than 2 sample_ids are common.
    """
    from sklearn.metrics import adjusted_rand_score

    common = previous.index.intersection(current.index)
    if len(common) < 2:
        return math.nan, len(common)
    return float(adjusted_rand_score(previous.loc[common], current.loc[common])), len(common)


def _modal(values: pd.Series) -> float:
    """Most frequent value (the smallest on ties); NaN for an empty series."""
    values = values.dropna()
    if values.empty:
        return math.nan
    return values.mode().min()


def cluster_stability(clusters_df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method, seed, dataset, step): how the implicit clusters relate to truth and time.

    clusters_df: :func:`eqpo.analysis.collect.read_clusters` output (a frame without model/method/
    seed columns is treated as one run). A sample_id logged twice in one step counts once (last
    row kept). Returns one row per key, sorted by key and step, with columns
    n (prompts logged), k (chosen k; the modal value if rows disagree), n_labeled (prompts with a
    true group), ari / nmi (adjusted Rand index / normalised mutual information of cluster vs
    true_group over the labeled prompts; NaN with < 2 of them or a single true group),
    consecutive_ari (ARI between this step's and the previous logged step's clusters of the
    sample_ids in both; NaN on the first step or with < 2 common ids) and n_common.
    """
    keys = [k for k in RUN_KEYS if k in clusters_df.columns] + ["dataset"]
    out_columns = [*RUN_KEYS, "dataset", "step", *STABILITY_COLUMNS]
    if clusters_df.empty:
        return pd.DataFrame(columns=out_columns)
    frame = clusters_df.drop_duplicates([*keys, "step", "sample_id"], keep="last")
    rows = []
    for key, run in frame.groupby(keys, sort=True):
        previous = None
        for step, at_step in run.groupby("step", sort=True):
            labeled = at_step[_has_group(at_step["true_group"])]
            ari, nmi = alignment_scores(labeled["cluster"], labeled["true_group"].astype(str))
            current = pd.Series(at_step["cluster"].to_numpy(), index=at_step["sample_id"].to_numpy())
            if previous is None:
                consecutive, common = math.nan, 0
            else:
                consecutive, common = consecutive_agreement(previous, current)
            row = dict(zip(keys, key if isinstance(key, tuple) else (key,), strict=False))
            row.update(
                step=int(step),
                n=len(at_step),
                k=_modal(at_step["k"]),
                n_labeled=len(labeled),
                ari=ari,
                nmi=nmi,
                consecutive_ari=consecutive,
                n_common=common,
            )
            rows.append(row)
            previous = current
    out = pd.DataFrame(rows)
    return out[[c for c in out_columns if c in out.columns]]


def cluster_stability_summary(stability_df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method, dataset): the :func:`cluster_stability` rows summarised over steps and
    seeds.

    Columns: ari, nmi, consecutive_ari (means, NaN skipped), k_mode (most frequent chosen k, the
    smallest on ties), n_steps (logged (seed, step) pairs), n_seeds.
    """
    keys = [k for k in ("model", "method") if k in stability_df.columns] + ["dataset"]
    columns = [*keys, "ari", "nmi", "consecutive_ari", "k_mode", "n_steps", "n_seeds"]
    if stability_df.empty:
        return pd.DataFrame(columns=columns)
    grouped = stability_df.groupby(keys, sort=False)
    out = grouped[["ari", "nmi", "consecutive_ari"]].mean()
    out["k_mode"] = grouped["k"].agg(_modal)
    out["n_steps"] = grouped.size()
    out["n_seeds"] = grouped["seed"].nunique() if "seed" in stability_df.columns else 1
    out = out.reset_index()
    if "method" in out.columns:
        rank = {m: i for i, m in enumerate(order_methods(out["method"]))}
        out = out.sort_values(keys, key=lambda s: s.map(rank) if s.name == "method" else s, kind="stable")
    return out[columns].reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def timing_summary(steps_df: pd.DataFrame, methods: Iterable[str] | None = None) -> pd.DataFrame:
    """Per (model, method): mean seconds per training step and per phase, and the advantage share.

    steps_df: :func:`eqpo.analysis.collect.read_steps` output. Returns a (model, method)-indexed
    frame with time_step_s, time_generate_s, time_advantage_s, time_update_s (mean seconds over
    steps and seeds), advantage_share (total advantage time / total step time, a fraction),
    n_steps and n_seeds.
    """
    timing = ["time_step_s", "time_generate_s", "time_advantage_s", "time_update_s"]
    selected, model_order, method_order = _select(steps_df, None, methods)
    grouped = selected.groupby(["model", "method"], sort=False)
    out = grouped[timing].mean()
    sums = grouped[["time_advantage_s", "time_step_s"]].sum()
    out["advantage_share"] = sums["time_advantage_s"] / sums["time_step_s"]
    out["n_steps"] = grouped.size()
    out["n_seeds"] = grouped["seed"].nunique()
    return _ordered(out, model_order, method_order)
