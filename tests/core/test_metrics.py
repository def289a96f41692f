"""Tests of eqpo.core.metrics (docs/method.md §4): a hand-computed case, cross-checks against
scikit-learn and fairlearn, hypothesis properties, the attribute rules and input validation."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eqpo.core.groups import AGE_BINS, age_bin, normalize_sex
from eqpo.core.metrics import (
    ALL,
    METRICS,
    PAPER_SCALE,
    TABLE2_COLUMNS,
    FairnessReport,
    attribute_codes,
    fairness_summary,
    unparseable_share,
    validate_predictions,
)

NAN = float("nan")
R2 = math.sqrt(2.0)
# Table 2 columns that are NaN for a dataset with no usable attribute
GAP_COLUMNS = ("PP", "EOD", "FPR_diff", "sigma_F1", "delta_F1", "sigma_Acc", "delta_Acc", "Acc_ES", "F1_ES")


def frame(rows: list[tuple]) -> pd.DataFrame:
    """rows of (dataset, labels, prediction, age, sex) -> predictions frame."""
    return pd.DataFrame(rows, columns=["dataset", "labels", "prediction", "age", "sex"])


# ----------------------------------------------------------------------------------------------
# Hand-computed case
# ----------------------------------------------------------------------------------------------

# Dataset A: single-label, classes {x, y}, both attributes.
# Dataset B: multi-label, classes {p, q}, no sex (age-only); its last row has no age.
HAND = frame(
    [
        ("A", ["x"], ["x"], 30.0, "F"),  # r1  a2 F
        ("A", ["y"], ["x"], 30.0, "M"),  # r2  a2 M
        ("A", ["x"], [], 60.0, "F"),  # r3  a3 F  (unparseable)
        ("A", ["y"], ["y"], 60.0, "M"),  # r4  a3 M
        ("B", ["p", "q"], ["p"], 20.0, None),  # r5  a1
        ("B", ["p"], ["p", "q"], 20.0, None),  # r6  a1
        ("B", ["q"], ["q", "zzz"], 80.0, None),  # r7  a4 ("zzz" is not a class: ignored)
        ("B", ["p"], ["x"], NAN, None),  # r8  no age: in no group ("x" is not a class of B)
    ]
)
# Per class (TP, FP, FN, TN) -> Acc, TPR, FPR, FDR, F1, then the class mean of the group.
# A, age a2 = {r1, r2}: x: TP1 FP1      -> Acc 1/2 TPR 1 FPR 1 FDR 1/2 F1 2/3
#                       y: FN1 TN1      -> Acc 1/2 TPR 0 FPR 0 FDR 0   F1 0
#                       mean            -> Acc .5  TPR .5 FPR .5 FDR .25 F1 1/3
# A, age a3 = {r3, r4}: x: FN1 TN1      -> Acc 1/2 TPR 0 FPR 0 FDR 0 F1 0
#                       y: TP1 TN1      -> Acc 1   TPR 1 FPR 0 FDR 0 F1 1
#                       mean            -> Acc .75 TPR .5 FPR 0 FDR 0 F1 .5
# A, sex F = {r1, r3}:  x: TP1 FN1      -> Acc 1/2 TPR 1/2 FPR 0/0=0 FDR 0 F1 2/3
#                       y: TN2          -> Acc 1   TPR 0/0=0 FPR 0 FDR 0/0=0 F1 0/0=0
#                       mean            -> Acc .75 TPR .25 FPR 0 FDR 0 F1 1/3
# A, sex M = {r2, r4}:  x: FP1 TN1      -> Acc 1/2 TPR 0/0=0 FPR 1/2 FDR 1 F1 0
#                       y: TP1 FN1      -> Acc 1/2 TPR 1/2 FPR 0/0=0 FDR 0 F1 2/3
#                       mean            -> Acc .5  TPR .25 FPR .25 FDR .5 F1 1/3
# B, age a1 = {r5, r6}: p: TP2          -> Acc 1 TPR 1 FPR 0/0=0 FDR 0 F1 1
#                       q: FN1 FP1      -> Acc 0 TPR 0 FPR 1 FDR 1 F1 0
#                       mean            -> Acc .5 TPR .5 FPR .5 FDR .5 F1 .5
# B, age a4 = {r7}:     p: TN1          -> Acc 1 TPR 0/0=0 FPR 0 FDR 0/0=0 F1 0/0=0
#                       q: TP1          -> Acc 1 TPR 1 FPR 0/0=0 FDR 0 F1 1
#                       mean            -> Acc 1 TPR .5 FPR 0 FDR 0 F1 .5
HAND_GROUPS = {
    # (dataset, attribute, group): (n, Acc, F1, TPR, FPR, FDR)
    ("A", "sex", "F"): (2, 0.75, 1 / 3, 0.25, 0.0, 0.0),
    ("A", "sex", "M"): (2, 0.5, 1 / 3, 0.25, 0.25, 0.5),
    ("A", "age", "a2"): (2, 0.5, 1 / 3, 0.5, 0.5, 0.25),
    ("A", "age", "a3"): (2, 0.75, 0.5, 0.5, 0.0, 0.0),
    ("B", "age", "a1"): (2, 0.5, 0.5, 0.5, 0.5, 0.5),
    ("B", "age", "a4"): (1, 1.0, 0.5, 0.5, 0.0, 0.0),
}
# Two groups each, so gap = |a - b| and sigma (ddof=1) = |a - b| / sqrt(2).
# A sex: Acc .625 gap .25; F1 1/3 gap 0; TPR gap 0; FPR gap .25; FDR gap .5
# A age: Acc .625 gap .25; F1 5/12 gap 1/6; TPR gap 0; FPR gap .5; FDR gap .25
# A (mean of sex, age): Acc .625 delta_Acc .25 sigma_Acc .25/R2; F1 (1/3+5/12)/2 = .375
#   delta_F1 1/12, sigma_F1 (1/6)/R2/2; EOD 0; FPR_diff .375; PP .375
# B age: Acc .75 gap .5; F1 .5 gap 0; TPR gap 0; FPR gap .5; FDR gap .5  (sex skipped: no values)
HAND_A = {
    "PP": 0.375,
    "EOD": 0.0,
    "FPR_diff": 0.375,
    "sigma_F1": 1 / 12 / R2,
    "delta_F1": 1 / 12,
    "sigma_Acc": 0.25 / R2,
    "delta_Acc": 0.25,
    "Acc": 0.625,
    "F1": 0.375,
}
HAND_B = {
    "PP": 0.5,
    "EOD": 0.0,
    "FPR_diff": 0.5,
    "sigma_F1": 0.0,
    "delta_F1": 0.0,
    "sigma_Acc": 0.5 / R2,
    "delta_Acc": 0.5,
    "Acc": 0.75,
    "F1": 0.5,
}
# Overall = mean of A and B; ES from the overall means.
HAND_OVERALL = {
    "PP": 0.4375,
    "EOD": 0.0,
    "FPR_diff": 0.4375,
    "sigma_F1": 1 / 24 / R2,
    "delta_F1": 1 / 24,
    "sigma_Acc": 0.375 / R2,
    "delta_Acc": 0.375,
    "Acc": 0.6875,
    "F1": 0.4375,
    "Acc_ES": 0.6875 / (1 + 0.375 / R2),
    "F1_ES": 0.4375 / (1 + 1 / 24 / R2),
}


def test_hand_computed_summary():
    summary = fairness_summary(HAND)
    assert list(summary) == list(TABLE2_COLUMNS)
    assert all(type(v) is float for v in summary.values())
    for key, expected in HAND_OVERALL.items():
        assert summary[key] == pytest.approx(expected, abs=1e-12), key


def test_hand_computed_by_group():
    table = FairnessReport.from_predictions(HAND).by_group
    assert list(table.columns) == ["dataset", "attribute", "group", "n", *METRICS]
    got = {(r.dataset, r.attribute, r.group): (r.n, r.Acc, r.F1, r.TPR, r.FPR, r.FDR) for r in table.itertuples()}
    assert set(got) == set(HAND_GROUPS)
    for key, expected in HAND_GROUPS.items():
        assert got[key] == pytest.approx(expected, abs=1e-12), key


def test_hand_computed_by_attribute_and_dataset():
    report = FairnessReport.from_predictions(HAND)
    attrs = report.by_attribute.set_index(["dataset", "attribute"])
    assert list(attrs.index) == [("A", "sex"), ("A", "age"), ("B", "age")]
    assert attrs.loc[("A", "age"), "F1"] == pytest.approx(5 / 12)
    assert attrs.loc[("A", "age"), "F1_gap"] == pytest.approx(1 / 6)
    assert attrs.loc[("A", "age"), "F1_sigma"] == pytest.approx(1 / 6 / R2)
    assert attrs.loc[("A", "sex"), "FDR_gap"] == pytest.approx(0.5)
    assert attrs.loc[("B", "age"), "n"] == 3  # r8 has no age
    assert attrs["n_groups"].tolist() == [2, 2, 2]

    by_dataset = report.by_dataset.set_index("dataset")
    for name, expected in (("A", HAND_A), ("B", HAND_B)):
        for key, value in expected.items():
            assert by_dataset.loc[name, key] == pytest.approx(value, abs=1e-12), (name, key)
        acc, s_acc = expected["Acc"], expected["sigma_Acc"]
        assert by_dataset.loc[name, "Acc_ES"] == pytest.approx(acc / (1 + s_acc))
        f1, s_f1 = expected["F1"], expected["sigma_F1"]
        assert by_dataset.loc[name, "F1_ES"] == pytest.approx(f1 / (1 + s_f1))
    assert by_dataset["n"].tolist() == [4, 4]
    assert by_dataset["unparseable_share"].tolist() == [0.25, 0.0]
    assert by_dataset["attributes"].tolist() == ["sex,age", "age"]
    assert report.classes == {"A": ("x", "y"), "B": ("p", "q")}
    assert report.overall == fairness_summary(HAND)


def test_unparseable_share():
    share = unparseable_share(HAND)
    assert share.to_dict() == {"A": 0.25, "B": 0.0}
    assert share.name == "unparseable_share"


def test_table2_columns_are_the_papers_in_its_order():
    """Against the transcribed paper table shipped with the package, not a restated list."""
    from eqpo.analysis.paper import _read_csv, paper_readme

    assert list(_read_csv("table2_main.csv").columns) == ["base_model", "method", *TABLE2_COLUMNS]
    assert "PP, EOD, FPR_diff, sigma_Acc, delta_Acc, Acc, Acc_ES are x100" in paper_readme()
    assert set(PAPER_SCALE) == set(TABLE2_COLUMNS)
    hundred = {"PP", "EOD", "FPR_diff", "sigma_Acc", "delta_Acc", "Acc", "Acc_ES"}
    assert {k for k, v in PAPER_SCALE.items() if v == 100} == hundred
    assert {k for k, v in PAPER_SCALE.items() if v == 1} == set(TABLE2_COLUMNS) - hundred


# ----------------------------------------------------------------------------------------------
# Cross-checks against scikit-learn and fairlearn
# ----------------------------------------------------------------------------------------------


def random_frame(seed: int) -> pd.DataFrame:
    """A multi-label dataset ("ML", 5 classes) and a single-label one ("SL", 3 classes)."""
    rng = np.random.default_rng(seed)
    ml_vocab, sl_vocab = ["c0", "c1", "c2", "c3", "c4"], ["s0", "s1", "s2"]
    rows = []
    for _ in range(300):
        labels = [c for c in ml_vocab if rng.random() < 0.3]
        pred = [c for c in ml_vocab + ["s0", "junk"] if rng.random() < 0.3]
        rows.append(("ML", labels, pred))
    for _ in range(200):
        label = str(rng.choice(sl_vocab))
        u = rng.random()
        pred = [] if u < 0.1 else [label] if u < 0.6 else [str(rng.choice(sl_vocab + ["c1"]))]
        rows.append(("SL", [label], pred))
    n = len(rows)
    age = rng.uniform(0, 100, n)
    age[rng.random(n) < 0.1] = np.nan
    sex = rng.choice(np.array(["F", "M", "female", "male", None, "O"], dtype=object), n)
    df = pd.DataFrame(rows, columns=["dataset", "labels", "prediction"])
    df["age"], df["sex"] = age, sex
    # Classes some groups never have (so the two class sets differ): no "c4" among the female rows of
    # ML, no "s2" in age bin a1 of SL (a row left with no label keeps its prediction).
    female = np.array([normalize_sex(x) == "F" for x in sex])
    young = np.array([age_bin(a) == "a1" for a in age])
    df["labels"] = [
        [c for c in labels if not ((d == "ML" and f and c == "c4") or (d == "SL" and y and c == "s2"))]
        for labels, d, f, y in zip(df["labels"], df["dataset"], female, young, strict=False)
    ]
    return df


def classes_of(dataset_rows: pd.DataFrame, group_rows: pd.DataFrame, class_set: str) -> list[str]:
    """The classes a group's mean runs over, read from the definition: every class of the dataset's
    ground truth ("dataset") or those with a positive among the group's rows ("group_present")."""
    classes = sorted({c for labels in dataset_rows["labels"] for c in labels})
    if class_set == "dataset":
        return classes
    return [c for c in classes if any(c in labels for labels in group_rows["labels"])]


