"""Hemorrhage, the JPEG release the paper used (PhysioNet ct-ich 1.2.0, open access; also the Kaggle
mirror vbookshelf/computed-tomography-ct-images): a tiny copy of the release served without a login
(and once behind one), run through the real prepare() path.

Layout copied from the release: ``hemorrhage_diagnosis.csv`` (one row per slice),
``Patient_demographics.csv`` (embedded newline in ``Age\\n(years)``, two-row subtype header),
``Patients_CT/NNN/{brain,bone}/N.jpg`` with N the SliceNumber, masks ``N_HGE_Seg.jpg`` next to the
brain slices (not used), PhysioNet's ``SHA256SUMS.txt``. Quirks: a slice whose bone JPEG is not
served, a corrupt JPEG, a blank No_Hemorrhage, a patient missing from the demographics.
"""

import csv
import hashlib
import io
import json
import shutil
import zipfile
from dataclasses import replace
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from eqpo.data.datasets import hemorrhage
from eqpo.data.prepare import get_source, get_sources, prepare
from eqpo.data.sources import MissingDataError, RemoteFile, patient_split

from dataset_fixtures import write_ct_ich_demographics
from snakemake_run import run_snakemake

# (patient, slice, No_Hemorrhage) rows of hemorrhage_diagnosis.csv; "" = blank
DIAGNOSIS = [
    (49, 1, 1),
    (49, 2, 0),
    (49, 3, 0),
    (50, 1, 1),
    (50, 2, 1),
    (51, 1, 0),
    (51, 2, 1),
    (52, 1, 1),
    (53, 1, ""),
    (53, 2, 0),
    (58, 10, 1),
    (58, 11, 0),
]
DEMOGRAPHICS = {
    49: ("35", "Male"),
    50: ("12", "Female"),
    52: ("70", "Male"),
    53: ("44", "Female"),
    58: ("81", "Female"),
}  # 51 absent
NO_BONE, CORRUPT, BLANK = (50, 2), (51, 1), (53, 1)
SIDE = 24  # the JPEGs are SIDE x SIDE grayscale
PATCH = 160  # a flat patch in the corner (JPEG keeps flat 8x8 blocks nearly exact)


def _pixels(patient: int, slice_number: int, window: str) -> np.ndarray:
    base = (patient * 3 + slice_number * 7 + (0 if window == "brain" else 90)) % 200
    pixels = np.full((SIDE, SIDE), base, dtype=np.uint8)
    pixels[:8, :8] = PATCH
    return pixels


def _jpeg(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def _write_demographics(path: Path) -> None:
    write_ct_ich_demographics(path, DEMOGRAPHICS)


def build_release(directory: Path, checksums: bool = True) -> Path:
    """The ct-ich 1.2.0 (JPEG) layout in ``directory``, as PhysioNet serves it."""
    directory.mkdir(parents=True, exist_ok=True)
    with open(directory / "hemorrhage_diagnosis.csv", "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(
            [
                "PatientNumber",
                "SliceNumber",
                "Intraventricular",
                "Intraparenchymal",
                "Subarachnoid",
                "Epidural",
                "Subdural",
                "No_Hemorrhage",
                "Fracture_Yes_No",
            ]
        )
        for patient, slice_number, no_hem in DIAGNOSIS:
            has = "" if no_hem == "" else 1 - no_hem
            out.writerow([patient, slice_number, 0, has, 0, 0, 0, no_hem, 0])
    _write_demographics(directory / "Patient_demographics.csv")
    for patient, slice_number, no_hem in DIAGNOSIS:
        for window in ("brain", "bone"):
            if (patient, slice_number) == NO_BONE and window == "bone":
                continue
            path = directory / "Patients_CT" / f"{patient:03d}" / window / f"{slice_number}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            data = _jpeg(_pixels(patient, slice_number, window))
            path.write_bytes(data[:200] if (patient, slice_number) == CORRUPT and window == "brain" else data)
        if no_hem == 0:
            mask = directory / "Patients_CT" / f"{patient:03d}" / "brain" / f"{slice_number}_HGE_Seg.jpg"
            mask.write_bytes(_jpeg(np.zeros((SIDE, SIDE), dtype=np.uint8)))
    if checksums:
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.relative_to(directory).as_posix()}" for p in files]
        (directory / "SHA256SUMS.txt").write_text("\n".join(lines) + "\n")
    return directory


