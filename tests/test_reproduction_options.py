"""The reproduction options where the paper text and the authors' code differ: the metric class set,
per-(model, method) training settings, the group definition, the two EQPO-ND variants, the reward
and the answer extraction at evaluation. Expectations are worked out by hand in the comments."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eqpo.analysis.paper_tables import table3
from eqpo.analysis.report_point import ReportPoint
from eqpo.analysis.uncertainty import bootstrap_summary, replicate_summaries
from eqpo.backends.cpu.trainer import unparsed_item_shares
from eqpo.core.advantages import make_estimator
from eqpo.core.groups import explicit_group, group_attributes, regroup
from eqpo.core.metrics import FairnessReport, fairness_summary
from eqpo.core.rewards import LabelParser, bbox_format_score, extract_answer, extract_first_box, score_response
from eqpo.core.vocabularies import CHEXPERT_LABELS, SKIN_LABELS, DatasetSpec
from eqpo.runs import settings as run_settings
from eqpo.runs.settings import ReproductionOptions, RunSettings, reproduction_options, run_source, train_settings
from eqpo.workflow.pipeline import render_table2, score_predictions

REPO = Path(__file__).resolve().parents[1]
SCHEMA = REPO / "workflow" / "schemas" / "config.schema.yaml"


def load_config(*overlays: str) -> dict:
    """config.yaml with overlays merged as Snakemake merges --configfile (dicts merge, rest replaces)."""
    return run_settings.load_config([REPO / o for o in overlays], REPO)


def validate(config: dict) -> dict:
    from snakemake.utils import validate as snakemake_validate

    config = copy.deepcopy(config)
    snakemake_validate(config, str(SCHEMA))
    return config


# ----------------------------------------------------------------------------------------------
# 1. Per-group class set in the metrics
# ----------------------------------------------------------------------------------------------


def two_group_predictions() -> pd.DataFrame:
    """One dataset, classes x and y, sex only (age missing).

    F: (x -> x), (x -> y).  M: (y -> y), (y -> y).
    Per class and group (TP, FP, FN, TN):
      F, x: (1, 0, 1, 0) -> TPR 1/2, F1 2/3, Acc 1/2, FPR 0, FDR 0
      F, y: (0, 1, 0, 1) -> TPR 0,   F1 0,   Acc 1/2, FPR 1/2, FDR 1
      M, x: (0, 0, 0, 2) -> TPR 0,   F1 0,   Acc 1,   FPR 0, FDR 0
      M, y: (2, 0, 0, 0) -> TPR 1,   F1 1,   Acc 1,   FPR 0, FDR 0
    class_set="dataset": F = mean over x, y; M likewise.
    class_set="group_present": F has only x in its ground truth, M only y.
    """
    return pd.DataFrame(
        {
            "sample_id": ["a", "b", "c", "d"],
            "dataset": ["D"] * 4,
            "labels": [["x"], ["x"], ["y"], ["y"]],
            "prediction": [["x"], ["y"], ["y"], ["y"]],
            "age": [np.nan] * 4,
            "sex": ["F", "F", "M", "M"],
        }
    )


def test_dataset_class_set_averages_every_class_of_the_dataset():
    report = FairnessReport.from_predictions(two_group_predictions(), class_set="dataset")
    groups = report.by_group.set_index("group")
    assert groups.loc["F", "TPR"] == pytest.approx(0.25) and groups.loc["F", "F1"] == pytest.approx(1 / 3)
    assert groups.loc["M", "TPR"] == pytest.approx(0.5) and groups.loc["M", "F1"] == pytest.approx(0.5)
    assert groups.loc["F", "FPR"] == pytest.approx(0.25) and groups.loc["F", "FDR"] == pytest.approx(0.5)
    assert report.overall["F1"] == pytest.approx((1 / 3 + 0.5) / 2)
    assert report.overall["delta_F1"] == pytest.approx(0.5 - 1 / 3)
    assert report.overall["EOD"] == pytest.approx(0.25)


def test_group_present_class_set_averages_only_the_groups_own_classes():
    report = FairnessReport.from_predictions(two_group_predictions(), class_set="group_present")
    groups = report.by_group.set_index("group")
    assert groups.loc["F", "TPR"] == pytest.approx(0.5) and groups.loc["F", "F1"] == pytest.approx(2 / 3)
    assert groups.loc["M", "TPR"] == pytest.approx(1.0) and groups.loc["M", "F1"] == pytest.approx(1.0)
    assert groups.loc["F", "FPR"] == 0.0 and groups.loc["F", "FDR"] == 0.0  # class y left out of F
    assert groups.loc["F", "Acc"] == pytest.approx(0.5) and groups.loc["M", "Acc"] == pytest.approx(1.0)
    summary = fairness_summary(two_group_predictions(), class_set="group_present")
    assert summary["F1"] == pytest.approx((2 / 3 + 1) / 2)
    assert summary["delta_F1"] == pytest.approx(1 / 3)
    assert summary["sigma_F1"] == pytest.approx((1 / 3) / math.sqrt(2))  # two groups: |a - b| / sqrt(2)
    assert summary["EOD"] == pytest.approx(0.5)
    assert report.class_set == "group_present"
    with pytest.raises(ValueError, match="class_set"):
        fairness_summary(two_group_predictions(), class_set="present")


@pytest.mark.parametrize("class_set", ["dataset", "group_present"])
def test_bootstrap_uses_the_same_class_set_as_the_metric(class_set):
    preds = two_group_predictions()
    ones = np.ones((1, len(preds)), dtype=np.int32)
    assert replicate_summaries(preds, ones, class_set).iloc[0]["F1"] == pytest.approx(
        fairness_summary(preds, class_set)["F1"]
    )
    counts = np.array([[2, 1, 0, 1]])  # row a twice, b once, d once: F (x->x, x->x, x->y), M (y->y)
    explicit = preds.iloc[np.repeat(np.arange(4), counts[0])].reset_index(drop=True)
    got = replicate_summaries(preds, counts, class_set).iloc[0]
    want = fairness_summary(explicit, class_set)
    for column in ("F1", "EOD", "PP", "delta_F1"):
        assert got[column] == pytest.approx(want[column])
    ci = bootstrap_summary(preds, n_boot=50, class_set=class_set)
    assert ci.loc["F1", "estimate"] == pytest.approx(fairness_summary(preds, class_set)["F1"])
    assert ci.attrs["class_set"] == class_set


def test_score_predictions_follows_the_configured_class_set(tmp_path):
    preds = two_group_predictions()
    preds.to_parquet(tmp_path / "p.parquet", index=False)
    default = score_predictions(tmp_path / "p.parquet", tmp_path / "m.json")
    assert default["summary"]["F1"] == pytest.approx(5 / 6)  # group_present: (2/3 + 1) / 2
    assert default["options"]["metrics.class_set"] == "group_present"
    paper = score_predictions(
        tmp_path / "p.parquet", tmp_path / "m2.json", options=ReproductionOptions(class_set="dataset")
    )
    assert paper["summary"]["F1"] == pytest.approx(5 / 12)  # (1/3 + 1/2) / 2
    assert json.loads((tmp_path / "m2.json").read_text())["options"]["metrics.class_set"] == "dataset"


# ----------------------------------------------------------------------------------------------
# 2. Per-(model, method) training settings
# ----------------------------------------------------------------------------------------------


def test_train_settings_apply_all_then_method_overrides():
    config = {
        "train": {"lr": 5e-7, "rollouts": 10, "clip": 0.2},
        "runs": {"m": {"all": {"lr": 1e-6}, "grpo": {"rollouts": 5}, "eqpo": {"lr": 2e-6}}},
    }
    assert train_settings(config, "m", "grpo") == {"lr": 1e-6, "rollouts": 5, "clip": 0.2}
    assert train_settings(config, "m", "eqpo") == {"lr": 2e-6, "rollouts": 10, "clip": 0.2}  # method wins
    assert train_settings(config, "m", "rloo") == {"lr": 1e-6, "rollouts": 10, "clip": 0.2}
    assert train_settings(config, "other", "grpo") == config["train"]
    assert config["train"] == {"lr": 5e-7, "rollouts": 10, "clip": 0.2}  # not changed in place
    with pytest.raises(ValueError, match=r"runs\.m\.grpo: unknown `train` key\(s\) \['learning_rate'\]"):
        train_settings({"train": {}, "runs": {"m": {"grpo": {"learning_rate": 1}}}}, "m", "grpo")
    with pytest.raises(ValueError, match=r"runs\.m\.all: unknown `train` key\(s\) \['gpus'\]"):
        train_settings({"train": {}, "runs": {"m": {"all": {"gpus": 2}}}}, "m", "grpo")


def test_config_defaults_to_the_scripts_settings_and_the_overlay_to_table3():
    config = validate(load_config())
    assert train_settings(config, "medgemma-4b", "grpo")["lr"] == 1e-6
    assert train_settings(config, "medgemma-4b", "grpo")["rollouts"] == 5
    assert train_settings(config, "medgemma-4b", "grpo_rs")["rollouts"] == 5
    assert train_settings(config, "medgemma-4b", "eqpo")["lr"] == 5e-7  # Table 3
    assert train_settings(config, "medgemma-4b", "eqpo")["rollouts"] == 10
    assert train_settings(config, "medgemma-4b", "rloo")["kl_coef"] == 1e-4
    for method in ("eqpo", "grpo", "grpo_rs", "reinforce_pp"):  # the Qwen2.5-VL runs with a script
        assert train_settings(config, "qwen2.5-vl-7b", method)["lr"] == 1e-6
        assert train_settings(config, "qwen2.5-vl-7b", method)["rollouts"] == 5
    for method in ("rloo", "grpo_dro", "eqpo_nd", "eqpo_nodemo"):  # no script: paper Table 3
        assert train_settings(config, "qwen2.5-vl-7b", method)["lr"] == 5e-7
    # step budgets: the authors' logged GRPO (65) and FairGRPO (90) runs, 90 where it cannot be told
    assert train_settings(config, "qwen2.5-vl-7b", "grpo")["steps"] == 65
    assert train_settings(config, "qwen2.5-vl-7b", "eqpo")["steps"] == 90
    assert train_settings(config, "medgemma-4b", "grpo")["steps"] == 90
    table3_config = validate(load_config("config/paper_table3.yaml"))
    for model in ("medgemma-4b", "qwen2.5-vl-7b", "qoq-med3-vl-8b"):
        for method in table3_config["methods"]:
            settings = train_settings(table3_config, model, method)
            assert (settings["lr"], settings["rollouts"], settings["kl_coef"], settings["batch_prompts"]) == (
                5e-7,
                10,
                0.0,
                512,
            ), (model, method)
            assert run_source(table3_config, model, method).startswith("paper Table 3"), (model, method)


def test_schema_rejects_unknown_methods_and_keys_in_runs():
    from snakemake.exceptions import WorkflowError

    base = load_config()
    with pytest.raises(WorkflowError, match="'gpro' is not valid"):
        validate({**base, "runs": {"medgemma-4b": {"gpro": {"lr": 1e-6}}}})
    with pytest.raises(WorkflowError, match="'learning_rate' was unexpected"):
        validate({**base, "runs": {"medgemma-4b": {"grpo": {"learning_rate": 1e-6}}}})
    with pytest.raises(WorkflowError, match="'gpus' was unexpected"):  # GPU placement stays in `train`
        validate({**base, "runs": {"medgemma-4b": {"grpo": {"gpus": 2}}}})
    with pytest.raises(WorkflowError, match="'accuracy' is not one of"):
        validate({**base, "reward": {"function": "accuracy"}})
    # defaults of the `train` block are not copied into the run blocks (they would override `train`)
    config = validate(
        {**base, "train": {**base["train"], "nnodes": 2}, "runs": {"medgemma-4b": {"grpo": {"lr": 1e-6}}}}
    )
    assert config["runs"]["medgemma-4b"]["grpo"] == {"lr": 1e-6}
    assert train_settings(config, "medgemma-4b", "grpo")["nnodes"] == 2


def test_verl_launcher_renders_the_runs_settings(tmp_path):
    pytest.importorskip("verl")
    from eqpo.backends.verl.launch import RunPaths, build_overrides

    config = load_config()
    paths = RunPaths.for_run(tmp_path / "run")
    grpo = build_overrides(RunSettings.from_config(config, "medgemma-4b", "grpo"), 0, paths, tmp_path)
    eqpo = build_overrides(RunSettings.from_config(config, "medgemma-4b", "eqpo"), 0, paths, tmp_path)
    assert "actor_rollout_ref.actor.optim.lr=1e-06" in grpo and "actor_rollout_ref.rollout.n=5" in grpo
    assert "actor_rollout_ref.actor.optim.lr=5e-07" in eqpo and "actor_rollout_ref.rollout.n=10" in eqpo


def test_table3_lists_each_runs_settings_and_the_options():
    config = load_config()
    t3 = table3(config)
    assert t3.loc["run: grpo", "medgemma-4b"] == "lr=1e-06, rollouts=5"
    assert t3.loc["run: eqpo", "medgemma-4b"] == "as above"
    assert t3.loc["run: eqpo", "qwen2.5-vl-7b"] == "lr=1e-06, rollouts=5, steps=90"
    assert t3.loc["run: grpo", "qwen2.5-vl-7b"] == "lr=1e-06, rollouts=5, steps=65"
    assert t3.loc["run: rloo", "medgemma-4b"] == "kl_coef=0.0001"
    # the source of every run's values: a script and its lines, or paper Table 3
    assert t3.loc["source: grpo", "medgemma-4b"].startswith("climb_medgemma_training_grpo.sh l.18")
    assert t3.loc["source: grpo_dro", "medgemma-4b"].startswith("paper Table 3")
    assert t3.loc["source: rloo", "qwen2.5-vl-7b"].startswith("paper Table 3")
    assert "k_max=20" in t3.loc["estimator: eqpo", "qoq-med3-vl-8b"]
    assert "k_max=3" in t3.loc["estimator: eqpo", "medgemma-4b"]
    assert t3.loc["metrics.class_set", "medgemma-4b"] == "group_present"
    assert t3.loc["groups.definition", "qwen2.5-vl-7b"] == "authors_code"
    assert t3.loc["reward.function", "medgemma-4b"] == "authors_composite"
    paper = table3({**config, "reward": {"function": "exact", "matching": "lenient"}})
    assert paper.loc["reward.function", "medgemma-4b"] == "exact"
    assert paper.loc["reward.matching", "medgemma-4b"] == "lenient"


def test_table2_names_the_options_it_was_computed_with(tmp_path):
    preds = two_group_predictions()
    preds.to_parquet(tmp_path / "p.parquet", index=False)
    run = tmp_path / "demo-linear" / "grpo" / "seed0"
    run.mkdir(parents=True)
    score_predictions(tmp_path / "p.parquet", run / "metrics.json", model="demo-linear", method="grpo", seed=0)
    render_table2(
        [str(run / "metrics.json")],
        tmp_path / "table2",
        options=ReproductionOptions(class_set="dataset"),
        point=ReportPoint(point="final_test"),
    )
    md = (tmp_path / "table2.md").read_text()
    assert "metrics.class_set = dataset" in md and "reward.function = authors_composite" in md
    assert "% Options: metrics.class_set = dataset" in (tmp_path / "table2.tex").read_text()
    assert "Point: the final checkpoint" in md


# ----------------------------------------------------------------------------------------------
# 3. Who is unlabeled: the group definition
# ----------------------------------------------------------------------------------------------


def test_authors_code_groups_keep_partial_demographics():
    both = ("sex", "age")
    assert explicit_group(60, None, both, "authors_code") == "unk|a3"
    assert explicit_group(None, "male", both, "authors_code") == "M|unk"
    # both parts unknown: an explicit group, as the authors' loader's "N,UNK"; an age-only dataset
    # without an age: the loader's "UNK", clustered
    assert explicit_group(None, None, both, "authors_code") == "unk|unk"
    assert explicit_group(None, None, ("age",), "authors_code") is None
    assert explicit_group(60, "F", both, "authors_code") == "F|a3"
    assert explicit_group(60, None, both, "paper") is None  # any missing part: unlabeled
    assert group_attributes("Hemorrhage", both, "authors_code") == ("age",)
    assert group_attributes("PAD-UFES-20", both, "authors_code") == ("age",)
    assert group_attributes("HAM10000", both, "authors_code") == both
    assert group_attributes("Hemorrhage", both, "paper") == both
    with pytest.raises(ValueError, match="groups.definition"):
        explicit_group(60, "F", both, "authors")


def test_regroup_rebuilds_the_group_column_by_definition():
    table = pd.DataFrame(
        {
            "dataset": ["Hemorrhage", "HAM10000", "HAM10000", "HAM10000"],
            "age": [30.0, 80.0, np.nan, np.nan],
            "sex": ["F", None, "M", None],
            "group": ["F|a2", None, None, None],
        }
    )
    authors = regroup(table, "authors_code")
    assert authors["group"].tolist() == ["a2", "unk|a4", "M|unk", "unk|unk"]
    paper = regroup(table, "paper")
    assert paper["group"].tolist() == ["F|a2", None, None, None]
    assert table["group"].iloc[0] == "F|a2" and table["group"].iloc[1:].isna().all()  # input unchanged


# ----------------------------------------------------------------------------------------------
# 4. The two EQPO-ND variants
# ----------------------------------------------------------------------------------------------


def nd_batch():
    rng = np.random.default_rng(3)
    n = 4
    prompts = np.repeat(np.arange(12), n)
    rewards = (rng.random(len(prompts)) < np.repeat(rng.random(12), n)).astype(float)
    datasets = np.where(prompts < 6, "A", "B")
    groups = np.where(prompts % 2 == 0, "F|a3", "M|a2").astype(object)
    return rewards, prompts, datasets, groups


def test_eqpo_nodemo_is_eqpo_with_every_prompt_unlabeled():
    rewards, prompts, datasets, groups = nd_batch()
    nodemo = make_estimator("eqpo_nodemo", scope="batch")(rewards, prompts, datasets, groups)
    unlabeled = make_estimator("eqpo", scope="batch")(rewards, prompts, datasets, [None] * len(prompts))
    labeled = make_estimator("eqpo", scope="batch")(rewards, prompts, datasets, groups)
    nd = make_estimator("eqpo_nd", scope="batch")(rewards, prompts, datasets, groups)
    np.testing.assert_allclose(nodemo, unlabeled, rtol=1e-12)
    assert not np.allclose(nodemo, labeled)  # the demographics are really hidden
    assert not np.allclose(nodemo, nd)  # flat domain mean, no clamps: not the qoq_med3 estimator


def test_both_eqpo_nd_variants_run_in_the_demo_and_the_paper_row_is_compared_with_eqpo_nodemo():
    """A run with both variants: the paper's EQPO-ND rows get eqpo_nodemo's numbers, never eqpo_nd's."""
    from eqpo.analysis.paper import paper_vs_reproduction_table2
    from eqpo.core.metrics import TABLE2_COLUMNS

    demo = validate(load_config("config/demo.yaml"))
    assert {"eqpo_nd", "eqpo_nodemo"} <= set(demo["methods"])
    ours = pd.DataFrame(
        [
            {"model": "medgemma-4b", "method": method, **{c: value for c in TABLE2_COLUMNS}}
            for method, value in (("eqpo_nd", 0.11), ("eqpo_nodemo", 0.22), ("eqpo", 0.33))
        ]
    )
    comparison = paper_vs_reproduction_table2(ours.set_index(["model", "method"]))
    nd_rows = comparison[
        comparison["paper_method"].isin(["EQPO-ND", "FairGRPO_ND", "FairGRPO-ND"])
        & (comparison["model"] == "medgemma-4b")
    ]
    assert len(nd_rows) == len(TABLE2_COLUMNS)
    assert (nd_rows["method"] == "eqpo_nodemo").all() and (nd_rows["ours"] == 0.22).all()


