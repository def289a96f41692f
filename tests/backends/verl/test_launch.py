"""The verl launch: overrides composed with verl 0.9.1's own Hydra config for every paper run, the
`--cfg job` entry point, and verl's outputs (written with verl's own writers) -> our run files."""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from eqpo.backends.verl import launch, logs
from eqpo.backends.verl.estimators import METHOD_TO_VERL, REWARD_NAME, REWARD_PATH, TRAINER_NAME
from eqpo.backends.verl.launch import RunPaths, TrainingEnvironmentError, build_command, build_overrides, format_value
from eqpo.core.rewards import render_answer
from eqpo.data.export import to_verl
from eqpo.runs.settings import RunSettings, estimator_options, run_reward, train_settings

REPO = Path(__file__).resolve().parents[3]
PAPER = yaml.safe_load((REPO / "config.yaml").read_text())
VERL_CONFIG_DIR = Path(importlib.util.find_spec("verl").submodule_search_locations[0]) / "trainer" / "config"
RUNS = [(m, me, s) for m in PAPER["base_models"] for me in PAPER["methods"] for s in PAPER["seeds"]]


@pytest.fixture(scope="module", autouse=True)
def cfg_job(tmp_path_factory):
    """`python -m verl.trainer.main_ppo <our overrides> --cfg job` for one paper run, started first so
    that it runs while the in-process tests do (it imports verl and our extension: ~20 s)."""
    cwd = tmp_path_factory.mktemp("cfg_job")
    paths = RunPaths.for_run(cwd / "results" / "run")
    argv, env = build_command(RunSettings.from_config(PAPER, "qwen2.5-vl-7b", "eqpo"), 0, paths, cwd / "data")
    proc = subprocess.Popen(
        [*argv, "--cfg", "job"], env=env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    yield proc, paths, cwd
    if proc.poll() is None:
        proc.kill()
        proc.communicate()


def compose_overrides(overrides):
    """verl's config with our overrides, composed by Hydra as main_ppo's @hydra.main does
    (config_path=verl/trainer/config, config_name=ppo_trainer)."""
    with initialize_config_dir(config_dir=str(VERL_CONFIG_DIR), version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def apply_overrides(base, overrides):
    """The same result without re-reading verl's ~30 YAML files (0.7 s a run): Hydra's own override
    step (ConfigLoaderImpl._apply_overrides_to_config, what compose runs after loading the defaults)
    on a copy of the composed defaults. Valid because none of our overrides selects a config group
    (checked against a full compose in the test below)."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl

    cfg = copy.deepcopy(base)
    ConfigLoaderImpl._apply_overrides_to_config(OverridesParser.create().parse_overrides(overrides), cfg)
    return cfg


@pytest.fixture(scope="module")
def composed(tmp_path_factory):
    """verl's config of every (model, method, seed) of the paper config, with its overrides."""
    root = tmp_path_factory.mktemp("runs")
    base = compose_overrides([])
    out = {}
    for run in RUNS:
        paths = RunPaths.for_run(root / "/".join(map(str, run)))
        overrides = build_overrides(RunSettings.from_config(PAPER, run[0], run[1]), run[2], paths, root / "data")
        out[run] = (apply_overrides(base, overrides), paths, root / "data", overrides)
    return out


# ----------------------------------------------------------------------------------------------
# Overrides against verl's config
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("run", [("medgemma-4b", "eqpo", 0), ("qoq-med3-vl-8b", "grpo_rs", 0)])
def test_a_full_hydra_compose_gives_the_same_config(composed, run):
    cfg, _, _, overrides = composed[run]
    full = compose_overrides(overrides)
    assert OmegaConf.to_container(full) == OmegaConf.to_container(cfg)
    OmegaConf.to_container(full, resolve=True)  # every interpolation resolves with our values


def test_every_paper_run_composes_with_verls_config_and_passes_its_validation(composed):
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    assert len(composed) == len(PAPER["base_models"]) * len(PAPER["methods"]) * len(PAPER["seeds"]) == 24
    for cfg, *_ in composed.values():
        validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
        # outcome rewards; a reference policy only for the scripts' KL loss (MedGemma RLOO, Qwen REINFORCE++)
        assert not need_critic(cfg) and need_reference_policy(cfg) == cfg.actor_rollout_ref.actor.use_kl_loss
    assert sum(cfg.actor_rollout_ref.actor.use_kl_loss for cfg, *_ in composed.values()) == 2


@pytest.mark.parametrize("run", RUNS, ids=["/".join(map(str, r)) for r in RUNS])
def test_values_land_where_verl_reads_them(composed, run):
    cfg, paths, data, _ = composed[run]
    model, method, seed = run
    # the run's settings: `train` with its `runs` overrides (the authors' scripts, config.yaml)
    train = train_settings(PAPER, model, method)
    actor, rollout = cfg.actor_rollout_ref.actor, cfg.actor_rollout_ref.rollout
    assert cfg.algorithm.adv_estimator == METHOD_TO_VERL[method]
    assert cfg.trainer.v1.trainer_mode == TRAINER_NAME == "eqpo_sync"
    assert (cfg.reward.custom_reward_function.path, cfg.reward.custom_reward_function.name) == (
        REWARD_PATH,
        REWARD_NAME,
    )
    assert cfg.actor_rollout_ref.model.external_lib == "eqpo.backends.verl"
    assert cfg.actor_rollout_ref.model.path == PAPER["models"][model]["path"]
    assert cfg.data.train_batch_size == train["batch_prompts"]
    assert rollout.n == train["rollouts"]
    assert actor.optim.lr == pytest.approx(train["lr"])
    assert actor.ppo_mini_batch_size == train["ppo_mini_batch"]
    assert actor.clip_ratio == actor.clip_ratio_low == actor.clip_ratio_high == train["clip"]
    assert actor.use_kl_loss is (train["kl_coef"] > 0) and cfg.algorithm.use_kl_in_reward is False
    assert cfg.trainer.total_epochs == train["epochs"] and cfg.trainer.total_training_steps == train["steps"]
    assert (cfg.trainer.test_freq, cfg.trainer.save_freq) == (train["test_freq"], train["save_freq"])
    assert rollout.temperature == train["temperature"]
    assert (rollout.val_kwargs.temperature, rollout.val_kwargs.do_sample, rollout.val_kwargs.n) == (0, False, 1)
    assert (cfg.data.max_prompt_length, cfg.data.max_response_length) == (4096, 4096)
    assert (rollout.prompt_length, rollout.response_length) == (4096, 4096)  # interpolated from data.*
    assert rollout.gpu_memory_utilization == train["rollout_gpu_memory"]
    assert rollout.tensor_model_parallel_size == train["tensor_parallel"]
    assert rollout.name == "vllm"
    assert (cfg.trainer.n_gpus_per_node, cfg.trainer.nnodes) == (train["gpus"], 1)
    part = "train_rs" if method == "grpo_rs" else "train"
    assert cfg.data.train_files == str(Path(data).resolve() / f"{part}.parquet")
    assert cfg.data.val_files == str(Path(data).resolve() / "val.parquet")
    assert cfg.data.image_key == "images"
    assert cfg.data.seed == actor.data_loader_seed == actor.fsdp_config.seed == rollout.seed == seed
    # Disk: no HF copy in a save, only the latest checkpoint kept, no rollout dump.
    assert list(actor.checkpoint.save_contents) == ["model", "optimizer", "extra"] and cfg.trainer.resume_mode == "auto"
    assert cfg.trainer.max_actor_ckpt_to_keep == cfg.trainer.max_critic_ckpt_to_keep == 1
    assert cfg.trainer.rollout_data_dir is None
    assert cfg.trainer.default_local_dir == str(paths.checkpoints) and Path(cfg.trainer.default_local_dir).is_absolute()
    assert cfg.trainer.validation_data_dir == str(paths.validation_dir)
    assert cfg.trainer.eqpo_cluster_log == str(paths.cluster_log)
    assert list(cfg.trainer.logger) == ["console", "file"]
    # Attention that the shipped environment supports: sdpa on the padded path (verl would load
    # flash_attention_2 and, with remove-padding, call flash_attn_varlen_func for Qwen2.5-VL).
    model_cfg = cfg.actor_rollout_ref.model
    assert model_cfg.override_config.attn_implementation == "sdpa" and model_cfg.use_remove_padding is False
    assert cfg.actor_rollout_ref.actor.use_remove_padding is False  # interpolated from the model's
    if PAPER["models"][model]["model_type"] == "gemma3":  # every MedGemma run: Gemma3's three settings
        assert model_cfg.use_fused_kernels is False
    # Ray: this job's own local instance (never another job's cluster), no dashboard port.
    assert cfg.ray_kwargs.ray_init.address == "local" and cfg.ray_kwargs.ray_init.include_dashboard is False
    assert "eqpo_restart_estimator" not in cfg.trainer and cfg.data.val_max_samples == -1
    # the config's reward reading reaches verl's reward function (reward.function / matching, and
    # metrics.extraction for the prediction that validation is scored on)
    assert dict(cfg.reward.custom_reward_function.reward_kwargs) == {
        "function": run_reward(PAPER, model, method),
        "matching": PAPER["reward"]["matching"],
        "extraction": PAPER["metrics"]["extraction"],
    }
    assert cfg.trainer.experiment_name == f"{model}_{method}_seed{seed}"
    eqpo = cfg.algorithm.get("eqpo")
    assert (OmegaConf.to_container(eqpo) if eqpo is not None else {}) == estimator_options(PAPER, model, method)


def test_reward_path_loads_with_verls_own_loader(composed):
    """verl's get_custom_reward_fn accepts the pkg:// form and finds compute_score."""
    from verl.trainer.ppo.reward import get_custom_reward_fn

    cfg, *_ = composed[RUNS[0]]
    fn = get_custom_reward_fn(cfg)
    out = fn(
        data_source="HAM10000",
        solution_str=render_answer(["Nevus"]),
        ground_truth="Nevus",
        extra_info={"dataset": "HAM10000", "sample_id": "s1"},
    )
    assert out["score"] == 0.5  # config.yaml's authors_composite: 0.5 x F1 (1.0) + 0.1 x bbox format (0)


def test_estimators_and_trainer_mode_are_registered_in_verl():
    from verl.trainer.ppo import core_algos
    from verl.trainer.ppo.v1 import get_trainer_cls

    for method in PAPER["methods"]:
        assert callable(core_algos.get_adv_estimator_fn(METHOD_TO_VERL[method]))
    assert get_trainer_cls(TRAINER_NAME).__name__


def test_cfg_job_entry_point_accepts_the_command_without_training(cfg_job):
    proc, paths, cwd = cfg_job
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    job = yaml.safe_load(out)
    assert job["algorithm"]["adv_estimator"] == "eqpo" and job["algorithm"]["eqpo"]["k_max"] == 3
    assert job["trainer"]["v1"]["trainer_mode"] == "eqpo_sync"
    assert job["actor_rollout_ref"]["actor"]["optim"]["lr"] == pytest.approx(1e-6)  # the Qwen2.5-VL script's
    assert job["reward"]["custom_reward_function"]["path"] == "pkg://eqpo.backends.verl.reward"
    assert not paths.work_dir.exists() and not (cwd / "outputs").exists()  # nothing ran


# ----------------------------------------------------------------------------------------------
# Rendering details
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        True,
        False,
        None,
        3,
        -1,
        5e-7,
        0.6,
        "vllm",
        "history",
        "pkg://a.b",
        "/abs/with space/x",
        "it's",
        "true",
        "null",
        "1e-3",
        ["model", "hf_model"],
        Path("/a/b-c.d/e"),
    ],
)
def test_format_value_round_trips_through_hydras_parser(value):
    parsed = OverridesParser.create().parse_overrides([f"k={format_value(value)}"])[0].value()
    expected = str(value) if isinstance(value, Path) else value
    assert parsed == expected


