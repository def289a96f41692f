"""CheXpert: a tiny copy of the release placed by hand, run through the real prepare() path: as the
four Stanford AIMI zips (``CheXpert-v1.0 batch 1 (validate & csv).zip`` with valid/, train.csv,
valid.csv; ``batch 2/3/4 (train 1/2/3).zip`` with patientNNNNN/ folders and no train/ above them),
zipped or unpacked, and as the assembled folders CheXpert-v1.0/ or CheXpert-v1.0-small/.

Quirks reproduced: -1.0 (uncertain) and blank labels (U-Zeros), rows with no positive label,
patient ids embedded in Path, "Unknown" sex, a blank age, frontal + lateral views of one patient,
a corrupt (truncated) JPEG."""

import csv
import dataclasses
import io
import json
import math
import shutil
import zipfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from eqpo.core.vocabularies import CHEXPERT_LABELS
from eqpo.data.datasets import chexpert
from eqpo.data.prepare import main, prepare
from eqpo.data.sources import IncompleteDataError, MissingDataError, train_val_fractions

HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_LABELS]
BIG, SMALL = (640, 560), (320, 390)  # (width, height): BIG is shrunk to 512 on its longer side

# (path inside the release folder, Sex, Age, view, AP/PA, {label: value}, image size or "corrupt")
TRAIN = [
    (
        "train/patient00001/study1/view1_frontal.jpg",
        "Female",
        "68",
        "Frontal",
        "AP",
        {"Cardiomegaly": "1.0", "Edema": "-1.0", "Support Devices": "1.0", "No Finding": ""},
        BIG,
    ),
    (
        "train/patient00001/study1/view2_lateral.jpg",
        "Female",
        "68",
        "Lateral",
        "",
        {"Cardiomegaly": "1.0", "Edema": "-1.0"},
        SMALL,
    ),
    ("train/patient00002/study1/view1_frontal.jpg", "Male", "45", "Frontal", "PA", {"No Finding": "1.0"}, SMALL),
    (
        "train/patient00003/study1/view1_frontal.jpg",
        "Unknown",
        "30",
        "Frontal",
        "AP",
        {"Pleural Effusion": "-1.0", "Lung Opacity": "", "Edema": "0.0"},
        SMALL,
    ),  # no positive -> skipped
    (
        "train/patient00003/study2/view1_frontal.jpg",
        "Unknown",
        "",
        "Frontal",
        "AP",
        {"Pneumonia": "1.0", "Atelectasis": "-1.0"},
        SMALL,
    ),  # Unknown sex, blank age
    ("train/patient00004/study1/view1_frontal.jpg", "Male", "80", "Frontal", "AP", {"Fracture": "1.0"}, "corrupt"),
    (
        "train/patient00005/study1/view1_frontal.jpg",
        "Female",
        "22",
        "Frontal",
        "PA",
        {"Lung Lesion": "1.0", "Pneumothorax": "1.0", "Fracture": "-1.0"},
        SMALL,
    ),
    ("train/patient00006/study1/view1_frontal.jpg", "Male", "55", "Frontal", "AP", {"Consolidation": "1.0"}, SMALL),
    ("train/patient00007/study1/view1_frontal.jpg", "Female", "77", "Frontal", "AP", {"Pleural Other": "1.0"}, SMALL),
    (
        "train/patient00008/study1/view1_frontal.jpg",
        "Male",
        "35",
        "Frontal",
        "AP",
        {"Enlarged Cardiomediastinum": "1.0", "Lung Opacity": "1.0"},
        SMALL,
    ),
]
VALID = [  # radiologist consensus: 0/1 only
    (
        "valid/patient64541/study1/view1_frontal.jpg",
        "Male",
        "73",
        "Frontal",
        "AP",
        {"Edema": "1.0", "Pleural Effusion": "1.0"},
        SMALL,
    ),
    (
        "valid/patient64541/study1/view2_lateral.jpg",
        "Male",
        "73",
        "Lateral",
        "",
        {"Edema": "1.0", "Pleural Effusion": "1.0"},
        SMALL,
    ),
    ("valid/patient64542/study1/view1_frontal.jpg", "Female", "51", "Frontal", "PA", {"No Finding": "1.0"}, SMALL),
    ("valid/patient64543/study1/view1_frontal.jpg", "Female", "40", "Frontal", "PA", {}, SMALL),  # all 0 -> skipped
]

