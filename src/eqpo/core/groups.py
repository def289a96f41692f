"""Demographic (explicit) and latent (implicit) grouping.

Explicit groups have two definitions (config ``groups.definition``):

- ``paper`` (docs/method.md §1, paper Table 1): age bins a1 <= 25 < a2 <= 50 < a3 <= 75 < a4, sex
  F/M, and the group of a sample is the intersection of the attributes its dataset records ("F|a3";
  an age-only dataset gives "a3"). A sample missing any of its dataset's attributes has no explicit
  group (None) and is treated as unlabeled, i.e. it gets an implicit group by K-means on reward
  vectors.
- ``authors_code`` (the authors' training data loader, mirl ``rl_dataset.py``
  ``_process_demographic_info``): the same bins, but a missing part is the value "unk" ("M|unk"),
  and a prompt is unlabeled only when its group is a single unknown part (an age-only dataset
  without an age: the loader's "UNK"); two missing parts make the explicit group "unk|unk" (the
  loader's "N,UNK"). Sex is not used for Hemorrhage and PAD-UFES-20 (their records name it
  "gender", which the loader does not read), so those two datasets have age-only groups. As in the
  loader, an age written as the text "nan" falls in the oldest bin (``float("nan")`` fails every
  ``<=`` test) and a negative age in the youngest. Our dataset modules store a missing age as a
  missing value, never as the text "nan", and drop negative placeholders (COVID-BLUES' -99), so
  these two cases arise only in your own cohorts.

GRPO+RS oversamples cells (:func:`resampling_cells`): under ``authors_code`` the cells of the
authors' ``scripts/balance_demographics.py`` (qoq_med3), which reads "sex" and "gender", so every
dataset that records sex (Hemorrhage and PAD-UFES-20 included) is balanced over sex x age, a
missing part is "unk" (an age "nan" too) and the wholly unknown cell is balanced like any other;
under ``paper`` the explicit groups, unlabeled prompts kept once.

Implicit groups use K-means with the elbow rule of the authors' code (docs/method.md §3.6), run on
DISTINCT reward vectors weighted by how many prompts produced them: the K-means objective is the
same as on the raw rows, and the cost is bounded by the number of distinct vectors (at most 2**n for
binary rewards), not by the number of prompts seen.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from eqpo.core.options import GROUP_DEFINITIONS
from eqpo.core.vocabularies import ATTRIBUTES

AGE_BINS = ("a1", "a2", "a3", "a4")
UNKNOWN = "unk"
# Datasets whose sex the authors' loader does not read (their demographics name it "gender").
AUTHORS_AGE_ONLY = ("Hemorrhage", "PAD-UFES-20")
AGE_EDGES = (25.0, 50.0, 75.0)  # upper edges (inclusive) of a1, a2, a3
SEXES = ("F", "M")
_SEX_WORDS = {"f": "F", "female": "F", "woman": "F", "w": "F", "m": "M", "male": "M", "man": "M"}


def age_bin(age: object, definition: str = "paper") -> str | None:
    """Age in years -> "a1".."a4"; None for a missing, non-numeric, negative or non-finite age.

    DICOM-style strings such as "053Y" are read as 53 years. ``definition="authors_code"`` bins as
    the authors' loader: the text "nan" -> "a4" and a negative age -> "a1" (a missing value, a
    non-numeric text and an infinite age stay None).
    """
    if age is None or isinstance(age, bool):
        return None
    authors = definition == "authors_code"
    if isinstance(age, str):
        text = age.strip().upper()
        if authors and text == "NAN":
            return AGE_BINS[-1]
        if text.endswith("Y"):
            text = text[:-1]
        try:
            value = float(text)
        except ValueError:
            return None
    else:
        try:
            value = float(age)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return None
    if not math.isfinite(value):
        return None
    if value < 0:
        return AGE_BINS[0] if authors else None
    for name, edge in zip(AGE_BINS, AGE_EDGES, strict=False):
        if value <= edge:
            return name
    return AGE_BINS[-1]


def normalize_sex(sex: object) -> str | None:
    """ "F"/"female"/"Woman"/... -> "F"; "M"/"male"/... -> "M"; anything else (None, "O", NaN) -> None."""
    if not isinstance(sex, str):
        return None
    return _SEX_WORDS.get(sex.strip().lower())


def check_definition(definition: str) -> str:
    if definition not in GROUP_DEFINITIONS:
        raise ValueError(f"groups.definition must be one of {list(GROUP_DEFINITIONS)}, got {definition!r}")
    return definition


def group_attributes(dataset: str, attributes: Sequence[str], definition: str = "paper") -> tuple[str, ...]:
    """The attributes that make up ``dataset``'s explicit groups under ``definition``."""
    if check_definition(definition) == "authors_code" and dataset in AUTHORS_AGE_ONLY:
        return tuple(a for a in attributes if a != "sex")
    return tuple(attributes)