def test_model_overrides_replace_defaults_and_compose(tmp_path):
    config = copy.deepcopy(PAPER)
    config["models"]["medgemma-4b"]["overrides"] = {
        "actor_rollout_ref.model.use_remove_padding": False,
        "+actor_rollout_ref.model.override_config.attn_implementation": "sdpa",
        "data": {"train_batch_size": 64},
    }
    config["train"].update(kl_coef=0.01, steps=7, nnodes=2)
    overrides = build_overrides(
        RunSettings.from_config(config, "medgemma-4b", "grpo_dro"), 1, RunPaths.for_run(tmp_path), tmp_path
    )
    assert sum(o.startswith("data.train_batch_size=") for o in overrides) == 1
    cfg = compose_overrides(overrides)
    assert cfg.data.train_batch_size == 64 and cfg.actor_rollout_ref.model.use_remove_padding is False
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "sdpa"
    assert cfg.actor_rollout_ref.actor.use_kl_loss and cfg.actor_rollout_ref.actor.kl_loss_coef == 0.01
    assert (cfg.trainer.total_training_steps, cfg.trainer.nnodes) == (7, 2)
    assert cfg.algorithm.adv_estimator == "grpo_dro" and cfg.algorithm.eqpo.eta == 0.01


def test_environment_loads_the_extension_everywhere(tmp_path):
    paths = RunPaths.for_run(tmp_path / "run")
    _, env = build_command(
        RunSettings.from_config(PAPER, "medgemma-4b", "grpo"),
        0,
        paths,
        tmp_path,
        base_env={"VERL_USE_EXTERNAL_MODULES": "other.mod", "PYTHONPATH": "/x"},
    )
    assert env["VERL_USE_EXTERNAL_MODULES"] == "other.mod,eqpo.backends.verl"
    assert env["VERL_FILE_LOGGER_PATH"] == str(paths.file_log) and paths.file_log.is_absolute()
    assert env["PYTHONPATH"].split(os.pathsep) == [str(REPO / "src"), "/x"]