@pytest.mark.parametrize("seed", [0, 1])
def test_the_class_sets_differ_on_the_cross_check_data(seed):
    df = random_frame(seed)
    a = FairnessReport.from_predictions(df, class_set="dataset").by_group.set_index(["dataset", "attribute", "group"])
    b = FairnessReport.from_predictions(df, class_set="group_present").by_group.set_index(
        ["dataset", "attribute", "group"]
    )
    assert (a["F1"] != b["F1"]).sum() >= 2  # the female rows of ML and age bin a1 of SL


def row_groups(df: pd.DataFrame, attribute: str) -> list:
    """Group of each row computed row by row, independently of the vectorised code."""
    if attribute == "age":
        return [age_bin(a) for a in df["age"]]
    return [normalize_sex(s) for s in df["sex"]]


@pytest.mark.parametrize("class_set", ["dataset", "group_present"])
@pytest.mark.parametrize("seed", [0, 1])
def test_by_group_matches_sklearn(seed, class_set):
    from sklearn.metrics import (
        accuracy_score,
        confusion_matrix,
        f1_score,
        precision_score,
        recall_score,
    )

    df = random_frame(seed)
    report = FairnessReport.from_predictions(df, class_set=class_set)
    assert len(report.by_group) == 2 * (4 + 2)
    checked = 0
    for r in report.by_group.itertuples():
        dataset_rows = df[(df["dataset"] == r.dataset).to_numpy()]
        in_group = np.array([g == r.group for g in row_groups(dataset_rows, r.attribute)])
        sub = dataset_rows[in_group]
        classes = classes_of(dataset_rows, sub, class_set)
        assert len(sub) == r.n
        acc, tpr, fpr, fdr, f1 = [], [], [], [], []
        for c in classes:
            y = np.array([c in labels for labels in sub["labels"]])
            p = np.array([c in pred for pred in sub["prediction"]])
            tn, fp, fn, tp = confusion_matrix(y, p, labels=[False, True]).ravel()
            acc.append(accuracy_score(y, p))
            tpr.append(recall_score(y, p, zero_division=0))
            fpr.append(fp / (fp + tn) if fp + tn else 0.0)
            precision = precision_score(y, p, zero_division=0)
            fdr.append(1 - precision if tp + fp else 0.0)
            f1.append(f1_score(y, p, zero_division=0))
        expected = {"Acc": acc, "TPR": tpr, "FPR": fpr, "FDR": fdr, "F1": f1}
        for metric, values in expected.items():
            assert getattr(r, metric) == pytest.approx(np.mean(values) if values else 0.0, abs=1e-12), (r, metric)
        checked += 1
    assert checked == 12

    # gap / sigma / level per attribute from the (already cross-checked) group values
    attrs = report.by_attribute.set_index(["dataset", "attribute"])
    for key, groups in report.by_group.groupby(["dataset", "attribute"], sort=False):
        row = attrs.loc[key]
        for metric in METRICS:
            values = groups[metric]
            assert row[metric] == pytest.approx(values.mean())
            assert row[f"{metric}_gap"] == pytest.approx(values.max() - values.min())
            assert row[f"{metric}_sigma"] == pytest.approx(values.std(ddof=1))


