"""VinDr-Mammo: a tiny copy of https://physionet.org/files/vindr-mammo/1.0.0/ behind a Basic-auth
file server, run through the real prepare() path (credentials -> CSVs -> SHA256SUMS check -> DICOM
fetch -> DICOM to PNG -> table).

Quirks reproduced: DICOM age strings ("053Y") in metadata.csv's "Patient's Age", a blank age
recovered from the DICOM PatientAge tag, an age missing everywhere, tiny real DICOMs written with
pydicom (16-bit MONOCHROME1 and MONOCHROME2), a corrupt DICOM, "BI-RADS k" labels, the official
training/test split column, PhysioNet SHA256SUMS.txt, a 401 without or with wrong credentials."""

import dataclasses
import hashlib
import json
import math
import shutil

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from eqpo.data.datasets import vindr_mammo
from eqpo.data.prepare import prepare
from eqpo.data.sources import MissingDataError, RemoteFile

USER, PASSWORD = "physio-user", "s3cret"
VERSION_DIR = "files/vindr-mammo/1.0.0"
# image_id -> (study_id, laterality, view, birads, split, metadata age, DICOM PatientAge, photometric, (rows, cols))
IMAGES = {
    "i1cc": ("s1", "L", "CC", "BI-RADS 1", "training", "053Y", "053Y", "MONOCHROME2", (640, 320)),
    "i1mlo": ("s1", "L", "MLO", "BI-RADS 2", "training", "053Y", "053Y", "MONOCHROME1", (48, 32)),
    "i2cc": ("s2", "R", "CC", "BI-RADS 3", "training", "047Y", "047Y", "MONOCHROME2", (48, 32)),
    "i2mlo": ("s2", "R", "MLO", "BI-RADS 4", "training", "047Y", "047Y", "corrupt", (48, 32)),
    "i3cc": ("s3", "L", "CC", "BI-RADS 5", "training", "", "061Y", "MONOCHROME1", (48, 32)),  # age from DICOM
    "i4cc": ("s4", "R", "CC", "BI-RADS 1", "training", "", None, "MONOCHROME2", (48, 32)),  # no age anywhere
    "i5cc": ("s5", "L", "CC", "BI-RADS 2", "test", "070Y", "070Y", "MONOCHROME2", (48, 32)),
    "i5mlo": ("s5", "L", "MLO", "BI-RADS 1", "test", "070Y", "070Y", "MONOCHROME2", (48, 32)),
    "i6cc": ("s6", "R", "CC", "BI-RADS 4", "test", "039Y", "039Y", "MONOCHROME2", (48, 32)),
    "i7cc": ("s7", "L", "CC", "BI-RADS 1", "training", "025Y", "025Y", "MONOCHROME2", (48, 32)),
    "i8cc": ("s8", "R", "CC", "BI-RADS 2", "training", "076Y", "076Y", "MONOCHROME2", (48, 32)),
}
EXPECTED = {  # sample_id -> (patient, label, age, PNG size (width, height))
    "VinDr-Mammo-i1cc": ("s1", "BIRAD 1", 53.0, (256, 512)),
    "VinDr-Mammo-i1mlo": ("s1", "BIRAD 2", 53.0, (32, 48)),
    "VinDr-Mammo-i2cc": ("s2", "BIRAD 3", 47.0, (32, 48)),
    "VinDr-Mammo-i3cc": ("s3", "BIRAD 5", 61.0, (32, 48)),
    "VinDr-Mammo-i4cc": ("s4", "BIRAD 1", math.nan, (32, 48)),
    "VinDr-Mammo-i5cc": ("s5", "BIRAD 2", 70.0, (32, 48)),
    "VinDr-Mammo-i5mlo": ("s5", "BIRAD 1", 70.0, (32, 48)),
    "VinDr-Mammo-i6cc": ("s6", "BIRAD 4", 39.0, (32, 48)),
    "VinDr-Mammo-i7cc": ("s7", "BIRAD 1", 25.0, (32, 48)),
    "VinDr-Mammo-i8cc": ("s8", "BIRAD 2", 76.0, (32, 48)),
}