def test_bad_runs_are_named(tmp_path):
    paths = RunPaths.for_run(tmp_path)
    with pytest.raises(ValueError, match="unknown method 'nope'"):
        build_overrides(RunSettings.from_config(PAPER, "medgemma-4b", "nope"), 0, paths, tmp_path)
    with pytest.raises(ValueError, match=r"models\.demo-mlp\.backend"):
        build_overrides(RunSettings.from_config(PAPER, "demo-mlp", "grpo"), 0, paths, tmp_path)
    with pytest.raises(ValueError, match="not defined under `models:`"):
        build_overrides(RunSettings.from_config(PAPER, "gpt-9", "grpo"), 0, paths, tmp_path)


def test_options_for_a_verl_builtin_estimator_are_refused(tmp_path):
    config = copy.deepcopy(PAPER)
    config["estimators"]["grpo"] = {"eps": 1e-4}  # verl's grpo would silently ignore them
    with pytest.raises(ValueError, match="takes no algorithm.eqpo options"):
        build_overrides(RunSettings.from_config(config, "medgemma-4b", "grpo"), 0, RunPaths.for_run(tmp_path), tmp_path)


def test_model_path_checks(tmp_path):
    assert launch.resolve_model_path("Qwen/Qwen2.5-VL-7B-Instruct", "q") == "Qwen/Qwen2.5-VL-7B-Instruct"
    (tmp_path / "weights").mkdir()
    with pytest.raises(FileNotFoundError, match=r"models\.q\.path.*no config\.json"):
        launch.resolve_model_path(str(tmp_path / "weights"), "q")
    (tmp_path / "weights" / "config.json").write_text('{"model_type": "gemma3"}')
    assert launch.resolve_model_path(str(tmp_path / "weights"), "q") == str(tmp_path / "weights")
    for missing in (str(tmp_path / "nope"), "./nope", "a/b/c"):
        with pytest.raises(FileNotFoundError, match=r"models\.q\.path"):
            launch.resolve_model_path(missing, "q")


# ----------------------------------------------------------------------------------------------
# Attention, disk, trackers, Ray and resume settings
# ----------------------------------------------------------------------------------------------


def composed_run(config, model="qwen2.5-vl-7b", method="eqpo", tmp_path=Path("/tmp/eqpo-run"), **kwargs):
    overrides = build_overrides(
        RunSettings.from_config(config, model, method), 0, RunPaths.for_run(tmp_path), tmp_path, **kwargs
    )
    return compose_overrides(overrides), overrides


def test_flash_attention_is_opt_in_and_packs_sequences(tmp_path):
    config = copy.deepcopy(PAPER)
    config["models"]["qwen2.5-vl-7b"]["attention"] = "flash_attention_2"
    cfg, _ = composed_run(config, tmp_path=tmp_path)
    assert cfg.actor_rollout_ref.model.override_config.attn_implementation == "flash_attention_2"
    assert cfg.actor_rollout_ref.model.use_remove_padding is True
    config["models"]["qwen2.5-vl-7b"]["attention"] = "xformers"
    with pytest.raises(ValueError, match=r"models\.qwen2\.5-vl-7b\.attention = 'xformers'"):
        composed_run(config, tmp_path=tmp_path)


def test_gemma3_is_found_from_the_weights_and_keeps_sdpa(tmp_path):
    """A local checkpoint whose config.json says gemma3 gets Gemma3's settings even when the config
    does not declare it; FlashAttention-2 is refused for it; a declared type that contradicts the
    weights is an error."""
    weights = tmp_path / "my-medgemma"
    weights.mkdir()
    (weights / "config.json").write_text(json.dumps({"model_type": "gemma3"}))
    config = copy.deepcopy(PAPER)
    config["models"]["mine"] = {"backend": "verl", "path": str(weights)}
    cfg, overrides = composed_run(config, "mine", tmp_path=tmp_path)
    model = cfg.actor_rollout_ref.model
    assert (model.override_config.attn_implementation, model.use_remove_padding, model.use_fused_kernels) == (
        "sdpa",
        False,
        False,
    )
    from eqpo.backends.verl.gemma3 import GEMMA3_OVERRIDES

    assert set(GEMMA3_OVERRIDES) <= set(overrides)
    config["models"]["mine"]["attention"] = "flash_attention_2"
    with pytest.raises(ValueError, match=r"Gemma3-based.*sdpa only"):
        composed_run(config, "mine", tmp_path=tmp_path)
    config["models"]["mine"] = {"backend": "verl", "path": str(weights), "model_type": "qwen2_5_vl"}
    with pytest.raises(ValueError, match=r"model_type is 'qwen2_5_vl' but .*config\.json says 'gemma3'"):
        composed_run(config, "mine", tmp_path=tmp_path)
    # A Qwen checkpoint gets no Gemma3-only setting (verl's default for fused kernels stays).
    (weights / "config.json").write_text(json.dumps({"model_type": "qwen2_5_vl"}))
    _, overrides = composed_run(config, "mine", tmp_path=tmp_path)
    assert not any(o.startswith("actor_rollout_ref.model.use_fused_kernels") for o in overrides)


def test_disk_tracking_resume_and_evaluation_settings(tmp_path):
    config = copy.deepcopy(PAPER)
    config["train"].update(
        max_ckpt_to_keep=3,
        save_hf_model=True,
        rollout_data=True,
        loggers=["wandb", "tensorboard"],
        restart_estimator_on_resume=True,
    )
    config["evaluation"] = {"max_samples": 64}
    cfg, _ = composed_run(config, tmp_path=tmp_path, num_cpus=16)
    paths = RunPaths.for_run(tmp_path)
    assert (
        cfg.trainer.max_actor_ckpt_to_keep == 3 and "hf_model" in cfg.actor_rollout_ref.actor.checkpoint.save_contents
    )
    assert cfg.trainer.rollout_data_dir == str(paths.rollout_dir)
    assert list(cfg.trainer.logger) == ["console", "file", "wandb", "tensorboard"]
    assert cfg.trainer.eqpo_restart_estimator is True
    assert cfg.data.val_max_samples == 64
    assert cfg.ray_kwargs.ray_init.num_cpus == 16 and cfg.ray_kwargs.ray_init.address == "local"
    config["train"]["loggers"] = ["neptune"]
    with pytest.raises(ValueError, match=r"train\.loggers \['neptune'\]"):
        composed_run(config, tmp_path=tmp_path)
    with pytest.raises(ValueError, match="num_cpus must be a positive integer"):
        composed_run(PAPER, tmp_path=tmp_path, num_cpus=0)


