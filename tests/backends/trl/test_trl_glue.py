"""The trl backend's glue without a model: every estimator of the library through the gathered-batch
path, TRL's prompt grouping checked, unscorable rows as padding, settings, and the TRL version pin."""

from __future__ import annotations

import re
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from eqpo.backends.trl import TRL_VERSION, require_trl
from eqpo.backends.trl.trainer import compute_advantages, grpo_config, run_fingerprint, trl_settings
from eqpo.core.advantages import ESTIMATORS, make_estimator
from eqpo.runs.settings import ReproductionOptions, RunSettings, TrainSettings

REPO = Path(__file__).resolve().parents[3]
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())


def _batch(seed=0, prompts=6, n=4):
    """prompts x n rollouts in TRL's order (a prompt's rollouts adjacent): two datasets, explicit
    groups on some prompts, the rest unlabeled."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(prompts):
        dataset = "HAM10000" if p % 2 else "CheXpert"
        group = None if p % 3 == 0 else ("F|a2" if p % 3 == 1 else "M|a3")
        rows += [{"dataset": dataset, "group": group, "true_group": group or "F|a1", "sample_id": f"s{p}"}] * n
    rewards = rng.integers(0, 3, size=prompts * n) / 2.0
    return rewards, rows


@pytest.mark.parametrize("method", sorted(set(ESTIMATORS) | set(CONFIG["methods"])))
def test_every_method_gets_its_estimators_advantages_over_steps(method):
    options = {k: v for k, v in (CONFIG.get("estimators") or {}).get(method, {}).items()}
    ours = make_estimator(method, **options)
    reference = make_estimator(method, **options)
    for step in (1, 2, 3):
        rewards, rows = _batch(seed=step)
        call = compute_advantages(ours, rewards, rows, 4, step)
        expected = reference(
            rewards,
            [f"{step}-{i // 4}" for i in range(len(rows))],
            [r["dataset"] for r in rows],
            [r["group"] for r in rows],
        )
        np.testing.assert_array_equal(call.advantages, expected)
    assert ours.state_dict() == reference.state_dict()


def test_eqpo_statistics_and_clusters_are_reported_like_the_verl_trainer():
    rewards, rows = _batch()
    call = compute_advantages(make_estimator("eqpo"), rewards, rows, 4, step=7)
    groups = {(g["dataset"], g["group"]) for g in call.stats.group_stats}
    assert ("HAM10000", "F|a2") in groups and ("CheXpert", "M|a3") in groups
    unlabeled = sorted({r["sample_id"] for r in rows if r["group"] is None})
    assert sorted(c["sample_id"] for c in call.clusters) == unlabeled
    assert all(c["step"] == 7 and c["true_group"] == "F|a1" and c["k"] >= 1 for c in call.clusters)
    dro = compute_advantages(make_estimator("grpo_dro"), rewards, rows, 4, step=1)
    cells = {(g["dataset"], g["group"]): g for g in dro.stats.group_stats}
    assert cells[("CheXpert", "UNK")]["N"] == 1 and cells[("HAM10000", "F|a2")]["N"] == 1
    assert cells[("CheXpert", "M|a3")]["rbar"] == pytest.approx(rewards[8:12].mean())  # prompt 2


def test_a_group_of_rollouts_from_different_prompts_is_an_error():
    rewards, rows = _batch()
    rows[5] = {**rows[5], "sample_id": "elsewhere"}
    with pytest.raises(RuntimeError, match="rollouts of one prompt"):
        compute_advantages(make_estimator("grpo"), rewards, rows, 4, 1)


def test_unscorable_completions_are_padding():
    rewards, rows = _batch()
    rewards[[0, 13]] = np.nan
    call = compute_advantages(make_estimator("grpo"), rewards, rows, 4, 1)
    assert call.advantages[0] == 0 and call.advantages[13] == 0
    kept = np.ones(len(rows), dtype=bool)
    kept[[0, 13]] = False
    ids = np.array([f"p{i // 4}" for i in range(len(rows))], dtype=object)
    expected = make_estimator("grpo")(
        rewards[kept],
        ids[kept],
        [r["dataset"] for r, k in zip(rows, kept, strict=False) if k],
        [r["group"] for r, k in zip(rows, kept, strict=False) if k],
    )
    np.testing.assert_array_equal(call.advantages[kept], expected)


def test_settings_map_the_train_block_onto_trls_config(tmp_path):
    train = {
        "steps": 5,
        "batch_prompts": 4,
        "rollouts": 6,
        "lr": 2e-6,
        "clip": 0.28,
        "kl_coef": 0.01,
        "temperature": 0.9,
        "save_freq": 3,
        "max_response_length": 64,
        "ppo_epochs": 2,
        "grad_clip": 0.5,
    }
    settings = trl_settings(TrainSettings.from_mapping(train), {"micro_batch": 3, "loss_type": "grpo"}, n_train=100)
    config = grpo_config(settings, tmp_path, seed=3)
    assert (config.max_steps, config.num_generations, config.per_device_train_batch_size) == (5, 6, 3)
    assert config.gradient_accumulation_steps == config.steps_per_generation == 4 * 6 // 3
    assert config.generation_batch_size == 24  # batch_prompts x rollouts completions per step
    assert (config.learning_rate, config.epsilon, config.beta, config.temperature) == (2e-6, 0.28, 0.01, 0.9)
    assert (config.num_iterations, config.max_grad_norm, config.save_steps, config.seed) == (2, 0.5, 3, 3)
    assert (config.max_completion_length, config.loss_type) == (64, "grpo")
    epochs = TrainSettings.from_mapping({"batch_prompts": 4, "epochs": 2, "steps": None})
    assert trl_settings(epochs, {}, n_train=10).max_steps == 2 * (10 // 4)


def test_train_keys_not_given_are_config_yamls_defaults(tmp_path):
    """A partial `train` block keeps config.yaml's values for the rest (TrainSettings' defaults):
    the step budget (90 steps, not epochs x prompts), the group size, lr, frequencies, lengths."""
    train = CONFIG["train"]
    settings = trl_settings(TrainSettings.from_mapping({"batch_prompts": 4}), {}, n_train=10)
    assert (settings.max_steps, settings.batch_prompts, settings.rollouts) == (90, 4, 10)
    assert settings.max_steps == train["steps"] and settings.rollouts == train["rollouts"]
    assert settings.micro_batch == 10  # trl.micro_batch not given: one group per forward/backward
    assert (settings.test_freq, settings.save_freq) == (train["test_freq"], train["save_freq"]) == (5, 20)
    assert settings.max_response_length == train["max_response_length"] == 4096
    assert (settings.record_rollouts, settings.restart_estimator_on_resume) == (False, False)
    config = grpo_config(settings, tmp_path, seed=0)
    assert (config.learning_rate, config.epsilon, config.beta, config.temperature) == (5e-7, 0.2, 0.0, 1.0)
    assert (config.num_iterations, config.max_grad_norm) == (1, 1.0)  # ppo_epochs, grad_clip
    assert (config.max_steps, config.save_steps, config.max_completion_length) == (90, 20, 4096)


@pytest.mark.parametrize(
    "trl,message",
    [
        ({"los_type": "grpo"}, r"unknown key\(s\) \['los_type'\]"),
        ({"learning_rate": 1.0}, r"come from the `train` block"),
        ({"micro_batch": 5}, r"must divide batch_prompts x rollouts"),
    ],
)
def test_bad_trl_settings_are_clear_errors(trl, message):
    with pytest.raises(ValueError, match=message):
        trl_settings(TrainSettings.from_mapping({"batch_prompts": 2, "rollouts": 4}), trl, n_train=10)


def test_train_settings_trl_cannot_run_are_clear_errors():
    with pytest.raises(ValueError, match="rollouts >= 2"):
        trl_settings(TrainSettings.from_mapping({"rollouts": 1}), {}, n_train=10)
    with pytest.raises(ValueError, match="batch_prompts=16 exceeds the 10 training prompts"):
        trl_settings(TrainSettings.from_mapping({"batch_prompts": 16, "steps": None}), {}, n_train=10)


def test_a_rerun_resumes_only_with_the_same_training_settings(tmp_path):
    """The fingerprint of run_dir/ckpt: unchanged settings (or changes to what no training step
    reads) keep it, so a rerun resumes; any training setting, the run's reward, the estimator or the
    training file changes it, so the rerun starts afresh."""
    data = tmp_path / "train.parquet"
    data.write_bytes(b"rows")
    base = RunSettings(
        model="tiny",
        method="eqpo",
        train=TrainSettings.from_mapping({"steps": 4, "batch_prompts": 2, "rollouts": 4}),
        estimator={"k_max": 3},
        model_config={"backend": "trl", "path": "org/model"},
        max_samples=8,
    )
    trl = {"micro_batch": 4, "eval_batch_size": 6}

    def fingerprint(settings=base, block=trl, seed=0, train_parquet=data):
        return run_fingerprint(settings, trl_settings(settings.train, block, n_train=10), seed, train_parquet)

    def changed(**train):
        return replace(base, train=replace(base.train, **train))

    same = fingerprint()
    assert fingerprint(RunSettings.from_dict(base.as_dict())) == same  # the workflow's round trip
    assert fingerprint(replace(base, max_samples=2)) == same
    assert fingerprint(block={**trl, "eval_batch_size": 2, "val_max_samples": 3, "threads": 1}) == same
    assert fingerprint(changed(gpus=8, ppo_mini_batch=4, max_prompt_length=64)) == same  # verl's keys
    assert fingerprint(changed(lr=1e-3)) != same
    assert fingerprint(changed(max_response_length=16)) != same
    assert fingerprint(changed(rollout_data=True)) != same
    assert fingerprint(replace(base, options=ReproductionOptions(reward="f1"))) != same
    assert fingerprint(replace(base, estimator={"k_max": 4})) != same
    assert fingerprint(replace(base, model_config={"backend": "trl", "path": "org/other"})) != same
    assert fingerprint(block={**trl, "micro_batch": 2}) != same
    assert fingerprint(seed=1) != same
    other = tmp_path / "other.parquet"
    other.write_bytes(b"other rows")
    assert fingerprint(train_parquet=other) != same


def test_the_trl_version_is_pinned_in_one_place_everywhere():
    require_trl()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert f"trl=={TRL_VERSION}" in pyproject["project"]["optional-dependencies"]["trl"]
    env = yaml.safe_load((REPO / "envs" / "trl.yaml").read_text())
    pins = [p for p in env["dependencies"][-1]["pip"] if re.match(r"trl\b", p)]
    assert pins == [f"trl=={TRL_VERSION}"]


def test_export_rows_become_trls_structured_chats(tmp_path):
    """Images at their <image> placeholders in order, text segments kept; a text-only row in a
    dataset with images gets structured text, so the prompt column has one type."""
    from PIL import Image

    from eqpo.backends.trl.data import to_trl_dataset
    from eqpo.data.export import to_verl

    for name in ("a.png", "b.png"):
        Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / name)
    cohort = pd.DataFrame(
        {
            "sample_id": ["two", "none"],
            "dataset": ["HAM10000", "HAM10000"],
            "split": ["train", "train"],
            "images": [["a.png", "b.png"], []],
            "labels": [["Melanoma"], ["Nevus"]],
            "age": [40.0, None],
            "sex": ["F", None],
            "group": ["F|a2", None],
        }
    )
    export = to_verl(cohort, tmp_path)
    export.loc[0, "prompt"][0]["content"] = "<image> first <image> second"
    table = to_trl_dataset(export)
    two, none = table[0], table[1]
    assert [p["type"] for p in two["prompt"][0]["content"]] == ["image", "text", "image", "text"]
    assert [p["text"] for p in two["prompt"][0]["content"] if p["type"] == "text"] == [" first ", " second"]
    assert len(two["images"]) == 2 and two["images"][0].size == (8, 8)
    assert none["prompt"][0]["content"][0]["type"] == "text" and none["images"] == []
    assert (two["ground_truth"], two["dataset"], two["group"], two["sample_id"]) == (
        "Melanoma",
        "HAM10000",
        "F|a2",
        "two",
    )
    assert none["group"] is None and none["true_group"] is None
    export.loc[0, "prompt"][0]["content"] = "<image> only one placeholder"
    with pytest.raises(ValueError, match="1 <image> placeholders for 2 images"):
        to_trl_dataset(export)