@pytest.mark.parametrize("class_set", ["dataset", "group_present"])
@pytest.mark.parametrize("seed", [0, 3])
def test_by_group_matches_fairlearn(seed, class_set):
    from fairlearn.metrics import MetricFrame, count, false_positive_rate, true_positive_rate

    df = random_frame(seed)
    report = FairnessReport.from_predictions(df, class_set=class_set)
    for dataset in ("ML", "SL"):
        sub = df[(df["dataset"] == dataset).to_numpy()]
        classes = sorted({c for labels in sub["labels"] for c in labels})
        for attribute in ("age", "sex"):
            groups = pd.Series(row_groups(sub, attribute), dtype=object)
            keep = groups.notna().to_numpy()
            per_class = []
            for c in classes:
                y = np.array([int(c in labels) for labels in sub["labels"]])[keep]
                p = np.array([int(c in pred) for pred in sub["prediction"]])[keep]
                mf = MetricFrame(
                    metrics={
                        "TPR": partial(true_positive_rate, pos_label=1),
                        "FPR": partial(false_positive_rate, pos_label=1),
                        "positives": lambda y_true, y_pred: int(np.sum(y_true)),
                        "n": count,
                    },
                    y_true=y,
                    y_pred=p,
                    sensitive_features=groups[keep].to_numpy(),
                )
                per_class.append(mf.by_group)
            # the class mean per group: over every class, or over the classes with a positive in it
            used = [
                (f["positives"] > 0).astype(float) if class_set == "group_present" else f["n"] * 0 + 1.0
                for f in per_class
            ]
            n_used = sum(used)
            expected = pd.DataFrame(
                {
                    m: sum(f[m].astype(float) * u for f, u in zip(per_class, used, strict=False))
                    / n_used.where(n_used > 0)
                    for m in ("TPR", "FPR")
                }
            ).fillna(0.0)
            g = report.by_group
            mine = (g["dataset"] == dataset) & (g["attribute"] == attribute)
            got = g[mine].set_index("group")[["TPR", "FPR"]]
            assert sorted(got.index) == sorted(expected.index)
            for group in got.index:
                assert got.loc[group, "TPR"] == pytest.approx(expected.loc[group, "TPR"], abs=1e-12)
                assert got.loc[group, "FPR"] == pytest.approx(expected.loc[group, "FPR"], abs=1e-12)


