"""Hemorrhage: "Computed Tomography Images for Intracranial Hemorrhage Detection and Segmentation"
(Hssayeni et al., PhysioNet ``ct-ich`` version 1.3.1, restricted access).

Files used (under ``<root>/Hemorrhage/raw/``, the layout of the PhysioNet release):

- ``hemorrhage_diagnosis_raw_ct.csv``: one row per CT slice of the NIfTI scans. Columns
  ``PatientNumber``, ``SliceNumber`` (1-based index along the volume's last axis),
  ``Intraventricular``, ``Intraparenchymal``, ``Subarachnoid``, ``Epidural``, ``Subdural``,
  ``No_Hemorrhage``, ``Fracture_Yes_No`` (all 0/1).
- ``Patient_demographics.csv`` (the case of the name differs between releases): one row per
  patient. Header quirks: ``Age\\n(years)`` has an embedded newline, and the hemorrhage-type block is
  a two-row header (``Hemorrhage type based on the radiologists diagnosis `` with a trailing space,
  then ``Unnamed: 4..7``, with the subtype names on a second header row). Only ``Patient Number``,
  age and ``Gender`` are used.
- ``ct_scans/<NNN>.nii``: one CT volume per patient in Hounsfield units, shape (X, Y, slices); the
  release has no scans for patients 59-65.

One sample per CT slice (as CLIMB and the paper): label "Has Hemorrhage" when ``No_Hemorrhage`` is 0,
else "No Hemorrhage"; two PNG images per sample, the slice in the brain window and in the bone window.
There is no official split: patients are split with :func:`patient_split`.

Download: the diagnosis CSV is the ``remote`` file; :func:`fetch_ct_ich` then fetches the
demographics and every ``ct_scans/<NNN>.nii`` the diagnosis CSV lists, with PhysioNet credentials
(environment or ``~/.netrc``), verified against the release's ``SHA256SUMS.txt`` when it is served.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import urllib.error
from pathlib import Path

import numpy as np
import pandas as pd

from ...groups import normalize_sex
from ...vocabularies import PAPER_DATASETS
from .. import media
from ..sources import Access, DatasetSource, Manifest, RemoteFile, normalise_header, patient_split

SPEC = PAPER_DATASETS["Hemorrhage"]
BASE_URL = "https://physionet.org/files/ct-ich/1.3.1/"
LANDING_PAGE = "https://physionet.org/content/ct-ich/1.3.1/"
DIAGNOSIS = "hemorrhage_diagnosis_raw_ct.csv"
DEMOGRAPHICS = "Patient_demographics.csv"
DEMOGRAPHICS_NAMES = (DEMOGRAPHICS, "patient_demographics.csv")  # served name, then the v1.0 spelling
SCANS = "ct_scans"
CHECKSUMS = "SHA256SUMS.txt"
HAS, NO = "Has Hemorrhage", "No Hemorrhage"


# ----------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------


def scan_name(patient: int) -> str:
    """The release's file name of a patient's CT volume: 49 -> "049.nii"."""
    return f"{patient:03d}.nii"


def _base_url(source: DatasetSource) -> str:
    """The release's folder URL: where the remote diagnosis CSV lives (a test server in tests)."""
    for item in source.remote:
        if item.name == DIAGNOSIS:
            return item.url.rsplit("/", 1)[0] + "/"
    return BASE_URL


def _not_served(err: Exception) -> bool:
    """True for 'no such file' (HTTP 404, or a missing file:// path), the only error tolerated."""
    return isinstance(err, FileNotFoundError) or (isinstance(err, urllib.error.HTTPError) and err.code == 404)


def _published_checksums(base: str, raw_dir: Path, credentials) -> dict[str, str]:
    """PhysioNet's SHA256SUMS.txt ("<sha256> <path>" lines) as {path: sha256}; {} when not served."""
    from ..fetch import download

    try:
        path = download(base + CHECKSUMS, raw_dir / CHECKSUMS, credentials=credentials)
    except (urllib.error.HTTPError, FileNotFoundError) as err:
        if _not_served(err):
            return {}
        raise
    sums = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2:
            sums[parts[1].strip().lstrip("*").removeprefix("./")] = parts[0].lower()
    return sums


