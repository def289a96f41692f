"""Fairness metrics of the paper's Table 2 and its per-group Tables 5-17 (docs/method.md §4).

Input
-----
``predictions``: a pandas DataFrame with one row per evaluated sample and the columns

- ``dataset`` (str): the dataset key, e.g. "CheXpert"; must not be missing.
- ``labels`` (list-like of str): the true label set.
- ``prediction`` (list-like of str): the predicted label set; empty = unparseable / no answer.
- ``age`` (float, years): binned with :func:`eqpo.core.groups.age_bin` into a1..a4; NaN = missing.
- ``sex``: normalised with :func:`eqpo.core.groups.normalize_sex` to "F"/"M"; anything else = missing.

"List-like" means a list, tuple, set, frozenset or 1-D numpy array (a bare string is not). Missing
entries (None/NaN) inside a label list are ignored.

Definitions
-----------
- Classes of dataset k: the labels that occur in k's ground truth (over all of k's rows).
  Predicted labels outside that set are ignored. One-vs-rest per class c: y = c in labels,
  p = c in prediction.
- Attributes: "sex" (groups F, M) and "age" (groups a1..a4), separately. A row missing an
  attribute's value is left out of that attribute's groups. An attribute with fewer than two groups
  present in a dataset is skipped for that dataset.
- Per class c and group g, from the one-vs-rest counts TP/FP/TN/FN over the n rows of g:
  Acc = (TP+TN)/n, TPR = TP/(TP+FN), FPR = FP/(FP+TN), FDR = FP/(FP+TP), F1 = 2TP/(2TP+FP+FN);
  every 0/0 is 0. A group's metric is the unweighted mean over its classes, by ``class_set``:
  ``"dataset"`` (the paper text): every class of the dataset, so a class that never occurs in a
  group gives that group TPR = F1 = 0; ``"group_present"`` (the authors' evaluator, the
  reproduction default in config.yaml): only the classes with at least one positive in that
  group's ground truth (a group with none gets 0).
- Per dataset and attribute, over the groups present: level = mean, gap = max - min,
  sigma = sample standard deviation (ddof = 1).
- Per dataset: the mean over its usable attributes. A dataset with NO usable attribute has its
  levels computed over all its rows as one group (attribute "all", group "all") and NaN gaps and
  sigmas, so its Acc_ES and F1_ES are NaN too.
- Overall: the unweighted mean over datasets, skipping NaN (a column is NaN only when it is NaN for
  every dataset). Acc_ES = Acc / (1 + sigma_Acc) and F1_ES = F1 / (1 + sigma_F1) are computed from
  the overall Acc, F1 and sigmas (not averaged from the per-dataset ES values).

Units: every value is a raw fraction in [0, 1] (sigmas in [0, 1] too); the paper prints some columns
x100, see :data:`PAPER_SCALE`. Printing belongs to the report code, not here.

Cost: per dataset the label sets become (n x C) 0/1 matrices and all per-group counts come from one
matrix product with a (n x G) one-hot group matrix; there is no Python loop over rows.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from eqpo.core.groups import AGE_BINS, AGE_EDGES, SEXES, age_bin, normalize_sex
from eqpo.core.options import CLASS_SETS
from eqpo.core.vocabularies import ATTRIBUTES

REQUIRED_COLUMNS = ("dataset", "labels", "prediction", "age", "sex")
METRICS = ("Acc", "F1", "TPR", "FPR", "FDR")
TABLE2_COLUMNS = (
    "PP",
    "EOD",
    "FPR_diff",
    "sigma_F1",
    "delta_F1",
    "sigma_Acc",
    "delta_Acc",
    "Acc",
    "F1",
    "Acc_ES",
    "F1_ES",
)
# Factor the paper uses when printing each Table 2 column (values here are raw fractions).
PAPER_SCALE: dict[str, float] = {
    "PP": 100.0,
    "EOD": 100.0,
    "FPR_diff": 100.0,
    "sigma_F1": 1.0,
    "delta_F1": 1.0,
    "sigma_Acc": 100.0,
    "delta_Acc": 100.0,
    "Acc": 100.0,
    "F1": 1.0,
    "Acc_ES": 100.0,
    "F1_ES": 1.0,
}
# Table 2 column -> (metric, statistic) of the per-dataset summary it reads.
TABLE2_SOURCE = {
    "PP": ("FDR", "gap"),
    "EOD": ("TPR", "gap"),
    "FPR_diff": ("FPR", "gap"),
    "sigma_F1": ("F1", "sigma"),
    "delta_F1": ("F1", "gap"),
    "sigma_Acc": ("Acc", "sigma"),
    "delta_Acc": ("Acc", "gap"),
    "Acc": ("Acc", "level"),
    "F1": ("F1", "level"),
}
ATTRIBUTE_GROUPS: dict[str, tuple[str, ...]] = {"sex": SEXES, "age": AGE_BINS}
ALL = "all"  # attribute and group name used when a dataset has no usable attribute
_LIST_TYPES = (list, tuple, set, frozenset, np.ndarray)


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def validate_predictions(predictions: pd.DataFrame, columns: Sequence[str] = REQUIRED_COLUMNS) -> None:
    """Raise a helpful error unless ``predictions`` is a non-empty DataFrame fit for the metrics.

    Checks: a DataFrame (TypeError otherwise), at least one row, the given ``columns`` present, no
    missing ``dataset``, and list-like ``labels`` / ``prediction`` cells (ValueError otherwise).
    """
    if not isinstance(predictions, pd.DataFrame):
        raise TypeError(f"predictions must be a pandas DataFrame, got {type(predictions).__name__}")
    missing = [c for c in columns if c not in predictions.columns]
    if missing:
        raise ValueError(
            f"predictions is missing column(s) {missing}; expected columns {list(columns)}, "
            f"got {list(predictions.columns)}"
        )
    if len(predictions) == 0:
        raise ValueError("predictions is empty: the metrics need at least one evaluated sample")
    if "dataset" in columns and predictions["dataset"].isna().any():
        bad = predictions.index[predictions["dataset"].isna().to_numpy()][0]
        raise ValueError(f"column 'dataset' has a missing value (first at row index {bad!r})")
    for column in ("labels", "prediction"):
        if column in columns:
            _check_list_like(predictions[column], column)


def _is_list_like(value: object) -> bool:
    """True for a list, tuple, set, frozenset or 1-D numpy array."""
    if isinstance(value, np.ndarray):
        return value.ndim == 1
    return isinstance(value, _LIST_TYPES)


def _check_list_like(series: pd.Series, column: str) -> None:
    """ValueError naming the first row index whose cell is not a label list."""
    values = series.tolist()
    kinds = set(map(type, values))
    if kinds <= {list, tuple, set, frozenset}:  # fast path: no per-row Python check needed
        return
    ok = np.fromiter(map(_is_list_like, values), dtype=bool, count=len(values))
    if ok.all():
        return
    first = int(np.flatnonzero(~ok)[0])
    raise ValueError(
        f"column {column!r} must hold a list-like of labels per row (list, tuple, set or 1-D numpy "
        f"array; [] for none); row index {series.index[first]!r} holds "
        f"{type(values[first]).__name__} {values[first]!r} ({int((~ok).sum())} bad row(s) in all)"
    )


# ----------------------------------------------------------------------------------------------
# Encoding: label sets -> (n x C) matrices, demographics -> group codes
# ----------------------------------------------------------------------------------------------


def _flatten(series: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """Label-list column -> (rows, items): row position (int64) and value of every list entry."""
    values = series.tolist()
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=len(values))
    total = int(lengths.sum())
    items = np.fromiter(itertools.chain.from_iterable(values), dtype=object, count=total)
    return np.repeat(np.arange(len(values), dtype=np.int64), lengths), items


def _dataset_classes(truth_items: np.ndarray) -> pd.Index:
    """Distinct non-missing true labels of one dataset, sorted (by their text) for determinism."""
    uniques = pd.unique(pd.Series(truth_items, dtype=object).dropna())
    return pd.Index(sorted(uniques, key=str), dtype=object)


def _indicator(rows: np.ndarray, items: np.ndarray, classes: pd.Index, n_rows: int) -> np.ndarray:
    """(n_rows, C) float 0/1 matrix: [r, c] = 1 when class c is in row r's list; others ignored."""
    codes = classes.get_indexer(items)
    keep = codes >= 0
    matrix = np.zeros((n_rows, len(classes)))
    matrix[rows[keep], codes[keep]] = 1.0
    return matrix