# ----------------------------------------------------------------------------------------------
# Properties (hypothesis)
# ----------------------------------------------------------------------------------------------

VOCAB = ("a", "b", "c", "d")
SEX_VALUES = ("F", "M", "female", "male", None, "O")


@st.composite
def prediction_frames(draw):
    """1-3 datasets of 1-12 rows, single- or multi-label, noisy predictions, demographics."""
    rows = []
    for k in range(draw(st.integers(1, 3))):
        multi = draw(st.booleans())
        no_sex = draw(st.booleans())
        labels_st = (
            st.lists(st.sampled_from(VOCAB), max_size=3, unique=True)
            if multi
            else st.sampled_from(VOCAB).map(lambda c: [c])
        )
        n = draw(st.integers(1, 12))
        for i in range(n):
            labels = draw(labels_st)
            if i == 0 and not labels:
                labels = ["a"]  # every dataset needs at least one ground-truth label
            pred = draw(st.lists(st.sampled_from(VOCAB + ("zz",)), max_size=3, unique=True))
            edges = st.sampled_from([25.0, 50.0, 75.0])
            age = draw(st.one_of(st.just(NAN), st.floats(0, 100), edges))
            sex = None if no_sex else draw(st.sampled_from(SEX_VALUES))
            rows.append((f"D{k}", labels, pred, age, sex))
    return frame(rows)