def _verify(path: Path, expected: str | None) -> None:
    """Check an already downloaded file against its published checksum; remove it when wrong."""
    from ..fetch import sha256_of

    if expected is not None and path.exists() and sha256_of(path) != expected:
        path.unlink()
        raise IOError(f"checksum mismatch for {path.name} (SHA256SUMS.txt says {expected}); the file was removed, "
                      "run again to download it afresh")


def _fetch_demographics(base: str, raw_dir: Path, credentials, sums: dict[str, str]) -> None:
    """Download the demographics CSV as ``Patient_demographics.csv``, trying both spellings of its name."""
    from ..fetch import download

    found = find_demographics(raw_dir)
    if found is not None:
        if found.name != DEMOGRAPHICS:  # placed by hand under another spelling
            shutil.copyfile(found, raw_dir / DEMOGRAPHICS)
        return
    for name in DEMOGRAPHICS_NAMES:
        try:
            download(base + name, raw_dir / DEMOGRAPHICS, sums.get(name), credentials)
            return
        except (urllib.error.HTTPError, FileNotFoundError) as err:
            if not _not_served(err):
                raise


def _fetch_scans(base: str, raw_dir: Path, credentials, sums: dict[str, str]) -> None:
    """Download every ``ct_scans/<NNN>.nii`` the diagnosis CSV lists. Into ``ct_scans.part/`` first,
    renamed to ``ct_scans/`` once complete, so an interrupted run is resumed rather than taken as done.
    A scan the server does not have (patients 59-65) is left out; preprocessing records its slices."""
    from ..fetch import download

    final = raw_dir / SCANS
    target = final if final.exists() else raw_dir / (SCANS + ".part")
    got = 0
    for patient in sorted(read_diagnosis(raw_dir / DIAGNOSIS)["patient"].unique()):
        name = scan_name(int(patient))
        try:
            download(base + f"{SCANS}/{name}", target / name, sums.get(f"{SCANS}/{name}"), credentials)
            got += 1
        except (urllib.error.HTTPError, FileNotFoundError) as err:
            if not _not_served(err):
                raise
    if target != final and got:
        os.replace(target, final)


def fetch_ct_ich(source: DatasetSource, raw_dir: Path, credentials) -> None:
    """Custom download step (after the diagnosis CSV): checksums, demographics, CT volumes."""
    raw_dir = Path(raw_dir)
    base = _base_url(source)
    sums = _published_checksums(base, raw_dir, credentials)
    _verify(raw_dir / DIAGNOSIS, sums.get(DIAGNOSIS))
    _fetch_demographics(base, raw_dir, credentials, sums)
    _fetch_scans(base, raw_dir, credentials, sums)


# ----------------------------------------------------------------------------------------------
# Metadata
# ----------------------------------------------------------------------------------------------


def _key(name: str) -> str:
    """Header -> comparison key: normalised, without spaces and underscores ('No_Hemorrhage' -> 'nohemorrhage')."""
    return normalise_header(name).replace(" ", "").replace("_", "")


def _column(columns, *prefixes: str) -> str | None:
    """The first column whose key starts with one of the prefixes (in the order given)."""
    for prefix in prefixes:
        for column in columns:
            if _key(column).startswith(prefix):
                return column
    return None


def _read_csv(path: Path, **kwargs) -> pd.DataFrame:
    """Read a CSV as strings; UTF-8 (with or without BOM), else Latin-1 (Excel exports)."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig", **kwargs)
    except UnicodeDecodeError:
        return pd.read_csv(path, dtype=str, keep_default_na=False, encoding="latin-1", **kwargs)


def _read_rows(path: Path) -> list[list[str]]:
    """A CSV as lists of cells (rows may differ in length; quoted cells may hold newlines)."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        text = path.read_text(encoding="latin-1")
    return list(csv.reader(io.StringIO(text, newline="")))


