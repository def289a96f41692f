"""Uncertainty of the Table 2 metrics: bootstrap over test samples, paired bootstrap, seed spread.

- :func:`bootstrap_summary`: percentile confidence intervals of the 11 Table 2 columns of one set
  of test predictions, resampling samples with replacement *within each dataset* (every dataset
  keeps its size, so the equal-weight mean over datasets is resampled as the metric defines it).
- :func:`paired_bootstrap`: difference of two methods evaluated on the same test samples, with the
  same resampled samples for both (paired by ``sample_id``), a percentile interval and a two-sided
  bootstrap p-value.
- :func:`seed_summary`: mean, standard deviation and count over training seeds per (model, method).

How a replicate is computed (fast path)
---------------------------------------
A replicate is a vector of multiplicities: how often each test row was drawn
(:func:`bootstrap_counts`). Per dataset, the one-vs-rest indicators (true, predicted, both) of every
row and its demographic group memberships are encoded once; a replicate's per-group TP/FP/FN/TN are
then ``counts @ indicators`` (exact integer sums), and the rest of
:func:`eqpo.core.metrics.fairness_summary` is applied to all replicates at once. Everything the full
metric recomputes from the data is recomputed per replicate: a class that no resampled row carries
drops out of that dataset's class
mean, a demographic group with no resampled row is not "present", an attribute left with fewer than
two groups is skipped (with the one-group "all" fallback when none is left). The result equals
``fairness_summary`` of the explicitly resampled frame, bit for bit (tests check this).

One case ``fairness_summary`` itself refuses: a resampled dataset whose drawn rows carry no true
label at all (possible only when a dataset has rows with empty label sets). Such a dataset is left
out of that replicate (NaN, so the mean over datasets skips it).

All values are raw fractions (as :func:`eqpo.core.metrics.fairness_summary`); intervals are percentile
intervals over the replicates that are defined (NaN replicates skipped).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from eqpo.analysis.collect import RUN_KEYS
from eqpo.analysis.tables import _select
from eqpo.core.metrics import (
    ATTRIBUTE_GROUPS,
    TABLE2_COLUMNS,
    TABLE2_SOURCE,
    check_class_set,
    encode_predictions,
    fairness_summary,
    group_rates,
    one_hot,
    validate_predictions,
)

__all__ = [
    "bootstrap_counts",
    "bootstrap_summary",
    "paired_bootstrap",
    "replicate_summaries",
    "seed_summary",
]

_SOURCE_COLUMNS = tuple(TABLE2_SOURCE)  # the 9 columns read from per-dataset statistics
_RATE_NAMES = ("Acc", "F1", "TPR", "FPR", "FDR")


# ----------------------------------------------------------------------------------------------
# Encoding (once per prediction set)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Block:
    """One dataset, encoded for weighted recomputation.

    rows: (n,) positions of its rows in the frame; features: (n, G*3C) per-row contribution to
    every (group, [positives | predicted | true positives], class) count; membership: (n, G) 0/1
    group matrix (the attributes' groups side by side, then one "all" column); attributes:
    (attribute, slice of its columns in membership); n_classes: C.
    """

    name: object
    rows: np.ndarray
    features: np.ndarray
    membership: np.ndarray
    attributes: tuple[tuple[str, slice], ...]
    n_classes: int

    @property
    def all_column(self) -> int:
        return self.membership.shape[1] - 1


def _encode(predictions: pd.DataFrame) -> list[_Block]:
    """Per dataset (sorted by name, as :class:`eqpo.core.metrics.FairnessReport`, from the same
    :func:`eqpo.core.metrics.encode_predictions`): a :class:`_Block`."""
    blocks = []
    for data in encode_predictions(predictions):
        parts, attributes, start = [], [], 0
        for attribute, attr_codes in data.codes.items():
            names = ATTRIBUTE_GROUPS[attribute]
            parts.append(one_hot(attr_codes, len(names)))
            attributes.append((attribute, slice(start, start + len(names))))
            start += len(names)
        parts.append(np.ones((len(data.rows), 1)))
        membership = np.hstack(parts)
        y, p = data.truth, data.prediction
        indicators = np.hstack([y, p, y * p])  # (n, 3C)
        features = (membership[:, :, None] * indicators[:, None, :]).reshape(len(data.rows), -1)
        blocks.append(_Block(data.name, data.rows, features, membership, tuple(attributes), y.shape[1]))
    return blocks


# ----------------------------------------------------------------------------------------------
# Replicates
# ----------------------------------------------------------------------------------------------


def _patterns(keys: np.ndarray):
    """Yield (mask of the distinct boolean row, indices of the rows having it)."""
    uniques, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = np.asarray(inverse).reshape(-1)
    for i, key in enumerate(uniques):
        yield key, np.flatnonzero(inverse == i)


def _block_values(block: _Block, weights: np.ndarray, class_set: str = "dataset") -> np.ndarray:
    """(R, 9) per-dataset values of the :data:`_SOURCE_COLUMNS` for R replicate weight rows."""
    n_rep, n_cls = len(weights), block.n_classes
    size = weights @ block.membership  # (R, G)
    counts = (weights @ block.features).reshape(n_rep, size.shape[1], 3, n_cls)
    positives, predicted, tp = counts[:, :, 0], counts[:, :, 1], counts[:, :, 2]
    fn = positives - tp
    fp = predicted - tp
    tn = size[..., None] - tp - fp - fn
    class_present = positives[:, block.all_column, :] > 0  # (R, C)
    group_present = size[:, : block.all_column] > 0
    out = np.full((n_rep, len(_SOURCE_COLUMNS)), math.nan)
    keys = np.hstack([class_present, group_present])
    for key, reps in _patterns(keys):
        classes = np.flatnonzero(key[:n_cls])
        if len(classes) == 0:
            continue  # no true label among the drawn rows: dataset left out of these replicates
        present = key[n_cls:]
        usable = []
        for _, cols in block.attributes:
            groups = np.arange(cols.start, cols.stop)[present[cols]]
            if len(groups) >= 2:
                usable.append(groups)
        fallback = not usable
        if fallback:
            usable = [np.array([block.all_column])]
        stats = []  # per usable attribute: {(metric, stat): (r,)}
        for groups in usable:
            cells = np.ix_(reps, groups, classes)
            rates = group_rates(size[np.ix_(reps, groups)], tp[cells], fp[cells], fn[cells], tn[cells], class_set)
            per = {}
            for metric, values in rates.items():
                per[metric, "level"] = values.mean(axis=1)
                if fallback:
                    per[metric, "gap"] = per[metric, "sigma"] = np.full(len(reps), math.nan)
                else:
                    per[metric, "gap"] = values.max(axis=1) - values.min(axis=1)
                    per[metric, "sigma"] = values.std(axis=1, ddof=1)
            stats.append(per)
        for j, column in enumerate(_SOURCE_COLUMNS):
            source = TABLE2_SOURCE[column]
            out[reps, j] = np.stack([per[source] for per in stats], axis=1).mean(axis=1)
    return out


def _row_nanmean(values: np.ndarray) -> np.ndarray:
    """(R,) mean of each row over its non-NaN entries (NaN when none), computed exactly as
    :func:`eqpo.core.metrics._nanmean` does on each row."""
    out = np.full(len(values), math.nan)
    for key, reps in _patterns(~np.isnan(values)):
        cols = np.flatnonzero(key)
        if len(cols):
            out[reps] = values[np.ix_(reps, cols)].mean(axis=1)
    return out


def _summaries(blocks: Sequence[_Block], counts: np.ndarray, class_set: str = "dataset") -> np.ndarray:
    """(R, 11) Table 2 values (TABLE2_COLUMNS order) of R replicates given as (R, N) counts."""
    check_class_set(class_set)
    per_dataset = np.stack(
        [_block_values(b, np.ascontiguousarray(counts[:, b.rows], dtype=float), class_set) for b in blocks],
        axis=2,
    )  # (R, 9, D)
    overall = {c: _row_nanmean(per_dataset[:, j, :]) for j, c in enumerate(_SOURCE_COLUMNS)}
    overall["Acc_ES"] = overall["Acc"] / (1.0 + overall["sigma_Acc"])
    overall["F1_ES"] = overall["F1"] / (1.0 + overall["sigma_F1"])
    return np.stack([overall[c] for c in TABLE2_COLUMNS], axis=1)


def _strata(predictions: pd.DataFrame) -> list[np.ndarray]:
    """Row positions of each dataset, datasets sorted by name."""
    validate_predictions(predictions, columns=("dataset",))
    codes, names = pd.factorize(predictions["dataset"])
    order = sorted(range(len(names)), key=lambda i: str(names[i]))
    return [np.flatnonzero(codes == d) for d in order]


def _draw(strata: Sequence[np.ndarray], n_rows: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n_rows) int32 multiplicities: each stratum resampled to its own size."""
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_boot, n_rows), dtype=np.int32)
    for rows in strata:
        n = len(rows)
        draws = rng.integers(0, n, size=(n_boot, n)) + np.arange(n_boot)[:, None] * n
        counts[:, rows] = np.bincount(draws.ravel(), minlength=n_boot * n).reshape(n_boot, n)
    return counts


