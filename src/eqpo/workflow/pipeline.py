"""The workflow's steps as plain functions: each Snakemake script is a thin call into one of these,
so every step can be run and tested without Snakemake.

A run directory ``results/<experiment>/<model>/<method>/seed<seed>/`` holds the files of
:mod:`eqpo.runs.files`: ``dynamics.jsonl``, ``steps.jsonl``, ``clusters.parquet`` (training, every
backend), ``predictions.parquet`` (test split, docs/method.md §4.1) and ``metrics.json`` (scored
predictions).
"""

from __future__ import annotations

import contextlib
import json
import logging
import sys
import traceback
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from eqpo.analysis.report_point import ReportPoint
from eqpo.core.metrics import FairnessReport, unparseable_share
from eqpo.data.cohort_table import read_cohort, write_cohort
from eqpo.runs.settings import ReproductionOptions

if TYPE_CHECKING:
    from eqpo.runs.settings import RunSettings

log = logging.getLogger("eqpo")


@contextlib.contextmanager
def logged(path: str | Path | None) -> Iterator[None]:
    """Send stdout, stderr and the ``eqpo`` logger to ``path`` for the duration (a rule's log).

    A failure is written into the log before stderr is restored, so the log ends with it: the
    traceback of an exception, the message of ``SystemExit("...")``, the status of ``SystemExit(n)``
    with n != 0. The exception then propagates as usual (Snakemake marks the job failed)."""
    if path is None:
        yield
        return
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as handle, contextlib.redirect_stdout(handle), contextlib.redirect_stderr(handle):
        handler = logging.StreamHandler(handle)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        try:
            yield
        except SystemExit as stop:
            if stop.code not in (None, 0):
                handle.write(f"exit status {stop.code}\n" if isinstance(stop.code, int) else f"{stop.code}\n")
            raise
        except BaseException:
            traceback.print_exc(file=handle)
            raise
        finally:
            handle.flush()
            log.removeHandler(handler)


def _say(message: str) -> None:
    log.info(message)


def with_custom(table: pd.DataFrame, custom: list[dict] | None) -> pd.DataFrame:
    """Append the user's own datasets (config data.custom) to a cohort table."""
    from eqpo.data.custom import load_custom

    if not custom:
        return table
    parts = [p for p in (table, *(load_custom(entry) for entry in custom)) if not p.empty]
    # Datasets may have different numbers of feature columns f0..fN (the CPU backend gives each its
    # own input width; see eqpo.backends.cpu.trainer.feature_widths): the missing ones stay empty.
    return pd.concat(parts, ignore_index=True) if parts else table


def _nothing_listed(datasets: list, custom: list | None) -> None:
    if not datasets and not custom:
        raise ValueError(
            "data.datasets is empty and data.custom has no entries: there is nothing to train on; "
            "list paper datasets under data.datasets or your own under data.custom"
        )


def make_demo_cohort(
    settings: dict,
    datasets: list[str],
    out: str | Path,
    summary_out: str | Path,
    custom: list[dict] | None = None,
    table1_stem: str | Path | None = None,
) -> None:
    """The synthetic demo cohort of the listed paper datasets (settings: CohortConfig fields), plus
    the user's own datasets with feature columns."""
    from eqpo.core.vocabularies import get_spec
    from eqpo.data.demo.cohort import CohortConfig, describe_cohort, make_cohort

    _nothing_listed(datasets, custom)
    if datasets:
        table = make_cohort(CohortConfig.from_dict(settings), datasets={name: get_spec(name) for name in datasets})
    else:  # only the user's own datasets
        table = pd.DataFrame()
    table = with_custom(table, custom)
    for true, seen in (("true_age", "age"), ("true_sex", "sex"), ("true_group", "group")):
        if true not in table:  # custom datasets only: what is recorded is all there is
            table[true] = table[seen]
    write_cohort(table, out, custom)
    Path(summary_out).parent.mkdir(parents=True, exist_ok=True)
    describe_cohort(table).to_csv(summary_out, index=False)
    if table1_stem is not None:
        from eqpo.analysis.tables import write_table
        from eqpo.data.table1 import table1

        write_table(table1(table).set_index("dataset"), table1_stem, scale={})
    _say(f"demo cohort: {len(table)} samples over {table['dataset'].nunique()} datasets -> {out}")


