"""The shared data machinery: resumable download, checksums, credentials, archives, splits,
instructions for missing data, custom datasets and the verl export."""

import hashlib
import io
import json
import zipfile
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from eqpo.core.vocabularies import PAPER_DATASETS, get_spec
from eqpo.data.custom import load_custom
from eqpo.data.export import FORMAT_INSTRUCTION, export_verl, to_verl
from eqpo.data.fetch import download, extract, obtain
from eqpo.data.prepare import prepare
from eqpo.data.sources import (
    Access,
    DatasetSource,
    IncompleteDataError,
    Manifest,
    MissingDataError,
    RemoteFile,
    completeness_problems,
    patient_split,
)


def test_download_resumes_a_partial_transfer_and_checks_the_hash(tmp_path, file_server):
    served = tmp_path / "srv"
    served.mkdir()
    payload = np.random.default_rng(0).bytes(300_000)
    (served / "blob.bin").write_bytes(payload)
    url = file_server(served) + "/blob.bin"
    dest = tmp_path / "out" / "blob.bin"
    dest.parent.mkdir()
    (dest.parent / "blob.bin.part").write_bytes(payload[:100_000])  # an interrupted earlier attempt
    digest = hashlib.sha256(payload).hexdigest()
    download(url, dest, sha256=digest)
    assert dest.read_bytes() == payload and not (dest.parent / "blob.bin.part").exists()
    with pytest.raises(IOError, match="checksum mismatch"):
        download(url, tmp_path / "other.bin", sha256="0" * 64)
    assert not (tmp_path / "other.bin").exists() and not (tmp_path / "other.bin.part").exists()


def test_download_with_credentials_and_refusal(tmp_path, file_server):
    served = tmp_path / "srv"
    served.mkdir()
    (served / "f.txt").write_text("secret")
    base = file_server(served, credentials=("ann", "pw"))
    download(base + "/f.txt", tmp_path / "ok.txt", credentials=("ann", "pw"))
    assert (tmp_path / "ok.txt").read_text() == "secret"
    with pytest.raises(MissingDataError, match="refused access"):
        download(base + "/f.txt", tmp_path / "no.txt", credentials=("ann", "wrong"))


def test_extract_handles_nested_zips_and_refuses_traversal(tmp_path):
    inner = io.BytesIO()
    with zipfile.ZipFile(inner, "w") as z:
        z.writestr("img_1.png", b"x")
    outer = tmp_path / "outer.zip"
    with zipfile.ZipFile(outer, "w") as z:
        z.writestr("images/part_1.zip", inner.getvalue())
        z.writestr("metadata.csv", "a\n1\n")
    extract(outer, tmp_path / "x")
    assert (tmp_path / "x" / "images" / "img_1.png").exists()
    assert not (tmp_path / "x" / "images" / "part_1.zip").exists()
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as z:
        z.writestr("../escape.txt", "no")
    with pytest.raises(IOError, match="outside"):
        extract(evil, tmp_path / "y")


def test_patient_split_is_seeded_keeps_official_splits_and_follows_fractions():
    patients = [f"p{i}" for i in range(1000)]
    a = patient_split(patients, seed=1)
    assert a == patient_split(list(reversed(patients)), seed=1)  # order-independent
    assert a != patient_split(patients, seed=2)
    shares = pd.Series(a).value_counts(normalize=True)
    assert shares["train"] == pytest.approx(0.7, abs=0.01) and shares["test"] == pytest.approx(0.15, abs=0.01)
    fixed = {f"p{i}": "test" for i in range(100)}
    b = patient_split(patients, seed=1, fractions=(0.8, 0.2, 0.0), fixed=fixed)
    assert all(b[p] == "test" for p in fixed)
    assert set(b[p] for p in patients[100:]) == {"train", "val"}
    with pytest.raises(ValueError, match="sum"):
        patient_split(patients, seed=0, fractions=(0.5, 0.2, 0.2))


def _manual_source(preprocess=None):
    return DatasetSource(
        spec=PAPER_DATASETS["ISIC-2020"],
        access=Access.MANUAL,
        landing_page="https://example.org/isic",
        license="CC BY-NC 4.0",
        expected=("labels.csv", "images/"),
        preprocess=preprocess or (lambda *a: None),
        agreement="the terms of use",
    )


def test_missing_manual_data_gives_one_block_of_instructions(tmp_path):
    with pytest.raises(MissingDataError) as err:
        obtain(_manual_source(), tmp_path / "raw")
    text = str(err.value)
    for part in (
        "ISIC-2020",
        "https://example.org/isic",
        "labels.csv",
        "images/",
        str(tmp_path / "raw"),
        "terms of use",
        "skip_unavailable",
    ):
        assert part in text
    assert err.value.exit_status == 3