def bootstrap_counts(predictions: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """The bootstrap draw: (n_boot, len(predictions)) int32 array of how often each row (by
    position) is drawn in each replicate.

    Stratified by ``dataset``: in every replicate each dataset's rows are drawn with replacement,
    as many as the dataset has (so every row of the replicate's dataset d sums to n_d). Datasets
    are drawn in sorted order from ``numpy.random.default_rng(seed)``; the same inputs give the
    same draw. ``predictions.iloc[np.repeat(np.arange(N), counts[r])]`` is replicate r as a frame.
    """
    return _draw(_strata(predictions), len(predictions), n_boot, seed)


def replicate_summaries(predictions: pd.DataFrame, counts: np.ndarray, class_set: str = "dataset") -> pd.DataFrame:
    """Table 2 of each replicate: a (len(counts), 11) frame with the :data:`TABLE2_COLUMNS`.

    counts: (R, len(predictions)) multiplicities, e.g. from :func:`bootstrap_counts` (each dataset
    should keep at least one row per replicate). Row r equals ``fairness_summary`` of
    ``predictions`` with row i repeated ``counts[r, i]`` times (with the same ``class_set``).
    """
    counts = np.asarray(counts)
    if counts.ndim != 2 or counts.shape[1] != len(predictions):
        raise ValueError(
            f"counts must be a (replicates, {len(predictions)}) array (one column per prediction "
            f"row), got shape {counts.shape}"
        )
    values = _summaries(_encode(predictions), counts, class_set)
    return pd.DataFrame(values, columns=list(TABLE2_COLUMNS)).rename_axis("replicate")


def _interval(replicates: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval per column, NaN replicates skipped (NaN when a column has none)."""
    if not 0 < level < 1:
        raise ValueError(f"level must lie strictly between 0 and 1, got {level}")
    tail = 100 * (1 - level) / 2
    lo = np.full(replicates.shape[1], math.nan)
    hi = np.full(replicates.shape[1], math.nan)
    for j in range(replicates.shape[1]):
        finite = replicates[:, j][~np.isnan(replicates[:, j])]
        if len(finite):
            lo[j], hi[j] = np.percentile(finite, [tail, 100 - tail])
    return lo, hi


def _std(replicates: np.ndarray) -> np.ndarray:
    """Sample standard deviation (ddof=1) per column over the non-NaN replicates."""
    out = np.full(replicates.shape[1], math.nan)
    for j in range(replicates.shape[1]):
        finite = replicates[:, j][~np.isnan(replicates[:, j])]
        if len(finite) > 1:
            out[j] = finite.std(ddof=1)
    return out


def bootstrap_summary(
    predictions: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    class_set: str = "dataset",
) -> pd.DataFrame:
    """Table 2 of one prediction set with bootstrap uncertainty.

    predictions: one row per test sample (columns dataset, labels, prediction, age, sex; see
    :mod:`eqpo.core.metrics`). Replicates resample rows with replacement within each dataset
    (:func:`bootstrap_counts`) and recompute :func:`eqpo.core.metrics.fairness_summary` on each.

    Returns a frame indexed by the 11 :data:`TABLE2_COLUMNS` (index name "column") with columns
    estimate (fairness_summary of the full data), lo, hi (percentile interval at ``level``) and
    se (standard deviation of the replicates), all raw fractions. ``attrs`` records n_boot, seed,
    level, class_set. ``class_set`` is that of :func:`eqpo.core.metrics.fairness_summary`.
    """
    estimate = fairness_summary(predictions, class_set)
    counts = bootstrap_counts(predictions, n_boot, seed)
    replicates = _summaries(_encode(predictions), counts, class_set)
    lo, hi = _interval(replicates, level)
    out = pd.DataFrame(
        {"estimate": [estimate[c] for c in TABLE2_COLUMNS], "lo": lo, "hi": hi, "se": _std(replicates)},
        index=pd.Index(TABLE2_COLUMNS, name="column"),
    )
    out.attrs.update(n_boot=int(n_boot), seed=int(seed), level=float(level), class_set=class_set)
    return out


# ----------------------------------------------------------------------------------------------
# Paired bootstrap
# ----------------------------------------------------------------------------------------------


def _sample_ids(predictions: pd.DataFrame, which: str) -> pd.Index:
    """The ``sample_id`` column as an Index; ValueError if absent, missing or duplicated."""
    if "sample_id" not in predictions.columns:
        raise ValueError(f"{which} has no 'sample_id' column; the paired bootstrap pairs rows by it")
    ids = pd.Index(predictions["sample_id"])
    if ids.hasnans:
        raise ValueError(f"{which} has missing sample_id values")
    if not ids.is_unique:
        dup = ids[ids.duplicated()].unique()[:5].tolist()
        raise ValueError(f"{which} has duplicated sample_id values, e.g. {dup}")
    return ids


def _alignment(pred_a: pd.DataFrame, pred_b: pd.DataFrame) -> np.ndarray:
    """(N,) position in ``pred_a`` of each row of ``pred_b`` (same sample_id); ValueError unless
    the two frames hold the same sample_ids, each with the same dataset."""
    ids_a, ids_b = _sample_ids(pred_a, "pred_a"), _sample_ids(pred_b, "pred_b")
    only_a, only_b = ids_a.difference(ids_b), ids_b.difference(ids_a)
    if len(only_a) or len(only_b):
        raise ValueError(
            "pred_a and pred_b must hold the same sample_ids (the paired bootstrap draws the same "
            f"samples for both): {len(only_a)} only in pred_a (e.g. {only_a[:3].tolist()}), "
            f"{len(only_b)} only in pred_b (e.g. {only_b[:3].tolist()})"
        )
    position = ids_a.get_indexer(ids_b)
    ds_a = pred_a["dataset"].to_numpy(dtype=object)[position]
    ds_b = pred_b["dataset"].to_numpy(dtype=object)
    differ = ds_a != ds_b
    if differ.any():
        first = int(np.flatnonzero(differ)[0])
        raise ValueError(
            f"sample_id {ids_b[first]!r} belongs to dataset {ds_a[first]!r} in pred_a but "
            f"{ds_b[first]!r} in pred_b ({int(differ.sum())} such sample_id(s))"
        )
    return position


def _p_value(observed: float, replicates: np.ndarray) -> float:
    """Two-sided bootstrap p-value of a difference: 2 x (1 + replicates on the other side of 0,
    ties with 0 included) / (1 + replicates), capped at 1; 1 when the observed difference is 0."""
    finite = replicates[~np.isnan(replicates)]
    if math.isnan(observed) or not len(finite):
        return math.nan
    if observed == 0:
        return 1.0
    other = int((finite <= 0).sum()) if observed > 0 else int((finite >= 0).sum())
    return min(1.0, 2.0 * (other + 1) / (len(finite) + 1))


def paired_bootstrap(
    pred_a: pd.DataFrame,
    pred_b: pd.DataFrame,
    n_boot: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    class_set: str = "dataset",
) -> pd.DataFrame:
    """Difference metric(a) - metric(b) of two methods on the same test samples.

    pred_a, pred_b: prediction frames (as for :func:`bootstrap_summary`) plus ``sample_id``; they
    must hold the same sample_ids, each in the same dataset (ValueError otherwise; row order may
    differ). Each replicate draws samples within each dataset (the draw of
    :func:`bootstrap_counts` on ``pred_a``) and evaluates both methods on exactly those samples.

    Returns a frame indexed by the 11 :data:`TABLE2_COLUMNS` (index name "column") with columns
    diff (metric(a) - metric(b) on the full data), lo, hi (percentile interval of the replicate
    differences at ``level``), p_value (two-sided: twice the share of replicate differences on the
    other side of 0 from ``diff`` -- ties with 0 counted there -- with the +1 correction,
    2 (k + 1) / (B + 1), capped at 1; 1 when diff is 0), a and b (each method's value on the full
    data). Raw fractions.
    """
    position = _alignment(pred_a, pred_b)
    est_a, est_b = fairness_summary(pred_a, class_set), fairness_summary(pred_b, class_set)
    counts_a = bootstrap_counts(pred_a, n_boot, seed)
    counts_b = counts_a[:, position]
    reps = _summaries(_encode(pred_a), counts_a, class_set) - _summaries(_encode(pred_b), counts_b, class_set)
    diff = np.array([est_a[c] - est_b[c] for c in TABLE2_COLUMNS])
    lo, hi = _interval(reps, level)
    out = pd.DataFrame(
        {
            "diff": diff,
            "lo": lo,
            "hi": hi,
            "p_value": [_p_value(d, reps[:, j]) for j, d in enumerate(diff)],
            "a": [est_a[c] for c in TABLE2_COLUMNS],
            "b": [est_b[c] for c in TABLE2_COLUMNS],
        },
        index=pd.Index(TABLE2_COLUMNS, name="column"),
    )
    out.attrs.update(n_boot=int(n_boot), seed=int(seed), level=float(level))
    return out


# ----------------------------------------------------------------------------------------------
# Seeds
# ----------------------------------------------------------------------------------------------


def seed_summary(
    metrics_df: pd.DataFrame,
    models: Sequence[str] | None = None,
    methods: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Spread of the Table 2 columns over training seeds.

    metrics_df: :func:`eqpo.analysis.collect.read_metrics` output (one row per run). Returns a
    long frame indexed by (model, method, column) -- models in order of appearance, methods in
    :data:`~eqpo.analysis.style.METHOD_ORDER`, columns in :data:`TABLE2_COLUMNS` order -- with
    columns mean, std (ddof=1; NaN with one seed), n (seeds with a defined value) and se
    (std / sqrt(n)), raw fractions. The wide forms are :func:`eqpo.analysis.tables.table2` and
    :func:`~eqpo.analysis.tables.table2_std`.
    """
    selected, model_order, method_order = _select(metrics_df, models, methods)
    long = selected.melt(id_vars=list(RUN_KEYS), value_vars=list(TABLE2_COLUMNS), var_name="column")
    long["value"] = long["value"].astype(float)
    stats = (
        long.groupby(["model", "method", "column"], sort=False)["value"]
        .agg(["mean", "std", "count"])
        .rename(columns={"count": "n"})
    )
    stats["n"] = stats["n"].astype("int64")
    stats["se"] = stats["std"] / np.sqrt(stats["n"].where(stats["n"] > 0))
    rank = {
        "model": {m: i for i, m in enumerate(model_order)},
        "method": {m: i for i, m in enumerate(method_order)},
        "column": {c: i for i, c in enumerate(TABLE2_COLUMNS)},
    }
    stats = stats.sort_index(key=lambda level: level.map(rank[level.name]))
    return stats[["mean", "std", "n", "se"]]
