"""The paper's Table 3 (hyperparameters), Table 4 (per-group F1, GRPO vs EQPO) and Tables 5-17
(per-dataset, per-group metrics of every method), from the config and the runs' metrics.json.

Inputs: ``config`` is the workflow config (config.yaml merged with its overlay, as Snakemake sees
it); ``group_df`` is :func:`eqpo.analysis.collect.read_group_tables` output: one row per (model,
method, seed, dataset, attribute, group) with n and the per-group Acc, F1, TPR, FPR, FDR of
metrics.json's ``by_group`` (groups present only; a dataset without a usable attribute has the
single group attribute = group = "all").

Every returned frame holds raw values (fractions); the ``write_*`` functions go through
:func:`eqpo.analysis.tables.write_table` (CSV raw; Markdown/LaTeX at the paper's print scales).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from eqpo.analysis.collect import RUN_KEYS
from eqpo.analysis.style import order_methods
from eqpo.analysis.tables import write_table
from eqpo.core.advantages import ESTIMATORS, estimator_defaults
from eqpo.core.groups import AGE_BINS, SEXES
from eqpo.core.methods import EMPHASISED
from eqpo.core.metrics import METRICS, PAPER_SCALE, TABLE2_SOURCE
from eqpo.runs.settings import (
    GPU_ONLY_TRAIN_KEYS,
    RunSettings,
    TrainSettings,
    reproduction_options,
    run_overrides,
    run_source,
)

__all__ = [
    "SPREAD_COLUMNS",
    "per_group_tables",
    "table3",
    "table4",
    "write_per_group_tables",
    "write_table3",
    "write_table4",
]

# ----------------------------------------------------------------------------------------------
# Table 3: hyperparameters
# ----------------------------------------------------------------------------------------------

# Table 3 rows: (config key of the `train` block, printed parameter name).
TRAIN_PARAMETERS: tuple[tuple[str, str], ...] = (
    ("batch_prompts", "train batch (prompts)"),
    ("rollouts", "rollouts per prompt (n)"),
    ("lr", "learning rate"),
    ("ppo_mini_batch", "PPO mini-batch (prompts)"),
    ("ppo_epochs", "PPO epochs per step"),
    ("clip", "clip ratio"),
    ("kl_coef", "KL coefficient (0 = off)"),
    ("epochs", "epochs"),
    ("steps", "total steps"),
    ("test_freq", "validation every (steps)"),
    ("save_freq", "checkpoint every (steps)"),
    ("temperature", "rollout temperature"),
    ("grad_clip", "gradient clip (norm)"),
    ("max_prompt_length", "max prompt length (tokens)"),
    ("max_response_length", "max response length (tokens)"),
    ("rollout_gpu_memory", "vLLM GPU memory share"),
    ("tensor_parallel", "tensor parallel (rollout)"),
    ("gpus", "GPUs per node"),
    ("nnodes", "nodes"),
)
# verl Hydra key -> `train` key (as eqpo.backends.verl.launch.TRAIN_KEYS maps them), so a per-model
# `models.<m>.overrides` entry shows up in the row it changes.
VERL_KEYS: dict[str, str] = {
    "data.train_batch_size": "batch_prompts",
    "actor_rollout_ref.rollout.n": "rollouts",
    "actor_rollout_ref.actor.optim.lr": "lr",
    "actor_rollout_ref.actor.ppo_mini_batch_size": "ppo_mini_batch",
    "actor_rollout_ref.actor.ppo_epochs": "ppo_epochs",
    "actor_rollout_ref.actor.clip_ratio": "clip",
    "actor_rollout_ref.actor.grad_clip": "grad_clip",
    "actor_rollout_ref.actor.kl_loss_coef": "kl_coef",
    "trainer.total_epochs": "epochs",
    "trainer.total_training_steps": "steps",
    "trainer.test_freq": "test_freq",
    "trainer.save_freq": "save_freq",
    "actor_rollout_ref.rollout.temperature": "temperature",
    "data.max_prompt_length": "max_prompt_length",
    "data.max_response_length": "max_response_length",
    "actor_rollout_ref.rollout.gpu_memory_utilization": "rollout_gpu_memory",
    "actor_rollout_ref.rollout.tensor_model_parallel_size": "tensor_parallel",
    "trainer.n_gpus_per_node": "gpus",
    "trainer.nnodes": "nnodes",
}
_NOT_APPLICABLE = "n/a"
_BACKEND_DEFAULT = "verl default"


def _flatten(mapping: Mapping[str, Any] | None, prefix: str = "") -> dict[str, Any]:
    """Nested dict -> {dotted key: value}."""
    flat: dict[str, Any] = {}
    for key, value in (mapping or {}).items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _cpu_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """The `train` settings the CPU backend runs with: the config's `train` block over
    :class:`eqpo.runs.settings.TrainSettings`' defaults (its TrainConfig adds only the `cpu` block)."""
    return TrainSettings.from_mapping(config.get("train")).as_dict()