EXPECTED = {  # sample_id -> (patient, labels, age, sex, image size)
    "CheXpert-train-patient00001-study1-view1_frontal": (
        "patient00001",
        ["Cardiomegaly", "Support Devices"],
        68.0,
        "F",
        (512, 448),
    ),
    "CheXpert-train-patient00001-study1-view2_lateral": ("patient00001", ["Cardiomegaly"], 68.0, "F", SMALL),
    "CheXpert-train-patient00002-study1-view1_frontal": ("patient00002", ["No Finding"], 45.0, "M", SMALL),
    "CheXpert-train-patient00003-study2-view1_frontal": ("patient00003", ["Pneumonia"], math.nan, None, SMALL),
    "CheXpert-train-patient00005-study1-view1_frontal": (
        "patient00005",
        ["Lung Lesion", "Pneumothorax"],
        22.0,
        "F",
        SMALL,
    ),
    "CheXpert-train-patient00006-study1-view1_frontal": ("patient00006", ["Consolidation"], 55.0, "M", SMALL),
    "CheXpert-train-patient00007-study1-view1_frontal": ("patient00007", ["Pleural Other"], 77.0, "F", SMALL),
    "CheXpert-train-patient00008-study1-view1_frontal": (
        "patient00008",
        ["Enlarged Cardiomediastinum", "Lung Opacity"],
        35.0,
        "M",
        SMALL,
    ),
    "CheXpert-valid-patient64541-study1-view1_frontal": (
        "patient64541",
        ["Edema", "Pleural Effusion"],
        73.0,
        "M",
        SMALL,
    ),
    "CheXpert-valid-patient64541-study1-view2_lateral": (
        "patient64541",
        ["Edema", "Pleural Effusion"],
        73.0,
        "M",
        SMALL,
    ),
    "CheXpert-valid-patient64542-study1-view1_frontal": ("patient64542", ["No Finding"], 51.0, "F", SMALL),
}
NO_POSITIVE = {"CheXpert-train-patient00003-study1-view1_frontal", "CheXpert-valid-patient64543-study1-view1_frontal"}
CORRUPT = "CheXpert-train-patient00004-study1-view1_frontal"


def _jpeg(size) -> bytes:
    width, height = size
    pixels = (np.add.outer(np.arange(height), np.arange(width)) % 256).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG")
    return buffer.getvalue()