# ----------------------------------------------------------------------------------------------
# 5. Reward
# ----------------------------------------------------------------------------------------------


def test_strict_matching_counts_unknown_items_as_false_positives():
    strict = score_response("\\boxed{Cardiomegaly, Foo}", ["Cardiomegaly"], CHEXPERT_LABELS, matching="strict")
    assert strict.f1 == pytest.approx(2 / 3)  # P = 1/2, R = 1
    assert strict.unknown == ("Foo",) and strict.prediction == ["Cardiomegaly"]
    lenient = score_response("\\boxed{Cardiomegaly, Foo}", ["Cardiomegaly"], CHEXPERT_LABELS, matching="lenient")
    assert lenient.f1 == 1.0 and lenient.unknown == ("foo",)
    assert score_response("\\boxed{cardiomegaly.}", ["Cardiomegaly"], CHEXPERT_LABELS, matching="strict").f1 == 0.0
    assert score_response("\\boxed{cardiomegaly.}", ["Cardiomegaly"], CHEXPERT_LABELS).f1 == 1.0
    # The authors' parser splits on the first separator found only: ", " here, so "Edema and
    # Pneumonia" stays one (unknown) item: P = 1/2, R = 1/3, F1 = 2 * (1/6) / (5/6) = 0.4.
    parsed = LabelParser(CHEXPERT_LABELS, "strict").parse_items("Cardiomegaly, Edema and Pneumonia")
    assert parsed.labels == ["Cardiomegaly"] and parsed.unknown == ["Edema and Pneumonia"]
    three = ["Cardiomegaly", "Edema", "Pneumonia"]
    assert score_response(
        "\\boxed{Cardiomegaly, Edema and Pneumonia}", three, CHEXPERT_LABELS, matching="strict"
    ).f1 == pytest.approx(0.4)


