"""How each real dataset is obtained, checked and turned into the standard table.

A dataset module declares one :class:`DatasetSource`: its access type, landing page, licence or
agreement, the files it expects under ``<root>/<name>/raw/``, the remote files (with checksums where
the source publishes them) and a ``preprocess`` function. The shared machinery here downloads
(resumable, credentials only from the environment, ``~/.netrc`` or ``kaggle.json``), verifies,
extracts, and stops with one block of instructions (exit status :data:`EXIT_MISSING_DATA`) when
files or credentials are missing.

Standard table (one row per sample), written to ``<root>/<name>/table.parquet``:
``sample_id, patient_id, dataset, split, images (list of paths relative to <root>), labels (list of
label names), age (float years, NaN when missing), sex ("F"/"M"/None), group`` (the explicit group,
see :func:`eqpo.core.groups.explicit_group`).
"""

from __future__ import annotations

import enum
import json
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from eqpo.core.groups import explicit_group
from eqpo.core.vocabularies import DatasetSpec

EXIT_MISSING_DATA = 3
TABLE_COLUMNS = ("sample_id", "patient_id", "dataset", "split", "images", "labels", "age", "sex", "group")
SPLITS = ("train", "val", "test")


class Access(enum.StrEnum):
    """How the files are obtained: a public URL, a git repository, PhysioNet or Kaggle credentials,
    or placed by hand after accepting an agreement."""

    OPEN_URL = "open_url"
    GIT = "git"
    PHYSIONET = "physionet"
    KAGGLE = "kaggle"
    MANUAL = "manual"


@dataclass(frozen=True)
class RemoteFile:
    """One file to download: url (https, file:// in tests), the name it is saved under in raw/,
    an optional SHA-256 to verify, whether it is an archive to extract afterwards, and the MD5
    (hex) and size (bytes) the publisher states, verified before extraction when given."""

    url: str
    name: str
    sha256: str | None = None
    extract: bool = False
    md5: str | None = None
    size: int | None = None


class MissingDataError(RuntimeError):
    """Raised when a dataset's files or credentials are missing; ``str()`` is the instructions."""

    exit_status = EXIT_MISSING_DATA


class IncompleteDataError(MissingDataError):
    """Preprocessing found far fewer usable samples than the dataset's files list, or a split came
    out empty: the files on disk are incomplete (``str()`` says what was found and where). Not
    covered by ``data.skip_unavailable``: the data is there but broken, which a run must not hide."""


@dataclass
class Manifest:
    """What preprocessing found and did: rows kept, samples skipped (with reasons), and where the
    missing demographics are. Written next to the table as manifest.json."""

    dataset: str
    rows: int = 0
    skipped: list[dict] = field(default_factory=list)
    missing_age: int = 0
    missing_sex: int = 0
    unreadable: int = 0  # samples skipped because their image/video/volume file is missing or unreadable
    files: dict[str, str] = field(default_factory=dict)
    release: str = ""  # which release of the dataset was read, where there is a choice
    paper: dict = field(default_factory=dict)  # the sample count against paper Table 1 (paper_count_check)

    def skip(self, sample_id: str, reason: str, unreadable: bool = False) -> None:
        """Record a sample left out; ``unreadable``: because its media file is missing or broken
        (counted against what the metadata promises, see :func:`completeness_problems`)."""
        self.skipped.append({"sample_id": sample_id, "reason": reason, **({"unreadable": True} if unreadable else {})})
        self.unreadable += int(unreadable)

    def write(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.__dict__, indent=1, default=str))


