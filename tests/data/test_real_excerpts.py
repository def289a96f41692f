"""The dataset modules on excerpts of the real published files (tests/data/fixtures, CC BY 4.0, see
the README there): ct-ich's two CSVs as released (UTF-8 byte-order mark, CRLF line ends, a quoted
header with an embedded newline, fractional ages) and PAD-UFES-20's metadata.csv (26 columns, blank
demographics on the rows without background data). The images are drawn here (none is committed);
the CSVs go through the real download and preprocessing path. Expected values were read off the
excerpts by hand."""

import io
import zipfile
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from eqpo.data.datasets import hemorrhage, pad_ufes_20
from eqpo.data.prepare import prepare
from eqpo.data.records import drop_unusable
from eqpo.data.sources import Manifest, RemoteFile

FIXTURES = Path(__file__).parent / "fixtures"
ICH = FIXTURES / "ct-ich"
PAD = FIXTURES / "pad-ufes-20" / "metadata.csv"
# (patient, No_Hemorrhage) -> slices, counted in the excerpt of hemorrhage_diagnosis.csv
ICH_SLICES = {(49, 0): 9, (49, 1): 24, (50, 0): 12, (50, 1): 14, (54, 1): 28, (58, 0): 2, (58, 1): 32}


def test_the_excerpts_keep_the_published_bytes():
    raw = (ICH / "hemorrhage_diagnosis.csv").read_bytes()
    assert raw.startswith(b"\xef\xbb\xbfPatientNumber,SliceNumber,") and raw.count(b"\r\n") == 122
    assert (ICH / "patient_demographics.csv").read_text().startswith('"Patient Number","Age\n(years)","Gender"')


def test_ct_ich_diagnosis_and_demographics_read_as_published():
    diagnosis = hemorrhage.read_diagnosis(ICH / "hemorrhage_diagnosis.csv")
    assert len(diagnosis) == 121 and not diagnosis.duplicated(["patient", "slice"]).any()
    assert Counter(zip(diagnosis["patient"], diagnosis["no_hemorrhage"].astype(int), strict=False)) == ICH_SLICES
    assert diagnosis.loc[diagnosis["patient"] == 49, "slice"].tolist() == list(range(1, 34))  # 1-based
    labels = Counter(map(hemorrhage.label_of, diagnosis["no_hemorrhage"]))
    assert labels == {"Has Hemorrhage": 9 + 12 + 2, "No Hemorrhage": 24 + 14 + 28 + 32}
    demographics = hemorrhage.read_demographics(ICH / "patient_demographics.csv")
    assert demographics[49] == (35.0, "M") and demographics[54] == (60.0, "F") and demographics[58] == (44.0, "M")
    age, sex = demographics[50]
    assert age == pytest.approx(0.583333333) and sex == "F"  # 7 months, written in years
    assert sorted(demographics) == [49, 50, 54, 58]


