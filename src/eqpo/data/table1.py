"""Paper Table 1: the datasets, their size, modality, labels and demographics, from the cohort,
with the paper's published sample count next to ours."""

from __future__ import annotations

import pandas as pd

from eqpo.core.groups import AGE_BINS, age_bin
from eqpo.core.vocabularies import get_spec
from eqpo.data.sources import paper_count_check

MODALITY = {
    "CheXpert": "Chest X-ray",
    "Hemorrhage": "Brain CT",
    "VinDr-Mammo": "Mammography",
    "ISIC-2020": "Dermoscopy",
    "HAM10000": "Dermoscopy",
    "PAD-UFES-20": "Clinical photo",
    "COVID-BLUES": "Lung ultrasound",
}


def table1(cohort: pd.DataFrame) -> pd.DataFrame:
    """One row per dataset: modality, task, classes, samples per split, patients, the demographic
    attributes used, share of female samples and of each age bin (fractions of samples with that
    attribute recorded), the share of samples with no explicit group, and paper Table 1's count
    (``paper_samples``, as published, e.g. "2.5K"; empty for datasets the paper does not list) with
    ``within_paper_rounding`` (whether our count rounds to it; None when not listed)."""
    rows = []
    for name, part in cohort.groupby("dataset", sort=True):
        spec = get_spec(name)
        splits = part["split"].value_counts()
        bins = part["age"].map(age_bin).value_counts(normalize=True)
        row = {
            "dataset": name,
            "modality": MODALITY.get(name, "custom"),
            "task": "multi-label" if spec.multi_label else f"{len(spec.labels)}-class",
            "classes": len(spec.labels),
            "samples": len(part),
            **{f"n_{s}": int(splits.get(s, 0)) for s in ("train", "val", "test")},
            "patients": part["patient_id"].nunique(),
            "demographics": ", ".join(spec.attributes),
            "female_share": float((part["sex"] == "F").sum() / max(part["sex"].isin(["F", "M"]).sum(), 1))
            if "sex" in spec.attributes
            else float("nan"),
            **{f"age_{b}": float(bins.get(b, 0.0)) for b in AGE_BINS},
            "no_group_share": float(part["group"].isna().mean()),
        }
        check = paper_count_check(name, len(part))
        row["paper_samples"] = check.get("published_as", "")
        row["within_paper_rounding"] = check.get("within_rounding")
        rows.append(row)
    return pd.DataFrame(rows)
