"""CheXpert (Stanford AIMI): chest radiographs, 14 observations (multi-label), age and sex.

Access is manual: registration on Stanford AIMI plus the CheXpert Research Use Agreement, then a
time-limited Azure link. The dataset page offers four zips; fetch all four into
``<root>/CheXpert/raw/`` (unpacked or not; ``azcopy copy <link> raw/ --recursive`` puts them one
folder down, in the container's folder ``chexpertchestxrays-u20210408/``, which is searched too):

- ``CheXpert-v1.0 batch 1 (validate & csv).zip``: ``valid/``, ``train.csv``, ``valid.csv``;
- ``CheXpert-v1.0 batch 2 (train 1).zip``, ``... batch 3 (train 2).zip``, ``... batch 4 (train 3).zip``:
  the training images as ``patientNNNNN/studyN/viewN_*.jpg`` folders, with no ``train/`` above them.

Each zip keeps its entries under a folder named after it (``CheXpert-v1.0 batch 2 (train 1)/
patient00001/...``). :func:`arrange_aimi` unpacks the zips it finds and moves the pieces, wherever
they lie below raw/, into the layout the CSVs' Path column names (``CheXpert-v1.0/train/
patientNNNNN/...``): ``CheXpert-v1.0/{train.csv, valid.csv, train/, valid/}``. The downsampled
``CheXpert-v1.0-small/`` folder (same four entries, e.g. from an older download) is accepted too;
when both are complete the full-resolution one is used.

CSV columns (``train.csv`` / ``valid.csv``): ``Path`` (``CheXpert-v1.0/train/patient00001/study1/
view1_frontal.jpg``; the patient id is the ``patientNNNNN`` part), ``Sex`` (Male/Female/Unknown),
``Age`` (integer years), ``Frontal/Lateral``, ``AP/PA``, then the 14 observations with values 1.0
(positive), 0.0 (negative), -1.0 (uncertain) or blank (not mentioned).

Paper / CLIMB conventions followed here: U-Zeros (only 1.0 is positive; -1.0 and blank are
negative); a row with no positive observation is skipped and listed in the manifest; every row
(frontal or lateral view) is its own sample; the official ``valid.csv`` is the test split and the
``train.csv`` patients are split into train/val by seeded patient-level shuffling.
"""

from __future__ import annotations

import logging
import os
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd

from eqpo.core.groups import normalize_sex
from eqpo.core.vocabularies import PAPER_DATASETS
from eqpo.data.fetch import extract, sha256_of
from eqpo.data.media import CorruptMedia, resize_image
from eqpo.data.sources import (
    Access,
    DatasetSource,
    Manifest,
    MissingDataError,
    assign_splits,
    normalise_header,
    present,
)

SPEC = PAPER_DATASETS["CheXpert"]
FULL, SMALL = "CheXpert-v1.0", "CheXpert-v1.0-small"
FOLDERS = (FULL, SMALL)  # in order of preference
AIMI_ZIPS = (
    "CheXpert-v1.0 batch 1 (validate & csv).zip",
    "CheXpert-v1.0 batch 2 (train 1).zip",
    "CheXpert-v1.0 batch 3 (train 2).zip",
    "CheXpert-v1.0 batch 4 (train 3).zip",
)
AIMI_ZIP_GLOB = "CheXpert-v1.0 batch *.zip"
AZCOPY_CONTAINER = "chexpertchestxrays-u20210408"  # the folder `azcopy copy <link> raw/ --recursive` creates
UNPACKED = ".unpacked"
SCAN_DEPTH = 5  # raw/[container/].unpacked/<zip stem>/<wrapper>/patientNNNNN
PATIENT_DIR_RE = re.compile(r"^patient\d+$", re.IGNORECASE)
log = logging.getLogger("eqpo")
MARKERS = ("train.csv", "valid.csv", "train/", "valid/")
CSV_FILES = {"train": "train.csv", "test": "valid.csv"}  # official split -> file
LANDING_PAGE = "https://stanfordaimi.azurewebsites.net/datasets/8cbd9ed4-2eb9-4565-affc-111cf4f7ebe2"
PATIENT_RE = re.compile(r"(patient\d+)", re.IGNORECASE)


@dataclass(frozen=True)
class EitherFolderSource(DatasetSource):
    """A source whose expected entries (written under ``folders[0]``) may instead sit under any
    other folder of ``folders`` (CheXpert: the small or the full-resolution release)."""

    folders: tuple[str, ...] = FOLDERS

    def variant(self, folder: str) -> list[str]:
        """The expected entries with the leading folder replaced by ``folder``."""
        return [f"{folder}/{path.split('/', 1)[1]}" for path in self.expected]

    def found_folder(self, raw_dir: Path) -> str | None:
        """The first folder of ``folders`` that holds every expected entry, else None."""
        for folder in self.folders:
            if all(present(Path(raw_dir) / path, path.endswith("/")) for path in self.variant(folder)):
                return folder
        return None

    def missing_files(self, raw_dir: Path) -> list[str]:
        return [] if self.found_folder(raw_dir) else super().missing_files(raw_dir)