def test_too_few_ray_cpus_for_transfer_queue_are_refused(tmp_path):
    """verl's TransferQueue holds a Ray CPU per storage unit (8 by default) plus its controller, and
    the TaskRunner one more: 10 is the least; below it tq.init would wait forever."""
    cfg, _ = composed_run(PAPER, tmp_path=tmp_path, num_cpus=10)
    assert cfg.transfer_queue.backend.SimpleStorage.num_data_storage_units == launch.TQ_DEFAULT_STORAGE_UNITS == 8
    with pytest.raises(ValueError, match=r"Ray gets 9 CPU\(s\) but .* need 10"):
        composed_run(PAPER, tmp_path=tmp_path, num_cpus=9)
    config = copy.deepcopy(PAPER)
    config["models"]["qwen2.5-vl-7b"]["overrides"] = {launch.TQ_STORAGE_UNITS_KEY: 2}
    composed_run(config, tmp_path=tmp_path, num_cpus=4)  # 2 units + controller + TaskRunner
    two_nodes = copy.deepcopy(PAPER)
    two_nodes["train"]["nnodes"] = 2
    build_overrides(
        RunSettings.from_config(two_nodes, "qwen2.5-vl-7b", "eqpo"),
        0,
        RunPaths.for_run(tmp_path),
        tmp_path,
        ray_address="10.0.0.1:6379",
        num_cpus=5,
    )  # 2 x 5 CPUs over the cluster


def test_trackers_write_next_to_the_run_unless_told_otherwise(tmp_path):
    paths = RunPaths.for_run(tmp_path / "run")
    _, env = build_command(RunSettings.from_config(PAPER, "medgemma-4b", "grpo"), 0, paths, tmp_path, base_env={})
    assert env["TENSORBOARD_DIR"] == str(paths.work_dir / "tensorboard")
    assert env["MLFLOW_TRACKING_URI"] == f"sqlite:///{paths.work_dir / 'mlruns.db'}"
    assert env["WANDB_DIR"] == str(paths.work_dir)
    _, env = build_command(
        RunSettings.from_config(PAPER, "medgemma-4b", "grpo"),
        0,
        paths,
        tmp_path,
        base_env={"MLFLOW_TRACKING_URI": "http://mlflow:5000"},
    )
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"


# ----------------------------------------------------------------------------------------------
# A run: verl's outputs, written with verl's own writers, -> run files
# ----------------------------------------------------------------------------------------------

SAMPLES = [  # sample_id, dataset, labels, age, sex
    ("h1", "HAM10000", ["Nevus"], 30.0, "F"),
    ("h2", "HAM10000", ["Melanoma"], 60.0, "M"),
    ("h3", "HAM10000", ["Nevus"], 70.0, "M"),
    ("h4", "HAM10000", ["Melanoma"], None, "F"),
    ("v1", "VinDr-Mammo", ["BIRAD 1"], 45.0, None),
    ("v2", "VinDr-Mammo", ["BIRAD 2"], 80.0, None),
]


def export(data_dir: Path) -> Path:
    """train/val/train_rs.parquet as eqpo.data.export writes them."""
    table = pd.DataFrame(
        [
            {
                "dataset": d,
                "images": ["img.png"],
                "labels": lab,
                "split": "val",
                "sample_id": s,
                "age": a,
                "sex": x,
                "group": None,
            }
            for s, d, lab, a, x in SAMPLES
        ]
    )
    data_dir.mkdir(parents=True, exist_ok=True)
    for name in ("train", "val", "train_rs"):
        to_verl(table, data_dir).to_parquet(data_dir / f"{name}.parquet", index=False)
    return data_dir


ANSWERS = {
    0: {"h1": ["Nevus"], "h2": ["Nevus"], "h3": [], "h4": ["Melanoma"], "v1": ["BIRAD 1"], "v2": ["BIRAD 1"]},
    2: {"h1": ["Nevus"], "h2": ["Melanoma"], "h3": ["Nevus"], "h4": ["Melanoma"], "v1": ["BIRAD 1"], "v2": ["BIRAD 2"]},
}
STEP_LOG = {
    1: {
        "timing_s/step": 10.0,
        "timing_s/gen": 6.0,
        "timing_s/adv": 0.5,
        "timing_s/update_actor": 3.0,
        "critic/score/mean": 0.25,
        "critic/rewards/mean": 0.25,
    },
    2: {
        "timing_s/step": 12.0,
        "timing_s/gen": 7.0,
        "timing_s/adv": 0.25,
        "timing_s/update_actor": 4.0,
        "critic/score/mean": 0.5,
        "critic/rewards/mean": 0.5,
        "timing_s/testing": 5.0,
        "eqpo/unparsed_item_share/HAM10000": 0.125,
        "eqpo/k/HAM10000": 2,
        "eqpo/adv_time_s": 0.2,
        "eqpo/group/HAM10000/cluster1/factor": 0.5,
    },
}


def response(labels):
    return render_answer(labels) if labels else "<think>hm</think> I am not sure."


def write_validation(directory: Path, step: int, with_sample_id: bool = True, with_prediction: bool = True):
    """A validation dump through verl's own writer (PPOTrainer._write_generations), with the
    reward_extra_info keys our reward returns."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    from eqpo.backends.verl.reward import compute_score

    rows = [(s, d, lab, response(ANSWERS[step][s])) for s, d, lab, _, _ in SAMPLES]
    infos = [
        compute_score(
            data_source=d,
            solution_str=out,
            ground_truth=", ".join(lab),
            extra_info={"dataset": d, **({"sample_id": s} if with_sample_id else {})},
        )
        for s, d, lab, out in rows
    ]
    extra = {k: [i[k] for i in infos] for k in infos[0] if with_prediction or k != "prediction"}
    extra["reward"] = [i["score"] for i in infos]
    extra["uid"] = [f"{i:08x}-uuid_0_0" for i in range(len(rows))]
    PPOTrainer._write_generations(
        inputs=["user: <image> question"] * len(rows),
        outputs=[r[3] for r in rows],
        gts=[", ".join(r[2]) for r in rows],
        scores=extra["reward"],
        reward_extra_infos_dict=extra,
        dump_path=str(directory),
        global_steps=step,
    )


def write_file_log(env, records):
    """Lines through verl's own FileLogger (it reads VERL_FILE_LOGGER_PATH and truncates the file)."""
    from verl.utils.tracking import FileLogger

    old = os.environ.get("VERL_FILE_LOGGER_PATH")
    os.environ["VERL_FILE_LOGGER_PATH"] = env["VERL_FILE_LOGGER_PATH"]
    try:
        logger = FileLogger("p", "e")
        for step, data in records:
            logger.log(data=data, step=step)
        logger.finish()
    finally:
        if old is None:
            os.environ.pop("VERL_FILE_LOGGER_PATH")
        else:
            os.environ["VERL_FILE_LOGGER_PATH"] = old


