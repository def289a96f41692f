"""Hemorrhage: "Computed Tomography Images for Intracranial Hemorrhage Detection and Segmentation"
(Hssayeni et al., PhysioNet ``ct-ich``): one CT volume per patient, 82 patients.

Three sources, tried in this order (config ``data.hemorrhage_release: auto``, the default; or pin
one of them by its release):

1. ``1.2.0``: the JPEG release on PhysioNet, open access under CC BY 4.0 (no account needed), 2,501
   slices of 82 patients. Its author wrote in February/March 2020 that the JPEG files had been taken
   down from PhysioNet for de-identification and replaced by 1.3.1, so it may no longer be served;
   a refusal or a 404 moves on to the next source. Files under ``<root>/Hemorrhage/raw/``.
2. ``1.0.0``: the Kaggle mirror ``vbookshelf/computed-tomography-ct-images``, the JPEG release
   1.0.0 (its zip unpacks to ``computed-tomography-images-for-intracranial-hemorrhage-detection-
   and-segmentation-1.0.0/``). This is what CLIMB, whose loader the paper used, downloads. It needs
   a Kaggle token (``KAGGLE_USERNAME``/``KAGGLE_KEY`` or ``~/.kaggle/kaggle.json``). Files under
   ``<root>/Hemorrhage/raw-1.0.0/``. Same layout as 1.2.0; whether 1.0.0 and 1.2.0 differ in content
   is not documented publicly.
3. ``1.3.1``: the NIfTI release (restricted access: PhysioNet account plus data use agreement),
   2,814 slices of 75 patients, faces blurred. Files under ``<root>/Hemorrhage/raw-1.3.1/``.

A source whose files are already complete on disk is used first (in the same order), without a
download. When none is available, one block of instructions names all three.

The JPEG releases (1.2.0, 1.0.0), under their folder (or one or two folders below it, as the zips
unpack):

- ``hemorrhage_diagnosis.csv``: one row per slice, 2,501 rows. Columns ``PatientNumber``,
  ``SliceNumber``, ``Intraventricular``, ``Intraparenchymal``, ``Subarachnoid``, ``Epidural``,
  ``Subdural``, ``No_Hemorrhage``, ``Fracture_Yes_No`` (all 0/1; the file starts with a UTF-8 BOM).
- ``Patients_CT/<NNN>/brain/<SliceNumber>.jpg`` and ``.../bone/<SliceNumber>.jpg``: the slice in the
  brain and the bone window (650x650 greyscale). Masks (``<N>_HGE_Seg.jpg``) are not used.
- ``patient_demographics.csv`` (see below).

1.3.1, under ``raw-1.3.1/``:

- ``hemorrhage_diagnosis_raw_ct.csv``: the same columns for the NIfTI slices (``SliceNumber`` is the
  1-based index along the volume's last axis).
- ``ct_scans/<NNN>.nii``: one CT volume per patient in Hounsfield units, shape (X, Y, slices); the
  release has no scans for patients 59-65. Each slice is windowed with the windows the 1.3.1 README
  states for the JPEG images (brain level 40 / width 120, bone 700 / 3200:
  :data:`eqpo.data.media.BRAIN_WINDOW`, :data:`eqpo.data.media.BONE_WINDOW`), so both kinds of
  release give the same kind of image.

``patient_demographics.csv`` (JPEG releases; ``Patient_demographics.csv`` in 1.3.1): one row per
patient. Columns ``Patient Number``, ``Age\\n(years)`` (an embedded newline; fractional years for
infants), ``Gender`` (Male/Female), the subtype columns, ``Condition on file``, ``Note``. The JPEG
releases have one header row; a two-row header (subtype names on a second row) is read too. Only the
patient number, age and gender are used.

One sample per CT slice (as CLIMB and the paper): label "Has Hemorrhage" when ``No_Hemorrhage`` is 0,
else "No Hemorrhage"; two PNG images per sample, the brain window and the bone window. There is no
official split: patients are split with :func:`patient_split`.

Download (PhysioNet, 1.2.0 and 1.3.1): the diagnosis CSV is the ``remote`` file; the ``fetch`` step
then fetches the release's ``SHA256SUMS.txt`` (checked when served), the demographics and every
image or volume the diagnosis CSV lists, one progress bar over the files. The Kaggle mirror is one
zip from Kaggle's API, unpacked where it lands.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd

from eqpo.core.groups import normalize_sex
from eqpo.core.vocabularies import PAPER_DATASETS
from eqpo.data import media
from eqpo.data.sources import (
    Access,
    DatasetSource,
    Manifest,
    MissingDataError,
    RemoteFile,
    assign_splits,
    normalise_header,
)

SPEC = PAPER_DATASETS["Hemorrhage"]
JPEG_RELEASE, KAGGLE_RELEASE, NIFTI_RELEASE = "1.2.0", "1.0.0", "1.3.1"
AUTO = "auto"
ORDER = (JPEG_RELEASE, KAGGLE_RELEASE, NIFTI_RELEASE)  # the order the sources are tried in
BASE_URLS = {release: f"https://physionet.org/files/ct-ich/{release}/" for release in (JPEG_RELEASE, NIFTI_RELEASE)}
LANDING_PAGES = {release: f"https://physionet.org/content/ct-ich/{release}/" for release in ORDER}
KAGGLE_MIRROR = "vbookshelf/computed-tomography-ct-images"
KAGGLE_PAGE = f"https://www.kaggle.com/datasets/{KAGGLE_MIRROR}"
JPEG_DIAGNOSIS = "hemorrhage_diagnosis.csv"
DIAGNOSIS = "hemorrhage_diagnosis_raw_ct.csv"
DEMOGRAPHICS = "Patient_demographics.csv"
DEMOGRAPHICS_NAMES = (DEMOGRAPHICS, "patient_demographics.csv")  # the 1.3.1 spelling, then the JPEG releases'
SCANS = "ct_scans"
PATIENTS = "Patients_CT"
WINDOWS = ("brain", "bone")
CHECKSUMS = "SHA256SUMS.txt"
HAS, NO = "Has Hemorrhage", "No Hemorrhage"
DOWNLOAD_THREADS = 4


# ----------------------------------------------------------------------------------------------
# Download
# ----------------------------------------------------------------------------------------------


def scan_name(patient: int) -> str:
    """The release's file name of a patient's CT volume: 49 -> "049.nii"."""
    return f"{patient:03d}.nii"


def slice_jpeg(patient: int, slice_number: int, window: str) -> str:
    """A slice's JPEG in the 1.2.0 release, relative to the release folder:
    (49, 7, "brain") -> "Patients_CT/049/brain/7.jpg"."""
    return f"{PATIENTS}/{patient:03d}/{window}/{slice_number}.jpg"


def _base_url(source: DatasetSource, diagnosis: str) -> str:
    """The release's folder URL: where the remote diagnosis CSV lives (a test server in tests)."""
    for item in source.remote:
        if item.name == diagnosis:
            return item.url.rsplit("/", 1)[0] + "/"
    return BASE_URLS[NIFTI_RELEASE if diagnosis == DIAGNOSIS else JPEG_RELEASE]


