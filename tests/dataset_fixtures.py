"""Fixture files in the real datasets' layouts, shared by more than one test module."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path


def write_ct_ich_demographics(
    path: Path, demographics: Mapping[int, tuple[str, str]], intraparenchymal: Iterable[int] = ()
) -> None:
    """CT-ICH's ``Patient_demographics.csv`` with its quirks: the embedded newline in ``Age\\n(years)``
    and the two-row hemorrhage-type header; ``demographics``: patient -> (age, gender);
    ``intraparenchymal``: patients with a 1 in that subtype column."""
    marked = set(intraparenchymal)
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(
            [
                "Patient Number",
                "Age\n(years)",
                "Gender",
                "Hemorrhage type based on the radiologists diagnosis ",
                "",
                "",
                "",
                "",
                "Fracture (yes 1/no 0)",
                "Note1",
            ]
        )
        out.writerow(
            ["", "", "", "Intraventricular", "Intraparenchymal", "Subarachnoid", "Epidural", "Subdural", "", ""]
        )
        for patient, (age, sex) in demographics.items():
            out.writerow([patient, age, sex, "", "1" if patient in marked else "", "", "", "", "0", ""])
