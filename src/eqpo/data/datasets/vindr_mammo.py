"""VinDr-Mammo (PhysioNet, restricted access): breast-level BI-RADS 1-5 per mammogram, plus age.

Files under ``<root>/VinDr-Mammo/raw/`` (the layout of https://physionet.org/files/vindr-mammo/1.0.0/):

- ``breast-level_annotations.csv``: one row per image: ``study_id, series_id, image_id,
  laterality, view_position, height, width, breast_birads ("BI-RADS 1".."BI-RADS 5"),
  breast_density, split ("training"/"test", the official split)``.
- ``metadata.csv``: DICOM tags kept by the de-identification, one row per image, among them
  ``Patient's Age`` as a DICOM age string (``"053Y"``). It is joined on ``SOP Instance UID``
  (= image_id); ``Series Instance UID`` (= series_id) or ``Study Instance UID`` (= study_id) are
  used when that column is absent (the exact key could not be confirmed from public material).
- ``SHA256SUMS.txt``: PhysioNet's checksums of every file; used to verify the CSVs and each DICOM.
- ``images/<study_id>/<image_id>.dicom``: the 20,000 DICOMs (about 340 GB). Their transfer
  syntax is not documented; compressed pixel data (JPEG lossless, JPEG-LS, JPEG 2000, as full-field
  mammography archives often hold) is decoded by pydicom's pylibjpeg plugins, installed with the
  ``data`` extra and ``envs/data.yaml``.

Download: PhysioNet credentials from ``PHYSIONET_USERNAME``/``PHYSIONET_PASSWORD`` or ``~/.netrc``
(never prompted). The CSVs come through ``SOURCE.remote``; :func:`fetch_images` then downloads the
DICOMs listed in breast-level_annotations.csv (resumable, verified) into ``images.partial/`` and
renames it to ``images/`` once complete, so an interrupted run resumes on the next call.

Conventions: label "BI-RADS k" -> "BIRAD k"; patient = study_id (the dataset has no patient id,
one exam per woman); official ``training`` -> train/val by seeded patient-level split, ``test`` ->
test; age from metadata.csv, else the DICOM PatientAge tag; sex None (everyone is female and the
paper reports this dataset for age only).
"""

from __future__ import annotations

import math
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

from eqpo.core.vocabularies import PAPER_DATASETS
from eqpo.data.fetch import download_all, sha256_of
from eqpo.data.media import CorruptMedia, dicom_to_png
from eqpo.data.sources import (
    Access,
    DatasetSource,
    Manifest,
    MissingDataError,
    RemoteFile,
    assign_splits,
    normalise_header,
)

SPEC = PAPER_DATASETS["VinDr-Mammo"]
BASE_URL = "https://physionet.org/files/vindr-mammo/1.0.0/"
LANDING_PAGE = "https://physionet.org/content/vindr-mammo/1.0.0/"
ANNOTATIONS = "breast-level_annotations.csv"
METADATA = "metadata.csv"
SUMS = "SHA256SUMS.txt"
STAGING = "images.partial"
DOWNLOAD_THREADS = 4
# metadata.csv key column (normalised header) -> the annotation column it equals
METADATA_KEYS = (
    ("sop instance uid", "image_id"),
    ("image_id", "image_id"),
    ("series instance uid", "series_id"),
    ("series_id", "series_id"),
    ("study instance uid", "study_id"),
    ("study_id", "study_id"),
)
AGE_HEADERS = ("patient's age", "patient’s age", "patients age", "patient age", "patientage", "age")
AGE_UNITS = {"D": 365.25, "W": 365.25 / 7, "M": 12.0, "Y": 1.0}
NO_DECODER = "missing dependencies"  # pydicom's message when no installed plugin decodes the transfer syntax


# ----------------------------------------------------------------------------------------------
# Download: DICOMs listed in breast-level_annotations.csv
# ----------------------------------------------------------------------------------------------


def read_sha256sums(path: Path) -> dict[str, str]:
    """PhysioNet ``SHA256SUMS.txt`` ("<sha256> <path>" per line) -> {path: sha256}; {} if absent."""
    if not path.exists():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2 and re.fullmatch(r"[0-9a-fA-F]{64}", parts[0]):
            sums[parts[1].strip().lstrip("*").removeprefix("./")] = parts[0].lower()
    return sums


def verify_listed(raw_dir: Path, sums: dict[str, str], names: tuple[str, ...]) -> None:
    """Check downloaded files against SHA256SUMS.txt; a mismatching file is removed (so the next
    run downloads it again) and IOError raised."""
    for name in names:
        path = raw_dir / name
        if name in sums and path.exists() and sha256_of(path) != sums[name]:
            path.unlink()
            raise OSError(
                f"{path} does not match its SHA-256 in {SUMS}; it was removed, run again to download it afresh"
            )