def jpeg_source(base: str):
    return replace(
        hemorrhage.JPEG_SOURCE, remote=(RemoteFile(f"{base}/hemorrhage_diagnosis.csv", "hemorrhage_diagnosis.csv"),)
    )


@pytest.fixture
def no_login(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc of the machine running the tests
    monkeypatch.delenv("PHYSIONET_USERNAME", raising=False)
    monkeypatch.delenv("PHYSIONET_PASSWORD", raising=False)


KEPT = [(p, s, n) for p, s, n in DIAGNOSIS if (p, s) not in (NO_BONE, CORRUPT, BLANK)]


def test_the_sources_are_tried_in_the_stated_order():
    order = [hemorrhage.JPEG_SOURCE, hemorrhage.KAGGLE_SOURCE, hemorrhage.NIFTI_SOURCE]
    assert get_sources("Hemorrhage") == order and get_sources("Hemorrhage", "auto") == order
    assert get_source("Hemorrhage") is hemorrhage.JPEG_SOURCE
    assert get_sources("Hemorrhage", "1.2.0") == [hemorrhage.JPEG_SOURCE]
    assert get_sources("Hemorrhage", "1.0.0") == [hemorrhage.KAGGLE_SOURCE]
    assert get_sources("Hemorrhage", "1.3.1") == [hemorrhage.NIFTI_SOURCE]
    assert hemorrhage.JPEG_SOURCE.access.value == "open_url" and "CC BY 4.0" in hemorrhage.JPEG_SOURCE.license
    assert hemorrhage.KAGGLE_SOURCE.access.value == "kaggle" and "1.0.0" in hemorrhage.KAGGLE_SOURCE.label
    assert len({s.raw_name for s in order}) == 3  # each source has its own folder
    with pytest.raises(ValueError, match="no release '1.1.0'.*auto.*1.2.0.*1.0.0.*1.3.1"):
        get_sources("Hemorrhage", "1.1.0")


def test_prepare_downloads_without_a_login_and_preprocesses(tmp_path, file_server, no_login):
    directory = build_release(tmp_path / "srv")
    root = tmp_path / "data"
    table = prepare(jpeg_source(file_server(directory)), root, seed=4)

    raw = root / "Hemorrhage" / "raw"
    assert (raw / "Patients_CT" / "049" / "bone" / "3.jpg").exists() and not (raw / "Patients_CT.part").exists()
    assert not list(raw.glob("Patients_CT/*/brain/*_HGE_Seg.jpg"))  # masks are not fetched
    assert list(table["sample_id"]) == [f"Hemorrhage-{p:03d}-{s:03d}" for p, s, _ in KEPT]
    assert [list(x) for x in table["labels"]] == [["No Hemorrhage" if n else "Has Hemorrhage"] for _, _, n in KEPT]
    first = table.groupby("patient_id").first()
    assert first.loc["049", "age"] == 35.0 and first.loc["049", "sex"] == "M" and first.loc["049", "group"] == "M|a2"
    assert first.loc["058", "group"] == "F|a4"
    assert np.isnan(first.loc["051", "age"]) and first.loc["051", "sex"] is None  # not in the demographics
    assert dict(zip(table["patient_id"], table["split"], strict=False)) == patient_split(
        ["049", "050", "051", "052", "053", "058"], seed=4
    )
    for (patient, slice_number, _), images in zip(KEPT, table["images"], strict=False):
        assert images == [
            f"Hemorrhage/images/{patient:03d}/{patient:03d}_{slice_number:03d}_{w}.png" for w in ("brain", "bone")
        ]
        for window, image in zip(("brain", "bone"), images, strict=False):
            with Image.open(root / image) as png:
                assert png.format == "PNG" and png.mode == "L" and png.size == (SIDE, SIDE)
                pixels = np.asarray(png).astype(int)
            expected = _pixels(patient, slice_number, window).astype(int)
            assert np.abs(pixels - expected).max() <= 2  # the JPEG's pixels, up to JPEG rounding

    manifest = json.loads((root / "Hemorrhage" / "manifest.json").read_text())
    reasons = {s["sample_id"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"Hemorrhage-050-002", "Hemorrhage-051-001", "Hemorrhage-053-001"}
    assert "no image Patients_CT/050/bone/2.jpg" in reasons["Hemorrhage-050-002"]
    assert "1.jpg" in reasons["Hemorrhage-051-001"] and "not 0/1" in reasons["Hemorrhage-053-001"]
    assert manifest["release"] == hemorrhage.JPEG_SOURCE.label and "1.2.0" in manifest["release"]
    assert (
        manifest["files"]["hemorrhage_diagnosis.csv"]
        == hashlib.sha256((directory / "hemorrhage_diagnosis.csv").read_bytes()).hexdigest()
    )
    assert manifest["files"]["Patients_CT"] == f"{2 * len(DIAGNOSIS) - 1} JPEG files"
    # 9 samples against the published 2.5K
    assert manifest["paper"] == {
        "published_as": "2.5K",
        "low": 2450.0,
        "high": 2550.0,
        "samples": 9,
        "within_rounding": False,
    }


def test_a_second_run_reuses_the_files(tmp_path, file_server, no_login):
    directory = build_release(tmp_path / "srv")
    first = prepare(jpeg_source(file_server(directory)), tmp_path / "data", seed=1)
    shutil.rmtree(directory)
    second = prepare(jpeg_source("http://127.0.0.1:9"), tmp_path / "data", seed=1)
    pd.testing.assert_frame_equal(first, second)


def test_published_checksum_mismatch_stops_and_is_not_taken_as_complete(tmp_path, file_server, no_login):
    directory = build_release(tmp_path / "srv")
    sums = directory / "SHA256SUMS.txt"
    good = hashlib.sha256((directory / "Patients_CT" / "049" / "brain" / "2.jpg").read_bytes()).hexdigest()
    sums.write_text(sums.read_text().replace(good, "e" * 64))
    with pytest.raises(IOError, match="checksum mismatch"):
        prepare(jpeg_source(file_server(directory)), tmp_path / "data")
    assert not (tmp_path / "data" / "Hemorrhage" / "raw" / "Patients_CT").exists()


def test_a_server_that_asks_for_a_login_gets_physionet_credentials_when_set(
    tmp_path, file_server, no_login, monkeypatch
):
    directory = build_release(tmp_path / "srv", checksums=False)
    base = file_server(directory, credentials=("ann", "pw"))
    with pytest.raises(MissingDataError) as err:
        prepare(jpeg_source(base), tmp_path / "data")
    text = str(err.value)
    assert "refused the download (HTTP 401) although it needs no login" in text
    assert hemorrhage.LANDING_PAGES["1.2.0"] in text and "- Patients_CT/" in text
    monkeypatch.setenv("PHYSIONET_USERNAME", "ann")
    monkeypatch.setenv("PHYSIONET_PASSWORD", "pw")
    table = prepare(jpeg_source(base), tmp_path / "data")
    assert len(table) == len(KEPT)


def test_the_kaggle_mirror_unzipped_by_hand_is_used_as_it_is(tmp_path, no_login):
    """The mirror's zip unpacks into one folder named after the release; nothing is downloaded."""
    directory = build_release(tmp_path / "release", checksums=False)
    (directory / "Patient_demographics.csv").rename(directory / "patient_demographics.csv")  # the v1.0 spelling
    archive = tmp_path / "computed-tomography-ct-images.zip"
    top = "computed-tomography-images-for-intracranial-hemorrhage-detection-and-segmentation-1.0.0"
    with zipfile.ZipFile(archive, "w") as bundle:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                bundle.write(path, f"{top}/{path.relative_to(directory).as_posix()}")
    raw = tmp_path / "data" / "Hemorrhage" / "raw"
    raw.mkdir(parents=True)
    zipfile.ZipFile(archive).extractall(raw)
    table = prepare(jpeg_source("http://127.0.0.1:9"), tmp_path / "data")  # nothing is served there
    assert list(table["sample_id"]) == [f"Hemorrhage-{p:03d}-{s:03d}" for p, s, _ in KEPT]
    assert table["age"].notna().sum() == len(KEPT) - 1  # the demographics were found under the other spelling
    assert hemorrhage.release_folder(raw) == raw / top


def test_both_releases_give_the_same_images(tmp_path, no_login):
    """A NIfTI slice windowed by the pipeline equals the JPEG release's slice, which the release
    README says was windowed at brain level 40 width 120 and bone level 700 width 3200."""
    hu = np.linspace(-1200, 2600, SIDE * SIDE).round().astype(np.float32).reshape(SIDE, SIDE)  # (Y, X), whole HU
    hu[:8, :8] = 60.0

    def readme_window(level, width):  # written out from the README's numbers, not taken from the code
        return np.clip((hu - (level - width / 2)) * 255.0 / width, 0, 255).astype(np.uint8)

    jpeg_dir = build_release(tmp_path / "jpeg", checksums=False)
    for window, (level, width) in (("brain", (40, 120)), ("bone", (700, 3200))):
        lossless = io.BytesIO()
        Image.fromarray(readme_window(level, width), mode="L").save(lossless, format="PNG")  # exact pixels
        (jpeg_dir / "Patients_CT" / "049" / window / "1.jpg").write_bytes(lossless.getvalue())
    nifti_dir = tmp_path / "nifti"
    (nifti_dir / "ct_scans").mkdir(parents=True)
    (nifti_dir / "hemorrhage_diagnosis_raw_ct.csv").write_text("PatientNumber,SliceNumber,No_Hemorrhage\n49,1,1\n")
    shutil.copy(jpeg_dir / "Patient_demographics.csv", nifti_dir / "Patient_demographics.csv")
    volume = hu.T[:, :, None].astype(np.int16)  # the NIfTI axes are (X, Y, slice)
    nibabel.save(nibabel.Nifti1Image(volume, np.eye(4)), str(nifti_dir / "ct_scans" / "049.nii"))

    root_a, root_b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(jpeg_dir, root_a / "Hemorrhage" / "raw")
    shutil.copytree(nifti_dir, root_b / "Hemorrhage" / "raw-1.3.1")
    from_jpeg = prepare("Hemorrhage", root_a)
    from_nifti = prepare("Hemorrhage", root_b, release="1.3.1")
    row_a = from_jpeg[from_jpeg["sample_id"] == "Hemorrhage-049-001"].iloc[0]
    row_b = from_nifti.iloc[0]
    assert row_b["sample_id"] == "Hemorrhage-049-001"
    for image_a, image_b in zip(row_a["images"], row_b["images"], strict=False):
        a = np.asarray(Image.open(root_a / image_a))
        b = np.asarray(Image.open(root_b / image_b))
        assert a.shape == b.shape == (SIDE, SIDE)
        assert np.array_equal(a, b)
    assert np.asarray(Image.open(root_b / row_b["images"][0]))[0, 0] == 170  # HU 60: (60 + 20) * 255 / 120 = 170


def test_the_release_is_a_validated_config_key(tmp_path):

    repo = Path(__file__).resolve().parents[2]

    def dry_run(value: str):
        overlay = tmp_path / "release.yaml"
        overlay.write_text(f'data:\n  datasets: [Hemorrhage]\n  hemorrhage_release: "{value}"\n')
        return run_snakemake(
            tmp_path, "-n", "data/paper/Hemorrhage/table.parquet", configs=[repo / "config.yaml", overlay], check=False
        )

    assert dry_run("1.3.1").returncode == 0
    bad = dry_run("1.1.0")
    assert bad.returncode != 0 and "hemorrhage_release" in bad.stdout + bad.stderr


MIRROR_TOP = "computed-tomography-images-for-intracranial-hemorrhage-detection-and-segmentation-1.0.0"


def _kaggle_zip(tmp_path: Path, served: Path) -> None:
    """The Kaggle mirror's download: one zip whose entries sit under the release's folder, with the
    demographics under the JPEG releases' spelling."""
    directory = build_release(tmp_path / "mirror", checksums=False)
    (directory / "Patient_demographics.csv").rename(directory / "patient_demographics.csv")
    served.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(served / "computed-tomography-ct-images.zip", "w") as bundle:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                bundle.write(path, f"{MIRROR_TOP}/{path.relative_to(directory).as_posix()}")


def _ordered(physionet_base: str, kaggle_base: str, nifti_base: str) -> list:
    """The three sources in the module's order, their URLs pointed at test servers."""
    return [
        jpeg_source(physionet_base),
        replace(
            hemorrhage.KAGGLE_SOURCE,
            remote=(RemoteFile(f"{kaggle_base}/computed-tomography-ct-images.zip", "kaggle.zip", extract=True),),
        ),
        replace(
            hemorrhage.NIFTI_SOURCE,
            remote=(RemoteFile(f"{nifti_base}/hemorrhage_diagnosis_raw_ct.csv", "hemorrhage_diagnosis_raw_ct.csv"),),
        ),
    ]


@pytest.fixture
def no_kaggle(monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle"))


@pytest.mark.parametrize("gone", [404, 403])
def test_when_physionet_no_longer_serves_1_2_0_the_kaggle_mirror_is_used(
    tmp_path, file_server, no_login, no_kaggle, monkeypatch, gone
):
    empty = tmp_path / "empty"
    empty.mkdir()
    physionet = file_server(empty) if gone == 404 else file_server(empty, refuse=403)
    _kaggle_zip(tmp_path, tmp_path / "kaggle")
    kaggle = file_server(tmp_path / "kaggle", credentials=("kuser", "kkey"))
    monkeypatch.setenv("KAGGLE_USERNAME", "kuser")
    monkeypatch.setenv("KAGGLE_KEY", "kkey")
    root = tmp_path / "data"
    table = prepare(_ordered(physionet, kaggle, "http://127.0.0.1:9"), root, seed=4)
    assert list(table["sample_id"]) == [f"Hemorrhage-{p:03d}-{s:03d}" for p, s, _ in KEPT]
    assert (root / "Hemorrhage" / "raw-1.0.0" / MIRROR_TOP / "Patients_CT" / "049" / "brain" / "1.jpg").is_file()
    manifest = json.loads((root / "Hemorrhage" / "manifest.json").read_text())
    assert manifest["release"] == hemorrhage.KAGGLE_SOURCE.label and "1.0.0" in manifest["release"]
    assert table["age"].notna().sum() == len(KEPT) - 1  # demographics read under the other spelling


def test_when_no_source_is_available_one_block_names_each_and_skip_is_honoured(
    tmp_path, file_server, no_login, no_kaggle
):
    empty = tmp_path / "empty"
    empty.mkdir()
    sources = _ordered(file_server(empty), "http://127.0.0.1:9", "http://127.0.0.1:9")
    root = tmp_path / "data"
    with pytest.raises(MissingDataError) as err:
        prepare(sources, root)
    text = str(err.value)
    assert text.startswith("Dataset Hemorrhage is not available from any of its 3 sources, tried in this order:")
    positions = [text.index(f"{k}. {source.label}: ") for k, source in enumerate(sources, start=1)]
    assert positions == sorted(positions)
    assert "HTTP 404" in text and "no Kaggle token" in text and "no PhysioNet credentials" in text
    for page in (hemorrhage.LANDING_PAGES["1.2.0"], hemorrhage.KAGGLE_PAGE, hemorrhage.LANDING_PAGES["1.3.1"]):
        assert page in text
    for folder in ("raw/", "raw-1.0.0/", "raw-1.3.1/"):
        assert str(root / "Hemorrhage" / folder) in text
    assert text.count("data.skip_unavailable") == 1  # one block, one closing line

    table = prepare(sources, root, skip_unavailable=True)
    assert table.empty and pd.read_parquet(root / "Hemorrhage" / "table.parquet").empty
    manifest = json.loads((root / "Hemorrhage" / "manifest.json").read_text())
    assert manifest["skipped"] is True and hemorrhage.KAGGLE_PAGE in manifest["reason"]


def test_a_source_already_on_disk_is_used_without_asking_the_earlier_ones(tmp_path, file_server, no_login, no_kaggle):
    """The mirror unpacked by hand under raw-1.0.0/ is used although PhysioNet would serve 1.2.0."""
    _kaggle_zip(tmp_path, tmp_path / "kaggle")
    raw = tmp_path / "data" / "Hemorrhage" / "raw-1.0.0"
    raw.mkdir(parents=True)
    zipfile.ZipFile(tmp_path / "kaggle" / "computed-tomography-ct-images.zip").extractall(raw)
    physionet = file_server(build_release(tmp_path / "srv"))
    table = prepare(_ordered(physionet, "http://127.0.0.1:9", "http://127.0.0.1:9"), tmp_path / "data")
    assert len(table) == len(KEPT)
    assert not (tmp_path / "data" / "Hemorrhage" / "raw").exists()  # nothing was downloaded from PhysioNet
    manifest = json.loads((tmp_path / "data" / "Hemorrhage" / "manifest.json").read_text())
    assert "1.0.0" in manifest["release"]
