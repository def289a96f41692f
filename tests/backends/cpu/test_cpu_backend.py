"""CPU backend: warm start, RL loop, exact resume after a kill, determinism, prediction files."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from eqpo.backends.cpu.policy import MultiTaskPolicy, PolicyConfig, action_labels, labels_to_target
from eqpo.backends.cpu.trainer import CPU_KEYS, Cohort, PretrainConfig, TrainConfig, pretrain, specs_for, split
from eqpo.core.groups import resampling_cells
from eqpo.core.vocabularies import PAPER_DATASETS
from eqpo.data.demo.cohort import CohortConfig, make_cohort
from eqpo.runs.settings import ReproductionOptions, RunSettings, TrainSettings, load_config
from eqpo.workflow.pipeline import read_cohort, run_predict_cpu, run_pretrain, run_train_cpu, score_predictions

TRAIN = {
    "steps": 12,
    "batch_prompts": 32,
    "rollouts": 4,
    "lr": 3e-3,
    "ppo_mini_batch": 16,
    "test_freq": 3,
    "save_freq": 4,
}
CPU = {"probe_prompts": 48}


def settings(method: str, options: ReproductionOptions | None = None, **train) -> RunSettings:
    """A CPU run's settings: TRAIN with ``train`` on top (other keys: TrainSettings' defaults)."""
    return RunSettings(
        model="demo-mlp",
        method=method,
        train=TrainSettings.from_mapping({**TRAIN, **train}),
        options=options or ReproductionOptions(),
    )


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cpu")
    table = make_cohort(CohortConfig(n_samples=1500, seed=3))
    table.to_parquet(root / "cohort.parquet", index=False)
    run_pretrain(
        root / "cohort.parquet",
        {"backend": "cpu", "arch": "mlp", "hidden": 16},
        {"epochs": 3},
        0,
        root / "pretrained.pt",
    )
    return root


def _strip_times(path: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if not k.startswith(("time_", "wall_"))}
        for line in path.read_text().splitlines()
    ]


def test_policy_heads_and_action_rendering():
    specs = [PAPER_DATASETS["CheXpert"], PAPER_DATASETS["HAM10000"]]
    policy = MultiTaskPolicy(PolicyConfig("mlp", n_features=4, hidden=8), specs)
    assert policy.logits(torch.zeros(3, 4), "CheXpert").shape == (3, 14)
    assert policy.logits(torch.zeros(3, 4), "HAM10000").shape == (3, 5)
    assert action_labels(np.array(2), specs[1]) == ["Basal Cell Carcinoma"]
    assert action_labels(np.eye(14)[[1, 5]].sum(0), specs[0]) == ["Enlarged Cardiomediastinum", "Edema"]
    assert labels_to_target([["Edema", "Fracture"]], specs[0])[0].sum() == 2
    rebuilt = MultiTaskPolicy.from_meta(policy.meta())
    assert rebuilt.config == policy.config and list(rebuilt.specs) == list(policy.specs)
    with pytest.raises(ValueError, match="unknown CPU policy architecture"):
        PolicyConfig("transformer", 4)


def test_config_rejects_unknown_settings():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['step'\]"):
        TrainConfig.from_mapping({"step": 3})
    with pytest.raises(ValueError, match=r"cpu: unknown key\(s\) \['probe'\]"):
        TrainConfig.from_settings(TrainSettings(), {"probe": 3})
    with pytest.raises(ValueError, match=r"cpu.threads must be an integer >= 1, got 0"):
        TrainConfig.from_settings(TrainSettings(), {"threads": 0})
    with pytest.raises(ValueError, match=r"cpu.probe_prompts must be an integer >= 0, got -1"):
        TrainConfig.from_settings(TrainSettings(), {"probe_prompts": -1})
    with pytest.raises(ValueError, match="pretraining"):
        PretrainConfig.from_dict({"epoch": 3})


def test_train_config_is_the_runs_train_settings_plus_the_cpu_block():
    config = TrainConfig.from_settings(TrainSettings(lr=3e-3, steps=12, gpus=2), {"probe_prompts": 48})
    assert (config.lr, config.steps, config.probe_prompts, config.threads) == (3e-3, 12, 48, 1)
    assert config.batch_prompts == 512 and config.test_freq == 5  # config.yaml's `train` (TrainSettings' defaults)
    assert isinstance(config, TrainSettings) and config.gpus == 2  # carried, not read
    # What a checkpoint is tied to: the settings the trainer reads, the same keys as before the
    # CPU backend took TrainSettings (so a run killed before that change still resumes).
    assert set(config.read()) == {
        "steps", "epochs", "batch_prompts", "rollouts", "lr", "ppo_mini_batch", "ppo_epochs", "clip",
        "kl_coef", "temperature", "test_freq", "save_freq", "probe_prompts", "grad_clip", "threads",
    }  # fmt: skip


def test_the_cpu_defaults_are_config_yamls_cpu_block():
    """TrainConfig's own defaults are config.yaml's `cpu` block, as TrainSettings' are its `train`."""
    config = load_config([], Path(__file__).resolve().parents[3])
    assert TrainConfig.from_settings(TrainSettings(), config["cpu"]) == TrainConfig()
    assert set(config["cpu"]) == set(CPU_KEYS)


