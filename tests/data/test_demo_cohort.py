"""The synthetic demo cohort: schema, determinism, splits, labels, demographics, realism, CLI."""

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.linear_model import LogisticRegression

from eqpo.core.groups import age_bin, explicit_group
from eqpo.core.vocabularies import PAPER_DATASETS, DatasetSpec
from eqpo.data.cohort_table import read_cohort
from eqpo.data.demo.cohort import (
    DATASET_PROFILES,
    META_COLUMNS,
    CohortConfig,
    describe_cohort,
    feature_columns,
    main,
    majority_group,
    make_cohort,
)

SINGLE_LABEL = [name for name, spec in PAPER_DATASETS.items() if not spec.multi_label]


@pytest.fixture(scope="module")
def cohort():
    return make_cohort(CohortConfig())


@pytest.fixture(scope="module")
def big_cohort():
    return make_cohort(CohortConfig(n_samples=100_000))


def patients(table):
    return table.drop_duplicates("patient_id")


# ---------------------------------------------------------------------------------------------
# Schema and determinism
# ---------------------------------------------------------------------------------------------


def test_columns_and_dtypes(cohort):
    assert list(cohort.columns) == list(META_COLUMNS) + [f"f{j}" for j in range(16)]
    assert feature_columns(cohort) == [f"f{j}" for j in range(16)]
    assert len(cohort) == 6000
    for name in ("sample_id", "patient_id", "dataset", "split", "true_group"):
        assert pd.api.types.is_string_dtype(cohort[name]), name
        assert cohort[name].notna().all(), name
    for name in ("true_age", "age"):
        assert cohort[name].dtype == np.float64
    for name in feature_columns(cohort):
        assert cohort[name].dtype == np.float32
    assert np.isfinite(cohort[feature_columns(cohort)].to_numpy()).all()
    # missing strings are None (not NaN); present ones are str
    for name in ("true_sex", "sex", "group"):
        assert cohort[name].dtype == object
        assert all(v is None or isinstance(v, str) for v in cohort[name])
    assert all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in cohort["labels"])
    assert cohort["sample_id"].is_unique
    assert set(cohort["split"]) == {"train", "val", "test"}
    assert set(cohort["dataset"]) == set(PAPER_DATASETS)
    assert cohort["sample_id"].iloc[0] == "CheXpert-000000"
    assert (cohort["sample_id"].str.rsplit("-", n=1).str[0] == cohort["dataset"]).all()


def test_feature_count_follows_the_config():
    table = make_cohort(CohortConfig(n_samples=300, n_features=5))
    assert feature_columns(table) == ["f0", "f1", "f2", "f3", "f4"]
    assert list(table.columns[-5:]) == feature_columns(table)


def test_same_config_gives_the_same_table_and_another_seed_another(cohort):
    pd.testing.assert_frame_equal(make_cohort(CohortConfig()), cohort)
    other = make_cohort(CohortConfig(seed=1))
    assert other.shape == cohort.shape
    assert not np.allclose(other[feature_columns(other)].to_numpy(), cohort[feature_columns(cohort)].to_numpy())
    assert not other["true_age"].equals(cohort["true_age"])
    assert not other["split"].equals(cohort["split"])


# ---------------------------------------------------------------------------------------------
# Patients, splits, masking
# ---------------------------------------------------------------------------------------------


def test_splits_are_by_patient_with_the_configured_shares(cohort):
    assert (cohort.groupby("patient_id")["split"].nunique() == 1).all()
    assert (cohort.groupby("patient_id")["dataset"].nunique() == 1).all()
    per_patient = cohort.groupby("patient_id").size()
    assert per_patient.min() >= 1 and per_patient.max() <= 3
    shares = patients(cohort)["split"].value_counts(normalize=True)
    for split, share in zip(("train", "val", "test"), (0.7, 0.15, 0.15), strict=False):
        assert abs(shares[split] - share) < 0.01, (split, shares[split])
    for _, part in patients(cohort).groupby("dataset"):
        share = (part["split"] == "train").mean()
        assert abs(share - 0.7) < 1.5 / len(part) + 1e-9  # exact count after rounding


def test_other_split_shares_are_followed():
    table = make_cohort(CohortConfig(n_samples=4000, split=(0.5, 0.25, 0.25), samples_per_patient=(2, 2)))
    shares = patients(table)["split"].value_counts(normalize=True)
    assert abs(shares["train"] - 0.5) < 0.01 and abs(shares["test"] - 0.25) < 0.01
    assert (table.groupby("patient_id").size() == 2).all()


def test_demographics_are_per_patient(cohort):
    for name in ("true_age", "true_sex", "age", "sex", "group", "true_group"):
        assert (cohort.groupby("patient_id")[name].nunique(dropna=False) == 1).all(), name


