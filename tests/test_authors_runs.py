"""What the authors' runs were: the reported point of Table 2, validation read as the evaluator
reads answers, CLIMB's COVID-BLUES question, the GRPO+RS cells and group edge cases of their code,
and the records their files held. Expectations are worked out by hand in the comments."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from eqpo.analysis.paper import paper_vs_reproduction_table2
from eqpo.analysis.report_point import ReportPoint, reported_rows, validation_rows
from eqpo.analysis.tables import table2
from eqpo.backends.verl import logs
from eqpo.backends.verl.reward import compute_score
from eqpo.core.groups import age_bin, explicit_group, regroup, resample_for_rs, resampling_cells
from eqpo.core.metrics import TABLE2_COLUMNS
from eqpo.data.export import FORMAT_INSTRUCTION, export_verl, select_records, to_verl
from eqpo.runs.settings import ReproductionOptions, RunSettings

REPO = Path(__file__).resolve().parents[1]


def load_config() -> dict:
    """config.yaml as written (its `runs` are the defaults this file checks)."""
    return yaml.safe_load((REPO / "config.yaml").read_text())


# ----------------------------------------------------------------------------------------------
# 1. The reported point
# ----------------------------------------------------------------------------------------------


def dynamics_frame() -> pd.DataFrame:
    """Two runs; F1 = step / 100 for run a, step / 1000 for run b; other columns 0."""
    rows = []
    for method, scale, steps in (("grpo", 100.0, (0, 5, 10, 15)), ("eqpo", 1000.0, (0, 5, 10))):
        for step in steps:
            rows.append(
                {
                    "model": "m",
                    "method": method,
                    "seed": 0,
                    "step": step,
                    **{c: 0.0 for c in TABLE2_COLUMNS},
                    "F1": step / scale,
                }
            )
    return pd.DataFrame(rows)


def test_validation_step_defaults_to_each_runs_last_validation():
    rows = validation_rows(dynamics_frame(), ReportPoint()).set_index("method")
    assert rows.loc["grpo", "F1"] == pytest.approx(0.15) and rows.loc["grpo", "steps"] == "15"
    assert rows.loc["eqpo", "F1"] == pytest.approx(0.010) and rows.loc["eqpo", "steps"] == "10"


def test_validation_at_a_named_step_and_its_missing_step_is_an_error():
    rows = validation_rows(dynamics_frame(), ReportPoint(step=5)).set_index("method")
    assert rows.loc["grpo", "F1"] == pytest.approx(0.05) and rows.loc["eqpo", "F1"] == pytest.approx(0.005)
    with pytest.raises(ValueError, match=r"m/eqpo/seed0 has no validation at step 15 .*\[0, 5, 10\]"):
        validation_rows(dynamics_frame(), ReportPoint(step=15))


def test_validation_mean_over_a_step_range():
    # grpo: steps 5, 10, 15 in [5, 20] -> F1 (0.05 + 0.10 + 0.15) / 3 = 0.10; eqpo: 5, 10 -> 0.0075
    rows = validation_rows(dynamics_frame(), ReportPoint("validation_mean", steps=(5, 20))).set_index("method")
    assert rows.loc["grpo", "F1"] == pytest.approx(0.10) and rows.loc["grpo", "steps"] == "5,10,15"
    assert rows.loc["eqpo", "F1"] == pytest.approx(0.0075)
    with pytest.raises(ValueError, match="no validation in steps 20-30"):
        validation_rows(dynamics_frame(), ReportPoint("validation_mean", steps=(20, 30)))


def test_final_test_point_reads_the_test_metrics_and_bad_settings_are_errors():
    metrics = pd.DataFrame([{"model": "m", "method": "grpo", "seed": 0, **{c: 0.5 for c in TABLE2_COLUMNS}}])
    assert reported_rows(metrics, dynamics_frame(), ReportPoint("final_test")) is metrics
    # a validation point for a run without validations: an error naming the run and the way out
    lone = metrics.assign(model="other")
    with pytest.raises(ValueError, match=r"other/grpo/seed0 has none; .*report.point: final_test"):
        reported_rows(lone, dynamics_frame(), ReportPoint())
    with pytest.raises(ValueError, match="report.point must be one of"):
        ReportPoint("best")
    with pytest.raises(ValueError, match="first <= last"):
        ReportPoint.from_config({"report": {"point": "validation_mean", "steps": [9, 3]}})
    point = ReportPoint.from_config({"report": {"point": "validation_step", "step": 90}})
    assert point.step == 90 and "step 90" in point.describe()


def test_paper_comparison_says_which_point_and_why_covid_blues_is_zero():
    # our Qwen2.5-VL EQPO row at its last validation; the paper's row is the authors' step-90 value
    dyn = pd.DataFrame(
        [
            {
                "model": "qwen2.5-vl-7b",
                "method": "eqpo",
                "seed": 0,
                "step": s,
                **{c: 0.1 * s / 90 for c in TABLE2_COLUMNS},
            }
            for s in (0, 45, 90)
        ]
    )
    ours = table2(reported_rows(pd.DataFrame(), dyn, ReportPoint()))
    config = {"data": {"datasets": ["COVID-BLUES"], "covid_blues_options": False}}
    out = paper_vs_reproduction_table2(ours, config=config)
    f1 = out[(out["model"] == "qwen2.5-vl-7b") & (out["method"] == "eqpo") & (out["column"] == "F1")].iloc[0]
    assert f1["ours"] == pytest.approx(0.1) and f1["paper"] == pytest.approx(0.2647)
    assert "step-90 validation" in f1["note"]
    note = out.attrs["note"]
    assert "Ours: the validation at each run's last validation step" in note
    assert "COVID-BLUES in as zeros" in note and "without options" in note
    listed = paper_vs_reproduction_table2(
        ours, config={"data": {"datasets": ["COVID-BLUES"], "covid_blues_options": True}}
    )
    assert "listed the options" in listed.attrs["note"]


# ----------------------------------------------------------------------------------------------
# 4. CLIMB's COVID-BLUES question
# ----------------------------------------------------------------------------------------------


def covid_row() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": ["c1"],
            "dataset": ["COVID-BLUES"],
            "split": ["train"],
            "images": [["COVID-BLUES/images/f0.png"]],
            "labels": [["Has COVID"]],
            "age": [40.0],
            "sex": [None],
            "group": ["a2"],
        }
    )


def test_covid_blues_prompt_has_no_options_unless_asked(tmp_path):
    bare = to_verl(covid_row(), tmp_path, list_options=False).loc[0, "prompt"][0]["content"]
    assert bare == (
        "<image>\nAbove is a lung ultrasound video. Based on the ultrasound, does the patient have "
        "COVID?\n" + FORMAT_INSTRUCTION
    )
    listed = to_verl(covid_row(), tmp_path, list_options=True).loc[0, "prompt"][0]["content"]
    assert (
        "does the patient have COVID? Answer with one of the following:\nNo COVID\nHas COVID\n" + FORMAT_INSTRUCTION
    ) in listed


# ----------------------------------------------------------------------------------------------
# 5. verl validation reads answers with metrics.extraction
# ----------------------------------------------------------------------------------------------

# first box: the truth; last box: the other class
RESPONSES = {
    "h1": "<think>\\boxed{Melanoma}?</think> final \\boxed{Nevus}",
    "h2": "<think>\\boxed{Nevus}?</think> final \\boxed{Melanoma}",
}
TRUTH = {"h1": "Melanoma", "h2": "Nevus"}


def test_verl_reward_scores_the_last_box_and_predicts_by_extraction():
    info = {"dataset": "HAM10000", "sample_id": "h1"}
    first = compute_score("HAM10000", RESPONSES["h1"], "Melanoma", info)
    # score from the last box (Nevus, wrong): 0.5 * F1 0 + 0.1 * format 0 (no bbox JSON) = 0
    assert first["score"] == 0.0 and first["f1"] == 0.0
    assert first["prediction"] == "Melanoma"  # default metrics.extraction: first_box
    assert compute_score("HAM10000", RESPONSES["h1"], "Melanoma", info, extraction="last_box")["prediction"] == "Nevus"


def test_validation_dynamics_follow_the_configured_extraction(tmp_path):
    table = pd.DataFrame(
        {
            "sample_id": list(TRUTH),
            "dataset": ["HAM10000"] * 2,
            "split": ["val"] * 2,
            "images": [["x.png"]] * 2,
            "labels": [[t] for t in TRUTH.values()],
            "age": [60.0, 60.0],
            "sex": ["M", "M"],
            "group": ["M|a3"] * 2,
        }
    )
    to_verl(table, tmp_path).to_parquet(tmp_path / "val.parquet", index=False)
    dumps = tmp_path / "val"
    dumps.mkdir()
    # the dump as verl writes it, with the prediction our reward returned under last_box (the old default)
    lines = [
        {
            "output": RESPONSES[s],
            "gts": TRUTH[s],
            "score": 0.0,
            "step": 5,
            "sample_id": s,
            "dataset": "HAM10000",
            "prediction": "Nevus" if s == "h1" else "Melanoma",
        }
        for s in TRUTH
    ]
    (dumps / "5.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    first = logs.dynamics_records(dumps, tmp_path / "val.parquet", options=ReproductionOptions())
    last = logs.dynamics_records(dumps, tmp_path / "val.parquet", options=ReproductionOptions(extraction="last_box"))
    # first box: both right -> every class F1 1 and accuracy 1; last box: both wrong -> 0 and 0
    assert (first[0]["F1"], first[0]["Acc"]) == (1.0, 1.0)
    assert (last[0]["F1"], last[0]["Acc"]) == (0.0, 0.0)


# ----------------------------------------------------------------------------------------------
# 6. GRPO+RS cells, group edge cases and the records the files hold
# ----------------------------------------------------------------------------------------------


def test_authors_code_edge_cases_as_their_loader():
    both = ("sex", "age")
    assert explicit_group("nan", "F", both, "authors_code") == "F|a4"  # float("nan") fails every <=
    assert explicit_group(-99, None, ("age",), "authors_code") == "a1"  # -99 <= 25
    assert explicit_group(None, None, both, "authors_code") == "unk|unk"  # the loader's "N,UNK"
    assert explicit_group(None, None, ("age",), "authors_code") is None  # the loader's "UNK": clustered
    assert explicit_group("nan", "F", both, "paper") is None and age_bin(-99) is None


def rs_table() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "sample_id": [f"s{i}" for i in range(8)],
            "dataset": ["Hemorrhage"] * 5 + ["VinDr-Mammo"] * 3,
            "age": [30.0, 30.0, 30.0, 60.0, np.nan, -99.0, 60.0, 60.0],
            "sex": ["F", "F", "F", "M", None, None, None, None],
            "split": ["train"] * 8,
            "images": [["x.png"]] * 8,
            "labels": [["No Hemorrhage"]] * 5 + [["BIRAD 1"]] * 3,
        }
    )


def test_rs_cells_are_sex_by_age_with_the_unknown_cell_balanced():
    table = regroup(rs_table().assign(group=None), "authors_code")
    cells = resampling_cells(table, "authors_code").tolist()
    # Hemorrhage: sex is read ("gender"), so sex x age; the unknown row is the cell unk|unk
    assert cells == ["F|a2", "F|a2", "F|a2", "M|a3", "unk|unk", "a1", "a3", "a3"]
    rs = resample_for_rs(table, 0, "authors_code")
    counts = resampling_cells(rs, "authors_code").groupby(rs["dataset"]).value_counts()
    # Hemorrhage: every cell to 3 (9 rows); VinDr-Mammo: a1 to 2 (4 rows)
    assert counts["Hemorrhage"].to_dict() == {"F|a2": 3, "M|a3": 3, "unk|unk": 3}
    assert counts["VinDr-Mammo"].to_dict() == {"a3": 2, "a1": 2}
    assert list(rs.columns) == list(table.columns) and rs.iloc[:8].equals(table)
    # paper groups: Hemorrhage F|a2 x3, M|a3 x1 -> 3 + 3, its unlabeled row kept once; VinDr-Mammo's
    # -99 is no age (unlabeled, kept once), a3 x2 stays
    paper = resample_for_rs(regroup(rs_table().assign(group=None), "paper"), 0, "paper")
    assert len(paper) == 7 + 3


def test_records_with_demographics_drop_the_wholly_unknown(tmp_path):
    table = rs_table()
    kept = select_records(table, "with_demographics")
    assert kept["sample_id"].tolist() == ["s0", "s1", "s2", "s3", "s5", "s6", "s7"]  # s4: no age, no sex
    assert select_records(table, "all") is table
    with pytest.raises(ValueError, match="data.records must be one of"):
        select_records(table, "demo_only")
    paths = export_verl(
        regroup(table.assign(group=None), "authors_code"),
        tmp_path,
        tmp_path / "verl",
        group_definition="authors_code",
        records="with_demographics",
    )
    assert len(pd.read_parquet(paths["train"])) == 7
    # Hemorrhage cells F|a2 3, M|a3 1 -> 3 + 3; VinDr-Mammo a1 1, a3 2 -> 2 + 2
    assert len(pd.read_parquet(paths["train_rs"])) == 10


# ----------------------------------------------------------------------------------------------
# 2. The compute plan
# ----------------------------------------------------------------------------------------------


def test_compute_plan_from_the_authors_step_times():
    from eqpo.analysis.plan import plan_markdown, plan_rows

    config = {
        "experiment": "x",
        "base_models": ["qwen2.5-vl-7b", "qoq-med3-vl-8b", "demo-mlp", "other"],
        "methods": ["eqpo"],
        "seeds": [0, 1],
        "models": {
            "qwen2.5-vl-7b": {"backend": "verl", "params_billion": 10.0},
            "qoq-med3-vl-8b": {"backend": "verl"},
            "demo-mlp": {"backend": "cpu"},
            "other": {"backend": "verl"},
        },
        "train": {"steps": 90, "batch_prompts": 512, "rollouts": 10, "gpus": 4, "max_ckpt_to_keep": 1},
    }
    rows = plan_rows(config).set_index("model")
    # qwen: 886 s x (512 x 10) / (512 x 5) = 1772 s a step; 90 steps x 1772 s x 4 GPUs / 3600 = 177.2 GPU-h
    assert rows.loc["qwen2.5-vl-7b", "step_seconds"] == pytest.approx(1772.0)
    assert rows.loc["qwen2.5-vl-7b", "gpu_hours_per_run"] == pytest.approx(177.2)
    assert rows.loc["qwen2.5-vl-7b", "gpu_hours"] == pytest.approx(354.4)  # two seeds
    # peak disk: 10e9 parameters x (2 checkpoints x 12 + 2 merged) bytes = 260 GB
    assert rows.loc["qwen2.5-vl-7b", "peak_disk_gb_per_run"] == pytest.approx(260.0)
    assert "stand-in" in rows.loc["qoq-med3-vl-8b", "basis"]
    assert rows.loc["demo-mlp", "gpu_hours"] == 0.0 and np.isnan(rows.loc["other", "gpu_hours"])
    text = plan_markdown(config)
    assert "Total: 708.8 GPU-hours over 8 training runs (1 (model, method) pairs without an estimate)." in text


# ----------------------------------------------------------------------------------------------
# 7. The QoQ-Med3 runs: their scripts' reward and cluster count
# ----------------------------------------------------------------------------------------------

HEMORRHAGE = ["No Hemorrhage", "Has Hemorrhage"]


def test_qoq_med3_reward_by_hand():
    from eqpo.core.rewards import jaccard_tokens, score_response

    def score(response, truth="Has Hemorrhage"):
        return score_response(response, truth, HEMORRHAGE, function="qoq_med3", matching="strict").score

    # right: 0.5 F1 1 + 0.1 format 0 + 0.2 Jaccard 1 = 0.7
    assert score("<think>x</think> \\boxed{Has Hemorrhage}") == pytest.approx(0.7)
    # wrong: F1 0; tokens {no, hemorrhage} vs {has, hemorrhage}: Jaccard 1/3 -> 0.2 / 3
    assert score("<think>x</think> \\boxed{No Hemorrhage}") == pytest.approx(0.2 / 3)
    # a fenced JSON list with one valid box: format 0.2 + 0.1 + 0.2 + 0.1 + 0.4 = 1.0 -> + 0.1
    fenced = '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "x"}]\n```\n<think>x</think> \\boxed{Has Hemorrhage}'
    assert score(fenced) == pytest.approx(0.8)
    assert score("no box at all") == 0.0
    assert jaccard_tokens("<think>has</think> HAS  hemorrhage", "Has Hemorrhage") == 1.0  # think removed, case folded
    assert jaccard_tokens("", "") == 1.0 and jaccard_tokens(None, "a") == 0.0


def test_qoq_med3_runs_carry_their_reward_and_k_max():
    from eqpo.analysis.paper_tables import table3
    from eqpo.runs.settings import estimator_options, run_reward

    config = load_config()
    assert run_reward(config, "qoq-med3-vl-8b", "eqpo") == run_reward(config, "qoq-med3-vl-8b", "eqpo_nd") == "qoq_med3"
    assert (
        run_reward(config, "qoq-med3-vl-8b", "grpo")
        == run_reward(config, "medgemma-4b", "eqpo")
        == ("authors_composite")
    )
    assert estimator_options(config, "qoq-med3-vl-8b", "eqpo")["k_max"] == 20
    assert estimator_options(config, "qoq-med3-vl-8b", "eqpo_nd")["k_max"] == 3
    assert "reward=qoq_med3" in table3(config).loc["run: eqpo", "qoq-med3-vl-8b"]
    with pytest.raises(ValueError, match=r"runs\.m\.eqpo\.reward must be one of"):
        run_reward({"runs": {"m": {"eqpo": {"reward": "medical"}}}}, "m", "eqpo")


def test_the_verl_command_of_a_qoq_med3_run_names_its_reward_and_k_max(tmp_path):
    from eqpo.backends.verl.launch import RunPaths, build_overrides

    config = load_config()
    paths = RunPaths.for_run(tmp_path / "run")
    qoq = build_overrides(RunSettings.from_config(config, "qoq-med3-vl-8b", "eqpo"), 0, paths, tmp_path)
    gemma = build_overrides(RunSettings.from_config(config, "medgemma-4b", "eqpo"), 0, paths, tmp_path)
    assert "+reward.custom_reward_function.reward_kwargs.function=qoq_med3" in qoq
    assert "+algorithm.eqpo.k_max=20" in qoq
    assert "+reward.custom_reward_function.reward_kwargs.function=authors_composite" in gemma
    assert "+algorithm.eqpo.k_max=3" in gemma