def _write_release(raw, folder="CheXpert-v1.0-small", valid_value="1.0"):
    """Write <raw>/<folder>/{train.csv, valid.csv, train/..., valid/...} like the real release
    (Path column prefixed by the folder name; the label columns from column index 5)."""
    base = raw / folder
    for name, rows in (("train.csv", TRAIN), ("valid.csv", VALID)):
        base.mkdir(parents=True, exist_ok=True)
        with open(base / name, "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(HEADER)
            for path, sex, age, view, appa, labels, size in rows:
                default = "0.0" if name == "valid.csv" else ""
                writer.writerow(
                    [
                        f"{folder}/{path}",
                        sex,
                        age,
                        view,
                        appa,
                        *[labels.get(label, default) for label in CHEXPERT_LABELS],
                    ]
                )
                image = base / path
                image.parent.mkdir(parents=True, exist_ok=True)
                data = _jpeg(BIG)[:700] if size == "corrupt" else _jpeg(size)
                image.write_bytes(data)
    return base


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "data"
    _write_release(root / "CheXpert" / "raw")
    return root


def test_prepare_end_to_end(root):
    table = prepare(chexpert.SOURCE, root, seed=0)

    assert sorted(table["sample_id"]) == sorted(EXPECTED)
    for row in table.itertuples():
        patient, labels, age, sex, size = EXPECTED[row.sample_id]
        assert row.patient_id == patient
        assert list(row.labels) == labels
        assert (math.isnan(row.age) and math.isnan(age)) or row.age == age
        assert row.sex == sex
        assert row.dataset == "CheXpert"
        assert len(row.images) == 1 and row.images[0].startswith("CheXpert/images/")
        with Image.open(root / row.images[0]) as image:
            assert image.format == "PNG" and image.size == size and image.mode == "L"

    # the official valid.csv is the test split; train.csv patients are only in train/val
    is_valid = table["sample_id"].str.startswith("CheXpert-valid-")
    assert (table.loc[is_valid, "split"] == "test").all()
    assert table.loc[~is_valid, "split"].isin(["train", "val"]).all()
    assert table.groupby("patient_id")["split"].nunique().max() == 1  # frontal + lateral stay together
    # 7 train.csv patients kept, 0.7/0.15 renormalised over train+val: round(7 * 0.7 / 0.85) = 6 train, 1 val
    per_patient = table.drop_duplicates("patient_id")["split"].value_counts().to_dict()
    assert per_patient == {"train": 6, "val": 1, "test": 2}
    # explicit groups: sex|age bin, None when a demographic is missing
    groups = dict(zip(table["sample_id"], table["group"], strict=False))
    assert groups["CheXpert-train-patient00001-study1-view1_frontal"] == "F|a3"
    assert groups["CheXpert-train-patient00003-study2-view1_frontal"] is None

    manifest = json.loads((root / "CheXpert" / "manifest.json").read_text())
    reasons = {item["sample_id"]: item["reason"] for item in manifest["skipped"]}
    assert set(reasons) == NO_POSITIVE | {CORRUPT}
    assert "no positive label" in reasons["CheXpert-valid-patient64543-study1-view1_frontal"]
    assert "unreadable image" in reasons[CORRUPT]
    assert manifest["rows"] == len(EXPECTED) and manifest["missing_age"] == 1 and manifest["missing_sex"] == 1
    assert set(manifest["files"]) == {"CheXpert-v1.0-small/train.csv", "CheXpert-v1.0-small/valid.csv"}
    assert pd.read_parquet(root / "CheXpert" / "table.parquet")["sample_id"].tolist() == table["sample_id"].tolist()


def test_second_run_gives_the_same_table(root):
    first = prepare(chexpert.SOURCE, root, seed=3)
    second = prepare(chexpert.SOURCE, root, seed=3)
    pd.testing.assert_frame_equal(first, second)


def test_fractions_are_renormalised_over_train_and_val(root):
    only_val = prepare(chexpert.SOURCE, root, fractions=(0.0, 0.5, 0.5))
    train_rows = only_val["sample_id"].str.startswith("CheXpert-train-")
    assert (only_val.loc[train_rows, "split"] == "val").all()
    assert (only_val.loc[~train_rows, "split"] == "test").all()
    mixed = prepare(chexpert.SOURCE, root, seed=1, fractions=(0.5, 0.5, 0.0))
    assert set(mixed.loc[mixed["sample_id"].str.startswith("CheXpert-train-"), "split"]) == {"train", "val"}
    with pytest.raises(ValueError, match="train and val"):
        prepare(chexpert.SOURCE, root, fractions=(0.0, 0.0, 1.0))


def test_full_resolution_folder_is_accepted(tmp_path):
    root = tmp_path / "data"
    _write_release(root / "CheXpert" / "raw", folder="CheXpert-v1.0")
    table = prepare(chexpert.SOURCE, root)
    assert sorted(table["sample_id"]) == sorted(EXPECTED)
    manifest = json.loads((root / "CheXpert" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"CheXpert-v1.0/train.csv", "CheXpert-v1.0/valid.csv"}


def test_missing_files_name_the_landing_page_and_expected_files(tmp_path, capsys):
    raw = tmp_path / "data" / "CheXpert" / "raw"
    (raw / "CheXpert-v1.0-small").mkdir(parents=True)
    (raw / "CheXpert-v1.0-small" / "train.csv").write_text(",".join(HEADER) + "\n")  # half placed
    with pytest.raises(MissingDataError) as err:
        prepare(chexpert.SOURCE, tmp_path / "data")
    text = str(err.value)
    assert chexpert.LANDING_PAGE in text and "Research Use Agreement" in text
    for path in chexpert.SOURCE.expected[1:]:  # train.csv is there; the other three are listed
        assert f"- {path}" in text
    assert "- CheXpert-v1.0-small/train.csv" not in text
    assert "CheXpert-v1.0/" in text  # the alternative folder is mentioned
    assert main(["CheXpert", "--root", str(tmp_path / "data")]) == MissingDataError.exit_status
    assert chexpert.LANDING_PAGE in capsys.readouterr().err


def test_replaced_source_keeps_the_either_folder_rule(tmp_path):
    source = dataclasses.replace(chexpert.SOURCE, example_command="")
    raw = tmp_path / "raw"
    assert source.missing_files(raw) == list(chexpert.SOURCE.expected)
    _write_release(raw, folder="CheXpert-v1.0")
    assert source.missing_files(raw) == [] and source.found_folder(raw) == "CheXpert-v1.0"


def test_helpers():
    assert (
        str(chexpert.relative_image("CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg"))
        == "train/patient00001/study1/view1_frontal.jpg"
    )
    assert (
        str(chexpert.relative_image("valid/patient64541/study1/view1_frontal.jpg"))
        == "valid/patient64541/study1/view1_frontal.jpg"
    )
    assert chexpert.patient_of("CheXpert-v1.0/train/patient12345/study2/view1_frontal.jpg") == "patient12345"
    assert chexpert.patient_of("train/study2/view1_frontal.jpg") is None
    values = pd.DataFrame(
        [
            {label: v for label, v in zip(CHEXPERT_LABELS, row, strict=False)}
            for row in ([1.0, -1.0, np.nan] + [0.0] * 11, [np.nan] * 13 + [1.0], [-1.0] * 14)
        ]
    )
    assert chexpert.positives(values) == [["No Finding"], ["Support Devices"], []]
    assert train_val_fractions((0.7, 0.15, 0.15), "CheXpert") == pytest.approx((0.7 / 0.85, 0.15 / 0.85, 0.0))


def _aimi_zips(tmp_path, raw, wrapper: bool):
    """The four AIMI zips of the fixture release: batch 1 holds valid/, train.csv and valid.csv;
    the training patients are spread over batches 2-4 as patientNNNNN/ folders (no train/ above
    them). ``wrapper`` puts each zip's entries in a folder named after the zip."""
    base = _write_release(tmp_path / "assembled", folder="CheXpert-v1.0")
    raw.mkdir(parents=True, exist_ok=True)
    patients = sorted(p.name for p in (base / "train").iterdir())
    contents = {chexpert.AIMI_ZIPS[0]: [base / "train.csv", base / "valid.csv", base / "valid"]}
    for i, name in enumerate(chexpert.AIMI_ZIPS[1:]):
        contents[name] = [base / "train" / p for p in patients[i::3]]
    for name, items in contents.items():
        prefix = name[:-4] + "/" if wrapper else ""
        with zipfile.ZipFile(raw / name, "w") as bundle:
            for item in items:
                files = [item] if item.is_file() else sorted(f for f in item.rglob("*") if f.is_file())
                for f in files:
                    bundle.write(f, prefix + f.relative_to(item.parent).as_posix())
    return patients


def test_the_four_aimi_zips_are_unpacked_and_arranged(tmp_path):
    root = tmp_path / "data"
    raw = root / "CheXpert" / "raw"
    patients = _aimi_zips(tmp_path, raw, wrapper=False)
    with zipfile.ZipFile(raw / chexpert.AIMI_ZIPS[1]) as bundle:  # the layout being accepted
        assert all(n.startswith("patient") for n in bundle.namelist())
    table = prepare(chexpert.SOURCE, root, seed=0)
    assert sorted(table["sample_id"]) == sorted(EXPECTED)
    assert sorted(p.name for p in (raw / "CheXpert-v1.0" / "train").iterdir()) == patients
    assert (raw / "CheXpert-v1.0" / "valid" / "patient64541").is_dir()
    manifest = json.loads((root / "CheXpert" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"CheXpert-v1.0/train.csv", "CheXpert-v1.0/valid.csv"}
    again = prepare(chexpert.SOURCE, root, seed=0)  # a second run finds the arranged folder
    pd.testing.assert_frame_equal(table, again)


def test_the_aimi_zips_unpacked_by_hand_are_arranged(tmp_path):
    root = tmp_path / "data"
    raw = root / "CheXpert" / "raw"
    _aimi_zips(tmp_path, raw, wrapper=True)
    for archive in sorted(raw.glob("*.zip")):  # unpacked where they lie, then removed
        zipfile.ZipFile(archive).extractall(raw)
        archive.unlink()
    assert (raw / "CheXpert-v1.0 batch 3 (train 2)" / "patient00002").is_dir()
    table = prepare(chexpert.SOURCE, root, seed=0)
    assert sorted(table["sample_id"]) == sorted(EXPECTED)
    assert not list(raw.glob("CheXpert-v1.0 batch */patient*"))  # every patient moved into train/


def test_an_incomplete_aimi_download_names_the_four_zips(tmp_path):
    root = tmp_path / "data"
    raw = root / "CheXpert" / "raw"
    _aimi_zips(tmp_path, raw, wrapper=False)
    (raw / chexpert.AIMI_ZIPS[0]).unlink()  # batch 1 (the CSVs and valid/) not fetched
    with pytest.raises(MissingDataError) as err:
        prepare(chexpert.SOURCE, root)
    text = str(err.value)
    for name in chexpert.AIMI_ZIPS:
        assert name in text
    assert "- CheXpert-v1.0/train.csv" in text and "- CheXpert-v1.0/train/" not in text


def test_full_resolution_is_preferred_over_small_when_both_are_there(tmp_path):
    root = tmp_path / "data"
    raw = root / "CheXpert" / "raw"
    _write_release(raw, folder="CheXpert-v1.0-small")
    _write_release(raw, folder="CheXpert-v1.0")
    # make the two distinguishable: the full-resolution images are twice as large
    for path in (raw / "CheXpert-v1.0").rglob("*.jpg"):
        if path.stat().st_size > 1000:
            with Image.open(path) as image:
                big = image.resize((image.width * 2, image.height * 2))
            big.save(path, format="JPEG")
    table = prepare(chexpert.SOURCE, root)
    manifest = json.loads((root / "CheXpert" / "manifest.json").read_text())
    assert set(manifest["files"]) == {"CheXpert-v1.0/train.csv", "CheXpert-v1.0/valid.csv"}
    sample = "CheXpert-train-patient00002-study1-view1_frontal"
    image = table.loc[table["sample_id"] == sample, "images"].iloc[0][0]
    with Image.open(root / image) as png:
        assert png.size == (420, 512)  # 640 x 780 shrunk to 512 on the longer side: 640 * 512 / 780 = 420.1


def test_the_zips_as_published_left_zipped_give_the_full_table(tmp_path):
    """Each AIMI zip keeps its entries under a folder named after it; left zipped (the documented
    path), every training patient is still found."""
    root = tmp_path / "data"
    raw = root / "CheXpert" / "raw"
    patients = _aimi_zips(tmp_path, raw, wrapper=True)
    with zipfile.ZipFile(raw / chexpert.AIMI_ZIPS[2]) as bundle:  # the layout as published
        assert all(n.startswith("CheXpert-v1.0 batch 3 (train 2)/patient") for n in bundle.namelist())
    table = prepare(chexpert.SOURCE, root, seed=0)
    assert sorted(table["sample_id"]) == sorted(EXPECTED)
    assert sorted(p.name for p in (raw / "CheXpert-v1.0" / "train").iterdir()) == patients
    assert set(table["split"]) == {"train", "val", "test"}


def test_the_azcopy_layout_gives_the_full_table(tmp_path):
    """`azcopy copy <link> raw/ --recursive` puts the container's files one folder down."""
    root = tmp_path / "data"
    container = root / "CheXpert" / "raw" / chexpert.AZCOPY_CONTAINER
    _aimi_zips(tmp_path, container, wrapper=True)
    for other in ("README.md", "train_cheXbert.csv", "train_visualCheXbert.csv", "CHEXPERT DEMO.xlsx"):
        (container / other).write_text("x")  # the container's other files, not needed
    table = prepare(chexpert.SOURCE, root, seed=0)
    assert sorted(table["sample_id"]) == sorted(EXPECTED)
    again = prepare(chexpert.SOURCE, root, seed=0)
    pd.testing.assert_frame_equal(table, again)


def test_an_empty_train_folder_left_by_an_earlier_run_does_not_pass_for_the_data(tmp_path):
    """An earlier version left CheXpert-v1.0/train/ empty when it found no patient: that folder
    counts as missing, so the zips next to it are unpacked and arranged."""
    root = tmp_path / "data"
    raw = root / "CheXpert" / "raw"
    _aimi_zips(tmp_path, raw, wrapper=True)
    with zipfile.ZipFile(raw / chexpert.AIMI_ZIPS[0]) as bundle:
        bundle.extractall(tmp_path / "batch1")
    batch1 = tmp_path / "batch1" / chexpert.AIMI_ZIPS[0][:-4]
    target = raw / "CheXpert-v1.0"
    target.mkdir()
    for name in ("train.csv", "valid.csv", "valid"):
        (batch1 / name).rename(target / name)
    (target / "train").mkdir()
    (raw / f".{chexpert.AIMI_ZIPS[0]}.extracted").touch()
    assert chexpert.SOURCE.missing_files(raw) == ["CheXpert-v1.0/train/"]
    table = prepare(chexpert.SOURCE, root, seed=0)
    assert sorted(table["sample_id"]) == sorted(EXPECTED)


def test_no_training_patient_found_creates_no_train_folder(tmp_path):
    root = tmp_path / "data"
    raw = root / "CheXpert" / "raw"
    _aimi_zips(tmp_path, raw, wrapper=True)
    for name in chexpert.AIMI_ZIPS[1:]:  # only batch 1 (the CSVs and valid/) was fetched
        (raw / name).unlink()
    with pytest.raises(MissingDataError) as err:
        prepare(chexpert.SOURCE, root)
    assert "- CheXpert-v1.0/train/" in str(err.value)
    assert not (raw / "CheXpert-v1.0" / "train").exists()
    with pytest.raises(MissingDataError):  # a rerun still stops: nothing was left to hide the problem
        prepare(chexpert.SOURCE, root)


def test_a_far_too_small_training_split_stops_with_what_was_found_and_where(tmp_path, capsys):
    """train/ holds one of the eight training patients (the other batches never arrived): the rule
    fails, naming the counts, the folder and unreadable files, and writes no table."""
    root = tmp_path / "data"
    raw = root / "CheXpert" / "raw"
    base = _write_release(raw, folder="CheXpert-v1.0")
    for patient in (base / "train").iterdir():
        if patient.name != "patient00002":
            shutil.rmtree(patient)
    (root / "CheXpert" / "table.parquet").parent.mkdir(parents=True, exist_ok=True)
    (root / "CheXpert" / "table.parquet").write_text("an older table")
    with pytest.raises(IncompleteDataError) as err:
        prepare(chexpert.SOURCE, root)
    text = str(err.value)
    # 12 labelled rows listed: 1 train row of patient00002 + 3 valid rows readable, 8 train rows not
    assert "only 4 of the 12 labelled samples the metadata lists have a readable file (8 missing or unreadable)" in text
    assert f"Read from:   {raw}" in text and "train 1, val 0, test 3" in text
    assert "patient00001" in text and "unreadable image" in text
    assert not (root / "CheXpert" / "table.parquet").exists()  # neither a new nor the older table
    manifest = json.loads((root / "CheXpert" / "manifest.json").read_text())
    assert manifest["unreadable"] == 8
    assert main(["CheXpert", "--root", str(root)]) == IncompleteDataError.exit_status
    assert "is incomplete" in capsys.readouterr().err
