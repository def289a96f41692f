"""What every dataset module promises, checked over all of them (a new module in
eqpo/data/datasets/ is picked up): without its files, prepare stops with instructions that name the
landing page and every expected path, and writes nothing; with skip_unavailable it writes an empty
table and a manifest that says why."""

from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil

import pandas as pd
import pytest

from eqpo.data import datasets
from eqpo.data.prepare import prepare
from eqpo.data.sources import TABLE_COLUMNS, MissingDataError

MODULES = sorted(m.name for m in pkgutil.iter_modules(datasets.__path__))


def offline(module: str):
    """The module's SOURCE with no way to obtain its files (no URL, no git remote, no fetcher)."""
    source = importlib.import_module(f"{datasets.__name__}.{module}").SOURCE
    return dataclasses.replace(source, remote=(), git_url="", fetch=None, kaggle_dataset="")


def test_every_dataset_module_is_checked():
    paper = {"chexpert", "covid_blues", "ham10000", "hemorrhage", "isic2020", "pad_ufes_20", "vindr_mammo"}
    assert paper <= set(MODULES)


@pytest.mark.parametrize("module", MODULES)
def test_without_its_files_prepare_stops_with_instructions_and_writes_nothing(tmp_path, module):
    source = offline(module)
    with pytest.raises(MissingDataError) as err:
        prepare(source, tmp_path / "data")
    text = str(err.value)
    assert source.landing_page in text
    missing = [path for path in source.expected if path not in text]
    assert missing == [], f"the instructions do not name {missing}"
    assert not (tmp_path / "data" / source.name / "table.parquet").exists()


@pytest.mark.parametrize("module", MODULES)
def test_skip_unavailable_writes_an_empty_table_and_a_manifest_that_says_why(tmp_path, module):
    source = offline(module)
    table = prepare(source, tmp_path / "data", skip_unavailable=True)
    out = tmp_path / "data" / source.name
    written = pd.read_parquet(out / "table.parquet")
    assert table.empty and written.empty and list(written.columns) == list(TABLE_COLUMNS)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dataset"] == source.name and manifest["skipped"] is True
    assert source.landing_page in manifest["reason"]