def _codes_from(series: pd.Series, to_group: Callable[[object], str | None], names: Sequence[str]) -> np.ndarray:
    """(n,) int64 group index into ``names`` per row, -1 where ``to_group`` gives None.

    ``to_group`` runs once per distinct value, not once per row.
    """
    codes, uniques = pd.factorize(series, use_na_sentinel=True)
    position = {name: i for i, name in enumerate(names)}
    lookup = np.array([position.get(to_group(u), -1) for u in uniques] + [-1], dtype=np.int64)
    return lookup[codes]  # code -1 (missing) reads the trailing -1


def _numeric_age_codes(age: pd.Series) -> np.ndarray:
    """(n,) age-bin index 0..3 of a numeric age column, -1 for NaN, negative or non-finite ages.

    The vectorised form of :func:`eqpo.core.groups.age_bin` for numbers (bin i holds
    AGE_EDGES[i-1] < age <= AGE_EDGES[i]); tests check the two agree.
    """
    values = age.to_numpy(dtype=float, na_value=np.nan)
    edges = np.asarray(AGE_EDGES, dtype=float)
    codes = np.searchsorted(edges, values, side="left").astype(np.int64)
    codes[~(np.isfinite(values) & (values >= 0))] = -1
    return codes


def _age_codes(age: pd.Series) -> np.ndarray:
    """(n,) index into AGE_BINS per row, -1 where the age is missing (as age_bin returns None)."""
    dtype = age.dtype
    if pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype):
        return _numeric_age_codes(age)  # many distinct float ages: avoid one Python call each
    return _codes_from(age, age_bin, AGE_BINS)