def run_prepare_dataset(
    name: str,
    root: str | Path,
    seed: int,
    fractions: list[float],
    skip_unavailable: bool,
    releases: dict[str, str] | None = None,
) -> None:
    """Obtain and preprocess one real dataset; missing data stops with instructions and exit status 3,
    a download that keeps failing with one line (no traceback) and exit status 1. ``releases``:
    dataset -> release, for datasets with several (config data.hemorrhage_release)."""
    from eqpo.data.fetch import DownloadError
    from eqpo.data.prepare import prepare
    from eqpo.data.sources import MissingDataError

    try:
        table = prepare(name, root, seed, tuple(fractions), skip_unavailable, release=(releases or {}).get(name))
    except MissingDataError as err:
        print(err, file=sys.stderr)
        raise SystemExit(err.exit_status) from None
    except DownloadError as err:
        raise SystemExit(f"{name}: {err}") from None
    _say(f"{name}: {len(table)} samples")


def build_cohort(tables: list, out: str | Path, table1_stem: str | Path, custom: list[dict] | None = None) -> None:
    """Merge the per-dataset tables (and custom datasets) into one cohort; render paper Table 1."""
    from eqpo.analysis.tables import write_table
    from eqpo.data.sources import TABLE_COLUMNS
    from eqpo.data.table1 import table1

    _nothing_listed(tables, custom)
    parts = [pd.read_parquet(t) for t in tables]
    skipped = [Path(t).parent.name for t, part in zip(tables, parts, strict=False) if part.empty]
    if skipped:
        _say(f"datasets skipped as unavailable (data.skip_unavailable): {skipped}")
    available = [p for p in parts if not p.empty]
    base = pd.concat(available, ignore_index=True) if available else pd.DataFrame(columns=list(TABLE_COLUMNS))
    cohort = with_custom(base, custom)
    if cohort.empty:
        raise SystemExit("no dataset is available: every dataset was skipped")
    write_cohort(cohort, out, custom)
    write_table(table1(cohort).set_index("dataset"), table1_stem, scale={})
    _say(f"cohort: {len(cohort)} samples over {cohort['dataset'].nunique()} datasets -> {out}")


def run_export_verl(
    cohort: str | Path,
    root: str | Path,
    out_dir: str | Path,
    seed: int,
    custom: list[dict] | None = None,
    group_definition: str = "paper",
    records: str = "all",
    covid_blues_options: bool = True,
) -> None:
    """The verl parquet files; the ``group`` the estimators read and the cells GRPO+RS balances
    follow ``group_definition`` (config ``groups.definition``); ``records`` and
    ``covid_blues_options``: config ``data.records`` and ``data.covid_blues_options``."""
    from eqpo.core.groups import regroup
    from eqpo.data.export import export_verl

    questions = {entry["name"]: entry["question"] for entry in custom or [] if "question" in entry}
    paths = export_verl(
        regroup(read_cohort(cohort), group_definition),
        root,
        out_dir,
        seed,
        questions,
        group_definition=group_definition,
        records=records,
        list_options=covid_blues_options,
    )
    _say("verl parquet files: " + ", ".join(str(p) for p in paths.values()))


def run_pretrain(cohort: str | Path, model: dict, settings: dict, seed: int, out: str | Path) -> None:
    from eqpo.backends.cpu.policy import PolicyConfig
    from eqpo.backends.cpu.trainer import PretrainConfig, feature_columns, feature_widths, pretrain, save_policy

    table = read_cohort(cohort)
    n_features = len(feature_columns(table))
    widths = feature_widths(table)
    arch = {k: v for k, v in model.items() if k != "backend"}
    if any(w != n_features for w in widths.values()):  # datasets with different numbers of features
        arch["input_widths"] = widths
        _say("per-dataset input widths: " + ", ".join(f"{d} {w}" for d, w in widths.items()))
    policy = pretrain(
        table, PolicyConfig(n_features=n_features, **arch), PretrainConfig.from_dict(settings), seed, log=_say
    )
    save_policy(policy, out)


