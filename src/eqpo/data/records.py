"""Standard rows of the image datasets built from a metadata table and image files (ISIC-2020,
HAM10000, PAD-UFES-20): reading the metadata as text, one records frame per sample, image lookup
and PNG conversion, and the patient-level split.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from eqpo.data.media import CorruptMedia, resize_image
from eqpo.data.sources import Manifest, assign_splits, normalise_header

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
ROW_COLUMNS = ["sample_id", "patient_id", "split", "images", "labels", "age", "sex"]


def read_table(path: Path, sep: str = ",") -> pd.DataFrame:
    """A metadata CSV read as text: headers normalised (``normalise_header``), cells stripped,
    blank cells NaN, a UTF-8 byte-order mark ignored."""
    table = pd.read_csv(path, sep=sep, dtype=str, encoding="utf-8-sig")
    table.columns = [normalise_header(c) for c in table.columns]
    for name in table.columns:
        table[name] = table[name].str.strip().replace("", np.nan)
    return table


def column(table: pd.DataFrame, name: str) -> pd.Series:
    """The column ``name``, or all-NaN when the file lacks it (a missing demographic, not a crash)."""
    if name in table.columns:
        return table[name]
    return pd.Series(np.nan, index=table.index, dtype=object)


def require(table: pd.DataFrame, names: Sequence[str], path: Path) -> None:
    """Fail with a clear message when a metadata file lacks an identifier or label column."""
    missing = [n for n in names if n not in table.columns]
    if missing:
        raise ValueError(f"{path} has no column(s) {missing}; its columns are {list(table.columns)}")


def sex_codes(values: Sequence[object], mapping: Mapping[str, str]) -> list[str | None]:
    """Sex words -> "F"/"M" by ``mapping`` (lower-case keys); blank, "unknown" and the like -> None."""
    return [mapping.get(v.strip().lower()) if isinstance(v, str) else None for v in values]


def index_images(root: Path, suffixes: Sequence[str] = IMAGE_SUFFIXES) -> dict[str, Path]:
    """Every image file under ``root`` by its stem (file name without suffix), wherever it lies;
    hidden files and macOS ``__MACOSX`` copies are ignored; the first path in sorted order wins."""
    found: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.suffix.lower() not in suffixes or path.name.startswith(".") or "__MACOSX" in path.parts:
            continue
        if path.is_file():
            found.setdefault(path.stem, path)
    return found


def to_png(src: Path | None, dest: Path) -> str | None:
    """Resize ``src`` to the PNG ``dest`` (written through a temporary file, reused when it exists);
    returns None on success, else why the sample must be skipped."""
    if src is None:
        return "image file not found under raw/"
    if dest.exists():
        return None
    tmp = dest.with_name(dest.name + ".tmp")
    try:
        resize_image(src, tmp)
    except CorruptMedia as err:
        tmp.unlink(missing_ok=True)
        return f"corrupt image: {err}"
    os.replace(tmp, dest)
    return None


def convert_images(jobs: list[tuple[Path | None, Path]]) -> list[str | None]:
    """Run :func:`to_png` over (source, dest) pairs in threads (PIL releases the GIL while decoding)."""
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda job: to_png(*job), jobs))


def build_rows(
    records: pd.DataFrame, images: Mapping[str, Path], out_dir: Path, manifest: Manifest, seed: int, fractions
) -> pd.DataFrame:
    """Split patients, convert images and return the standard rows.

    records: one row per labelled sample with ``native`` (the image id, also the PNG's name),
    ``sample_id``, ``patient_id``, ``labels``, ``age``, ``sex``. The split covers every patient in
    ``records``, so a corrupt image never moves a patient to another split. A sample whose image
    is missing or corrupt is skipped and recorded in the manifest.
    """
    dests = [out_dir / "images" / f"{native}.png" for native in records["native"]]
    reasons = convert_images(
        [(images.get(native), dest) for native, dest in zip(records["native"], dests, strict=False)]
    )
    for sample_id, reason in zip(records["sample_id"], reasons, strict=False):
        if reason is not None:
            manifest.skip(sample_id, reason, unreadable=True)
    rows = assign_splits(records, seed, fractions).assign(
        images=[[dest.relative_to(out_dir.parent).as_posix()] for dest in dests]
    )
    rows = rows[[reason is None for reason in reasons]]
    return rows.sort_values("sample_id")[ROW_COLUMNS].reset_index(drop=True)


def drop_unusable(records: pd.DataFrame, manifest: Manifest) -> pd.DataFrame:
    """Drop rows without an image id or a label (recorded in the manifest) and repeated image ids."""
    no_id = records["native"].isna()
    for i in np.flatnonzero(no_id.to_numpy()):
        manifest.skip(f"{manifest.dataset}-row{i + 2}", "no image id in the metadata")
    records = records[~no_id].drop_duplicates("native")
    no_label = records["labels"].isna()
    for sample_id in records.loc[no_label, "sample_id"]:
        manifest.skip(sample_id, "no recognised label in the metadata")
    records = records[~no_label].copy()
    records["labels"] = [[label] for label in records["labels"]]
    return records


def records_frame(
    dataset: str,
    native: pd.Series,
    patient_id: pd.Series,
    labels: Sequence[str | None],
    age: pd.Series,
    sex: Sequence[str | None],
) -> pd.DataFrame:
    """One record per metadata row: ``native`` (the image id, also the PNG's name), ``sample_id``
    (``<dataset>-<native>``), ``patient_id`` (the image id where the file has none), ``labels``, ``age``
    (years, NaN when blank or not a number) and ``sex`` ("F"/"M"/None)."""
    return pd.DataFrame(
        {
            "native": native,
            "sample_id": f"{dataset}-" + native,
            "patient_id": patient_id.fillna(native),
            "labels": list(labels),
            "age": pd.to_numeric(age, errors="coerce").astype(float),
            "sex": list(sex),
        }
    )
