"""The run-file contract: what every training backend (cpu, verl, trl) writes and :mod:`eqpo.analysis` reads.

A run directory ``results/<experiment>/<model>/<method>/seed<seed>/`` holds

- :data:`DYNAMICS_FILE` (``dynamics.jsonl``): one line per validation: ``step``, ``wall_time_s`` and the
  Table 2 summary of the validation answers (:func:`eqpo.core.metrics.fairness_summary`);
- :data:`STEPS_FILE` (``steps.jsonl``): one line per training step with :data:`STEP_KEYS` (seconds,
  mean reward in [0, 1]), ``unparsed_item_share/<dataset>`` and the estimator's statistics under
  :func:`estimator_metrics`' names;
- :data:`CLUSTERS_FILE` (``clusters.parquet``): :data:`CLUSTER_COLUMNS`, one row per (logged step,
  clustered prompt) of the methods that form implicit groups (0 rows for the others);
- :data:`PREDICTIONS_FILE` (``predictions.parquet``, the test split's answers) and :data:`METRICS_FILE`
  (``metrics.json``, the scored predictions).

A training checkpoint folder carries the estimator's state as :data:`ESTIMATOR_STATE_FILE`; resuming
from one without it is :func:`missing_estimator_state`'s error.

Estimator statistics reach the files through one interface: every estimator's
:meth:`eqpo.core.advantages.Estimator.last_stats` (an :class:`eqpo.core.advantages.EstimatorStats`), which
:func:`estimator_metrics` flattens into logger metrics and :func:`cluster_rows` into cluster-log rows.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from eqpo.core.advantages import EstimatorStats

DYNAMICS_FILE = "dynamics.jsonl"
STEPS_FILE = "steps.jsonl"
CLUSTERS_FILE = "clusters.parquet"
PREDICTIONS_FILE = "predictions.parquet"
METRICS_FILE = "metrics.json"
#: The cluster log a running trainer appends to (JSON lines with :data:`CLUSTER_COLUMNS`); it becomes
#: :data:`CLUSTERS_FILE` when the run completes.
CLUSTER_LOG_FILE = "clusters.jsonl"
#: The estimator state in a training checkpoint: one JSON file per checkpoint folder (every backend).
ESTIMATOR_STATE_FILE = "eqpo_estimator.json"

#: Columns of :data:`CLUSTERS_FILE`: sample_id (str), step (int), dataset (str), cluster (int, the
#: implicit group), k (int, groups chosen for the dataset at that step), true_group (str or None:
#: the prompt's demographic group, for the analysis only).
CLUSTER_COLUMNS: tuple[str, ...] = ("sample_id", "step", "dataset", "cluster", "k", "true_group")
#: Keys of every :data:`DYNAMICS_FILE` record before the Table 2 summary: the step of the validation
#: (0 = before training) and the seconds of training before it.
DYNAMICS_KEYS: tuple[str, ...] = ("step", "wall_time_s")
#: Keys of every :data:`STEPS_FILE` record: the step (1-based), the batch's mean reward and the
#: seconds of the whole step and of its generation, advantage and update phases.
STEP_KEYS: tuple[str, ...] = (
    "step",
    "reward_mean",
    "time_step_s",
    "time_generate_s",
    "time_advantage_s",
    "time_update_s",
)
#: Prefix of the per-dataset share of answer items that name no label (steps and dynamics records).
UNPARSED_SHARE_PREFIX = "unparsed_item_share/"
#: Prefixes of the estimator's statistics in logger metrics and :data:`STEPS_FILE` records: per group,
#: then the chosen k per dataset (see :func:`estimator_metrics`).
GROUP_METRIC_PREFIX = "eqpo/group/"
K_METRIC_PREFIX = "eqpo/k/"
_GROUP_STAT_KEYS = ("N", "rbar", "factor", "weight")


@dataclass(frozen=True)
class RunFiles:
    """The contract's files of one run directory (nothing is created)."""

    run_dir: Path
    dynamics: Path
    steps: Path
    clusters: Path
    predictions: Path
    metrics: Path

    @classmethod
    def for_run(cls, run_dir: str | Path) -> RunFiles:
        run = Path(run_dir)
        return cls(
            run_dir=run,
            dynamics=run / DYNAMICS_FILE,
            steps=run / STEPS_FILE,
            clusters=run / CLUSTERS_FILE,
            predictions=run / PREDICTIONS_FILE,
            metrics=run / METRICS_FILE,
        )


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)


