"""The run-file contract (eqpo.runs.files): what the backends write from an estimator's last_stats()
and what eqpo.analysis.collect reads back. Expected values are worked out by hand."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from eqpo.analysis.collect import estimator_statistics, read_clusters, read_steps
from eqpo.core.advantages import EstimatorStats, make_estimator
from eqpo.runs.files import (
    CLUSTER_COLUMNS,
    STEP_KEYS,
    RunFiles,
    cluster_rows,
    estimator_metrics,
    missing_estimator_state,
    step_record,
)


def test_group_dro_statistics_become_the_logged_metrics():
    """One Group-DRO call (eta 0.5): cells (D, F) with rbar 3/4 and (D, UNK) with rbar 0; weights
    2 e^x / (e^0.125 + e^0.5) with x = 0.125 and 0.5 (worked in test_advantages_by_hand.py)."""
    est = make_estimator("grpo_dro", eta=0.5)
    est([1, 1, 1, 0, 0, 0], ["p0", "p0", "p1", "p1", "p2", "p2"], ["D"] * 6, ["F"] * 4 + [None] * 2)
    total = math.exp(0.125) + math.exp(0.5)
    assert estimator_metrics(est.last_stats()) == pytest.approx(
        {
            "eqpo/group/D/F/N": 2.0,
            "eqpo/group/D/F/rbar": 0.75,
            "eqpo/group/D/F/weight": 2 * math.exp(0.125) / total,
            "eqpo/group/D/UNK/N": 1.0,
            "eqpo/group/D/UNK/rbar": 0.0,
            "eqpo/group/D/UNK/weight": 2 * math.exp(0.5) / total,
        }
    )


def test_estimators_without_groups_report_nothing_and_non_finite_values_are_left_out():
    est = make_estimator("rloo")
    est([1, 0], ["a", "a"], ["D"] * 2, [None] * 2)
    assert est.last_stats() == EstimatorStats() and estimator_metrics(est.last_stats()) == {}
    stats = EstimatorStats.of(
        [{"dataset": "D", "group": "cluster0", "N": 3, "rbar": float("nan"), "factor": True}], {"D": 2}
    )
    assert estimator_metrics(stats) == {"eqpo/group/D/cluster0/N": 3.0, "eqpo/k/D": 2.0}


def test_an_empty_batch_clears_the_last_statistics():
    est = make_estimator("eqpo", scope="batch")
    est([1, 0, 0, 1], ["a", "a", "b", "b"], ["D"] * 4, [None] * 4)
    assert est.last_stats().clusters
    est([], [], [], [])
    assert est.last_stats() == EstimatorStats()


def test_cluster_rows_one_per_clustered_prompt_with_the_datasets_k():
    stats = EstimatorStats.of([], {"A": 3, "B": 1}, {"p1": 2, "p2": 0, "p3": 0})
    prompts = [
        ("p2", "s2", "A", None),
        ("p1", "s1", "A", "F|a1"),
        ("p1", "s1", "A", "F|a1"),
        ("p3", "s3", "B", "M|a2"),
        ("p4", "s4", "B", "M|a3"),
    ]  # p1 twice (rollouts), p4 not clustered
    assert cluster_rows(stats, 5, prompts) == [
        {"sample_id": "s1", "step": 5, "dataset": "A", "cluster": 2, "k": 3, "true_group": "F|a1"},
        {"sample_id": "s2", "step": 5, "dataset": "A", "cluster": 0, "k": 3, "true_group": None},
        {"sample_id": "s3", "step": 5, "dataset": "B", "cluster": 0, "k": 1, "true_group": "M|a2"},
    ]


def test_what_a_backend_writes_the_analysis_reads(tmp_path):
    files = RunFiles.for_run(tmp_path / "m" / "eqpo" / "seed3")
    files.run_dir.mkdir(parents=True)
    stats = EstimatorStats.of([], {"A": 2}, {"p": 1})
    records = [step_record(s, 0.25 * s, 2.0, 1.0, 0.25, 0.75, {"A": 0.5}, stats) for s in (1, 2)]
    files.steps.write_text("".join(json.dumps(r) + "\n" for r in records))
    pd.DataFrame(cluster_rows(stats, 2, [("p", "s9", "A", "F")]), columns=list(CLUSTER_COLUMNS)).to_parquet(
        files.clusters, index=False
    )
    steps = read_steps([files.steps])
    assert list(steps.columns[: 3 + len(STEP_KEYS)]) == ["model", "method", "seed", *STEP_KEYS]
    assert steps["reward_mean"].tolist() == [0.25, 0.5] and steps["time_advantage_s"].tolist() == [0.25, 0.25]
    assert steps["unparsed_item_share/A"].tolist() == [0.5, 0.5] and steps["eqpo/k/A"].tolist() == [2.0, 2.0]
    clusters = read_clusters([files.clusters])
    assert clusters[["method", "seed", "sample_id", "step", "cluster", "k"]].values.tolist() == [
        ["eqpo", 3, "s9", 2, 1, 2]
    ]


def test_the_missing_state_error_names_the_checkpoint_the_file_and_the_way_out():
    message = str(missing_estimator_state("/runs/ckpt/global_step_4", "the CPU trainer"))
    assert "/runs/ckpt/global_step_4 has no eqpo_estimator.json" in message
    assert "written by the CPU trainer" in message and "train.restart_estimator_on_resume: true" in message


def test_the_statistics_a_backend_logs_are_read_back_by_the_analysis(tmp_path):
    """Two steps of EQPO on a batch with a labelled group and unlabeled prompts: what the estimator
    reported is what estimator_statistics reads from steps.jsonl, group by group."""
    est = make_estimator("eqpo", scope="batch")
    rewards = [1, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0]
    prompts = ["a", "a", "b", "b", "c", "c", "d", "d", "e", "e", "f", "f"]
    groups = ["F", "F", "F", "F", None, None, None, None, None, None, None, None]
    files = RunFiles.for_run(tmp_path / "m" / "eqpo" / "seed0")
    files.run_dir.mkdir(parents=True)
    reported = []
    with files.steps.open("w") as handle:
        for step in (1, 2):
            est(rewards, prompts, ["D"] * 12, groups)
            reported.append(est.last_stats())
            handle.write(json.dumps(step_record(step, 0.5, 1.0, 0.5, 0.1, 0.4, stats=est.last_stats())) + "\n")
    frame = estimator_statistics(read_steps([files.steps]))
    assert frame.loc[frame["statistic"] == "k", "group"].tolist() == [None, None]
    stats = frame.set_index(["step", "group", "statistic"])
    for step, call in zip((1, 2), reported, strict=False):
        assert stats.loc[(step, None, "k"), "value"] == call.k["D"] == 2  # two distinct vectors: [1, 1], [0, 0]
        for row in call.group_stats:
            for statistic in ("N", "rbar", "factor"):
                assert stats.loc[(step, row["group"], statistic), "value"] == pytest.approx(row[statistic])
    assert set(frame["group"].dropna()) == {"F", "cluster0", "cluster1"}
    assert estimator_statistics(read_steps([])).empty