def check_ranges(report: FairnessReport) -> None:
    """Every rate in [0, 1]; gaps and sigmas >= 0 (and sigma <= gap); NaN only where documented."""
    values = report.by_group[list(METRICS)].to_numpy()
    assert np.all((values >= 0) & (values <= 1))
    assert (report.by_group["n"] > 0).all()
    for row in report.by_attribute.to_dict("records"):
        for metric in METRICS:
            level, gap, sigma = row[metric], row[f"{metric}_gap"], row[f"{metric}_sigma"]
            assert 0 <= level <= 1
            if row["attribute"] == ALL:
                assert row["n_groups"] == 1 and math.isnan(gap) and math.isnan(sigma)
            else:
                assert row["n_groups"] >= 2
                assert 0 <= sigma <= gap + 1e-12 <= 1 + 1e-12
    for row in report.by_dataset.to_dict("records"):
        for column in TABLE2_COLUMNS:
            if math.isnan(row[column]):
                assert row["attributes"] == ALL and column in GAP_COLUMNS, (column, row)
            else:
                assert -1e-12 <= row[column] <= 1 + 1e-12, (column, row)
    all_fallback = (report.by_dataset["attributes"] == ALL).all()
    for column, value in report.overall.items():
        if math.isnan(value):
            assert all_fallback and column in GAP_COLUMNS
        else:
            assert -1e-12 <= value <= 1 + 1e-12


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prediction_frames())
def test_ranges_and_documented_nans(df):
    check_ranges(FairnessReport.from_predictions(df))


def assert_reports_equal(a: FairnessReport, b: FairnessReport, same_unparseable: bool = True) -> None:
    """Exactly equal tables; unparseable_share is compared only when ``same_unparseable``."""
    pd.testing.assert_frame_equal(a.by_group, b.by_group)
    pd.testing.assert_frame_equal(a.by_attribute, b.by_attribute)
    drop = [] if same_unparseable else ["unparseable_share"]
    pd.testing.assert_frame_equal(a.by_dataset.drop(columns=drop), b.by_dataset.drop(columns=drop))
    np.testing.assert_array_equal(list(a.overall.values()), list(b.overall.values()))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prediction_frames(), st.randoms(use_true_random=False))
def test_row_order_and_index_do_not_matter(df, rnd):
    order = list(range(len(df)))
    rnd.shuffle(order)
    shuffled = df.iloc[order]  # keeps the (now unordered) index labels
    relabelled = shuffled.set_axis([f"row{i}" for i in range(len(df))])
    base = FairnessReport.from_predictions(df)
    assert_reports_equal(base, FairnessReport.from_predictions(shuffled))
    assert_reports_equal(base, FairnessReport.from_predictions(relabelled))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prediction_frames())