def run_train_cpu(
    cohort: str | Path,
    pretrained: str | Path,
    settings: RunSettings,
    seed: int,
    run_dir: str | Path,
    cpu: Mapping[str, Any] | None = None,
    stop_after: int | None = None,
) -> None:
    """One RL run of the CPU backend: ``settings`` (:meth:`eqpo.runs.settings.RunSettings.from_config`)
    gives the method, its estimator options, the `train` settings and the reproduction options (the
    run's own reward); ``cpu`` is the config's ``cpu`` block (probe_prompts, threads). The
    ``models.<m>`` entry is read at the warm start (:func:`run_pretrain`), not here."""
    from eqpo.backends.cpu.trainer import RLTrainer, TrainConfig

    trainer = RLTrainer(
        read_cohort(cohort),
        pretrained,
        settings.method,
        dict(settings.estimator),
        TrainConfig.from_settings(settings.train, cpu),
        seed,
        run_dir,
        log=_say,
        options=settings.options,
    )
    _say(
        f"{settings.method} seed {seed}: {trainer.total_steps} steps of {trainer.config.batch_prompts} prompts x "
        f"{trainer.config.rollouts} rollouts on {len(trainer.train)} training prompts"
    )
    trainer.fit(stop_after=stop_after)


def run_predict_cpu(
    cohort: str | Path,
    policy_path: str | Path,
    out: str | Path,
    split: str = "test",
    options: ReproductionOptions | None = None,
) -> None:
    """Greedy answers of a CPU policy on one split -> predictions parquet. ``options``: the run's
    reproduction options (its reward and matching score the ``reward`` column; ``extraction`` reads
    the answer); default :class:`eqpo.runs.settings.ReproductionOptions`."""
    from eqpo.backends.cpu.trainer import Cohort, Scorer, load_policy, predict, specs_for
    from eqpo.backends.cpu.trainer import split as split_of
    from eqpo.runs.settings import ReproductionOptions

    table = read_cohort(cohort)
    specs = specs_for(table)
    opts = options or ReproductionOptions()
    preds = predict(
        load_policy(policy_path),
        Cohort(split_of(table, split), specs),
        Scorer.from_options(specs, opts),
        opts.extraction,
    )
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    preds.to_parquet(out, index=False)
    _say(f"{len(preds)} {split} predictions -> {out}")


def score_predictions(
    predictions: str | Path, out: str | Path, options: ReproductionOptions | None = None, **run: Any
) -> dict:
    """predictions.parquet -> metrics.json with the Table 2 summary and the per-group tables.

    ``options``: the run's reproduction options (default: the reproduction defaults);
    ``class_set`` picks the classes a group's rates average over, and every option is recorded
    under ``options``."""
    opts = options or ReproductionOptions()
    preds = pd.read_parquet(predictions)
    for col in ("labels", "prediction"):
        preds[col] = preds[col].map(list)
    report = FairnessReport.from_predictions(preds, opts.class_set)
    result = {
        **run,
        "options": opts.config_rows(),
        "summary": report.overall,
        "by_dataset": json.loads(report.by_dataset.to_json(orient="records")),
        "by_group": json.loads(report.by_group.to_json(orient="records")),
        "unparseable_share": {str(k): float(v) for k, v in unparseable_share(preds).items()},
    }
    if "unparsed_items" in preds and "items" in preds:
        items = preds.groupby("dataset")[["unparsed_items", "items"]].sum()
        result["unparsed_item_share"] = {
            str(d): float(r["unparsed_items"] / r["items"]) if r["items"] else 0.0 for d, r in items.iterrows()
        }
    Path(out).write_text(json.dumps(result, indent=1))
    _say("; ".join(f"{k}={v:.4f}" for k, v in report.overall.items()))
    return result


# ----------------------------------------------------------------------------------------------
# Aggregation, tables and figures
# ----------------------------------------------------------------------------------------------


def render_dynamics(
    dynamics: list, steps: list, out_dynamics: str | Path, out_steps: str | Path, out_timing: str | Path
) -> None:
    from eqpo.analysis.collect import read_dynamics, read_steps
    from eqpo.analysis.tables import timing_summary

    read_dynamics(dynamics).to_csv(out_dynamics, index=False)
    step_table = read_steps(steps)
    step_table.to_csv(out_steps, index=False)
    Path(out_timing).parent.mkdir(parents=True, exist_ok=True)
    timing_summary(step_table).to_csv(out_timing)
    _say(f"{len(dynamics)} runs -> {out_dynamics}, {out_steps}, {out_timing}")


def options_note(options: ReproductionOptions) -> str:
    """One line naming the reproduction options a table's numbers were produced with."""
    return "Options: " + ", ".join(f"{k} = {v}" for k, v in options.config_rows().items()) + "."


