"""One typed settings object per run, resolved once from the config: :class:`TrainSettings` (the
`train` block, its defaults config.yaml's, its bounds the schema's) and :class:`RunSettings` (what
a backend is handed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from eqpo.runs.settings import ReproductionOptions, RunSettings, TrainSettings

REPO = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((REPO / "config.yaml").read_text())
TRAIN_SCHEMA = yaml.safe_load((REPO / "workflow/schemas/config.schema.yaml").read_text())["properties"]["train"]


def test_fields_are_the_schemas_train_keys():
    assert set(TrainSettings.__dataclass_fields__) == set(TRAIN_SCHEMA["properties"])


@pytest.mark.parametrize("key", sorted(TRAIN_SCHEMA["properties"]))
def test_defaults_are_config_yamls_train_block(key):
    """The library trains as the pipeline does: each default is config.yaml's value, else the
    schema's default, else verl's own default (ppo_epochs 1, grad_clip 1.0, which config.yaml
    leaves to verl)."""
    verl_defaults = {"ppo_epochs": 1, "grad_clip": 1.0}
    spec = TRAIN_SCHEMA["properties"][key]
    expected = CONFIG["train"].get(key, spec.get("default", verl_defaults.get(key)))
    assert key in CONFIG["train"] or "default" in spec or key in verl_defaults
    assert TrainSettings().as_dict()[key] == expected


@pytest.mark.parametrize(
    "key", sorted(k for k, v in TRAIN_SCHEMA["properties"].items() if "minimum" in v or "exclusiveMinimum" in v)
)
def test_bounds_are_the_schemas(key):
    spec = TRAIN_SCHEMA["properties"][key]
    integer = "integer" in spec["type"] if isinstance(spec["type"], list) else spec["type"] == "integer"
    if "minimum" in spec:
        low = spec["minimum"]
        TrainSettings.from_mapping({key: low})  # the bound itself is allowed
        below = low - 1 if integer else low - 1e-9
    else:
        low = spec["exclusiveMinimum"]
        TrainSettings.from_mapping({key: low + (1 if integer else 1e-9)})
        below = low
    with pytest.raises(ValueError, match=f"train.{key} must be"):
        TrainSettings.from_mapping({key: below})


def test_bad_values_name_the_key():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['step'\]"):
        TrainSettings.from_mapping({"step": 3})
    with pytest.raises(ValueError, match="train.rollouts must be an integer"):
        TrainSettings.from_mapping({"rollouts": True})
    with pytest.raises(ValueError, match="train.batch_prompts must be an integer"):
        TrainSettings.from_mapping({"batch_prompts": 8.0})
    with pytest.raises(ValueError, match="train.save_hf_model must be true or false"):
        TrainSettings.from_mapping({"save_hf_model": "yes"})
    with pytest.raises(ValueError, match="train.device must be one of"):
        TrainSettings.from_mapping({"device": "tpu"})
    with pytest.raises(ValueError, match=r"train.rollout_gpu_memory must be in \(0, 1\]"):
        TrainSettings.from_mapping({"rollout_gpu_memory": 1.5})


def test_numbers_are_floats_and_none_is_kept():
    train = TrainSettings.from_mapping({"lr": 1, "steps": None, "max_ckpt_to_keep": None, "loggers": ["wandb"]})
    assert isinstance(train.lr, float) and train.lr == 1.0
    assert train.steps is None and train.max_ckpt_to_keep is None
    assert train.loggers == ("wandb",) and train.as_dict()["loggers"] == ["wandb"]


def test_a_run_gets_its_runs_block_estimator_and_reward():
    """config.yaml's QoQ-Med3 EQPO run: the scripts' k_max 20 and qoq_med3 reward; Qwen2.5-VL GRPO:
    65 steps (the authors' Fig. 2 series)."""
    qoq = RunSettings.from_config(CONFIG, "qoq-med3-vl-8b", "eqpo")
    assert qoq.estimator["k_max"] == 20
    assert qoq.options.reward == "qoq_med3"
    assert qoq.options.class_set == "group_present"  # the rest of the options as the config says
    assert qoq.model_config["path"] == "ddvd233/QoQ-Med3-VL-8B"
    assert qoq.experiment == CONFIG["experiment"]
    qwen = RunSettings.from_config(CONFIG, "qwen2.5-vl-7b", "grpo")
    assert qwen.train.steps == 65
    assert qwen.options.reward == CONFIG["reward"]["function"]
    assert RunSettings.from_config(CONFIG, "qwen2.5-vl-7b", "eqpo").train.steps == 90


def test_round_trip_through_plain_values():
    settings = RunSettings.from_config(CONFIG, "qoq-med3-vl-8b", "eqpo")
    plain = json.loads(json.dumps(settings.as_dict()))  # what a Snakemake rule's params carry
    assert RunSettings.from_dict(plain) == settings
    assert RunSettings.from_dict(yaml.safe_load(yaml.safe_dump(plain))) == settings


def test_from_config_names_bad_keys():
    with pytest.raises(ValueError, match="model 'nope' is not defined under `models:`"):
        RunSettings.from_config(CONFIG, "nope", "eqpo")
    bad = {**CONFIG, "metrics": {"class_set": "all"}}
    with pytest.raises(ValueError, match="metrics.class_set must be one of"):
        RunSettings.from_config(bad, "medgemma-4b", "eqpo")
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['colour'\]"):
        RunSettings.from_dict({"model": "m", "method": "grpo", "colour": "red"})


def test_defaults_are_the_reproduction_defaults():
    settings = RunSettings(model="m", method="eqpo")
    assert settings.train == TrainSettings() and settings.options == ReproductionOptions()


OVERLAYS = [[], *[[path] for path in sorted((REPO / "config").glob("*.yaml"))]]


@pytest.mark.parametrize("overlays", OVERLAYS, ids=lambda o: o[0].name if o else "config.yaml")
def test_load_config_gives_the_config_snakemake_validates(overlays):
    """The command-line tools' config (load_config) is the workflow's: the overlays merged and the
    schema's defaults filled in exactly as the Snakefile's snakemake.utils.validate does."""
    import copy

    from snakemake.utils import validate

    from eqpo.runs.settings import load_config, merge_config

    raw = CONFIG
    for path in overlays:
        raw = merge_config(raw, yaml.safe_load(path.read_text()) or {})
    expected = copy.deepcopy(raw)
    validate(expected, str(REPO / "workflow/schemas/config.schema.yaml"))
    assert expected != raw  # the schema has defaults to fill in
    assert load_config(overlays, REPO) == expected


def test_load_config_names_what_the_schema_rejects(tmp_path):
    from eqpo.runs.settings import load_config

    overlay = tmp_path / "bad.yaml"
    overlay.write_text("train:\n  rollouts: 0\n  lerning_rate: 1.0e-6\n")
    with pytest.raises(ValueError) as err:
        load_config([overlay], REPO)
    assert "train.rollouts: 0 is less than the minimum of 1" in str(err.value)
    assert "'lerning_rate' was unexpected" in str(err.value)
