"""Bootstrap uncertainty (eqpo.analysis.uncertainty), the paper-vs-reproduction tables and claims
(eqpo.analysis.paper), paper Tables 3/4/5-17 (eqpo.analysis.paper_tables) and the runtime / Pareto
numbers (eqpo.analysis.runtime).

Predictions are synthetic (three datasets: two attributes, age only, no usable attribute; rare
classes and groups so that resamples lose some of them); run directories are written with the
pipeline's own scorer (metrics.json) to test the per-group tables against what runs store.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eqpo.analysis.collect import read_group_tables, read_metrics
from eqpo.analysis.paper import (
    PAPER_METHOD_NAMES,
    load_claims,
    load_paper_table2,
    load_paper_table4,
    paper_model_map,
    paper_readme,
    paper_vs_reproduction_table2,
    paper_vs_reproduction_table4,
    recompute_claims,
    to_paper_scale,
    write_comparison,
)
from eqpo.analysis.paper_tables import (
    SPREAD_COLUMNS,
    per_group_tables,
    table3,
    table4,
    write_per_group_tables,
    write_table3,
    write_table4,
)
from eqpo.analysis.runtime import pareto_mask, pareto_points, runtime_split
from eqpo.analysis.tables import table2
from eqpo.analysis.uncertainty import (
    _p_value,
    bootstrap_counts,
    bootstrap_summary,
    paired_bootstrap,
    replicate_summaries,
    seed_summary,
)
from eqpo.core.metrics import METRICS, TABLE2_COLUMNS, FairnessReport, fairness_summary

ALL_METHODS = ("grpo", "rloo", "reinforce_pp", "grpo_rs", "grpo_dro", "eqpo_nodemo", "eqpo")


# ----------------------------------------------------------------------------------------------
# Synthetic predictions
# ----------------------------------------------------------------------------------------------


def make_predictions(n: int = 60, seed: int = 0, error: float = 0.3) -> pd.DataFrame:
    """Three datasets of ``n`` rows each (sample_ids stable across calls with the same n):

    - "Derm": multi-class x/y/z with a rare class "r" (2 rows), age and sex, a rare age bin a1
      (2 rows), some missing ages and unknown sexes;
    - "Mammo": multi-label p/q, age only (sex missing everywhere);
    - "Echo": classes u/v, no demographics (the one-group "all" fallback), 2 rows without labels.
    ``error`` is the chance that a prediction is replaced by a wrong or empty one.
    """
    rng = np.random.default_rng(seed)
    truth_rng = np.random.default_rng(12345)  # the truth does not depend on ``seed``
    rows = []
    for i in range(n):
        label = ["r"] if i < 2 else [str(truth_rng.choice(["x", "y", "z"]))]
        age = 20.0 if i < 2 else float(truth_rng.choice([35, 60, 80, np.nan], p=[0.4, 0.4, 0.15, 0.05]))
        sex = str(truth_rng.choice(["F", "M", "unknown"], p=[0.45, 0.45, 0.1]))
        rows.append(("Derm", f"derm-{i:03d}", label, age, sex))
    for i in range(n):
        drawn = truth_rng.choice(["p", "q"], size=truth_rng.integers(1, 3))
        label = sorted({str(c) for c in drawn})
        rows.append(("Mammo", f"mammo-{i:03d}", label, float(truth_rng.uniform(30, 90)), None))
    for i in range(n):
        label = [] if i < 2 else [str(truth_rng.choice(["u", "v"]))]
        rows.append(("Echo", f"echo-{i:03d}", label, np.nan, None))
    frame = pd.DataFrame(rows, columns=["dataset", "sample_id", "labels", "age", "sex"])
    vocab = {"Derm": ["x", "y", "z", "r"], "Mammo": ["p", "q"], "Echo": ["u", "v"]}
    predictions = []
    for dataset, labels in zip(frame["dataset"], frame["labels"], strict=False):
        u = rng.uniform()
        if u < error / 3:
            predictions.append([])
        elif u < error:
            predictions.append([str(rng.choice(vocab[dataset]))])
        else:
            predictions.append(list(labels))
    frame["prediction"] = predictions
    return frame


def assert_same(a: float, b: float) -> None:
    assert (math.isnan(a) and math.isnan(b)) or a == b, (a, b)


# ----------------------------------------------------------------------------------------------
# Bootstrap
# ----------------------------------------------------------------------------------------------


def test_bootstrap_replicates_equal_direct_recomputation():
    preds = make_predictions(60, seed=1)
    counts = bootstrap_counts(preds, n_boot=60, seed=7)
    replicates = replicate_summaries(preds, counts)
    assert replicates.shape == (60, 11) and list(replicates.columns) == list(TABLE2_COLUMNS)
    # the draws must exercise the awkward cases: rare class and rare age bin left out
    assert (counts[:, :2].sum(axis=1) == 0).any()
    for r in range(len(counts)):
        frame = preds.iloc[np.repeat(np.arange(len(preds)), counts[r])]
        direct = fairness_summary(frame)
        for column in TABLE2_COLUMNS:
            assert_same(replicates.loc[r, column], direct[column])


def test_bootstrap_counts_are_stratified_and_reproducible():
    preds = make_predictions(40).sample(frac=1.0, random_state=3)  # row order shuffled
    counts = bootstrap_counts(preds, n_boot=25, seed=4)
    assert counts.shape == (25, len(preds))
    for _dataset, rows in preds.reset_index(drop=True).groupby("dataset").groups.items():
        assert (counts[:, list(rows)].sum(axis=1) == len(rows)).all()
    np.testing.assert_array_equal(counts, bootstrap_counts(preds, n_boot=25, seed=4))
    assert not np.array_equal(counts, bootstrap_counts(preds, n_boot=25, seed=5))


def test_bootstrap_summary_is_the_percentile_interval_and_spread_of_the_replicates():
    """estimate = the metrics of the predictions; lo/hi = the 2.5th/97.5th percentiles and se the
    standard deviation of the replicates (each one the metrics of a resampled frame, checked against
    a direct recomputation above). The interval need not contain the estimate: resampling inflates a
    max - min gap."""
    preds = make_predictions(120, seed=2)
    summary = bootstrap_summary(preds, n_boot=200, seed=0)
    assert list(summary.index) == list(TABLE2_COLUMNS)
    assert list(summary.columns) == ["estimate", "lo", "hi", "se"]
    replicates = replicate_summaries(preds, bootstrap_counts(preds, n_boot=200, seed=0))
    expected = fairness_summary(preds)
    for column in TABLE2_COLUMNS:
        row, values = summary.loc[column], replicates[column].dropna().to_numpy()
        assert row["estimate"] == expected[column]
        assert (row["lo"], row["hi"]) == pytest.approx(tuple(np.percentile(values, [2.5, 97.5])))
        assert row["se"] == pytest.approx(np.std(values, ddof=1)) and row["se"] > 0
    assert summary.attrs["n_boot"] == 200


def test_bootstrap_summary_level_widens_interval():
    preds = make_predictions(100, seed=3)
    narrow = bootstrap_summary(preds, n_boot=300, seed=1, level=0.5)
    wide = bootstrap_summary(preds, n_boot=300, seed=1, level=0.99)
    assert ((wide["hi"] - wide["lo"]) >= (narrow["hi"] - narrow["lo"])).all()
    with pytest.raises(ValueError, match="level"):
        bootstrap_summary(preds, n_boot=10, level=1.5)


def test_paired_bootstrap_identical_predictions():
    preds = make_predictions(60, seed=4)
    shuffled = preds.sample(frac=1.0, random_state=1)
    result = paired_bootstrap(preds, shuffled, n_boot=200, seed=0)
    assert list(result.index) == list(TABLE2_COLUMNS)
    assert list(result.columns[:4]) == ["diff", "lo", "hi", "p_value"]
    assert (result["diff"] == 0).all()
    assert (result["lo"] == 0).all() and (result["hi"] == 0).all()
    assert (result["p_value"] == 1.0).all()


def test_paired_bootstrap_detects_a_clearly_better_method():
    good = make_predictions(150, seed=5, error=0.1)
    bad = make_predictions(150, seed=6, error=0.8)
    result = paired_bootstrap(good, bad, n_boot=500, seed=0)
    for column in ("Acc", "F1", "F1_ES"):
        assert result.loc[column, "diff"] > 0
        assert result.loc[column, "p_value"] < 0.05
        assert result.loc[column, "lo"] > 0
    assert result.loc["F1", "diff"] == pytest.approx(fairness_summary(good)["F1"] - fairness_summary(bad)["F1"], abs=0)
    assert (result["p_value"] >= 2 / 501).all()  # the +1 correction bounds p from below


def test_paired_bootstrap_uses_the_same_samples_for_both():
    a = make_predictions(50, seed=7)
    b = make_predictions(50, seed=8)
    b_shuffled = b.sample(frac=1.0, random_state=2)
    one = paired_bootstrap(a, b, n_boot=100, seed=3)
    two = paired_bootstrap(a, b_shuffled, n_boot=100, seed=3)
    pd.testing.assert_frame_equal(one, two)


def test_paired_bootstrap_rejects_mismatched_sample_ids():
    a = make_predictions(30)
    b = a.copy()
    b.loc[0, "sample_id"] = "someone-else"
    with pytest.raises(ValueError, match="same sample_ids"):
        paired_bootstrap(a, b, n_boot=10)
    with pytest.raises(ValueError, match="same sample_ids"):
        paired_bootstrap(a, a.iloc[1:], n_boot=10)
    dup = a.copy()
    dup.loc[1, "sample_id"] = dup.loc[0, "sample_id"]
    with pytest.raises(ValueError, match="duplicated sample_id"):
        paired_bootstrap(dup, a, n_boot=10)
    with pytest.raises(ValueError, match="sample_id"):
        paired_bootstrap(a.drop(columns="sample_id"), a, n_boot=10)


def test_p_value_formula():
    assert _p_value(0.5, np.array([1.0] * 99)) == pytest.approx(2 / 100)
    assert _p_value(0.5, np.array([1.0] * 97 + [0.0, -1.0])) == pytest.approx(2 * 3 / 100)
    assert _p_value(-0.5, np.array([-1.0] * 98 + [0.0])) == pytest.approx(2 * 2 / 100)
    assert _p_value(0.5, np.array([-1.0] * 99)) == 1.0  # capped
    assert _p_value(0.0, np.array([1.0, -1.0])) == 1.0
    assert math.isnan(_p_value(math.nan, np.array([1.0])))


def test_seed_summary_matches_pandas():
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.02), (2, 0.04)):
        for method in ("eqpo", "grpo"):
            row = {"model": "m", "method": method, "seed": seed}
            row.update({c: 0.1 + shift + (0.1 if method == "eqpo" else 0.0) for c in TABLE2_COLUMNS})
            rows.append(row)
    frame = pd.DataFrame(rows)
    frame.loc[0, "PP"] = math.nan  # eqpo seed 0: PP missing
    out = seed_summary(frame)
    assert list(out.columns) == ["mean", "std", "n", "se"]
    assert list(out.index.get_level_values("method").unique()) == ["grpo", "eqpo"]
    assert len(out) == 2 * 11
    f1 = frame[frame["method"] == "grpo"]["F1"]
    assert out.loc[("m", "grpo", "F1"), "mean"] == pytest.approx(f1.mean())
    assert out.loc[("m", "grpo", "F1"), "std"] == pytest.approx(f1.std(ddof=1))
    assert out.loc[("m", "grpo", "F1"), "n"] == 3
    assert out.loc[("m", "eqpo", "PP"), "n"] == 2
    assert out.loc[("m", "eqpo", "PP"), "se"] == pytest.approx(out.loc[("m", "eqpo", "PP"), "std"] / math.sqrt(2))


# ----------------------------------------------------------------------------------------------
# Paper data
# ----------------------------------------------------------------------------------------------


def test_paper_data_loads_and_converts_scales():
    raw = load_paper_table2()
    assert raw.loc[("medgemma-4b", "eqpo"), "Acc"] == pytest.approx(0.8183)
    assert raw.loc[("medgemma-4b", "eqpo"), "sigma_F1"] == pytest.approx(0.0383)  # printed raw
    assert raw.loc[("qwen2.5-vl-7b", "reinforce_pp"), "EOD"] == pytest.approx(0.07788)
    assert raw.loc[("medgemma-4b", "eqpo_nodemo"), "paper_method"] == "EQPO-ND"  # the paper-era run
    printed = load_paper_table2(scale="paper")
    assert printed.loc[("medgemma-4b", "eqpo"), "Acc"] == pytest.approx(81.83)
    assert len(raw) == 13 and set(raw.index.get_level_values("method")) == set(ALL_METHODS)
    t4 = load_paper_table4()
    assert len(t4) == 2 * 33
    female = t4[(t4["paper_group"] == "Female") & (t4["dataset"] == "CheXpert")]
    assert set(female["group"]) == {"F"} and set(female["attribute"]) == {"sex"}
    assert female.set_index("method").loc["eqpo", "F1"] == pytest.approx(0.398)
    claims = load_claims()
    assert len(claims) == 10
    assert claims.iloc[-1]["claim"].endswith("(percent, upper bound)")
    assert claims.iloc[-1]["value"] == pytest.approx(0.1)
    assert "FairGRPO" in paper_readme()
    assert PAPER_METHOD_NAMES["FairGRPO"] == "eqpo"
    assert PAPER_METHOD_NAMES["FairGRPO_ND"] == "eqpo_nodemo"


def test_paper_model_map_is_config_driven_and_never_guesses():
    config = {
        "models": {
            "qoq-med3-vl-8b": {"backend": "verl", "path": "ddvd233/QoQ-Med3-VL-8B"},
            "gemma-local": {"backend": "verl", "path": "/models/medgemma-4b-it"},
            "demo-linear": {"backend": "cpu", "arch": "linear"},
        }
    }
    mapping = paper_model_map(config)
    assert mapping["QoQ-Med3-8B"] == "qoq-med3-vl-8b"
    assert mapping["MedGemma-4B"] == "gemma-local"
    assert mapping["Qwen2.5-VL-7B"] == "qwen2.5-vl-7b"
    assert "demo-linear" not in mapping.values()
    assert paper_model_map(models=["Qwen2_5-VL-7B-Instruct"])["Qwen2.5-VL-7B"] == "Qwen2_5-VL-7B-Instruct"


def synthetic_table2(models=("medgemma-4b",), methods=ALL_METHODS) -> pd.DataFrame:
    """(model, method)-indexed Table 2 with hand-picked values (raw fractions)."""
    values = {  # method: (PP, EOD, delta_F1, F1)
        "grpo": (0.20, 0.060, 0.080, 0.30),
        "rloo": (0.25, 0.100, 0.120, 0.29),
        "reinforce_pp": (0.22, 0.090, 0.100, 0.28),
        "grpo_rs": (0.24, 0.070, 0.090, 0.27),
        "grpo_dro": (0.16, 0.075, 0.085, 0.31),
        "eqpo_nodemo": (0.26, 0.110, 0.110, 0.36),
        "eqpo": (0.12, 0.065, 0.070, 0.32),
    }
    rows = []
    for model in models:
        for method in methods:
            pp, eod, delta, f1 = values[method]
            row = {c: 0.05 for c in TABLE2_COLUMNS}
            row.update(model=model, method=method, PP=pp, EOD=eod, delta_F1=delta, F1=f1)
            rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "method"])


def test_claims_recomputed_by_hand():
    claims = recompute_claims(synthetic_table2()).set_index("claim")
    pp = claims.loc["relative reduction of PP vs best bias-mitigated RL baseline (percent)"]
    assert pp["ours"] == pytest.approx((0.16 - 0.12) / 0.16 * 100)  # best of RS 0.24, DRO 0.16
    assert pp["reference"] == "grpo_dro"
    gain = claims.loc["relative F1 gain of EQPO-ND (percent)"]
    assert gain["ours"] == pytest.approx((0.36 - 0.30) / 0.30 * 100)
    medgemma = claims[claims["base_model"] == "MedGemma-4B"]
    delta = medgemma.loc["relative delta_F1 decrease vs all baselines (percent)"]
    assert delta["ours"] == pytest.approx((0.080 - 0.070) / 0.080 * 100)  # GRPO lowest baseline
    assert delta["reference"] == "grpo"
    eod = medgemma.loc["relative EOD improvement vs best RL baseline (percent)"]
    assert eod["ours"] == pytest.approx((0.090 - 0.065) / 0.090 * 100)  # RLOO / REINFORCE++
    # base models we lack: reported, not dropped
    assert len(claims) == len(load_claims())
    qoq = claims[claims["base_model"] == "QoQ-Med3-8B"]
    assert len(qoq) == 2 and qoq["ours"].isna().all()
    assert qoq["note"].str.contains("not reproducible in this run").all()
    qwen = claims[claims["base_model"] == "Qwen2.5-VL-7B"]
    assert qwen["ours"].isna().all() and qwen["note"].str.contains("Qwen2.5-VL-7B").all()
    assert claims["formula"].notna().all()


def test_claim_formulas_reproduce_the_papers_own_table():
    claims = recompute_claims(load_paper_table2())
    table_rows = claims[claims["paper_recomputed"].notna()]
    assert len(table_rows) == 6
    close = (table_rows["paper_recomputed"] - table_rows["paper"]).abs() <= 0.05
    assert close.sum() == 5  # all but the MedGemma delta_F1 claim, which matches sigma_F1
    odd = table_rows[~close].iloc[0]
    assert odd["base_model"] == "MedGemma-4B" and "sigma_F1" in odd["note"]
    # "ours" with the paper's Table 2 as our results, worked by hand from that table:
    ours = table_rows.set_index(["base_model", "claim"])["ours"]
    qwen_eod = ("Qwen2.5-VL-7B", "relative EOD improvement vs best RL baseline (percent)")
    assert ours[qwen_eod] == pytest.approx((0.06577 - 0.05546) / 0.06577 * 100)  # best: RLOO 0.06577
    nd_gain = ("MedGemma-4B", "relative F1 gain of EQPO-ND (percent)")
    assert ours[nd_gain] == pytest.approx((0.3513 - 0.3123) / 0.3123 * 100)  # EQPO-ND vs GRPO F1


def test_runtime_and_training_claims():
    steps = pd.DataFrame(
        {
            "model": "medgemma-4b",
            "method": ["grpo"] * 2 + ["eqpo"] * 2,
            "seed": 0,
            "step": [1, 2, 1, 2],
            "time_step_s": [100.0, 100.0, 100.0, 100.0],
            "time_advantage_s": [0.01, 0.03, 0.05, 0.15],
        }
    )
    dynamics = pd.DataFrame(
        {
            "model": "medgemma-4b",
            "method": ["grpo"] * 3 + ["eqpo"] * 3,
            "seed": 0,
            "step": [0, 5, 10] * 2,
            "delta_F1": [0.10, 0.10, 0.08, 0.10, 0.05, 0.06],
        }
    )
    claims = recompute_claims(synthetic_table2(), steps, dynamics).set_index("claim")
    share = claims.loc["advantage computation share of step time (percent, upper bound)"]
    assert share["ours"] == pytest.approx(0.2 / 200 * 100)
    training = claims.loc["reduction of F1 difference vs GRPO during training (percent)"]
    assert training["ours"] == pytest.approx(50.0)  # step 5: (0.10 - 0.05) / 0.10
    bare = recompute_claims(synthetic_table2()).set_index("claim")
    assert math.isnan(bare.loc["advantage computation share of step time (percent, upper bound)", "ours"])


def test_demo_run_matches_no_paper_model(tmp_path):
    ours = synthetic_table2(models=("demo-linear", "demo-mlp"))
    comparison = paper_vs_reproduction_table2(ours)
    assert len(comparison) == 13 * 11
    assert comparison["ours"].isna().all() and not comparison["matched"].any()
    assert comparison["note"].str.contains("not in this run").all()
    assert "no (model, method) of this run matches" in comparison.attrs["note"]
    assert comparison["paper"].notna().all()
    claims = recompute_claims(ours)
    table_claims = claims[claims["base_model"] != "all"]
    assert table_claims["ours"].isna().all()
    assert table_claims["note"].str.contains("not reproducible in this run").all()
    t4 = paper_vs_reproduction_table4(
        pd.DataFrame(
            {
                "model": "demo-linear",
                "method": "eqpo",
                "seed": 0,
                "dataset": "CheXpert",
                "attribute": "sex",
                "group": "F",
                "n": 10,
                "Acc": 0.5,
                "F1": 0.4,
                "TPR": 0.5,
                "FPR": 0.1,
                "FDR": 0.2,
            },
            index=[0],
        )
    )
    assert len(t4) == 66 and t4["ours"].isna().all()
    assert "no (model, method)" in t4.attrs["note"]
    written = write_comparison(comparison, tmp_path / "table2_vs_paper", paper_scale=True)
    assert "81.83" in written["md"].read_text()
    assert write_comparison(claims, tmp_path / "claims")["csv"].stat().st_size > 0


def test_paper_comparison_fills_matching_pairs():
    ours = synthetic_table2(methods=("grpo", "eqpo"))
    comparison = paper_vs_reproduction_table2(ours)
    hit = comparison[
        (comparison["method"] == "eqpo") & (comparison["model"] == "medgemma-4b") & (comparison["column"] == "PP")
    ].iloc[0]
    assert hit["matched"] and hit["ours"] == 0.12
    assert hit["paper"] == pytest.approx(0.1167)
    assert hit["diff"] == pytest.approx(0.12 - 0.1167)
    assert to_paper_scale(comparison).loc[hit.name, "paper"] == pytest.approx(11.67)
    assert comparison["matched"].sum() == 2 * 11
    rloo = comparison[(comparison["method"] == "rloo") & (comparison["model"] == "medgemma-4b")]
    assert rloo["note"].str.contains("not run").all()
    group = pd.DataFrame(
        {
            "model": "medgemma-4b",
            "method": ["grpo", "grpo", "eqpo"],
            "seed": [0, 1, 0],
            "dataset": "CheXpert",
            "attribute": "sex",
            "group": "F",
            "n": 10,
            "Acc": 0.5,
            "F1": [0.30, 0.40, 0.5],
            "TPR": 0.5,
            "FPR": 0.1,
            "FDR": 0.2,
        }
    )
    t4 = paper_vs_reproduction_table4(group).set_index(["dataset", "group", "method"])
    assert t4.loc[("CheXpert", "F", "grpo"), "ours"] == pytest.approx(0.35)  # seed mean
    assert t4.loc[("CheXpert", "F", "eqpo"), "diff"] == pytest.approx(0.5 - 0.398)
    assert t4["matched"].sum() == 2


# ----------------------------------------------------------------------------------------------
# Tables 3, 4, 5-17 from runs written by the pipeline's scorer
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_files(tmp_path_factory) -> list[Path]:
    """metrics.json of 2 models x 3 methods x 2 seeds, scored by eqpo.workflow.pipeline.score_predictions."""
    from eqpo.workflow.pipeline import score_predictions

    root = tmp_path_factory.mktemp("runs")
    paths = []
    for m, model in enumerate(("medgemma-4b", "demo-mlp")):
        for k, method in enumerate(("grpo", "rloo", "eqpo")):
            for seed in (0, 1):
                run = root / "results" / "x" / model / method / f"seed{seed}"
                run.mkdir(parents=True)
                preds = make_predictions(80, seed=100 * m + 10 * k + seed, error=0.2 + 0.1 * k)
                preds.to_parquet(run / "predictions.parquet", index=False)
                score_predictions(
                    run / "predictions.parquet", run / "metrics.json", model=model, method=method, seed=seed
                )
                paths.append(run / "metrics.json")
    return paths


def test_table4_equals_metrics_inputs(run_files, tmp_path):
    groups = read_group_tables(run_files)
    t4 = table4(groups)
    assert list(t4.index.names) == ["model", "dataset", "attribute", "group"]
    assert list(t4.columns) == ["grpo", "eqpo", "diff", "n", "n_seeds"]
    assert len(t4) == groups[groups["method"] == "eqpo"].groupby(["model", "dataset", "attribute", "group"]).ngroups
    records = {}
    for path in run_files:
        record = json.loads(path.read_text())
        for row in record["by_group"]:
            key = (record["model"], row["dataset"], row["attribute"], row["group"], record["method"])
            records.setdefault(key, []).append(row["F1"])
    for (model, dataset, attribute, group), row in t4.iterrows():
        grpo = np.mean(records[(model, dataset, attribute, group, "grpo")])
        eqpo = np.mean(records[(model, dataset, attribute, group, "eqpo")])
        assert row["grpo"] == pytest.approx(grpo) and row["eqpo"] == pytest.approx(eqpo)
        assert row["diff"] == pytest.approx(eqpo - grpo)
        assert row["n_seeds"] == 2
    flat = t4.reset_index()
    ages = flat[(flat["model"] == "medgemma-4b") & (flat["dataset"] == "Derm")]["group"].tolist()
    assert ages == ["a1", "a2", "a3", "a4", "F", "M"]
    paths = write_table4(groups, tmp_path / "table4")
    assert all(p.stat().st_size > 0 for p in paths.values())
    # table4 output feeds the paper comparison; our datasets are not the paper's
    compared = paper_vs_reproduction_table4(t4)
    assert compared["ours"].isna().all()
    medgemma = compared[compared["model"] == "medgemma-4b"]
    assert medgemma["note"].str.contains("in this run's test results").all()
    written = write_comparison(compared, tmp_path / "table4_vs_paper")
    assert "| no " in written["md"].read_text()


def test_per_group_tables_equal_metrics_inputs(run_files, tmp_path):
    groups = read_group_tables(run_files)
    tables = per_group_tables(groups)
    assert set(tables) == {"Derm", "Mammo", "Echo"}
    derm = tables["Derm"]
    assert list(derm.index.names) == ["model", "method"]
    assert len(derm) == 6
    assert list(derm.index.get_level_values("method")[:3]) == ["grpo", "rloo", "eqpo"]
    expected_groups = ["a1", "a2", "a3", "a4", "F", "M"]
    assert list(derm.columns) == (
        [f"{g}_{m}" for g in expected_groups for m in METRICS] + list(SPREAD_COLUMNS) + ["n_seeds"]
    )
    assert list(tables["Echo"].columns[:5]) == [f"all_{m}" for m in METRICS]
    assert tables["Echo"][list(SPREAD_COLUMNS)].isna().all().all()
    by_dataset = {}
    for path in run_files:
        record = json.loads(path.read_text())
        for row in record["by_dataset"]:
            key = (record["model"], record["method"], row["dataset"])
            by_dataset.setdefault(key, []).append(row)
        for row in record["by_group"]:
            if (
                row["dataset"] == "Mammo"
                and row["group"] == "a3"
                and record["method"] == "rloo"
                and record["model"] == "demo-mlp"
                and record["seed"] == 1
            ):
                a3_f1 = row["F1"]
    for dataset, table in tables.items():
        for (model, method), row in table.iterrows():
            for column in SPREAD_COLUMNS:
                values = [r[column] for r in by_dataset[(model, method, dataset)]]
                values = [math.nan if v is None else v for v in values]
                if all(math.isnan(v) for v in values):
                    assert math.isnan(row[column])
                else:
                    # metrics.json rounds to 10 decimals (pandas to_json), so the spreads
                    # recomputed from the stored by_group agree to ~1e-10
                    assert row[column] == pytest.approx(np.mean(values), abs=1e-9)
    one_seed = per_group_tables(groups[groups["seed"] == 1])
    assert one_seed["Mammo"].loc[("demo-mlp", "rloo"), "a3_F1"] == pytest.approx(a3_f1)
    # by_attribute from FairnessReport gives the same spreads
    preds = make_predictions(80, seed=0)
    report = FairnessReport.from_predictions(preds)
    g = report.by_group.assign(model="m", method="grpo", seed=0)
    a = report.by_attribute.assign(model="m", method="grpo", seed=0)
    via_groups, via_attributes = per_group_tables(g), per_group_tables(g, a)
    for dataset in via_groups:
        pd.testing.assert_frame_equal(via_groups[dataset], via_attributes[dataset], rtol=1e-12)
        for column in SPREAD_COLUMNS:
            expected = report.by_dataset.set_index("dataset").loc[dataset, column]
            assert_close_or_nan(via_groups[dataset].iloc[0][column], expected)
    written = write_per_group_tables(groups, tmp_path / "per_group")
    assert set(written) == set(tables)
    md = written["Derm"]["md"].read_text()
    assert "a1_Acc (×100)" in md and "PP (×100)" in md


def assert_close_or_nan(a: float, b: float) -> None:
    assert (math.isnan(a) and math.isnan(b)) or a == pytest.approx(b, rel=1e-12)


def test_table2_from_runs_feeds_the_comparisons(run_files):
    ours = table2(read_metrics(run_files))
    comparison = paper_vs_reproduction_table2(ours)
    matched = comparison[comparison["matched"]]
    assert set(matched["method"]) == {"grpo", "rloo", "eqpo"}
    assert set(matched["model"]) == {"medgemma-4b"}
    row = matched[(matched["method"] == "eqpo") & (matched["column"] == "F1")].iloc[0]
    assert row["ours"] == ours.loc[("medgemma-4b", "eqpo"), "F1"]


def base_config() -> dict:
    return {
        "base_models": ["medgemma-4b", "demo-mlp"],
        "methods": ["eqpo", "grpo", "grpo_dro"],
        "models": {
            "medgemma-4b": {
                "backend": "verl",
                "path": "google/medgemma-4b-it",
                "overrides": {
                    "actor_rollout_ref": {"actor": {"optim": {"lr": 1e-6}}},
                    "trainer.val_before_train": False,
                },
            },
            "demo-mlp": {"backend": "cpu", "arch": "mlp", "hidden": 32},
            "unused": {"backend": "cpu", "arch": "linear"},
        },
        "estimators": {"eqpo": {"scope": "history", "k_max": 3, "tau": 0.1}, "grpo_dro": {"eta": 0.02}},
        "train": {
            "batch_prompts": 512,
            "rollouts": 10,
            "lr": 5e-7,
            "ppo_mini_batch": 128,
            "clip": 0.2,
            "kl_coef": 0.0,
            "epochs": 15,
            "test_freq": 5,
            "save_freq": 20,
            "temperature": 1.0,
            "max_prompt_length": 4096,
            "gpus": 4,
        },
        "cpu": {"probe_prompts": 64},
    }


def test_table3_reports_the_configured_hyperparameters(tmp_path):
    t3 = table3(base_config())
    assert list(t3.columns) == ["medgemma-4b", "demo-mlp"]
    assert t3.index.name == "parameter"
    assert t3.loc["learning rate", "medgemma-4b"] == 1e-6  # per-model override wins
    assert t3.loc["learning rate", "demo-mlp"] == 5e-7
    for name, value in (
        ("train batch (prompts)", 512),
        ("rollouts per prompt (n)", 10),
        ("PPO mini-batch (prompts)", 128),
        ("clip ratio", 0.2),
        ("KL coefficient (0 = off)", 0.0),
        ("validation every (steps)", 5),
        ("checkpoint every (steps)", 20),
        ("rollout temperature", 1.0),
    ):
        assert t3.loc[name, "medgemma-4b"] == value and t3.loc[name, "demo-mlp"] == value
    assert t3.loc["max prompt length (tokens)", "demo-mlp"] == "n/a"
    assert t3.loc["max prompt length (tokens)", "medgemma-4b"] == 4096
    assert t3.loc["PPO epochs per step", "demo-mlp"] == 1  # TrainSettings' default
    # `steps` not given: the verl default (epochs); the CPU trainer runs TrainSettings' 90 steps
    assert t3.loc["epochs", "medgemma-4b"] == 15 and t3.loc["total steps", "demo-mlp"] == 90
    assert t3.loc["epochs", "demo-mlp"] == "15 (not used: total steps set)"
    assert t3.loc["other verl overrides", "medgemma-4b"] == "trainer.val_before_train=False"
    assert t3.loc["total steps", "medgemma-4b"] == "from epochs"
    assert "k_max=3" in t3.loc["estimator: eqpo", "demo-mlp"]
    assert "eta=0.02" in t3.loc["estimator: grpo_dro", "medgemma-4b"]
    estimator_rows = [i for i in t3.index if i.startswith("estimator: ")]
    assert estimator_rows == ["estimator: grpo", "estimator: grpo_dro", "estimator: eqpo"]
    paths = write_table3(base_config(), tmp_path / "table3")
    assert "learning rate" in paths["md"].read_text()
    with pytest.raises(ValueError, match="not defined"):
        table3({**base_config(), "base_models": ["nope"]})


# ----------------------------------------------------------------------------------------------
# Runtime and Pareto
# ----------------------------------------------------------------------------------------------


def synthetic_steps() -> pd.DataFrame:
    rows = []
    for model in ("medgemma-4b", "qwen2.5-vl-7b"):
        for method in ("grpo", "eqpo", "eqpo_nd"):
            for seed in (0, 1):
                for step in range(1, 6):
                    generate, update, advantage = 30.0 + step, 10.0, 0.01 * (seed + 1)
                    rows.append(
                        {
                            "model": model,
                            "method": method,
                            "seed": seed,
                            "step": step,
                            "reward_mean": 0.5,
                            "time_generate_s": generate,
                            "time_update_s": update,
                            "time_advantage_s": advantage,
                            "time_step_s": generate + update + advantage + 0.5,
                        }
                    )
    return pd.DataFrame(rows)


def synthetic_dynamics() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for model in ("medgemma-4b", "qwen2.5-vl-7b"):
        for method in ("grpo", "eqpo", "eqpo_nd"):
            for seed in (0, 1):
                for step in range(0, 30, 5):
                    rows.append(
                        {
                            "model": model,
                            "method": method,
                            "seed": seed,
                            "step": step,
                            "F1": 0.25 + 0.002 * step + rng.normal(0, 0.005),
                            "delta_F1": 0.1 - 0.001 * step + rng.normal(0, 0.004),
                        }
                    )
    return pd.DataFrame(rows)


def test_runtime_split_values():
    split = runtime_split(synthetic_steps())
    row = split.loc[("medgemma-4b", "eqpo")]
    assert row["time_generate_s"] == pytest.approx(33.0)
    assert row["time_advantage_s"] == pytest.approx(0.015)
    assert row["time_other_s"] == pytest.approx(0.5)
    assert row["advantage_share"] == pytest.approx(0.15 / (5 * 2 * 10.5 + 2 * 165 + 0.15))


def test_pareto_mask_and_points():
    x = np.array([1.0, 2.0, 3.0, 2.0, 1.0, np.nan])
    y = np.array([3.0, 2.0, 1.0, 1.0, 3.0, 5.0])
    assert pareto_mask(x, y).tolist() == [True, True, True, False, False, False]
    points = pareto_points(synthetic_dynamics())
    assert points["final"].sum() == 2 * 3 * 2
    assert (points.loc[points["final"], "step"] == 25).all()
    assert points["equity"].equals(1.0 - points["delta_F1"])
    for _, at in points.groupby("model"):
        front = at[at["on_front"]]
        for _, p in at.iterrows():  # nothing dominates a frontier point
            assert (
                not (
                    (at["F1"] >= p["F1"])
                    & (at["equity"] >= p["equity"])
                    & ((at["F1"] > p["F1"]) | (at["equity"] > p["equity"]))
                ).any()
                or not p["on_front"]
            )
        assert len(front) >= 1


def test_group_f1_figure_with_identical_values_across_seeds(tmp_path):
    """Three seeds with the same F1: the seed mean rounds past the minimum; bars still draw."""
    from eqpo.analysis.figures import plot_group_f1

    rows = [
        {
            "model": "m",
            "method": method,
            "seed": seed,
            "dataset": "HAM10000",
            "attribute": "age",
            "group": group,
            "n": 10,
            "Acc": 0.9,
            "F1": 0.7,
            "TPR": 0.7,
            "FPR": 0.1,
            "FDR": 0.1,
        }
        for method in ("grpo", "eqpo")
        for seed in range(3)
        for group in ("a1", "a2")
    ]
    png, pdf = plot_group_f1(pd.DataFrame(rows), tmp_path / "group_f1")
    assert png.stat().st_size > 0 and pdf.stat().st_size > 0