def _jpeg(seed: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(buffer, format="JPEG")
    return buffer.getvalue()


def test_ct_ich_csvs_as_released_through_download_and_preprocessing(tmp_path, file_server, monkeypatch):
    """The two real CSVs served in the JPEG release's layout with a drawn JPEG per slice and window:
    every listed slice becomes a sample with the label and demographics of the real files."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("PHYSIONET_USERNAME", raising=False)
    monkeypatch.delenv("PHYSIONET_PASSWORD", raising=False)
    served = tmp_path / "srv"
    served.mkdir()
    for name in ("hemorrhage_diagnosis.csv", "patient_demographics.csv"):
        (served / name).write_bytes((ICH / name).read_bytes())
    diagnosis = hemorrhage.read_diagnosis(ICH / "hemorrhage_diagnosis.csv")
    for k, (patient, slice_number) in enumerate(zip(diagnosis["patient"], diagnosis["slice"], strict=False)):
        for window in hemorrhage.WINDOWS:
            path = served / hemorrhage.slice_jpeg(patient, slice_number, window)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(_jpeg(2 * k + (window == "bone")))
    base = file_server(served)
    source = replace(
        hemorrhage.JPEG_SOURCE, remote=(RemoteFile(f"{base}/hemorrhage_diagnosis.csv", "hemorrhage_diagnosis.csv"),)
    )
    table = prepare(source, tmp_path / "data", seed=0)
    assert len(table) == 121 and table["patient_id"].value_counts().to_dict() == {
        "049": 33,
        "050": 26,
        "054": 28,
        "058": 34,
    }
    has = Counter(
        p for p, labels in zip(table["patient_id"], table["labels"], strict=False) if list(labels) == ["Has Hemorrhage"]
    )
    assert has == {"049": 9, "050": 12, "058": 2}
    first = table.groupby("patient_id").first()
    assert first.loc["050", "group"] == "F|a1" and first.loc["049", "group"] == "M|a2"
    assert first.loc["054", "group"] == "F|a3" and first.loc["058", "group"] == "M|a2"
    assert table.groupby("patient_id")["split"].nunique().max() == 1
    # the demographics were fetched under the JPEG releases' spelling and saved as the code's name
    assert (tmp_path / "data" / "Hemorrhage" / "raw" / hemorrhage.DEMOGRAPHICS).is_file()


PAD_LABELS = {
    "NEV": "Nevus",
    "BCC": "Basal Cell Carcinoma",
    "ACK": "AKIEC",
    "SCC": "AKIEC",
    "SEK": "Other",
    "MEL": "Melanoma",
}


def _pad_rows():
    import csv

    with open(PAD, newline="") as handle:
        return list(csv.DictReader(handle))


def test_pad_ufes_20_metadata_reads_as_published():
    rows = _pad_rows()
    records = drop_unusable(pad_ufes_20.read_metadata(PAD), Manifest("PAD-UFES-20"))
    assert len(records) == len(rows) == 23
    assert records["native"].tolist() == [r["img_id"][:-4] for r in rows]  # ".png" dropped
    assert [labels[0] for labels in records["labels"]] == [PAD_LABELS[r["diagnostic"]] for r in rows]
    sexes = [s if isinstance(s, str) else None for s in records["sex"]]
    assert sexes == [{"FEMALE": "F", "MALE": "M"}.get(r["gender"]) for r in rows]
    assert sexes.count(None) == 9  # blank gender: the rows without background data
    assert records["age"].tolist() == [float(r["age"]) for r in rows]
    pat_46 = [r for r in rows if r["patient_id"] == "PAT_46"]
    assert (records["patient_id"] == "PAT_46").sum() == len(pat_46) == 6  # six photos of one patient's
    assert len({r["lesion_id"] for r in pat_46}) == 3  # three lesions


def test_pad_ufes_20_metadata_through_the_mendeley_archive_layout(tmp_path, file_server):
    """The real metadata.csv in the Mendeley zip's layout (images in nested zips imgs_part_k.zip)."""
    rows = _pad_rows()
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as bundle:
        for k, row in enumerate(rows):
            buffer = io.BytesIO()
            Image.fromarray(np.full((12, 16, 3), 10 * k, dtype=np.uint8)).save(buffer, format="PNG")
            bundle.writestr(f"imgs_part_1/{row['img_id']}", buffer.getvalue())
    served = tmp_path / "srv"
    served.mkdir()
    with zipfile.ZipFile(served / pad_ufes_20.ARCHIVE, "w") as bundle:
        bundle.writestr("metadata.csv", PAD.read_bytes())
        bundle.writestr("images/imgs_part_1.zip", inner.getvalue())
    source = replace(
        pad_ufes_20.SOURCE,
        remote=(RemoteFile(f"{file_server(served)}/{pad_ufes_20.ARCHIVE}", pad_ufes_20.ARCHIVE, extract=True),),
    )
    table = prepare(source, tmp_path / "data", seed=0)
    assert sorted(table["sample_id"]) == sorted(f"PAD-UFES-20-{r['img_id'][:-4]}" for r in rows)
    assert table.groupby("patient_id")["split"].nunique().max() == 1
