"""verl 0.9.1's outputs -> the run-file contract of :mod:`eqpo.runs.files`.

Inputs, in the formats verl writes them (read from verl/trainer/ppo/v1/trainer_base.py and
verl/utils/tracking.py):

* validation dumps ``trainer.validation_data_dir/{step}.jsonl`` (PPOTrainer._write_generations): one
  line per generated answer with ``input, output, gts, score, step``, ``reward`` and every key our
  reward function returned (``reward_extra_info``: ``sample_id``, ``dataset``, ``prediction`` ...),
  and ``uid`` (random per validation). ``sample_id`` is what ties an answer to its demographics,
  which are read from the validation export;
* the file logger ``$VERL_FILE_LOGGER_PATH``: lines ``{"step": s, "data": {metric: value}}``; a step
  may have several lines (the initial validation; a resumed attempt re-validates its start step);
  training steps carry ``timing_s/{step,gen,adv,update_actor}`` and ``critic/score/mean``;
* the cluster log of our trainer (``+trainer.eqpo_cluster_log``): JSON lines with the
  ``clusters.parquet`` columns.

Outputs: ``dynamics.jsonl`` (one line per validation: step, wall_time_s, the Table 2 summary of the
validation answers, unparseable share), ``steps.jsonl`` (one line per training step) and
``clusters.parquet``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from eqpo.core.metrics import fairness_summary
from eqpo.core.rewards import LabelParser, as_label_list, score_response
from eqpo.core.vocabularies import DatasetSpec, get_spec, register_dataset
from eqpo.runs import files as run_files
from eqpo.runs import jsonl
from eqpo.runs.settings import ReproductionOptions

CLUSTER_COLUMNS = list(run_files.CLUSTER_COLUMNS)
PREDICTION_COLUMNS = ["sample_id", "dataset", "labels", "prediction", "age", "sex", "response", "reward"]

# steps.jsonl field -> verl metric names, first present wins (verl/trainer/ppo/metric_utils.py:
# compute_data_metrics and compute_timing_metrics; the timers are the marked_timer names of
# PPOTrainer.fit/_step_once). critic/score is the task reward before any KL penalty.
STEP_METRICS: dict[str, tuple[str, ...]] = {
    "reward_mean": ("critic/score/mean", "critic/rewards/mean"),
    "time_step_s": ("timing_s/step",),
    "time_generate_s": ("timing_s/gen",),
    "time_advantage_s": ("timing_s/adv",),
    "time_update_s": ("timing_s/update_actor",),
}
TRAINING_STEP_MARKER = "timing_s/step"
# eqpo.backends.verl.trainer's per-dataset share of unparseable answer items; in steps.jsonl as
# unparsed_item_share/<dataset>, as the CPU backend writes it.
UNPARSED_SHARE_PREFIX = "eqpo/unparsed_item_share/"
TESTING_TIMER = "timing_s/testing"


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


def read_jsonl(path: str | Path) -> list[dict]:
    """JSON lines of ``path``. A cut-off last line (a process killed mid-write) is dropped; a broken
    line elsewhere is an error naming the file and line."""
    return jsonl.read(path, complete=False)


def merge_file_logs(paths: Iterable[str | Path]) -> dict[int, dict]:
    """verl file-logger files (oldest attempt first) -> ``{step: metrics}``; lines of the same step
    are merged, later values replacing earlier ones."""
    merged: dict[int, dict] = {}
    for path in paths:
        for number, record in enumerate(read_jsonl(path), 1):
            if not isinstance(record, dict) or "step" not in record or not isinstance(record.get("data"), dict):
                raise ValueError(f"{path}: line {number} is not a verl file-logger record {{'step', 'data'}}")
            merged.setdefault(int(record["step"]), {}).update(record["data"])
    return dict(sorted(merged.items()))


def _first(metrics: Mapping[str, Any], names: Sequence[str]) -> float | None:
    for name in names:
        value = metrics.get(name)
        if value is not None:
            return float(value)
    return None


def step_records(metrics_by_step: Mapping[int, Mapping[str, Any]]) -> list[dict]:
    """One steps.jsonl record per training step (steps whose metrics carry ``timing_s/step``), with the
    step's per-dataset unparsed-item shares and the estimator's statistics where the trainer logged them."""
    records = []
    for step, metrics in metrics_by_step.items():
        if TRAINING_STEP_MARKER not in metrics:
            continue  # the initial validation (step 0) logs validation metrics only
        shares = {
            name[len("eqpo/") :]: float(value)
            for name, value in sorted(metrics.items())
            if name.startswith(UNPARSED_SHARE_PREFIX)
        }
        estimator = {
            name: float(value) for name, value in sorted(metrics.items()) if run_files.is_estimator_metric(name)
        }
        records.append(
            {
                "step": int(step),
                **{field: _first(metrics, names) for field, names in STEP_METRICS.items()},
                **shares,
                **estimator,
            }
        )
    return records


def wall_times(metrics_by_step: Mapping[int, Mapping[str, Any]]) -> dict[int, float]:
    """Seconds of training before the validation at each logged step: the step times up to and
    including that step plus the validations before it (as the CPU backend measures it)."""
    out: dict[int, float] = {}
    elapsed = 0.0
    for step, metrics in sorted(metrics_by_step.items()):
        elapsed += float(metrics.get(TRAINING_STEP_MARKER) or 0.0)
        out[int(step)] = round(elapsed, 3)
        elapsed += float(metrics.get(TESTING_TIMER) or 0.0)
    return out


# ----------------------------------------------------------------------------------------------
# Validation dumps -> predictions -> dynamics
# ----------------------------------------------------------------------------------------------


def _missing(value: Any) -> bool:
    """None, NaN or "" (our reward's sample_id when a row has none)."""
    return value is None or value == "" or (isinstance(value, float) and math.isnan(value))


def _parser(dataset: str, matching: str = "lenient") -> LabelParser | None:
    try:
        return LabelParser(get_spec(dataset).labels, matching)
    except KeyError:
        return None


def _labels(truth: Any, dataset: str) -> list[str]:
    """Ground truth (``"A, B"`` as exported, or a list) -> labels."""
    if not isinstance(truth, str):
        return [str(t) for t in truth]
    parser = _parser(dataset)
    return as_label_list(truth, parser) if parser else [t.strip() for t in truth.split(",") if t.strip()]


def _prediction(row: Mapping[str, Any], dataset: str, labels: list[str], options: ReproductionOptions) -> list[str]:
    """The parsed answer, read as the test-split evaluation reads it: the response (``output``) with
    ``options.extraction`` and ``options.matching`` (config ``metrics.extraction``,
    ``reward.matching``). The reward's ``prediction`` is used only when the row has no response or
    the dataset's vocabulary is unknown here."""
    parser = _parser(dataset, options.matching)
    output = row.get("output")
    if parser is not None and isinstance(output, str):
        return score_response(output, labels, parser, extraction=options.extraction).prediction
    given = row.get("prediction")
    if isinstance(given, (list, tuple)):
        return [str(p) for p in given]
    if isinstance(given, str):
        return parser.parse(given) if parser else [p.strip() for p in given.split(",") if p.strip()]
    raise ValueError(
        f"validation answers of dataset {dataset!r} carry no response (`output`) that can be parsed and no `prediction`"
    )


def read_val_reference(val_parquet: str | Path) -> pd.DataFrame:
    """The validation export indexed by ``sample_id``: dataset, ground truth, age, sex."""
    table = pd.read_parquet(val_parquet)
    for column in ("extra_info", "reward_model"):
        if column not in table:
            raise ValueError(f"{val_parquet}: column {column!r} is missing (not a verl export of eqpo.data.export)")
    info = pd.DataFrame(list(table["extra_info"]))
    missing = [c for c in ("sample_id", "dataset", "age", "sex") if c not in info]
    if missing:
        raise ValueError(f"{val_parquet}: extra_info lacks {missing}")
    ref = pd.DataFrame(
        {
            "sample_id": info["sample_id"].astype(str),
            "dataset": info["dataset"],
            "truth": [rm["ground_truth"] for rm in table["reward_model"]],
            "age": info["age"],
            "sex": info["sex"],
        }
    )
    if ref["sample_id"].duplicated().any():
        raise ValueError(f"{val_parquet}: sample_id is not unique")
    return ref.set_index("sample_id")


def _row_identity(row: Mapping[str, Any], ref: pd.DataFrame | None, where: str) -> dict:
    """sample_id, dataset, ground truth and demographics of one dumped answer: looked up in the
    validation export by the ``sample_id`` our reward returns, else taken from the row itself."""
    sample_id = row.get("sample_id")
    if not _missing(sample_id) and ref is not None:
        if str(sample_id) not in ref.index:
            raise ValueError(f"{where}: sample_id {sample_id!r} is not in the validation export")
        hit = ref.loc[str(sample_id)]
        return {
            "sample_id": str(sample_id),
            "dataset": hit["dataset"],
            "truth": hit["truth"],
            "age": hit["age"],
            "sex": hit["sex"],
        }
    missing = [k for k in ("dataset", "age", "sex") if k not in row]
    if missing or row.get("gts") is None:
        raise ValueError(
            f"{where}: a validation answer carries no sample_id (with the validation export) and no "
            f"{missing or ['gts']}; the reward function must return sample_id (and dataset) in its result dict"
        )
    return {
        "sample_id": None if _missing(sample_id) else str(sample_id),
        "dataset": row["dataset"],
        "truth": row["gts"],
        "age": row["age"],
        "sex": row["sex"],
    }


def validation_predictions(
    records: Sequence[Mapping[str, Any]],
    ref: pd.DataFrame | None = None,
    where: str = "validation dump",
    options: ReproductionOptions | None = None,
) -> pd.DataFrame:
    """Dumped validation answers -> a predictions table (docs/method.md §4.1: sample_id, dataset,
    labels, prediction, age, sex, response, reward). ``prediction``: the response read with
    ``options`` (default: the reproduction defaults, first box and strict matching), as
    :func:`eqpo.data.export.predictions_from_outputs` reads test answers."""
    options = options or ReproductionOptions()
    rows = []
    for row in records:
        ident = _row_identity(row, ref, where)
        labels = _labels(ident["truth"], ident["dataset"])
        rows.append(
            {
                "sample_id": ident["sample_id"],
                "dataset": ident["dataset"],
                "labels": labels,
                "prediction": _prediction(row, ident["dataset"], labels, options),
                "age": None if _missing(ident["age"]) else float(ident["age"]),
                "sex": None if _missing(ident["sex"]) else ident["sex"],
                "response": row.get("output"),
                "reward": None if row.get("score") is None else float(row["score"]),
            }
        )
    return pd.DataFrame(rows, columns=PREDICTION_COLUMNS)


def validation_dumps(validation_dir: str | Path) -> dict[int, Path]:
    """``{step: path}`` of the ``{step}.jsonl`` dumps, in step order."""
    directory = Path(validation_dir)
    dumps = {int(p.stem): p for p in directory.glob("*.jsonl") if p.stem.isdigit()} if directory.exists() else {}
    return dict(sorted(dumps.items()))


def dynamics_records(
    validation_dir: str | Path,
    val_parquet: str | Path | None,
    walls: Mapping[int, float] | None = None,
    options: ReproductionOptions | None = None,
) -> list[dict]:
    """One dynamics.jsonl record per validation dump: step, wall_time_s, the Table 2 summary
    (:func:`eqpo.core.metrics.fairness_summary` with ``options.class_set``, config ``metrics.class_set``,
    of the answers read with ``options.extraction``) and the share of unparseable answers."""
    options = options or ReproductionOptions()
    ref = read_val_reference(val_parquet) if val_parquet is not None else None
    walls = walls or {}
    records = []
    for step, path in validation_dumps(validation_dir).items():
        preds = validation_predictions(read_jsonl(path), ref, where=str(path), options=options)
        if preds.empty:
            raise ValueError(f"{path}: the validation dump is empty")
        records.append(
            {
                "step": step,
                "wall_time_s": walls.get(step, 0.0),
                **fairness_summary(preds, options.class_set),
                "unparseable": float((preds["prediction"].map(len) == 0).mean()),
            }
        )
    return records


# ----------------------------------------------------------------------------------------------
# Cluster log
# ----------------------------------------------------------------------------------------------


def read_cluster_log(path: str | Path | None) -> pd.DataFrame:
    """The trainer's cluster log (JSON lines with :data:`CLUSTER_COLUMNS`) as a table; an absent
    file (a method without clusters) gives an empty table. A prompt logged twice at the same step
    (a step redone after a resume) keeps its last assignment."""
    records = read_jsonl(path) if path is not None and Path(path).exists() else []
    if not records:
        return pd.DataFrame(
            {c: pd.Series(dtype="int64" if c in ("step", "cluster", "k") else "object") for c in CLUSTER_COLUMNS}
        )
    frame = pd.DataFrame(records)
    missing = [c for c in CLUSTER_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: cluster log records lack {missing} (expected {CLUSTER_COLUMNS})")
    frame = frame[CLUSTER_COLUMNS].drop_duplicates(["sample_id", "step"], keep="last")
    frame["sample_id"] = frame["sample_id"].astype(str)
    for column in ("step", "cluster", "k"):
        frame[column] = frame[column].astype("int64")
    frame["true_group"] = pd.Series(
        [None if _missing(g) else str(g) for g in frame["true_group"]], index=frame.index, dtype=object
    )
    return frame.sort_values(["step", "dataset", "sample_id"]).reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# One run
# ----------------------------------------------------------------------------------------------


def _write_jsonl(records: Iterable[Mapping[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(json.dumps(dict(r)) + "\n" for r in records))
    tmp.replace(path)


def register_custom_specs(data_dir: str | Path) -> None:
    """Register the specs of custom datasets that the cohort sidecar (``<data>/<exp>/cohort.parquet.specs.json``,
    next to the ``verl/`` export) describes, so their answers can be parsed."""
    sidecar = Path(data_dir).parent / "cohort.parquet.specs.json"
    if sidecar.exists():
        for d in json.loads(sidecar.read_text()):
            register_dataset(DatasetSpec(d["name"], tuple(d["labels"]), d["multi_label"], tuple(d["attributes"])))


def convert_run(paths: Any, val_parquet: str | Path, options: ReproductionOptions | None = None) -> dict[str, int]:
    """Write ``dynamics.jsonl``, ``steps.jsonl`` and ``clusters.parquet`` of one verl run.

    ``paths`` is a :class:`eqpo.backends.verl.launch.RunPaths`; ``options`` the config's reproduction
    options (metric class set and answer extraction of the validation). Returns the number of
    records written.
    """
    register_custom_specs(Path(val_parquet).parent)
    metrics = merge_file_logs(paths.file_logs())
    steps = step_records(metrics)
    if not steps:
        raise ValueError(f"verl's file log ({paths.file_log}) holds no training step: did the run train?")
    dynamics = dynamics_records(paths.validation_dir, val_parquet, wall_times(metrics), options)
    if not dynamics:
        raise ValueError(f"no validation dump in {paths.validation_dir} (trainer.validation_data_dir)")
    clusters = read_cluster_log(paths.cluster_log)
    _write_jsonl(steps, paths.steps)
    _write_jsonl(dynamics, paths.dynamics)
    clusters.to_parquet(paths.clusters, index=False)
    return {"steps": len(steps), "dynamics": len(dynamics), "clusters": len(clusters)}