def test_missing_physionet_credentials_are_reported(tmp_path, monkeypatch):
    monkeypatch.delenv("PHYSIONET_USERNAME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc
    source = replace(
        _manual_source(), access=Access.PHYSIONET, remote=(RemoteFile("http://127.0.0.1:9/never", "labels.csv"),)
    )
    with pytest.raises(MissingDataError, match="PHYSIONET_USERNAME"):
        obtain(source, tmp_path / "raw")


def test_skip_unavailable_writes_an_empty_table_and_says_so(tmp_path):
    table = prepare(_manual_source(), tmp_path, skip_unavailable=True)
    assert table.empty
    manifest = json.loads((tmp_path / "ISIC-2020" / "manifest.json").read_text())
    assert manifest["skipped"] is True and "example.org" in manifest["reason"]


def test_prepare_runs_the_module_preprocess_and_validates(tmp_path):
    def preprocess(raw_dir, out_dir, manifest, seed, fractions):
        return pd.DataFrame(
            {
                "sample_id": ["a", "b"],
                "patient_id": ["p", "q"],
                "split": ["train", "test"],
                "images": [["x.png"], ["y.png"]],
                "labels": [["Benign"], ["Malignant"]],
                "age": [40, np.nan],
                "sex": ["M", None],
            }
        )

    raw = tmp_path / "ISIC-2020" / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "images" / "x.png").write_text("x")
    (raw / "labels.csv").write_text("x")
    table = prepare(_manual_source(preprocess), tmp_path)
    assert table["group"].tolist() == ["M|a2", None]
    manifest = json.loads((tmp_path / "ISIC-2020" / "manifest.json").read_text())
    assert manifest["rows"] == 2 and manifest["missing_age"] == 1


def _custom_csv(tmp_path, rows=None):
    rows = rows or [
        {
            "sample_id": "s1",
            "patient_id": "p1",
            "split": "train",
            "label": "Benign",
            "age": 30,
            "sex": "female",
            "f0": 0.1,
            "f1": 1.0,
        },
        {
            "sample_id": "s2",
            "patient_id": "p2",
            "split": "val",
            "label": "Malignant",
            "age": None,
            "sex": "M",
            "f0": 0.3,
            "f1": 0.0,
        },
        {
            "sample_id": "s3",
            "patient_id": "p3",
            "split": "test",
            "label": "Benign",
            "age": 80,
            "sex": None,
            "f0": 0.2,
            "f1": 0.5,
        },
    ]
    path = tmp_path / "mine.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    return {
        "name": "MyDerm",
        "path": str(path),
        "labels": ["Benign", "Malignant"],
        "attributes": ["sex", "age"],
        "question": "Benign or malignant?",
    }


def test_custom_dataset_loads_with_features_and_registers_its_spec(tmp_path):
    table = load_custom(_custom_csv(tmp_path))
    assert get_spec("MyDerm").labels == ("Benign", "Malignant")
    assert table["group"].tolist() == ["F|a2", None, None]
    assert table["labels"].tolist() == [["Benign"], ["Malignant"], ["Benign"]]
    assert table["f1"].dtype == np.float32


def test_custom_dataset_reports_every_problem(tmp_path):
    entry = _custom_csv(
        tmp_path,
        [
            {"sample_id": "s1", "patient_id": "p1", "split": "training", "label": "Psoriasis", "f0": 0.1},
            {"sample_id": "s1", "patient_id": "p2", "split": "test", "label": "Benign", "f0": 0.3},
        ],
    )
    with pytest.raises(ValueError) as err:
        load_custom(entry)
    text = str(err.value)
    assert "outside the vocabulary" in text and "split not in" in text and "duplicate sample_id" in text
    with pytest.raises(ValueError, match="unknown key"):
        load_custom({**entry, "lables": []})
    with pytest.raises(ValueError, match="paper dataset"):
        load_custom({**entry, "name": "CheXpert"})


def test_verl_export_prompts_images_and_variants(tmp_path):
    cohort = pd.DataFrame(
        {
            "sample_id": ["h1", "h2", "h3", "c1"],
            "patient_id": ["a", "b", "c", "d"],
            "dataset": ["Hemorrhage"] * 3 + ["CheXpert"],
            "split": ["train", "train", "train", "test"],
            "images": (
                [["Hemorrhage/images/h1_brain.png", "Hemorrhage/images/h1_bone.png"]] * 3 + [["CheXpert/images/c1.png"]]
            ),
            "labels": [["Has Hemorrhage"], ["No Hemorrhage"], ["No Hemorrhage"], ["Edema", "Fracture"]],
            "age": [30.0, 60.0, 61.0, np.nan],
            "sex": ["F", "M", "M", None],
            "group": ["F|a2", "M|a3", "M|a3", None],
        }
    )
    rows = to_verl(cohort, tmp_path)
    content = rows.loc[0, "prompt"][0]["content"]
    assert content.startswith("<image><image>\n") and content.count(FORMAT_INSTRUCTION) == 1
    assert "No Hemorrhage\nHas Hemorrhage" in content
    assert rows.loc[3, "reward_model"]["ground_truth"] == "Edema, Fracture"
    assert rows.loc[0, "images"][0] == str(tmp_path.resolve() / "Hemorrhage/images/h1_brain.png")
    assert rows.loc[0, "extra_info"]["group"] == "F|a2"
    paths = export_verl(cohort, tmp_path, tmp_path / "verl")
    rs = pd.read_parquet(paths["train_rs"])
    assert len(rs) == 4  # F|a2 oversampled to the size of M|a3 (2)
    nodemo = pd.read_parquet(paths["train_nodemo"])
    assert all(info["group"] is None and info["age"] is None for info in nodemo["extra_info"])
    assert len(pd.read_parquet(paths["test"])) == 1


