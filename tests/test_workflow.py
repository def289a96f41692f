"""The Snakemake DAG: dry runs of every config, config validation, and a tiny end-to-end run."""

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from snakemake_run import run_snakemake

REPO = Path(__file__).resolve().parents[1]
PAPER = REPO / "config.yaml"
DEMO = REPO / "config" / "demo.yaml"
TINY = REPO / "config" / "tiny.yaml"


def snakemake(workdir, *args, configs=(PAPER,), check=True):
    return run_snakemake(workdir, *args, configs=configs, check=check)


def job_counts(output: str) -> dict[str, int]:
    stats = output.split("Job stats:")[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)$", stats, flags=re.M)}


def test_paper_config_dry_run_resolves_every_job(tmp_path):
    counts = job_counts(snakemake(tmp_path, "-n", "--quiet", "rules").stdout)
    assert counts["train_verl"] == 8 * 3  # 8 methods (both EQPO-ND variants) x 3 base models x 1 seed
    assert counts["predict_vllm"] == 24 and counts["score"] == 24
    assert counts["prepare_dataset"] == 7
    assert "train_cpu" not in counts


def test_demo_config_dry_run_resolves_every_job(tmp_path):
    counts = job_counts(snakemake(tmp_path, "-n", "--quiet", "rules", configs=(PAPER, DEMO)).stdout)
    assert counts["train_cpu"] == 8 * 2 * 3 and counts["pretrain_cpu"] == 2  # methods x models x seeds
    for rule in (
        "demo_cohort",
        "table2",
        "uncertainty",
        "paper_comparison",
        "paper_tables",
        "cluster_stability",
        "notebook_training_dynamics",
        "notebook_group_fairness",
        "notebook_cluster_stability",
        "dynamics",
    ):
        assert counts[rule] == 1
    assert "train_verl" not in counts


def test_a_misspelt_config_key_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  batch_promts: 8\n")
    result = snakemake(tmp_path, "-n", configs=(PAPER, bad), check=False)
    assert result.returncode != 0
    assert "batch_promts" in result.stdout + result.stderr


def test_an_undefined_base_model_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("base_models: [gpt-9]\n")
    result = snakemake(tmp_path, "-n", configs=(PAPER, bad), check=False)
    assert result.returncode != 0
    assert "gpt-9" in result.stdout + result.stderr and "models:" in result.stdout + result.stderr


def metrics_columns(run) -> list[str]:
    return list(json.loads((run / "metrics.json").read_text())["summary"])