def read_diagnosis(path: Path) -> pd.DataFrame:
    """hemorrhage_diagnosis_raw_ct.csv -> columns patient (int), slice (int, 1-based), no_hemorrhage
    (float 0/1, NaN when blank). Rows without a patient or slice number are dropped."""
    table = _read_csv(path)
    columns = {"patient": _column(table.columns, "patientnumber", "patient"),
               "slice": _column(table.columns, "slicenumber", "slice"),
               "no_hemorrhage": _column(table.columns, "nohemorrhage")}
    absent = [k for k, c in columns.items() if c is None]
    if absent:
        raise ValueError(f"{path.name}: no column for {absent}; columns are {list(table.columns)}")
    out = pd.DataFrame({k: pd.to_numeric(table[c].str.strip(), errors="coerce") for k, c in columns.items()})
    out = out.dropna(subset=["patient", "slice"])
    return out.astype({"patient": int, "slice": int}).reset_index(drop=True)


def _cell(row: list[str], col: int | None) -> str:
    return row[col].strip() if col is not None and col < len(row) else ""


def _number(row: list[str], col: int | None) -> float:
    """A cell as a float; NaN when blank or not a number."""
    try:
        return float(_cell(row, col))
    except ValueError:
        return float("nan")


def find_demographics(raw_dir: Path) -> Path | None:
    """The demographics CSV in raw_dir whatever the case of its name (Patient_/patient_demographics.csv)."""
    exact = raw_dir / DEMOGRAPHICS
    if exact.is_file():
        return exact
    for path in sorted(raw_dir.glob("*")):
        if path.is_file() and path.name.lower() == DEMOGRAPHICS.lower():
            return path
    return None


def read_demographics(path: Path | None) -> dict[int, tuple[float, str | None]]:
    """Patient_demographics.csv -> {patient number: (age in years or NaN, "F"/"M"/None)}.

    Defensive about the header: the header row is the first row (of the first five) naming both a
    patient-number and an age column, whatever its whitespace, newlines or case; the subtype row of
    the two-row header, and any other row whose patient number is not a number, is not a patient.
    No file gives {} (every demographic missing); a file without such a header raises ValueError.
    """
    if path is None or not Path(path).is_file():
        return {}
    rows = _read_rows(Path(path))
    header_row = next((i for i, row in enumerate(rows[:5])
                       if _column(row, "patient") is not None and _column(row, "age") is not None), None)
    if header_row is None:
        raise ValueError(f"{Path(path).name}: no header row naming a patient number and an age column")
    header = rows[header_row]
    patient_col = header.index(_column(header, "patientnumber", "patient"))
    age_col = header.index(_column(header, "age"))
    sex_name = _column(header, "gender", "sex")
    sex_col = header.index(sex_name) if sex_name is not None else None
    out = {}
    for row in rows[header_row + 1:]:
        patient, age = _number(row, patient_col), _number(row, age_col)
        if np.isnan(patient):
            continue  # the subtype row of the two-row header, notes, blank lines
        out[int(patient)] = (age if age >= 0 else float("nan"), normalize_sex(_cell(row, sex_col)))
    return out


# ----------------------------------------------------------------------------------------------
# Images and table
# ----------------------------------------------------------------------------------------------


def label_of(no_hemorrhage: float) -> str | None:
    """The paper's class: No_Hemorrhage == 0 -> "Has Hemorrhage", 1 -> "No Hemorrhage", else None."""
    if no_hemorrhage == 0:
        return HAS
    if no_hemorrhage == 1:
        return NO
    return None


def write_slice_images(hu: np.ndarray, stem: str, out_dir: Path) -> list[str]:
    """One axial slice (Y, X) in HU -> brain- and bone-window PNGs; paths relative to out_dir.parent."""
    paths = []
    for tag, level_width in (("brain", media.BRAIN_WINDOW), ("bone", media.BONE_WINDOW)):
        dest = media.save_png(media.window(hu, level_width), out_dir / "images" / f"{stem}_{tag}.png")
        paths.append(dest.relative_to(out_dir.parent).as_posix())
    return paths