# ----------------------------------------------------------------------------------------------
# The Stanford AIMI download layout
# ----------------------------------------------------------------------------------------------


def _scan(raw_dir: Path, max_depth: int = SCAN_DEPTH) -> tuple[list[Path], list[Path]]:
    """Folders below raw_dir (at most ``max_depth`` deep) holding train.csv and valid.csv, and
    ``patientNNNNN`` training folders; the small release, the assembled train/ and every valid/
    folder are not searched (their patients are where they belong)."""
    target = raw_dir / FULL
    homes, patients = [], []
    stack = [(raw_dir, 0)]
    while stack:
        folder, depth = stack.pop()
        if folder != target and (folder / "train.csv").is_file() and (folder / "valid.csv").is_file():
            homes.append(folder)
        if depth >= max_depth:
            continue
        for child in sorted(p for p in folder.iterdir() if p.is_dir()):
            if child.name == SMALL or child == target / "train" or child.name.lower() == "valid":
                continue
            if PATIENT_DIR_RE.match(child.name):
                patients.append(child)
            else:
                stack.append((child, depth + 1))
    return sorted(homes), sorted(patients)


def aimi_zips(raw_dir: Path) -> list[Path]:
    """The ``CheXpert-v1.0 batch *.zip`` files in raw_dir or one folder below it (azcopy's
    container folder, or any other), sorted by name."""
    found = [*raw_dir.glob(AIMI_ZIP_GLOB), *raw_dir.glob(f"*/{AIMI_ZIP_GLOB}")]
    return sorted((p for p in found if p.is_file() and UNPACKED not in p.parts), key=lambda p: (p.name, str(p)))


def arrange_aimi(raw_dir: Path) -> None:
    """Bring the Stanford AIMI download into ``CheXpert-v1.0/{train.csv, valid.csv, train/, valid/}``:
    unpack the ``CheXpert-v1.0 batch *.zip`` files found in raw_dir or one folder below (once each),
    move the CSVs and ``valid/`` of batch 1 into ``CheXpert-v1.0/`` and every ``patientNNNNN/``
    folder of batches 2-4, at any depth up to :data:`SCAN_DEPTH`, into ``CheXpert-v1.0/train/``.
    Moves are renames within raw_dir (no copy); nothing is done when the layout is already complete,
    a rerun after an interruption finishes the job, and ``train/`` is only created when a patient
    folder is moved into it (an empty one would pass for the data on the next run)."""
    raw_dir = Path(raw_dir)
    target = raw_dir / FULL
    if all(present(target / marker, marker.endswith("/")) for marker in MARKERS):
        return
    for archive in aimi_zips(raw_dir):
        done = raw_dir / f".{archive.name}.extracted"
        if not done.exists():
            log.info(f"CheXpert: unpacking {archive.relative_to(raw_dir)}")
            extract(archive, raw_dir / UNPACKED / archive.stem, nested=False)
            done.touch()
    homes, patients = _scan(raw_dir)
    if not homes and not patients:
        return
    target.mkdir(exist_ok=True)
    for home in homes[:1]:
        for name in ("train.csv", "valid.csv", "valid"):
            if (home / name).exists() and not (target / name).exists():
                os.replace(home / name, target / name)
    moved = 0
    for folder in patients:
        dest = target / "train" / folder.name
        dest.parent.mkdir(exist_ok=True)
        if dest.exists():  # the same patient in two places: keep what is there, add what is not
            for study in sorted(folder.iterdir()):
                if not (dest / study.name).exists():
                    os.replace(study, dest / study.name)
            continue
        os.replace(folder, dest)
        moved += 1
    log.info(f"CheXpert: arranged the AIMI download into {target} ({moved} patient folders moved into train/)")


# ----------------------------------------------------------------------------------------------
# Reading the CSVs
# ----------------------------------------------------------------------------------------------


def read_label_csv(path: Path) -> pd.DataFrame:
    """train.csv / valid.csv -> columns path, sex, age, labels (positives in vocabulary order).

    Headers are matched after normalising whitespace and case; a missing Sex or Age column gives
    missing values, a missing observation column is an error (the file is not CheXpert's).
    """
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = {normalise_header(c): c for c in raw.columns}
    absent = [name for name in ("path", *map(normalise_header, SPEC.labels)) if name not in columns]
    if absent:
        raise ValueError(f"{path}: no column(s) {absent}; columns are {list(raw.columns)}")
    values = pd.DataFrame(
        {
            label: pd.to_numeric(raw[columns[normalise_header(label)]].str.strip(), errors="coerce")
            for label in SPEC.labels
        }
    )
    return pd.DataFrame(
        {
            "path": raw[columns["path"]].str.strip(),
            "sex": raw[columns["sex"]].map(normalize_sex) if "sex" in columns else None,
            "age": pd.to_numeric(raw[columns["age"]].str.strip(), errors="coerce")
            if "age" in columns
            else float("nan"),
            "labels": positives(values),
        }
    )


