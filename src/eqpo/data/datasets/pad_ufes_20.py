"""PAD-UFES-20 (Mendeley Data, smartphone photos of skin lesions) -> standard table.

The Mendeley zip ``zr7vgbcyr2-1.zip`` (open, about 3.5 GB) holds:

- ``metadata.csv``: one row per image. ``patient_id`` (PAT_n), ``lesion_id``, ``img_id``
  (PAT_n_lesion_k.png), ``age`` (int years), ``gender`` (MALE/FEMALE/blank), ``diagnostic``
  (ACK/BCC/MEL/NEV/SCC/SEK; BOD is already merged into SCC), ``fitspatrick``, ``region`` and
  lifestyle/lesion columns (smoke, drink, itch, grew, ...), many of them blank.
- ``images/imgs_part_1.zip`` .. ``imgs_part_3.zip``: NESTED zips of PNG photos of varying size,
  each unpacking to ``imgs_part_k/<img_id>``. ``fetch.extract`` unpacks them during download;
  :func:`unpack_inner_zips` does it for a copy placed by hand. Images are then found by
  ``img_id`` wherever they lie under raw/ (the flat ``images/<img_id>`` that loaders such as
  CLIMB assume is not needed).

Labels (CLIMB): ACK + SCC (and BOD) -> AKIEC, BCC -> Basal Cell Carcinoma, MEL -> Melanoma,
NEV -> Nevus, SEK -> Other. No official split: seeded patient-level split on ``patient_id``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from eqpo.core.vocabularies import PAPER_DATASETS
from eqpo.data.fetch import extract, sha256_of
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

NAME = "PAD-UFES-20"
METADATA = "metadata.csv"
ARCHIVE = "zr7vgbcyr2-1.zip"
ARCHIVE_URL = f"https://prod-dcd-datasets-cache-zipfiles.s3.eu-west-1.amazonaws.com/{ARCHIVE}"
DIAGNOSTIC = {
    "ACK": "AKIEC",
    "SCC": "AKIEC",
    "BOD": "AKIEC",  # Bowen's disease (SCC in situ); merged into SCC in the released metadata
    "BCC": "Basal Cell Carcinoma",
    "MEL": "Melanoma",
    "NEV": "Nevus",
    "SEK": "Other",
}
SEX = {"male": "M", "female": "F"}


def unpack_inner_zips(raw_dir: Path) -> None:
    """Extract any zip still packed under raw/images/ next to itself (once; a marker records it)."""
    images = raw_dir / "images"
    if not images.is_dir():
        return
    for archive in sorted(images.rglob("*.zip")):
        marker = archive.with_name(f".{archive.name}.extracted")
        if not marker.exists():
            extract(archive, archive.parent)
            marker.touch()


def read_metadata(path: Path) -> pd.DataFrame:
    """metadata.csv -> records (native, sample_id, patient_id, labels, age, sex)."""
    meta = read_table(path)
    require(meta, ["img_id", "diagnostic"], path)
    return records_frame(
        NAME,
        column(meta, "img_id").str.replace(r"\.png$", "", case=False, regex=True),
        column(meta, "patient_id"),
        [DIAGNOSTIC.get(d.strip().upper()) if isinstance(d, str) else None for d in column(meta, "diagnostic")],
        column(meta, "age"),
        sex_codes(column(meta, "gender"), SEX),
    )


def preprocess(raw_dir: Path, out_dir: Path, manifest: Manifest, seed: int, fractions) -> pd.DataFrame:
    """PAD-UFES-20 raw files -> standard rows (images resized to PNG under out_dir/images/)."""
    unpack_inner_zips(raw_dir)
    manifest.files[METADATA] = sha256_of(raw_dir / METADATA)
    records = drop_unusable(read_metadata(raw_dir / METADATA), manifest)
    return build_rows(records, index_images(raw_dir / "images", (".png",)), out_dir, manifest, seed, fractions)


SOURCE = DatasetSource(
    spec=PAPER_DATASETS[NAME],
    access=Access.OPEN_URL,
    landing_page="https://data.mendeley.com/datasets/zr7vgbcyr2/1",
    license="CC BY 4.0",
    expected=(METADATA, "images/"),
    preprocess=preprocess,
    remote=(RemoteFile(ARCHIVE_URL, ARCHIVE, extract=True),),
    example_command=f"wget -c -P {{raw_dir}} {ARCHIVE_URL} && unzip -q {{raw_dir}}/{ARCHIVE} -d {{raw_dir}}",
    notes=(
        "Open Mendeley zip, no login, about 3.5 GB; the images sit in nested zips "
        "images/imgs_part_1..3.zip, unpacked automatically. Mendeley publishes no checksum. "
        "No official split: seeded split by patient_id."
    ),
)
