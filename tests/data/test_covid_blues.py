"""COVID-BLUES: a tiny copy of the GitHub repository in a local bare git repo, cloned and prepared
through the real prepare() path (git clone -> expected files -> preprocess).

Fixture quirks copied from the repository: lus_videos/patient_<ID>_<point>.mp4 written with PyAV,
a second recording ``patient_1_R1_2.mp4``, clinical_variables.csv with its float-formatted numbers,
unsorted patients, ``pat_sex`` present (and not used), the -99 code for an unknown value and a blank
age; a corrupt mp4; a video of a patient who is not in the clinical table.
"""

import json
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from eqpo.data.datasets import covid_blues
from eqpo.data.prepare import prepare
from eqpo.data.sources import MissingDataError, patient_split

# video stem -> (frames, width, height); the gray level of frame k is 20 * k
VIDEOS = {
    "patient_1_L1": (6, 32, 32),
    "patient_1_R1": (6, 32, 32),
    "patient_1_R1_2": (8, 32, 32),
    "patient_2_L3": (6, 32, 32),
    "patient_3_R2": (6, 32, 32),
    "patient_5_L2": (6, 32, 32),
    "patient_6_R3": (5, 528, 32),
    "patient_7_L1": (6, 32, 32),
}
CORRUPT = "patient_4_L1"
# patient_id, cov_test, pat_sex, pat_age: 3 has no age, 5 the -99 code; 7 is not in the table
CLINICAL = [
    ("6", "1", "1.0", "97.0"),
    ("1", "1", "0.0", "87.0"),
    ("3", "0", "1.0", ""),
    ("2", "0", "1.0", "24.0"),
    ("5", "1", "0.0", "-99.0"),
    ("4", "0", "0.0", "51.0"),
]


def _codec() -> str:
    for name in ("mpeg4", "h264", "libx264"):
        try:
            av.codec.Codec(name, "w")
            return name
        except Exception:  # noqa: BLE001 - not available in this PyAV build
            continue
    pytest.skip("PyAV cannot encode mpeg4 or h264 here")