def setting(argv, key):
    return next(a.split("=", 1)[1] for a in argv if a.startswith(key + "="))


CLUSTER_ROWS = [
    {"sample_id": "h3", "step": 2, "dataset": "HAM10000", "cluster": 1, "k": 2, "true_group": "M|a3"},
    {"sample_id": "v1", "step": 2, "dataset": "VinDr-Mammo", "cluster": 0, "k": 1, "true_group": None},
]


class FakeVerl:
    """Stands in for the verl subprocess: writes what verl and our trainer write, where the command
    says. ``fail_after`` (a step) ends the first attempt there with a checkpoint and status 1."""

    def __init__(self, fail_after: int | None = None):
        self.fail_after, self.calls = fail_after, []

    def __call__(self, argv, env):
        from eqpo.backends.verl.trainer import append_jsonl

        self.calls.append(list(argv))
        ckpt = Path(setting(argv, "trainer.default_local_dir"))
        val_dir = Path(setting(argv, "trainer.validation_data_dir"))
        resumed = (ckpt / "latest_checkpointed_iteration.txt").exists()
        steps = [2] if resumed else ([1] if self.fail_after == 1 else [1, 2])
        log = [(0, {"val-core/HAM10000/acc/mean@1": 0.5})] if not resumed else [(1, {"val-core/x": 0.0})]
        log += [(s, STEP_LOG[s]) for s in steps]
        write_file_log(env, log)
        if not resumed:
            write_validation(val_dir, 0)
        if 2 in steps:
            write_validation(val_dir, 2)
            append_jsonl(setting(argv, "+trainer.eqpo_cluster_log"), CLUSTER_ROWS)
        (ckpt / f"global_step_{steps[-1]}" / "actor").mkdir(parents=True, exist_ok=True)
        (ckpt / "latest_checkpointed_iteration.txt").write_text(str(steps[-1]))
        return 1 if (self.fail_after and not resumed) else 0


# The validation summaries by hand, under the config's class_set (group_present: a group's mean runs over
# the classes with a positive in that group). Age bins: 30 -> a2, 45 -> a2, 60/70 -> a3, 80 -> a4.
# Step 0, HAM10000: F {h1 Nevus ok, h4 Melanoma ok}: Acc 1, F1 1; M {h2 Melanoma -> Nevus, h3 Nevus -> none}:
#   Nevus FP+FN (Acc 0, F1 0), Melanoma FN+TN (Acc 0.5, F1 0) -> Acc 0.25, F1 0. Age a2 {h1}: Nevus only
#   -> Acc 1, F1 1; a3 {h2, h3} = M. Both attributes: Acc 0.625 (gap 0.75), F1 0.5 (gap 1).
#   VinDr-Mammo (no sex): a2 {v1 BIRAD 1 ok}: Acc 1, F1 1; a4 {v2 BIRAD 2 -> BIRAD 1}: BIRAD 2 FN -> 0, 0:
#   Acc 0.5 (gap 1), F1 0.5 (gap 1). Overall: Acc 0.5625, F1 0.5, delta_Acc 0.875, delta_F1 1.
# Step 2: every answer right: levels 1, every gap, sigma and rate difference 0. (Under class_set "dataset"
# VinDr's one-class age groups would score F1 0.5, so F1 1.0 also shows which reading ran.)
EXPECTED_SUMMARY = {
    0: {"Acc": 0.5625, "F1": 0.5, "delta_Acc": 0.875, "delta_F1": 1.0},
    2: {
        "Acc": 1.0,
        "F1": 1.0,
        "delta_Acc": 0.0,
        "delta_F1": 0.0,
        "sigma_Acc": 0.0,
        "sigma_F1": 0.0,
        "PP": 0.0,
        "EOD": 0.0,
        "FPR_diff": 0.0,
        "Acc_ES": 1.0,
        "F1_ES": 1.0,
    },
}


def test_run_training_writes_the_run_files(tmp_path):
    data, run = (
        export(tmp_path / "data" / "paper" / "verl"),
        tmp_path / "results" / "paper" / "qwen2.5-vl-7b" / "eqpo" / "seed0",
    )
    fake = FakeVerl()
    paths = launch.run_training(
        RunSettings.from_config(PAPER, "qwen2.5-vl-7b", "eqpo"), 0, run, data, runner=fake, check_env=False
    )
    assert fake.calls[0][1:3] == ["-m", "verl.trainer.main_ppo"]
    dynamics = [json.loads(line) for line in paths.dynamics.read_text().splitlines()]
    assert [d["step"] for d in dynamics] == [0, 2]
    assert PAPER["metrics"]["class_set"] == "group_present"  # the reading EXPECTED_SUMMARY is worked in
    for record in dynamics:
        expected = EXPECTED_SUMMARY[record["step"]]
        assert {k: record[k] for k in expected} == pytest.approx(expected)
    assert dynamics[0]["F1"] < dynamics[1]["F1"]
    assert dynamics[0]["unparseable"] == pytest.approx(1 / 6) and dynamics[1]["unparseable"] == 0.0
    assert [d["wall_time_s"] for d in dynamics] == [0.0, 22.0]
    steps = [json.loads(line) for line in paths.steps.read_text().splitlines()]
    assert steps == [
        {
            "step": 1,
            "reward_mean": 0.25,
            "time_step_s": 10.0,
            "time_generate_s": 6.0,
            "time_advantage_s": 0.5,
            "time_update_s": 3.0,
        },
        {
            "step": 2,
            "reward_mean": 0.5,
            "time_step_s": 12.0,
            "time_generate_s": 7.0,
            "time_advantage_s": 0.25,
            "time_update_s": 4.0,
            "unparsed_item_share/HAM10000": 0.125,
            "eqpo/group/HAM10000/cluster1/factor": 0.5,
            "eqpo/k/HAM10000": 2.0,
        },
    ]  # estimator statistics
    clusters = pd.read_parquet(paths.clusters)
    assert list(clusters.columns) == logs.CLUSTER_COLUMNS
    records = [
        {**r, "true_group": None if pd.isna(r["true_group"]) else r["true_group"]} for r in clusters.to_dict("records")
    ]
    assert records == CLUSTER_ROWS
    assert (run / "checkpoint" / "global_step_2" / "actor").is_dir() and not paths.checkpoints.exists()
    from eqpo.analysis.collect import read_clusters, read_dynamics, read_steps

    assert len(read_dynamics([paths.dynamics])) == 2 and len(read_steps([paths.steps])) == 2
    assert len(read_clusters([paths.clusters])) == 2