def _write_dicom(path, photometric, shape, age):
    """A small but real 16-bit DICOM mammogram (pixel value grows along each row)."""
    import pydicom
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"  # Digital Mammography - For Presentation
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientSex = "MG", "F"
    if age is not None:
        ds.PatientAge = age
    rows, cols = shape
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, cols, 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    pixels = np.tile(np.linspace(0, 4095, cols).astype(np.uint16), (rows, 1))
    ds.PixelData = pixels.tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _build_server_tree(top):
    """<top>/files/vindr-mammo/1.0.0/ holding the CSVs, SHA256SUMS.txt and images/<study>/<image>.dicom."""
    base = top / VERSION_DIR
    for image, (study, _, _, _, _, _, dicom_age, photometric, shape) in IMAGES.items():
        path = base / "images" / study / f"{image}.dicom"
        if photometric == "corrupt":
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"DICM but not really" * 20)
        else:
            _write_dicom(path, photometric, shape, dicom_age)
    annotations = pd.DataFrame(
        [
            {
                "study_id": study,
                "series_id": f"ser-{study}-{lat}",
                "image_id": image,
                "laterality": lat,
                "view_position": view,
                "height": shape[0],
                "width": shape[1],
                "breast_birads": birads,
                "breast_density": "DENSITY C",
                "split": split,
            }
            for image, (study, lat, view, birads, split, _, _, _, shape) in IMAGES.items()
        ]
    )
    annotations.to_csv(base / "breast-level_annotations.csv", index=False)
    metadata = pd.DataFrame(
        [
            {
                "SOP Instance UID": image,
                "Series Instance UID": f"ser-{study}-{lat}",
                "Patient's Age": age,
                "Photometric Interpretation": photometric,
                "Manufacturer": "SIEMENS",
            }
            for image, (study, lat, _, _, _, age, _, photometric, _) in IMAGES.items()
        ]
    )
    metadata.to_csv(base / "metadata.csv", index=False)
    (base / "finding_annotations.csv").write_text("image_id,finding_categories\n")
    (base / "LICENSE.txt").write_text("PhysioNet Restricted Health Data License 1.5.0\n")
    sums = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.relative_to(base).as_posix()}"
        for p in sorted(base.rglob("*"))
        if p.is_file()
    ]
    (base / "SHA256SUMS.txt").write_text("\n".join(sums) + "\n")
    return base


def _source(url):
    """SOURCE with its remote URLs pointed at the local server."""
    remote = tuple(
        RemoteFile(f"{url}/{VERSION_DIR}/{item.name}", item.name, item.sha256, item.extract)
        for item in vindr_mammo.SOURCE.remote
    )
    return dataclasses.replace(vindr_mammo.SOURCE, remote=remote)