def test_out_of_vocabulary_predictions_are_ignored(df):
    noisy = df.assign(prediction=[list(p) + ["zz", "not a label"] for p in df["prediction"]])
    noisy_report = FairnessReport.from_predictions(noisy)
    # The metrics ignore them; an empty prediction given junk labels is no longer "unparseable".
    assert_reports_equal(FairnessReport.from_predictions(df), noisy_report, same_unparseable=False)
    assert (noisy_report.by_dataset["unparseable_share"] == 0).all()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prediction_frames())
def test_perfect_predictions(df):
    df = df.assign(prediction=df["labels"])
    report = FairnessReport.from_predictions(df)
    check_ranges(report)
    g = report.by_group
    assert (g["Acc"] == 1).all() and (g["FPR"] == 0).all() and (g["FDR"] == 0).all()
    # With 0/0 = 0, TPR and F1 are the share of the dataset's classes occurring in the group.
    for r in g.itertuples():
        sub = df[(df["dataset"] == r.dataset).to_numpy()]
        classes = {c for labels in sub["labels"] for c in labels}
        if r.attribute == ALL:
            in_group = sub
        else:
            in_group = sub[[x == r.group for x in row_groups(sub, r.attribute)]]
        present = {c for labels in in_group["labels"] for c in labels}
        assert r.TPR == pytest.approx(len(present) / len(classes))
        assert r.F1 == pytest.approx(len(present) / len(classes))
    usable = report.by_dataset[report.by_dataset["attributes"] != ALL]
    assert (usable[["PP", "FPR_diff", "delta_Acc", "sigma_Acc"]] == 0).all().all()
    assert (report.by_dataset["Acc"] == 1).all()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prediction_frames())
def test_perfect_predictions_with_every_class_in_every_group(df):
    extra = []
    for dataset, sub in df.groupby("dataset"):
        for c in sorted({c for labels in sub["labels"] for c in labels}):
            for sex in ("F", "M"):
                for age in (10.0, 40.0, 60.0, 90.0):
                    extra.append((dataset, [c], [c], age, sex))
    df = pd.concat([df, frame(extra)], ignore_index=True)
    df = df.assign(prediction=df["labels"])
    report = FairnessReport.from_predictions(df)
    g = report.by_group
    assert len(g) == 6 * df["dataset"].nunique()
    assert (g[["Acc", "F1", "TPR"]] == 1).all().all() and (g[["FPR", "FDR"]] == 0).all().all()
    summary = report.overall
    for key in ("PP", "EOD", "FPR_diff", "sigma_F1", "delta_F1", "sigma_Acc", "delta_Acc"):
        assert summary[key] == 0, key
    for key in ("Acc", "F1", "Acc_ES", "F1_ES"):
        assert summary[key] == 1, key


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.sampled_from(
                [0.0, 25.0, 25.000001, 50.0, 50.5, 75.0, 75.0001, -0.0, -1.0, 120.0] + [NAN, math.inf, -math.inf]
            ),
        ),
        min_size=1,
        max_size=30,
    )
)
def test_numeric_age_binning_agrees_with_age_bin(ages):
    expected = [AGE_BINS.index(b) if (b := age_bin(a)) is not None else -1 for a in ages]
    df = pd.DataFrame({"age": ages, "sex": [None] * len(ages)})
    assert attribute_codes(df)["age"].tolist() == expected


def test_age_column_types():
    ages = [25, 26, None, "053Y", "80", "old", 10.5]
    expected = ["a1", "a2", None, "a3", "a4", None, "a1"]
    for column in (pd.Series(ages, dtype=object), pd.Series([25, 26, None, 53, 80, None, 10.5])):
        df = pd.DataFrame({"age": column, "sex": "F"})
        got = [AGE_BINS[c] if c >= 0 else None for c in attribute_codes(df)["age"]]
        assert got == expected
    nullable = pd.DataFrame({"age": pd.array([25, None, 90], dtype="Int64"), "sex": "F"})
    assert attribute_codes(nullable)["age"].tolist() == [0, -1, 3]


# ----------------------------------------------------------------------------------------------
# Attribute rules
# ----------------------------------------------------------------------------------------------


def two_dataset_frame(sex_b) -> pd.DataFrame:
    """Dataset A with both attributes, dataset B whose sex column is ``sex_b`` (a list)."""
    rows = [
        ("A", ["x"], ["x"], 20.0, "F"),
        ("A", ["y"], ["x"], 40.0, "M"),
        ("A", ["x"], ["y"], 60.0, "F"),
        ("A", ["y"], ["y"], 80.0, "M"),
    ]
    b = [(["u"], ["u"], 20.0), (["v"], ["u"], 30.0), (["u"], [], 70.0), (["v"], ["v"], 90.0)]
    rows += [("B", lab, pred, age, s) for (lab, pred, age), s in zip(b, sex_b, strict=False)]
    return frame(rows)


