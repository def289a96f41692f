"""The eqpo_sync trainer beyond the data hand-off: resuming (a checkpoint without estimator state
stops the run, as EQPO's history would silently restart from nothing, unless a fresh estimator is
asked for explicitly) and the training-time unparsed-item share."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from eqpo.advantages import MissingEstimatorStateError
from eqpo.verl_ext import estimators as E
from eqpo.verl_ext import trainer as T

from verl.trainer.ppo.v1.trainer_base import PPOTrainer  # noqa: E402  (after eqpo.verl_ext)


def trainer_at(tmp_path: Path, monkeypatch, restart: bool | None = None, step: int = 20) -> "T.EqpoSyncTrainer":
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


def test_a_checkpoint_with_estimator_state_resumes_it(tmp_path, monkeypatch):
    trainer = trainer_at(tmp_path, monkeypatch)
    state = E.estimator_state()  # what _save_checkpoint writes (no estimator used yet)
    (tmp_path / "ckpt" / "global_step_20" / T.ESTIMATOR_STATE_FILE).write_text(json.dumps(state))
    E.reset_estimators()
    trainer._load_checkpoint()
    assert trainer.global_steps == 20 and E.estimator_state() == state


def test_unparsed_item_share_per_dataset_from_the_rewards_extra_info():
    """Training-time logging: the reward's item counts summed per dataset, padding rows and rows
    without counts left out. H: (1 + 0) / (2 + 3) = 0.2; C: 0 / 4 = 0; V: no items -> 0."""
    from eqpo.verl_ext.estimators import BatchContext

    info = lambda unparsed, items: {"reward_extra_info": {"unparsed_items": unparsed, "items": items, "score": 0.5}}  # noqa: E731
    extra = [info(1.0, 2.0), info(0.0, 3.0), info(0.0, 4.0), info(5.0, 5.0), {"other": 1}, info(0.0, 0.0)]
    context = BatchContext(datasets=("H", "H", "C", "H", "C", "V"), groups=(None,) * 6,
                           sample_ids=tuple("abcdef"), is_padding=(False, False, False, True, False, False))
    assert T.unparsed_item_metrics(extra, context) == {
        "eqpo/unparsed_item_share/C": 0.0, "eqpo/unparsed_item_share/H": pytest.approx(0.2),
        "eqpo/unparsed_item_share/V": 0.0}
