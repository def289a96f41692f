"""ISIC-2020 end to end: a tiny copy of the S3 files (ground-truth CSV with blank sex and age, a JPEG
zip laid out as train/<image_name>.jpg with one corrupt JPEG) served over loopback HTTP and run
through the real prepare() path."""

import dataclasses
import hashlib
import io
import json
import math
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from eqpo.data.datasets import isic2020
from eqpo.data.prepare import prepare
from eqpo.data.sources import Access, MissingDataError, RemoteFile, patient_split

HEADER = "image_name,patient_id,sex,age_approx,anatom_site_general_challenge,diagnosis,benign_malignant,target"
# image_name, patient_id, sex, age_approx, site, diagnosis, benign_malignant, target, (width, height)
ROWS = [
    ("ISIC_0000001", "IP_0000001", "male", "45.0", "torso", "nevus", "benign", "0", (1024, 768)),
    ("ISIC_0000002", "IP_0000001", "male", "45.0", "torso", "melanoma", "malignant", "1", (1024, 768)),
    ("ISIC_0000003", "IP_0000002", "", "60.0", "head/neck", "unknown", "benign", "0", (640, 1280)),
    ("ISIC_0000004", "IP_0000003", "female", "", "lower extremity", "unknown", "benign", "0", (300, 200)),
    ("ISIC_0000005", "IP_0000004", "female", "30.0", "torso", "melanoma", "malignant", "1", (1024, 768)),
    ("ISIC_0000006", "IP_0000005", "male", "70.0", "torso", "nevus", "benign", "0", None),  # corrupt JPEG
    ("ISIC_0000007", "IP_0000006", "female", "25.0", "upper extremity", "unknown", "benign", "0", (1024, 768)),
    ("ISIC_0000008", "IP_0000007", "male", "80.0", "torso", "unknown", "benign", "0", (1024, 768)),
    ("ISIC_0000009", "IP_0000008", "female", "55.0", "torso", "melanoma", "malignant", "", (1024, 768)),
    ("ISIC_0000010", "IP_0000009", "male", "40.0", "torso", "nevus", "benign", "0", (1024, 768)),
]
EXPECTED_SIZE = {(1024, 768): (512, 384), (640, 1280): (256, 512), (300, 200): (300, 200)}