def attributes_of(report: FairnessReport, dataset: str) -> list[str]:
    return report.by_attribute.loc[report.by_attribute["dataset"] == dataset, "attribute"].tolist()


def test_age_only_dataset_skips_sex():
    report = FairnessReport.from_predictions(two_dataset_frame([None] * 4))
    assert attributes_of(report, "A") == ["sex", "age"]
    assert attributes_of(report, "B") == ["age"]
    b = report.by_group[report.by_group["dataset"] == "B"]
    assert b["attribute"].unique().tolist() == ["age"]
    assert report.by_dataset.set_index("dataset").loc["B", "attributes"] == "age"


def test_single_sex_dataset_skips_sex():
    one_sex = FairnessReport.from_predictions(two_dataset_frame(["F", "female", "F", None]))
    no_sex = FairnessReport.from_predictions(two_dataset_frame([None] * 4))
    assert attributes_of(one_sex, "B") == ["age"]
    assert_reports_equal(one_sex, no_sex)


def test_sex_words_and_unknown_sex():
    words = FairnessReport.from_predictions(two_dataset_frame(["female", "Male", " f ", "MALE"]))
    codes = FairnessReport.from_predictions(two_dataset_frame(["F", "M", "F", "M"]))
    assert_reports_equal(words, codes)
    unknown = FairnessReport.from_predictions(two_dataset_frame(["F", "unknown", "O", "M"]))
    missing = FairnessReport.from_predictions(two_dataset_frame(["F", None, NAN, "M"]))
    assert_reports_equal(unknown, missing)
    g = unknown.by_group
    b_sex = g[(g["dataset"] == "B") & (g["attribute"] == "sex")]
    assert b_sex["n"].tolist() == [1, 1]


def test_missing_age_rows_are_excluded_from_age_groups_only():
    df = two_dataset_frame(["F", "M", "F", "M"])
    df.loc[4, "age"] = NAN  # B's first row: (["u"], ["u"], F)
    report = FairnessReport.from_predictions(df)
    attrs = report.by_attribute.set_index(["dataset", "attribute"])
    assert attrs.loc[("B", "age"), "n"] == 3
    assert attrs.loc[("B", "sex"), "n"] == 4
    # Changing that row's prediction moves the sex metrics but not the age metrics.
    changed = df.copy()
    changed.at[4, "prediction"] = ["v"]
    other = FairnessReport.from_predictions(changed).by_attribute
    other = other.set_index(["dataset", "attribute"])
    pd.testing.assert_series_equal(attrs.loc[("B", "age")], other.loc[("B", "age")])
    assert attrs.loc[("B", "sex"), "Acc"] != other.loc[("B", "sex"), "Acc"]


def test_age_bins_edges_follow_age_bin():
    df = frame([("A", ["x"], ["x"], age, "F") for age in (25.0, 25.5, 50.0, 75.0, 75.5)])
    groups = FairnessReport.from_predictions(df).by_group
    age_rows = groups[groups["attribute"] == "age"].set_index("group")["n"].to_dict()
    assert age_rows == {"a1": 1, "a2": 2, "a3": 1, "a4": 1}


def test_dataset_without_usable_attribute_uses_all_rows_and_nan_gaps():
    rows = [
        ("Z", ["x"], ["x"], NAN, None),
        ("Z", ["y"], ["x"], 30.0, None),  # one age group only -> age skipped too
        ("Z", ["y"], ["y"], NAN, "F"),  # one sex group only -> sex skipped
    ]
    df = pd.concat([frame(rows), HAND], ignore_index=True)
    report = FairnessReport.from_predictions(df)
    z = report.by_dataset.set_index("dataset").loc["Z"]
    assert z["attributes"] == ALL
    for column in GAP_COLUMNS:
        assert math.isnan(z[column]), column
    # all three rows as one group: x: TP1 FP1 TN1 -> Acc 2/3 F1 2/3
    #                              y: TP1 FN1 TN1 -> Acc 2/3 F1 2/3
    assert z["Acc"] == pytest.approx(2 / 3) and z["F1"] == pytest.approx(2 / 3)
    zg = report.by_group[report.by_group["dataset"] == "Z"]
    assert zg[["attribute", "group", "n"]].values.tolist() == [[ALL, ALL, 3]]
    # Overall: levels average over A, B and Z; gaps and sigmas skip Z's NaN.
    summary = report.overall
    assert summary["Acc"] == pytest.approx((0.625 + 0.75 + 2 / 3) / 3)
    assert summary["F1"] == pytest.approx((0.375 + 0.5 + 2 / 3) / 3)
    for key in ("PP", "EOD", "FPR_diff", "sigma_F1", "delta_F1", "sigma_Acc", "delta_Acc"):
        assert summary[key] == pytest.approx(HAND_OVERALL[key]), key
    assert summary["Acc_ES"] == pytest.approx(summary["Acc"] / (1 + summary["sigma_Acc"]))
    only_z = fairness_summary(frame(rows))
    assert math.isnan(only_z["delta_F1"]) and math.isnan(only_z["Acc_ES"])
    assert only_z["Acc"] == pytest.approx(2 / 3)