def test_masked_share_of_patients_and_recorded_values(cohort):
    masked = cohort["age"].isna()
    pts = patients(cohort)
    assert abs(pts["age"].isna().mean() - 0.3) < 0.01
    for _, part in pts.groupby("dataset"):
        assert abs(part["age"].isna().mean() - 0.3) <= 0.5 / len(part) + 1e-9
    assert cohort.loc[masked, "sex"].isna().all() and cohort.loc[masked, "group"].isna().all()
    shown = cohort[~masked]
    assert (shown["age"] == shown["true_age"]).all()
    assert (shown["group"] == shown["true_group"]).all()
    assert all(a is b or a == b for a, b in zip(shown["sex"], shown["true_sex"], strict=False))


def test_groups_come_from_explicit_group(cohort):
    for row in cohort.sample(300, random_state=0).itertuples():
        attributes = PAPER_DATASETS[row.dataset].attributes
        assert row.true_group == explicit_group(row.true_age, row.true_sex, attributes)
        assert row.group == explicit_group(row.age, row.sex, attributes)
    assert cohort["true_group"].notna().all()


@pytest.mark.parametrize("missing", [0.0, 1.0])
def test_no_or_all_demographics_masked(missing):
    table = make_cohort(CohortConfig(n_samples=1000, missing_demographics=missing))
    assert table["age"].isna().mean() == missing
    assert table["group"].isna().mean() == missing


def test_datasets_without_sex_have_no_sex(cohort):
    for name in ("VinDr-Mammo", "COVID-BLUES"):
        part = cohort[cohort["dataset"] == name]
        assert part["true_sex"].isna().all() and part["sex"].isna().all()
        assert part["true_group"].isin(["a1", "a2", "a3", "a4"]).all()
    with_sex = cohort[~cohort["dataset"].isin(["VinDr-Mammo", "COVID-BLUES"])]
    assert with_sex["true_sex"].isin(["F", "M"]).all()
    assert with_sex["true_group"].str.match(r"^[FM]\|a[1-4]$").all()


# ---------------------------------------------------------------------------------------------
# Labels and realism
# ---------------------------------------------------------------------------------------------


def test_labels_are_in_each_vocabulary(cohort):
    for name, part in cohort.groupby("dataset"):
        spec = PAPER_DATASETS[name]
        assert all(set(labels) <= set(spec.labels) for labels in part["labels"]), name
        assert all(len(labels) == len(set(labels)) >= 1 for labels in part["labels"]), name
        if not spec.multi_label:
            assert (part["labels"].map(len) == 1).all(), name
    chexpert = cohort.loc[cohort["dataset"] == "CheXpert", "labels"]
    with_nf = chexpert[chexpert.map(lambda labels: "No Finding" in labels)]
    assert len(with_nf) > 0 and (with_nf.map(len) == 1).all()
    assert chexpert.map(len).max() >= 3  # genuinely multi-label
    order = {label: i for i, label in enumerate(PAPER_DATASETS["CheXpert"].labels)}
    assert all([order[x] for x in labels] == sorted(order[x] for x in labels) for labels in chexpert)


def test_class_priors_are_skewed_as_documented(big_cohort):
    def prior(name):
        labels = big_cohort.loc[big_cohort["dataset"] == name, "labels"].explode()
        return labels.value_counts() / (big_cohort["dataset"] == name).sum()

    assert 0.10 <= prior("ISIC-2020")["Malignant"] <= 0.20
    assert prior("HAM10000").idxmax() == "Nevus" and prior("HAM10000")["Nevus"] > 0.5
    assert prior("VinDr-Mammo").idxmax() == "BIRAD 1" and prior("VinDr-Mammo")["BIRAD 5"] < 0.05
    assert prior("Hemorrhage")["Has Hemorrhage"] < 0.5
    chexpert = prior("CheXpert")
    assert set(chexpert.index[:2]) == {"Support Devices", "Lung Opacity"}
    assert chexpert["Pleural Other"] < 0.03 and chexpert["Fracture"] < 0.06
    assert set(chexpert.index) == set(PAPER_DATASETS["CheXpert"].labels)


def test_relative_dataset_sizes(cohort):
    sizes = cohort["dataset"].value_counts(normalize=True)
    assert sizes.idxmax() == "CheXpert"
    assert 0.35 <= sizes["CheXpert"] <= 0.45
    assert sizes["Hemorrhage"] <= 0.07 and sizes["COVID-BLUES"] <= 0.07
    assert sizes.drop("CheXpert").max() < sizes["CheXpert"] / 2


