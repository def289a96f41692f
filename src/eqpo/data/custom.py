"""Bring your own dataset: a CSV or parquet file described by one config entry.

Config (``data.custom`` list), e.g.::

    - name: MyDerm                      # dataset key (not one of the paper's seven)
      path: /data/myderm/samples.csv    # CSV or parquet
      labels: [Benign, Malignant]       # the label vocabulary, in prompt order
      multi_label: false
      attributes: [sex, age]            # demographics it records: any of sex, age
      question: "Is the lesion benign or malignant? Answer with one word from the following:"

File columns: ``sample_id``, ``patient_id``, ``split`` (train/val/test), ``label`` (one label) or
``labels`` (several, separated by "|" in a CSV), ``age`` (years, empty when unknown), ``sex``
(F/M/female/male, empty when unknown), and either ``image`` / ``images`` (paths, "|"-separated,
relative to the file; for the GPU path) or numeric feature columns ``f0, f1, ...`` (for the CPU
backend; datasets may have different numbers of them, each gets its own input width). A cohort may
consist of custom datasets only (``data.datasets: []``). Every problem is reported at once, with
the rows concerned.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from eqpo.core.groups import normalize_sex
from eqpo.core.vocabularies import PAPER_DATASETS, DatasetSpec, register_dataset
from eqpo.data.sources import SPLITS, Manifest, finish_table

ENTRY_KEYS = {"name", "path", "labels", "multi_label", "attributes", "question"}


def spec_from_entry(entry: dict[str, Any]) -> DatasetSpec:
    unknown = sorted(set(entry) - ENTRY_KEYS)
    missing = sorted({"name", "path", "labels"} - set(entry))
    if unknown or missing:
        raise ValueError(
            f"data.custom entry {entry.get('name', '?')!r}: "
            + (f"unknown key(s) {unknown} (valid: {sorted(ENTRY_KEYS)}); " if unknown else "")
            + (f"missing key(s) {missing}" if missing else "")
        )
    if entry["name"] in PAPER_DATASETS:
        raise ValueError(f"data.custom entry {entry['name']!r} reuses a paper dataset's name; choose another")
    return DatasetSpec(
        entry["name"],
        tuple(entry["labels"]),
        bool(entry.get("multi_label", False)),
        tuple(entry.get("attributes", ("sex", "age"))),
    )


def _read(path: Path) -> pd.DataFrame:
    if not path.exists():
        raise FileNotFoundError(f"data.custom file {path} does not exist")
    return (
        pd.read_parquet(path)
        if path.suffix == ".parquet"
        else pd.read_csv(path, dtype={"sample_id": str, "patient_id": str})
    )


def _split_list(value: Any) -> list[str]:
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    if value is None or (isinstance(value, float) and pd.isna(value)):
        return []
    return [part.strip() for part in str(value).split("|") if part.strip()]


def load_custom(entry: dict[str, Any]) -> pd.DataFrame:
    """Validate and load one custom dataset into the standard table (plus feature columns if any)."""
    spec = register_dataset(spec_from_entry(entry))
    path = Path(entry["path"])
    raw = _read(path)
    problems = []
    need = ["sample_id", "patient_id", "split"]
    problems += [f"missing column {c!r}" for c in need if c not in raw.columns]
    if "label" not in raw.columns and "labels" not in raw.columns:
        problems.append("missing column 'label' (or 'labels')")
    features = [c for c in raw.columns if c.startswith("f") and c[1:].isdigit()]
    image_col = "images" if "images" in raw.columns else "image" if "image" in raw.columns else None
    if image_col is None and not features:
        problems.append("no 'image'/'images' column and no feature columns f0, f1, ...")
    if problems:
        raise ValueError(f"data.custom {spec.name} ({path}): " + "; ".join(problems))
    labels = [_split_list(v) for v in raw["labels" if "labels" in raw.columns else "label"]]
    bad_labels = [(i, label) for i, ls in enumerate(labels) for label in ls if label not in spec.labels]
    empty = [i for i, ls in enumerate(labels) if not ls]
    multi = [i for i, ls in enumerate(labels) if len(ls) > 1 and not spec.multi_label]
    bad_split = raw.index[~raw["split"].isin(SPLITS)].tolist()
    for what, rows in (
        ("labels outside the vocabulary", bad_labels),
        ("no label", empty),
        ("several labels in a single-label dataset", multi),
        (f"split not in {SPLITS}", bad_split),
    ):
        if rows:
            problems.append(f"{len(rows)} row(s) with {what}, e.g. {rows[:3]}")
    if raw["sample_id"].duplicated().any():
        problems.append(
            f"duplicate sample_id values, e.g. {raw.loc[raw['sample_id'].duplicated(), 'sample_id'].head(3).tolist()}"
        )
    if problems:
        raise ValueError(f"data.custom {spec.name} ({path}): " + "; ".join(problems))
    table = pd.DataFrame(
        {
            "sample_id": raw["sample_id"].astype(str),
            "patient_id": raw["patient_id"].astype(str),
            "split": raw["split"],
            "labels": labels,
            # absolute: the verl export roots relative image paths under the data folder, where a CSV
            # given relative to the working directory (data.custom path) does not lie
            "images": (
                [[str((path.parent / p).resolve()) for p in _split_list(v)] for v in raw[image_col]]
                if image_col
                else [[] for _ in labels]
            ),
            "age": pd.to_numeric(raw["age"], errors="coerce") if "age" in raw.columns else float("nan"),
            "sex": [normalize_sex(v) for v in raw["sex"]] if "sex" in raw.columns else None,
        }
    )
    out = finish_table(table, spec, Manifest(dataset=spec.name))
    for col in features:
        out[col] = raw[col].to_numpy(dtype="float32")
    return out