def _verl_settings(config: Mapping[str, Any], entry: Mapping[str, Any]) -> tuple[dict, list[str]]:
    """(train-key -> value, other overrides as 'key=value') of a verl model: the `train` block,
    then its `overrides` (which win, as in eqpo.backends.verl.launch)."""
    settings = dict(config.get("train") or {})
    settings.setdefault("nnodes", 1)
    other = []
    for key, value in _flatten(entry.get("overrides")).items():
        bare = key.lstrip("+")
        if bare in VERL_KEYS:
            settings[VERL_KEYS[bare]] = value
        else:
            other.append(f"{key}={value}")
    return settings, other


def estimator_settings(method: str, options: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Every option the advantage estimator of ``method`` runs with: its defaults (keyword-only
    parameters of :func:`eqpo.core.advantages.make_estimator`'s factory), then ``options``."""
    options = dict(options or {})
    if method not in ESTIMATORS:
        return options
    return {**estimator_defaults(method), **options}


def _options_text(options: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in options.items()) if options else "none"


def table3(config: Mapping[str, Any]) -> pd.DataFrame:
    """Paper Table 3: the hyperparameters the runs of ``config`` use, per base model.

    Rows (index "parameter"): backend, weights (hub id / path, or the CPU architecture), the
    training settings (:data:`TRAIN_PARAMETERS`: train batch, rollouts, lr, PPO mini-batch and
    epochs, clip, KL, epochs, total steps, test_freq, save_freq, temperature, gradient clip and the
    GPU-only lengths / vLLM / parallelism settings), "other verl overrides", then one row
    "estimator: <method>" per configured method with every option its advantage estimator runs
    with (defaults included, the run's ``estimator`` overrides applied), one row "run: <method>" per
    method with the `train` settings that run uses where ``runs.<model>.<method>`` (or
    ``runs.<model>.all``) changes them ("as above" otherwise), one row "source: <method>" naming
    where that run's values come from (:func:`eqpo.runs.settings.run_source`: script and line, or
    paper Table 3), and one row per reproduction option (``metrics.class_set``, ``metrics.extraction``,
    ``groups.definition``, ``reward.function``, ``reward.matching``). Columns: the config's
    ``base_models`` (our ids), object dtype.

    Values are what each backend runs with: for a CPU model the `train` block over
    :class:`eqpo.runs.settings.TrainSettings`' defaults (GPU-only keys "n/a"); for a verl model the
    `train` block with the model's `overrides` applied on top ("verl default" where neither sets a
    key). ``steps`` unset means the run length comes from ``epochs``.
    """
    options = reproduction_options(config).config_rows()
    models = list(config.get("base_models") or [])
    catalogue = config.get("models") or {}
    unknown = [m for m in models if m not in catalogue]
    if unknown:
        raise ValueError(f"base_models {unknown} are not defined under `models:` in the config")
    columns: dict[str, dict[str, Any]] = {}
    for model in models:
        entry = catalogue[model]
        backend = entry.get("backend", "?")
        col: dict[str, Any] = {"backend": backend}
        if backend == "cpu":
            col["weights"] = entry.get("arch", "?") + (f" (hidden {entry['hidden']})" if entry.get("hidden") else "")
            settings, other = _cpu_settings(config), []
            for key in GPU_ONLY_TRAIN_KEYS:
                settings[key] = _NOT_APPLICABLE
        else:
            col["weights"] = entry.get("path", "?")
            settings, other = _verl_settings(config, entry)
        for key, name in TRAIN_PARAMETERS:
            value = settings.get(key, _BACKEND_DEFAULT if backend != "cpu" else None)
            if key == "steps" and (value is None or value == _BACKEND_DEFAULT):
                value = "from epochs"
            if key == "epochs" and settings.get("steps") is not None:
                value = f"{value} (not used: total steps set)"
            col[name] = value
        col["other verl overrides"] = "; ".join(other) if other else (_NOT_APPLICABLE if backend == "cpu" else "none")
        methods = order_methods(config.get("methods") or [])
        runs = {method: RunSettings.from_config(config, model, method) for method in methods}
        for method in methods:
            col[f"estimator: {method}"] = _options_text(estimator_settings(method, runs[method].estimator))
        for method in methods:
            changed = run_overrides(config, model, method)
            if runs[method].options.reward != options["reward.function"]:
                changed["reward"] = runs[method].options.reward
            col[f"run: {method}"] = _options_text(changed) if changed else "as above"
        for method in methods:
            col[f"source: {method}"] = run_source(config, model, method)
        col.update(options)
        columns[model] = col
    frame = pd.DataFrame(columns, dtype=object)
    frame.index.name = "parameter"
    return frame


def write_table3(config: Mapping[str, Any], stem: str | Path) -> dict[str, Path]:
    """:func:`table3` as ``<stem>.csv/.md/.tex`` (values as configured, no scaling)."""
    return write_table(table3(config), stem, scale={})


# ----------------------------------------------------------------------------------------------
# Table 4 and Tables 5-17: per-group metrics
# ----------------------------------------------------------------------------------------------

# Per dataset, the Table 2 columns computed from the per-group values (mean over attributes).
SPREAD_COLUMNS: dict[str, tuple[str, str]] = {
    column: source for column, source in TABLE2_SOURCE.items() if source[1] != "level"
}
# Scale of a per-group metric in the Markdown/LaTeX renderings (as Table 2 prints them).
GROUP_METRIC_SCALE: dict[str, float] = {"Acc": 100.0, "F1": 1.0, "TPR": 100.0, "FPR": 100.0, "FDR": 100.0}


def _group_rank(group: object) -> tuple[int, str]:
    order = [*AGE_BINS, *SEXES, "all"]
    text = str(group)
    return (order.index(text) if text in order else len(order), text)


def _check_groups(group_df: pd.DataFrame) -> None:
    needed = {"model", "method", "dataset", "attribute", "group", *METRICS}
    missing = sorted(needed - set(group_df.columns))
    if missing:
        raise ValueError(f"group_df lacks column(s) {missing}; pass read_group_tables output")


def table4(group_df: pd.DataFrame, metric: str = "F1", methods: Sequence[str] = EMPHASISED) -> pd.DataFrame:
    """Paper Table 4: per-group ``metric`` (F1) of GRPO and EQPO per base model and dataset.

    Returns a frame indexed by (model, dataset, attribute, group) -- models and datasets in order
    of appearance, groups a1..a4, F, M -- with columns grpo, eqpo (mean over seeds, raw),
    diff (eqpo - grpo), n (test rows in the group; mean over the runs) and n_seeds (seeds with a
    value, the smaller of the two methods'). A method a model lacks gives NaN.
    """
    _check_groups(group_df)
    first, second = methods
    keys = ["model", "dataset", "attribute", "group"]
    columns = [first, second, "diff", "n", "n_seeds"]
    frame = group_df[group_df["method"].isin(methods)]
    if frame.empty:
        return pd.DataFrame(columns=columns, index=pd.MultiIndex.from_tuples([], names=keys))
    frame = frame.assign(group=frame["group"].astype(str))
    grouped = frame.groupby([*keys, "method"], sort=False)
    means = grouped[metric].mean().unstack("method")
    seeds = grouped["seed"].nunique().unstack("method") if "seed" in frame else None
    out = pd.DataFrame(index=means.index)
    for method in methods:
        out[method] = means[method] if method in means.columns else math.nan
    out["diff"] = out[second] - out[first]
    out["n"] = frame.groupby(keys, sort=False)["n"].mean() if "n" in frame else math.nan
    if seeds is not None:
        fewest = seeds.reindex(columns=list(methods)).min(axis=1, skipna=False)
        out["n_seeds"] = fewest.fillna(0).astype("int64")
    else:
        out["n_seeds"] = 1
    out = out.reset_index()
    rank_model = {m: i for i, m in enumerate(dict.fromkeys(frame["model"]))}
    rank_data = {d: i for i, d in enumerate(dict.fromkeys(frame["dataset"]))}
    out["_m"] = out["model"].map(rank_model)
    out["_d"] = out["dataset"].map(rank_data)
    out["_g"] = out["group"].map(_group_rank)
    out = out.sort_values(["_m", "_d", "_g"], kind="stable").drop(columns=["_m", "_d", "_g"])
    return out.set_index(keys)[columns]


def write_table4(group_df: pd.DataFrame, stem: str | Path) -> dict[str, Path]:
    """:func:`table4` as ``<stem>.csv/.md/.tex`` (F1 raw, as the paper prints it)."""
    return write_table(table4(group_df), stem, scale={})


def _spreads_from_groups(group_df: pd.DataFrame) -> pd.DataFrame:
    """Per (model, method, seed, dataset, attribute): gap (max - min) and sigma (ddof=1) of each
    metric over the groups present, as eqpo.core.metrics computes them (NaN for the one-group "all")."""
    keys = [k for k in (*RUN_KEYS, "dataset", "attribute") if k in group_df.columns]
    grouped = group_df.groupby(keys, sort=False)
    out = {}
    for metric in METRICS:
        values = grouped[metric]
        count = values.count()
        gap = values.max() - values.min()
        out[f"{metric}_gap"] = gap.where(count >= 2)
        out[f"{metric}_sigma"] = values.std(ddof=1).where(count >= 2)
    return pd.DataFrame(out).reset_index()


def per_group_tables(group_df: pd.DataFrame, by_attribute_df: pd.DataFrame | None = None) -> dict[str, pd.DataFrame]:
    """Paper Tables 5-17: one table per dataset with every method's per-group metrics.

    group_df: :func:`eqpo.analysis.collect.read_group_tables` output. by_attribute_df (optional):
    per (model, method, seed, dataset, attribute) spreads with columns ``<metric>_gap`` and
    ``<metric>_sigma`` (e.g. :attr:`eqpo.core.metrics.FairnessReport.by_attribute` with model, method,
    seed added); by default they are computed from ``group_df`` (max - min and sample std over the
    groups present, exactly as the metrics do, since metrics.json stores the groups present).

    Returns {dataset: frame}, datasets in order of appearance. Each frame is indexed by
    (model, method) (models in order of appearance, methods in METHOD_ORDER) with columns
    ``<group>_<metric>`` for every group of the dataset (a1..a4, F, M; or "all") and metric in
    Acc, F1, TPR, FPR, FDR (mean over seeds), then the dataset's spread columns PP, EOD,
    FPR_diff, sigma_F1, delta_F1, sigma_Acc, delta_Acc (per seed the mean over the dataset's
    attributes, as metrics.json's by_dataset holds them; then the mean over seeds), and n_seeds.
    Raw fractions.
    """
    _check_groups(group_df)
    frame = group_df.assign(group=group_df["group"].astype(str))
    if "seed" not in frame.columns:
        frame = frame.assign(seed=0)
    spreads = _spreads_from_groups(frame) if by_attribute_df is None else by_attribute_df
    if "seed" not in spreads.columns:
        spreads = spreads.assign(seed=0)
    run_keys = ["model", "method", "seed", "dataset"]
    per_run = spreads.groupby(run_keys, sort=False)[[f"{m}_{s}" for m, s in SPREAD_COLUMNS.values()]].mean()
    per_run.columns = list(SPREAD_COLUMNS)
    per_run = per_run.reset_index()
    models = list(dict.fromkeys(frame["model"]))
    tables = {}
    for dataset, rows in frame.groupby("dataset", sort=False):
        groups = sorted(rows["group"].unique(), key=_group_rank)
        means = rows.groupby(["model", "method", "group"], sort=False)[list(METRICS)].mean()
        wide = means.unstack("group")
        wide.columns = [f"{g}_{m}" for m, g in wide.columns]
        wide = wide[[f"{g}_{m}" for g in groups for m in METRICS]]
        spread = (
            per_run[per_run["dataset"] == dataset].groupby(["model", "method"], sort=False)[list(SPREAD_COLUMNS)].mean()
        )
        table = wide.join(spread, how="left")
        table["n_seeds"] = rows.groupby(["model", "method"], sort=False)["seed"].nunique().astype("int64")
        order = {m: i for i, m in enumerate(order_methods(table.index.get_level_values("method")))}
        rank = {m: i for i, m in enumerate(models)}
        table = table.sort_index(key=lambda level: level.map(rank if level.name == "model" else order))
        tables[dataset] = table
    return tables


def per_group_scale(table: pd.DataFrame) -> dict[str, float]:
    """Print scale of a :func:`per_group_tables` frame's columns: Acc/TPR/FPR/FDR and the x100
    Table 2 columns x100, F1 and its spreads raw."""
    scale = {c: PAPER_SCALE[c] for c in SPREAD_COLUMNS if c in table.columns}
    for column in table.columns:
        metric = str(column).rsplit("_", 1)[-1]
        if column not in SPREAD_COLUMNS and metric in GROUP_METRIC_SCALE:
            scale[column] = GROUP_METRIC_SCALE[metric]
    return scale


def write_per_group_tables(
    group_df: pd.DataFrame, out_dir: str | Path, by_attribute_df: pd.DataFrame | None = None, prefix: str = "per_group_"
) -> dict[str, dict[str, Path]]:
    """Write each :func:`per_group_tables` table as ``<out_dir>/<prefix><dataset>.csv/.md/.tex``
    (Markdown/LaTeX with Acc, TPR, FPR, FDR and the x100 spreads in %, best per model in bold for
    the spread columns). Returns {dataset: {ext: path}}."""
    out = {}
    for dataset, table in per_group_tables(group_df, by_attribute_df).items():
        safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in str(dataset))
        out[dataset] = write_table(table, Path(out_dir) / f"{prefix}{safe}", scale=per_group_scale(table))
    return out