def explicit_group(
    age: object, sex: object, attributes: Sequence[str] = ATTRIBUTES, definition: str = "paper"
) -> str | None:
    """Intersectional group key of one sample, e.g. "F|a3" (sex first) or "a3" for age-only data.

    attributes: the demographic attributes that make up the groups (see :func:`group_attributes`).
    ``definition="paper"``: None when any of them is missing for this sample, or when there are
    none. ``definition="authors_code"``: a missing part is "unk" and ages are binned as the
    authors' loader (:func:`age_bin`); None only when there is no attribute or the one attribute
    is missing (the loader's "UNK"), so "unk|unk" is an explicit group.
    """
    check_definition(definition)
    parts = [_part(attribute, age, sex, definition) for attribute in ATTRIBUTES if attribute in attributes]
    if definition == "paper" and any(p is None for p in parts):
        return None
    if not parts or parts == [None]:
        return None
    return "|".join(UNKNOWN if p is None else p for p in parts)


def _part(attribute: str, age: object, sex: object, definition: str) -> str | None:
    return normalize_sex(sex) if attribute == "sex" else age_bin(age, definition)


def resampling_cell(age: object, sex: object, attributes: Sequence[str]) -> str:
    """The GRPO+RS cell of one sample as the authors' ``balance_demographics.py`` builds it: every
    recorded attribute of its dataset (sex, then age), a missing part "unk"; a negative age is "a1"
    and the text "nan" is "unk" (that script's reading); never None."""
    parts = []
    for attribute in ATTRIBUTES:
        if attribute not in attributes:
            continue
        if attribute == "age" and isinstance(age, str) and age.strip().lower() == "nan":
            parts.append(None)
        else:
            parts.append(_part(attribute, age, sex, "authors_code"))
    return "|".join(UNKNOWN if p is None else p for p in parts) or UNKNOWN


def regroup(table: pd.DataFrame, definition: str, specs: dict | None = None) -> pd.DataFrame:
    """A copy of a cohort table whose ``group`` column follows ``definition``, from the recorded
    ``age`` and ``sex``; ``true_group`` (where present, with ``true_age``/``true_sex``) likewise.
    ``specs``: dataset -> DatasetSpec (default: :func:`eqpo.core.vocabularies.get_spec`)."""
    from eqpo.core.vocabularies import get_spec

    check_definition(definition)
    out = table.copy()
    for column, age_col, sex_col in (("group", "age", "sex"), ("true_group", "true_age", "true_sex")):
        if column not in out or age_col not in out or sex_col not in out:
            continue
        values = []
        for dataset, age, sex in zip(out["dataset"], out[age_col], out[sex_col], strict=False):
            spec = (specs or {}).get(dataset) or get_spec(str(dataset))
            values.append(
                explicit_group(age, sex, group_attributes(str(dataset), spec.attributes, definition), definition)
            )
        out[column] = pd.Series(values, index=out.index, dtype=object)
    return out


# ----------------------------------------------------------------------------------------------
# Elbow K-means on weighted points
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ElbowKMeansResult:
    """Outcome of :func:`elbow_kmeans`.

    k: chosen number of clusters. labels: (P,) cluster id per input point, 0..k-1.
    centers: (k, D) weighted centroids. sizes: (k,) total weight per cluster.
    inertias: (k_cap,) weighted inertia of the fits for k = 1..k_cap.
    """

    k: int
    labels: np.ndarray
    centers: np.ndarray
    sizes: np.ndarray
    inertias: np.ndarray


