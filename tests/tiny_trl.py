"""The tiny vision-language setting of the trl backend's tests (tests/backends/trl/) and the GPU check
(tests/device_check.py), without pytest: the tiny warm-started Qwen2.5-VL and the fixture dataset of
tiny PNGs of eqpo.data.demo.tiny_vl (shared with the verl loop tests and config/verl_cpu.yaml), the trl
tests' run settings, and one training run through eqpo.backends.trl.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from eqpo.data.demo.tiny_vl import DATASET, LABELS, QUESTION, custom_dataset, write_images  # noqa: F401
from eqpo.data.demo.tiny_vl import build_qwen_vl as build_model  # noqa: F401

#: The runs of the tests: 4 steps of 2 prompts x 4 rollouts, a checkpoint every 2 steps, the label-set
#: F1 reward with strict matching (1 for the right label in the last box, else 0).
TRAIN = {
    "steps": 4,
    "batch_prompts": 2,
    "rollouts": 4,
    "lr": 1e-3,
    "test_freq": 2,
    "save_freq": 2,
    "max_response_length": 16,
    "rollout_data": True,
}
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


def export_fixture(root: Path) -> dict:
    """The fixture dataset as a data.custom entry under ``root``, its cohort and its verl export
    (train/val/test parquet files)."""
    from eqpo.workflow.pipeline import build_cohort, run_export_verl

    entry = custom_dataset(root / "raw")
    build_cohort([], root / "cohort.parquet", root / "table1", [entry])
    run_export_verl(root / "cohort.parquet", root, root / "verl", 0, [entry])
    return {"entry": entry, "root": root, "verl": root / "verl"}


def run_settings(model: Path, method: str, estimator_options=None, train=None):
    """The RunSettings of a test run of ``method`` from ``model``: TRAIN with ``train`` on top (the
    other `train` keys keep TrainSettings' defaults) and the REPRODUCTION options."""
    from eqpo.runs.settings import ReproductionOptions, RunSettings, TrainSettings

    return RunSettings(
        model="tiny-vl",
        method=method,
        train=TrainSettings.from_mapping({**TRAIN, **(train or {})}),
        estimator=dict(estimator_options or {}),
        options=ReproductionOptions.from_config(REPRODUCTION),
        model_config={"backend": "trl", "path": str(model)},
    )


def train_run(
    model: Path, data: dict, method: str, run_dir: Path, estimator_options=None, stop_after=None, train=None, trl=None
):
    """One eqpo.backends.trl run of ``method`` on the fixture export; ``train`` / ``trl`` change TRAIN / TRL."""
    from eqpo.backends.trl.trainer import run_training

    return run_training(
        data["verl"] / "train.parquet",
        data["verl"] / "val.parquet",
        run_settings(model, method, estimator_options, train),
        {**TRL, **(trl or {})},
        0,
        run_dir,
        stop_after=stop_after,
        log=lambda message: None,
    )