def listed_images(annotations: Path) -> list[tuple[str, str]]:
    """(study_id, image_id) of every image in breast-level_annotations.csv, in file order, once each."""
    table = read_annotations(annotations)
    return list(dict.fromkeys(zip(table["study_id"], table["image_id"], strict=False)))


def base_url(source: DatasetSource) -> str:
    """The folder URL the CSVs came from (the DICOMs live under it): tests point it at a local server."""
    for item in source.remote:
        if item.name == ANNOTATIONS:
            return item.url[: -len(ANNOTATIONS)]
    return BASE_URL


def fetch_images(source: DatasetSource, raw_dir: Path, credentials: tuple[str, str] | None) -> None:
    """Download every listed DICOM to ``images.partial/<study_id>/<image_id>.dicom`` (resuming,
    verified against SHA256SUMS.txt when it lists them), then rename the folder to ``images/``.
    When ``images/`` already exists (placed by hand) only the DICOMs missing from it are fetched."""
    raw_dir = Path(raw_dir)
    sums = read_sha256sums(raw_dir / SUMS)
    verify_listed(raw_dir, sums, (ANNOTATIONS, METADATA))
    if not (raw_dir / ANNOTATIONS).exists():
        return  # obtain() reports the missing files with the instructions
    final = raw_dir / "images"
    target = final if final.is_dir() else raw_dir / STAGING
    url = base_url(source)

    jobs = [
        (
            url + f"images/{study}/{image}.dicom",
            target / study / f"{image}.dicom",
            sums.get(f"images/{study}/{image}.dicom"),
        )
        for study, image in listed_images(raw_dir / ANNOTATIONS)
    ]
    try:  # one progress bar over the files; the first failure (a 401, a checksum mismatch) stops the rest
        download_all(jobs, credentials, DOWNLOAD_THREADS, desc=f"{SPEC.name} images")
    except MissingDataError as err:
        raise MissingDataError(source.instructions(raw_dir, ["images/<study_id>/<image_id>.dicom"], str(err))) from None
    if target != final:
        os.replace(target, final)


# ----------------------------------------------------------------------------------------------
# Reading the CSVs
# ----------------------------------------------------------------------------------------------


def read_annotations(path: Path) -> pd.DataFrame:
    """breast-level_annotations.csv -> columns study_id, series_id, image_id, breast_birads, split
    (headers matched case- and whitespace-insensitively; all values stripped strings)."""
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    raw.columns = [normalise_header(c) for c in raw.columns]
    absent = [c for c in ("study_id", "image_id", "breast_birads", "split") if c not in raw.columns]
    if absent:
        raise ValueError(f"{path}: no column(s) {absent}; columns are {list(raw.columns)}")
    if "series_id" not in raw.columns:
        raw["series_id"] = ""
    return raw[["study_id", "series_id", "image_id", "breast_birads", "split"]].apply(lambda col: col.str.strip())


def read_ages(path: Path) -> tuple[str, dict[str, float]]:
    """metadata.csv -> (annotation column it joins on, {id: age in years}); ages parsed from DICOM
    age strings, missing ones left out. A file without a key or an age column gives no ages."""
    if not path.exists():
        return "image_id", {}
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = {normalise_header(c): c for c in raw.columns}
    key = next(((header, target) for header, target in METADATA_KEYS if header in columns), None)
    age = next((columns[h] for h in AGE_HEADERS if h in columns), None)
    if key is None or age is None:
        return "image_id", {}
    ages = {str(k).strip(): dicom_age(v) for k, v in zip(raw[columns[key[0]]], raw[age], strict=False)}
    return key[1], {k: v for k, v in ages.items() if not math.isnan(v)}