def _published_checksums(base: str, raw_dir: Path, credentials) -> dict[str, str]:
    """PhysioNet's SHA256SUMS.txt ("<sha256> <path>" lines) as {path: sha256}; {} when not served."""
    from eqpo.data.fetch import download

    try:
        path = download(base + CHECKSUMS, raw_dir / CHECKSUMS, credentials=credentials)
    except FileNotFoundError:
        return {}
    sums = {}
    for line in path.read_text(errors="replace").splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2:
            sums[parts[1].strip().lstrip("*").removeprefix("./")] = parts[0].lower()
    return sums


def _verify(path: Path, expected: str | None) -> None:
    """Check an already downloaded file against its published checksum; remove it when wrong."""
    from eqpo.data.fetch import DownloadError, sha256_of

    if expected is not None and path.exists() and sha256_of(path) != expected:
        path.unlink()
        raise DownloadError(
            f"checksum mismatch for {path.name} (SHA256SUMS.txt says {expected}); the file was "
            "removed, run again to download it afresh"
        )


def _fetch_demographics(base: str, raw_dir: Path, credentials, sums: dict[str, str]) -> None:
    """Download the demographics CSV as ``Patient_demographics.csv``, trying both spellings of its name."""
    from eqpo.data.fetch import download

    found = find_demographics(raw_dir)
    if found is not None:
        if found.name != DEMOGRAPHICS:  # placed by hand under another spelling
            shutil.copyfile(found, raw_dir / DEMOGRAPHICS)
        return
    for name in DEMOGRAPHICS_NAMES:
        try:
            download(base + name, raw_dir / DEMOGRAPHICS, sums.get(name), credentials)
            return
        except FileNotFoundError:
            continue