def render_table2(
    metrics: list,
    stem: str | Path,
    options: ReproductionOptions | None = None,
    point: ReportPoint | None = None,
    dynamics: list | None = None,
    test_stem: str | Path | None = None,
) -> None:
    """Table 2 of the runs at ``point`` (default: each run's last validation;
    :mod:`eqpo.analysis.report_point`; validation points read ``dynamics``), with the reproduction
    ``options`` and the point named under the table; ``test_stem``: the final checkpoints' test
    scores too."""
    from eqpo.analysis.collect import read_dynamics, read_metrics
    from eqpo.analysis.report_point import FINAL_TEST, reported_rows

    options = options or ReproductionOptions()
    point = point or ReportPoint()
    frame = read_metrics(metrics)
    rows = reported_rows(frame, read_dynamics(dynamics or []), point)
    _write_table2(rows, stem, options_note(options) + " " + point.describe())
    _say(f"Table 2 ({point.point}) from {len(metrics)} runs -> {stem}.csv/.md/.tex")
    if test_stem is not None:
        _write_table2(frame, test_stem, options_note(options) + " " + FINAL_TEST.describe())
        _say(f"final checkpoints on the test split -> {test_stem}.csv/.md/.tex")


def _write_table2(rows: pd.DataFrame, stem: str | Path, note: str) -> None:
    from eqpo.analysis.tables import table2, table2_std, write_table

    std = table2_std(rows) if rows["seed"].nunique() > 1 else None
    write_table(table2(rows), stem, std=std, note=note)


def render_cluster_stability(clusters: list, out_per_step: str | Path, stem: str | Path) -> None:
    from eqpo.analysis.collect import read_clusters
    from eqpo.analysis.tables import cluster_stability, cluster_stability_summary, write_table

    per_step = cluster_stability(read_clusters(clusters))
    per_step.to_csv(out_per_step, index=False)
    write_table(cluster_stability_summary(per_step), stem, scale={})
    _say(f"cluster stability of {len(clusters)} runs -> {out_per_step}, {stem}.csv/.md/.tex")


# ----------------------------------------------------------------------------------------------
# Uncertainty, paper comparison, the other paper tables
# ----------------------------------------------------------------------------------------------


def _pooled_predictions(paths: list) -> dict[tuple[str, str], pd.DataFrame]:
    """(model, method) -> the test predictions of all its seeds, sample ids made unique per seed
    ("<sample_id>#s<seed>") so a bootstrap resamples (sample, seed) units."""
    from eqpo.analysis.collect import parse_run_path

    pooled: dict[tuple[str, str], list[pd.DataFrame]] = {}
    for path in paths:
        model, method, seed = parse_run_path(path)
        preds = pd.read_parquet(path)
        for col in ("labels", "prediction"):
            preds[col] = preds[col].map(list)
        preds["sample_id"] = preds["sample_id"].astype(str) + f"#s{seed}"
        pooled.setdefault((model, method), []).append(preds)
    return {key: pd.concat(parts, ignore_index=True) for key, parts in pooled.items()}


