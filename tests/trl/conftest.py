"""Fixtures of the trl backend's tests: a tiny randomly initialised Qwen2.5-VL and its processor,
built locally (no downloads), warm-started to answer in the prompt's format, and a fixture dataset of
tiny PNGs exported as the verl backend's parquet files.

The model, its warm start and the fixture dataset come from tests/tiny_vl.py (shared with the verl
loop tests, tests/verl/test_verl_loop.py).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch

pytest.importorskip("trl")
pytest.importorskip("tokenizers")

from tiny_vl import DATASET, LABELS, custom_dataset  # noqa: E402
from tiny_vl import build_qwen_vl as build_model  # noqa: E402

# ----------------------------------------------------------------------------------------------
# Session fixtures
# ----------------------------------------------------------------------------------------------

#: The runs of the tests: 4 steps of 2 prompts x 4 rollouts, a checkpoint every 2 steps, the label-set
#: F1 reward with strict matching (1 for the right label in the last box, else 0).
TRAIN = {"steps": 4, "batch_prompts": 2, "rollouts": 4, "lr": 1e-3, "test_freq": 2, "save_freq": 2,
         "max_response_length": 16, "rollout_data": True}
TRL = {"eval_batch_size": 6}
REPRODUCTION = {"reward": {"function": "f1", "matching": "strict"}, "metrics": {"extraction": "last_box"}}


@contextlib.contextmanager
def one_torch_thread():
    """One torch thread: on a shared 2-core machine more threads slow these tiny models down 20x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


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
    from eqpo.pipeline import build_cohort, run_export_verl

    root = tmp_path_factory.mktemp("trl_data")
    entry = custom_dataset(root / "raw")
    build_cohort([], root / "cohort.parquet", root / "table1", [entry])
    run_export_verl(root / "cohort.parquet", root, root / "verl", 0, [entry])
    return {"entry": entry, "root": root, "verl": root / "verl"}


def train_run(model: Path, data: dict, method: str, run_dir: Path, estimator_options=None, stop_after=None,
              train=None):
    from eqpo.run_settings import ReproductionOptions
    from eqpo.trl.trainer import run_training

    return run_training(data["verl"] / "train.parquet", data["verl"] / "val.parquet", model, method,
                        estimator_options or {}, {**TRAIN, **(train or {})}, TRL, 0, run_dir,
                        options=ReproductionOptions.from_config(REPRODUCTION), stop_after=stop_after,
                        log=lambda message: None)


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

    return types.SimpleNamespace(train_run=train_run, build_model=build_model, custom_dataset=custom_dataset,
                                 LABELS=LABELS, DATASET=DATASET, TRAIN=TRAIN, TRL=TRL, REPRODUCTION=REPRODUCTION)