def _fetch_listed(base: str, raw_dir: Path, folder: str, files: list[str], credentials, sums: dict[str, str]) -> None:
    """Download ``files`` (paths relative to the release, under ``folder``/) into ``folder.part/``
    first, renamed to ``folder/`` once complete, so an interrupted run is resumed rather than taken
    as done. A file the server does not have (the scans of patients 59-65) is left out;
    preprocessing records the slices concerned in the manifest."""
    from eqpo.data.fetch import download_all

    final = raw_dir / folder
    target = final if final.exists() else raw_dir / (folder + ".part")
    jobs = [(base + rel, target / rel.split("/", 1)[1], sums.get(rel)) for rel in files]
    not_served = download_all(jobs, credentials, DOWNLOAD_THREADS, desc=f"{SPEC.name} {folder}", skip_not_served=True)
    if target != final and len(not_served) < len(jobs):
        os.replace(target, final)


def fetch_ct_ich(source: DatasetSource, raw_dir: Path, credentials) -> None:
    """Custom download step of the NIfTI release (after the diagnosis CSV): checksums, demographics, volumes."""
    raw_dir = Path(raw_dir)
    base = _base_url(source, DIAGNOSIS)
    sums = _published_checksums(base, raw_dir, credentials)
    _verify(raw_dir / DIAGNOSIS, sums.get(DIAGNOSIS))
    _fetch_demographics(base, raw_dir, credentials, sums)
    patients = sorted(read_diagnosis(raw_dir / DIAGNOSIS)["patient"].unique())
    _fetch_listed(base, raw_dir, SCANS, [f"{SCANS}/{scan_name(int(p))}" for p in patients], credentials, sums)


def fetch_jpeg_release(source: DatasetSource, raw_dir: Path, credentials) -> None:
    """Custom download step of the JPEG release (after the diagnosis CSV): checksums, demographics,
    the brain- and bone-window JPEG of every slice the diagnosis CSV lists."""
    raw_dir = Path(raw_dir)
    if release_folder(raw_dir) not in (None, raw_dir):
        return  # a mirror unpacked by hand one level down: nothing to fetch
    base = _base_url(source, JPEG_DIAGNOSIS)
    sums = _published_checksums(base, raw_dir, credentials)
    _verify(raw_dir / JPEG_DIAGNOSIS, sums.get(JPEG_DIAGNOSIS))
    _fetch_demographics(base, raw_dir, credentials, sums)
    diagnosis = read_diagnosis(raw_dir / JPEG_DIAGNOSIS).drop_duplicates(["patient", "slice"])
    files = [
        slice_jpeg(int(p), int(s), w)
        for p, s in zip(diagnosis["patient"], diagnosis["slice"], strict=False)
        for w in WINDOWS
    ]
    _fetch_listed(base, raw_dir, PATIENTS, files, credentials, sums)


def release_folder(raw_dir: Path) -> Path | None:
    """The folder holding the JPEG release's ``hemorrhage_diagnosis.csv``: raw_dir itself, or a
    folder one or two levels below it (the PhysioNet zip unpacks into
    ``computed-tomography-images-for-intracranial-hemorrhage-detection-and-segmentation-1.2.0/``,
    the Kaggle mirror into a similar folder); None when there is none."""
    raw_dir = Path(raw_dir)
    if (raw_dir / JPEG_DIAGNOSIS).is_file():
        return raw_dir
    for pattern in (f"*/{JPEG_DIAGNOSIS}", f"*/*/{JPEG_DIAGNOSIS}"):
        found = sorted(p.parent for p in raw_dir.glob(pattern) if p.is_file() and ".part" not in p.parent.name)
        if found:
            return found[0]
    return None


