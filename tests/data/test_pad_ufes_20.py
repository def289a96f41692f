"""PAD-UFES-20 end to end: a tiny copy of the Mendeley zip (metadata.csv plus images/ holding the
NESTED zips imgs_part_1..3.zip, each unpacking to imgs_part_k/<img_id>), with blank gender, PNGs of
varying size and mode and one corrupt PNG, run through the real prepare() path."""

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

from eqpo.data.datasets import pad_ufes_20
from eqpo.data.prepare import prepare
from eqpo.data.sources import Access, RemoteFile, patient_split

COLUMNS = (
    "patient_id,lesion_id,smoke,drink,background_father,background_mother,age,pesticide,gender,"
    "skin_cancer_history,cancer_history,has_piped_water,has_sewage_system,fitspatrick,region,diameter_1,"
    "diameter_2,diagnostic,itch,grew,hurt,changed,bleed,elevation,img_id,biopsed"
)
# patient_id, lesion_id, age, gender, diagnostic, img_id, part, image (size, mode) or None = corrupt
ROWS = [
    ("PAT_46", 881, 55, "FEMALE", "ACK", "PAT_46_881_939.png", 1, ((1024, 512), "RGB")),
    ("PAT_46", 882, 55, "FEMALE", "SCC", "PAT_46_882_940.png", 1, ((600, 1200), "RGBA")),
    ("PAT_1545", 1867, 77, "MALE", "BCC", "PAT_1545_1867_547.png", 2, ((100, 80), "RGB")),
    ("PAT_1989", 4061, 40, "", "NEV", "PAT_1989_4061_934.png", 2, ((640, 480), "RGB")),
    ("PAT_684", 1302, 68, "MALE", "MEL", "PAT_684_1302_588.png", 2, ((512, 512), "RGB")),
    ("PAT_1549", 1873, 62, "FEMALE", "SEK", "PAT_1549_1873_229.png", 3, ((300, 600), "RGB")),
    ("PAT_795", 1508, 71, "MALE", "BCC", "PAT_795_1508_90.png", 3, None),
    ("PAT_121", 180, 24, "", "SEK", "PAT_121_180_773.png", 3, ((200, 150), "RGB")),
    ("PAT_1750", 3443, 81, "FEMALE", "NEV", "PAT_1750_3443_26.png", 1, ((700, 350), "RGB")),
]
LABEL = {
    "ACK": "AKIEC",
    "SCC": "AKIEC",
    "BCC": "Basal Cell Carcinoma",
    "MEL": "Melanoma",
    "NEV": "Nevus",
    "SEK": "Other",
}
EXPECTED_SIZE = {
    (1024, 512): (512, 256),
    (600, 1200): (256, 512),
    (100, 80): (100, 80),
    (640, 480): (512, 384),
    (512, 512): (512, 512),
    (300, 600): (256, 512),
    (200, 150): (200, 150),
    (700, 350): (512, 256),
}


def png_bytes(size, mode, seed):
    channels = len(mode)
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode=mode).save(buffer, format="PNG")
    return buffer.getvalue()


def metadata_csv():
    lines = [COLUMNS]
    for patient, lesion, age, gender, diagnostic, img_id, _, _ in ROWS:
        background = ",".join(
            [
                "False",
                "False",
                "POMERANIA",
                "GERMANY",
                str(age),
                "False",
                gender,
                "True",
                "False",
                "True",
                "True",
                "2",
                "FACE",
                "8.0",
                "6.0",
                diagnostic,
            ]
        )
        lines.append(f"{patient},{lesion},{background},True,True,False,True,False,True,{img_id},True")
    return "\n".join(lines) + "\n"


def zip_bytes(members):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def inner_zips():
    """images/imgs_part_k.zip -> bytes, each holding imgs_part_k/<img_id>."""
    parts = {}
    for i, (*_, img_id, part, image) in enumerate(ROWS):
        data = png_bytes(image[0], image[1], i) if image else b"\x89PNG\r\n\x1a\n" + b"\x00broken" * 20
        parts.setdefault(f"images/imgs_part_{part}.zip", {})[f"imgs_part_{part}/{img_id}"] = data
    return {name: zip_bytes(members) for name, members in parts.items()}


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    path = tmp_path_factory.mktemp("mendeley") / pad_ufes_20.ARCHIVE
    path.write_bytes(zip_bytes({"metadata.csv": metadata_csv(), **inner_zips()}))
    return path


@pytest.fixture
def served(archive, tmp_path, file_server):
    directory = tmp_path / "server"
    directory.mkdir()
    shutil.copy(archive, directory / pad_ufes_20.ARCHIVE)
    return directory, file_server(directory)


