"""Bring your own, alone: a cohort of only data.custom datasets (data.datasets: []) in both data
sources, and custom datasets with different numbers of feature columns on the CPU backend (each
dataset has its own input width), trained end to end."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from eqpo.backends.cpu.policy import MultiTaskPolicy, PolicyConfig
from eqpo.backends.cpu.trainer import feature_widths
from eqpo.core.vocabularies import DatasetSpec
from eqpo.runs.settings import RunSettings, TrainSettings
from eqpo.workflow.pipeline import (
    build_cohort,
    make_demo_cohort,
    read_cohort,
    run_predict_cpu,
    run_pretrain,
    run_train_cpu,
    score_predictions,
)

from snakemake_run import run_snakemake

REPO = Path(__file__).resolve().parents[1]


def _custom(tmp_path: Path, name: str, width: int, labels: list[str], n: int = 90, seed: int = 0) -> dict:
    """A custom dataset with ``width`` feature columns f0..f{width-1}; the label is the sign of f0
    (with the first label for f0 < 0), so a policy can learn it."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, width)).round(4)
    rows = pd.DataFrame(
        {
            "sample_id": [f"{name}-{i}" for i in range(n)],
            "patient_id": [f"{name}-p{i // 2}" for i in range(n)],
            "split": ["train" if i % 6 < 4 else "val" if i % 6 == 4 else "test" for i in range(n)],
            "label": [labels[int(v >= 0)] for v in x[:, 0]],
            "age": rng.choice([20.0, 40.0, 60.0, 80.0], size=n),
            "sex": rng.choice(["female", "male"], size=n),
            **{f"f{j}": x[:, j] for j in range(width)},
        }
    )
    path = tmp_path / f"{name}.csv"
    rows.to_csv(path, index=False)
    return {
        "name": name,
        "path": str(path),
        "labels": labels,
        "attributes": ["sex", "age"],
        "question": f"{name}: which one?",
    }


@pytest.fixture
def entries(tmp_path):
    return [
        _custom(tmp_path, "Narrow", 3, ["Benign", "Malignant"], seed=1),
        _custom(tmp_path, "Wide", 5, ["Healthy", "Sick"], seed=2),
    ]


def test_demo_source_with_only_custom_datasets(tmp_path, entries):
    make_demo_cohort({}, [], tmp_path / "cohort.parquet", tmp_path / "summary.csv", entries, tmp_path / "table1")
    cohort = read_cohort(tmp_path / "cohort.parquet")
    assert sorted(cohort["dataset"].unique()) == ["Narrow", "Wide"] and len(cohort) == 180
    narrow = cohort[cohort["dataset"] == "Narrow"]
    assert narrow[["f3", "f4"]].isna().all().all() and narrow[["f0", "f1", "f2"]].notna().all().all()
    assert feature_widths(cohort) == {"Narrow": 3, "Wide": 5}
    table1 = pd.read_csv(tmp_path / "table1.csv")
    assert table1["samples"].tolist() == [90, 90] and table1["paper_samples"].isna().all()
    summary = pd.read_csv(tmp_path / "summary.csv")
    assert summary["dataset"].tolist() == ["Narrow", "Wide"]


def test_paper_source_with_only_custom_datasets(tmp_path, entries):
    build_cohort([], tmp_path / "cohort.parquet", tmp_path / "table1", entries)
    cohort = read_cohort(tmp_path / "cohort.parquet")
    assert sorted(cohort["dataset"].unique()) == ["Narrow", "Wide"]
    assert pd.read_csv(tmp_path / "table1.csv")["dataset"].tolist() == ["Narrow", "Wide"]


def test_nothing_at_all_is_a_clear_error(tmp_path):
    for call in (
        lambda: make_demo_cohort({}, [], tmp_path / "c.parquet", tmp_path / "s.csv", []),
        lambda: build_cohort([], tmp_path / "c.parquet", tmp_path / "t", []),
    ):
        with pytest.raises(ValueError, match="data.datasets is empty and data.custom has no entries"):
            call()


def test_feature_widths_name_what_is_wrong():
    base = pd.DataFrame({"dataset": ["A", "A", "B"], "f0": [1.0, 2.0, 3.0], "f1": [1.0, np.nan, np.nan]})
    with pytest.raises(ValueError, match=r"A fills f0..f0 but also has values in \['f1'\]"):
        feature_widths(base)
    with pytest.raises(ValueError, match="B has no feature values"):
        feature_widths(base.assign(f0=[1.0, 2.0, np.nan], f1=[1.0, 2.0, np.nan]))
    with pytest.raises(ValueError, match="no feature columns"):
        feature_widths(base[["dataset"]])
    assert feature_widths(base.assign(f1=[1.0, 2.0, np.nan])) == {"A": 2, "B": 1}


