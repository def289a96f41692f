"""Read the files each training run wrote into tidy pandas frames.

A run directory is ``results/<experiment>/<model>/<method>/seed<seed>/`` and holds
``metrics.json``, ``dynamics.jsonl``, ``steps.jsonl`` and ``clusters.parquet`` (formats: see the
functions below). Every reader takes an iterable of file paths (``str`` or ``Path``), returns one
frame with the identifying columns ``model``, ``method``, ``seed`` first, and keeps values as
written (raw fractions, seconds); nothing is rescaled here. With no paths, each returns an empty
frame that still has its identifying columns.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from eqpo.core.metrics import TABLE2_COLUMNS
from eqpo.runs import jsonl
from eqpo.runs.files import CLUSTER_COLUMNS, DYNAMICS_KEYS, STEP_KEYS, parse_estimator_metric

RUN_KEYS = ("model", "method", "seed")
GROUP_COLUMNS = ("dataset", "attribute", "group", "n", "Acc", "F1", "TPR", "FPR", "FDR")
_SEED_DIR = re.compile(r"^seed(-?\d+)$")

PathLike = str | Path


def parse_run_path(path: PathLike) -> tuple[str, str, int]:
    """``.../<model>/<method>/seed<seed>[/<file>]`` -> (model, method, seed).

    The path may name the run directory itself or a file in it. Raises ValueError (naming the path
    and the expected layout) when no component ``seed<integer>`` sits where expected or when the
    model or method component is missing.
    """
    parts = Path(path).parts
    if parts and _SEED_DIR.match(parts[-1]):
        seed_at = len(parts) - 1
    elif len(parts) >= 2 and _SEED_DIR.match(parts[-2]):
        seed_at = len(parts) - 2
    else:
        raise ValueError(
            f"cannot read model/method/seed from path {str(path)!r}: expected "
            "'.../<model>/<method>/seed<integer>/<file>' (e.g. "
            "'results/main/medgemma-4b/eqpo/seed0/metrics.json')"
        )
    if seed_at < 2 or not parts[seed_at - 1].strip("/") or not parts[seed_at - 2].strip("/"):
        raise ValueError(
            f"path {str(path)!r} has a seed directory but no '<model>/<method>/' before it; "
            "expected '.../<model>/<method>/seed<integer>/<file>'"
        )
    seed = int(_SEED_DIR.match(parts[seed_at]).group(1))
    return parts[seed_at - 2], parts[seed_at - 1], seed


def _load_json(path: PathLike) -> dict:
    """Parse one JSON file, re-raising a parse error with the path in the message."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err


def _load_jsonl(path: PathLike) -> list[dict]:
    """Records of a finished run's JSON-lines file (blank lines skipped); a bad line, the last one
    included, is reported by number."""
    return jsonl.read(path, complete=True)


def _float(value: object) -> float:
    """JSON number (or null) -> float; null -> NaN."""
    return math.nan if value is None else float(value)


def _run_identity(path: PathLike, record: dict) -> tuple[str, str, int]:
    """(model, method, seed) of a metrics.json: its own fields, checked against its path.

    The fields win; the path only serves to catch a file sitting in the wrong run directory
    (ValueError on disagreement). A path that does not follow the layout is not checked.
    """
    missing = [key for key in RUN_KEYS if key not in record]
    if missing:
        raise ValueError(f"{path}: metrics.json lacks the field(s) {missing}")
    identity = (str(record["model"]), str(record["method"]), int(record["seed"]))
    try:
        from_path = parse_run_path(path)
    except ValueError:
        return identity
    if from_path != identity:
        raise ValueError(f"{path}: the file says (model, method, seed) = {identity} but its directory says {from_path}")
    return identity


def _check_unique_runs(frame: pd.DataFrame, what: str) -> None:
    """ValueError when two files describe the same (model, method, seed) run."""
    duplicated = frame.duplicated(list(RUN_KEYS), keep=False)
    if duplicated.any():
        runs = frame.loc[duplicated, list(RUN_KEYS)].drop_duplicates().to_records(index=False)
        raise ValueError(f"{what}: several files for the same run(s) {[tuple(r) for r in runs]}")


def read_metrics(paths: Iterable[PathLike]) -> pd.DataFrame:
    """One row per run from ``metrics.json`` files.

    Returns columns model (str), method (str), seed (int), then the 11 :data:`TABLE2_COLUMNS`
    (float, raw fractions as written; JSON null -> NaN), in the order of ``paths``.
    Raises ValueError for a summary lacking a Table 2 key, for identity fields that contradict
    the run directory, and for two files of the same run.
    """
    rows = []
    for path in paths:
        record = _load_json(path)
        summary = record.get("summary", {})
        missing = [column for column in TABLE2_COLUMNS if column not in summary]
        if missing:
            raise ValueError(f"{path}: 'summary' lacks the Table 2 column(s) {missing}")
        row = dict(zip(RUN_KEYS, _run_identity(path, record), strict=False))
        row.update({column: _float(summary[column]) for column in TABLE2_COLUMNS})
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*RUN_KEYS, *TABLE2_COLUMNS])
    frame["seed"] = frame["seed"].astype("int64")
    _check_unique_runs(frame, "read_metrics")
    return frame


def _with_run_columns(frame: pd.DataFrame, path: PathLike) -> pd.DataFrame:
    """Prepend model, method, seed (parsed from ``path``) to a per-run frame."""
    model, method, seed = parse_run_path(path)
    frame = frame.drop(columns=[c for c in RUN_KEYS if c in frame.columns])
    frame.insert(0, "seed", seed)
    frame.insert(0, "method", method)
    frame.insert(0, "model", model)
    return frame