@pytest.fixture(autouse=True)
def no_ambient_credentials(tmp_path, monkeypatch):
    """No real ~/.netrc or environment credentials leak into the tests."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("PHYSIONET_USERNAME", "PHYSIONET_PASSWORD", "NETRC"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def served(tmp_path, file_server):
    top = tmp_path / "server"
    _build_server_tree(top)
    return top, file_server(top, credentials=(USER, PASSWORD))


@pytest.fixture
def credentials(monkeypatch):
    monkeypatch.setenv("PHYSIONET_USERNAME", USER)
    monkeypatch.setenv("PHYSIONET_PASSWORD", PASSWORD)


def test_prepare_end_to_end(served, credentials, tmp_path):
    top, url = served
    root = tmp_path / "data"
    table = prepare(_source(url), root, seed=0)

    assert sorted(table["sample_id"]) == sorted(EXPECTED)
    for row in table.itertuples():
        patient, label, age, size = EXPECTED[row.sample_id]
        assert row.patient_id == patient and list(row.labels) == [label]
        assert (math.isnan(row.age) and math.isnan(age)) or row.age == age
        assert row.sex is None and row.dataset == "VinDr-Mammo"
        assert len(row.images) == 1 and row.images[0].startswith("VinDr-Mammo/images/")
        with Image.open(root / row.images[0]) as image:
            assert image.format == "PNG" and image.size == size

    # official test studies stay test, training studies go to train/val, a study never straddles
    official_test = table["patient_id"].isin(["s5", "s6"])
    assert (table.loc[official_test, "split"] == "test").all()
    assert table.loc[~official_test, "split"].isin(["train", "val"]).all()
    assert table.groupby("patient_id")["split"].nunique().max() == 1
    # 6 training studies kept, 0.7/0.15 renormalised over train+val: round(6 * 0.7 / 0.85) = 5 train, 1 val
    per_patient = table.drop_duplicates("patient_id")["split"].value_counts().to_dict()
    assert per_patient == {"train": 5, "val": 1, "test": 2}
    # age-only groups; no group when the age is missing
    groups = dict(zip(table["sample_id"], table["group"], strict=False))
    assert groups["VinDr-Mammo-i1cc"] == "a3" and groups["VinDr-Mammo-i7cc"] == "a1"
    assert groups["VinDr-Mammo-i8cc"] == "a4" and groups["VinDr-Mammo-i4cc"] is None

    # MONOCHROME1 is inverted: the same ramp starts white instead of black
    ramp = np.asarray(Image.open(root / "VinDr-Mammo/images/s1/i1cc.png"))
    inverted = np.asarray(Image.open(root / "VinDr-Mammo/images/s1/i1mlo.png"))
    assert ramp[0, 0] == 0 and ramp[0, -1] == 255 and inverted[0, 0] == 255 and inverted[0, -1] == 0

    manifest = json.loads((root / "VinDr-Mammo" / "manifest.json").read_text())
    assert [item["sample_id"] for item in manifest["skipped"]] == ["VinDr-Mammo-i2mlo"]
    assert "unreadable DICOM" in manifest["skipped"][0]["reason"]
    assert manifest["rows"] == len(EXPECTED) and manifest["missing_age"] == 1 and manifest["missing_sex"] == 0
    assert set(manifest["files"]) == {"breast-level_annotations.csv", "metadata.csv"}
    raw = root / "VinDr-Mammo" / "raw"
    assert len(list((raw / "images").rglob("*.dicom"))) == len(IMAGES)
    assert not (raw / vindr_mammo.STAGING).exists() and not list(raw.rglob("*.part"))


def test_second_run_reuses_downloads(served, credentials, tmp_path):
    top, url = served
    first = prepare(_source(url), tmp_path / "data", seed=5)
    shutil.rmtree(top)  # nothing left to download from
    second = prepare(_source(url), tmp_path / "data", seed=5)
    pd.testing.assert_frame_equal(first, second)


def test_interrupted_fetch_resumes(served, credentials, tmp_path):
    top, url = served
    raw = tmp_path / "data" / "VinDr-Mammo" / "raw"
    source_file = top / VERSION_DIR / "images" / "s1" / "i1cc.dicom"
    part = raw / vindr_mammo.STAGING / "s1" / "i1cc.dicom.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(source_file.read_bytes()[:1000])  # what an interrupted run left behind
    done = raw / vindr_mammo.STAGING / "s2" / "i2cc.dicom"
    done.parent.mkdir(parents=True)
    shutil.copy(top / VERSION_DIR / "images" / "s2" / "i2cc.dicom", done)
    table = prepare(_source(url), tmp_path / "data")
    assert len(table) == len(EXPECTED)
    assert (raw / "images" / "s1" / "i1cc.dicom").read_bytes() == source_file.read_bytes()


def test_netrc_credentials_are_used(served, no_ambient_credentials, tmp_path):
    top, url = served
    netrc = no_ambient_credentials / ".netrc"
    netrc.write_text(f"machine physionet.org login {USER} password {PASSWORD}\n")
    netrc.chmod(0o600)
    assert len(prepare(_source(url), tmp_path / "data")) == len(EXPECTED)


def test_no_credentials_raise_with_instructions(served, tmp_path):
    top, url = served
    with pytest.raises(MissingDataError) as err:
        prepare(_source(url), tmp_path / "data")
    text = str(err.value)
    assert "PhysioNet credentials" in text and vindr_mammo.LANDING_PAGE in text
    for path in vindr_mammo.SOURCE.expected:
        assert f"- {path}" in text
    assert not (tmp_path / "data" / "VinDr-Mammo" / "raw" / "metadata.csv").exists()


def test_wrong_credentials_get_a_401(served, monkeypatch, tmp_path):
    top, url = served
    monkeypatch.setenv("PHYSIONET_USERNAME", USER)
    monkeypatch.setenv("PHYSIONET_PASSWORD", "wrong")
    with pytest.raises(MissingDataError, match="401"):
        prepare(_source(url), tmp_path / "data")


def test_401_during_the_dicom_fetch_names_the_landing_page(served, credentials, tmp_path, file_server):
    """The CSVs are there already (e.g. copied by hand), the DICOM server refuses the credentials."""
    top, url = served
    raw = tmp_path / "data" / "VinDr-Mammo" / "raw"
    raw.mkdir(parents=True)
    for name in ("breast-level_annotations.csv", "metadata.csv", "SHA256SUMS.txt"):
        shutil.copy(top / VERSION_DIR / name, raw / name)
    strict = file_server(top, credentials=("someone", "else"))
    with pytest.raises(MissingDataError) as err:
        prepare(_source(strict), tmp_path / "data")
    assert "401" in str(err.value) and vindr_mammo.LANDING_PAGE in str(err.value)
    assert not (raw / "images").exists()


def test_wrong_sha256_raises(served, credentials, tmp_path):
    top, url = served
    source = _source(url)
    bad = tuple(
        dataclasses.replace(item, sha256="0" * 64) if item.name == "metadata.csv" else item for item in source.remote
    )
    with pytest.raises(IOError, match="checksum mismatch"):
        prepare(dataclasses.replace(source, remote=bad), tmp_path / "data")
    assert not (tmp_path / "data" / "VinDr-Mammo" / "raw" / "metadata.csv").exists()


def test_sha256sums_mismatch_on_a_dicom_raises(served, credentials, tmp_path):
    top, url = served
    dicom = top / VERSION_DIR / "images" / "s7" / "i7cc.dicom"
    dicom.write_bytes(dicom.read_bytes()[:-2] + b"\x00\x01")  # served file differs from SHA256SUMS.txt
    with pytest.raises(IOError, match="checksum mismatch"):
        prepare(_source(url), tmp_path / "data")
    raw = tmp_path / "data" / "VinDr-Mammo" / "raw"
    assert not (raw / "images").exists()  # the incomplete download is not taken for a complete one


def test_skip_unavailable_without_credentials(served, tmp_path):
    top, url = served
    table = prepare(_source(url), tmp_path / "data", skip_unavailable=True)
    assert table.empty
    out = tmp_path / "data" / "VinDr-Mammo"
    assert pd.read_parquet(out / "table.parquet").empty
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["skipped"] is True and vindr_mammo.LANDING_PAGE in manifest["reason"]


def test_missing_decoder_stops_instead_of_skipping_everything(tmp_path, monkeypatch):
    """A compressed transfer syntax with no installed decoder is an environment problem. The data
    environment installs one (pylibjpeg-libjpeg): pydicom is then shown none, for this test only."""
    from pydicom.pixels.decoders import JPEGLSLosslessDecoder

    unavailable = {
        **JPEGLSLosslessDecoder._unavailable,
        **{label: ("pylibjpeg-libjpeg",) for label in JPEGLSLosslessDecoder._available},
    }
    monkeypatch.setattr(JPEGLSLosslessDecoder, "_available", {})
    monkeypatch.setattr(JPEGLSLosslessDecoder, "_unavailable", unavailable)
    import pydicom
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGLSLossless

    raw, out = tmp_path / "raw", tmp_path / "VinDr-Mammo"
    path = raw / "images" / "s1" / "i1.dicom"
    _write_dicom(path, "MONOCHROME2", (8, 8), "050Y")
    ds = pydicom.dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = encapsulate([b"\xff\xd8 not decodable here \xff\xd9"])
    ds.save_as(path, enforce_file_format=True)
    pd.DataFrame(
        [{"study_id": "s1", "series_id": "x", "image_id": "i1", "breast_birads": "BI-RADS 1", "split": "training"}]
    ).to_csv(raw / "breast-level_annotations.csv", index=False)
    pd.DataFrame([{"SOP Instance UID": "i1", "Patient's Age": "050Y"}]).to_csv(raw / "metadata.csv", index=False)
    from eqpo.data.sources import Manifest

    with pytest.raises(RuntimeError, match="(?s)pydicom cannot decode these DICOMs.*eqpo\\[data\\]"):
        vindr_mammo.preprocess(raw, out, Manifest("VinDr-Mammo"), 0, (0.7, 0.15, 0.15))


def test_helpers(tmp_path):
    assert vindr_mammo.dicom_age("053Y") == 53.0
    assert vindr_mammo.dicom_age(" 006M ") == 0.5
    assert vindr_mammo.dicom_age("62") == 62.0
    for missing in ("", None, float("nan"), "unknown"):
        assert math.isnan(vindr_mammo.dicom_age(missing))
    assert vindr_mammo.birads_label("BI-RADS 4") == "BIRAD 4"
    assert vindr_mammo.birads_label("BI-RADS 0") is None and vindr_mammo.birads_label("") is None
    assert vindr_mammo.official_split("training") == "train" and vindr_mammo.official_split("test") == "test"
    sums = tmp_path / "SHA256SUMS.txt"
    sums.write_text(f"{'a' * 64} LICENSE.txt\n{'B' * 64} *images/s1/i1.dicom\nnot a line\n")
    assert vindr_mammo.read_sha256sums(sums) == {"LICENSE.txt": "a" * 64, "images/s1/i1.dicom": "b" * 64}
    # metadata.csv keyed by series when SOP Instance UID is absent; headers matched loosely
    meta = tmp_path / "metadata.csv"
    pd.DataFrame(
        [
            {"Series Instance UID": "ser1", "Patient's  AGE": "061Y"},
            {"Series Instance UID": "ser2", "Patient's  AGE": ""},
        ]
    ).to_csv(meta, index=False)
    assert vindr_mammo.read_ages(meta) == ("series_id", {"ser1": 61.0})


# pydicom's own test files (shipped with pydicom, MIT licence): one 64x64 16-bit MR slice stored
# uncompressed and, losslessly, as JPEG-LS and as JPEG 2000: the compressions a mammography archive uses.
COMPRESSED = {"i_raw": "MR_small.dcm", "i_jls": "MR_small_jpeg_ls_lossless.dcm", "i_j2k": "MR_small_jp2klossless.dcm"}


def test_compressed_dicoms_are_decoded_like_the_uncompressed_one(tmp_path):
    """Through the module's preprocessing: a JPEG-LS and a JPEG 2000 lossless DICOM give exactly the
    PNG of the same image stored uncompressed (needs the data environment's pylibjpeg decoders)."""
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.pixels.decoders import JPEG2000LosslessDecoder, JPEGLSLosslessDecoder

    for decoder in (JPEGLSLosslessDecoder, JPEG2000LosslessDecoder):
        if not decoder.is_available:
            pytest.skip(
                f"no {decoder.UID.name} decoder: install the data environment's pylibjpeg plugins "
                "(pip install 'eqpo[data]' or envs/data.yaml)"
            )
    raw, out = tmp_path / "raw", tmp_path / "VinDr-Mammo"
    syntaxes = {}
    for image, name in COMPRESSED.items():
        dest = raw / "images" / "s1" / f"{image}.dicom"
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(get_testdata_file(name), dest)
        syntaxes[image] = pydicom.dcmread(dest).file_meta.TransferSyntaxUID
    assert syntaxes["i_jls"].is_compressed and syntaxes["i_j2k"].is_compressed
    assert "JPEG-LS" in syntaxes["i_jls"].name and "JPEG 2000" in syntaxes["i_j2k"].name
    pd.DataFrame(
        [
            {"study_id": "s1", "series_id": "x", "image_id": image, "breast_birads": "BI-RADS 2", "split": "training"}
            for image in COMPRESSED
        ]
    ).to_csv(raw / "breast-level_annotations.csv", index=False)
    pd.DataFrame([{"SOP Instance UID": image, "Patient's Age": "050Y"} for image in COMPRESSED]).to_csv(
        raw / "metadata.csv", index=False
    )
    from eqpo.data.sources import Manifest

    manifest = Manifest("VinDr-Mammo")
    table = vindr_mammo.preprocess(raw, out, manifest, 0, (0.7, 0.15, 0.15))
    assert manifest.skipped == [] and len(table) == 3
    pixels = {row.sample_id: np.asarray(Image.open(tmp_path / row.images[0])) for row in table.itertuples()}
    reference = pixels["VinDr-Mammo-i_raw"]
    assert reference.shape == (64, 64) and reference.std() > 10  # a real image, not a blank
    assert np.array_equal(pixels["VinDr-Mammo-i_jls"], reference)
    assert np.array_equal(pixels["VinDr-Mammo-i_j2k"], reference)