def positives(values: pd.DataFrame) -> list[list[str]]:
    """U-Zeros, per row: the observations whose value is exactly 1.0 (uncertain -1.0 and blank are
    negative), in vocabulary order."""
    hits = (values[list(SPEC.labels)] == 1.0).to_numpy()
    return [[SPEC.labels[j] for j in np.flatnonzero(row)] for row in hits]


def relative_image(path: str) -> PurePosixPath:
    """CSV ``Path`` -> path inside the release folder: ``train/patient00001/study1/view1_frontal.jpg``
    (the leading ``CheXpert-v1.0-small/`` or ``CheXpert-v1.0/`` is dropped, whichever it names)."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    if parts and parts[0].lower().startswith("chexpert"):
        parts = parts[1:]
    return PurePosixPath(*parts)


def patient_of(path: str) -> str | None:
    """``.../patient00001/study1/...`` -> ``patient00001`` (None when the path names no patient)."""
    match = PATIENT_RE.search(path)
    return match.group(1).lower() if match else None


# ----------------------------------------------------------------------------------------------
# Preprocessing
# ----------------------------------------------------------------------------------------------


def candidate_rows(folder: Path, out_dir: Path, manifest: Manifest) -> list[dict]:
    """One dict per CSV row with a positive label and a patient id; the rest go to the manifest."""
    rows = []
    for official, name in CSV_FILES.items():
        for record in read_label_csv(folder / name).itertuples(index=False):
            rel = relative_image(record.path)
            sample_id = f"{SPEC.name}-" + "-".join(rel.with_suffix("").parts)
            patient = patient_of(record.path)
            if not record.labels:
                manifest.skip(sample_id, "no positive label (U-Zeros; skipped as CLIMB does)")
            elif patient is None:
                manifest.skip(sample_id, f"no patientNNNNN in Path {record.path!r}")
            else:
                rows.append(
                    {
                        "sample_id": sample_id,
                        "patient_id": patient,
                        "official": official,
                        "src": folder / rel,
                        "dest": out_dir / "images" / rel.with_suffix(".png"),
                        "labels": record.labels,
                        "age": record.age,
                        "sex": record.sex,
                    }
                )
    return rows


def convert_images(rows: list[dict], out_dir: Path, manifest: Manifest) -> list[dict]:
    """Resize every radiograph to PNG (threads); an unreadable one is skipped and listed."""

    def convert(row: dict) -> str | None:
        try:
            resize_image(row["src"], row["dest"])
        except CorruptMedia as err:
            return str(err)
        return None

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        errors = list(pool.map(convert, rows))
    kept = []
    for row, error in zip(rows, errors, strict=False):
        if error is None:
            kept.append({**row, "images": [row["dest"].relative_to(out_dir.parent).as_posix()]})
        else:
            manifest.skip(row["sample_id"], f"unreadable image: {error}", unreadable=True)
    return kept


def preprocess(raw_dir: Path, out_dir: Path, manifest: Manifest, seed: int, fractions) -> pd.DataFrame:
    """CheXpert CSVs + JPEGs -> standard rows (valid.csv = test; train.csv patients -> train/val)."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    found = SOURCE.found_folder(raw_dir)
    if found is None:
        raise MissingDataError(SOURCE.instructions(raw_dir, SOURCE.missing_files(raw_dir)))
    folder = raw_dir / found
    manifest.files = {f"{found}/{name}": sha256_of(folder / name) for name in CSV_FILES.values()}
    rows = convert_images(candidate_rows(folder, out_dir, manifest), out_dir, manifest)
    table = pd.DataFrame(rows, columns=["sample_id", "patient_id", "official", "images", "labels", "age", "sex"])
    table = assign_splits(table, seed, fractions, official="official", dataset=SPEC.name)
    table["age"] = table["age"].astype(float)
    return table


SOURCE = EitherFolderSource(
    spec=SPEC,
    access=Access.MANUAL,
    landing_page=LANDING_PAGE,
    license="Stanford University School of Medicine CheXpert Dataset Research Use Agreement (non-commercial research)",
    agreement="register on Stanford AIMI and accept the CheXpert Research Use Agreement, then download the four "
    "zips listed below from the time-limited Azure link",
    expected=tuple(f"{FOLDERS[0]}/{marker}" for marker in MARKERS),
    preprocess=preprocess,
    example_command="azcopy copy '<the SAS link from the AIMI page>' {raw_dir} --recursive  "
    "(the four zips may stay zipped, here or in the container folder azcopy creates: they are "
    "unpacked and arranged on the next run)",
    notes="Each batch zip holds a folder named after it, with the patient folders and no train/ above them; the "
    "next run finds them wherever they lie below raw/ and moves them into CheXpert-v1.0/train/ as the CSVs' "
    "Path column expects. A complete CheXpert-v1.0-small/ (same four "
    "entries) is accepted instead; the full-resolution folder is preferred when both are there. Also linked "
    "from https://stanfordmlgroup.github.io/competitions/chexpert/.",
    folders=FOLDERS,
    arrange=arrange_aimi,
    to_place=AIMI_ZIPS,
)