def _concat(frames: list[pd.DataFrame], columns: Iterable[str]) -> pd.DataFrame:
    """Concatenate per-run frames; an empty list gives an empty frame with ``columns``."""
    frames = [f for f in frames if len(f.columns)]
    if not frames:
        return pd.DataFrame(columns=[*RUN_KEYS, *columns])
    out = pd.concat(frames, ignore_index=True)
    out["seed"] = out["seed"].astype("int64")
    return out


def _read_jsonl_runs(paths: Iterable[PathLike], columns: Iterable[str]) -> pd.DataFrame:
    """Concatenate JSON-lines files of several runs, each row tagged with its run."""
    columns = list(columns)
    frames = []
    for path in paths:
        records = _load_jsonl(path)
        frame = pd.DataFrame(records) if records else pd.DataFrame(columns=columns)
        frames.append(_with_run_columns(frame, path))
    return _concat(frames, columns)


def read_dynamics(paths: Iterable[PathLike]) -> pd.DataFrame:
    """Validation curves from ``dynamics.jsonl`` files (one JSON object per validation).

    Returns one row per (run, validation): model, method, seed (from each path, see
    :func:`parse_run_path`), step (int), wall_time_s (seconds since the run started), and the 11
    :data:`TABLE2_COLUMNS` (raw fractions), plus any other keys the files hold.
    """
    return _read_jsonl_runs(paths, [*DYNAMICS_KEYS, *TABLE2_COLUMNS])


def read_steps(paths: Iterable[PathLike]) -> pd.DataFrame:
    """Per-training-step log from ``steps.jsonl`` files.

    Returns one row per (run, step): model, method, seed (from each path), step, reward_mean
    (mean reward of the batch, in [0, 1]), time_step_s, time_generate_s, time_advantage_s,
    time_update_s (seconds), plus any other keys the files hold.
    """
    return _read_jsonl_runs(paths, list(STEP_KEYS))


def estimator_statistics(steps: pd.DataFrame) -> pd.DataFrame:
    """The estimator's per-step statistics held in :func:`read_steps` output, in long form.

    Returns one row per (run, step, dataset, group, statistic): model, method, seed, step, dataset,
    group (None for the chosen k), statistic (N: prompts or cluster size; rbar: mean reward;
    factor: EQPO's divisor; weight: Group DRO's C * q_c; k: implicit groups chosen) and value.
    Steps and runs without statistics (estimators without groups) contribute no rows.
    """
    columns = [*RUN_KEYS, "step", "dataset", "group", "statistic", "value"]
    parsed = {c: parse_estimator_metric(c) for c in steps.columns}
    metric_columns = [c for c, p in parsed.items() if p is not None]
    if not metric_columns or steps.empty:
        return pd.DataFrame(columns=columns)
    long = steps.melt(id_vars=[*RUN_KEYS, "step"], value_vars=metric_columns, var_name="metric").dropna(
        subset=["value"]
    )
    keys = pd.DataFrame(
        [parsed[m] for m in long["metric"]], columns=["dataset", "group", "statistic"], index=long.index
    )
    out = pd.concat([long.drop(columns="metric"), keys], axis=1)[columns]
    out["group"] = pd.Series([g if isinstance(g, str) else None for g in out["group"]], index=out.index, dtype=object)
    return out.sort_values([*RUN_KEYS, "step", "dataset", "statistic"], kind="stable").reset_index(drop=True)


def read_clusters(paths: Iterable[PathLike]) -> pd.DataFrame:
    """Cluster assignments from ``clusters.parquet`` files (files with 0 rows are fine).

    Returns one row per (run, step, prompt): model, method, seed (from each path), sample_id (str),
    step (int), dataset (str), cluster (int), k (int, the k chosen for that dataset at that step),
    true_group (str, or None where the prompt has no demographic group).
    """
    frames = []
    for path in paths:
        frame = pd.read_parquet(path)
        missing = [c for c in CLUSTER_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"{path}: clusters file lacks column(s) {missing}")
        frames.append(_with_run_columns(frame, path))
    out = _concat(frames, CLUSTER_COLUMNS)
    for column in ("step", "cluster", "k"):
        if len(out):
            out[column] = out[column].astype("int64")
    return out


def read_group_tables(paths: Iterable[PathLike]) -> pd.DataFrame:
    """Per-group metrics (``by_group`` of ``metrics.json``) of several runs, stacked.

    Returns one row per (run, dataset, attribute, group): model, method, seed (from the files), then
    dataset, attribute ("age", "sex", or "all"), group ("a1".."a4", "F", "M", or "all"), n (rows in
    the group), Acc, F1, TPR, FPR, FDR (raw fractions): the paper's Tables 4-17.
    """
    frames = []
    for path in paths:
        record = _load_json(path)
        model, method, seed = _run_identity(path, record)
        frame = pd.DataFrame(record.get("by_group", []), columns=list(GROUP_COLUMNS))
        frame.insert(0, "seed", seed)
        frame.insert(0, "method", method)
        frame.insert(0, "model", model)
        frames.append(frame)
    return _concat(frames, GROUP_COLUMNS)


def read_unparseable_share(paths: Iterable[PathLike]) -> pd.DataFrame:
    """Share of unparseable answers per run and dataset (``unparseable_share`` of metrics.json).

    Returns columns model, method, seed, dataset, unparseable_share (fraction in [0, 1]).
    """
    rows = []
    for path in paths:
        record = _load_json(path)
        identity = dict(zip(RUN_KEYS, _run_identity(path, record), strict=False))
        for dataset, share in record.get("unparseable_share", {}).items():
            rows.append({**identity, "dataset": dataset, "unparseable_share": _float(share)})
    frame = pd.DataFrame(rows, columns=[*RUN_KEYS, "dataset", "unparseable_share"])
    frame["seed"] = frame["seed"].astype("int64")
    return frame