def attribute_codes(predictions: pd.DataFrame) -> dict[str, np.ndarray]:
    """attribute -> (n,) int64 index into ``ATTRIBUTE_GROUPS[attribute]``, -1 where missing.

    Age is binned as :func:`eqpo.core.groups.age_bin` does (a vectorised equivalent for numeric columns),
    sex goes through :func:`eqpo.core.groups.normalize_sex` once per distinct value.
    """
    codes = {
        "sex": _codes_from(predictions["sex"], normalize_sex, SEXES),
        "age": _age_codes(predictions["age"]),
    }
    return {attribute: codes[attribute] for attribute in ATTRIBUTES}


# ----------------------------------------------------------------------------------------------
# Counts and rates
# ----------------------------------------------------------------------------------------------


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise with 0/0 (and x/0) = 0."""
    out = np.zeros(np.broadcast(num, den).shape)
    np.divide(num, den, out=out, where=den > 0)
    return out


def one_hot(codes: np.ndarray, n_groups: int) -> np.ndarray:
    """(n, G) float 0/1 membership matrix from (n,) group codes; a row with code -1 is all zeros."""
    valid = codes >= 0
    membership = np.zeros((len(codes), n_groups))
    membership[np.flatnonzero(valid), codes[valid]] = 1.0
    return membership


def confusion_by_group(truth: np.ndarray, pred: np.ndarray, membership: np.ndarray):
    """One-vs-rest counts per (group, class), from one matrix product.

    truth, pred: (n, C) 0/1 matrices; membership: (n, G) 0/1 matrix, row r in group g when
    [r, g] = 1 (columns of several attributes may sit side by side; a row may be in none).
    Returns (size, tp, fp, fn, tn): size (G,) rows per group, the others (G, C) float counts
    (exact integers).
    """
    n_classes = truth.shape[1]
    counts = membership.T @ np.hstack([truth, pred, truth * pred])  # (G, 3C)
    positives, predicted, tp = np.split(counts, [n_classes, 2 * n_classes], axis=1)
    size = membership.sum(axis=0)
    fn = positives - tp
    fp = predicted - tp
    tn = size[:, None] - tp - fp - fn
    return size, tp, fp, fn, tn


def check_class_set(class_set: str) -> str:
    if class_set not in CLASS_SETS:
        raise ValueError(f"class_set must be one of {list(CLASS_SETS)}, got {class_set!r}")
    return class_set


def class_mean(values: np.ndarray, positives: np.ndarray, class_set: str) -> np.ndarray:
    """(..., G) mean over the last (class) axis of (..., G, C) per-class values: every class
    (``"dataset"``) or the classes with positives > 0 in the group (``"group_present"``; 0 when
    there are none)."""
    if check_class_set(class_set) == "dataset":
        return values.mean(axis=-1)
    present = positives > 0
    return _safe_div((values * present).sum(axis=-1), present.sum(axis=-1).astype(float))


def group_rates(
    size: np.ndarray, tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, tn: np.ndarray, class_set: str = "dataset"
):
    """metric -> (..., G) class-mean rate per group, from (..., G, C) counts and (..., G) group sizes
    (leading axes: e.g. bootstrap replicates).

    Acc=(TP+TN)/n, F1=2TP/(2TP+FP+FN), TPR=TP/(TP+FN), FPR=FP/(FP+TN), FDR=FP/(FP+TP); 0/0 = 0.
    The class mean runs over the classes ``class_set`` names (see :func:`class_mean`).
    """
    per_class = {
        "Acc": _safe_div(tp + tn, size[..., None]),
        "F1": _safe_div(2 * tp, 2 * tp + fp + fn),
        "TPR": _safe_div(tp, tp + fn),
        "FPR": _safe_div(fp, fp + tn),
        "FDR": _safe_div(fp, fp + tp),
    }
    return {metric: class_mean(values, tp + fn, class_set) for metric, values in per_class.items()}


def spread(values: np.ndarray) -> tuple[float, float, float]:
    """(level, gap, sigma) of per-group values: mean, max - min, sample std (ddof=1).

    With fewer than two groups the gap and sigma are NaN.
    """
    values = np.asarray(values, dtype=float)
    level = float(values.mean())
    if len(values) < 2:
        return level, math.nan, math.nan
    return level, float(values.max() - values.min()), float(values.std(ddof=1))


# ----------------------------------------------------------------------------------------------
# Per-dataset tables
# ----------------------------------------------------------------------------------------------


def _usable_attributes(
    codes: dict[str, np.ndarray],
) -> dict[str, tuple[np.ndarray, tuple[str, ...]]]:
    """attribute -> (codes, group names) of the attributes with >= 2 groups present.

    When none qualifies: {"all": (all-zero codes, ("all",))}, i.e. every row in one group.
    """
    usable = {}
    for attribute, attr_codes in codes.items():
        names = ATTRIBUTE_GROUPS[attribute]
        present = np.bincount(attr_codes[attr_codes >= 0], minlength=len(names)) > 0
        if present.sum() >= 2:
            usable[attribute] = (attr_codes, names)
    if not usable:
        n_rows = len(next(iter(codes.values())))
        usable[ALL] = (np.zeros(n_rows, dtype=np.int64), (ALL,))
    return usable


def _dataset_tables(
    dataset: object,
    truth: np.ndarray,
    pred: np.ndarray,
    codes: dict[str, np.ndarray],
    class_set: str = "dataset",
) -> tuple[list[dict], list[dict]]:
    """by_group and by_attribute rows (lists of dicts) of one dataset.

    truth, pred: (n, C) 0/1 matrices of the dataset's rows; codes: attribute -> (n,) group codes.
    """
    usable = _usable_attributes(codes)
    membership = np.hstack([one_hot(c, len(names)) for c, names in usable.values()])
    size, *counts = confusion_by_group(truth, pred, membership)
    rates = group_rates(size, *counts, class_set=class_set)
    group_rows, attribute_rows = [], []
    start = 0
    for attribute, (_, names) in usable.items():
        block = slice(start, start + len(names))
        start += len(names)
        g_rows, a_row = _attribute_tables(
            dataset, attribute, names, size[block], {m: r[block] for m, r in rates.items()}
        )
        group_rows += g_rows
        attribute_rows.append(a_row)
    return group_rows, attribute_rows


def _attribute_tables(
    dataset: object, attribute: str, names: Sequence[str], size: np.ndarray, rates: dict
) -> tuple[list[dict], dict]:
    """by_group rows (groups present only) and the by_attribute row of one (dataset, attribute)."""
    present = np.flatnonzero(size > 0)
    group_rows = []
    for g in present:
        row = {"dataset": dataset, "attribute": attribute, "group": names[g], "n": int(size[g])}
        row.update({metric: float(rates[metric][g]) for metric in METRICS})
        group_rows.append(row)
    summary = {
        "dataset": dataset,
        "attribute": attribute,
        "n": int(size.sum()),
        "n_groups": len(present),
    }
    for metric in METRICS:
        level, gap, sigma = spread(rates[metric][present])
        summary.update({metric: level, f"{metric}_gap": gap, f"{metric}_sigma": sigma})
    return group_rows, summary


def effective_size(level: float, sigma: float) -> float:
    """Equity-scaled level: level / (1 + sigma) (the paper's Acc_ES and F1_ES); NaN if sigma is."""
    return float(level / (1.0 + sigma))


def _with_effective_sizes(row: dict) -> dict:
    """Add Acc_ES and F1_ES to a dict holding Acc, F1, sigma_Acc, sigma_F1."""
    row["Acc_ES"] = effective_size(row["Acc"], row["sigma_Acc"])
    row["F1_ES"] = effective_size(row["F1"], row["sigma_F1"])
    return row


def _table2_row(attribute_rows: pd.DataFrame) -> dict:
    """Table 2 columns of one dataset from its by_attribute rows (mean over usable attributes)."""
    stat_column = {"level": "{}", "gap": "{}_gap", "sigma": "{}_sigma"}
    row = {}
    for column, (metric, stat) in TABLE2_SOURCE.items():
        values = attribute_rows[stat_column[stat].format(metric)].to_numpy(dtype=float)
        row[column] = float(values.mean())  # NaN only for the one-group "all" fallback
    return _with_effective_sizes(row)


def _nanmean(values: np.ndarray) -> float:
    """Mean over the non-NaN values; NaN when there are none (no warning)."""
    values = np.asarray(values, dtype=float)
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if len(finite) else math.nan


def _overall(by_dataset: pd.DataFrame) -> dict[str, float]:
    """Table 2 dict: each column's mean over datasets (NaN skipped); ES from the overall means."""
    row = {column: _nanmean(by_dataset[column].to_numpy()) for column in TABLE2_SOURCE}
    row = _with_effective_sizes(row)
    return {column: float(row[column]) for column in TABLE2_COLUMNS}


def unparseable_share(predictions: pd.DataFrame) -> pd.Series:
    """Share (fraction in [0, 1]) of each dataset's rows whose ``prediction`` is empty.

    Returns a float Series indexed by dataset (sorted), named "unparseable_share".
    """
    validate_predictions(predictions, columns=("dataset", "prediction"))
    return _unparseable_share(predictions)


def _unparseable_share(predictions: pd.DataFrame) -> pd.Series:
    """:func:`unparseable_share` without the input checks."""
    empty = np.fromiter(map(len, predictions["prediction"].tolist()), dtype=np.int64) == 0
    by_dataset = pd.Series(empty, index=predictions["dataset"].to_numpy()).groupby(level=0)
    share = by_dataset.mean()
    share.index.name = "dataset"
    return share.astype(float).rename("unparseable_share")


# ----------------------------------------------------------------------------------------------
# Encoding a predictions frame (shared by the report and the bootstrap)
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class EncodedDataset:
    """One dataset of a predictions frame as 0/1 matrices.

    rows: (n,) positions of its rows in the frame; classes: its classes (sorted; those in its ground
    truth); truth, prediction: (n, C) 0/1 matrices, rows in frame order; codes: attribute -> (n,)
    group code of each row (-1 missing; see :func:`attribute_codes`).
    """

    name: object
    rows: np.ndarray
    classes: tuple
    truth: np.ndarray
    prediction: np.ndarray
    codes: dict[str, np.ndarray]


def encode_predictions(predictions: pd.DataFrame) -> list[EncodedDataset]:
    """Validate a predictions frame and encode it per dataset, datasets sorted by name."""
    validate_predictions(predictions)
    truth = _flatten(predictions["labels"])
    pred = _flatten(predictions["prediction"])
    codes = attribute_codes(predictions)
    ds_codes, ds_names = pd.factorize(predictions["dataset"])
    position = _position_within(ds_codes)
    out = []
    for d in sorted(range(len(ds_names)), key=lambda i: str(ds_names[i])):
        name, in_dataset = ds_names[d], ds_codes == d
        rows = np.flatnonzero(in_dataset)
        classes, y, p = _dataset_matrices(name, in_dataset, position, truth, pred)
        out.append(EncodedDataset(name, rows, classes, y, p, {a: c[rows] for a, c in codes.items()}))
    return out


# ----------------------------------------------------------------------------------------------
# The report
# ----------------------------------------------------------------------------------------------


_ATTRIBUTE_COLUMNS = ["dataset", "attribute", "n", "n_groups"] + [
    f"{metric}{suffix}" for metric in METRICS for suffix in ("", "_gap", "_sigma")
]
_GROUP_COLUMNS = ["dataset", "attribute", "group", "n", *METRICS]


@dataclass(frozen=True, eq=False)
class FairnessReport:
    """All fairness metrics of one set of predictions, as plain DataFrames (fractions, not x100).

    by_group: one row per (dataset, attribute, group present) with columns dataset, attribute,
        group, n (rows in the group), Acc, F1, TPR, FPR, FDR (class means); the paper's Tables 5-17.
    by_attribute: one row per (dataset, usable attribute): dataset, attribute, n (rows with a
        value), n_groups, and for m in Acc, F1, TPR, FPR, FDR the level ``m`` (mean over groups),
        ``m_gap`` (max - min) and ``m_sigma`` (sample std, ddof=1).
    by_dataset: one row per dataset (sorted): the Table 2 columns for that dataset alone
        (:data:`TABLE2_COLUMNS`), n (rows), unparseable_share, attributes (the usable ones,
        comma-joined; "all" when none was usable).
    overall: the Table 2 dict (mean over datasets), as returned by :func:`fairness_summary`.
    classes: dataset -> its classes (sorted tuple of the labels in its ground truth).
    class_set: which classes a group's rates average over ("dataset" or "group_present").

    A dataset with no usable attribute appears with attribute = group = "all", NaN gaps and sigmas.
    """

    by_group: pd.DataFrame
    by_attribute: pd.DataFrame
    by_dataset: pd.DataFrame
    overall: dict[str, float]
    classes: dict[object, tuple] = field(default_factory=dict)
    class_set: str = "dataset"

    @classmethod
    def from_predictions(cls, predictions: pd.DataFrame, class_set: str = "dataset") -> FairnessReport:
        """Compute every table from a predictions frame (columns: see the module docstring);
        ``class_set``: ``"dataset"`` or ``"group_present"`` (see the module docstring)."""
        check_class_set(class_set)
        group_rows, attribute_rows, classes = [], [], {}
        for data in encode_predictions(predictions):
            classes[data.name] = data.classes
            g_rows, a_rows = _dataset_tables(data.name, data.truth, data.prediction, data.codes, class_set)
            group_rows += g_rows
            attribute_rows += a_rows
        by_group = pd.DataFrame(group_rows, columns=_GROUP_COLUMNS)
        by_attribute = pd.DataFrame(attribute_rows, columns=_ATTRIBUTE_COLUMNS)
        by_dataset = _by_dataset(by_attribute, predictions)
        return cls(by_group, by_attribute, by_dataset, _overall(by_dataset), classes, class_set)


def _position_within(codes: np.ndarray) -> np.ndarray:
    """(n,) position of each row among the rows with the same code, in frame order."""
    order = np.argsort(codes, kind="stable")
    sorted_codes = codes[order]
    position = np.empty(len(codes), dtype=np.int64)
    position[order] = np.arange(len(codes)) - np.searchsorted(sorted_codes, sorted_codes)
    return position


def _dataset_matrices(
    dataset: object,
    in_dataset: np.ndarray,
    position: np.ndarray,
    truth: tuple[np.ndarray, np.ndarray],
    pred: tuple[np.ndarray, np.ndarray],
) -> tuple[tuple, np.ndarray, np.ndarray]:
    """(classes, truth matrix, prediction matrix) of one dataset.

    in_dataset: (N,) bool mask of the dataset's n rows in the frame; position: (N,) row position
    within its dataset; truth, pred: the (rows, items) pairs of :func:`_flatten` over the frame.
    The matrices are (n, C) 0/1: rows in frame order, columns in the order of the sorted classes.
    """
    n_rows = int(in_dataset.sum())
    t_sel, p_sel = in_dataset[truth[0]], in_dataset[pred[0]]
    classes = _dataset_classes(truth[1][t_sel])
    if len(classes) == 0:
        raise ValueError(
            f"dataset {dataset!r} has no ground-truth label in any of its {n_rows} row(s), "
            "so it has no classes to evaluate"
        )
    y = _indicator(position[truth[0][t_sel]], truth[1][t_sel], classes, n_rows)
    p = _indicator(position[pred[0][p_sel]], pred[1][p_sel], classes, n_rows)
    return tuple(classes), y, p


def _by_dataset(by_attribute: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """by_dataset table: per dataset Table 2 columns, n, unparseable_share and usable attributes."""
    share = _unparseable_share(predictions)
    sizes = predictions.groupby("dataset", sort=True).size()
    rows = []
    for dataset, attribute_rows in by_attribute.groupby("dataset", sort=False):
        row = {"dataset": dataset, **_table2_row(attribute_rows)}
        row["n"] = int(sizes[dataset])
        row["unparseable_share"] = float(share[dataset])
        row["attributes"] = ",".join(attribute_rows["attribute"].astype(str))
        rows.append(row)
    columns = ["dataset", *TABLE2_COLUMNS, "n", "unparseable_share", "attributes"]
    return pd.DataFrame(rows, columns=columns)


def fairness_summary(predictions: pd.DataFrame, class_set: str = "dataset") -> dict[str, float]:
    """Paper Table 2 of one set of predictions: {column: python float}, in TABLE2_COLUMNS order.

    PP = FDR gap, EOD = TPR gap, FPR_diff = FPR gap, sigma_F1, delta_F1 = F1 gap, sigma_Acc,
    delta_Acc = Acc gap, Acc, F1 (levels), Acc_ES = Acc / (1 + sigma_Acc),
    F1_ES = F1 / (1 + sigma_F1).
    Each is averaged over a dataset's usable attributes, then over datasets (equal weights, NaN
    skipped: a dataset with no usable attribute contributes its levels but no gaps or sigmas).
    Raw fractions; multiply by :data:`PAPER_SCALE` to print as the paper does. ``class_set``:
    which classes a group's rates average over (module docstring).
    """
    return dict(FairnessReport.from_predictions(predictions, class_set).overall)
