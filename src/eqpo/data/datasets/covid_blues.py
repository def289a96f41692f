"""COVID-BLUES: bluepoint lung-ultrasound videos of COVID-19 suspects (Maastricht UMC+), public
git repository ``NinaWie/COVID-BLUES`` (no login), checked out at a pinned commit
(:data:`PINNED_COMMIT`, config ``data.covid_blues_commit``) so every run reads the same files.

Files used (the repository is cloned to ``<root>/COVID-BLUES/raw/COVID-BLUES/``):

- ``lus_videos/patient_<ID>_<L1|L2|L3|R1|R2|R3>[_2].mp4``: one video per patient and BLUE point;
  ``_2`` marks a second recording of the same point (e.g. ``patient_15_L2_2.mp4``).
- ``clinical_variables.csv``: one row per patient, about 150 columns. Used: ``patient_id``,
  ``cov_test`` (PCR result, 1 positive / 0 negative) and ``pat_age`` (years; the file writes -99 for
  an unknown value). ``pat_sex`` exists but the paper reports COVID-BLUES for age only, so sex is None.

One sample per video: label "Has COVID" when ``cov_test`` == 1, else "No COVID"; four evenly spaced
frames of the video as four PNG images. No official split (the README asks for patient-level
splits): patients are split with :func:`patient_split`.
"""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from eqpo.core.vocabularies import PAPER_DATASETS
from eqpo.data import media
from eqpo.data.sources import Access, DatasetSource, Manifest, assign_splits, normalise_header

SPEC = PAPER_DATASETS["COVID-BLUES"]
GIT_URL = "https://github.com/NinaWie/COVID-BLUES.git"
# The commit the pipeline was run against (362 videos, 63 patients; the repository's head in 2026).
PINNED_COMMIT = "1857a6fba9b8d00614f133fe8ffb7bc1f1a14f78"
LANDING_PAGE = "https://github.com/NinaWie/COVID-BLUES"
REPO = "COVID-BLUES"  # the clone's folder under raw/
CLINICAL = f"{REPO}/clinical_variables.csv"
VIDEOS = f"{REPO}/lus_videos"
FRAMES = 4
VIDEO_NAME = re.compile(r"^patient_(?P<patient>\d+)_(?P<point>[LR][1-3])(?:_(?P<repeat>\d+))?$", re.IGNORECASE)
HAS, NO = "Has COVID", "No COVID"


def _key(name: str) -> str:
    return normalise_header(name).replace(" ", "_")


