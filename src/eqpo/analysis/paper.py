"""The paper's published numbers next to a reproduction's (Table 2, Table 4, headline claims).

The paper data ship with the package (``eqpo/analysis/paper_data/``, transcribed from the
FairGRPO/EQPO paper; see its README.md): ``table2_main.csv`` (printed at the paper's scales: PP,
EOD, FPR_diff, sigma_Acc, delta_Acc, Acc, Acc_ES x100), ``table4_group_f1.csv`` (per-group F1 of
GRPO and EQPO on MedGemma-4B) and ``claims.csv`` (relative claims from the abstracts and text).

Names: the paper calls EQPO "FairGRPO" (or "EQPO") and EQPO-ND "FairGRPO_ND";
:data:`PAPER_METHOD_NAMES` maps every spelling to our method ids. Base models map to our model ids through
:data:`PAPER_MODEL_NAMES` plus a config-driven match (:func:`paper_model_map`): a configured model
whose id or weights path names the same model (ignoring case, punctuation and the tokens "vl",
"it", "instruct", "hf") stands for that paper model. A model that matches no paper model (e.g. the
CPU demo's ``demo-linear``) is never compared with one.

Every frame returned here holds raw fractions (the paper's x100 columns divided by 100) except the
claims table, whose values are percentages as the paper states them.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib import resources
from typing import Any

import pandas as pd

from eqpo.analysis.style import method_label
from eqpo.core.methods import BASELINES, BIAS_MITIGATED, EMPHASISED, PAPER_NAMES, RL_BASELINES
from eqpo.core.metrics import PAPER_SCALE, TABLE2_COLUMNS

__all__ = [
    "PAPER_METHOD_NAMES",
    "PAPER_MODEL_NAMES",
    "load_claims",
    "load_paper_table2",
    "load_paper_table4",
    "paper_model_map",
    "paper_readme",
    "paper_vs_reproduction_table2",
    "paper_vs_reproduction_table4",
    "recompute_claims",
    "to_paper_scale",
    "write_comparison",
]

DATA_PACKAGE = "eqpo.analysis"
DATA_DIR = "paper_data"

# Paper method name (every spelling the paper uses) -> our method id, from the method table. The
# paper's EQPO-ND row is the authors' paper-era run, our eqpo_nodemo (see eqpo.core.methods).
PAPER_METHOD_NAMES: dict[str, str] = dict(PAPER_NAMES)
PAPER_EQPO_ND_METHOD = PAPER_METHOD_NAMES["EQPO-ND"]
# Paper base-model name -> our model id (config.yaml's `models:` keys).
PAPER_MODEL_NAMES: dict[str, str] = {
    "MedGemma-4B": "medgemma-4b",
    "Qwen2.5-VL-7B": "qwen2.5-vl-7b",
}
# Paper group names of Table 4 -> (attribute, our group key).
PAPER_GROUPS: dict[str, tuple[str, str]] = {
    "a1": ("age", "a1"),
    "a2": ("age", "a2"),
    "a3": ("age", "a3"),
    "a4": ("age", "a4"),
    "Female": ("sex", "F"),
    "Male": ("sex", "M"),
    "F": ("sex", "F"),
    "M": ("sex", "M"),
}
# Which point each published Table 2 row is, where the authors' logs tell (mirl
# visualizations/fairness_tradeoff.py @a89125d8, the Qwen2.5-VL Fig. 2 series, validation every 5
# steps): (our model, our method) -> note. Rows not listed: the point cannot be told from the logs.
PAPER_ROW_POINTS: dict[tuple[str, str], str] = {
    ("qwen2.5-vl-7b", "eqpo"): "published row = the authors' step-90 validation (their run's last: F1 0.2647, "
    "Acc 0.8075, delta_F1 0.0452)",
    ("qwen2.5-vl-7b", "grpo"): "published row equals no logged validation of the authors' GRPO series (steps 0-65, "
    "last F1 0.2494); point unknown",
}
# Why the published overall means carry COVID-BLUES as zeros: CLIMB's COVID-BLUES question lists no
# answer options, and the authors' paper-era validation logs (mirl visualizations/per_demo_perf.py
# @a89125d8) show F1 0 and accuracy 0.5 in every age group for both methods, so COVID-BLUES entered
# every overall mean with F1 0, accuracy 0.5 and zero gaps (1/7 of each column).
COVID_BLUES_NOTE = (
    "The published values average COVID-BLUES in as zeros (F1 0, accuracy 0.5, no gaps, in every "
    "age group of the authors' validation logs): CLIMB's COVID-BLUES question lists no answer "
    "options and the authors' models never answered with a valid label."
)
_IGNORED_MODEL_TOKENS = frozenset({"vl", "it", "instruct", "hf"})
LOWER_IS_BETTER = frozenset({"PP", "EOD", "FPR_diff", "sigma_F1", "delta_F1", "sigma_Acc", "delta_Acc"})


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _data_file(name: str):
    return resources.files(DATA_PACKAGE).joinpath(DATA_DIR, name)


def _read_csv(name: str) -> pd.DataFrame:
    with _data_file(name).open("r", encoding="utf-8") as handle:
        return pd.read_csv(handle)


def paper_readme() -> str:
    """Text of the shipped paper_data/README.md (source and scales of the numbers)."""
    return _data_file("README.md").read_text(encoding="utf-8")


def _method_id(name: str) -> str:
    if name not in PAPER_METHOD_NAMES:
        raise ValueError(f"unknown paper method name {name!r}; known: {sorted(PAPER_METHOD_NAMES)}")
    return PAPER_METHOD_NAMES[name]


def load_paper_table2(model_map: Mapping[str, str] | None = None, scale: str = "raw") -> pd.DataFrame:
    """The paper's Table 2 indexed by (model, method) in our ids, columns the 11
    :data:`TABLE2_COLUMNS` plus paper_model and paper_method (the names as printed).

    scale: "raw" (default) divides the x100 columns by 100 (Acc 81.83 -> 0.8183), so the frame
    compares directly with :func:`eqpo.analysis.tables.table2`; "paper" keeps the printed values.
    model_map: paper model name -> our model id (default :func:`paper_model_map`).
    """
    if scale not in ("raw", "paper"):
        raise ValueError(f"scale must be 'raw' or 'paper', got {scale!r}")
    frame = _read_csv("table2_main.csv")
    models = paper_model_map() if model_map is None else dict(model_map)
    frame["paper_model"] = frame.pop("base_model")
    frame["paper_method"] = frame.pop("method")
    frame["model"] = frame["paper_model"].map(lambda m: models.get(m, m))
    frame["method"] = frame["paper_method"].map(_method_id)
    for column in TABLE2_COLUMNS:
        frame[column] = frame[column].astype(float)
        if scale == "raw":
            frame[column] = frame[column] / PAPER_SCALE[column]
    frame = frame.set_index(["model", "method"])
    return frame[[*TABLE2_COLUMNS, "paper_model", "paper_method"]]


def load_paper_table4(model_map: Mapping[str, str] | None = None, base_model: str = "MedGemma-4B") -> pd.DataFrame:
    """The paper's Table 4 (per-group F1, GRPO vs EQPO, on ``base_model``) in long form.

    Columns: model (our id), paper_model, dataset, attribute ("age"/"sex"), group (a1..a4, F, M),
    paper_group (as printed), method ("grpo"/"eqpo"), F1 (raw, as printed).
    """
    frame = _read_csv("table4_group_f1.csv")
    models = paper_model_map() if model_map is None else dict(model_map)
    unknown = sorted(set(frame["group"]) - set(PAPER_GROUPS))
    if unknown:
        raise ValueError(f"table4_group_f1.csv has unknown group name(s) {unknown}")
    methods = [c for c in frame.columns if c not in ("group", "dataset")]
    long = frame.melt(id_vars=["group", "dataset"], value_vars=methods, var_name="paper_method", value_name="F1")
    long["paper_group"] = long.pop("group")
    long["attribute"] = long["paper_group"].map(lambda g: PAPER_GROUPS[g][0])
    long["group"] = long["paper_group"].map(lambda g: PAPER_GROUPS[g][1])
    long["method"] = long["paper_method"].map(_method_id)
    long["paper_model"] = base_model
    long["model"] = models.get(base_model, base_model)
    long["F1"] = long["F1"].astype(float)
    return long[["model", "paper_model", "dataset", "attribute", "group", "paper_group", "method", "F1"]]


def load_claims() -> pd.DataFrame:
    """claims.csv as shipped: source, base_model, claim, value (percent, float).

    The file is read line by line (first two fields, last field, the claim text in between)
    because a claim text may hold an unquoted comma, as the transcribed
    "... (percent, upper bound)" does.
    """
    text = _data_file("claims.csv").read_text(encoding="utf-8")
    lines = [line for line in text.splitlines() if line.strip()]
    header = [h.strip() for h in lines[0].split(",")]
    if header != ["source", "base_model", "claim", "value"]:
        raise ValueError(f"claims.csv: unexpected header {header}")
    rows = []
    for number, line in enumerate(lines[1:], start=2):
        parts = line.split(",", 2)
        if len(parts) < 3 or "," not in parts[2]:
            raise ValueError(f"claims.csv, line {number}: expected source,base_model,claim,value")
        claim, value = parts[2].rsplit(",", 1)
        rows.append(
            {
                "source": parts[0].strip(),
                "base_model": parts[1].strip(),
                "claim": claim.strip().strip('"'),
                "value": float(value),
            }
        )
    return pd.DataFrame(rows, columns=header)


# ----------------------------------------------------------------------------------------------
# Model names
# ----------------------------------------------------------------------------------------------


def _loose_key(name: object) -> str:
    """'Qwen/Qwen2.5-VL-7B-Instruct' -> 'qwen257b': basename, lower case, alphanumeric tokens
    without 'vl', 'it', 'instruct', 'hf'."""
    tokens = re.split(r"[^0-9a-z]+", str(name).rsplit("/", 1)[-1].lower())
    return "".join(t for t in tokens if t and t not in _IGNORED_MODEL_TOKENS)


def _paper_model_names() -> list[str]:
    names = set(PAPER_MODEL_NAMES)
    names |= set(_read_csv("table2_main.csv")["base_model"])
    names |= {m for m in load_claims()["base_model"] if m != "all"}
    return sorted(names)


def paper_model_map(config: Mapping[str, Any] | None = None, models: Iterable[str] = ()) -> dict[str, str]:
    """Paper base-model name -> our model id.

    Starts from :data:`PAPER_MODEL_NAMES`; then every model id of ``config["models"]`` (with its
    ``path``) and every id in ``models`` (e.g. the models of a results table) that names the same
    model as a paper model -- same :func:`_loose_key` of the id or the path, so
    'qoq-med3-vl-8b' / 'ddvd233/QoQ-Med3-VL-8B' stands for the paper's 'QoQ-Med3-8B' -- is mapped
    to it (ids in ``models`` win over config entries, which win over the defaults). Paper models
    with no match are absent.
    """
    mapping = dict(PAPER_MODEL_NAMES)
    candidates: list[tuple[str, list[str]]] = []
    for model_id, entry in ((config or {}).get("models") or {}).items():
        names = [model_id] + ([entry["path"]] if isinstance(entry, Mapping) and entry.get("path") else [])
        candidates.append((str(model_id), names))
    candidates += [(str(m), [str(m)]) for m in models]
    for paper_name in _paper_model_names():
        key = _loose_key(paper_name)
        for model_id, names in candidates:  # later candidates (from ``models``) override
            if any(_loose_key(n) == key for n in names):
                mapping[paper_name] = model_id
    return mapping


def _resolve_models(
    ours_models: Iterable[str], model_map: Mapping[str, str] | None, config: Mapping[str, Any] | None
) -> dict[str, str]:
    if model_map is not None:
        return dict(model_map)
    return paper_model_map(config, ours_models)


# ----------------------------------------------------------------------------------------------
# Paper vs reproduction
# ----------------------------------------------------------------------------------------------


def _as_indexed_table2(ours: pd.DataFrame | None) -> pd.DataFrame:
    """A (model, method)-indexed Table 2 frame (accepts model/method as columns too)."""
    if ours is None:
        return pd.DataFrame(
            columns=list(TABLE2_COLUMNS), index=pd.MultiIndex.from_tuples([], names=["model", "method"])
        )
    if not {"model", "method"} <= set(ours.index.names or []):
        if {"model", "method"} <= set(ours.columns):
            ours = ours.set_index(["model", "method"])
        else:
            raise ValueError(
                "ours_table2 must be indexed by (model, method) or have model and "
                "method columns, as eqpo.analysis.tables.table2 returns"
            )
    extra = [n for n in ours.index.names if n not in ("model", "method")]
    if extra:
        ours = ours.reset_index(extra, drop=True)
    return ours.reorder_levels(["model", "method"])


def _missing_note(
    model: str, paper_model: str, method: str, run_models: Sequence[str], run_methods: Sequence[str]
) -> str:
    if model not in run_models:
        have = ", ".join(map(str, run_models)) or "none"
        return f"base model {paper_model} ({model}) is not in this run (models here: {have}); not reproduced"
    return f"method {method_label(method)} was not run for {model}; not reproduced"


def paper_vs_reproduction_table2(
    ours_table2: pd.DataFrame | None,
    model_map: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
    point: Any = None,
) -> pd.DataFrame:
    """Table 2 of the paper next to ours, in long form: one row per paper (model, method, column).

    point: the :class:`eqpo.analysis.report_point.ReportPoint` ours were read at (default: from
    ``config``); ``attrs["note"]`` says which it was, what the published rows are, and how COVID-BLUES
    entered them (:data:`COVID_BLUES_NOTE`, with whether our prompt listed its options). A row's
    ``note`` says which point the published value is where the authors' logs tell
    (:data:`PAPER_ROW_POINTS`).

    ours_table2: :func:`eqpo.analysis.tables.table2` output ((model, method)-indexed raw
    fractions; extra columns such as n_seeds are ignored), or None.
    Returns columns model, method (our ids), paper_model, paper_method (as printed), column,
    paper (the paper's value as a raw fraction), ours (ours, raw; NaN where we lack the pair),
    diff (ours - paper), scale (the paper's print factor for the column), matched (bool) and note.
    Every paper row is listed; a (model, method) of our run that the paper does not report is not.
    No model is matched by position or guess: a run whose models match no paper model (the CPU
    demo) gives ours = NaN everywhere and says so in ``note`` and in ``attrs["note"]``.
    """
    ours = _as_indexed_table2(ours_table2)
    run_models = list(dict.fromkeys(ours.index.get_level_values("model")))
    models = _resolve_models(run_models, model_map, config)
    paper = load_paper_table2(models)
    rows = []
    for (model, method), prow in paper.iterrows():
        present = (model, method) in ours.index
        run_methods = list(ours.loc[model].index) if model in run_models else []
        for column in TABLE2_COLUMNS:
            value = float(ours.loc[(model, method), column]) if (present and column in ours.columns) else math.nan
            missing = "" if present else _missing_note(model, prow["paper_model"], method, run_models, run_methods)
            rows.append(
                {
                    "model": model,
                    "method": method,
                    "paper_model": prow["paper_model"],
                    "paper_method": prow["paper_method"],
                    "column": column,
                    "paper": float(prow[column]),
                    "ours": value,
                    "diff": value - float(prow[column]),
                    "scale": PAPER_SCALE[column],
                    "matched": present,
                    "note": "; ".join(n for n in (PAPER_ROW_POINTS.get((model, method), ""), missing) if n),
                }
            )
    out = pd.DataFrame(rows)
    out.attrs["note"] = " ".join(
        [_summary_note(out, run_models, "Table 2") + ".", _point_note(config, point), _covid_note(config)]
    )
    return out


def _point_note(config: Mapping[str, Any] | None, point: Any) -> str:
    from eqpo.analysis.report_point import ReportPoint

    point = point or ReportPoint.from_config(config)
    ours = point.describe().replace("Point: ", "Ours: ", 1)
    return (
        ours + " Paper: validation-log values of runs of a few dozen steps (validation every 5 steps), "
        "not a final checkpoint on a test split; the row notes say which step where the authors' logs tell."
    )


def _covid_note(config: Mapping[str, Any] | None) -> str:
    data = (config or {}).get("data") or {}
    if "COVID-BLUES" not in (data.get("datasets") or []):
        return COVID_BLUES_NOTE
    listed = bool(data.get("covid_blues_options", False))
    return COVID_BLUES_NOTE + (
        " Our prompt listed the options (data.covid_blues_options = true), so our "
        "COVID-BLUES values are not zeros by construction."
        if listed
        else " Our prompt asks CLIMB's question without options (data.covid_blues_options = "
        "false), as the authors' runs did."
    )


def _summary_note(out: pd.DataFrame, run_models: Sequence[str], what: str) -> str:
    keys = ["model", "method"]
    matched = out.loc[out["matched"], keys].drop_duplicates()
    total = out[keys].drop_duplicates()
    if matched.empty:
        have = ", ".join(map(str, run_models)) or "none"
        return (
            f"no (model, method) of this run matches the paper's {what} (models here: {have});"
            " the paper's rows are listed with ours empty"
        )
    return f"{len(matched)} of the paper's {len(total)} (model, method) rows of {what} matched"


def _group_means(ours: pd.DataFrame | None) -> pd.DataFrame:
    """Per-group F1 of our runs as a long frame: model, method, dataset, group, F1 (seed mean).

    Accepts :func:`eqpo.analysis.collect.read_group_tables` output (an F1 column, any seeds) or
    :func:`eqpo.analysis.paper_tables.table4` output (columns grpo / eqpo).
    """
    columns = ["model", "method", "dataset", "group", "F1"]
    if ours is None or len(ours) == 0:
        return pd.DataFrame(columns=columns)
    frame = ours.reset_index() if any(n is not None for n in ours.index.names) else ours
    if "F1" in frame.columns and "method" in frame.columns:
        frame = frame.assign(group=frame["group"].astype(str))
        return frame.groupby(["model", "method", "dataset", "group"], sort=False)["F1"].mean().reset_index()
    methods = [m for m in EMPHASISED if m in frame.columns]
    if not methods:
        raise ValueError(
            "ours_group_f1 needs an F1 column (read_group_tables) or grpo/eqpo columns (paper_tables.table4)"
        )
    long = frame.melt(id_vars=["model", "dataset", "group"], value_vars=methods, var_name="method", value_name="F1")
    long["group"] = long["group"].astype(str)
    return long[columns]


def paper_vs_reproduction_table4(
    ours_group_f1: pd.DataFrame | None,
    model_map: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Table 4 (per-group F1, GRPO vs EQPO) of the paper next to ours, one row per paper cell.

    ours_group_f1: :func:`eqpo.analysis.collect.read_group_tables` output (F1 is averaged over
    seeds) or :func:`eqpo.analysis.paper_tables.table4` output, or None.
    Returns columns model, paper_model, dataset, attribute, group (a1..a4, F, M), paper_group,
    method ("grpo"/"eqpo"), paper (F1), ours (F1, NaN where our run lacks the cell), diff
    (ours - paper), matched, note; ``attrs["note"]`` summarises the matching.
    """
    ours = _group_means(ours_group_f1)
    run_models = list(dict.fromkeys(ours["model"]))
    models = _resolve_models(run_models, model_map, config)
    paper = load_paper_table4(models)
    lookup = {(r.model, r.method, r.dataset, r.group): float(r.F1) for r in ours.itertuples(index=False)}
    rows = []
    for r in paper.itertuples(index=False):
        value = lookup.get((r.model, r.method, r.dataset, r.group), math.nan)
        matched = not math.isnan(value)
        if matched:
            note = ""
        elif r.model not in run_models:
            note = _missing_note(r.model, r.paper_model, r.method, run_models, [])
        elif not ((ours["model"] == r.model) & (ours["method"] == r.method)).any():
            note = f"method {method_label(r.method)} was not run for {r.model}; not reproduced"
        else:
            note = f"no group {r.group} of {r.dataset} in this run's test results"
        rows.append(
            {
                "model": r.model,
                "paper_model": r.paper_model,
                "dataset": r.dataset,
                "attribute": r.attribute,
                "group": r.group,
                "paper_group": r.paper_group,
                "method": r.method,
                "paper": float(r.F1),
                "ours": value,
                "diff": value - float(r.F1),
                "matched": matched,
                "note": note,
            }
        )
    out = pd.DataFrame(rows)
    out.attrs["note"] = (
        _summary_note(out, run_models, "Table 4") + ". Ours: the final checkpoint on the test split "
        "(per-group values exist for the test predictions only), whatever report.point says."
    )
    return out


def write_comparison(comparison: pd.DataFrame, stem, paper_scale: bool = False) -> dict:
    """Write a :func:`paper_vs_reproduction_table2` / :func:`paper_vs_reproduction_table4` or
    :func:`recompute_claims` frame as ``<stem>.csv/.md/.tex`` via
    :func:`eqpo.analysis.tables.write_table` (no further scaling; ``matched`` printed yes/no).
    paper_scale: for a Table 2 comparison, print the values as the paper does
    (:func:`to_paper_scale`) instead of raw fractions. Returns {ext: path}."""
    from eqpo.analysis.tables import write_table

    scalable = paper_scale and "scale" in comparison.columns
    frame = to_paper_scale(comparison) if scalable else comparison.copy()
    if "matched" in frame.columns:
        frame["matched"] = frame["matched"].map({True: "yes", False: "no"})
    if "claim" in frame.columns:
        keys = ["base_model", "claim"]
    else:
        keys = [k for k in ("model", "method", "dataset", "attribute", "group", "column") if k in frame.columns]
    if keys:
        frame = frame.set_index(keys)
    return write_table(frame, stem, scale={}, note=comparison.attrs.get("note"))


def to_paper_scale(comparison: pd.DataFrame) -> pd.DataFrame:
    """Copy of a :func:`paper_vs_reproduction_table2` frame with paper, ours and diff multiplied
    by each row's ``scale`` (the values as the paper prints them, e.g. Acc in %)."""
    out = comparison.copy()
    for column in ("paper", "ours", "diff"):
        out[column] = out[column] * out["scale"]
    return out


# ----------------------------------------------------------------------------------------------
# Claims
# ----------------------------------------------------------------------------------------------


def _value(table: pd.DataFrame, model: str, method: str, metric: str) -> float:
    if (model, method) in table.index and metric in table.columns:
        return float(table.loc[(model, method), metric])
    return math.nan


def _names(methods: Sequence[str]) -> str:
    return ", ".join(method_label(m) for m in methods)


class _Claim:
    """How to recompute one claim: ``compute(table, model) -> (value %, reference method)``."""

    def __init__(self, metric: str, target: str, references: Sequence[str], kind: str):
        self.metric, self.target, self.kind = metric, target, kind
        self.references = tuple(references)

    @property
    def needed(self) -> tuple[str, ...]:
        return (self.target, *self.references)

    @property
    def formula(self) -> str:
        m, t = self.metric, method_label(self.target)
        if len(self.references) == 1:
            ref = method_label(self.references[0])
            if self.kind == "gain":
                return f"({t} - {ref}) / {ref} * 100 on {m}"
            return f"({ref} - {t}) / {ref} * 100 on {m}"
        best = "lowest" if m in LOWER_IS_BETTER else "highest"
        sign = f"(best - {t})" if m in LOWER_IS_BETTER else f"({t} - best)"
        return f"{sign} / best * 100 on {m}, best = {best} {m} among {_names(self.references)}"

    def compute(
        self, table: pd.DataFrame, model: str, references: Sequence[str] | None = None
    ) -> tuple[float, str | None]:
        references = self.references if references is None else references
        target = _value(table, model, self.target, self.metric)
        values = {r: _value(table, model, r, self.metric) for r in references}
        if math.isnan(target) or any(math.isnan(v) for v in values.values()):
            return math.nan, None
        pick = min if self.metric in LOWER_IS_BETTER else max
        ref = pick(values, key=values.get)
        base = values[ref]
        if base == 0:
            return math.nan, ref
        if self.kind == "gain" or self.metric not in LOWER_IS_BETTER:
            return (target - base) / base * 100.0, ref
        return (base - target) / base * 100.0, ref


_METRIC_WORDS = {"F1 difference": "delta_F1"}


def _table_claim(text: str) -> _Claim | None:
    """The recomputation of a Table 2 claim, from the claim's wording; None if not one."""
    target = PAPER_EQPO_ND_METHOD if "EQPO-ND" in text or "FairGRPO_ND" in text else "eqpo"
    patterns: list[tuple[str, Callable[[re.Match], _Claim]]] = [
        (r"relative reduction of (\w+) vs GRPO\b(?! during)", lambda m: _Claim(m[1], target, ["grpo"], "reduction")),
        (
            r"relative reduction of (\w+) vs best bias-mitigated RL baseline",
            lambda m: _Claim(m[1], target, BIAS_MITIGATED, "reduction"),
        ),
        (r"relative (\w+) gain of EQPO-ND", lambda m: _Claim(m[1], PAPER_EQPO_ND_METHOD, ["grpo"], "gain")),
        (r"relative (\w+) improvement vs best RL baseline", lambda m: _Claim(m[1], target, RL_BASELINES, "reduction")),
        (r"relative (\w+) decrease vs all baselines", lambda m: _Claim(m[1], target, BASELINES, "reduction")),
    ]
    for pattern, build in patterns:
        match = re.search(pattern, text)
        if match and match[1] in TABLE2_COLUMNS:
            return build(match)
    return None


def _close(a: float, b: float) -> bool:
    """Equal up to the rounding of a printed percentage."""
    return abs(a - b) <= max(0.05, 0.005 * abs(b))


def _fmt(value: float) -> str:
    return "NaN" if value is None or math.isnan(value) else f"{value:.3g}"


def _table_claim_row(
    claim: _Claim,
    text: str,
    paper_value: float,
    paper_model: str,
    model: str | None,
    ours: pd.DataFrame,
    paper: pd.DataFrame,
    run_models: Sequence[str],
) -> dict:
    paper_model_id = PAPER_MODEL_NAMES.get(paper_model, model)
    in_paper = paper_model_id in set(paper.index.get_level_values("model"))
    recomputed, paper_ref = claim.compute(paper, paper_model_id) if in_paper else (math.nan, None)
    notes = []
    if not in_paper:
        notes.append(f"the paper's Table 2 has no {paper_model} rows, so the published value cannot be re-derived")
    elif not _close(recomputed, paper_value):
        alternatives = []
        for metric in TABLE2_COLUMNS:
            alt = _Claim(metric, claim.target, claim.references, claim.kind)
            value, _ = alt.compute(paper, paper_model_id)
            if not math.isnan(value) and _close(value, paper_value):
                alternatives.append(f"{metric} ({value:.3g})")
        notes.append(
            f"the paper's Table 2 gives {_fmt(recomputed)} with this formula, not the "
            f"published {paper_value:g}"
            + (f"; the same formula on {' or '.join(alternatives)} gives the published value" if alternatives else "")
        )
    if claim.references == RL_BASELINES:
        alt = _Claim(claim.metric, claim.target, ("grpo", *RL_BASELINES), claim.kind)
        alt_paper = alt.compute(paper, paper_model_id)[0] if in_paper else math.nan
        alt_ours = alt.compute(ours, model)[0] if model is not None else math.nan
        notes.append(
            "'RL baselines' = RLOO and REINFORCE++: this reproduces both published "
            "values from the paper's Table 2; with GRPO among them the paper's table "
            f"gives {_fmt(alt_paper)}" + (f" and ours {_fmt(alt_ours)}" if not math.isnan(alt_ours) else "")
        )
    value, ref = math.nan, None
    if model is None or model not in run_models:
        have = ", ".join(map(str, run_models)) or "none"
        notes.insert(0, f"not reproducible in this run: base model {paper_model} is not in it (models here: {have})")
    else:
        missing = [m for m in claim.needed if (model, m) not in ours.index]
        if missing:
            notes.insert(0, f"not reproducible in this run: {_names(missing)} not run for {model}")
        else:
            value, ref = claim.compute(ours, model)
    return {
        "model": model,
        "metric": claim.metric,
        "formula": claim.formula,
        "paper_recomputed": recomputed,
        "paper_reference": paper_ref,
        "ours": value,
        "reference": ref,
        "note": "; ".join(notes),
    }


def _training_claim_row(
    paper_model: str, model: str | None, dynamics: pd.DataFrame | None, run_models: Sequence[str]
) -> dict:
    formula = (
        "max over validation steps t of (GRPO_t - EQPO_t) / GRPO_t * 100 on delta_F1; "
        "curves = mean over seeds, steps logged by both methods"
    )
    row = {
        "model": model,
        "metric": "delta_F1",
        "formula": formula,
        "paper_recomputed": math.nan,
        "paper_reference": None,
        "ours": math.nan,
        "reference": None,
    }
    notes = ["the paper's curves are not shipped, so the published value cannot be re-derived"]
    if model is None or model not in run_models:
        have = ", ".join(map(str, run_models)) or "none"
        notes.insert(0, f"not reproducible in this run: base model {paper_model} is not in it (models here: {have})")
    elif dynamics is None or dynamics.empty:
        notes.insert(0, "not computed: needs the validation curves (dynamics_df from read_dynamics)")
    else:
        runs = dynamics[dynamics["model"] == model]
        curves = {m: runs[runs["method"] == m].groupby("step")["delta_F1"].mean() for m in ("grpo", "eqpo")}
        if any(c.empty for c in curves.values()):
            missing = [method_label(m) for m, c in curves.items() if c.empty]
            notes.insert(0, f"not reproducible in this run: no curves of {', '.join(missing)} for {model}")
        else:
            both = pd.concat(curves, axis=1, join="inner").dropna()
            both = both[both["grpo"] > 0]
            if both.empty:
                notes.insert(0, "no validation step with a positive GRPO delta_F1 logged by both")
            else:
                reduction = (both["grpo"] - both["eqpo"]) / both["grpo"] * 100.0
                row["ours"] = float(reduction.max())
                row["reference"] = "grpo"
                notes.insert(
                    0, f"at step {int(reduction.idxmax())}; mean over {len(reduction)} steps {reduction.mean():.3g}"
                )
    row["note"] = "; ".join(notes)
    return row


def _runtime_claim_row(steps: pd.DataFrame | None, config: Mapping[str, Any] | None) -> dict:
    formula = (
        "max over (model, method) of 100 * sum(time_advantage_s) / sum(time_step_s) over "
        "all steps and seeds (steps.jsonl)"
    )
    row = {
        "model": "all",
        "metric": "advantage_share",
        "formula": formula,
        "paper_recomputed": math.nan,
        "paper_reference": None,
        "ours": math.nan,
        "reference": None,
    }
    if steps is None or steps.empty:
        row["note"] = "not computed: needs the per-step timings (steps_df from read_steps)"
        return row
    sums = steps.groupby(["model", "method"], sort=False)[["time_advantage_s", "time_step_s"]].sum()
    share = (sums["time_advantage_s"] / sums["time_step_s"] * 100.0).dropna()
    if share.empty:
        row["note"] = "no step time logged"
        return row
    (model, method) = share.idxmax()
    row.update(ours=float(share.max()), reference=method, model="all")
    notes = [f"largest share: {method_label(method)} on {model}"]
    eqpo = share[share.index.get_level_values("method") == "eqpo"]
    if len(eqpo):
        notes.append(f"EQPO: {eqpo.max():.3g}% at most")
    backends = {
        str(((config or {}).get("models") or {}).get(m, {}).get("backend"))
        for m in share.index.get_level_values("model")
    }
    if "cpu" in backends:
        notes.append(
            "CPU backend: tiny policy, no LLM generation, so step times are short and "
            "the share is not comparable with the paper's GPU runs"
        )
    row["note"] = "; ".join(notes)
    return row


def recompute_claims(
    ours_table2: pd.DataFrame | None,
    steps_df: pd.DataFrame | None = None,
    dynamics_df: pd.DataFrame | None = None,
    model_map: Mapping[str, str] | None = None,
    config: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Each headline claim of claims.csv, as published and recomputed from our results.

    ours_table2: :func:`eqpo.analysis.tables.table2` output (raw fractions). steps_df
    (:func:`~eqpo.analysis.collect.read_steps`) serves the runtime-share claim, dynamics_df
    (:func:`~eqpo.analysis.collect.read_dynamics`) the training-curve claim; without them those
    claims are NaN with a note.

    Formulas (percent; "EQPO" is the target method unless the claim names EQPO-ND):

    - "relative reduction of M vs GRPO": (GRPO - EQPO) / GRPO * 100 on M.
    - "... vs best bias-mitigated RL baseline": (best - EQPO) / best * 100, best = the lowest M
      among GRPO+RS and GRPO+DRO.
    - "relative F1 gain of EQPO-ND": (EQPO-ND - GRPO) / GRPO * 100 on F1.
    - "relative M improvement vs best RL baseline": (best - EQPO) / best * 100, best = the lowest M
      among RLOO and REINFORCE++ (this choice reproduces both published values from the paper's
      own Table 2; the note gives the value with GRPO included too).
    - "relative M decrease vs all baselines": (best - EQPO) / best * 100, best = the lowest M among
      GRPO, RLOO, REINFORCE++, GRPO+RS, GRPO+DRO (the strictest comparison).
    - "reduction of F1 difference vs GRPO during training": the largest (GRPO_t - EQPO_t) / GRPO_t
      * 100 of delta_F1 over validation steps t (seed-mean curves).
    - "advantage computation share of step time": the largest share (percent) of step time spent
      computing advantages over all (model, method) runs.

    Returns one row per claim with columns source, base_model, claim, paper (published value),
    model (our id standing for the base model, None if none), metric, formula, paper_recomputed
    (the formula applied to the paper's own Table 2; NaN where the paper does not tabulate that
    model), paper_reference (the baseline the formula picked there), ours, reference (the baseline
    it picked in our run), note. ours is NaN, with a note saying "not reproducible in this run",
    where our run lacks the base model or a needed method; no claim is dropped.
    """
    ours = _as_indexed_table2(ours_table2)
    run_models = list(dict.fromkeys(ours.index.get_level_values("model")))
    for frame in (steps_df, dynamics_df):
        if frame is not None and not frame.empty:
            run_models += [m for m in dict.fromkeys(frame["model"]) if m not in run_models]
    models = _resolve_models(run_models, model_map, config)
    paper = load_paper_table2(PAPER_MODEL_NAMES)
    rows = []
    for claim in load_claims().itertuples(index=False):
        text, paper_model = str(claim.claim), str(claim.base_model)
        model = models.get(paper_model)
        base = {"source": claim.source, "base_model": paper_model, "claim": text, "paper": float(claim.value)}
        spec = _table_claim(text)
        if spec is not None:
            detail = _table_claim_row(spec, text, float(claim.value), paper_model, model, ours, paper, run_models)
        elif "during training" in text and "F1 difference" in text:
            detail = _training_claim_row(paper_model, model, dynamics_df, run_models)
        elif "advantage computation share" in text:
            detail = _runtime_claim_row(steps_df, config)
        else:
            detail = {
                "model": model,
                "metric": None,
                "formula": None,
                "paper_recomputed": math.nan,
                "paper_reference": None,
                "ours": math.nan,
                "reference": None,
                "note": "no recomputation defined for this claim",
            }
        rows.append({**base, **detail})
    columns = [
        "source",
        "base_model",
        "claim",
        "paper",
        "model",
        "metric",
        "formula",
        "paper_recomputed",
        "paper_reference",
        "ours",
        "reference",
        "note",
    ]
    out = pd.DataFrame(rows, columns=columns)
    for column in ("paper", "paper_recomputed", "ours"):
        out[column] = out[column].astype(float)
    return out