@dataclass(frozen=True)
class DatasetSource:
    """Everything the pipeline knows about obtaining and preparing one dataset.

    expected: paths (relative to raw/) that must exist after download/extraction; a path ending in
    "/" is a directory. preprocess(raw_dir, out_dir, manifest, seed, fractions) -> standard table
    rows (without ``group``, added here) with image paths relative to out_dir's parent.
    """

    spec: DatasetSpec
    access: Access
    landing_page: str
    license: str
    expected: tuple[str, ...]
    preprocess: Callable[..., pd.DataFrame]
    remote: tuple[RemoteFile, ...] = ()
    agreement: str = ""
    git_url: str = ""
    kaggle_dataset: str = ""
    example_command: str = ""
    notes: str = ""
    # Custom download step for sources whose file list comes from the data itself (e.g. VinDr-Mammo
    # lists its DICOMs in a CSV): fetch(source, raw_dir, credentials) after `remote` is downloaded.
    fetch: Callable[..., None] | None = None
    # Step run before the expected files are checked, to bring a layout a person placed by hand into
    # the expected one (e.g. CheXpert's download zips from Stanford AIMI): arrange(raw_dir).
    arrange: Callable[[Path], None] | None = None
    # The folder under <root>/<name>/ the raw files live in (another one per release of a dataset).
    raw_name: str = "raw"
    # Open data whose server may nevertheless ask for a login: these credentials are sent when set.
    optional_login: Access | None = None
    # What a person fetches by hand when it differs from the expected files it turns into (e.g.
    # CheXpert's four download zips): listed first in the instructions.
    to_place: tuple[str, ...] = ()
    # Access.GIT: the revision checked out (a commit, tag or branch; "" = the default branch's head).
    git_rev: str = ""
    # A short name of this source among a dataset's alternatives (e.g. "ct-ich 1.2.0 from PhysioNet").
    label: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    def missing_files(self, raw_dir: Path) -> list[str]:
        """The expected entries not in raw_dir; a directory entry ("x/") that is empty counts as missing."""
        return [p for p in self.expected if not present(Path(raw_dir) / p, p.endswith("/"))]

    def instructions(self, raw_dir: Path, missing: Sequence[str], reason: str = "") -> str:
        """One block telling a person exactly what to do to provide this dataset."""
        lines = [
            f"Dataset {self.name} is not available: {reason or 'expected files are missing'}.",
            f"  Access:      {self.access.value}",
            f"  Landing page: {self.landing_page}",
            f"  Licence:     {self.license}",
        ]
        if self.agreement:
            lines.append(f"  Agreement:   {self.agreement}")
        if self.to_place:
            lines.append(f"  Put these under {raw_dir}/ (zipped or unpacked):")
            lines += [f"    - {p}" for p in self.to_place]
            lines.append("  They provide (missing now):")
        else:
            lines.append(f"  Put these under {raw_dir}/:")
        lines += [f"    - {m}" for m in missing]
        if self.example_command:
            lines.append(f"  Example:     {self.example_command.format(raw_dir=raw_dir)}")
        if self.notes:
            lines += ["  Note:        " + line for line in textwrap.wrap(self.notes, 88)]
        lines.append(
            "  Or leave it out of this run explicitly: data.skip_unavailable: true in the config "
            "(the run then reports which datasets it skipped)."
        )
        return "\n".join(lines)


def present(path: Path, directory: bool = False) -> bool:
    """A file that exists, or (``directory``) a folder holding at least one entry: an empty folder
    left by an interrupted or failed step must not pass for the data."""
    if not directory:
        return path.exists()
    return path.is_dir() and next(path.iterdir(), None) is not None


def instructions_for_all(sources: Sequence[DatasetSource], raw_dirs: Sequence[Path], reasons: Sequence[str]) -> str:
    """One block naming every alternative source of a dataset, in the order they were tried, each
    with why it was not available and what to do; one closing line on data.skip_unavailable."""
    name = sources[0].name
    lines = [f"Dataset {name} is not available from any of its {len(sources)} sources, tried in this order:"]
    for k, (source, raw_dir, reason) in enumerate(zip(sources, raw_dirs, reasons, strict=False), start=1):
        block = source.instructions(raw_dir, source.missing_files(raw_dir), reason).splitlines()
        lines.append(f"{k}. {source.label or source.access.value}: {reason}")
        lines += ["   " + line for line in block[1:-1]]  # without the per-source header and skip line
    lines.append(
        "Provide any one of them. Or leave the dataset out of this run explicitly: "
        "data.skip_unavailable: true in the config (the run then reports which datasets it skipped)."
    )
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# Shared helpers for the dataset modules
# ----------------------------------------------------------------------------------------------