@dataclass(frozen=True)
class JpegReleaseSource(DatasetSource):
    """The JPEG release: its expected files may sit in raw/ (downloaded) or in the folder a zip of
    the release unpacks into (placed by hand)."""

    def missing_files(self, raw_dir: Path) -> list[str]:
        folder = release_folder(raw_dir)
        if folder is None or folder == Path(raw_dir):
            return super().missing_files(raw_dir)
        missing = [p for p in self.expected if not (folder / p).exists()]
        if DEMOGRAPHICS in missing and find_demographics(folder) is not None:
            missing.remove(DEMOGRAPHICS)
        return missing


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
    """hemorrhage_diagnosis[_raw_ct].csv -> columns patient (int), slice (int), no_hemorrhage
    (float 0/1, NaN when blank). Rows without a patient or slice number are dropped."""
    table = _read_csv(path)
    columns = {
        "patient": _column(table.columns, "patientnumber", "patient"),
        "slice": _column(table.columns, "slicenumber", "slice"),
        "no_hemorrhage": _column(table.columns, "nohemorrhage"),
    }
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
    header_row = next(
        (
            i
            for i, row in enumerate(rows[:5])
            if _column(row, "patient") is not None and _column(row, "age") is not None
        ),
        None,
    )
    if header_row is None:
        raise ValueError(f"{Path(path).name}: no header row naming a patient number and an age column")
    header = rows[header_row]
    patient_col = header.index(_column(header, "patientnumber", "patient"))
    age_col = header.index(_column(header, "age"))
    sex_name = _column(header, "gender", "sex")
    sex_col = header.index(sex_name) if sex_name is not None else None
    out = {}
    for row in rows[header_row + 1 :]:
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


def _stem(patient: int, slice_number: int) -> str:
    return f"{patient:03d}/{patient:03d}_{slice_number:03d}"


def write_slice_images(hu: np.ndarray, stem: str, out_dir: Path) -> list[str]:
    """One axial slice (Y, X) in HU -> brain- and bone-window PNGs (the JPEG release's windows);
    paths relative to out_dir.parent."""
    paths = []
    for tag, level_width in (("brain", media.BRAIN_WINDOW), ("bone", media.BONE_WINDOW)):
        dest = media.save_png(media.window(hu, level_width), out_dir / "images" / f"{stem}_{tag}.png")
        paths.append(dest.relative_to(out_dir.parent).as_posix())
    return paths


def _patient_rows(patient: int, slices: pd.DataFrame, raw_dir: Path, out_dir: Path, manifest: Manifest) -> list[dict]:
    """The samples of one patient (NIfTI release): load its volume once, write both windows of every labelled slice."""
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
            manifest.skip(sample_id, str(err), unreadable=True)
        return []
    rows = []
    for row in slices.itertuples(index=False):
        sample_id, label = sample_ids[int(row.slice)], label_of(row.no_hemorrhage)
        if label is None:
            manifest.skip(sample_id, f"No_Hemorrhage is {row.no_hemorrhage!r}, not 0/1")
        elif not 1 <= row.slice <= volume.shape[2]:
            manifest.skip(sample_id, f"slice {row.slice} is outside {path.name} ({volume.shape[2]} slices)")
        else:
            images = write_slice_images(volume[:, :, row.slice - 1].T, _stem(patient, int(row.slice)), out_dir)
            rows.append({"sample_id": sample_id, "patient_id": f"{patient:03d}", "images": images, "labels": [label]})
    return rows


def _jpeg_row(row, folder: Path, out_dir: Path, manifest: Manifest) -> dict | None:
    """One slice of the JPEG release: its brain- and bone-window JPEGs -> PNGs; None when skipped."""
    patient, slice_number = int(row.patient), int(row.slice)
    sample_id, label = f"{SPEC.name}-{patient:03d}-{slice_number:03d}", label_of(row.no_hemorrhage)
    if label is None:
        manifest.skip(sample_id, f"No_Hemorrhage is {row.no_hemorrhage!r}, not 0/1")
        return None
    images = []
    for window in WINDOWS:
        rel = slice_jpeg(patient, slice_number, window)
        dest = out_dir / "images" / f"{_stem(patient, slice_number)}_{window}.png"
        try:
            if not (folder / rel).is_file():
                raise media.CorruptMedia(f"no image {rel}")
            media.resize_image(folder / rel, dest)
        except media.CorruptMedia as err:
            manifest.skip(sample_id, str(err), unreadable=True)
            return None
        images.append(dest.relative_to(out_dir.parent).as_posix())
    return {"sample_id": sample_id, "patient_id": f"{patient:03d}", "images": images, "labels": [label]}