def _kmeans_pp_init(X: np.ndarray, w: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Weighted greedy k-means++ seeding (Arthur and Vassilvitskii 2007, with scikit-learn's
    2 + log(k) candidates per step, keeping the one that lowers the potential most)."""
    n_trials = 2 + int(np.log(k))
    first = rng.choice(len(X), p=w / w.sum())
    centers = [X[first]]
    d2 = ((X - X[first]) ** 2).sum(axis=1)
    for _ in range(1, k):
        mass = w * d2
        total = mass.sum()
        if total <= 0:  # every point coincides with a centre already: duplicate the farthest
            best = int(np.argmax(d2))
            best_d2 = d2
        else:
            candidates = rng.choice(len(X), size=n_trials, p=mass / total)
            cand_d2 = np.minimum(d2[None, :], ((X[None, :, :] - X[candidates][:, None, :]) ** 2).sum(axis=2))
            pick = int(np.argmin((cand_d2 * w[None, :]).sum(axis=1)))
            best, best_d2 = int(candidates[pick]), cand_d2[pick]
        centers.append(X[best])
        d2 = best_d2
    return np.array(centers, dtype=float)


def _lloyd(X: np.ndarray, w: np.ndarray, centers: np.ndarray, max_iter: int = 100):
    """Weighted Lloyd iterations to convergence; an emptied cluster takes the worst-served point."""
    k = len(centers)
    labels = np.full(len(X), -1)
    for _ in range(max_iter):
        d2 = ((X[:, None, :] - centers[None, :, :]) ** 2).sum(axis=2)
        new_labels = d2.argmin(axis=1)
        if np.array_equal(new_labels, labels):
            break
        labels = new_labels
        sizes = np.bincount(labels, weights=w, minlength=k)
        for c in np.flatnonzero(sizes == 0):
            far = int(np.argmax(d2[np.arange(len(X)), labels] * w))
            labels[far] = c
            sizes = np.bincount(labels, weights=w, minlength=k)
        members = np.zeros((len(X), k))
        members[np.arange(len(X)), labels] = w
        centers = (members.T @ X) / sizes[:, None]
    d2 = ((X - centers[labels]) ** 2).sum(axis=1)
    return labels, centers, float((w * d2).sum())


def weighted_kmeans(
    X: np.ndarray, weights: np.ndarray, k: int, seed: int = 0, n_init: int = 1
) -> tuple[np.ndarray, np.ndarray, float]:
    """K-means on points X (P, D) with positive weights (P,): returns labels, centers, inertia.

    Deterministic for a given seed; the best of ``n_init`` k-means++ starts is kept.
    """
    X = np.asarray(X, dtype=float)
    w = np.asarray(weights, dtype=float)
    if k < 1 or k > len(X):
        raise ValueError(f"k must be in 1..{len(X)} (number of points), got {k}")
    if k == 1:
        center = (X * w[:, None]).sum(axis=0, keepdims=True) / w.sum()
        return np.zeros(len(X), dtype=int), center, float((w * ((X - center) ** 2).sum(axis=1)).sum())
    rng = np.random.default_rng(seed)
    best = None
    for _ in range(n_init):
        result = _lloyd(X, w, _kmeans_pp_init(X, w, k, rng))
        if best is None or result[2] < best[2]:
            best = result
    return best  # type: ignore[return-value]


def elbow_kmeans(
    X: np.ndarray,
    weights: np.ndarray | None = None,
    k_max: int = 3,
    tau: float = 0.10,
    seed: int = 0,
    n_init: int = 1,
) -> ElbowKMeansResult:
    """K-means whose k is chosen by the elbow rule of docs/method.md §3.6.

    X: (P, D) DISTINCT points (reward vectors); weights: (P,) multiplicities (default 1).
    k_cap = min(k_max, P); fit k = 1..k_cap; with drops D_k = I_(k-1) - I_k choose the first k >= 2
    with D_(k+1) < tau * D_k, else k_cap. One point (or k_max = 1) gives k = 1.
    """
    X = np.asarray(X, dtype=float)
    if X.ndim != 2 or len(X) == 0:
        raise ValueError(f"elbow_kmeans needs a non-empty (P, D) array, got shape {X.shape}")
    w = np.ones(len(X)) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (len(X),) or not np.all(w > 0):
        raise ValueError("weights must be positive, one per point")
    if k_max < 1:
        raise ValueError(f"k_max must be >= 1, got {k_max}")
    k_cap = min(k_max, len(X))
    fits = [weighted_kmeans(X, w, k, seed=seed, n_init=n_init) for k in range(1, k_cap + 1)]
    inertias = np.array([f[2] for f in fits])
    k = k_cap
    drops = inertias[:-1] - inertias[1:]  # drops[j] = I_(j+1) - I_(j+2), i.e. D_(j+2) in 1-based k
    for j in range(1, len(drops)):
        if drops[j] < tau * drops[j - 1]:
            k = j + 1
            break
    labels, centers, _ = fits[k - 1]
    sizes = np.bincount(labels, weights=w, minlength=k)
    return ElbowKMeansResult(k=k, labels=labels, centers=centers, sizes=sizes, inertias=inertias)


# ----------------------------------------------------------------------------------------------
# GRPO+RS: oversampling the training set to balanced explicit groups
# ----------------------------------------------------------------------------------------------


def resampling_cells(table: pd.DataFrame, definition: str, specs: dict | None = None) -> pd.Series:
    """The cell of every row that GRPO+RS balances (index of ``table``): under ``authors_code``
    :func:`resampling_cell` of the recorded ``age`` and ``sex`` over the dataset's attributes (sex x
    age wherever sex is recorded; no row without a cell); under ``paper`` the ``group`` column
    (None: kept once). ``specs``: dataset -> DatasetSpec (default: :func:`eqpo.core.vocabularies.get_spec`)."""
    from eqpo.core.vocabularies import get_spec

    if check_definition(definition) == "paper":
        return table["group"].astype(object)
    cells = [
        resampling_cell(age, sex, ((specs or {}).get(dataset) or get_spec(str(dataset))).attributes)
        for dataset, age, sex in zip(table["dataset"], table["age"], table["sex"], strict=False)
    ]
    return pd.Series(cells, index=table.index, dtype=object)


def resample_for_rs(table: pd.DataFrame, seed: int, definition: str, specs: dict | None = None) -> pd.DataFrame:
    """GRPO+RS's training rows: :func:`balance_by_group` over :func:`resampling_cells` (the input
    columns only, the original rows first)."""
    cells = table.assign(_rs_cell=resampling_cells(table, definition, specs))
    return balance_by_group(cells, seed, group_col="_rs_cell").drop(columns="_rs_cell")


def balance_by_group(
    table: pd.DataFrame, seed: int, dataset_col: str = "dataset", group_col: str = "group"
) -> pd.DataFrame:
    """Oversample every explicit (dataset, group) cell to its dataset's largest cell (GRPO+RS).

    Rows whose group is missing (unlabeled prompts) are kept once. Extra rows are drawn with
    replacement-free rounds (every row of a cell is used before any is repeated), seeded. The result
    keeps the input columns; its order is the input rows followed by the added copies, so the
    original rows are a prefix. Shuffling is the data loader's job.
    """
    for col in (dataset_col, group_col):
        if col not in table.columns:
            raise ValueError(f"balance_by_group: column {col!r} missing; columns are {list(table.columns)}")
    rng = np.random.default_rng(seed)
    labeled = table[table[group_col].notna()]
    extra = []
    for _, cells in labeled.groupby(dataset_col, sort=True):
        sizes = cells.groupby(group_col, sort=True).size()
        target = int(sizes.max())
        for group, size in sizes.items():
            need = target - int(size)
            if need == 0:
                continue
            idx = cells.index[cells[group_col] == group].to_numpy()
            rounds = [rng.permutation(idx) for _ in range(need // len(idx) + 1)]
            extra.append(np.concatenate(rounds)[:need])
    if not extra:
        return table.copy()
    return pd.concat([table, table.loc[np.concatenate(extra)]], ignore_index=True)
