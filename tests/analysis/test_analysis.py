"""Tests of eqpo.analysis: reading run directories, Table 2 and its CSV/Markdown/LaTeX renderings,
cluster stability on hand-made cases, path parsing, and that every figure is written.

Synthetic run directories (2 models x 3 methods x 2 seeds) are built in tmp_path with the file
formats of the pipeline contract: metrics.json, dynamics.jsonl, steps.jsonl, clusters.parquet.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from eqpo.analysis import figures
from eqpo.analysis.collect import (
    parse_run_path,
    read_clusters,
    read_dynamics,
    read_group_tables,
    read_metrics,
    read_steps,
    read_unparseable_share,
)
from eqpo.analysis.style import (
    METHOD_COLORS,
    METHOD_LABELS,
    METHOD_ORDER,
    model_label,
    order_methods,
)
from eqpo.analysis.tables import (
    best_mask,
    cluster_stability,
    cluster_stability_summary,
    format_number,
    table2,
    table2_long,
    table2_std,
    timing_summary,
    to_latex_table,
    write_table,
)
from eqpo.core.metrics import TABLE2_COLUMNS

MODELS = ("medgemma-4b", "qwen2.5-vl-7b")
METHODS = ("eqpo", "grpo", "eqpo_nd")  # deliberately not in METHOD_ORDER order
SEEDS = (0, 1)
DATASETS = {"CheXpert": ("age", "sex"), "VinDr-Mammo": ("age",)}
GROUPS = {"age": ("a1", "a2", "a3", "a4"), "sex": ("F", "M")}
STEPS = tuple(range(0, 55, 5))


# ----------------------------------------------------------------------------------------------
# Synthetic run directories
# ----------------------------------------------------------------------------------------------


def summary_values(rng: np.random.Generator, model: str, method: str, seed: int) -> dict:
    """Made-up Table 2 summary with full-precision floats and known best cells for medgemma-4b:
    EQPO has the highest Acc (0.8183 in both seeds) and the lowest PP; GRPO the highest F1."""
    values = {column: float(rng.uniform(0.05, 0.25)) for column in TABLE2_COLUMNS}
    values["Acc"] = float(rng.uniform(0.70, 0.80))
    values["F1"] = float(rng.uniform(0.20, 0.30))
    if model == "medgemma-4b" and method == "eqpo":
        values["Acc"] = 0.8183
        values["PP"] = 0.01 + 0.001 * seed
    if model == "medgemma-4b" and method == "grpo":
        values["F1"] = 0.35 + 0.01 * seed
    values["Acc_ES"] = values["Acc"] / (1 + values["sigma_Acc"])
    values["F1_ES"] = values["F1"] / (1 + values["sigma_F1"])
    return values


def by_group_records(rng: np.random.Generator, method: str) -> list[dict]:
    """by_group rows of FairnessReport for the synthetic datasets (EQPO's F1 a bit higher)."""
    rows = []
    for dataset, attributes in DATASETS.items():
        for attribute in attributes:
            for group in GROUPS[attribute]:
                f1 = float(rng.uniform(0.2, 0.6)) + (0.1 if method == "eqpo" else 0.0)
                rows.append(
                    {
                        "dataset": dataset,
                        "attribute": attribute,
                        "group": group,
                        "n": int(rng.integers(20, 200)),
                        "Acc": float(rng.uniform(0.6, 0.9)),
                        "F1": f1,
                        "TPR": float(rng.uniform()),
                        "FPR": float(rng.uniform()),
                        "FDR": float(rng.uniform()),
                    }
                )
    return rows


def dynamics_records(rng: np.random.Generator, method: str) -> list[dict]:
    """One validation record per step in STEPS with slowly improving made-up metrics."""
    lift = {"eqpo": 0.05, "eqpo_nd": 0.03}.get(method, 0.0)
    records = []
    for i, step in enumerate(STEPS):
        row = {"step": step, "wall_time_s": 60.0 * step}
        row.update({c: float(rng.uniform(0.05, 0.2)) for c in TABLE2_COLUMNS})
        row["F1"] = 0.2 + lift + 0.01 * i + float(rng.normal(0, 0.005))
        row["Acc"] = 0.7 + 0.008 * i + float(rng.normal(0, 0.004))
        row["delta_F1"] = 0.12 - lift - 0.003 * i + float(rng.normal(0, 0.004))
        records.append(row)
    return records


def steps_records(rng: np.random.Generator) -> list[dict]:
    """One per training step: reward and phase timings in seconds."""
    rows = []
    for step in range(1, 21):
        generate, update = rng.uniform(20, 30), rng.uniform(5, 8)
        advantage = rng.uniform(0.001, 0.01)
        rows.append(
            {
                "step": step,
                "reward_mean": float(rng.uniform()),
                "time_step_s": float(generate + advantage + update),
                "time_generate_s": float(generate),
                "time_advantage_s": float(advantage),
                "time_update_s": float(update),
            }
        )
    return rows


def clusters_frame(rng: np.random.Generator, method: str) -> pd.DataFrame:
    """Cluster logs: EQPO(-ND) clusters mostly follow the true sex group; others have 0 rows."""
    columns = ["sample_id", "step", "dataset", "cluster", "k", "true_group"]
    if method not in ("eqpo", "eqpo_nd"):
        return pd.DataFrame(
            {
                c: pd.Series(dtype=t)
                for c, t in zip(columns, ["object", "int64", "object", "int64", "int64", "object"], strict=False)
            }
        )
    rows = []
    for step in STEPS[:6]:
        for dataset in DATASETS:
            for i in range(30):
                group = ("F", "M")[i % 2] if i % 5 else None
                noisy = rng.uniform() < 0.2
                cluster = (i % 2) if not noisy else int(rng.integers(0, 2))
                rows.append(
                    {
                        "sample_id": f"{dataset}-{i}",
                        "step": step,
                        "dataset": dataset,
                        "cluster": cluster,
                        "k": 2,
                        "true_group": group,
                    }
                )
    return pd.DataFrame(rows, columns=columns)


def write_run(root: Path, model: str, method: str, seed: int, rng: np.random.Generator) -> Path:
    """Write one run directory results/main/<model>/<method>/seed<seed>/; returns it."""
    run = root / "results" / "main" / model / method / f"seed{seed}"
    run.mkdir(parents=True)
    metrics = {
        "model": model,
        "method": method,
        "seed": seed,
        "summary": summary_values(rng, model, method, seed),
        "by_dataset": [],
        "by_group": by_group_records(rng, method),
        "unparseable_share": {d: float(rng.uniform(0, 0.05)) for d in DATASETS},
    }
    (run / "metrics.json").write_text(json.dumps(metrics))
    for name, records in (("dynamics.jsonl", dynamics_records(rng, method)), ("steps.jsonl", steps_records(rng))):
        (run / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    clusters_frame(rng, method).to_parquet(run / "clusters.parquet", index=False)
    return run


def build_runs(root: Path, models=MODELS, methods=METHODS, seeds=SEEDS, seed: int = 7) -> list[Path]:
    """All run directories of the synthetic experiment (deterministic)."""
    rng = np.random.default_rng(seed)
    return [write_run(root, m, k, s, rng) for m in models for k in methods for s in seeds]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    return build_runs(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def metrics_df(runs) -> pd.DataFrame:
    return read_metrics([r / "metrics.json" for r in runs])


def raw_summaries(runs) -> dict[tuple[str, str], list[dict]]:
    """(model, method) -> the summaries of its seeds, straight from the JSON files."""
    out: dict[tuple[str, str], list[dict]] = {}
    for run in runs:
        record = json.loads((run / "metrics.json").read_text())
        out.setdefault((record["model"], record["method"]), []).append(record["summary"])
    return out


# ----------------------------------------------------------------------------------------------
# Style
# ----------------------------------------------------------------------------------------------


def test_style_covers_every_method():
    assert set(METHOD_LABELS) == set(METHOD_ORDER) == set(METHOD_COLORS)
    assert len(set(METHOD_COLORS.values())) == len(METHOD_COLORS)
    assert METHOD_LABELS["eqpo_nd"] == "EQPO-ND" and METHOD_LABELS["reinforce_pp"] == "REINFORCE++"
    assert order_methods(["eqpo", "zzz", "grpo", "eqpo"]) == ["grpo", "eqpo", "zzz"]


@pytest.mark.parametrize(
    "name, label",
    [
        ("medgemma-4b", "MedGemma-4B"),
        ("google/medgemma-4b-it", "MedGemma-4B"),
        ("Qwen/Qwen2.5-VL-7B-Instruct", "Qwen2.5-VL-7B"),
        ("qwen2_5_vl_7b", "Qwen2.5-VL-7B"),
        ("some-new-model", "some-new-model"),
    ],
)
def test_model_label(name, label):
    assert model_label(name) == label


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def test_parse_run_path():
    assert parse_run_path("results/main/medgemma-4b/eqpo/seed3/metrics.json") == ("medgemma-4b", "eqpo", 3)
    assert parse_run_path(Path("/x/results/main/m/grpo/seed12")) == ("m", "grpo", 12)


@pytest.mark.parametrize(
    "path",
    [
        "results/main/medgemma-4b/eqpo/metrics.json",  # no seed directory
        "results/main/medgemma-4b/eqpo/seedX/metrics.json",  # seed not an integer
        "results/main/medgemma-4b/eqpo/seed1/sub/metrics.json",  # file too deep
        "eqpo/seed1/metrics.json",  # no model component
        "metrics.json",
    ],
)
def test_parse_run_path_errors(path):
    with pytest.raises(ValueError, match="model/method|<model>/<method>"):
        parse_run_path(path)


def test_read_metrics(runs, metrics_df):
    assert len(metrics_df) == len(MODELS) * len(METHODS) * len(SEEDS)
    assert list(metrics_df.columns) == ["model", "method", "seed", *TABLE2_COLUMNS]
    assert metrics_df["seed"].dtype == np.int64
    first = json.loads((runs[0] / "metrics.json").read_text())
    row = metrics_df.iloc[0]
    assert (row["model"], row["method"], row["seed"]) == (first["model"], first["method"], 0)
    assert all(row[c] == first["summary"][c] for c in TABLE2_COLUMNS)


def test_read_metrics_rejects_mismatch_and_duplicates(tmp_path, runs):
    wrong = tmp_path / "results" / "m" / "grpo" / "seed5"
    wrong.mkdir(parents=True)
    (wrong / "metrics.json").write_text((runs[0] / "metrics.json").read_text())
    with pytest.raises(ValueError, match="directory says"):
        read_metrics([wrong / "metrics.json"])
    with pytest.raises(ValueError, match="same run"):
        read_metrics([runs[0] / "metrics.json", runs[0] / "metrics.json"])
    record = json.loads((runs[0] / "metrics.json").read_text())
    del record["summary"]["F1_ES"]
    (tmp_path / "bad.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match="F1_ES"):
        read_metrics([tmp_path / "bad.json"])


def test_read_logs(runs):
    dynamics = read_dynamics([r / "dynamics.jsonl" for r in runs])
    assert len(dynamics) == len(runs) * len(STEPS)
    assert list(dynamics.columns[:5]) == ["model", "method", "seed", "step", "wall_time_s"]
    assert set(TABLE2_COLUMNS) <= set(dynamics.columns)
    steps = read_steps([r / "steps.jsonl" for r in runs])
    assert len(steps) == len(runs) * 20 and "time_advantage_s" in steps.columns
    clusters = read_clusters([r / "clusters.parquet" for r in runs])
    assert set(clusters["method"]) == {"eqpo", "eqpo_nd"}  # grpo files have 0 rows
    assert clusters["true_group"].isna().any()
    groups = read_group_tables([r / "metrics.json" for r in runs])
    assert len(groups) == len(runs) * (6 + 4)
    assert list(groups.columns) == [
        "model",
        "method",
        "seed",
        "dataset",
        "attribute",
        "group",
        "n",
        "Acc",
        "F1",
        "TPR",
        "FPR",
        "FDR",
    ]
    shares = read_unparseable_share([r / "metrics.json" for r in runs])
    assert len(shares) == len(runs) * len(DATASETS)


def test_readers_accept_no_paths():
    assert list(read_metrics([]).columns)[:3] == ["model", "method", "seed"]
    assert read_dynamics([]).empty and read_clusters([]).empty and read_group_tables([]).empty


# ----------------------------------------------------------------------------------------------
# Table 2
# ----------------------------------------------------------------------------------------------


def test_table2_is_the_mean_over_seeds(runs, metrics_df):
    table = table2(metrics_df)
    expected_rows = [(m, k) for m in MODELS for k in ("grpo", "eqpo_nd", "eqpo")]
    assert list(table.index) == expected_rows  # METHOD_ORDER, not file order
    assert list(table.columns) == [*TABLE2_COLUMNS, "n_seeds"]
    for key, summaries in raw_summaries(runs).items():
        for column in TABLE2_COLUMNS:
            assert table.loc[key, column] == np.mean([s[column] for s in summaries])
        assert table.loc[key, "n_seeds"] == len(SEEDS)


def test_table2_selection_and_spread(metrics_df):
    table = table2(metrics_df, models=["qwen2.5-vl-7b"], methods=["eqpo", "grpo"])
    assert list(table.index) == [("qwen2.5-vl-7b", "eqpo"), ("qwen2.5-vl-7b", "grpo")]
    std = table2_std(metrics_df)
    runs = metrics_df[(metrics_df["model"] == "medgemma-4b") & (metrics_df["method"] == "grpo")]
    assert std.loc[("medgemma-4b", "grpo"), "F1"] == pytest.approx(runs["F1"].std(ddof=1))
    long = table2_long(metrics_df)
    assert len(long) == 6 * len(TABLE2_COLUMNS)
    row = long[(long["model"] == "medgemma-4b") & (long["method"] == "eqpo") & (long["column"] == "Acc")].iloc[0]
    assert row["mean"] == pytest.approx(0.8183) and row["std"] == 0 and row["n_seeds"] == 2


def test_write_table_round_trip_and_renderings(tmp_path, metrics_df):
    table = table2(metrics_df)
    paths = write_table(table, tmp_path / "out" / "table2")
    assert {p.name for p in paths.values()} == {"table2.csv", "table2.md", "table2.tex"}
    back = pd.read_csv(paths["csv"], index_col=["model", "method"])
    assert list(back.columns) == list(table.columns)
    for column in TABLE2_COLUMNS:  # exact, full precision
        assert (back[column].to_numpy() == table[column].to_numpy()).all()
    md, tex = paths["md"].read_text(), paths["tex"].read_text()
    for label in ("GRPO", "EQPO", "EQPO-ND", "MedGemma-4B", "Qwen2.5-VL-7B"):
        assert label in md and label in tex
    assert "**81.83**" in md and r"\textbf{81.83}" in tex  # Acc x100, best for medgemma-4b
    assert r"\toprule" in tex and r"\bottomrule" in tex and r"\midrule" in tex
    assert "eqpo_nd" not in tex and "medgemma-4b" not in tex


def test_bold_marks_the_best_cell(metrics_df):
    table = table2(metrics_df)
    mask = best_mask(table)
    medgemma = mask.loc["medgemma-4b"]
    assert medgemma["PP"].tolist() == [False, False, True]  # grpo, eqpo_nd, eqpo: lowest PP
    assert medgemma["Acc"].tolist() == [False, False, True]  # highest Acc
    assert medgemma["F1"].tolist() == [True, False, False]  # highest F1 is GRPO's
    assert not mask["n_seeds"].any()
    assert (mask[list(TABLE2_COLUMNS)].groupby(level="model").sum() == 1).all().all()
    md_line = next(line for line in write_table_md(table).splitlines() if "EQPO " in line and "MedGemma" in line)
    pp_cell = md_line.split("|")[3].strip()
    assert pp_cell == f"**{format_number(table.loc[('medgemma-4b', 'eqpo'), 'PP'] * 100)}**"


def write_table_md(table: pd.DataFrame) -> str:
    from eqpo.analysis.tables import to_markdown_table

    return to_markdown_table(table)


def test_bold_ties_on_the_printed_value():
    table = pd.DataFrame(
        {"F1": [0.30001, 0.30002, 0.2]},
        index=pd.MultiIndex.from_tuples([("m", "grpo"), ("m", "eqpo"), ("m", "rloo")], names=["model", "method"]),
    )
    texts = pd.DataFrame({"F1": [format_number(v) for v in table["F1"]]}, index=table.index)
    assert best_mask(table)["F1"].tolist() == [False, True, False]
    assert best_mask(table, texts)["F1"].tolist() == [True, True, False]


@pytest.mark.parametrize(
    "value, text",
    [
        (81.8312, "81.83"),
        (7.78812, "7.788"),
        (10.5612, "10.56"),
        (0.03221, "0.0322"),
        (0.06504, "0.0650"),
        (0.26119, "0.2612"),
        (9.99996, "10.00"),
        (0.0, "0.0000"),
        (float("nan"), None),
    ],
)
def test_format_number(value, text):
    assert format_number(value) == text


def test_latex_escapes_names():
    table = pd.DataFrame(
        {"F1": [0.3, 0.2], "n_seeds": [1, 1]},
        index=pd.MultiIndex.from_tuples(
            [("my_model", "grpo_rs"), ("my_model", "new_method")], names=["model", "method"]
        ),
    )
    tex = to_latex_table(table)
    assert r"my\_model" in tex and "GRPO+RS" in tex and r"new\_method" in tex
    assert "my_model" not in tex.replace(r"my\_model", "")


# ----------------------------------------------------------------------------------------------
# Cluster stability
# ----------------------------------------------------------------------------------------------


def hand_clusters() -> pd.DataFrame:
    """One run, one dataset, three logged steps of 6 prompts with true groups F/M.

    step 0: clusters follow the groups exactly.
    step 5: the same partition with the cluster ids swapped (a relabelling).
    step 10: a shuffled partition that cuts across the previous one.
    """
    ids = [f"s{i}" for i in range(6)]
    groups = ["F", "F", "F", "M", "M", "M"]
    assignments = {0: [0, 0, 0, 1, 1, 1], 5: [1, 1, 1, 0, 0, 0], 10: [0, 1, 0, 1, 0, 1]}
    rows = [
        {
            "model": "m",
            "method": "eqpo_nd",
            "seed": 0,
            "sample_id": s,
            "step": step,
            "dataset": "D",
            "cluster": c,
            "k": 2,
            "true_group": g,
        }
        for step, clusters in assignments.items()
        for s, c, g in zip(ids, clusters, groups, strict=False)
    ]
    return pd.DataFrame(rows)


def test_cluster_stability_hand_case():
    stability = cluster_stability(hand_clusters()).set_index("step")
    assert stability.loc[0, "ari"] == pytest.approx(1.0)
    assert stability.loc[0, "nmi"] == pytest.approx(1.0)
    assert math.isnan(stability.loc[0, "consecutive_ari"])  # first step
    assert stability.loc[5, "ari"] == pytest.approx(1.0)  # relabelling does not matter
    assert stability.loc[5, "consecutive_ari"] == pytest.approx(1.0)
    assert stability.loc[10, "consecutive_ari"] < 0.5
    assert stability.loc[10, "ari"] < 0.5 and stability.loc[10, "nmi"] < 0.5
    assert stability["n"].tolist() == [6, 6, 6] and stability["k"].tolist() == [2, 2, 2]
    assert stability["n_common"].tolist() == [0, 6, 6]


def test_cluster_stability_undefined_cases():
    frame = hand_clusters()
    frame.loc[frame["step"] == 5, "true_group"] = "F"  # one true group only
    frame.loc[(frame["step"] == 10) & (frame["sample_id"] != "s0"), "true_group"] = None
    frame.loc[(frame["step"] == 10) & (frame["sample_id"] != "s0"), "sample_id"] = "new"
    stability = cluster_stability(frame).set_index("step")
    assert math.isnan(stability.loc[5, "ari"]) and math.isnan(stability.loc[5, "nmi"])
    assert math.isnan(stability.loc[10, "ari"])  # one labeled row
    assert stability.loc[10, "n"] == 2  # 'new' logged five times counts once
    assert math.isnan(stability.loc[10, "consecutive_ari"])  # one common id (s0)
    assert stability.loc[10, "n_common"] == 1


def test_cluster_stability_keeps_runs_and_datasets_apart():
    a = hand_clusters()
    b = hand_clusters().assign(seed=1)
    b.loc[b["step"] == 10, "cluster"] = [0, 0, 0, 1, 1, 1]  # seed 1 stays aligned
    c = hand_clusters().assign(dataset="E", true_group="UNK")  # "UNK" = no group
    stability = cluster_stability(pd.concat([a, b, c], ignore_index=True))
    assert len(stability) == 9
    seed1 = stability[(stability["seed"] == 1)].set_index("step")
    assert seed1.loc[10, "ari"] == pytest.approx(1.0)
    assert stability.loc[stability["dataset"] == "E", "ari"].isna().all()
    summary = cluster_stability_summary(stability)
    assert list(summary.columns) == [
        "model",
        "method",
        "dataset",
        "ari",
        "nmi",
        "consecutive_ari",
        "k_mode",
        "n_steps",
        "n_seeds",
    ]
    row = summary[summary["dataset"] == "D"].iloc[0]
    assert row["n_steps"] == 6 and row["n_seeds"] == 2 and row["k_mode"] == 2
    expected = stability.loc[stability["dataset"] == "D", "ari"].mean()
    assert row["ari"] == pytest.approx(expected)


def test_cluster_stability_on_read_clusters(runs):
    clusters = read_clusters([r / "clusters.parquet" for r in runs])
    stability = cluster_stability(clusters)
    assert len(stability) == len(MODELS) * 2 * len(SEEDS) * len(DATASETS) * 6
    assert stability["ari"].between(-1, 1).all() and stability["ari"].mean() > 0.2
    assert cluster_stability(clusters.iloc[:0]).empty


def test_timing_summary(runs):
    steps = read_steps([r / "steps.jsonl" for r in runs])
    timing = timing_summary(steps)
    assert list(timing.index.get_level_values("method")[:3]) == ["grpo", "eqpo_nd", "eqpo"]
    assert (timing["advantage_share"] < 0.01).all() and (timing["n_steps"] == 40).all()


# ----------------------------------------------------------------------------------------------
# Figures
# ----------------------------------------------------------------------------------------------


def assert_written(paths: list[Path]) -> None:
    assert [p.suffix for p in paths] == [".png", ".pdf"]
    for path in paths:
        assert path.exists() and path.stat().st_size > 1000
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths[1].read_bytes()[:5] == b"%PDF-"


def test_figures_with_nothing_to_plot(tmp_path):
    empty = pd.DataFrame(columns=["model", "method", "seed", "step"])
    assert_written(figures.plot_training_dynamics(empty, tmp_path / "a"))
    assert_written(figures.plot_group_f1(empty.assign(dataset=[]), tmp_path / "b"))
    assert_written(figures.plot_cluster_stability(cluster_stability(empty), tmp_path / "c"))