def test_kaggle_token_from_kaggle_json_is_used_for_the_download(tmp_path, file_server, monkeypatch):
    served = tmp_path / "srv"
    served.mkdir()
    archive = served / "bundle.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("labels.csv", "a\n")
        z.writestr("images/x.txt", "x")
    base = file_server(served, credentials=("kuser", "kkey"))
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    config_dir = tmp_path / "kaggle"
    config_dir.mkdir()
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(config_dir))
    source = replace(
        _manual_source(),
        access=Access.KAGGLE,
        kaggle_dataset="owner/bundle",
        remote=(RemoteFile(base + "/bundle.zip", "bundle.zip", extract=True),),
    )
    with pytest.raises(MissingDataError, match="kaggle.json"):
        obtain(source, tmp_path / "raw")
    (config_dir / "kaggle.json").write_text(json.dumps({"username": "kuser", "key": "kkey"}))
    obtain(source, tmp_path / "raw")
    assert (tmp_path / "raw" / "labels.csv").exists() and (tmp_path / "raw" / "images" / "x.txt").exists()


def _table(splits: dict[str, int]) -> pd.DataFrame:
    """One sample per patient, ``splits`` = patients per split."""
    rows = [(f"{split}{i}", split) for split, n in splits.items() for i in range(n)]
    return pd.DataFrame(
        {"sample_id": [r[0] for r in rows], "patient_id": [r[0] for r in rows], "split": [r[1] for r in rows]}
    )


def test_completeness_flags_an_empty_split_only_where_patients_were_due():
    manifest = Manifest(dataset="X")
    fractions = (0.7, 0.15, 0.15)
    assert completeness_problems(_table({"train": 14, "val": 3, "test": 3}), manifest, fractions) == []
    # 20 patients, all in train: val and test were due 0.15 * 20 = 3 patients each
    problems = completeness_problems(_table({"train": 20}), manifest, fractions)
    assert problems == [
        "the val split is empty although it should hold 0.15 of the 20 patients found",
        "the test split is empty although it should hold 0.15 of the 20 patients found",
    ]
    # 19 patients: 0.15 * 19 = 2.85 < 3, a rounding-sized split; not flagged
    assert completeness_problems(_table({"train": 17, "test": 2}), manifest, fractions) == []
    # an official test split alone (CheXpert with no training image): train was due 0.7 * 200
    assert completeness_problems(_table({"test": 200}), manifest, fractions)[0].startswith("the train split is empty")
    # a fraction of 0 asks for no split
    assert completeness_problems(_table({"train": 20, "val": 20}), manifest, (0.5, 0.5, 0.0)) == []
    assert completeness_problems(_table({}), manifest, fractions) == ["no labelled sample at all"]


def test_completeness_compares_readable_samples_with_what_the_metadata_lists():
    table = _table({"train": 14, "val": 3, "test": 3})
    manifest = Manifest(dataset="X")
    for i in range(20):  # 20 readable, 20 unreadable: exactly half is not "far below"
        manifest.skip(f"u{i}", "no image", unreadable=True)
    manifest.skip("v", "no label")  # a skip for another reason does not count
    assert completeness_problems(table, manifest, (0.7, 0.15, 0.15)) == []
    manifest.skip("u20", "no image", unreadable=True)
    assert completeness_problems(table, manifest, (0.7, 0.15, 0.15)) == [
        "only 20 of the 41 labelled samples the metadata lists have a readable file (21 missing or unreadable)"
    ]


def test_prepare_refuses_a_table_with_an_empty_split_and_writes_none(tmp_path):
    def preprocess(raw_dir, out_dir, manifest, seed, fractions):
        return pd.DataFrame(
            {
                "sample_id": [f"s{i}" for i in range(30)],
                "patient_id": [f"p{i}" for i in range(30)],
                "split": ["train"] * 30,
                "images": [["x.png"]] * 30,
                "labels": [["Benign"]] * 30,
                "age": [40.0] * 30,
                "sex": ["F"] * 30,
            }
        )

    raw = tmp_path / "ISIC-2020" / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "images" / "x.png").write_text("x")
    (raw / "labels.csv").write_text("x")
    with pytest.raises(IncompleteDataError, match="the val split is empty") as err:
        prepare(_manual_source(preprocess), tmp_path)
    assert f"Read from:   {raw}" in str(err.value) and "train 30, val 0, test 0" in str(err.value)
    assert not (tmp_path / "ISIC-2020" / "table.parquet").exists()


def test_an_empty_expected_folder_counts_as_missing(tmp_path):
    source = _manual_source()
    raw = tmp_path / "raw"
    (raw / "images").mkdir(parents=True)
    (raw / "labels.csv").write_text("x")
    assert source.missing_files(raw) == ["images/"]
    (raw / "images" / "a.png").write_text("x")
    assert source.missing_files(raw) == []