def render_uncertainty(
    predictions: list,
    ci_stem: str | Path,
    tests_stem: str | Path,
    n_boot: int,
    level: float = 0.95,
    seed: int = 0,
    reference: str = "eqpo",
    class_set: str = "dataset",
) -> None:
    """Bootstrap CIs of every Table 2 metric per (model, method) (test samples resampled within each
    dataset, seeds pooled) and paired bootstrap tests of ``reference`` against every other method;
    ``class_set`` as ``metrics.class_set``."""
    from eqpo.analysis.style import order_methods
    from eqpo.analysis.uncertainty import bootstrap_summary, paired_bootstrap
    from eqpo.core.metrics import TABLE2_COLUMNS

    pooled = _pooled_predictions(predictions)
    rows, tests = [], []
    for (model, method), preds in sorted(pooled.items()):
        ci = bootstrap_summary(preds, n_boot=n_boot, seed=seed, level=level, class_set=class_set)
        for column in TABLE2_COLUMNS:
            rows.append({"model": model, "method": method, "column": column, **ci.loc[column].to_dict()})
        if method != reference and (model, reference) in pooled:
            test = paired_bootstrap(
                pooled[(model, reference)], preds, n_boot=n_boot, seed=seed, level=level, class_set=class_set
            )
            for column in TABLE2_COLUMNS:
                tests.append(
                    {
                        "model": model,
                        "reference": reference,
                        "baseline": method,
                        "column": column,
                        **test.loc[column].to_dict(),
                    }
                )
    ci_table = pd.DataFrame(rows)
    Path(ci_stem).parent.mkdir(parents=True, exist_ok=True)
    ci_table.to_csv(f"{ci_stem}.csv", index=False)
    # dropna=False: a column undefined for every run (a gap with one group) is still a column
    wide = ci_table.pivot_table(
        index=["model", "method"], columns="column", values=["estimate", "lo", "hi"], dropna=False
    )
    text = {
        c: wide["estimate"][c].map("{:.4f}".format)
        + " ["
        + wide["lo"][c].map("{:.4f}".format)
        + ", "
        + wide["hi"][c].map("{:.4f}".format)
        + "]"
        for c in TABLE2_COLUMNS
    }
    md = pd.DataFrame(text)
    order = order_methods(sorted({method for _, method in pooled}))
    md = md.loc[sorted(md.index, key=lambda key: (key[0], order.index(key[1])))]
    Path(f"{ci_stem}.md").write_text(
        f"Final checkpoints on the test split with {level:.0%} bootstrap intervals "
        f"({n_boot} replicates, raw "
        f"fractions; metrics.class_set = {class_set})\n\n" + md.to_markdown() + "\n"
    )
    test_table = pd.DataFrame(
        tests, columns=["model", "reference", "baseline", "column", "diff", "lo", "hi", "p_value", "a", "b"]
    )
    test_table.to_csv(f"{tests_stem}.csv", index=False)
    if not test_table.empty:
        p_wide = test_table.pivot_table(index=["model", "baseline"], columns="column", values="p_value")
        p_wide = p_wide[[c for c in TABLE2_COLUMNS if c in p_wide]]
        p_wide.to_csv(f"{tests_stem}_p.csv")
        Path(f"{tests_stem}_p.md").write_text(
            f"Paired bootstrap p-values, {reference} vs each baseline (two-sided, {n_boot} replicates)\n\n"
            + p_wide.reset_index().to_markdown(index=False, floatfmt=".4f")
            + "\n"
        )
    _say(f"bootstrap intervals of {len(pooled)} (model, method) pairs; {len(tests) // 11} paired tests")


def render_paper_comparison(metrics: list, steps: list, dynamics: list, config: dict, out_dir: str | Path) -> None:
    """Table 2 and Table 4 next to the paper's numbers, and the paper's claims recomputed."""
    from eqpo.analysis.collect import read_dynamics, read_group_tables, read_metrics, read_steps
    from eqpo.analysis.paper import (
        paper_vs_reproduction_table2,
        paper_vs_reproduction_table4,
        recompute_claims,
        write_comparison,
    )
    from eqpo.analysis.report_point import ReportPoint, reported_rows
    from eqpo.analysis.tables import table2

    out_dir = Path(out_dir)
    point = ReportPoint.from_config(config)
    ours = table2(reported_rows(read_metrics(metrics), read_dynamics(dynamics), point))
    write_comparison(paper_vs_reproduction_table2(ours, config=config, point=point), out_dir / "paper_vs_ours_table2")
    write_comparison(
        paper_vs_reproduction_table4(read_group_tables(metrics), config=config), out_dir / "paper_vs_ours_table4"
    )
    claims = recompute_claims(ours, read_steps(steps), read_dynamics(dynamics), config=config)
    claims.to_csv(out_dir / "claims.csv", index=False)
    (out_dir / "claims.md").write_text(claims.to_markdown(index=False) + "\n")
    _say(f"paper comparison -> {out_dir}")


def render_plan(config: dict, out: str | Path) -> None:
    """The compute plan of ``config`` (GPU-hours and disk per run and in all) as Markdown."""
    from eqpo.analysis.plan import plan_markdown

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(plan_markdown(config))
    _say(f"compute plan -> {out}")


def render_paper_tables(metrics: list, config: dict, out_dir: str | Path) -> None:
    """Paper Table 3 (settings used), Table 4 (per-group F1, EQPO vs GRPO) and Tables 5-17."""
    from eqpo.analysis.collect import read_group_tables
    from eqpo.analysis.paper_tables import write_per_group_tables, write_table3, write_table4

    out_dir = Path(out_dir)
    groups = read_group_tables(metrics)
    write_table3(config, out_dir / "table3")
    write_table4(groups, out_dir / "table4")
    write_per_group_tables(groups, out_dir / "per_group", prefix="")
    _say(f"Tables 3, 4 and 5-17 -> {out_dir}")