def test_a_failed_attempt_resumes_and_keeps_its_log(tmp_path):
    data, run = export(tmp_path / "data"), tmp_path / "run"
    fake = FakeVerl(fail_after=1)
    with pytest.raises(RuntimeError, match="verl exited with status 1"):
        launch.run_training(
            RunSettings.from_config(PAPER, "medgemma-4b", "grpo"), 0, run, data, runner=fake, check_env=False
        )
    paths = launch.run_training(
        RunSettings.from_config(PAPER, "medgemma-4b", "grpo"), 0, run, data, runner=fake, check_env=False
    )
    assert fake.calls[0] == fake.calls[1]
    assert (paths.work_dir / "metrics.1.jsonl").exists()  # verl's file logger truncates: the first is kept
    assert [json.loads(line)["step"] for line in paths.steps.read_text().splitlines()] == [1, 2]
    # verl does not prune the checkpoint it resumed from; the run keeps max_ckpt_to_keep (1) of them
    assert sorted(p.name for p in paths.checkpoint.iterdir() if p.is_dir()) == ["global_step_2"]


def failed_run_with_a_checkpoint(tmp_path):
    """A MedGemma GRPO run that saved global_step_1 and was then killed (verl exited with status 1)."""
    data, run = export(tmp_path / "data"), tmp_path / "run"
    with pytest.raises(RuntimeError, match="verl exited with status 1"):
        launch.run_training(
            RunSettings.from_config(PAPER, "medgemma-4b", "grpo"),
            0,
            run,
            data,
            runner=FakeVerl(fail_after=1),
            check_env=False,
        )
    paths = RunPaths.for_run(run)
    assert (paths.checkpoints / "global_step_1").is_dir()
    return data, paths


def test_a_changed_trajectory_setting_starts_afresh_and_moves_the_old_run_aside(tmp_path, capsys):
    data, paths = failed_run_with_a_checkpoint(tmp_path)
    other = copy.deepcopy(PAPER)
    other["runs"]["medgemma-4b"]["grpo"]["lr"] = 2e-6  # the authors' script ran 1e-6
    argv, _ = build_command(RunSettings.from_config(other, "medgemma-4b", "grpo"), 0, paths, data)
    assert launch.prepare_work_dir(paths, argv[3:]) is False
    assert not paths.checkpoints.exists() and not list(paths.work_dir.glob("metrics*.jsonl"))
    aside = paths.work_dir.with_name("verl.1")  # nothing deleted: checkpoint and log moved aside
    assert (aside / "checkpoints" / "global_step_1").is_dir() and (aside / "metrics.jsonl").exists()
    said = capsys.readouterr().out
    assert "NEW RUN" in said and str(aside) in said
    assert "actor_rollout_ref.actor.optim.lr: 1e-06 -> 2e-06" in said
    # a second new run moves the next one aside; verl.1 stays
    assert launch.prepare_work_dir(paths, [*argv[3:-1], "data.seed=1"]) is False
    assert paths.work_dir.with_name("verl.2").is_dir() and (aside / "checkpoints" / "global_step_1").is_dir()


@pytest.mark.parametrize(
    "setting",
    [{"restart_estimator_on_resume": True}, {"loggers": ["wandb"]}, {"max_ckpt_to_keep": 3}, {"rollout_data": True}],
)
def test_settings_outside_the_trajectory_resume_the_checkpoint(tmp_path, setting):
    """Enabling the estimator restart (whose purpose is to resume), adding a tracker or keeping more
    checkpoints after a preemption resumes the run instead of starting it again."""
    data, paths = failed_run_with_a_checkpoint(tmp_path)
    config = copy.deepcopy(PAPER)
    config["train"].update(setting)
    config["evaluation"] = {**(config.get("evaluation") or {}), "max_samples": 7}
    fake = FakeVerl()
    launch.run_training(
        RunSettings.from_config(config, "medgemma-4b", "grpo"), 0, paths.run_dir, data, runner=fake, check_env=False
    )
    assert (paths.work_dir / "metrics.1.jsonl").exists() and not paths.work_dir.with_name("verl.1").exists()
    # the estimator flag reaches verl on the resumed run
    if setting.get("restart_estimator_on_resume"):
        assert f"{launch.RESTART_ESTIMATOR_KEY}=true" in fake.calls[0]


def test_resume_key_keeps_every_trajectory_setting(tmp_path):
    paths = RunPaths.for_run(tmp_path / "run")
    argv, _ = build_command(RunSettings.from_config(PAPER, "qwen2.5-vl-7b", "eqpo"), 0, paths, tmp_path)
    kept = launch.resume_key(argv[3:])
    dropped = [o.partition("=")[0].lstrip("+") for o in argv[3:] if o not in kept]
    assert sorted(dropped) == sorted(
        [
            "ray_kwargs.ray_init.address",
            "ray_kwargs.ray_init.include_dashboard",
            "trainer.logger",
            "trainer.max_actor_ckpt_to_keep",
            "trainer.max_critic_ckpt_to_keep",
            "hydra.run.dir",
        ]
    )
    for key in (
        "actor_rollout_ref.actor.optim.lr",
        "data.seed",
        "algorithm.adv_estimator",
        "+algorithm.eqpo.k_max",
        "data.train_files",
        "actor_rollout_ref.model.path",
        "trainer.total_epochs",
    ):
        assert any(o.startswith(key + "=") for o in kept), key