def test_age_mix_has_a_majority_bin_and_a_rare_bin(cohort):
    for name, part in cohort.groupby("dataset"):
        shares = part["true_age"].map(age_bin).value_counts(normalize=True)
        assert shares.max() >= 0.5, (name, shares.to_dict())
        assert shares.min() < 0.1, (name, shares.to_dict())
        # the bin the generator treats as the majority is the observed one
        assert shares.idxmax() == majority_group(PAPER_DATASETS[name]).split("|")[-1]
    for name in ("CheXpert", "HAM10000", "ISIC-2020", "Hemorrhage", "PAD-UFES-20"):
        sexes = cohort.loc[cohort["dataset"] == name, "true_sex"].value_counts(normalize=True)
        assert sexes["M"] > sexes["F"], name  # the profiles' modal sex is M


def test_logistic_regression_is_useful_and_serves_the_majority_group_best(big_cohort):
    features = feature_columns(big_cohort)
    for name in SINGLE_LABEL:
        part = big_cohort[big_cohort["dataset"] == name]
        y = part["labels"].str[0]
        train, test = part["split"] == "train", part["split"] == "test"
        model = LogisticRegression(max_iter=2000).fit(part.loc[train, features], y[train])
        correct = model.predict(part.loc[test, features]) == y[test].to_numpy()
        baseline = (y[test] == y[train].value_counts().idxmax()).mean()
        majority = (part.loc[test, "true_group"] == majority_group(PAPER_DATASETS[name])).to_numpy()
        assert correct.mean() > baseline + 0.01, (name, correct.mean(), baseline)
        assert correct.mean() < 0.95, (name, correct.mean())  # far from perfect
        assert 0.1 < majority.mean() < 0.9
        assert correct[majority].mean() > correct[~majority].mean(), name


def test_majority_group_is_the_modal_intersection():
    assert majority_group(PAPER_DATASETS["CheXpert"]) == "M|a3"
    assert majority_group(PAPER_DATASETS["Hemorrhage"]) == "M|a1"
    assert majority_group(PAPER_DATASETS["VinDr-Mammo"]) == "a3"
    assert set(DATASET_PROFILES) == set(PAPER_DATASETS)


def test_weaker_minority_signal_is_what_separates_the_groups():
    """With every group given the majority's signal and no shift, the features of the modal age bin
    and the others have the same class-conditional spread (a control for the test above)."""
    config = CohortConfig(n_samples=40_000, minority_signal=1.0, sex_minority_signal=1.0, age_shift=0.0, sex_shift=0.0)
    table = make_cohort(config)
    part = table[table["dataset"] == "COVID-BLUES"]
    x = part[feature_columns(part)].to_numpy(dtype=float)
    covid = part["labels"].str[0].eq("Has COVID").to_numpy()
    modal = part["true_group"].eq("a3").to_numpy()
    gap = lambda m: np.linalg.norm(x[m & covid].mean(0) - x[m & ~covid].mean(0))  # noqa: E731
    assert abs(gap(modal) - gap(~modal)) < 0.3
    default = make_cohort(CohortConfig(n_samples=40_000))
    part = default[default["dataset"] == "COVID-BLUES"]
    x = part[feature_columns(part)].to_numpy(dtype=float)
    covid = part["labels"].str[0].eq("Has COVID").to_numpy()
    modal = part["true_group"].eq("a3").to_numpy()
    assert gap(modal) > 1.3 * gap(~modal)


def test_a_users_own_dataset_gets_a_default_profile():
    spec = DatasetSpec("MyXray", ("normal", "abnormal", "other"), False, ("age",))
    table = make_cohort(CohortConfig(n_samples=500), datasets={"MyXray": spec})
    assert len(table) == 500 and set(table["dataset"]) == {"MyXray"}
    assert table["labels"].explode().isin(spec.labels).all()
    assert table["true_sex"].isna().all() and table["true_group"].str.match(r"^a[1-4]$").all()
    with pytest.raises(ValueError, match="DatasetSpec"):
        make_cohort(CohortConfig(), datasets={"Other": spec})


def test_dataset_shares_override():
    table = make_cohort(CohortConfig(n_samples=2000, dataset_shares={"HAM10000": 0.0, "COVID-BLUES": 10.0}))
    assert "HAM10000" not in set(table["dataset"])
    assert table["dataset"].value_counts().idxmax() == "COVID-BLUES"
    with pytest.raises(ValueError, match="unknown dataset"):
        make_cohort(CohortConfig(dataset_shares={"MIMIC": 1.0}))


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(1, 400),
    lo=st.integers(1, 3),
    extra=st.integers(0, 3),
    missing=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**31),
)
def test_invariants_for_any_small_config(n, lo, extra, missing, seed):
    config = CohortConfig(n_samples=n, samples_per_patient=(lo, lo + extra), missing_demographics=missing, seed=seed)
    table = make_cohort(config)
    assert len(table) == n and table["sample_id"].is_unique
    assert (table.groupby("patient_id")["split"].nunique() == 1).all()
    sizes = table.groupby("patient_id").size()
    assert sizes.max() <= lo + extra
    for _, part in patients(table).groupby("dataset"):
        assert part["age"].isna().sum() == round(missing * len(part))
    assert (table["group"].isna() == table["age"].isna()).all()


