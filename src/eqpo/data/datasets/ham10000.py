"""HAM10000 (ISIC 2018 Task 3 training images + Harvard Dataverse metadata) -> standard table.

Files under ``raw/`` (both open, no login):

- ``ISIC2018_Task3_Training_Input/ISIC_xxxxxxx.jpg``: the 10,015 HAM10000 dermoscopic JPEGs
  (600x450), extracted from ``ISIC2018_Task3_Training_Input.zip`` on the ISIC S3 bucket (the zip
  also holds ATTRIBUTION.txt and LICENSE.txt). Images are looked up by ``image_id`` anywhere under
  raw/, so the Dataverse ``HAM10000_images_part_1/2`` folders placed by hand work too.
- ``HAM10000_metadata``: one row per image from Harvard Dataverse (doi:10.7910/DVN/DBW86T):
  ``lesion_id`` (HAM_xxxxxxx), ``image_id`` (ISIC_xxxxxxx), ``dx`` (akiec/bcc/bkl/df/mel/nv/vasc),
  ``dx_type``, ``age`` (float, may be blank), ``sex`` (male/female/unknown), ``localization``
  (newer versions add ``dataset``). Dataverse serves it as comma-separated (``?format=original``)
  or as its tab-separated ingest (``HAM10000_metadata.tab``); both are read.

Labels (paper / CLIMB): mel -> Melanoma, nv -> Nevus, bcc -> Basal Cell Carcinoma,
akiec -> AKIEC, bkl/df/vasc -> Other.

Split: HAM10000 records no patient id and has no official split. ``lesion_id`` is used as the
patient id (one lesion often has several images), so every image of a lesion lands in the same
split; this is the finest grouping the dataset allows, not a true patient-level split.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from eqpo.core.vocabularies import PAPER_DATASETS
from eqpo.data.fetch import sha256_of
from eqpo.data.records import (
    build_rows,
    column,
    drop_unusable,
    index_images,
    read_table,
    records_frame,
    require,
    sex_codes,
)
from eqpo.data.sources import Access, DatasetSource, Manifest, RemoteFile

NAME = "HAM10000"
METADATA = "HAM10000_metadata"
IMAGES_DIR = "ISIC2018_Task3_Training_Input"
IMAGES_ZIP = f"{IMAGES_DIR}.zip"
IMAGES_URL = f"https://isic-challenge-data.s3.amazonaws.com/2018/{IMAGES_ZIP}"
# Harvard Dataverse file id of HAM10000_metadata in dataset version 4 (looked up from a public
# download record; the landing page lists the current id). format=original gives the CSV.
METADATA_URL = "https://dataverse.harvard.edu/api/access/datafile/4338392?format=original"
# The MD5 Dataverse publishes for that file (dataset version 4.0), verified before the file is used.
METADATA_MD5 = "8f85fb1aa29d80a2797247e434deb79d"
DX = {
    "mel": "Melanoma",
    "nv": "Nevus",
    "bcc": "Basal Cell Carcinoma",
    "akiec": "AKIEC",
    "bkl": "Other",
    "df": "Other",
    "vasc": "Other",
}
SEX = {"male": "M", "female": "F"}


def separator(path: Path) -> str:
    """Tab when the header line holds a tab (Dataverse's .tab ingest), else comma."""
    with open(path, encoding="utf-8-sig", errors="replace") as handle:
        return "\t" if "\t" in handle.readline() else ","


def read_metadata(path: Path) -> pd.DataFrame:
    """HAM10000_metadata (CSV or TSV) -> records (native, sample_id, patient_id, labels, age, sex)."""
    meta = read_table(path, sep=separator(path))
    require(meta, ["image_id", "dx"], path)
    return records_frame(
        NAME,
        column(meta, "image_id"),
        column(meta, "lesion_id"),
        [DX.get(d.strip().lower()) if isinstance(d, str) else None for d in column(meta, "dx")],
        column(meta, "age"),
        sex_codes(column(meta, "sex"), SEX),
    )


def preprocess(raw_dir: Path, out_dir: Path, manifest: Manifest, seed: int, fractions) -> pd.DataFrame:
    """HAM10000 raw files -> standard rows (images resized to PNG under out_dir/images/)."""
    manifest.files[METADATA] = sha256_of(raw_dir / METADATA)
    records = drop_unusable(read_metadata(raw_dir / METADATA), manifest)
    return build_rows(records, index_images(raw_dir), out_dir, manifest, seed, fractions)


SOURCE = DatasetSource(
    spec=PAPER_DATASETS[NAME],
    access=Access.OPEN_URL,
    landing_page="https://dataverse.harvard.edu/dataset.xhtml?persistentId=doi:10.7910/DVN/DBW86T",
    license="CC BY-NC 4.0 (non-commercial)",
    expected=(METADATA, f"{IMAGES_DIR}/"),
    preprocess=preprocess,
    remote=(
        RemoteFile(METADATA_URL, METADATA, md5=METADATA_MD5),
        RemoteFile(IMAGES_URL, IMAGES_ZIP, extract=True),
    ),
    example_command=(
        f"wget -c -O {{raw_dir}}/{METADATA} '{METADATA_URL}' && wget -c -P {{raw_dir}} {IMAGES_URL} "
        f"&& unzip -q {{raw_dir}}/{IMAGES_ZIP} -d {{raw_dir}}"
    ),
    notes=(
        "Images: the ISIC 2018 Task 3 training zip (the same 10,015 HAM10000 images, about 2.6 GB; ISIC publishes "
        "no checksum for it). The metadata is checked against the MD5 Dataverse publishes. "
        "Age and sex come only from HAM10000_metadata on Harvard Dataverse (CSV or its .tab ingest, "
        "saved without an extension); if the file id has changed, download it from the landing page. "
        "No patient ids: lesion_id is the split unit."
    ),
)