def test_exact_reward_needs_the_whole_label_set():
    both = ["Cardiomegaly", "Edema"]
    assert score_response("\\boxed{Edema, Cardiomegaly}", both, CHEXPERT_LABELS, function="exact").score == 1.0
    assert score_response("\\boxed{Cardiomegaly}", both, CHEXPERT_LABELS, function="exact").score == 0.0
    assert score_response("\\boxed{Cardiomegaly}", both, CHEXPERT_LABELS).score == pytest.approx(2 / 3)
    extra = "\\boxed{Edema, Cardiomegaly, Foo}"
    assert score_response(extra, both, CHEXPERT_LABELS, function="exact", matching="strict").score == 0.0
    assert score_response(extra, both, CHEXPERT_LABELS, function="exact", matching="lenient").score == 1.0


def test_authors_composite_reward_by_hand():
    plain = "<think>looks benign</think> \\boxed{Nevus}"
    assert bbox_format_score(plain) == 0.0
    assert score_response(plain, "Nevus", SKIN_LABELS, function="authors_composite").score == pytest.approx(0.5)
    assert score_response(plain, "Melanoma", SKIN_LABELS, function="authors_composite").score == 0.0
    boxes = '```json\n[{"bbox_2d": [1, 2, 3, 4], "label": "lesion"}, {"label": "x"}]\n```\n\\boxed{Nevus}'
    # fence 0.2 + json marker 0.1 + valid JSON 0.2 + a list 0.1 + 0.4 x 1/2 valid items = 0.8
    assert bbox_format_score(boxes) == pytest.approx(0.8)
    assert score_response(boxes, "Nevus", SKIN_LABELS, function="authors_composite").score == pytest.approx(0.58)
    # single quotes parse only via the literal fallback: 0.2 + 0.1 + 0.1 (fallback) + 0.1 + 0.4
    quoted = "```json\n[{'bbox_2d': [1, 2, 3, 4], 'label': 'a'}]\n```"
    assert bbox_format_score(quoted) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="authors_composite has its own format term"):
        score_response(plain, "Nevus", SKIN_LABELS, 0.1, function="authors_composite")
    with pytest.raises(ValueError, match="reward function must be one of"):
        score_response(plain, "Nevus", SKIN_LABELS, function="accuracy")


