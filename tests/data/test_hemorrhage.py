"""Hemorrhage, the NIfTI release (PhysioNet ct-ich 1.3.1, the data.hemorrhage_release option): a
tiny copy of the release served behind Basic auth, run through the real prepare() path (credentials
-> download -> checksums -> preprocess). The JPEG release (the default) is tested in
test_hemorrhage_jpeg.py.

Fixture quirks copied from the release: the demographics CSV with the embedded newline in
``Age\\n(years)`` and the two-row hemorrhage-type header (``...diagnosis `` + ``Unnamed: 4..7``), served
under the lower-case name ``patient_demographics.csv``; NIfTI volumes in Hounsfield units; a patient
missing from the demographics; a corrupt .nii; a patient listed in the diagnosis CSV whose scan is
not served (as 59-65 in the release); PhysioNet's SHA256SUMS.txt.
"""

import csv
import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from eqpo.data.datasets import hemorrhage
from eqpo.data.prepare import prepare
from eqpo.data.sources import MissingDataError, RemoteFile, patient_split

from dataset_fixtures import write_ct_ich_demographics

CREDENTIALS = ("alice", "s3cret")
# patient -> (X, Y, Z) volume shape; 54 is wider than 512 to exercise the resize
SHAPES = {49: (16, 16, 4), 50: (16, 16, 4), 51: (16, 16, 4), 54: (520, 24, 2), 55: (16, 16, 3)}
CORRUPT, NOT_SERVED = 52, 53
# (patient, slice, No_Hemorrhage) rows of hemorrhage_diagnosis_raw_ct.csv
DIAGNOSIS = [
    (49, 1, 1),
    (49, 2, 0),
    (49, 3, 0),
    (50, 1, 1),
    (50, 2, 1),
    (51, 1, 0),
    (51, 2, 1),
    (52, 1, 0),
    (52, 2, 1),
    (53, 1, 1),
    (54, 1, 1),
    (54, 2, 0),
    (55, 1, 1),
    (55, 2, 1),
    (55, 3, 0),
]
DEMOGRAPHICS = {
    49: ("35", "Male"),
    50: ("12", "Female"),
    52: ("70", "Male"),
    53: ("44", "Female"),
    54: ("81", "Female"),
    55: ("", "Male"),
}  # 51 absent; 55 has no age


def _volume(patient: int) -> np.ndarray:
    shape = SHAPES[patient]
    hu = np.linspace(-1000, 2000, num=int(np.prod(shape)), dtype=np.float32).reshape(shape) + patient
    hu[1, 2, :] = 40.0  # brain-window centre at (x=1, y=2): pixel (row 2, column 1) of every slice
    return hu


def _write_demographics(path: Path) -> None:
    write_ct_ich_demographics(path, DEMOGRAPHICS, intraparenchymal=(49,))


def build_release(directory: Path, checksums: bool = True) -> Path:
    """The ct-ich 1.3.1 layout (the parts used) in ``directory``, as PhysioNet serves it."""
    (directory / "ct_scans").mkdir(parents=True)
    with open(directory / "hemorrhage_diagnosis_raw_ct.csv", "w", newline="") as handle:
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
            out.writerow([patient, slice_number, 0, 1 - no_hem, 0, 0, 0, no_hem, 0])
    _write_demographics(directory / "patient_demographics.csv")
    for patient in SHAPES:
        image = nibabel.Nifti1Image(_volume(patient).astype(np.int16), np.eye(4))
        nibabel.save(image, str(directory / "ct_scans" / f"{patient:03d}.nii"))
    (directory / "ct_scans" / f"{CORRUPT:03d}.nii").write_bytes(b"not a nifti file" * 20)
    if checksums:
        files = sorted(p for p in directory.rglob("*") if p.is_file())
        lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()} {p.relative_to(directory).as_posix()}" for p in files]
        (directory / "SHA256SUMS.txt").write_text("\n".join(lines) + "\n")
    return directory


def test_source(base: str, sha256: str | None = None):
    return replace(
        hemorrhage.NIFTI_SOURCE,
        remote=(RemoteFile(f"{base}/hemorrhage_diagnosis_raw_ct.csv", "hemorrhage_diagnosis_raw_ct.csv", sha256),),
    )


test_source.__test__ = False  # a helper, not a test