def estimator_metrics(stats: EstimatorStats) -> dict[str, float]:
    """Flat logger metrics of one estimator call: ``eqpo/group/<dataset>/<group>/{N,rbar,factor,weight}``
    (finite values only) and ``eqpo/k/<dataset>``, as every backend logs them."""
    out: dict[str, float] = {}
    for row in stats.group_stats:
        prefix = f"{GROUP_METRIC_PREFIX}{row['dataset']}/{row['group']}"
        for key in _GROUP_STAT_KEYS:
            if _finite_number(row.get(key)):
                out[f"{prefix}/{key}"] = float(row[key])
    for dataset, value in stats.k.items():
        out[f"{K_METRIC_PREFIX}{dataset}"] = float(value)
    return out


def is_estimator_metric(name: str) -> bool:
    """Whether a logger metric name is one of :func:`estimator_metrics`' (it goes into :data:`STEPS_FILE`)."""
    return name.startswith((GROUP_METRIC_PREFIX, K_METRIC_PREFIX))


def parse_estimator_metric(name: str) -> tuple[str, str | None, str] | None:
    """The reading of an :func:`estimator_metrics` name: ``eqpo/group/<dataset>/<group>/<statistic>`` ->
    (dataset, group, statistic); ``eqpo/k/<dataset>`` -> (dataset, None, "k"); anything else -> None."""
    if name.startswith(K_METRIC_PREFIX):
        return name[len(K_METRIC_PREFIX) :], None, "k"
    if name.startswith(GROUP_METRIC_PREFIX):
        dataset, group, statistic = name[len(GROUP_METRIC_PREFIX) :].rsplit("/", 2)
        return dataset, group, statistic
    return None


def step_record(
    step: int,
    reward_mean: float,
    time_step_s: float,
    time_generate_s: float,
    time_advantage_s: float,
    time_update_s: float,
    unparsed_shares: Mapping[str, float] | None = None,
    stats: EstimatorStats | None = None,
) -> dict[str, Any]:
    """One :data:`STEPS_FILE` record: :data:`STEP_KEYS`, ``unparsed_item_share/<dataset>`` (share in
    [0, 1]) and the estimator's :func:`estimator_metrics`."""
    record: dict[str, Any] = {
        "step": int(step),
        "reward_mean": float(reward_mean),
        "time_step_s": float(time_step_s),
        "time_generate_s": float(time_generate_s),
        "time_advantage_s": float(time_advantage_s),
        "time_update_s": float(time_update_s),
    }
    record.update({f"{UNPARSED_SHARE_PREFIX}{d}": float(v) for d, v in sorted((unparsed_shares or {}).items())})
    if stats is not None:
        record.update(estimator_metrics(stats))
    return record


def cluster_rows(stats: EstimatorStats, step: int, prompts: Iterable[tuple[Any, Any, str, Any]]) -> list[dict]:
    """Cluster-log rows (:data:`CLUSTER_COLUMNS`) of one estimator call.

    ``prompts``: (prompt id as given to the estimator, sample id, dataset, true group) per prompt of the
    batch (repeats and prompt ids the estimator did not cluster are skipped). Rows come sorted by
    dataset, then sample id."""
    rows, done = [], set()
    for prompt_id, sample_id, dataset, true_group in prompts:
        if prompt_id in done or prompt_id not in stats.clusters:
            continue
        done.add(prompt_id)
        rows.append(
            {
                "sample_id": sample_id,
                "step": int(step),
                "dataset": dataset,
                "cluster": int(stats.clusters[prompt_id]),
                "k": int(stats.k.get(dataset, 0)),
                "true_group": true_group,
            }
        )
    return sorted(rows, key=lambda r: (str(r["dataset"]), str(r["sample_id"])))


class MissingEstimatorStateError(RuntimeError):
    """A checkpoint to resume from has no estimator state and no fresh start was asked for."""


def missing_estimator_state(checkpoint: Any, written_by: str) -> MissingEstimatorStateError:
    """The error for resuming from ``checkpoint`` without :data:`ESTIMATOR_STATE_FILE` (``written_by``:
    the trainer whose checkpoints carry it)."""
    return MissingEstimatorStateError(
        f"the checkpoint {checkpoint} has no {ESTIMATOR_STATE_FILE}: resuming from it would restart the stateful "
        "estimators (EQPO's history statistics, Group-DRO's weights) from nothing and change the run. Resume from "
        f"a checkpoint written by {written_by}, delete this checkpoint folder to start over, or set "
        "train.restart_estimator_on_resume: true to accept a fresh estimator."
    )
