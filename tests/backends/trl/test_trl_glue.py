"""The trl backend's glue without a model: every estimator of the library through the gathered-batch
path, TRL's prompt grouping checked, unscorable rows as padding, settings, and the TRL version pin."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from eqpo.backends.trl import TRL_VERSION, require_trl
from eqpo.backends.trl.trainer import compute_advantages, grpo_config, trl_settings
from eqpo.core.advantages import ESTIMATORS, make_estimator

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
    settings = trl_settings(train, {"micro_batch": 3, "loss_type": "grpo"}, n_train=100)
    config = grpo_config(settings, tmp_path, seed=3)
    assert (config.max_steps, config.num_generations, config.per_device_train_batch_size) == (5, 6, 3)
    assert config.gradient_accumulation_steps == config.steps_per_generation == 4 * 6 // 3
    assert config.generation_batch_size == 24  # batch_prompts x rollouts completions per step
    assert (config.learning_rate, config.epsilon, config.beta, config.temperature) == (2e-6, 0.28, 0.01, 0.9)
    assert (config.num_iterations, config.max_grad_norm, config.save_steps, config.seed) == (2, 0.5, 3, 3)
    assert (config.max_completion_length, config.loss_type) == (64, "grpo")
    assert trl_settings({"batch_prompts": 4, "epochs": 2}, {}, n_train=10).max_steps == 2 * (10 // 4)


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
        trl_settings({"batch_prompts": 2, "rollouts": 4}, trl, n_train=10)


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