def test_verl_reward_defaults_to_the_configured_reward_and_takes_kwargs():
    pytest.importorskip("verl")
    from eqpo.backends.verl.estimators import verl_overrides
    from eqpo.backends.verl.reward import compute_score

    text = "<think>r</think> \\boxed{Cardiomegaly, Foo}"
    default = compute_score("CheXpert", text, "Cardiomegaly", {"dataset": "CheXpert"})
    assert default["score"] == pytest.approx(0.5 * 2 / 3)  # authors_composite, strict
    assert default["unparsed_items"] == 1.0 and default["items"] == 2.0
    f1 = compute_score("CheXpert", text, "Cardiomegaly", {"dataset": "CheXpert"}, function="f1", matching="lenient")
    assert f1["score"] == 1.0
    rendered = verl_overrides("eqpo", reward=ReproductionOptions().reward_kwargs())
    assert "+reward.custom_reward_function.reward_kwargs.function=authors_composite" in rendered
    assert "+reward.custom_reward_function.reward_kwargs.matching=strict" in rendered
    with pytest.raises(ValueError, match="reward.matching must be one of"):
        verl_overrides("eqpo", reward={"matching": "loose"})


def test_unparsed_item_shares_per_dataset():
    shares = unparsed_item_shares(
        np.array(["A", "A", "B"], dtype=object), np.array([1.0, 0.0, 0.0]), np.array([2.0, 1.0, 0.0])
    )
    assert shares == {"A": pytest.approx(1 / 3), "B": 0.0}


