"""The cohort table on disk: one parquet (one row per sample, every split) and, when the cohort holds
the user's own datasets, their specs in a sidecar JSON (``<cohort>.specs.json``).

:func:`read_cohort` gives back the table that :func:`write_cohort` was given: label and image lists
as Python lists, None (not NaN) for a missing sex or group, and the custom datasets registered.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

STR_COLUMNS = ("sample_id", "patient_id", "dataset", "split", "true_group")
NULLABLE_STR_COLUMNS = ("true_sex", "sex", "group")


def specs_path(cohort: str | Path) -> Path:
    return Path(str(cohort) + ".specs.json")


def write_cohort(table: pd.DataFrame, out: str | Path, custom: list[dict] | None = None) -> None:
    """Write a cohort parquet and, when ``custom`` (config ``data.custom``) is given, its specs next to it."""
    from eqpo.data.custom import spec_from_entry

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(out, index=False)
    specs = [asdict(spec_from_entry(entry)) for entry in custom or []]
    if specs:
        specs_path(out).write_text(json.dumps(specs, indent=1))


def read_cohort(path: str | Path) -> pd.DataFrame:
    """A cohort parquet as written (see the module docstring); custom dataset specs are registered."""
    from eqpo.core.vocabularies import DatasetSpec, register_dataset

    table = pd.read_parquet(path)
    if "labels" in table:
        table["labels"] = pd.Series([list(v) for v in table["labels"]], index=table.index, dtype=object)
    if "images" in table:
        table["images"] = pd.Series(
            [[] if v is None or isinstance(v, float) else list(v) for v in table["images"]],
            index=table.index,
            dtype=object,
        )
    for name in NULLABLE_STR_COLUMNS:
        if name in table:
            values = table[name].astype(object)
            table[name] = values.where(values.notna(), None).astype(object)
    for name in STR_COLUMNS:
        if name in table and table[name].notna().all():
            table[name] = table[name].astype("str")
    if specs_path(path).exists():
        for d in json.loads(specs_path(path).read_text()):
            register_dataset(DatasetSpec(d["name"], tuple(d["labels"]), d["multi_label"], tuple(d["attributes"])))
    return table