# ---------------------------------------------------------------------------------------------
# Config, summary, CLI
# ---------------------------------------------------------------------------------------------


def test_from_dict_accepts_json_values_and_rejects_unknown_keys():
    config = CohortConfig.from_dict({"n_samples": 3000, "split": [0.8, 0.1, 0.1], "samples_per_patient": [1, 1]})
    assert config.n_samples == 3000 and config.split == (0.8, 0.1, 0.1) and config.samples_per_patient == (1, 1)
    assert CohortConfig.from_dict(config.to_dict()) == config
    with pytest.raises(ValueError, match="n_sample.*valid keys.*n_samples"):
        CohortConfig.from_dict({"n_sample": 3000})


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"n_samples": 0}, r"n_samples must be >= 1, got 0"),
        ({"n_samples": 2.5}, r"n_samples must be an integer, got 2\.5"),
        ({"n_samples": True}, r"n_samples must be an integer, got True"),
        ({"seed": -1}, r"seed must be >= 0, got -1"),
        ({"missing_demographics": 1.5}, r"missing_demographics must be in \[0\.0, 1\.0\], got 1\.5"),
        ({"split": [0.7, 0.2, 0.2]}, r"split shares must sum to 1"),
        ({"split": [0.5, 0.5]}, r"split must be a list of 3 numbers"),
        ({"samples_per_patient": [3, 1]}, r"samples_per_patient must be \(min, max\) with min <= max"),
        ({"samples_per_patient": [0, 2]}, r"samples_per_patient must be >= 1, got 0"),
        ({"minority_signal": 0.0}, r"minority_signal must be in \(0\.0, 1\.0\], got 0\.0"),
        ({"noise_sd": 0.0}, r"noise_sd must be in \(0\.0, inf\], got 0\.0"),
        ({"age_shift": -1}, r"age_shift must be in \[0\.0, inf\], got -1"),
        ({"dataset_shares": {"CheXpert": -1}}, r"dataset_shares\['CheXpert'\] must be in \[0\.0, inf\]"),
        ({"class_separation": float("nan")}, r"class_separation must be a finite number, got nan"),
    ],
)
def test_invalid_settings_are_rejected(bad, message):
    with pytest.raises(ValueError, match=message):
        CohortConfig.from_dict(bad)


def test_describe_has_one_row_per_dataset(cohort):
    summary = describe_cohort(cohort)
    assert list(summary["dataset"]) == list(PAPER_DATASETS)
    assert summary["n_samples"].sum() == len(cohort)
    assert (summary[["n_train", "n_val", "n_test"]].sum(axis=1) == summary["n_samples"]).all()
    assert (summary["n_patients"] == cohort.groupby("dataset", sort=False)["patient_id"].nunique().values).all()
    assert (summary["majority_group_share"] > summary["smallest_group_share"]).all()
    assert summary.set_index("dataset").loc["CheXpert", "labels_per_sample"] > 1
    assert np.isnan(summary.set_index("dataset").loc["VinDr-Mammo", "female_share"])
    assert summary["label_prior"].str.len().gt(0).all()


def test_cli_writes_a_parquet_that_round_trips(tmp_path):
    out, summary = tmp_path / "cohort.parquet", tmp_path / "summary.csv"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "eqpo.data.demo.cohort",
            "--config-json",
            '{"n_samples": 3000}',
            "--out",
            str(out),
            "--summary",
            str(summary),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr
    expected = make_cohort(CohortConfig(n_samples=3000))
    pd.testing.assert_frame_equal(read_cohort(out), expected)
    raw = pd.read_parquet(out)
    assert len(raw) == 3000 and list(raw["labels"].iloc[0]) == expected["labels"].iloc[0]
    table = pd.read_csv(summary)
    assert len(table) == 7 and table["n_samples"].sum() == 3000


def test_cli_errors_are_clear(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--config-json", '{"n_sample": 3}', "--out", str(tmp_path / "x.parquet")])
    assert info.value.code == 2
    assert "valid keys" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config-json", "{not json", "--out", str(tmp_path / "x.parquet")])
    assert "not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--config-json", "[1, 2]", "--out", str(tmp_path / "x.parquet")])
    assert "JSON object" in capsys.readouterr().err
    assert not (tmp_path / "x.parquet").exists()