def test_a_narrow_dataset_reads_only_its_own_columns():
    specs = [DatasetSpec("Narrow", ("a", "b"), False, ("sex",)), DatasetSpec("Wide", ("c", "d"), False, ("sex",))]
    torch.manual_seed(0)
    policy = MultiTaskPolicy(PolicyConfig("mlp", 5, hidden=4, input_widths={"Narrow": 3, "Wide": 5}), specs)
    x = torch.randn(6, 5)
    changed = x.clone()
    changed[:, 3:] = 100.0  # columns beyond Narrow's width
    assert torch.equal(policy.logits(x, "Narrow"), policy.logits(changed, "Narrow"))
    assert not torch.equal(policy.logits(x, "Wide"), policy.logits(changed, "Wide"))
    restored = MultiTaskPolicy.from_meta(policy.meta())
    assert restored.config.input_widths == {"Narrow": 3, "Wide": 5}
    with pytest.raises(ValueError, match="between 1 and n_features=5"):
        PolicyConfig("linear", 5, input_widths={"Narrow": 6})


def test_custom_only_cohort_trains_end_to_end_on_the_cpu_backend(tmp_path, entries):
    cohort = tmp_path / "cohort.parquet"
    make_demo_cohort({}, [], cohort, tmp_path / "summary.csv", entries)
    run_pretrain(cohort, {"backend": "cpu", "arch": "mlp", "hidden": 8}, {"epochs": 3}, 0, tmp_path / "pre.pt")
    train = {
        "steps": 6,
        "batch_prompts": 16,
        "rollouts": 4,
        "lr": 0.01,
        "ppo_mini_batch": 8,
        "test_freq": 3,
        "save_freq": 3,
    }
    settings = RunSettings(
        model="demo-mlp",
        method="eqpo",
        train=TrainSettings.from_mapping(train),
        estimator={"scope": "history", "k_max": 3, "tau": 0.1},
    )
    run_dir = tmp_path / "run"
    run_train_cpu(cohort, tmp_path / "pre.pt", settings, 0, run_dir, {"probe_prompts": 16})
    assert len((run_dir / "steps.jsonl").read_text().splitlines()) == 6
    run_predict_cpu(cohort, run_dir / "final.pt", run_dir / "predictions.parquet")
    preds = pd.read_parquet(run_dir / "predictions.parquet")
    assert sorted(preds["dataset"].unique()) == ["Narrow", "Wide"] and len(preds) == 2 * 15  # 90 / 6 test rows each
    metrics = score_predictions(run_dir / "predictions.parquet", run_dir / "metrics.json")
    assert {d["dataset"] for d in metrics["by_dataset"]} >= {"Narrow", "Wide"}
    assert 0.0 <= metrics["summary"]["F1"] <= 1.0


@pytest.mark.slow
def test_custom_only_config_runs_through_snakemake(tmp_path, entries):
    """The workflow itself: data.datasets: [] with two custom datasets of different widths, one CPU
    model and method, through demo_cohort -> pretrain_cpu -> train_cpu -> predict_cpu -> score."""
    overlay = tmp_path / "custom.yaml"
    overlay.write_text(
        json.dumps(
            {
                "experiment": "custom",
                "data": {"source": "demo", "datasets": [], "custom": entries},
                "base_models": ["demo-linear"],
                "methods": ["eqpo"],
                "seeds": [0],
                "pretrain": {"epochs": 2},
                "train": {
                    "steps": 4,
                    "batch_prompts": 16,
                    "rollouts": 4,
                    "ppo_mini_batch": 8,
                    "test_freq": 2,
                    "save_freq": 2,
                },
                "cpu": {"probe_prompts": 16},
            }
        )
    )
    target = "results/custom/demo-linear/eqpo/seed0/metrics.json"
    run_snakemake(tmp_path, target, "--cores", "1", configs=[REPO / "config.yaml", overlay])
    metrics = json.loads((tmp_path / target).read_text())
    assert {d["dataset"] for d in metrics["by_dataset"]} >= {"Narrow", "Wide"}
    log = tmp_path / "logs" / "custom" / "pretrain" / "demo-linear.log"
    assert "per-dataset input widths: Narrow 3, Wide 5" in log.read_text()
