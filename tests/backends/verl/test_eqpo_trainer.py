"""The eqpo_sync trainer beyond the data hand-off: resuming (a checkpoint without estimator state
stops the run, as EQPO's history would silently restart from nothing, unless a fresh estimator is
asked for explicitly) and the training-time unparsed-item share."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf
from verl.trainer.ppo.v1.trainer_base import PPOTrainer  # noqa: E402  (after eqpo.backends.verl)

from eqpo.backends.verl import estimators as E
from eqpo.backends.verl import trainer as T
from eqpo.core.advantages import make_estimator
from eqpo.runs.files import MissingEstimatorStateError


def trainer_at(tmp_path: Path, monkeypatch, restart: bool | None = None, step: int = 20) -> T.EqpoSyncTrainer:
    """An eqpo_sync trainer whose verl base class "resumes" at ``step`` from ``tmp_path/ckpt`` (verl's
    own loading is replaced: it needs Ray workers)."""
    root = tmp_path / "ckpt"
    (root / f"global_step_{step}").mkdir(parents=True)
    (root / "latest_checkpointed_iteration.txt").write_text(str(step))
    settings = {"resume_mode": "auto", "default_local_dir": str(root), "resume_from_path": None}
    if restart is not None:
        settings["eqpo_restart_estimator"] = restart
    trainer = T.EqpoSyncTrainer.__new__(T.EqpoSyncTrainer)  # verl's __init__ builds the workers
    trainer.config = OmegaConf.create({"trainer": settings})
    trainer.eqpo_cluster_log = None

    def base_load(self):
        self.global_steps = step

    monkeypatch.setattr(PPOTrainer, "_load_checkpoint", base_load)
    return trainer


def test_a_checkpoint_without_estimator_state_stops_the_resume_and_names_it(tmp_path, monkeypatch):
    trainer = trainer_at(tmp_path, monkeypatch)
    with pytest.raises(MissingEstimatorStateError) as err:
        trainer._load_checkpoint()
    message = str(err.value)
    assert str(tmp_path / "ckpt" / "global_step_20") in message and "eqpo_estimator.json" in message
    assert "train.restart_estimator_on_resume: true" in message


def test_a_fresh_estimator_only_when_asked(tmp_path, monkeypatch, caplog):
    trainer = trainer_at(tmp_path, monkeypatch, restart=True)
    with caplog.at_level(logging.WARNING, logger=T.__name__):
        trainer._load_checkpoint()
    assert trainer.global_steps == 20 and "start afresh" in caplog.text
    trainer = trainer_at(tmp_path / "off", monkeypatch, restart=False)
    with pytest.raises(MissingEstimatorStateError):
        trainer._load_checkpoint()


def _batch(seed: int):
    """Eight prompts x 4 rollouts of two datasets; half the prompts unlabeled (clustered)."""
    rng = np.random.default_rng(seed)
    prompts = np.repeat([f"{seed}:{p}" for p in range(8)], 4)
    datasets = np.repeat(["A", "B"] * 4, 4)
    groups = np.repeat(["F", None, "M", None] * 2, 4)
    return rng.integers(0, 2, size=32).astype(float), prompts, datasets, groups


def test_a_checkpoint_with_estimator_state_resumes_it(tmp_path, monkeypatch):
    """A run that stepped its EQPO estimator twice, saved and was reset (a new process) continues after
    _load_checkpoint exactly as the uninterrupted estimator does; without the load it would not."""
    options = {"scope": "history", "k_max": 3}
    E.reset_estimators()
    uninterrupted = make_estimator("eqpo", **options)
    for seed in (1, 2):
        E.get_estimator("eqpo", options)(*_batch(seed))
        uninterrupted(*_batch(seed))
    state = E.estimator_state()
    assert state["estimators"]["eqpo"]["history"]["totals"]["domain"]  # a state with something in it
    trainer = trainer_at(tmp_path, monkeypatch)
    (tmp_path / "ckpt" / "global_step_20" / T.ESTIMATOR_STATE_FILE).write_text(json.dumps(state))
    E.reset_estimators()
    fresh = E.get_estimator("eqpo", options)(*_batch(3))
    E.reset_estimators()
    trainer._load_checkpoint()
    resumed = E.get_estimator("eqpo", options)(*_batch(3))
    expected = uninterrupted(*_batch(3))
    assert trainer.global_steps == 20
    np.testing.assert_allclose(resumed, expected, rtol=1e-12)
    assert not np.allclose(fresh, expected)  # the history changes this step's advantages
    E.reset_estimators()


def test_unparsed_item_share_per_dataset_from_the_rewards_extra_info():
    """Training-time logging: the reward's item counts summed per dataset, padding rows and rows
    without counts left out. H: (1 + 0) / (2 + 3) = 0.2; C: 0 / 4 = 0; V: no items -> 0."""
    from eqpo.backends.verl.estimators import BatchContext

    info = lambda unparsed, items: {"reward_extra_info": {"unparsed_items": unparsed, "items": items, "score": 0.5}}  # noqa: E731
    extra = [info(1.0, 2.0), info(0.0, 3.0), info(0.0, 4.0), info(5.0, 5.0), {"other": 1}, info(0.0, 0.0)]
    context = BatchContext(
        datasets=("H", "H", "C", "H", "C", "V"),
        groups=(None,) * 6,
        sample_ids=tuple("abcdef"),
        is_padding=(False, False, False, True, False, False),
    )
    assert T.unparsed_item_metrics(extra, context) == {
        "eqpo/unparsed_item_share/C": 0.0,
        "eqpo/unparsed_item_share/H": pytest.approx(0.2),
        "eqpo/unparsed_item_share/V": 0.0,
    }
