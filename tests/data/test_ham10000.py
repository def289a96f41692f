"""HAM10000 end to end: a tiny ISIC2018_Task3_Training_Input.zip (inner folder of the same name,
plus ATTRIBUTION.txt/LICENSE.txt, one corrupt JPEG) and a HAM10000_metadata file served both as
Dataverse's comma-separated original and as its quoted tab-separated .tab ingest, with 'unknown'
sex, blank age and several images per lesion, run through the real prepare() path."""

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

from eqpo.data.datasets import ham10000
from eqpo.data.prepare import prepare
from eqpo.data.sources import Access, RemoteFile, patient_split

COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization", "dataset"]
# lesion_id, image_id, dx, dx_type, age, sex, localization, dataset; then whether the JPEG is corrupt
ROWS = [
    ("HAM_0000118", "ISIC_0027419", "bkl", "histo", "80.0", "male", "scalp", "vidir_modern", False),
    ("HAM_0000118", "ISIC_0025030", "bkl", "histo", "80.0", "male", "scalp", "vidir_modern", False),
    ("HAM_0002730", "ISIC_0026769", "mel", "histo", "55.0", "female", "back", "rosendahl", False),
    ("HAM_0002730", "ISIC_0025661", "mel", "histo", "55.0", "female", "back", "rosendahl", False),
    ("HAM_0002730", "ISIC_0026770", "mel", "histo", "55.0", "female", "back", "rosendahl", False),
    ("HAM_0001466", "ISIC_0031633", "nv", "follow_up", "", "male", "trunk", "vidir_molemax", False),
    ("HAM_0002761", "ISIC_0029176", "bcc", "histo", "60.0", "unknown", "face", "vidir_modern", False),
    ("HAM_0005132", "ISIC_0025837", "akiec", "histo", "70.0", "female", "face", "rosendahl", False),
    ("HAM_0001396", "ISIC_0025276", "df", "consensus", "35.0", "male", "lower extremity", "rosendahl", False),
    ("HAM_0004234", "ISIC_0029396", "vasc", "consensus", "20.0", "female", "trunk", "vidir_modern", False),
    ("HAM_0001601", "ISIC_0025915", "nv", "confocal", "45.0", "male", "back", "vidir_modern", True),
    ("HAM_0007418", "ISIC_0032001", "nv", "follow_up", "40.0", "female", "abdomen", "vidir_molemax", False),
]
LABEL = {
    "mel": "Melanoma",
    "nv": "Nevus",
    "bcc": "Basal Cell Carcinoma",
    "akiec": "AKIEC",
    "bkl": "Other",
    "df": "Other",
    "vasc": "Other",
}


def jpeg_bytes(size, seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=70)
    return buffer.getvalue()


def metadata_text(fmt):
    """Dataverse's original CSV, or its .tab ingest (tab-separated, strings in double quotes)."""
    if fmt == "csv":
        return "\n".join([",".join(COLUMNS)] + [",".join(r[:8]) for r in ROWS]) + "\n"
    quote = lambda cell, name: cell if name == "age" or cell == "" else f'"{cell}"'  # noqa: E731
    lines = ["\t".join(COLUMNS)] + ["\t".join(quote(c, n) for c, n in zip(r[:8], COLUMNS, strict=False)) for r in ROWS]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def images_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp("isic2018") / ham10000.IMAGES_ZIP
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("ISIC2018_Task3_Training_Input/ATTRIBUTION.txt", "HAM10000, CC BY-NC 4.0\n")
        archive.writestr("ISIC2018_Task3_Training_Input/LICENSE.txt", "CC BY-NC 4.0\n")
        for i, row in enumerate(ROWS):
            data = jpeg_bytes((600, 450), i)
            archive.writestr(f"ISIC2018_Task3_Training_Input/{row[1]}.jpg", data[:150] if row[8] else data)
    return path


@pytest.fixture(params=["csv", "tab"])
def served(request, images_zip, tmp_path, file_server):
    """A private served directory: the images zip and the metadata in one of the two formats."""
    directory = tmp_path / "server"
    directory.mkdir()
    shutil.copy(images_zip, directory / ham10000.IMAGES_ZIP)
    (directory / "metadata").write_text(metadata_text(request.param))
    return directory, file_server(directory)


def make_source(url, sha_zip=None):
    return dataclasses.replace(
        ham10000.SOURCE,
        remote=(
            RemoteFile(f"{url}/metadata", ham10000.METADATA),
            RemoteFile(f"{url}/{ham10000.IMAGES_ZIP}", ham10000.IMAGES_ZIP, sha_zip, extract=True),
        ),
    )


def sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_prepare_end_to_end(served, tmp_path):
    directory, url = served
    root = tmp_path / "data"
    table = prepare(make_source(url, sha(directory / ham10000.IMAGES_ZIP)), root, seed=3)

    kept = sorted((r for r in ROWS if not r[8]), key=lambda r: r[1])
    assert list(table["sample_id"]) == [f"HAM10000-{r[1]}" for r in kept]
    assert list(table["patient_id"]) == [r[0] for r in kept]  # lesion_id stands in for the patient
    assert [list(labels) for labels in table["labels"]] == [[LABEL[r[2]]] for r in kept]
    by_id = table.set_index("sample_id")
    assert by_id.loc["HAM10000-ISIC_0029176", "sex"] is None  # 'unknown'
    assert by_id.loc["HAM10000-ISIC_0029176", "age"] == 60.0
    assert math.isnan(by_id.loc["HAM10000-ISIC_0031633", "age"])  # blank age
    assert by_id.loc["HAM10000-ISIC_0031633", "sex"] == "M"
    assert by_id.loc["HAM10000-ISIC_0031633", "group"] is None
    assert by_id.loc["HAM10000-ISIC_0026769", "sex"] == "F"
    assert by_id.loc["HAM10000-ISIC_0026769", "group"] == "F|a3"

    # every image of a lesion in the same split, seeded over all lesions
    expected = patient_split(sorted({r[0] for r in ROWS}), 3, (0.7, 0.15, 0.15))
    assert list(table["split"]) == [expected[r[0]] for r in kept]
    assert table.groupby("patient_id")["split"].nunique().max() == 1
    assert (table.groupby("patient_id").size() > 1).any()

    for row, images in zip(kept, table["images"], strict=False):
        assert list(images) == [f"HAM10000/images/{row[1]}.png"]
        with Image.open(root / images[0]) as image:
            assert image.format == "PNG" and image.size == (512, 384)

    manifest = json.loads((root / "HAM10000" / "manifest.json").read_text())
    assert manifest["skipped"][0]["sample_id"] == "HAM10000-ISIC_0025915"
    assert "corrupt" in manifest["skipped"][0]["reason"] and len(manifest["skipped"]) == 1
    assert manifest["rows"] == len(kept) and manifest["missing_age"] == 1 and manifest["missing_sex"] == 1

    shutil.rmtree(directory)  # a second run reuses the downloads
    pd.testing.assert_frame_equal(prepare(make_source(url), root, seed=3), table)


def test_wrong_sha256_raises(served, tmp_path):
    _, url = served
    with pytest.raises(IOError, match="checksum mismatch"):
        prepare(make_source(url, sha_zip="f" * 64), tmp_path / "data")


def test_unknown_dx_and_missing_image_are_skipped(tmp_path):
    raw = tmp_path / "data" / "HAM10000" / "raw"
    (raw / "ISIC2018_Task3_Training_Input").mkdir(parents=True)
    (raw / "ISIC2018_Task3_Training_Input" / "ISIC_0000001.jpg").write_bytes(jpeg_bytes((40, 30), 0))
    (raw / ham10000.METADATA).write_text(
        "lesion_id,image_id,dx,dx_type,age,sex,localization\n"
        "HAM_1,ISIC_0000001,nv,histo,50,female,back\n"
        "HAM_2,ISIC_0000002,nv,histo,50,female,back\n"
        "HAM_3,ISIC_0000003,xyz,histo,50,female,back\n"
    )
    table = prepare(dataclasses.replace(ham10000.SOURCE, remote=()), tmp_path / "data")
    assert list(table["sample_id"]) == ["HAM10000-ISIC_0000001"]
    with Image.open(tmp_path / "data" / table["images"][0][0]) as image:
        assert image.size == (40, 30)  # small images are not enlarged
    skipped = json.loads((raw.parent / "manifest.json").read_text())["skipped"]
    assert {s["sample_id"]: s["reason"] for s in skipped} == {
        "HAM10000-ISIC_0000002": "image file not found under raw/",
        "HAM10000-ISIC_0000003": "no recognised label in the metadata",
    }


def test_source_declaration():
    source = ham10000.SOURCE
    assert source.name == "HAM10000" and source.access is Access.OPEN_URL
    urls = {r.name: r.url for r in source.remote}
    assert urls[ham10000.IMAGES_ZIP] == (
        "https://isic-challenge-data.s3.amazonaws.com/2018/ISIC2018_Task3_Training_Input.zip"
    )
    assert urls[ham10000.METADATA].startswith("https://dataverse.harvard.edu/api/access/datafile/")
    assert "doi:10.7910/DVN/DBW86T" in source.landing_page
    text = source.instructions(Path("/d/HAM10000/raw"), list(source.expected))
    assert "-O /d/HAM10000/raw/HAM10000_metadata" in text