def _record_files(folder: Path, diagnosis: str, demographics: Path | None, manifest: Manifest, what: str) -> None:
    """Hashes of the CSVs read, and how many volumes (NIfTI) or slice JPEGs (masks not counted) were there."""
    from eqpo.data.fetch import sha256_of

    manifest.files[diagnosis] = sha256_of(folder / diagnosis)
    manifest.files[DEMOGRAPHICS] = sha256_of(demographics) if demographics is not None else "missing"
    if what == SCANS:
        manifest.files[SCANS] = f"{len(list((folder / SCANS).glob('*.nii')))} volumes"
    else:
        slices = [p for p in (folder / PATIENTS).glob("*/*/*.jpg") if "_HGE_Seg" not in p.name]
        manifest.files[PATIENTS] = f"{len(slices)} JPEG files"


def _finish(rows: list[dict], demographics: dict, seed: int, fractions) -> pd.DataFrame:
    table = pd.DataFrame(rows, columns=["sample_id", "patient_id", "images", "labels"])
    numbers = table["patient_id"].astype(int)
    table["age"] = [demographics.get(n, (np.nan, None))[0] for n in numbers]
    table["sex"] = [demographics.get(n, (np.nan, None))[1] for n in numbers]
    return assign_splits(table, seed, fractions)