def _patient_rows(patient: int, slices: pd.DataFrame, raw_dir: Path, out_dir: Path, manifest: Manifest) -> list[dict]:
    """The samples of one patient: load its volume once, write both windows of every labelled slice."""
    sample_ids = {int(s): f"{SPEC.name}-{patient:03d}-{int(s):03d}" for s in slices["slice"]}
    path = raw_dir / SCANS / scan_name(patient)
    try:
        if not path.is_file():
            raise media.CorruptMedia(f"no CT volume {SCANS}/{path.name}")
        volume = media.nifti_volume(path)
        if volume.ndim != 3:
            raise media.CorruptMedia(f"{path.name}: expected a 3-D volume, got shape {volume.shape}")
    except media.CorruptMedia as err:
        for sample_id in sample_ids.values():
            manifest.skip(sample_id, str(err))
        return []
    rows = []
    for row in slices.itertuples(index=False):
        sample_id, label = sample_ids[int(row.slice)], label_of(row.no_hemorrhage)
        if label is None:
            manifest.skip(sample_id, f"No_Hemorrhage is {row.no_hemorrhage!r}, not 0/1")
        elif not 1 <= row.slice <= volume.shape[2]:
            manifest.skip(sample_id, f"slice {row.slice} is outside {path.name} ({volume.shape[2]} slices)")
        else:
            stem = f"{patient:03d}/{patient:03d}_{int(row.slice):03d}"
            images = write_slice_images(volume[:, :, row.slice - 1].T, stem, out_dir)
            rows.append({"sample_id": sample_id, "patient_id": f"{patient:03d}", "images": images, "labels": [label]})
    return rows


def _record_files(raw_dir: Path, demographics: Path | None, manifest: Manifest) -> None:
    from ..fetch import sha256_of

    manifest.files[DIAGNOSIS] = sha256_of(raw_dir / DIAGNOSIS)
    manifest.files[DEMOGRAPHICS] = sha256_of(demographics) if demographics is not None else "missing"
    manifest.files[SCANS] = f"{len(list((raw_dir / SCANS).glob('*.nii')))} volumes"


def preprocess(raw_dir: Path, out_dir: Path, manifest: Manifest, seed: int,
               fractions: tuple[float, float, float] = (0.7, 0.15, 0.15)) -> pd.DataFrame:
    """ct-ich 1.3.1 -> one row per labelled CT slice with its brain- and bone-window PNGs."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    diagnosis = read_diagnosis(raw_dir / DIAGNOSIS).drop_duplicates(["patient", "slice"])
    demographics_path = find_demographics(raw_dir)
    demographics = read_demographics(demographics_path)
    _record_files(raw_dir, demographics_path, manifest)
    rows = []
    for patient, slices in diagnosis.groupby("patient", sort=True):
        rows += _patient_rows(int(patient), slices.sort_values("slice"), raw_dir, out_dir, manifest)
    table = pd.DataFrame(rows, columns=["sample_id", "patient_id", "images", "labels"])
    numbers = table["patient_id"].astype(int)
    table["age"] = [demographics.get(n, (np.nan, None))[0] for n in numbers]
    table["sex"] = [demographics.get(n, (np.nan, None))[1] for n in numbers]
    splits = patient_split(table["patient_id"].unique().tolist(), seed, fractions)
    table["split"] = table["patient_id"].map(splits)
    return table


SOURCE = DatasetSource(
    spec=SPEC,
    access=Access.PHYSIONET,
    landing_page=LANDING_PAGE,
    license="PhysioNet Restricted Health Data License 1.5.0 (restricted access)",
    agreement="Sign in to PhysioNet and sign the data use agreement for ct-ich 1.3.1 on the landing page",
    expected=(DIAGNOSIS, DEMOGRAPHICS, f"{SCANS}/"),
    remote=(RemoteFile(BASE_URL + DIAGNOSIS, DIAGNOSIS),),
    preprocess=preprocess,
    fetch=fetch_ct_ich,
    example_command=("wget -r -N -c -np -nH --cut-dirs=3 -P {raw_dir} --user $PHYSIONET_USERNAME --ask-password "
                     + BASE_URL),
    notes=("Only ct_scans/, the diagnosis CSV and the demographics CSV are used (masks/ is not needed). "
           "Scans of patients 59-65 are not in the release. Credentials: PHYSIONET_USERNAME and "
           "PHYSIONET_PASSWORD, or a ~/.netrc entry for physionet.org."),
)