def jpeg_bytes(size, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fixture_files(tmp_path_factory):
    """The served directory: ISIC_2020_Training_GroundTruth.csv and ISIC_2020_Training_JPEG.zip."""
    root = tmp_path_factory.mktemp("isic_s3")
    lines = [HEADER] + [",".join(row[:8]) for row in ROWS]
    (root / isic2020.GROUND_TRUTH).write_text("\n".join(lines) + "\n")
    with zipfile.ZipFile(root / isic2020.IMAGES_ZIP, "w") as archive:
        archive.writestr("train/", b"")
        for i, row in enumerate(ROWS):
            data = jpeg_bytes(row[8], i) if row[8] else jpeg_bytes((64, 64), i)[:120] + b"not a jpeg any more"
            archive.writestr(f"train/{row[0]}.jpg", data)
    return root


def make_source(url, sha_zip=None, sha_csv=None):
    return dataclasses.replace(
        isic2020.SOURCE,
        remote=(
            RemoteFile(f"{url}/{isic2020.GROUND_TRUTH}", isic2020.GROUND_TRUTH, sha_csv),
            RemoteFile(f"{url}/{isic2020.IMAGES_ZIP}", isic2020.IMAGES_ZIP, sha_zip, extract=True),
        ),
    )


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def served(fixture_files, tmp_path, file_server):
    """A private copy of the fixture files behind a loopback server (tests may delete it)."""
    directory = tmp_path / "server"
    shutil.copytree(fixture_files, directory)
    return directory, file_server(directory)


def test_prepare_end_to_end(served, tmp_path):
    directory, url = served
    root = tmp_path / "data"
    source = make_source(url, sha(directory / isic2020.IMAGES_ZIP), sha(directory / isic2020.GROUND_TRUTH))
    table = prepare(source, root, seed=0, fractions=(0.6, 0.2, 0.2))

    kept = [r for r in ROWS if r[8] is not None]
    assert list(table["sample_id"]) == [f"ISIC-2020-{r[0]}" for r in kept]
    assert list(table["patient_id"]) == [r[1] for r in kept]
    by_id = table.set_index("sample_id")
    assert list(by_id.loc["ISIC-2020-ISIC_0000001", "labels"]) == ["Benign"]
    assert list(by_id.loc["ISIC-2020-ISIC_0000002", "labels"]) == ["Malignant"]
    # blank target falls back to benign_malignant
    assert list(by_id.loc["ISIC-2020-ISIC_0000009", "labels"]) == ["Malignant"]
    assert by_id.loc["ISIC-2020-ISIC_0000005", "age"] == 30.0
    assert by_id.loc["ISIC-2020-ISIC_0000005", "sex"] == "F"
    assert by_id.loc["ISIC-2020-ISIC_0000001", "sex"] == "M"
    # blank sex -> None, NaN age_approx -> NaN; no explicit group for either
    assert by_id.loc["ISIC-2020-ISIC_0000003", "sex"] is None
    assert by_id.loc["ISIC-2020-ISIC_0000003", "group"] is None
    assert math.isnan(by_id.loc["ISIC-2020-ISIC_0000004", "age"])
    assert by_id.loc["ISIC-2020-ISIC_0000004", "sex"] == "F"
    assert by_id.loc["ISIC-2020-ISIC_0000001", "group"] == "M|a2"
    assert (table["dataset"] == "ISIC-2020").all()

    # seeded patient-level split over every labelled patient (the corrupt image's too)
    expected = patient_split(sorted({r[1] for r in ROWS}), 0, (0.6, 0.2, 0.2))
    assert dict(zip(table["patient_id"], table["split"], strict=False)) == {r[1]: expected[r[1]] for r in kept}
    assert table.groupby("patient_id")["split"].nunique().max() == 1
    assert set(table["split"]) == {"train", "val", "test"}

    for row, images in zip(kept, table["images"], strict=False):
        assert list(images) == [f"ISIC-2020/images/{row[0]}.png"]
        with Image.open(root / images[0]) as image:
            assert image.format == "PNG"
            assert image.size == EXPECTED_SIZE[row[8]]

    manifest = json.loads((root / "ISIC-2020" / "manifest.json").read_text())
    assert [s["sample_id"] for s in manifest["skipped"]] == ["ISIC-2020-ISIC_0000006"]
    assert "corrupt" in manifest["skipped"][0]["reason"]
    assert manifest["rows"] == len(kept)
    assert manifest["missing_age"] == 1 and manifest["missing_sex"] == 1
    assert manifest["files"][isic2020.GROUND_TRUTH] == sha(directory / isic2020.GROUND_TRUTH)
    assert not (root / "ISIC-2020" / "images" / "ISIC_0000006.png").exists()
    assert len(pd.read_parquet(root / "ISIC-2020" / "table.parquet")) == len(kept)

    # a second run reuses the downloads: the server's files are gone
    shutil.rmtree(directory)
    again = prepare(source, root, seed=0, fractions=(0.6, 0.2, 0.2))
    pd.testing.assert_frame_equal(again, table)


def test_resumes_a_partial_zip(served, tmp_path):
    directory, url = served
    raw = tmp_path / "data" / "ISIC-2020" / "raw"
    raw.mkdir(parents=True)
    full = (directory / isic2020.IMAGES_ZIP).read_bytes()
    (raw / f"{isic2020.IMAGES_ZIP}.part").write_bytes(full[: len(full) // 2])
    table = prepare(make_source(url, sha(directory / isic2020.IMAGES_ZIP)), tmp_path / "data")
    assert (raw / isic2020.IMAGES_ZIP).read_bytes() == full
    assert not (raw / f"{isic2020.IMAGES_ZIP}.part").exists()
    assert (raw / "train" / "ISIC_0000001.jpg").exists()
    assert len(table) == len(ROWS) - 1


def test_wrong_sha256_raises(served, tmp_path):
    directory, url = served
    with pytest.raises(IOError, match="checksum mismatch"):
        prepare(make_source(url, sha_zip="0" * 64), tmp_path / "data")
    raw = tmp_path / "data" / "ISIC-2020" / "raw"
    assert not (raw / isic2020.IMAGES_ZIP).exists()
    assert not (raw / f"{isic2020.IMAGES_ZIP}.part").exists()


def test_archive_without_train_folder_raises(tmp_path, file_server):
    directory = tmp_path / "server"
    directory.mkdir()
    (directory / isic2020.GROUND_TRUTH).write_text(HEADER + "\n")
    with zipfile.ZipFile(directory / isic2020.IMAGES_ZIP, "w") as archive:
        archive.writestr("other/ISIC_0000001.jpg", jpeg_bytes((8, 8), 0))
    with pytest.raises(MissingDataError, match="train/"):
        prepare(make_source(file_server(directory)), tmp_path / "data")


def test_source_declaration():
    source = isic2020.SOURCE
    assert source.name == "ISIC-2020" and source.access is Access.OPEN_URL
    urls = {r.name: r.url for r in source.remote}
    assert urls[isic2020.IMAGES_ZIP] == "https://isic-challenge-data.s3.amazonaws.com/2020/ISIC_2020_Training_JPEG.zip"
    assert urls[isic2020.GROUND_TRUTH] == (
        "https://isic-challenge-data.s3.amazonaws.com/2020/ISIC_2020_Training_GroundTruth.csv"
    )
    assert [r.extract for r in source.remote] == [False, True]
    text = source.instructions(Path("/data/ISIC-2020/raw"), list(source.expected))
    assert "wget -c -P /data/ISIC-2020/raw " in text and "{raw_dir}" not in text