def preprocess_nifti(
    raw_dir: Path,
    out_dir: Path,
    manifest: Manifest,
    seed: int,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> pd.DataFrame:
    """ct-ich 1.3.1 -> one row per labelled CT slice with its brain- and bone-window PNGs."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    diagnosis = read_diagnosis(raw_dir / DIAGNOSIS).drop_duplicates(["patient", "slice"])
    demographics_path = find_demographics(raw_dir)
    _record_files(raw_dir, DIAGNOSIS, demographics_path, manifest, SCANS)
    manifest.release = NIFTI_SOURCE.label
    rows = []
    for patient, slices in diagnosis.groupby("patient", sort=True):
        rows += _patient_rows(int(patient), slices.sort_values("slice"), raw_dir, out_dir, manifest)
    return _finish(rows, read_demographics(demographics_path), seed, fractions)


def preprocess_jpeg(
    raw_dir: Path,
    out_dir: Path,
    manifest: Manifest,
    seed: int,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    release: str = JPEG_RELEASE,
) -> pd.DataFrame:
    """A JPEG release of ct-ich (1.2.0, or the Kaggle mirror of 1.0.0) -> one row per labelled
    slice with its two PNGs."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    folder = release_folder(raw_dir)
    if folder is None:
        raise MissingDataError(SOURCES[release].instructions(raw_dir, list(SOURCES[release].expected)))
    diagnosis = read_diagnosis(folder / JPEG_DIAGNOSIS).drop_duplicates(["patient", "slice"])
    diagnosis = diagnosis.sort_values(["patient", "slice"])
    demographics_path = find_demographics(folder)
    _record_files(folder, JPEG_DIAGNOSIS, demographics_path, manifest, PATIENTS)
    manifest.release = SOURCES[release].label
    rows = [
        r
        for r in (_jpeg_row(row, folder, out_dir, manifest) for row in diagnosis.itertuples(index=False))
        if r is not None
    ]
    return _finish(rows, read_demographics(demographics_path), seed, fractions)


JPEG_SOURCE = JpegReleaseSource(
    spec=SPEC,
    access=Access.OPEN_URL,
    landing_page=LANDING_PAGES[JPEG_RELEASE],
    license="Creative Commons Attribution 4.0 International (CC BY 4.0), open access",
    expected=(JPEG_DIAGNOSIS, DEMOGRAPHICS, f"{PATIENTS}/"),
    remote=(RemoteFile(BASE_URLS[JPEG_RELEASE] + JPEG_DIAGNOSIS, JPEG_DIAGNOSIS),),
    preprocess=preprocess_jpeg,
    fetch=fetch_jpeg_release,
    optional_login=Access.PHYSIONET,
    example_command="wget -r -N -c -np -nH --cut-dirs=3 -P {raw_dir} " + BASE_URLS[JPEG_RELEASE],
    notes=(
        "JPEG release, 2,501 slices of 82 patients, open access (no account; PhysioNet credentials are sent "
        "when set). Its author wrote in 2020 that the JPEG files were taken down for de-identification and "
        "replaced by 1.3.1, so PhysioNet may no longer serve them."
    ),
    label=f"ct-ich {JPEG_RELEASE} (JPEG) from PhysioNet, open access",
)

KAGGLE_SOURCE = JpegReleaseSource(
    spec=SPEC,
    access=Access.KAGGLE,
    landing_page=KAGGLE_PAGE,
    license="CC BY 4.0 as the open JPEG release on PhysioNet (see the Kaggle page)",
    expected=(JPEG_DIAGNOSIS, DEMOGRAPHICS, f"{PATIENTS}/"),
    preprocess=partial(preprocess_jpeg, release=KAGGLE_RELEASE),
    kaggle_dataset=KAGGLE_MIRROR,
    example_command=f"kaggle datasets download {KAGGLE_MIRROR} -p {{raw_dir}} --unzip",
    notes=(
        "The JPEG release 1.0.0 mirrored on Kaggle, which CLIMB (the loader the paper used) downloads; its zip "
        "unpacks to computed-tomography-images-for-intracranial-hemorrhage-detection-and-segmentation-1.0.0/, "
        "which may stay one folder below this one. Needs a Kaggle token: KAGGLE_USERNAME and KAGGLE_KEY, or "
        "~/.kaggle/kaggle.json."
    ),
    raw_name=f"raw-{KAGGLE_RELEASE}",
    label=f"ct-ich {KAGGLE_RELEASE} (JPEG), Kaggle mirror {KAGGLE_MIRROR} (as CLIMB used)",
)

NIFTI_SOURCE = DatasetSource(
    spec=SPEC,
    access=Access.PHYSIONET,
    landing_page=LANDING_PAGES[NIFTI_RELEASE],
    license="PhysioNet Restricted Health Data License 1.5.0 (restricted access)",
    agreement="Sign in to PhysioNet and sign the data use agreement for ct-ich 1.3.1 on the landing page",
    expected=(DIAGNOSIS, DEMOGRAPHICS, f"{SCANS}/"),
    remote=(RemoteFile(BASE_URLS[NIFTI_RELEASE] + DIAGNOSIS, DIAGNOSIS),),
    preprocess=preprocess_nifti,
    fetch=fetch_ct_ich,
    example_command=(
        "wget -r -N -c -np -nH --cut-dirs=3 -P {raw_dir} --user $PHYSIONET_USERNAME --ask-password "
        + BASE_URLS[NIFTI_RELEASE]
    ),
    notes=(
        "NIfTI release, 2,814 slices of 75 patients (scans of patients 59-65 are not in it), faces blurred. "
        "Only ct_scans/, the diagnosis CSV and the demographics CSV are used (masks/ is not needed). "
        "Credentials: PHYSIONET_USERNAME and PHYSIONET_PASSWORD, or a ~/.netrc entry for physionet.org. "
        "The slices are windowed as the JPEG images (brain 40/120, bone 700/3200)."
    ),
    raw_name=f"raw-{NIFTI_RELEASE}",
    label=f"ct-ich {NIFTI_RELEASE} (NIfTI) from PhysioNet, restricted access",
)

SOURCES = {JPEG_RELEASE: JPEG_SOURCE, KAGGLE_RELEASE: KAGGLE_SOURCE, NIFTI_RELEASE: NIFTI_SOURCE}
SOURCE = JPEG_SOURCE  # the first one tried


def sources(release: str | None = None) -> list[DatasetSource]:
    """The sources to try, in order: all three for "auto" (or None), else the one release named."""
    if release in (None, AUTO):
        return [SOURCES[r] for r in ORDER]
    if release not in SOURCES:
        raise ValueError(f"Hemorrhage has no release {release!r}; choose {AUTO!r} or one of {list(ORDER)}")
    return [SOURCES[release]]