def read_clinical(path: Path) -> pd.DataFrame:
    """clinical_variables.csv -> index patient id (str), columns cov_test (float 0/1 or NaN) and age
    (float years; NaN when blank, non-numeric or negative, i.e. the file's -99 for unknown)."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    table.columns = [_key(c) for c in table.columns]
    absent = [c for c in ("patient_id", "cov_test") if c not in table.columns]
    if absent:
        raise ValueError(f"{path.name}: no column(s) {absent}; columns are {list(table.columns)[:10]}...")
    patient = pd.to_numeric(table["patient_id"].str.strip(), errors="coerce")
    cov = pd.to_numeric(table["cov_test"].str.strip(), errors="coerce")
    age = pd.to_numeric(table["pat_age"].str.strip(), errors="coerce") if "pat_age" in table else np.nan
    out = pd.DataFrame({"patient": patient, "cov_test": cov, "age": age})
    out["age"] = out["age"].where(out["age"] >= 0)
    out = out.dropna(subset=["patient"]).drop_duplicates("patient")
    out.index = out["patient"].astype(int).astype(str)
    return out[["cov_test", "age"]]


def label_of(cov_test: float) -> str | None:
    """cov_test 1 -> "Has COVID", 0 -> "No COVID", anything else -> None (no label)."""
    return HAS if cov_test == 1 else NO if cov_test == 0 else None


def list_videos(video_dir: Path) -> list[Path]:
    """The .mp4 files of lus_videos/, sorted by name."""
    return sorted(p for p in video_dir.iterdir() if p.is_file() and p.suffix.lower() == ".mp4")


def write_frames(video: Path, out_dir: Path) -> list[str]:
    """FRAMES evenly spaced frames of a video -> PNGs; paths relative to out_dir.parent."""
    frames = media.video_frames(video, FRAMES)
    dests = [
        media.save_png(frame, out_dir / "images" / video.stem / f"{video.stem}_frame{k}.png")
        for k, frame in enumerate(frames)
    ]
    return [d.relative_to(out_dir.parent).as_posix() for d in dests]


def _video_row(video: Path, clinical: pd.DataFrame, out_dir: Path, manifest: Manifest) -> dict | None:
    """One video -> one table row, or None (recorded in the manifest) when it cannot be used."""
    sample_id = f"{SPEC.name}-{video.stem}"
    match = VIDEO_NAME.match(video.stem)
    if match is None:
        manifest.skip(sample_id, f"{video.name} does not follow patient_<ID>_<point>[_2].mp4")
        return None
    patient = str(int(match["patient"]))
    label = label_of(clinical["cov_test"].get(patient, np.nan))
    if label is None:
        manifest.skip(sample_id, f"patient {patient} has no cov_test in clinical_variables.csv")
        return None
    try:
        images = write_frames(video, out_dir)
    except media.CorruptMedia as err:
        manifest.skip(sample_id, f"unreadable video: {err}", unreadable=True)
        return None
    return {
        "sample_id": sample_id,
        "patient_id": patient,
        "images": images,
        "labels": [label],
        "age": clinical["age"].get(patient, np.nan),
        "sex": None,
    }


def _record_files(raw_dir: Path, manifest: Manifest) -> None:
    """The clone's commit (or 'not a git clone') and the clinical table's SHA-256."""
    from eqpo.data.fetch import git_head, sha256_of

    manifest.files["git_commit"] = git_head(raw_dir / REPO) or "not a git clone"
    manifest.files["clinical_variables.csv"] = sha256_of(raw_dir / CLINICAL)


def preprocess(
    raw_dir: Path,
    out_dir: Path,
    manifest: Manifest,
    seed: int,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
) -> pd.DataFrame:
    """COVID-BLUES clone -> one row per readable, labelled video with four frame PNGs and age."""
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    clinical = read_clinical(raw_dir / CLINICAL)
    _record_files(raw_dir, manifest)
    rows = [
        row
        for video in list_videos(raw_dir / VIDEOS)
        if (row := _video_row(video, clinical, out_dir, manifest)) is not None
    ]
    table = pd.DataFrame(rows, columns=["sample_id", "patient_id", "images", "labels", "age", "sex"])
    return assign_splits(table, seed, fractions)


SOURCE = DatasetSource(
    spec=SPEC,
    access=Access.GIT,
    landing_page=LANDING_PAGE,
    license="CC BY-NC-ND 4.0",
    expected=(CLINICAL, f"{VIDEOS}/"),
    preprocess=preprocess,
    git_url=GIT_URL,
    git_rev=PINNED_COMMIT,
    example_command=(
        f"git clone {GIT_URL} {{raw_dir}}/{REPO} && git -C {{raw_dir}}/{REPO} checkout {PINNED_COMMIT[:7]}"
    ),
    notes=(
        "About 73 MB, no login; checked out at the commit in data.covid_blues_commit. Also on Hugging Face as "
        "jannisborn/COVID-BLUES. The paper reports this dataset for age only; pat_sex is not used."
    ),
)


def sources(release: str | None = None) -> list[DatasetSource]:
    """The source checked out at ``release`` (a commit, tag or branch; None: :data:`PINNED_COMMIT`)."""
    return [SOURCE if not release else replace(SOURCE, git_rev=release)]