def make_source(url, sha256=None):
    return dataclasses.replace(
        pad_ufes_20.SOURCE,
        remote=(RemoteFile(f"{url}/{pad_ufes_20.ARCHIVE}", pad_ufes_20.ARCHIVE, sha256, extract=True),),
    )


def test_prepare_end_to_end(served, tmp_path):
    directory, url = served
    root = tmp_path / "data"
    digest = hashlib.sha256((directory / pad_ufes_20.ARCHIVE).read_bytes()).hexdigest()
    table = prepare(make_source(url, digest), root, seed=1, fractions=(0.5, 0.25, 0.25))

    kept = sorted((r for r in ROWS if r[7] is not None), key=lambda r: r[5])
    assert list(table["sample_id"]) == [f"PAD-UFES-20-{r[5][:-4]}" for r in kept]
    assert list(table["patient_id"]) == [r[0] for r in kept]
    assert [list(labels) for labels in table["labels"]] == [[LABEL[r[4]]] for r in kept]
    assert list(table["age"]) == [float(r[2]) for r in kept]
    assert list(table["sex"]) == [{"MALE": "M", "FEMALE": "F", "": None}[r[3]] for r in kept]
    by_id = table.set_index("sample_id")
    assert by_id.loc["PAD-UFES-20-PAT_1989_4061_934", "sex"] is None  # blank gender
    assert by_id.loc["PAD-UFES-20-PAT_1989_4061_934", "group"] is None
    assert by_id.loc["PAD-UFES-20-PAT_46_881_939", "group"] == "F|a3"
    assert not any(math.isnan(a) for a in table["age"])

    expected = patient_split(sorted({r[0] for r in ROWS}), 1, (0.5, 0.25, 0.25))
    assert list(table["split"]) == [expected[r[0]] for r in kept]
    assert table.groupby("patient_id")["split"].nunique().max() == 1

    # the nested zips were unpacked (and removed) and every image found wherever it lies
    raw = root / "PAD-UFES-20" / "raw"
    assert not list((raw / "images").glob("*.zip"))
    assert (raw / "images" / "imgs_part_3" / "PAT_121_180_773.png").exists()
    for row, images in zip(kept, table["images"], strict=False):
        assert list(images) == [f"PAD-UFES-20/images/{row[5]}"]
        with Image.open(root / images[0]) as image:
            assert image.format == "PNG" and image.mode == "RGB"
            assert image.size == EXPECTED_SIZE[row[7][0]]

    manifest = json.loads((root / "PAD-UFES-20" / "manifest.json").read_text())
    assert [s["sample_id"] for s in manifest["skipped"]] == ["PAD-UFES-20-PAT_795_1508_90"]
    assert "corrupt" in manifest["skipped"][0]["reason"]
    assert manifest["rows"] == len(kept) and manifest["missing_sex"] == 2 and manifest["missing_age"] == 0

    shutil.rmtree(directory)  # a second run reuses the download
    pd.testing.assert_frame_equal(prepare(make_source(url), root, seed=1, fractions=(0.5, 0.25, 0.25)), table)


def test_placed_by_hand_with_inner_zips_still_packed(tmp_path):
    raw = tmp_path / "data" / "PAD-UFES-20" / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "metadata.csv").write_text(metadata_csv())
    for name, data in inner_zips().items():
        (raw / name).write_bytes(data)
    table = prepare(dataclasses.replace(pad_ufes_20.SOURCE, remote=()), tmp_path / "data")
    assert len(table) == len(ROWS) - 1
    assert (raw / "images" / "imgs_part_1" / "PAT_46_881_939.png").exists()


def test_wrong_sha256_raises(served, tmp_path):
    _, url = served
    with pytest.raises(IOError, match="checksum mismatch"):
        prepare(make_source(url, "1" * 64), tmp_path / "data")


def test_source_declaration():
    source = pad_ufes_20.SOURCE
    assert source.name == "PAD-UFES-20" and source.access is Access.OPEN_URL
    assert [r.url for r in source.remote] == [
        "https://prod-dcd-datasets-cache-zipfiles.s3.eu-west-1.amazonaws.com/zr7vgbcyr2-1.zip"
    ]
    assert source.remote[0].extract
    text = source.instructions(Path("/d/PAD-UFES-20/raw"), list(source.expected))
    assert "unzip -q /d/PAD-UFES-20/raw/zr7vgbcyr2-1.zip -d /d/PAD-UFES-20/raw" in text