@pytest.fixture
def credentials(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.netrc of the machine running the tests
    monkeypatch.setenv("PHYSIONET_USERNAME", CREDENTIALS[0])
    monkeypatch.setenv("PHYSIONET_PASSWORD", CREDENTIALS[1])


@pytest.fixture
def served(tmp_path, file_server, credentials):
    directory = build_release(tmp_path / "srv")
    return directory, file_server(directory, credentials=CREDENTIALS)


def test_prepare_end_to_end(tmp_path, served):
    directory, base = served
    root = tmp_path / "data"
    table = prepare(test_source(base), root, seed=3)

    raw = root / "Hemorrhage" / "raw-1.3.1"
    assert (raw / "Patient_demographics.csv").read_bytes() == (directory / "patient_demographics.csv").read_bytes()
    assert sorted(p.name for p in (raw / "ct_scans").iterdir()) == [
        "049.nii",
        "050.nii",
        "051.nii",
        "052.nii",
        "054.nii",
        "055.nii",
    ]
    assert not (raw / "ct_scans.part").exists()

    kept = [(p, s, n) for p, s, n in DIAGNOSIS if p not in (CORRUPT, NOT_SERVED)]
    assert list(table["sample_id"]) == [f"Hemorrhage-{p:03d}-{s:03d}" for p, s, _ in kept]
    assert list(table["patient_id"]) == [f"{p:03d}" for p, _, _ in kept]
    assert [list(x) for x in table["labels"]] == [["No Hemorrhage" if n else "Has Hemorrhage"] for _, _, n in kept]
    by_patient = table.groupby("patient_id").first()
    assert by_patient.loc["049", "age"] == 35.0 and by_patient.loc["049", "sex"] == "M"
    assert by_patient.loc["050", "age"] == 12.0 and by_patient.loc["050", "sex"] == "F"
    assert np.isnan(by_patient.loc["051", "age"]) and by_patient.loc["051", "sex"] is None  # not in the CSV
    assert np.isnan(by_patient.loc["055", "age"]) and by_patient.loc["055", "sex"] == "M"  # blank age
    assert by_patient.loc["054", "group"] == "F|a4" and by_patient.loc["049", "group"] == "M|a2"
    assert table.loc[table["patient_id"] == "051", "group"].isna().all()

    expected_split = patient_split(["049", "050", "051", "054", "055"], seed=3)
    assert dict(zip(table["patient_id"], table["split"], strict=False)) == expected_split
    assert table.groupby("patient_id")["split"].nunique().max() == 1

    for images, patient in zip(table["images"], table["patient_id"], strict=False):
        assert len(images) == 2 and images[0].endswith("_brain.png") and images[1].endswith("_bone.png")
        assert all(i.startswith("Hemorrhage/images/") for i in images)
        brain, bone = (Image.open(root / i) for i in images)
        assert brain.format == "PNG" and brain.mode == "L"
        x, y = SHAPES[int(patient)][:2]
        assert brain.size == ((512, round(y * 512 / x)) if x > 512 else (x, y)) and bone.size == brain.size
        if x <= 512:
            # the JPEG release's windows: brain level 40 width 120 -> HU 40 maps to (40 + 20) / 120 * 255
            # = 127.5 -> 127; bone level 700 width 3200 -> (40 + 900) / 3200 * 255 = 74.9 -> 74
            assert brain.getpixel((1, 2)) == 127
            assert bone.getpixel((1, 2)) == 74

    manifest = json.loads((root / "Hemorrhage" / "manifest.json").read_text())
    skipped = {s["sample_id"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {"Hemorrhage-052-001", "Hemorrhage-052-002", "Hemorrhage-053-001"}
    assert "052.nii" in skipped["Hemorrhage-052-001"] and "no CT volume" in skipped["Hemorrhage-053-001"]
    assert manifest["rows"] == len(kept) and manifest["missing_age"] == 2 + 3 and manifest["missing_sex"] == 2
    assert manifest["files"]["Patient_demographics.csv"] != "missing"
    pd.testing.assert_frame_equal(
        pd.read_parquet(root / "Hemorrhage" / "table.parquet")[["sample_id", "split"]], table[["sample_id", "split"]]
    )


def test_second_run_reuses_the_downloads(tmp_path, served):
    directory, base = served
    root = tmp_path / "data"
    first = prepare(test_source(base), root, seed=0)
    shutil.rmtree(directory)  # the server has nothing now
    second = prepare(test_source(base), root, seed=0)
    pd.testing.assert_frame_equal(first, second)


def test_wrong_sha256_raises(tmp_path, served):
    _, base = served
    with pytest.raises(IOError, match="checksum mismatch"):
        prepare(test_source(base, sha256="0" * 64), tmp_path / "data")


def test_published_checksum_mismatch_raises(tmp_path, served):
    directory, base = served
    sums = directory / "SHA256SUMS.txt"
    sums.write_text(
        sums.read_text().replace(
            hashlib.sha256((directory / "ct_scans" / "050.nii").read_bytes()).hexdigest(), "f" * 64
        )
    )
    with pytest.raises(IOError, match="checksum mismatch"):
        prepare(test_source(base), tmp_path / "data")
    assert not (tmp_path / "data" / "Hemorrhage" / "raw-1.3.1" / "ct_scans").exists()  # not taken as complete


def test_missing_credentials_stop_with_instructions_or_skip(tmp_path, served, monkeypatch):
    _, base = served
    monkeypatch.delenv("PHYSIONET_USERNAME")
    monkeypatch.delenv("PHYSIONET_PASSWORD")
    root = tmp_path / "data"
    with pytest.raises(MissingDataError) as err:
        prepare(test_source(base), root)
    text = str(err.value)
    assert "no PhysioNet credentials" in text and hemorrhage.LANDING_PAGES["1.3.1"] in text
    for name in ("hemorrhage_diagnosis_raw_ct.csv", "Patient_demographics.csv", "ct_scans/"):
        assert f"- {name}" in text

    table = prepare(test_source(base), root, skip_unavailable=True)
    assert table.empty and pd.read_parquet(root / "Hemorrhage" / "table.parquet").empty
    manifest = json.loads((root / "Hemorrhage" / "manifest.json").read_text())
    assert manifest["skipped"] is True and hemorrhage.LANDING_PAGES["1.3.1"] in manifest["reason"]


def test_wrong_credentials_are_refused(tmp_path, served, monkeypatch):
    _, base = served
    monkeypatch.setenv("PHYSIONET_PASSWORD", "wrong")
    with pytest.raises(MissingDataError, match="refused access"):
        prepare(test_source(base), tmp_path / "data")


def test_release_without_checksums_and_with_the_served_name(tmp_path, file_server, credentials):
    directory = build_release(tmp_path / "srv", checksums=False)
    (directory / "patient_demographics.csv").rename(directory / "Patient_demographics.csv")
    table = prepare(test_source(file_server(directory, credentials=CREDENTIALS)), tmp_path / "data")
    assert len(table) == 12 and table["age"].notna().sum() == 12 - 2 - 3


def test_read_demographics_is_defensive(tmp_path):
    path = tmp_path / "patient_demographics.csv"
    _write_demographics(path)
    assert hemorrhage.find_demographics(tmp_path) == path
    parsed = hemorrhage.read_demographics(path)
    assert set(parsed) == {49, 50, 52, 53, 54, 55}  # the subtype header row is not a patient
    assert parsed[49] == (35.0, "M") and parsed[53] == (44.0, "F") and np.isnan(parsed[55][0])
    # the same table read by pandas shows the quirks the parser copes with
    columns = list(pd.read_csv(path).columns)
    assert "Age\n(years)" in columns and "Hemorrhage type based on the radiologists diagnosis " in columns
    assert "Unnamed: 4" in columns and "Unnamed: 7" in columns
    # header variants: extra spaces, other case, "Sex" instead of "Gender", a title row above the header
    path.write_text('Demographics\n" patient  number ","AGE (years)",Sex\n7,60,female\n8,n/a,?\n')
    assert hemorrhage.read_demographics(path)[7] == (60.0, "F")
    age, sex = hemorrhage.read_demographics(path)[8]
    assert np.isnan(age) and sex is None
    assert hemorrhage.read_demographics(None) == {} and hemorrhage.read_demographics(tmp_path / "absent.csv") == {}
    path.write_text("id,years\n1,2\n")
    with pytest.raises(ValueError, match="no header row"):
        hemorrhage.read_demographics(path)


def test_demographics_placed_by_hand_under_the_other_spelling(tmp_path, file_server, credentials):
    directory = build_release(tmp_path / "srv", checksums=False)
    raw = tmp_path / "data" / "Hemorrhage" / "raw-1.3.1"
    raw.mkdir(parents=True)
    (directory / "patient_demographics.csv").rename(raw / "patient_demographics.csv")  # not served at all
    table = prepare(test_source(file_server(directory, credentials=CREDENTIALS)), tmp_path / "data")
    assert (raw / "Patient_demographics.csv").exists() and table["sex"].notna().sum() == 12 - 2