@pytest.mark.slow
def test_tiny_config_end_to_end(tmp_path):
    snakemake(tmp_path, "--cores", "2", configs=(PAPER, TINY))
    results, figures = tmp_path / "results" / "tiny", tmp_path / "figures" / "tiny"
    for path in [results / "tables" / f"table2.{ext}" for ext in ("csv", "md", "tex")] + [
        results / "tables" / "cluster_stability.csv",
        results / "dynamics.csv",
        results / "tables" / "timing.csv",
        *(
            figures / f"{name}.{ext}"
            for name in ("training_dynamics", "group_f1", "cluster_stability")
            for ext in ("png", "pdf")
        ),
    ]:
        assert path.exists() and path.stat().st_size > 0, path

    # Table 2 holds exactly the numbers of each run's last validation (report.point validation_step),
    # table2_test those of the metrics files (final checkpoint on the test split).
    table = pd.read_csv(results / "tables" / "table2.csv")
    assert len(table) == 2 * 3
    for row in table.itertuples():
        run = results / row.model / row.method / "seed0"
        last = [json.loads(line) for line in (run / "dynamics.jsonl").read_text().splitlines()][-1]
        assert last["step"] == 12  # tiny.yaml's step budget, validated at its end
        for key in metrics_columns(run):
            assert getattr(row, key) == pytest.approx(last[key], rel=1e-12, abs=1e-15), (row.model, row.method, key)
    assert "report.point = validation_step" in (results / "tables" / "table2.md").read_text()
    test_table = pd.read_csv(results / "tables" / "table2_test.csv")
    for row in test_table.itertuples():
        metrics = json.loads((results / row.model / row.method / "seed0" / "metrics.json").read_text())
        for key, value in metrics["summary"].items():
            assert getattr(row, key) == pytest.approx(value, rel=1e-12, abs=1e-15), (row.model, row.method, key)
    assert "Total: 0.0 GPU-hours over 6 training runs" in (results / "plan.md").read_text()

    # Analysis artifacts: uncertainty, the other paper tables, the paper comparison, executed notebooks.
    tables = results / "tables"
    ci = pd.read_csv(tables / "table2_ci.csv")
    # percentile intervals: lo <= hi, but a gap's (max - min) interval can miss its estimate (bootstrap bias)
    assert len(ci) == 2 * 3 * 11 and (ci["lo"] <= ci["hi"]).all()
    for row in ci.itertuples():  # one seed: the interval's centre is the run's own Table 2 value
        metrics = json.loads((results / row.model / row.method / "seed0" / "metrics.json").read_text())
        assert row.estimate == pytest.approx(metrics["summary"][row.column], rel=1e-9, abs=1e-12)
    tests = pd.read_csv(tables / "paired_tests.csv")
    assert set(tests["baseline"]) == {"grpo", "eqpo_nd"} and len(tests) == 2 * 2 * 11
    assert tests["p_value"].between(0, 1).all()
    table3 = pd.read_csv(tables / "table3.csv", index_col=0)
    assert list(table3.columns) == ["demo-linear", "demo-mlp"]
    table4 = pd.read_csv(tables / "table4.csv")
    groups = json.loads((results / "demo-mlp" / "eqpo" / "seed0" / "metrics.json").read_text())["by_group"]
    f1 = {(g["dataset"], g["attribute"], g["group"]): g["F1"] for g in groups}
    mine = table4[table4["model"] == "demo-mlp"]
    assert len(mine) == len(f1)
    for row in mine.itertuples():
        assert row.eqpo == pytest.approx(f1[(row.dataset, row.attribute, row.group)], abs=1e-9)
    assert len(list((tables / "per_group").glob("*.csv"))) == 7
    claims = pd.read_csv(tables / "claims.csv")
    model_claims = claims["base_model"] != "all"  # the runtime-share claim holds for any model
    assert len(claims) == 10 and claims.loc[model_claims, "ours"].isna().all()  # demo models are not the paper's
    assert claims.loc[~model_claims, "ours"].between(0, 100).all()
    paper = pd.read_csv(tables / "paper_vs_ours_table2.csv")
    assert (paper["matched"] == "no").all() and paper["paper"].notna().all()
    for name in ("training_dynamics", "group_fairness", "cluster_stability"):
        executed = (results / "notebooks" / f"{name}.ipynb").read_text()
        assert "injected-parameters" in executed
    for name in ("runtime_split", "pareto"):
        assert (figures / f"{name}.png").stat().st_size > 0

    # Rerunning one ablation is one target: only that job runs.
    target = "results/tiny/demo-mlp/eqpo/seed0/metrics.json"
    counts = job_counts(snakemake(tmp_path, target, "-f", "-n", "--quiet", "rules", configs=(PAPER, TINY)).stdout)
    assert counts == {"score": 1, "total": 1}
    # Nothing is left to do after a complete run.
    assert "Nothing to be done" in snakemake(tmp_path, "-n", configs=(PAPER, TINY)).stdout


def test_a_missing_manual_dataset_stops_with_instructions(tmp_path):
    overlay = tmp_path / "one.yaml"
    overlay.write_text("data:\n  datasets: [CheXpert]\n")
    result = snakemake(
        tmp_path, "data/paper/CheXpert/table.parquet", "--cores", "1", configs=(PAPER, overlay), check=False
    )
    assert result.returncode != 0
    log = (tmp_path / "logs" / "paper" / "prepare_dataset" / "CheXpert.log").read_text()
    assert "Landing page" in log and "train.csv" in log and "skip_unavailable" in log
    assert not (tmp_path / "data" / "paper" / "CheXpert" / "table.parquet").exists()