def write_video(path: Path, frames: int, width: int, height: int) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream(_codec(), rate=10)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(frames):
            pixels = np.full((height, width, 3), 20 * k, dtype=np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        container.mux(stream.encode())


def _git(*args, cwd: Path) -> str:
    result = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.org", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.strip()


def build_repo(tmp_path: Path, with_clinical: bool = True) -> tuple[Path, str]:
    """The repository's layout committed and pushed to a bare repo; returns (bare repo, commit)."""
    work = tmp_path / "work"
    (work / "lus_videos").mkdir(parents=True)
    for stem, (frames, width, height) in VIDEOS.items():
        write_video(work / "lus_videos" / f"{stem}.mp4", frames, width, height)
    (work / "lus_videos" / f"{CORRUPT}.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 truncated")
    if with_clinical:
        header = "patient_id,cov_test,number_video_files,pat_weight,pat_sex,pat_height,pat_bmi,pat_age,respiratory_rate"
        lines = [f"{p},{c},6.0,80.0,{s},-99.0,,{a},12.0" for p, c, s, a in CLINICAL]
        (work / "clinical_variables.csv").write_text("\n".join([header, *lines]) + "\n")
    (work / "README.md").write_text("# COVID-BLUES\n")
    _git("init", "-q", "-b", "main", cwd=work)
    _git("add", ".", cwd=work)
    _git("commit", "-q", "-m", "data", cwd=work)
    bare = tmp_path / "COVID-BLUES.git"
    _git("init", "-q", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    _git("push", "-q", str(bare), "main", cwd=work)
    return bare, _git("rev-parse", "HEAD", cwd=work)


@pytest.fixture
def repo(tmp_path):
    return build_repo(tmp_path)


def test_source(url, rev: str = "") -> object:
    """The real source pointed at a local repository, at ``rev`` ("" = its head)."""
    return replace(covid_blues.SOURCE, git_url=str(url), git_rev=rev)


test_source.__test__ = False  # a helper, not a test


def test_prepare_end_to_end(tmp_path, repo):
    bare, commit = repo
    root = tmp_path / "data"
    table = prepare(test_source(bare, commit), root, seed=1)
    assert (root / "COVID-BLUES" / "raw" / "COVID-BLUES" / ".git").exists()

    kept = [
        "patient_1_L1",
        "patient_1_R1",
        "patient_1_R1_2",
        "patient_2_L3",
        "patient_3_R2",
        "patient_5_L2",
        "patient_6_R3",
    ]
    assert list(table["sample_id"]) == [f"COVID-BLUES-{s}" for s in kept]
    assert list(table["patient_id"]) == ["1", "1", "1", "2", "3", "5", "6"]
    assert [list(x) for x in table["labels"]] == [["Has COVID"]] * 3 + [["No COVID"]] * 2 + [["Has COVID"]] * 2
    ages = dict(zip(table["patient_id"], table["age"], strict=False))
    assert ages["1"] == 87.0 and ages["2"] == 24.0 and ages["6"] == 97.0
    assert np.isnan(ages["3"]) and np.isnan(ages["5"])  # blank and -99
    assert table["sex"].isna().all()  # age only, as the paper, although pat_sex exists
    assert list(table["group"]) == ["a4", "a4", "a4", "a1", None, None, "a4"]

    assert dict(zip(table["patient_id"], table["split"], strict=False)) == patient_split(
        ["1", "2", "3", "5", "6"], seed=1
    )
    assert table.groupby("patient_id")["split"].nunique().max() == 1

    for stem, images in zip(kept, table["images"], strict=False):
        frames, width, height = VIDEOS[stem]
        assert len(images) == 4 and all(i.startswith(f"COVID-BLUES/images/{stem}/") for i in images)
        picks = np.linspace(0, frames - 1, 4).round().astype(int)  # evenly spaced, first and last included
        for path, k in zip(images, picks, strict=False):
            with Image.open(root / path) as image:
                assert image.format == "PNG"
                assert image.size == ((512, round(height * 512 / width)) if width > 512 else (width, height))
                assert abs(np.asarray(image, dtype=float).mean() - 20 * k) < 6

    manifest = json.loads((root / "COVID-BLUES" / "manifest.json").read_text())
    skipped = {s["sample_id"]: s["reason"] for s in manifest["skipped"]}
    assert set(skipped) == {f"COVID-BLUES-{CORRUPT}", "COVID-BLUES-patient_7_L1"}
    assert "unreadable video" in skipped[f"COVID-BLUES-{CORRUPT}"]
    assert "no cov_test" in skipped["COVID-BLUES-patient_7_L1"]
    assert manifest["rows"] == 7 and manifest["missing_age"] == 2 and manifest["missing_sex"] == 0
    assert manifest["files"]["git_commit"] == commit
    assert pd.read_parquet(root / "COVID-BLUES" / "table.parquet")["sample_id"].tolist() == table["sample_id"].tolist()


def test_second_run_reuses_the_clone(tmp_path, repo):
    bare, _ = repo
    root = tmp_path / "data"
    first = prepare(test_source(bare), root, seed=0)
    shutil.rmtree(bare)  # the remote is gone
    second = prepare(test_source(bare), root, seed=0)
    pd.testing.assert_frame_equal(first, second)


def test_missing_files_stop_with_instructions_or_skip(tmp_path):
    bare, _ = build_repo(tmp_path, with_clinical=False)
    root = tmp_path / "data"
    with pytest.raises(MissingDataError) as err:
        prepare(test_source(bare), root)
    text = str(err.value)
    assert covid_blues.LANDING_PAGE in text and "- COVID-BLUES/clinical_variables.csv" in text
    assert "- COVID-BLUES/lus_videos/" not in text  # the clone has that one

    table = prepare(test_source(bare), root, skip_unavailable=True)
    assert table.empty and pd.read_parquet(root / "COVID-BLUES" / "table.parquet").empty
    manifest = json.loads((root / "COVID-BLUES" / "manifest.json").read_text())
    assert manifest["skipped"] is True and covid_blues.LANDING_PAGE in manifest["reason"]


def test_instructions_name_every_expected_file(tmp_path):
    text = covid_blues.SOURCE.instructions(tmp_path, covid_blues.SOURCE.missing_files(tmp_path))
    assert covid_blues.LANDING_PAGE in text and "CC BY-NC-ND 4.0" in text and covid_blues.GIT_URL in text
    assert "- COVID-BLUES/clinical_variables.csv" in text and "- COVID-BLUES/lus_videos/" in text


def test_failed_clone_gives_instructions_and_can_be_skipped(tmp_path):
    with pytest.raises(MissingDataError, match="git clone") as err:
        prepare(test_source(tmp_path / "no-such-repo.git"), tmp_path / "data")
    assert covid_blues.LANDING_PAGE in str(err.value)
    assert prepare(test_source(tmp_path / "no-such-repo.git"), tmp_path / "data", skip_unavailable=True).empty


def test_read_clinical_is_defensive(tmp_path):
    path = tmp_path / "clinical_variables.csv"
    path.write_text("\ufeff Patient_ID ,COV_TEST,pat_age\n1,1.0,70\n2,,n/a\nx,0,30\n")
    clinical = covid_blues.read_clinical(path)
    assert list(clinical.index) == ["1", "2"] and clinical.loc["1", "age"] == 70.0
    assert covid_blues.label_of(clinical.loc["2", "cov_test"]) is None and np.isnan(clinical.loc["2", "age"])
    assert covid_blues.VIDEO_NAME.match("patient_15_L2_2")["patient"] == "15"
    assert covid_blues.VIDEO_NAME.match("patient_15_X2") is None


def _second_commit(tmp_path: Path, bare: Path) -> str:
    """A later commit on the repository that relabels patient 1 (cov_test 1 -> 0)."""
    work = tmp_path / "work"
    text = (work / "clinical_variables.csv").read_text()
    (work / "clinical_variables.csv").write_text(text.replace("\n1,1,", "\n1,0,"))
    _git("commit", "-q", "-am", "relabel", cwd=work)
    _git("push", "-q", str(bare), "main", cwd=work)
    return _git("rev-parse", "HEAD", cwd=work)


def _labels_of_patient_1(table) -> set:
    return {label for labels in table.loc[table["patient_id"] == "1", "labels"] for label in labels}


def test_the_pinned_commit_is_checked_out_not_the_head(tmp_path, repo):
    bare, first = repo
    head = _second_commit(tmp_path, bare)
    pinned = prepare(test_source(bare, first), tmp_path / "a")
    assert _labels_of_patient_1(pinned) == {"Has COVID"}
    manifest = json.loads((tmp_path / "a" / "COVID-BLUES" / "manifest.json").read_text())
    assert manifest["files"]["git_commit"] == first
    abbreviated = prepare(test_source(bare, first[:7]), tmp_path / "b")  # a short hash: fetched with the history
    assert _labels_of_patient_1(abbreviated) == {"Has COVID"}
    latest = prepare(test_source(bare, "main"), tmp_path / "c")  # a branch, when the config asks for one
    assert _labels_of_patient_1(latest) == {"No COVID"}
    assert json.loads((tmp_path / "c" / "COVID-BLUES" / "manifest.json").read_text())["files"]["git_commit"] == head


def test_an_existing_clone_at_another_commit_is_moved_to_the_pinned_one(tmp_path, repo):
    bare, first = repo
    head = _second_commit(tmp_path, bare)
    root = tmp_path / "data"
    assert _labels_of_patient_1(prepare(test_source(bare), root)) == {"No COVID"}  # an unpinned clone of the head
    clone = root / "COVID-BLUES" / "raw" / "COVID-BLUES"
    assert (
        subprocess.run(["git", "-C", str(clone), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
        == head
    )
    assert _labels_of_patient_1(prepare(test_source(bare, first), root)) == {"Has COVID"}
    assert json.loads((root / "COVID-BLUES" / "manifest.json").read_text())["files"]["git_commit"] == first


def test_the_commit_is_pinned_unless_the_config_asks_for_another():
    from eqpo.data.prepare import get_sources

    assert covid_blues.PINNED_COMMIT.startswith("1857a6f") and len(covid_blues.PINNED_COMMIT) == 40
    assert get_sources("COVID-BLUES") == [covid_blues.SOURCE]
    assert covid_blues.SOURCE.git_rev == covid_blues.PINNED_COMMIT
    assert get_sources("COVID-BLUES", "v2")[0].git_rev == "v2"
