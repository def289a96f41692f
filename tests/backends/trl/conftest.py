"""Fixtures of the trl backend's tests: the tiny Qwen2.5-VL and fixture dataset of eqpo.data.demo.tiny_vl (through
tests/tiny_trl.py; built locally, warm-started to answer in the prompt's format; shared with the verl loop
tests), the fixture dataset exported as the verl backend's parquet files, and finished runs.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("trl")
pytest.importorskip("tokenizers")

from tiny_trl import (  # noqa: E402
    DATASET,
    LABELS,
    REPRODUCTION,
    TRAIN,
    TRL,
    build_model,
    custom_dataset,
    export_fixture,
    one_torch_thread,
    run_settings,
    train_run,
)

# ----------------------------------------------------------------------------------------------
# Session fixtures
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    with one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    with one_torch_thread():
        return build_model(tmp_path_factory.mktemp("tiny_vl") / "model", warm_steps=40)


@pytest.fixture(scope="session")
def fixture_data(tmp_path_factory):
    """The fixture dataset as a data.custom entry, its cohort and its verl export (train/val/test)."""
    return export_fixture(tmp_path_factory.mktemp("trl_data"))


@pytest.fixture(scope="session")
def runs(tiny_model, fixture_data, tmp_path_factory):
    """Finished runs of grpo (TRL's epsilon 1e-4) and eqpo on the fixture data."""
    root = tmp_path_factory.mktemp("trl_runs")
    out = {}
    with one_torch_thread():
        for method, options in (("grpo", {"eps": 1e-4}), ("eqpo", {})):
            train_run(tiny_model, fixture_data, method, root / method, options)
            out[method] = root / method
    return out


@pytest.fixture(scope="session")
def helpers():
    """This module's helpers and settings for the test modules (which cannot import a conftest)."""
    import types

    return types.SimpleNamespace(
        train_run=train_run,
        run_settings=run_settings,
        build_model=build_model,
        custom_dataset=custom_dataset,
        LABELS=LABELS,
        DATASET=DATASET,
        TRAIN=TRAIN,
        TRL=TRL,
        REPRODUCTION=REPRODUCTION,
    )