def test_classes_come_from_each_datasets_ground_truth():
    # "y" is a class of A, not of B: predicting it in B counts for nothing, and B's unseen
    # vocabulary ("w", never a true label) is not a class either.
    df = two_dataset_frame(["F", "M", "F", "M"])
    report = FairnessReport.from_predictions(df)
    assert report.classes == {"A": ("x", "y"), "B": ("u", "v")}
    with_y = df.copy()
    with_y["prediction"] = [
        p + ["y", "w"] if d == "B" else p for d, p in zip(df["dataset"], df["prediction"], strict=False)
    ]
    assert_reports_equal(report, FairnessReport.from_predictions(with_y), same_unparseable=False)


def test_list_like_variants_give_the_same_result():
    base = FairnessReport.from_predictions(HAND)
    as_tuples = HAND.assign(
        labels=[tuple(x) for x in HAND["labels"]],
        prediction=[tuple(x) for x in HAND["prediction"]],
    )
    as_arrays = HAND.assign(
        labels=[np.array(x, dtype=object) for x in HAND["labels"]],
        prediction=[np.array(x, dtype=str) for x in HAND["prediction"]],
    )
    as_sets = HAND.assign(
        labels=[set(x) for x in HAND["labels"]],
        prediction=[frozenset(x) for x in HAND["prediction"]],
    )
    for variant in (as_tuples, as_arrays, as_sets):
        assert_reports_equal(base, FairnessReport.from_predictions(variant))


def test_duplicate_labels_in_a_list_count_once():
    doubled = HAND.assign(prediction=[list(p) * 2 for p in HAND["prediction"]])
    base = FairnessReport.from_predictions(HAND)
    assert_reports_equal(base, FairnessReport.from_predictions(doubled))


# ----------------------------------------------------------------------------------------------
# Bad input
# ----------------------------------------------------------------------------------------------


def test_missing_column_is_named():
    with pytest.raises(ValueError) as err:
        fairness_summary(HAND.drop(columns=["sex", "prediction"]))
    message = str(err.value)
    assert "['prediction', 'sex']" in message
    # ... and lists the expected ones
    assert "dataset" in message and "labels" in message and "age" in message


def test_non_list_labels_name_the_row():
    df = HAND.set_axis([f"s{i}" for i in range(len(HAND))])
    df.at["s5", "labels"] = "p"
    with pytest.raises(ValueError, match=r"'labels'.*row index 's5'.*str 'p'"):
        fairness_summary(df)


def test_none_prediction_is_rejected():
    df = HAND.copy()
    df.at[2, "prediction"] = None
    pattern = r"'prediction'.*\[\] for none.*row index 2 holds NoneType"
    with pytest.raises(ValueError, match=pattern):
        FairnessReport.from_predictions(df)


def test_two_dimensional_array_is_rejected():
    df = HAND.copy()
    df.at[0, "labels"] = np.array([["x"]])
    with pytest.raises(ValueError, match="row index 0"):
        fairness_summary(df)


def test_empty_frame_and_wrong_type():
    with pytest.raises(ValueError, match="empty"):
        fairness_summary(HAND.iloc[:0])
    with pytest.raises(TypeError, match="DataFrame"):
        fairness_summary(HAND.to_dict("records"))  # type: ignore[arg-type]


def test_missing_dataset_name():
    df = HAND.copy()
    df.at[3, "dataset"] = None
    with pytest.raises(ValueError, match=r"'dataset'.*row index 3"):
        fairness_summary(df)


def test_dataset_without_any_true_label():
    empty = frame([("E", [], ["x"], 30.0, "F"), ("E", [], [], 60.0, "M")])
    df = pd.concat([HAND, empty], ignore_index=True)
    with pytest.raises(ValueError, match=r"'E' has no ground-truth label"):
        fairness_summary(df)


def test_unparseable_share_validates_only_what_it_needs():
    assert unparseable_share(HAND[["dataset", "prediction"]]).to_dict() == {"A": 0.25, "B": 0.0}
    with pytest.raises(ValueError, match="prediction"):
        unparseable_share(HAND[["dataset", "labels"]])
    validate_predictions(HAND)  # a valid frame passes silently
