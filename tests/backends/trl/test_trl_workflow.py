"""The trl backend in the DAG: a tiny vision-language model trained with GRPO and EQPO on a fixture
dataset of PNG images (data.custom), predicted on the test split and scored, through Table 2; and
the config/trl.yaml overlay resolving to one GPU job per run."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import yaml

from snakemake_run import run_snakemake

REPO = Path(__file__).resolve().parents[3]


def test_the_trl_overlay_resolves_to_one_gpu_job_per_run(tmp_path):
    out = run_snakemake(
        tmp_path, "-n", "--quiet", "rules", configs=(REPO / "config.yaml", REPO / "config" / "trl.yaml")
    )
    stats = out.stdout.split("Job stats:")[1]
    counts = {
        line.split()[0]: int(line.split()[1])
        for line in stats.splitlines()
        if len(line.split()) == 2 and line.split()[1].isdigit()
    }
    assert counts["train_trl"] == 2 and counts["predict_trl"] == 2 and counts["score"] == 2
    assert "train_verl" not in counts and "train_cpu" not in counts
    profile = yaml.safe_load((REPO / "slurm" / "config.yaml").read_text())
    assert profile["set-resources"]["train_trl"]["gpu"] == 1 and profile["set-resources"]["predict_trl"]["gpu"] == 1


@pytest.mark.slow
def test_a_tiny_vision_language_model_through_the_dag_to_table2(tmp_path, tiny_model, fixture_data, helpers):
    overlay = {
        "experiment": "trltiny",
        # every record (a third have no demographics: EQPO clusters them); Table 2 at the final
        # checkpoint on the test split, so it holds exactly the metrics files' numbers
        "data": {"source": "paper", "datasets": [], "custom": [fixture_data["entry"]], "records": "all"},
        "report": {"point": "final_test"},
        "base_models": ["tiny-vl"],
        "models": {"tiny-vl": {"backend": "trl", "path": str(tiny_model)}},
        "methods": ["grpo", "eqpo"],
        "seeds": [0],
        "train": {
            "steps": 2,
            "batch_prompts": 2,
            "rollouts": 4,
            "lr": 1e-3,
            "test_freq": 2,
            "save_freq": 2,
            "max_response_length": 16,
        },
        "trl": {"threads": 1, "eval_batch_size": 6},
        **helpers.REPRODUCTION,
    }
    config = tmp_path / "tiny_trl.yaml"
    config.write_text(yaml.safe_dump(overlay))
    results = tmp_path / "results" / "trltiny"
    run_snakemake(tmp_path, "--cores", "2", "results/trltiny/tables/table2.csv", configs=(REPO / "config.yaml", config))

    table = pd.read_csv(results / "tables" / "table2.csv")
    assert sorted(table["method"]) == ["eqpo", "grpo"] and set(table["model"]) == {"tiny-vl"}
    for row in table.itertuples():
        run = results / row.model / row.method / "seed0"
        metrics = json.loads((run / "metrics.json").read_text())
        assert metrics["method"] == row.method and metrics["summary"]["F1"] == pytest.approx(row.F1)
        for key, value in metrics["summary"].items():  # Table 2 holds exactly the run's numbers
            assert getattr(row, key) == pytest.approx(value, rel=1e-12, abs=1e-15, nan_ok=True), key
        predictions = pd.read_parquet(run / "predictions.parquet")
        assert len(predictions) == 6 and set(predictions["dataset"]) == {helpers.DATASET}
        assert predictions["response"].str.contains(r"\\boxed\{", regex=True).any()
        assert [json.loads(line)["step"] for line in (run / "steps.jsonl").read_text().splitlines()] == [1, 2]
        assert [json.loads(line)["step"] for line in (run / "dynamics.jsonl").read_text().splitlines()] == [0, 2]
        assert (run / "model" / "config.json").exists() and (run / "clusters.parquet").exists()