def patient_split(
    patients: Sequence[str],
    seed: int,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    fixed: dict[str, str] | None = None,
) -> dict[str, str]:
    """Assign every patient to train/val/test with a seeded shuffle; ``fixed`` keeps official splits
    (patient -> split) and the rest is split by ``fractions`` renormalised over the splits it uses.

    Deterministic for a seed and independent of the order the patients come in.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or not np.isclose(sum(fractions), 1.0):
        raise ValueError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
    fixed = dict(fixed or {})
    free = sorted(set(patients) - set(fixed))
    order = np.random.default_rng(seed).permutation(len(free))
    shares = np.asarray(fractions, dtype=float)
    used = [s for s, share in zip(SPLITS, shares, strict=False) if share > 0]
    bounds = np.cumsum(shares[[SPLITS.index(s) for s in used]]) / shares.sum()
    cuts = np.round(bounds * len(free)).astype(int)
    assignment = dict(fixed)
    for rank, i in enumerate(order):
        assignment[free[i]] = used[int(np.searchsorted(cuts, rank, side="right"))]
    return assignment


def train_val_fractions(fractions, dataset: str) -> tuple[float, float, float]:
    """(train, val, test) fractions for a dataset whose test split is official: train and val
    renormalised over train+val, test 0 (the requested test share is not used)."""
    train, val = float(fractions[0]), float(fractions[1])
    if train + val <= 0:
        raise ValueError(
            f"{dataset}: the train and val fractions are both 0 in {tuple(fractions)}; "
            "its test split is the official one, so train+val must be positive"
        )
    return train / (train + val), val / (train + val), 0.0


def assign_splits(
    table: pd.DataFrame, seed: int, fractions, official: str | None = None, dataset: str = ""
) -> pd.DataFrame:
    """``table`` with a ``split`` column, assigned by patient (:func:`patient_split`). With
    ``official`` (the column holding each row's official split), the patients of the official test
    split stay in test, the others are split into train/val by :func:`train_val_fractions`, and that
    column is dropped."""
    if official is None:
        assignment = patient_split(table["patient_id"].tolist(), seed, fractions)
    else:
        fixed = {p: "test" for p in table.loc[table[official] == "test", "patient_id"]}
        assignment = patient_split(table["patient_id"].tolist(), seed, train_val_fractions(fractions, dataset), fixed)
        table = table.drop(columns=official)
    return table.assign(split=table["patient_id"].map(assignment))


def finish_table(rows: pd.DataFrame, spec: DatasetSpec, manifest: Manifest) -> pd.DataFrame:
    """Check a module's rows, add ``group``, order the columns and fill the manifest counts."""
    missing = [c for c in TABLE_COLUMNS if c not in rows.columns and c not in ("group", "dataset")]
    if missing:
        raise ValueError(f"{spec.name} preprocessing produced no column(s) {missing}")
    table = rows.copy()
    table["dataset"] = spec.name
    table["age"] = pd.to_numeric(table["age"], errors="coerce").astype(float)
    sex = [s if s in ("F", "M") else None for s in table["sex"]]
    table["sex"] = pd.Series(sex, index=table.index, dtype=object)
    groups = [explicit_group(a, s, spec.attributes) for a, s in zip(table["age"], sex, strict=False)]
    table["group"] = pd.Series(groups, index=table.index, dtype=object)
    bad = ~table["split"].isin(SPLITS)
    if bad.any():
        raise ValueError(f"{spec.name}: unknown split values {sorted(table.loc[bad, 'split'].unique())}")
    unknown = {label for labels in table["labels"] for label in labels} - set(spec.labels)
    if unknown:
        raise ValueError(f"{spec.name}: labels {sorted(unknown)} are not in the vocabulary {list(spec.labels)}")
    if table["sample_id"].duplicated().any():
        raise ValueError(f"{spec.name}: duplicate sample_id values")
    manifest.rows = len(table)
    manifest.missing_age = int(table["age"].isna().sum())
    manifest.missing_sex = int(table["sex"].isna().sum()) if "sex" in spec.attributes else 0
    return table[list(TABLE_COLUMNS)].reset_index(drop=True)


def normalise_header(name: str) -> str:
    """'Age\\n(years)' -> 'age (years)': collapse whitespace, lower-case (for defensive CSV parsing)."""
    return " ".join(str(name).split()).lower()


# ----------------------------------------------------------------------------------------------
# Sample counts against paper Table 1
# ----------------------------------------------------------------------------------------------

PAPER_TABLE1 = Path(__file__).with_name("paper_table1.csv")


def published_range(published_as: str) -> tuple[float, float]:
    """The interval of counts that round to a published count: "2.5K" -> [2450, 2550), "212K" ->
    [211500, 212500), "362" -> [361.5, 362.5) (half a unit of the last digit printed, either side)."""
    text = str(published_as).strip().upper()
    scale = 1000 if text.endswith("K") else 1
    digits = text.rstrip("K")
    try:
        value = float(digits)
    except ValueError:
        raise ValueError(f"published count {published_as!r} is not a number with an optional K suffix") from None
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    half = 0.5 * 10**-decimals * scale
    return value * scale - half, value * scale + half


def paper_count_check(dataset: str, samples: int) -> dict:
    """Our sample count next to paper Table 1's: {"published_as", "low", "high", "samples",
    "within_rounding"}; {} for a dataset the paper does not list."""
    table = pd.read_csv(PAPER_TABLE1, dtype=str)
    row = table[table["dataset"] == dataset]
    if row.empty:
        return {}
    published = row.iloc[0]["published_as"]
    low, high = published_range(published)
    return {
        "published_as": published,
        "low": low,
        "high": high,
        "samples": int(samples),
        "within_rounding": bool(low <= samples < high),
    }


def count_warning(check: dict, dataset: str) -> str | None:
    """The log line for a count outside the published rounding (None when inside or not listed)."""
    if not check or check["within_rounding"]:
        return None
    return (
        f"{dataset}: {check['samples']} samples after preprocessing, but paper Table 1 reports "
        f"{check['published_as']} (counts from {check['low']:g} to below {check['high']:g} round to that); "
        "see manifest.json for the samples skipped and why"
    )


# ----------------------------------------------------------------------------------------------
# Completeness: what preprocessing found against what the files promise
# ----------------------------------------------------------------------------------------------

# Below this share of readable samples (among the labelled samples the metadata lists) the files on
# disk are taken as incomplete (a zip not unpacked, a download cut short), not as a few corrupt files.
MIN_READABLE_SHARE = 0.5
# A split is checked for emptiness only when its fraction of the patients found is at least this many
# patients: a handful of patients may leave a small split empty by rounding, thousands may not.
MIN_EXPECTED_PATIENTS = 3


def completeness_problems(table: pd.DataFrame, manifest: Manifest, fractions) -> list[str]:
    """What is wrong with a preprocessed table, as sentences ([] when nothing): fewer than
    :data:`MIN_READABLE_SHARE` of the samples the metadata lists could be read, or a split that
    should hold patients (its fraction times the patients found is at least
    :data:`MIN_EXPECTED_PATIENTS`; an official test split counts under the test fraction) holds none."""
    problems = []
    promised = len(table) + manifest.unreadable
    if promised == 0:
        return ["no labelled sample at all"]
    if len(table) < MIN_READABLE_SHARE * promised:
        problems.append(
            f"only {len(table)} of the {promised} labelled samples the metadata lists have a readable "
            f"file ({manifest.unreadable} missing or unreadable)"
        )
    patients = table.groupby("split")["patient_id"].nunique().to_dict()
    total = table["patient_id"].nunique()
    for split, share in zip(SPLITS, fractions, strict=False):
        if share > 0 and share * total >= MIN_EXPECTED_PATIENTS and patients.get(split, 0) == 0:
            problems.append(
                f"the {split} split is empty although it should hold {share:g} of the {total} patients found"
            )
    return problems


def incomplete_message(
    name: str, raw_dir: Path, table: pd.DataFrame, manifest: Manifest, problems: Sequence[str], examples: int = 3
) -> str:
    """The error text for :class:`IncompleteDataError`: the problems, the samples per split, a few
    of the unreadable files, and where the files were read from."""
    counts = table["split"].value_counts().to_dict() if len(table) else {}
    found = ", ".join(f"{split} {counts.get(split, 0)}" for split in SPLITS)
    lines = [
        f"Dataset {name} is incomplete: " + "; ".join(problems) + ".",
        f"  Read from:   {raw_dir}",
        f"  Samples:     {found} (after preprocessing)",
    ]
    unreadable = [item["reason"] for item in manifest.skipped if item.get("unreadable")]
    if unreadable:
        lines.append(f"  Unreadable:  {len(unreadable)} samples, e.g.")
        lines += [f"    - {reason}" for reason in unreadable[:examples]]
    lines.append(
        "  Check that every archive of the dataset was downloaded completely and unpacked (or left zipped "
        "where the dataset accepts that), then run again; manifest.json lists every skipped sample."
    )
    return "\n".join(lines)