# ----------------------------------------------------------------------------------------------
# 6. Answer extraction at evaluation
# ----------------------------------------------------------------------------------------------


def test_first_box_extraction_as_the_authors_evaluator():
    two = "I think \\boxed{Nevus} but finally \\boxed{Melanoma}"
    assert extract_answer(two, "first_box") == "Nevus"
    assert extract_answer(two, "last_box") == "Melanoma"
    assert extract_first_box("answer: [Nevus]") == "Nevus"  # no box: the first [...]
    assert extract_answer("answer: [Nevus]", "last_box") is None
    assert extract_first_box("Nevus") == "Nevus"  # neither: the whole text
    assert extract_first_box("\\boxed{\\text{Nevus}} \\boxed{Other}") == "\\text{Nevus"  # first non-nested box
    assert score_response(two, "Nevus", SKIN_LABELS, extraction="first_box").f1 == 1.0
    assert score_response(two, "Nevus", SKIN_LABELS).f1 == 0.0
    with pytest.raises(ValueError, match="extraction must be one of"):
        extract_answer(two, "middle_box")


# ----------------------------------------------------------------------------------------------
# The options themselves
# ----------------------------------------------------------------------------------------------


def test_options_defaults_and_errors_name_the_key():
    options = reproduction_options(load_config())
    assert options == ReproductionOptions("group_present", "first_box", "authors_code", "authors_composite", "strict")
    assert reproduction_options({}) == options  # config.yaml's values are the library's reproduction defaults
    for block, key, bad in (
        ("metrics", "class_set", "all"),
        ("metrics", "extraction", "box"),
        ("groups", "definition", "table1"),
        ("reward", "function", "acc"),
        ("reward", "matching", "fuzzy"),
    ):
        with pytest.raises(ValueError, match=rf"{block}\.{key} must be one of"):
            reproduction_options({block: {key: bad}})


def test_custom_spec_groups_follow_the_definition_too():
    spec = DatasetSpec("Mine", ("a", "b"), False, ("sex", "age"))
    table = pd.DataFrame({"dataset": ["Mine"], "age": [np.nan], "sex": ["F"], "group": [None]})
    assert regroup(table, "authors_code", {"Mine": spec})["group"].tolist() == ["F|unk"]
    assert regroup(table, "paper", {"Mine": spec})["group"].tolist() == [None]
