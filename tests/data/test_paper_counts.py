"""Sample counts against paper Table 1 (published rounded, e.g. "2.5K"): the range a published
count stands for, the manifest entry, the warning in the log, and the columns of our Table 1."""

import json
import logging

import numpy as np
import pandas as pd
import pytest

from eqpo.core.vocabularies import PAPER_DATASETS
from eqpo.data.prepare import prepare
from eqpo.data.sources import Access, DatasetSource, assign_splits, count_warning, paper_count_check, published_range
from eqpo.data.table1 import table1


@pytest.mark.parametrize(
    "published, low, high",
    [
        ("2.5K", 2450, 2550),  # one decimal of thousands: +-50
        ("212K", 211_500, 212_500),  # whole thousands: +-500
        ("20K", 19_500, 20_500),
        ("2.3K", 2250, 2350),
        ("362", 361.5, 362.5),  # printed exactly: only 362 itself
    ],
)
def test_published_range(published, low, high):
    assert published_range(published) == (low, high)


def test_published_range_refuses_what_is_not_a_count():
    with pytest.raises(ValueError, match="not a number"):
        published_range("about 2K")


def test_paper_count_check_against_the_shipped_table():
    assert paper_count_check("Hemorrhage", 2501) == {
        "published_as": "2.5K",
        "low": 2450.0,
        "high": 2550.0,
        "samples": 2501,
        "within_rounding": True,
    }
    assert paper_count_check("Hemorrhage", 2814)["within_rounding"] is False  # the NIfTI release's slices
    assert paper_count_check("CheXpert", 212_468)["within_rounding"] is True  # 212,243 train + 225 valid
    assert paper_count_check("COVID-BLUES", 362)["within_rounding"] is True
    assert paper_count_check("COVID-BLUES", 361)["within_rounding"] is False
    assert paper_count_check("HAM10000", 10_015)["within_rounding"] is True
    assert paper_count_check("MyOwn", 5) == {}
    assert count_warning(paper_count_check("COVID-BLUES", 362), "COVID-BLUES") is None
    assert count_warning({}, "MyOwn") is None
    text = count_warning(paper_count_check("Hemorrhage", 2814), "Hemorrhage")
    assert "2814 samples" in text and "2.5K" in text and "2450" in text and "2550" in text


def _source(name: str, n: int) -> DatasetSource:
    spec = PAPER_DATASETS[name]

    def preprocess(raw_dir, out_dir, manifest, seed, fractions):
        rows = pd.DataFrame(
            {
                "sample_id": [f"s{i}" for i in range(n)],
                "patient_id": [f"p{i}" for i in range(n)],
                "images": [[f"x{i}.png"] for i in range(n)],
                "labels": [[spec.labels[0]]] * n,
                "age": [50.0] * n,
                "sex": ["F"] * n,
            }
        )
        return assign_splits(rows, seed, fractions)

    return DatasetSource(
        spec=spec,
        access=Access.MANUAL,
        landing_page="https://example.org",
        license="test",
        expected=("here.txt",),
        preprocess=preprocess,
    )


def _placed(root, name):
    raw = root / name / "raw"
    raw.mkdir(parents=True)
    (raw / "here.txt").write_text("x")


def test_prepare_writes_the_comparison_and_warns_outside_the_rounding(tmp_path, caplog):
    _placed(tmp_path, "COVID-BLUES")
    with caplog.at_level(logging.WARNING, logger="eqpo"):
        prepare(_source("COVID-BLUES", 360), tmp_path)
    manifest = json.loads((tmp_path / "COVID-BLUES" / "manifest.json").read_text())
    assert manifest["paper"] == {
        "published_as": "362",
        "low": 361.5,
        "high": 362.5,
        "samples": 360,
        "within_rounding": False,
    }
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert "COVID-BLUES: 360 samples" in caplog.records[0].getMessage()


def test_no_warning_inside_the_rounding(tmp_path, caplog):
    _placed(tmp_path, "COVID-BLUES")
    with caplog.at_level(logging.WARNING, logger="eqpo"):
        prepare(_source("COVID-BLUES", 362), tmp_path)
    assert caplog.records == []
    assert json.loads((tmp_path / "COVID-BLUES" / "manifest.json").read_text())["paper"]["within_rounding"] is True


def test_the_warning_reaches_the_rule_log(tmp_path):
    from eqpo.workflow.pipeline import logged

    _placed(tmp_path, "COVID-BLUES")
    with logged(tmp_path / "rule.log"):
        prepare(_source("COVID-BLUES", 3), tmp_path)
    assert (
        "WARNING COVID-BLUES: 3 samples after preprocessing, but paper Table 1 reports 362"
        in (tmp_path / "rule.log").read_text()
    )


def test_table1_has_the_published_count_next_to_ours():
    cohort = pd.DataFrame(
        {
            "dataset": ["COVID-BLUES"] * 362 + ["Hemorrhage"] * 3,
            "sample_id": [f"s{i}" for i in range(365)],
            "patient_id": [f"p{i}" for i in range(365)],
            "split": ["train"] * 365,
            "labels": [["No COVID"]] * 362 + [["No Hemorrhage"]] * 3,
            "age": [60.0] * 365,
            "sex": ["M"] * 365,
            "group": ["M|a3"] * 365,
        }
    )
    table = table1(cohort).set_index("dataset")
    assert table.loc["COVID-BLUES", "samples"] == 362 and table.loc["COVID-BLUES", "paper_samples"] == "362"
    assert table.loc["COVID-BLUES", "within_paper_rounding"] == True  # noqa: E712 (numpy bool)
    assert table.loc["Hemorrhage", "paper_samples"] == "2.5K"
    assert table.loc["Hemorrhage", "within_paper_rounding"] == False  # noqa: E712
    assert not np.isnan(table.loc["Hemorrhage", "female_share"])
