"""ISIC 2020 (SIIM-ISIC Melanoma Classification) training set -> standard table.

Files under ``raw/`` (both from the ISIC S3 bucket, no login):

- ``ISIC_2020_Training_GroundTruth.csv``: one row per image. ``image_name`` (ISIC_xxxxxxx),
  ``patient_id`` (IP_xxxxxxx), ``sex`` (male/female/blank), ``age_approx`` (5-year steps, may be
  blank), ``anatom_site_general_challenge``, ``diagnosis``, ``benign_malignant``
  (benign/malignant) and ``target`` (1 = malignant).
- ``train/<image_name>.jpg``: the JPEG photos, extracted from ``ISIC_2020_Training_JPEG.zip``
  (about 23 GB, up to about 6000x4000 pixels). Images are looked up by name anywhere under raw/,
  so a copy unpacked with an extra top folder works too.

Labels: ``target`` 1 -> "Malignant", 0 -> "Benign" (``benign_malignant`` when ``target`` is blank).
There is no labelled official test set, so the split is a seeded patient-level split on
``patient_id``.

The helpers below (:func:`read_table`, :func:`sex_codes`, :func:`index_images`,
:func:`build_rows`) are shared with the HAM10000 and PAD-UFES-20 modules.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ...vocabularies import PAPER_DATASETS
from ..fetch import sha256_of
from ..media import CorruptMedia, resize_image
from ..sources import Access, DatasetSource, Manifest, RemoteFile, normalise_header, patient_split

NAME = "ISIC-2020"
S3 = "https://isic-challenge-data.s3.amazonaws.com/2020/"
GROUND_TRUTH = "ISIC_2020_Training_GroundTruth.csv"
IMAGES_ZIP = "ISIC_2020_Training_JPEG.zip"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
SEX = {"male": "M", "female": "F"}
ROW_COLUMNS = ["sample_id", "patient_id", "split", "images", "labels", "age", "sex"]


# ----------------------------------------------------------------------------------------------
# Shared helpers (also used by ham10000 and pad_ufes_20)
# ----------------------------------------------------------------------------------------------


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


def build_rows(records: pd.DataFrame, images: Mapping[str, Path], out_dir: Path, manifest: Manifest,
               seed: int, fractions) -> pd.DataFrame:
    """Split patients, convert images and return the standard rows.

    records: one row per labelled sample with ``native`` (the image id, also the PNG's name),
    ``sample_id``, ``patient_id``, ``labels``, ``age``, ``sex``. The split covers every patient in
    ``records``, so a corrupt image never moves a patient to another split. A sample whose image
    is missing or corrupt is skipped and recorded in the manifest.
    """
    split = patient_split(records["patient_id"].tolist(), seed, fractions)
    dests = [out_dir / "images" / f"{native}.png" for native in records["native"]]
    reasons = convert_images([(images.get(native), dest) for native, dest in zip(records["native"], dests)])
    for sample_id, reason in zip(records["sample_id"], reasons):
        if reason is not None:
            manifest.skip(sample_id, reason)
    rows = records.assign(
        split=records["patient_id"].map(split),
        images=[[dest.relative_to(out_dir.parent).as_posix()] for dest in dests],
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


# ----------------------------------------------------------------------------------------------
# ISIC 2020
# ----------------------------------------------------------------------------------------------


def label_of(target: object, benign_malignant: object) -> str | None:
    """``target`` (1/0, possibly "1.0") or else ``benign_malignant`` -> "Malignant"/"Benign"."""
    try:
        value = float(target)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        value = float("nan")
    if value in (0.0, 1.0):
        return "Malignant" if value == 1.0 else "Benign"
    word = benign_malignant.strip().lower() if isinstance(benign_malignant, str) else ""
    return {"malignant": "Malignant", "benign": "Benign"}.get(word)


def read_ground_truth(path: Path) -> pd.DataFrame:
    """The ground-truth CSV -> records (native, sample_id, patient_id, labels, age, sex)."""
    gt = read_table(path)
    require(gt, ["image_name"], path)
    native = column(gt, "image_name")
    return pd.DataFrame({
        "native": native,
        "sample_id": f"{NAME}-" + native,
        "patient_id": column(gt, "patient_id").fillna(native),
        "labels": [label_of(t, b) for t, b in zip(column(gt, "target"), column(gt, "benign_malignant"))],
        "age": pd.to_numeric(column(gt, "age_approx"), errors="coerce").astype(float),
        "sex": sex_codes(column(gt, "sex"), SEX),
    })


def preprocess(raw_dir: Path, out_dir: Path, manifest: Manifest, seed: int, fractions) -> pd.DataFrame:
    """ISIC 2020 raw files -> standard rows (images resized to PNG under out_dir/images/)."""
    manifest.files[GROUND_TRUTH] = sha256_of(raw_dir / GROUND_TRUTH)
    records = drop_unusable(read_ground_truth(raw_dir / GROUND_TRUTH), manifest)
    return build_rows(records, index_images(raw_dir), out_dir, manifest, seed, fractions)


SOURCE = DatasetSource(
    spec=PAPER_DATASETS[NAME],
    access=Access.OPEN_URL,
    landing_page="https://challenge2020.isic-archive.com/",
    license="CC BY-NC 4.0",
    expected=(GROUND_TRUTH, "train/"),
    preprocess=preprocess,
    remote=(
        RemoteFile(S3 + GROUND_TRUTH, GROUND_TRUTH),
        RemoteFile(S3 + IMAGES_ZIP, IMAGES_ZIP, extract=True),
    ),
    example_command=(f"wget -c -P {{raw_dir}} {S3}{GROUND_TRUTH} {S3}{IMAGES_ZIP} && "
                     f"unzip -q {{raw_dir}}/{IMAGES_ZIP} -d {{raw_dir}}"),
    notes=("Open S3 files, no login; the JPEG zip is about 23 GB and unpacks to train/<image_name>.jpg. "
           "ISIC publishes no checksums. No labelled official test set: seeded split by patient_id."),
)
