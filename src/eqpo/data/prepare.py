"""Obtain -> verify -> preprocess one dataset into ``<root>/<name>/table.parquet`` (+ manifest.json).

    python -m eqpo.data.prepare CheXpert --root data/paper [--seed 0] [--skip-unavailable]
    python -m eqpo.data.prepare Hemorrhage --root data/paper --release 1.3.1

Exit status 0 on success, :data:`EXIT_MISSING_DATA` (3) with one block of instructions when files
or credentials are missing, 1 with one line when a download fails for good (rerunning resumes it).
With ``--skip-unavailable`` a missing dataset writes an empty table and a manifest saying it was
skipped (exit 0), so a run can leave it out explicitly, never silently.

After preprocessing, the sample count is compared with paper Table 1 (published rounded, e.g.
"2.5K"): both go into manifest.json (``paper``), and a count outside the published rounding is
logged as a warning on the ``eqpo`` logger (the rule's log).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from pathlib import Path

import pandas as pd

from .sources import (TABLE_COLUMNS, DatasetSource, Manifest, MissingDataError, count_warning, finish_table,
                      paper_count_check)

log = logging.getLogger("eqpo")

MODULES = {
    "CheXpert": "chexpert",
    "Hemorrhage": "hemorrhage",
    "VinDr-Mammo": "vindr_mammo",
    "ISIC-2020": "isic2020",
    "HAM10000": "ham10000",
    "PAD-UFES-20": "pad_ufes_20",
    "COVID-BLUES": "covid_blues",
}


def get_source(name: str, release: str | None = None) -> DatasetSource:
    """A dataset's source; ``release`` picks one of a module's ``SOURCES`` (Hemorrhage: "1.2.0",
    the JPEG release the paper used and the default, or "1.3.1", the NIfTI release)."""
    if name not in MODULES:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(MODULES)}")
    module = importlib.import_module(f"eqpo.data.datasets.{MODULES[name]}")
    if release is None:
        return module.SOURCE
    releases = getattr(module, "SOURCES", {})
    if release not in releases:
        raise ValueError(f"{name} has no release {release!r}; choose one of {sorted(releases) or ['(only one)']}")
    return releases[release]


def dataset_dir(root: str | Path, name: str) -> Path:
    return Path(root) / name


def prepare(dataset: str | DatasetSource, root: str | Path, seed: int = 0,
            fractions: tuple[float, float, float] = (0.7, 0.15, 0.15), skip_unavailable: bool = False,
            release: str | None = None) -> pd.DataFrame:
    """Obtain, verify and preprocess a dataset (a name, or a :class:`DatasetSource`, e.g. one whose
    URLs point at a test server) under ``root``; returns the standard table."""
    from .fetch import obtain

    source = get_source(dataset, release) if isinstance(dataset, str) else dataset
    name = source.name
    out_dir = dataset_dir(root, name)
    raw_dir = out_dir / source.raw_name
    manifest = Manifest(dataset=name)
    try:
        obtain(source, raw_dir)
    except MissingDataError as err:
        if not skip_unavailable:
            raise
        out_dir.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame({c: pd.Series(dtype=object) for c in TABLE_COLUMNS})
        table.to_parquet(out_dir / "table.parquet", index=False)
        (out_dir / "manifest.json").write_text(
            json.dumps({"dataset": name, "skipped": True, "reason": str(err)}, indent=1))
        print(f"SKIPPED {name} (data.skip_unavailable is set):\n{err}", file=sys.stderr)
        return table
    rows = source.preprocess(raw_dir, out_dir, manifest, seed, fractions)
    table = finish_table(rows, source.spec, manifest)
    manifest.paper = paper_count_check(name, len(table))
    warning = count_warning(manifest.paper, name)
    if warning:
        log.warning(warning)
    table.to_parquet(out_dir / "table.parquet", index=False)
    manifest.write(out_dir / "manifest.json")
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(MODULES))
    parser.add_argument("--root", required=True, help="data root; the dataset lives in <root>/<dataset>/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-unavailable", action="store_true")
    parser.add_argument("--release", default=None, help="which release, for a dataset with several (Hemorrhage: "
                        "1.2.0, the paper's JPEG release, default; 1.3.1, NIfTI)")
    args = parser.parse_args(argv)
    from .fetch import DownloadError

    if not logging.getLogger().handlers and not log.handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        table = prepare(args.dataset, args.root, args.seed, skip_unavailable=args.skip_unavailable,
                        release=args.release)
    except MissingDataError as err:
        print(err, file=sys.stderr)
        return err.exit_status
    except DownloadError as err:
        print(err, file=sys.stderr)
        return 1
    print(f"{args.dataset}: {len(table)} samples -> {dataset_dir(args.root, args.dataset) / 'table.parquet'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