def test_warm_start_learns_and_favours_the_majority(workspace):
    table = read_cohort(workspace / "cohort.parquet")
    specs = specs_for(table)
    policy = pretrain(table, PolicyConfig("linear", 16), PretrainConfig(epochs=10), seed=0, log=lambda m: None)
    test = Cohort(split(table, "test"), specs)
    idx = np.flatnonzero(test.dataset == "HAM10000")
    with torch.no_grad():
        pred = policy.greedy(test.x[idx], "HAM10000").numpy()
    truth = labels_to_target([test.labels[i] for i in idx], specs["HAM10000"]).numpy()
    assert (pred == truth).mean() > 0.5  # well above 1/5 chance


def test_training_writes_the_run_contract(workspace):
    run = workspace / "run_eqpo"
    run_train_cpu(workspace / "cohort.parquet", workspace / "pretrained.pt", settings("eqpo"), 0, run, CPU)
    dynamics = [json.loads(line) for line in (run / "dynamics.jsonl").read_text().splitlines()]
    assert [d["step"] for d in dynamics] == [0, 3, 6, 9, 12]
    assert {"F1", "delta_F1", "Acc", "wall_time_s"} <= set(dynamics[0])
    steps = [json.loads(line) for line in (run / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 12 and all(s["time_advantage_s"] > 0 for s in steps)
    # the estimator's statistics of every step (run_files.estimator_metrics): a k per dataset, and
    # per group a factor, all positive
    for s in steps:
        k = {name: v for name, v in s.items() if name.startswith("eqpo/k/")}
        factors = [v for name, v in s.items() if name.startswith("eqpo/group/") and name.endswith("/factor")]
        assert k and all(v >= 1 for v in k.values()) and factors and all(f > 0 for f in factors)
    clusters = pd.read_parquet(run / "clusters.parquet")
    assert list(clusters.columns) == ["sample_id", "step", "dataset", "cluster", "k", "true_group"]
    assert len(clusters) > 0 and clusters["true_group"].notna().all()
    run_predict_cpu(workspace / "cohort.parquet", run / "final.pt", run / "predictions.parquet")
    preds = pd.read_parquet(run / "predictions.parquet")
    table = read_cohort(workspace / "cohort.parquet")
    assert len(preds) == (table["split"] == "test").sum()
    assert preds["response"].str.contains(r"\\boxed\{", regex=True).all()
    metrics = score_predictions(run / "predictions.parquet", run / "metrics.json", model="m", method="eqpo", seed=0)
    assert 0 < metrics["summary"]["F1"] < 1
    assert json.loads((run / "metrics.json").read_text())["summary"] == metrics["summary"]


def test_grpo_rs_trains_on_the_oversampled_set(workspace, capsys):
    messages = []
    from eqpo.backends.cpu.trainer import RLTrainer

    trainer = RLTrainer(
        read_cohort(workspace / "cohort.parquet"),
        workspace / "pretrained.pt",
        "grpo_rs",
        {},
        TrainConfig.from_settings(TrainSettings.from_mapping(TRAIN), CPU),
        0,
        workspace / "rs",
        log=messages.append,
    )
    assert "oversampled" in messages[0]
    # the authors' RS cells (groups.definition authors_code): sex x age with unknown parts, every row in one
    table = trainer.train.table
    cells = table.groupby([table["dataset"], resampling_cells(table, "authors_code")]).size()
    assert (cells.groupby(level=0).nunique() == 1).all()  # every cell at its dataset's largest size
    assert "unk|unk" in set(cells.index.get_level_values(1))  # the wholly unknown cell is balanced too


def _checkpoint_step(run: Path) -> int:
    assert (run / "ckpt" / "last.pt").exists(), f"no checkpoint was written under {run / 'ckpt'}"
    return int(torch.load(run / "ckpt" / "last.pt", weights_only=False)["step"])


def _step_lines(path: Path) -> dict[int, str]:
    """steps.jsonl as written, by step: the lines carry wall-clock timings, so a step that ran
    again never gives the same line."""
    return {json.loads(line)["step"]: line for line in path.read_text().splitlines() if line.strip()}


def assert_resumed_at_the_checkpoint(run: Path, interrupted: dict[int, str], checkpoint_step: int) -> None:
    """The finished run kept the steps its checkpoint covered (not run again) and ran the rest again."""
    final = _step_lines(run / "steps.jsonl")
    assert checkpoint_step > 0 and sorted(final) == list(range(1, max(final) + 1))
    for step in range(1, checkpoint_step + 1):
        assert final[step] == interrupted[step], f"step {step} ran again after the resume"
    redone = [s for s in interrupted if s > checkpoint_step]
    assert all(final[s] != interrupted[s] for s in redone)


@pytest.mark.parametrize("method", ["eqpo", "grpo_dro"])
def test_resume_after_interruption_gives_the_same_run(workspace, method, caplog):
    straight, resumed = workspace / f"straight_{method}", workspace / f"resumed_{method}"
    args = (workspace / "cohort.parquet", workspace / "pretrained.pt", settings(method), 1)
    run_train_cpu(*args, straight, CPU)
    run_train_cpu(*args, resumed, CPU, stop_after=10)  # last checkpoint at step 8; steps 9-10 are redone
    assert not (resumed / "final.pt").exists()
    assert _checkpoint_step(resumed) == 8
    interrupted = _step_lines(resumed / "ckpt" / "steps.jsonl")
    assert sorted(interrupted) == list(range(1, 11))
    with caplog.at_level("INFO"):
        run_train_cpu(*args, resumed, CPU)
    assert f"resumed from {resumed / 'ckpt' / 'last.pt'} at step 8" in caplog.text
    assert_resumed_at_the_checkpoint(resumed, interrupted, 8)
    for name in ("dynamics.jsonl", "steps.jsonl"):
        assert _strip_times(straight / name) == _strip_times(resumed / name)
    a, b = torch.load(straight / "final.pt"), torch.load(resumed / "final.pt")
    for key in a["state"]:
        assert torch.equal(a["state"][key], b["state"][key])
    pd.testing.assert_frame_equal(
        pd.read_parquet(straight / "clusters.parquet"), pd.read_parquet(resumed / "clusters.parquet")
    )


def test_a_rerun_after_completion_or_with_other_settings_starts_afresh(workspace):
    args = (workspace / "cohort.parquet", workspace / "pretrained.pt")
    run = workspace / "rerun"
    run_train_cpu(*args, settings("eqpo"), 4, run, CPU)
    first = _strip_times(run / "dynamics.jsonl")
    assert not (run / "ckpt").exists()  # work directory dropped on completion
    for name in ("dynamics.jsonl", "steps.jsonl", "final.pt"):  # what Snakemake removes before a forced rerun
        (run / name).unlink()
    run_train_cpu(*args, settings("eqpo"), 4, run, CPU)
    assert _strip_times(run / "dynamics.jsonl") == first
    # an interrupted run with other settings does not leak into a new one
    run_train_cpu(*args, settings("eqpo", lr=1e-2), 4, run, CPU, stop_after=9)
    messages = []
    from eqpo.backends.cpu.trainer import RLTrainer

    trainer = RLTrainer(
        read_cohort(workspace / "cohort.parquet"),
        workspace / "pretrained.pt",
        "eqpo",
        {},
        TrainConfig.from_settings(TrainSettings.from_mapping(TRAIN), CPU),
        4,
        run,
        log=messages.append,
    )
    trainer.fit()
    assert any("other settings" in m for m in messages)
    assert _strip_times(run / "dynamics.jsonl") == first


def test_a_change_of_a_gpu_only_setting_still_resumes(workspace, caplog):
    """The workflow reruns train_cpu when any of the run's settings changes (they are its params); a
    killed run resumes when only `train` keys the CPU trainer does not read have changed."""
    args = (workspace / "cohort.parquet", workspace / "pretrained.pt")
    run = workspace / "gpu_only_change"
    run_train_cpu(*args, settings("eqpo"), 3, run, CPU, stop_after=9)  # last checkpoint at step 8
    changed = settings("eqpo", max_response_length=16, gpus=1, loggers=["wandb"], save_hf_model=True)
    with caplog.at_level("INFO"):
        run_train_cpu(*args, changed, 3, run, CPU, stop_after=9)
    assert f"resumed from {run / 'ckpt' / 'last.pt'} at step 8" in caplog.text


def test_the_runs_own_reward_and_the_cpu_block_reach_the_backend(workspace):
    args = (workspace / "cohort.parquet", workspace / "pretrained.pt")
    exact = ReproductionOptions(reward="exact")
    run = workspace / "exact"
    run_train_cpu(*args, settings("eqpo", options=exact), 0, run, {"probe_prompts": 5}, stop_after=4)
    fingerprint = json.loads(torch.load(run / "ckpt" / "last.pt", weights_only=False)["fingerprint"])
    assert fingerprint["options"]["reward"] == "exact"
    assert (fingerprint["config"]["probe_prompts"], fingerprint["config"]["threads"]) == (5, 1)
    # every rollout scores 0 or 1, so a step's mean over its 32 x 4 rollouts is a multiple of 1/128
    steps = [json.loads(line) for line in (run / "ckpt" / "steps.jsonl").read_text().splitlines()]
    assert len(steps) == 4 and all((s["reward_mean"] * 128).is_integer() for s in steps)
    probed = {json.loads(line)["sample_id"] for line in (run / "ckpt" / "clusters.jsonl").read_text().splitlines()}
    assert 1 <= len(probed) <= 5
    # prediction scores with the options it is handed: exact is 1 where the label set is right
    out = workspace / "exact_predictions.parquet"
    run_predict_cpu(args[0], args[1], out, options=exact)
    preds = pd.read_parquet(out)
    right = [float(set(p) == set(t)) for p, t in zip(preds["prediction"], preds["labels"], strict=True)]
    assert preds["reward"].tolist() == right and 0 < sum(right) < len(right)


def test_killed_process_resumes(workspace):
    """A real SIGKILL in the middle of training, then a rerun of the same command."""
    run = workspace / "killed"
    run_settings = settings("eqpo_nd", steps=40, save_freq=5)
    code = (
        "from eqpo.runs.settings import RunSettings; from eqpo.workflow.pipeline import run_train_cpu; "
        f"run_train_cpu({str(workspace / 'cohort.parquet')!r}, {str(workspace / 'pretrained.pt')!r}, "
        f"RunSettings.from_dict({run_settings.as_dict()!r}), 2, {str(run)!r}, {CPU!r})"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (run / "ckpt" / "last.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "final.pt").exists(), "the run finished before it could be killed"
    checkpoint_step = _checkpoint_step(run)  # fails when no checkpoint appeared before the kill
    interrupted = _step_lines(run / "ckpt" / "steps.jsonl")
    subprocess.run([sys.executable, "-c", code], check=True, stderr=subprocess.DEVNULL)
    assert_resumed_at_the_checkpoint(run, interrupted, checkpoint_step)
    reference = workspace / "killed_reference"
    run_train_cpu(workspace / "cohort.parquet", workspace / "pretrained.pt", run_settings, 2, reference, CPU)
    assert _strip_times(run / "dynamics.jsonl") == _strip_times(reference / "dynamics.jsonl")


def test_same_seed_same_results_different_seed_differs(workspace):
    args = (workspace / "cohort.parquet", workspace / "pretrained.pt", settings("eqpo_nd"))
    run_train_cpu(*args, 5, workspace / "det_a", CPU)
    run_train_cpu(*args, 5, workspace / "det_b", CPU)
    run_train_cpu(*args, 6, workspace / "det_c", CPU)
    a, b, c = (_strip_times(workspace / d / "dynamics.jsonl") for d in ("det_a", "det_b", "det_c"))
    assert a == b
    assert a != c


def test_a_custom_dataset_trains_end_to_end_on_the_cpu_backend(tmp_path):
    """Bring-your-own data (config data.custom) through cohort -> warm start -> RL -> metrics."""
    from eqpo.workflow.pipeline import make_demo_cohort

    rng = np.random.default_rng(0)
    n = 240
    y = rng.integers(0, 2, n)
    frame = pd.DataFrame(
        {
            "sample_id": [f"m{i}" for i in range(n)],
            "patient_id": [f"p{i // 2}" for i in range(n)],
            "split": np.array(["train", "val", "test"])[(np.arange(n) // 2) % 3],
            "label": np.where(y == 1, "Malignant", "Benign"),
            "age": rng.uniform(20, 90, n),
            "sex": rng.choice(["female", "male"], n),
            **{f"f{j}": rng.normal(size=n) + (y * 1.5 if j == 0 else 0) for j in range(16)},
        }
    )
    frame.to_csv(tmp_path / "mine.csv", index=False)
    custom = [
        {
            "name": "MyDerm",
            "path": str(tmp_path / "mine.csv"),
            "labels": ["Benign", "Malignant"],
            "question": "Benign or malignant?",
        }
    ]
    make_demo_cohort({"n_samples": 700}, ["HAM10000"], tmp_path / "cohort.parquet", tmp_path / "summary.csv", custom)
    run_pretrain(
        tmp_path / "cohort.parquet", {"backend": "cpu", "arch": "linear"}, {"epochs": 2}, 0, tmp_path / "pre.pt"
    )
    run_train_cpu(tmp_path / "cohort.parquet", tmp_path / "pre.pt", settings("eqpo", steps=4), 0, tmp_path / "run", CPU)
    run_predict_cpu(tmp_path / "cohort.parquet", tmp_path / "run" / "final.pt", tmp_path / "preds.parquet")
    metrics = score_predictions(tmp_path / "preds.parquet", tmp_path / "metrics.json", model="m", method="eqpo", seed=0)
    assert {d["dataset"] for d in metrics["by_dataset"]} == {"HAM10000", "MyDerm"}
