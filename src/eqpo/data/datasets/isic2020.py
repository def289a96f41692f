"""ISIC 2020 (SIIM-ISIC Melanoma Classification) training set -> standard table.

Files under ``raw/`` (both from the ISIC S3 bucket, no login):

- ``ISIC_2020_Training_GroundTruth.csv``: one row per image. ``image_name`` (ISIC_xxxxxxx),
  ``patient_id`` (IP_xxxxxxx), ``sex`` (male/female/blank), ``age_approx`` (5-year steps, may be
  blank), ``anatom_site_general_challenge``, ``diagnosis``, ``benign_malignant``
  (benign/malignant) and ``target`` (1 = malignant).
- ``train/<image_name>.jpg``: the JPEG photos, extracted from ``ISIC_2020_Training_JPEG.zip``
  (24,707,698,022 bytes, checked before unpacking; images up to about 6000x4000 pixels). Images
  are looked up by name anywhere under raw/, so a copy unpacked with an extra top folder works too.

Labels: ``target`` 1 -> "Malignant", 0 -> "Benign" (``benign_malignant`` when ``target`` is blank).
There is no labelled official test set, so the split is a seeded patient-level split on
``patient_id``.

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

NAME = "ISIC-2020"
S3 = "https://isic-challenge-data.s3.amazonaws.com/2020/"
GROUND_TRUTH = "ISIC_2020_Training_GroundTruth.csv"
IMAGES_ZIP = "ISIC_2020_Training_JPEG.zip"
# The zip's size in bytes as the bucket serves it (ISIC publishes no checksum); checked before unpacking.
IMAGES_ZIP_BYTES = 24_707_698_022
SEX = {"male": "M", "female": "F"}


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
    return records_frame(
        NAME,
        column(gt, "image_name"),
        column(gt, "patient_id"),
        [label_of(t, b) for t, b in zip(column(gt, "target"), column(gt, "benign_malignant"), strict=False)],
        column(gt, "age_approx"),
        sex_codes(column(gt, "sex"), SEX),
    )


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
        RemoteFile(S3 + IMAGES_ZIP, IMAGES_ZIP, extract=True, size=IMAGES_ZIP_BYTES),
    ),
    example_command=(
        f"wget -c -P {{raw_dir}} {S3}{GROUND_TRUTH} {S3}{IMAGES_ZIP} && "
        f"unzip -q {{raw_dir}}/{IMAGES_ZIP} -d {{raw_dir}}"
    ),
    notes=(
        "Open S3 files, no login; the JPEG zip (24,707,698,022 bytes, checked) unpacks to "
        "train/<image_name>.jpg. ISIC publishes no checksums. No labelled official test set: seeded split by "
        "patient_id."
    ),
)
