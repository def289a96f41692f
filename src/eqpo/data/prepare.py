"""Obtain -> verify -> preprocess one dataset into ``<root>/<name>/table.parquet`` (+ manifest.json).

    python -m eqpo.data.prepare CheXpert --root data/paper [--seed 0] [--skip-unavailable]
    python -m eqpo.data.prepare Hemorrhage --root data/paper --release 1.3.1

Exit status 0 on success, :data:`EXIT_MISSING_DATA` (3) with one block of instructions when files
or credentials are missing (or when the files on disk are incomplete: a split came out empty, or
most listed samples could not be read), 1 with one line when a download fails for good (rerunning
resumes it).
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
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from eqpo.data.sources import (
    TABLE_COLUMNS,
    DatasetSource,
    IncompleteDataError,
    Manifest,
    MissingDataError,
    completeness_problems,
    count_warning,
    finish_table,
    incomplete_message,
    instructions_for_all,
    paper_count_check,
)

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


def get_sources(name: str, release: str | None = None) -> list[DatasetSource]:
    """A dataset's sources, in the order they are tried. A module with a choice defines
    ``sources(release)``: Hemorrhage's ``release`` is "auto" (default: ct-ich 1.2.0 from PhysioNet,
    then the Kaggle mirror of 1.0.0, then 1.3.1) or one of them; COVID-BLUES' is the git revision."""
    if name not in MODULES:
        raise KeyError(f"unknown dataset {name!r}; known: {sorted(MODULES)}")
    module = importlib.import_module(f"eqpo.data.datasets.{MODULES[name]}")
    if hasattr(module, "sources"):
        return list(module.sources(release or None))
    if release:
        raise ValueError(f"{name} has a single source; no release can be chosen (got {release!r})")
    return [module.SOURCE]


def get_source(name: str, release: str | None = None) -> DatasetSource:
    """The first source :func:`get_sources` would try."""
    return get_sources(name, release)[0]


def dataset_dir(root: str | Path, name: str) -> Path:
    return Path(root) / name


def _complete_on_disk(source: DatasetSource, raw_dir: Path) -> bool:
    """Whether a source's files are all in place already (nothing to download)."""
    if not raw_dir.exists():
        return False
    if source.arrange is not None:
        source.arrange(raw_dir)
    return not source.missing_files(raw_dir)


def obtain_first(sources: Sequence[DatasetSource], out_dir: Path) -> DatasetSource:
    """Obtain one of a dataset's alternative sources: the first already complete on disk, else the
    first whose download succeeds, in the given order. Raises :class:`MissingDataError` with one
    block naming every source and why it was not available."""
    from eqpo.data.fetch import obtain

    raw_dirs = [out_dir / source.raw_name for source in sources]
    for source, raw_dir in zip(sources, raw_dirs, strict=False):
        if len(sources) > 1 and _complete_on_disk(source, raw_dir):
            return source
    reasons = []
    for source, raw_dir in zip(sources, raw_dirs, strict=False):
        try:
            obtain(source, raw_dir)
            if len(sources) > 1:
                log.info(f"{source.name}: using {source.label or source.raw_name}")
            return source
        except MissingDataError as err:
            if len(sources) == 1:
                raise
            reasons.append(str(err).splitlines()[0].split(" is not available: ", 1)[-1].rstrip("."))
            log.info(f"{source.name}: {source.label} not available ({reasons[-1]}); trying the next source")
    raise MissingDataError(instructions_for_all(sources, raw_dirs, reasons))


def prepare(
    dataset: str | DatasetSource | Sequence[DatasetSource],
    root: str | Path,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    skip_unavailable: bool = False,
    release: str | None = None,
) -> pd.DataFrame:
    """Obtain, verify and preprocess a dataset (a name, a :class:`DatasetSource`, e.g. one whose
    URLs point at a test server, or alternative sources tried in order) under ``root``; returns the
    standard table. Raises :class:`IncompleteDataError` (no table written) when far fewer samples
    than the files list could be read, or a split came out empty."""
    if isinstance(dataset, str):
        sources = get_sources(dataset, release)
    else:
        sources = [dataset] if isinstance(dataset, DatasetSource) else list(dataset)
    name = sources[0].name
    out_dir = dataset_dir(root, name)
    manifest = Manifest(dataset=name)
    try:
        source = obtain_first(sources, out_dir)
    except MissingDataError as err:
        if not skip_unavailable:
            raise
        out_dir.mkdir(parents=True, exist_ok=True)
        table = pd.DataFrame({c: pd.Series(dtype=object) for c in TABLE_COLUMNS})
        table.to_parquet(out_dir / "table.parquet", index=False)
        (out_dir / "manifest.json").write_text(
            json.dumps({"dataset": name, "skipped": True, "reason": str(err)}, indent=1)
        )
        print(f"SKIPPED {name} (data.skip_unavailable is set):\n{err}", file=sys.stderr)
        return table
    raw_dir = out_dir / source.raw_name
    rows = source.preprocess(raw_dir, out_dir, manifest, seed, fractions)
    table = finish_table(rows, source.spec, manifest)
    manifest.paper = paper_count_check(name, len(table))
    problems = completeness_problems(table, manifest, fractions)
    (out_dir / "table.parquet").unlink(missing_ok=True)  # never leave an older table next to a failed run
    manifest.write(out_dir / "manifest.json")
    if problems:
        raise IncompleteDataError(incomplete_message(name, raw_dir, table, manifest, problems))
    warning = count_warning(manifest.paper, name)
    if warning:
        log.warning(warning)
    table.to_parquet(out_dir / "table.parquet", index=False)
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", choices=sorted(MODULES))
    parser.add_argument("--root", required=True, help="data root; the dataset lives in <root>/<dataset>/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-unavailable", action="store_true")
    parser.add_argument(
        "--release",
        default=None,
        help="which source, for a dataset with several (Hemorrhage: "
        "auto, the default, tries 1.2.0, the Kaggle mirror of 1.0.0, then 1.3.1; or one of them. "
        "COVID-BLUES: the git revision, default the pinned commit)",
    )
    args = parser.parse_args(argv)
    from eqpo.data.fetch import DownloadError

    if not logging.getLogger().handlers and not log.handlers:
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        table = prepare(
            args.dataset, args.root, args.seed, skip_unavailable=args.skip_unavailable, release=args.release
        )
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