def test_no_gpu_is_a_clear_error_before_anything_runs(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fake = FakeVerl()
    with pytest.raises(TrainingEnvironmentError, match=r"GPUs: 0 visible, 4 needed"):
        launch.run_training(
            RunSettings.from_config(PAPER, "medgemma-4b", "grpo"),
            0,
            tmp_path / "run",
            export(tmp_path / "d"),
            runner=fake,
        )
    assert fake.calls == [] and not (tmp_path / "run").exists()


def test_missing_verl_or_flash_attn_is_a_clear_error_before_anything_runs(tmp_path):
    """The preflight runs first: a node without verl, or without the flash_attn package that a model's
    attention setting asks for, stops the job with one line per problem and starts nothing."""
    from eqpo.backends.verl.preflight import Probe

    config = copy.deepcopy(PAPER)
    config["models"]["qwen2.5-vl-7b"]["attention"] = "flash_attention_2"
    probe = Probe(
        find_spec=lambda name: None,
        version=lambda name: {"vllm": "0.24.0"}.get(name),
        torch_cuda=lambda: (4, "13.0", "2.11.0"),
        nvidia_smi=lambda: "| NVIDIA-SMI 580.65.06   Driver Version: 580.65.06   CUDA Version: 13.0 |",
        hub_access=lambda repo: None,
        disk_free=lambda path: 10**15,
        env={},
    )
    fake = FakeVerl()
    with pytest.raises(TrainingEnvironmentError) as err:
        launch.run_training(
            RunSettings.from_config(config, "qwen2.5-vl-7b", "grpo"),
            0,
            tmp_path / "run",
            export(tmp_path / "d"),
            runner=fake,
            probe=probe,
        )
    lines = str(err.value).splitlines()
    assert "2 problem(s)" in lines[0]
    assert lines[1].startswith("verl: not installed -> install verl[vllm]==0.9.1")
    assert lines[2].startswith("attention qwen2.5-vl-7b: flash_attention_2 needs the flash_attn package")
    assert fake.calls == []


def test_missing_local_model_and_data_are_named(tmp_path):
    config = copy.deepcopy(PAPER)
    config["models"]["medgemma-4b"]["path"] = str(tmp_path / "no-weights")
    with pytest.raises(FileNotFoundError, match=r"models\.medgemma-4b\.path"):
        launch.run_training(
            RunSettings.from_config(config, "medgemma-4b", "grpo"), 0, tmp_path / "run", tmp_path, check_env=False
        )
    with pytest.raises(FileNotFoundError, match="train_rs.parquet"):
        launch.run_training(
            RunSettings.from_config(PAPER, "medgemma-4b", "grpo_rs"), 0, tmp_path / "run", tmp_path, check_env=False
        )


def test_a_reward_without_sample_id_is_refused_up_front(tmp_path):
    from eqpo.backends.verl.reward import compute_score

    data = export(tmp_path / "data")
    with pytest.raises(RuntimeError, match="sample_id"):
        launch.check_reward_ids(
            data / "val.parquet", lambda **kw: {k: v for k, v in compute_score(**kw).items() if k != "sample_id"}
        )
    with pytest.raises(RuntimeError, match="sample_id"):
        launch.check_reward_ids(data / "val.parquet", lambda **kw: {**compute_score(**kw), "sample_id": ""})


def test_our_reward_returns_sample_id(tmp_path):
    """The reward function of eqpo.backends.verl (what verl actually runs) passes the preflight."""
    launch.check_reward_ids(export(tmp_path / "data") / "val.parquet")


# ----------------------------------------------------------------------------------------------
# logs.py pieces
# ----------------------------------------------------------------------------------------------


def test_predictions_come_from_the_dump_and_the_export(tmp_path):
    data = export(tmp_path / "data")
    write_validation(tmp_path / "val", 0, with_prediction=False)  # parsed from `output` instead
    preds = logs.validation_predictions(
        logs.read_jsonl(tmp_path / "val" / "0.jsonl"), logs.read_val_reference(data / "val.parquet")
    )
    assert list(preds.columns) == logs.PREDICTION_COLUMNS
    by_id = preds.set_index("sample_id")
    assert by_id.loc["h2", "labels"] == ["Melanoma"] and by_id.loc["h2", "prediction"] == ["Nevus"]
    assert by_id.loc["h3", "prediction"] == [] and by_id.loc["h2", "reward"] == 0.0
    assert by_id.loc["h2", "age"] == 60.0 and by_id.loc["h2", "sex"] == "M"
    assert pd.isna(by_id.loc["h4", "age"]) and pd.isna(by_id.loc["v1", "sex"])


def test_a_dump_without_sample_ids_is_a_clear_error(tmp_path):
    data = export(tmp_path / "data")
    write_validation(tmp_path / "val", 0, with_sample_id=False)
    with pytest.raises(ValueError, match="sample_id"):
        logs.dynamics_records(tmp_path / "val", data / "val.parquet")


def test_file_log_lines_of_a_step_merge_and_a_cut_off_line_is_dropped(tmp_path):
    first, second = tmp_path / "metrics.1.jsonl", tmp_path / "metrics.jsonl"
    write_file_log({"VERL_FILE_LOGGER_PATH": str(first)}, [(0, {"val": 0.1}), (1, STEP_LOG[1]), (2, {"a": 1})])
    write_file_log({"VERL_FILE_LOGGER_PATH": str(second)}, [(1, {"val": 0.2}), (2, STEP_LOG[2])])
    with open(second, "a") as handle:
        handle.write('{"step": 3, "data": {"timing_s/st')
    merged = logs.merge_file_logs([first, second])
    assert sorted(merged) == [0, 1, 2] and merged[1]["val"] == 0.2 and merged[1]["timing_s/gen"] == 6.0
    assert merged[2]["a"] == 1 and merged[2]["timing_s/adv"] == 0.25
    assert [r["step"] for r in logs.step_records(merged)] == [1, 2]
    assert logs.wall_times(merged) == {0: 0.0, 1: 10.0, 2: 22.0}
    first.write_text('{"step": 0, "data": {}}\nnot json\n{"step": 1, "data": {}}\n')
    with pytest.raises(ValueError, match="line 2"):
        logs.merge_file_logs([first])


def test_cluster_log_types_and_duplicates(tmp_path):
    from eqpo.backends.verl.trainer import append_jsonl

    path = str(tmp_path / "clusters.jsonl")
    append_jsonl(path, CLUSTER_ROWS)
    append_jsonl(path, [{**CLUSTER_ROWS[0], "cluster": 0}])  # the same step logged again after a resume
    table = logs.read_cluster_log(path)
    assert len(table) == 2 and table.set_index("sample_id").loc["h3", "cluster"] == 0
    assert table["step"].dtype == np.int64 and table["cluster"].dtype == np.int64
    empty = logs.read_cluster_log(tmp_path / "absent.jsonl")
    assert list(empty.columns) == logs.CLUSTER_COLUMNS and len(empty) == 0
    (tmp_path / "bad.jsonl").write_text('{"sample_id": "a", "step": 1}\n')
    with pytest.raises(ValueError, match="lack"):
        logs.read_cluster_log(tmp_path / "bad.jsonl")


def test_the_snakemake_script_hands_the_rule_to_run_training(tmp_path, monkeypatch):
    """train_verl.py builds the run's settings from the rule's one `settings` param (no snakemake.config:
    the rule object here has none)."""
    import runpy
    from types import SimpleNamespace

    calls = []
    monkeypatch.setattr(launch, "run_training", lambda *a, **k: calls.append((a, k)))
    settings = RunSettings.from_config(PAPER, "medgemma-4b", "grpo_rs")
    rule = SimpleNamespace(
        wildcards=SimpleNamespace(model="medgemma-4b", method="grpo_rs", seed="3"),
        input=SimpleNamespace(train="data/paper/verl/train_rs.parquet", val="data/paper/verl/val.parquet"),
        output=SimpleNamespace(dynamics="results/paper/medgemma-4b/grpo_rs/seed3/dynamics.jsonl"),
        params=SimpleNamespace(settings=settings.as_dict()),
        log=[str(tmp_path / "train.log")],
        threads=24,
    )
    runpy.run_path(str(REPO / "workflow" / "scripts" / "train_verl.py"), init_globals={"snakemake": rule})
    assert calls == [
        (
            (settings, 3),
            {
                "run_dir": Path("results/paper/medgemma-4b/grpo_rs/seed3"),
                "data_dir": Path("data/paper/verl"),
                "num_cpus": 24,
            },
        )
    ]
    assert calls[0][0][0].train.batch_prompts == PAPER["train"]["batch_prompts"]


def test_stream_subprocess_copies_output_and_returns_status(capsys):
    status = launch.stream_subprocess(
        [sys.executable, "-c", "import sys; print('out'); sys.stderr.write('err\\n');sys.exit(3)"], dict(os.environ)
    )
    captured = capsys.readouterr().out
    assert status == 3 and "out" in captured and "err" in captured


def test_the_predict_script_reads_the_runs_own_lengths_and_reward(tmp_path, monkeypatch):
    """predict_vllm answers with the lengths the run trained with and scores with its reward
    (runs.<model>.<method> overrides), all from the rule's `settings` param (no snakemake.config)."""
    import runpy
    from types import SimpleNamespace

    from eqpo.backends.verl import evaluate

    config = copy.deepcopy(PAPER)
    config["runs"] = {
        "medgemma-4b": {"eqpo": {"max_response_length": 1024, "max_prompt_length": 2048, "reward": "exact"}}
    }
    config["evaluation"] = {"max_samples": 7}
    calls = []
    monkeypatch.setattr(evaluate, "run_evaluation", lambda *a, **k: calls.append((a, k)))
    for method in ("eqpo", "grpo"):
        rule = SimpleNamespace(
            wildcards=SimpleNamespace(model="medgemma-4b", method=method, seed="0"),
            input=SimpleNamespace(checkpoint="c", test="t.parquet"),
            output=["p.parquet"],
            params=SimpleNamespace(
                settings=RunSettings.from_config(config, "medgemma-4b", method).as_dict(), engine="hf"
            ),
            resources=SimpleNamespace(gpu=1),
            log=[str(tmp_path / f"{method}.log")],
        )
        runpy.run_path(str(REPO / "workflow" / "scripts" / "predict_vllm.py"), init_globals={"snakemake": rule})
    assert [(k["max_tokens"], k["max_model_len"]) for _, k in calls] == [(1024, 2048 + 1024), (4096, 4096 + 4096)]
    assert [k["options"].reward for _, k in calls] == ["exact", PAPER["reward"]["function"]]
    assert all(k["max_samples"] == 7 and k["engine"] == "hf" for _, k in calls)
    assert calls[0][0] == ("c", "t.parquet", "p.parquet", PAPER["models"]["medgemma-4b"])


VERL_DATASET_LINES = [
    "(TaskRunner pid=7) dataset len: 120\n",
    "Filtering prompts longer than 4096 tokens: 100%\n",
    "(TaskRunner pid=7) filter dataset len: 117\n",
    "(TaskRunner pid=7) dataset len: 500\n",
    "(TaskRunner pid=7) selected 64 random samples out of 500\n",
    "(TaskRunner pid=7) filter dataset len: 64\n",
]


def test_rows_dropped_by_verls_long_prompt_filter_are_reported():
    said = []
    watch = launch.FilteredRows(said.append)
    for line in VERL_DATASET_LINES:
        watch(line)
    assert watch.dropped == [("training", 3, 120), ("validation", 0, 64)]
    assert said[0].startswith("WARNING: verl's long-prompt filter dropped 3 of 120 rows of the training dataset")
    assert said[1] == "verl's long-prompt filter kept all 64 rows of the validation dataset"


def test_a_training_run_reports_the_filter_from_verls_output(tmp_path, capsys, monkeypatch):
    """run_training's default runner hands verl's output to the filter watch: here the streamed
    process is a stand-in that prints verl's dataset lines and fails."""
    real_stream = launch.stream_subprocess

    def fake_stream(argv, env, cwd=None, on_line=None):
        assert argv[1:3] == ["-m", "verl.trainer.main_ppo"]
        return real_stream(
            [
                sys.executable,
                "-c",
                "import sys; sys.stdout.write(" + repr("".join(VERL_DATASET_LINES)) + "); sys.exit(3)",
            ],
            env,
            on_line=on_line,
        )

    monkeypatch.setattr(launch, "stream_subprocess", fake_stream)
    with pytest.raises(RuntimeError, match="verl exited with status 3"):
        launch.run_training(
            RunSettings.from_config(PAPER, "medgemma-4b", "grpo"),
            0,
            tmp_path / "run",
            export(tmp_path / "data"),
            check_env=False,
        )
    assert "WARNING: verl's long-prompt filter dropped 3 of 120 rows of the training dataset" in capsys.readouterr().out


def test_wandb_logs_offline_unless_the_user_says_otherwise(tmp_path):
    paths = RunPaths.for_run(tmp_path / "run")
    assert launch.build_environment(paths, base={})["WANDB_MODE"] == "offline"
    assert launch.build_environment(paths, base={"WANDB_MODE": "online"})["WANDB_MODE"] == "online"


def test_the_smoke_run_composes_and_passes_verls_validation_on_two_gpus(tmp_path, method="eqpo"):
    """config/smoke.yaml (2 GPUs so that the update fits 80 GB GPUs): verl accepts the batch split
    over 2 data-parallel ranks (32 prompts x 4 rollouts, mini-batches of 16 x 4)."""
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import validate_config

    from eqpo.runs.settings import load_config

    smoke = load_config([REPO / "config" / "smoke.yaml"], REPO)
    paths = RunPaths.for_run(tmp_path / "run")
    cfg = compose_overrides(build_overrides(RunSettings.from_config(smoke, "medgemma-4b", method), 0, paths, tmp_path))
    validate_config(cfg, use_reference_policy=need_reference_policy(cfg), use_critic=need_critic(cfg))
    assert cfg.trainer.n_gpus_per_node == 2 and cfg.actor_rollout_ref.rollout.tensor_model_parallel_size == 1
    assert cfg.actor_rollout_ref.actor.ppo_max_token_len_per_gpu == 2 * (4096 + 1024)