def dicom_age(value: object) -> float:
    """DICOM age string -> years: "053Y" -> 53.0, "006M" -> 0.5, "010W", "020D"; a plain number is
    years; blank, None or anything else -> NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return math.nan
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([DWMY]?)\s*", str(value), re.IGNORECASE)
    if not match:
        return math.nan
    return float(match.group(1)) / AGE_UNITS[(match.group(2) or "Y").upper()]


def birads_label(value: str) -> str | None:
    """ "BI-RADS 4" -> "BIRAD 4" (the trailing digit, as CLIMB); None outside 1..5."""
    match = re.search(r"(\d)\s*$", str(value))
    label = f"BIRAD {match.group(1)}" if match else None
    return label if label in SPEC.labels else None


def official_split(value: str) -> str | None:
    """The ``split`` column: "training" -> "train", "test" -> "test", else None."""
    return {"training": "train", "train": "train", "test": "test"}.get(str(value).strip().lower())


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------


def candidate_rows(raw_dir: Path, out_dir: Path, manifest: Manifest) -> list[dict]:
    """One dict per annotated image with a valid label and split; the rest go to the manifest."""
    key, ages = read_ages(raw_dir / METADATA)
    rows, seen = [], set()
    for record in read_annotations(raw_dir / ANNOTATIONS).to_dict("records"):
        sample_id = f"{SPEC.name}-{record['image_id']}"
        label, official = birads_label(record["breast_birads"]), official_split(record["split"])
        if sample_id in seen:
            manifest.skip(sample_id, "image listed twice in breast-level_annotations.csv")
        elif label is None:
            manifest.skip(sample_id, f"unrecognised breast_birads {record['breast_birads']!r}")
        elif official is None:
            manifest.skip(sample_id, f"unrecognised split {record['split']!r}")
        else:
            seen.add(sample_id)
            study, image = record["study_id"], record["image_id"]
            rows.append(
                {
                    "sample_id": sample_id,
                    "patient_id": study,
                    "official": official,
                    "labels": [label],
                    "age": ages.get(record[key], math.nan),
                    "src": raw_dir / "images" / study / f"{image}.dicom",
                    "dest": out_dir / "images" / study / f"{image}.png",
                }
            )
    return rows


def convert_images(rows: list[dict], out_dir: Path, manifest: Manifest) -> list[dict]:
    """DICOM -> PNG (threads); an unreadable DICOM is skipped and listed; a missing age is taken
    from the DICOM PatientAge tag. Stops when pydicom lacks a decoder (an environment problem,
    not a corrupt file) instead of skipping every image."""

    def convert(row: dict) -> dict | str:
        try:
            return dicom_to_png(row["src"], row["dest"])[1]
        except CorruptMedia as err:
            return str(err)

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        results = list(pool.map(convert, rows))
    kept = []
    for row, result in zip(rows, results, strict=False):
        if isinstance(result, str):
            if NO_DECODER in result:
                raise RuntimeError(
                    f"pydicom cannot decode these DICOMs: {result}\nInstall the decoders of the "
                    "data environment (envs/data.yaml, or pip install 'eqpo[data]'): pylibjpeg "
                    "pylibjpeg-libjpeg pylibjpeg-openjpeg"
                )
            manifest.skip(row["sample_id"], f"unreadable DICOM: {result}", unreadable=True)
            continue
        age = row["age"] if not math.isnan(row["age"]) else dicom_age(result.get("age"))
        kept.append({**row, "age": age, "images": [row["dest"].relative_to(out_dir.parent).as_posix()]})
    return kept


def preprocess(raw_dir: Path, out_dir: Path, manifest: Manifest, seed: int, fractions) -> pd.DataFrame:
    """Annotations + metadata + DICOMs -> standard rows (official test; training -> train/val)."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    manifest.files = {name: sha256_of(raw_dir / name) for name in (ANNOTATIONS, METADATA) if (raw_dir / name).exists()}
    rows = convert_images(candidate_rows(raw_dir, out_dir, manifest), out_dir, manifest)
    table = pd.DataFrame(rows, columns=["sample_id", "patient_id", "official", "images", "labels", "age"])
    table = assign_splits(table, seed, fractions, official="official", dataset=SPEC.name)
    table["age"] = table["age"].astype(float)
    table["sex"] = None
    return table


SOURCE = DatasetSource(
    spec=SPEC,
    access=Access.PHYSIONET,
    landing_page=LANDING_PAGE,
    license="PhysioNet Restricted Health Data License 1.5.0",
    agreement="a PhysioNet account that has signed the VinDr-Mammo data use agreement on the landing page",
    expected=(ANNOTATIONS, METADATA, "images/"),
    preprocess=preprocess,
    remote=(
        RemoteFile(BASE_URL + SUMS, SUMS),
        RemoteFile(BASE_URL + ANNOTATIONS, ANNOTATIONS),
        RemoteFile(BASE_URL + METADATA, METADATA),
    ),
    example_command="wget -r -N -c -np -nH --cut-dirs=3 -P {raw_dir} --user $PHYSIONET_USERNAME --ask-password "
    + BASE_URL,
    notes="About 340 GB of DICOMs (20,000 images). With PHYSIONET_USERNAME/PHYSIONET_PASSWORD set (or a "
    "~/.netrc entry for physionet.org) the pipeline downloads the CSVs and every DICOM listed in "
    "breast-level_annotations.csv by itself, resuming an interrupted run.",
    fetch=fetch_images,
)
