"""The compute plan of a configuration, before anything is submitted: GPU-hours and disk per run and
for the whole run (``results/<experiment>/plan.md``, rule ``plan``).

GPU-hours come from the authors' measured time per training step (mirl
``visualizations/fairness_tradeoff.py`` @a89125d8 l.156-165: Qwen2.5-VL 882 s GRPO / 886 s FairGRPO,
MedGemma 1,388 s FairGRPO / 1,371 s GRPO), taken as the time of a step of 512 prompts x 5 rollouts
on 4 GPUs (the scripts' batch and rollouts) and scaled linearly with the responses of a step
(``batch_prompts x rollouts``); a run's GPU-hours = steps x seconds per step x GPUs / 3600.
QoQ-Med3-VL-8B has no measurement: Qwen2.5-VL-7B's time stands in (a Qwen-VL model of similar size),
and the plan says so. Validations, model loading and evaluation jobs are not included. Disk is the
peak per run of :func:`eqpo.runs.base_models.run_disk_bytes`. The numbers are estimates from the
authors' cluster, not measurements on yours.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from eqpo.runs.base_models import run_disk_bytes
from eqpo.runs.settings import experiment_runs

# Seconds per training step in the authors' runs, (model, method family) -> seconds; "eqpo" covers
# the FairGRPO variants, "grpo" every other method.
AUTHORS_STEP_SECONDS: dict[str, dict[str, float]] = {
    "qwen2.5-vl-7b": {"eqpo": 886.0, "grpo": 882.0},
    "medgemma-4b": {"eqpo": 1388.0, "grpo": 1371.0},
}
# Models without a measurement -> the measured model that stands in for them.
STAND_INS: dict[str, str] = {"qoq-med3-vl-8b": "qwen2.5-vl-7b"}
REFERENCE_RESPONSES = 512 * 5  # responses of a step in the measured runs
REFERENCE_GPUS = 4
PLAN_COLUMNS = (
    "model",
    "method",
    "seeds",
    "steps",
    "responses_per_step",
    "step_seconds",
    "gpus",
    "gpu_hours_per_run",
    "gpu_hours",
    "peak_disk_gb_per_run",
    "basis",
)


def _family(method: str) -> str:
    return "eqpo" if method.startswith("eqpo") else "grpo"


def step_seconds(model: str, method: str, responses: int) -> tuple[float | None, str]:
    """(seconds per step, where the figure comes from) for ``responses`` (prompts x rollouts) per step."""
    measured = model if model in AUTHORS_STEP_SECONDS else STAND_INS.get(model)
    if measured is None:
        return None, "no per-step time known"
    seconds = AUTHORS_STEP_SECONDS[measured][_family(method)] * responses / REFERENCE_RESPONSES
    basis = "authors' step time" + ("" if measured == model else f" of {measured} (stand-in)")
    return seconds, basis


def plan_rows(config: Mapping[str, Any]) -> pd.DataFrame:
    """One row per (model, method) of ``config``: :data:`PLAN_COLUMNS` (GPU-hours over all seeds in
    ``gpu_hours``; NaN where no step time or step count is known; CPU models take no GPU)."""
    rows = []
    seeds = len(config.get("seeds") or [0])
    for run in experiment_runs(config):
        model, method, train, entry = run.model, run.method, run.train, run.model_config
        steps = train.steps
        responses = train.batch_prompts * train.rollouts
        gpus = train.gpus * train.nnodes
        if entry.get("backend") == "cpu":
            seconds, basis, gpus = None, "CPU backend: no GPU", 0
        else:
            seconds, basis = step_seconds(model, method, responses)
        if steps is None:
            basis += "; train.steps unset (epochs): steps unknown before the data exist"
        hours = (
            (steps * seconds * gpus / 3600.0) if (steps and seconds is not None) else (0.0 if gpus == 0 else math.nan)
        )
        params = entry.get("params_billion")
        saves = max(1, (steps or 1) // train.save_freq)
        disk = (
            run_disk_bytes(int(float(params) * 1e9), train.max_ckpt_to_keep, train.save_hf_model, saves=saves) / 1e9
            if params is not None and entry.get("backend") != "cpu"
            else 0.0
        )
        rows.append(
            {
                "model": model,
                "method": method,
                "seeds": seeds,
                "steps": steps,
                "responses_per_step": responses,
                "step_seconds": seconds,
                "gpus": gpus,
                "gpu_hours_per_run": hours,
                "gpu_hours": hours * seeds,
                "peak_disk_gb_per_run": disk,
                "basis": basis,
            }
        )
    return pd.DataFrame(rows, columns=list(PLAN_COLUMNS))


def _number(value: Any, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "?"
    return f"{value:,.{digits}f}"


def plan_markdown(config: Mapping[str, Any]) -> str:
    """The plan as Markdown: one line per (model, method) and the totals."""
    rows = plan_rows(config)
    total = rows["gpu_hours"].sum(min_count=1)
    unknown = rows["gpu_hours"].isna().sum()
    lines = [
        f"# Compute plan: {config.get('experiment', '?')}",
        "",
        "Estimated from the authors' time per training step (Qwen2.5-VL 886 s, MedGemma 1,388 s for "
        "512 prompts x 5 rollouts on 4 GPUs), scaled with the responses of a step; validations, "
        "start-up and evaluation jobs are not included. Disk: the peak of one run (two checkpoints "
        "and the merged weights).",
        "",
        "| model | method | seeds | steps | responses/step | s/step | GPUs | GPU-h per run | GPU-h | "
        "peak disk per run (GB) | basis |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows.itertuples(index=False):
        lines.append(
            f"| {r.model} | {r.method} | {r.seeds} | {r.steps if r.steps is not None else '?'} | "
            f"{r.responses_per_step} | {_number(r.step_seconds, 0)} | {r.gpus} | "
            f"{_number(r.gpu_hours_per_run, 2)} | {_number(r.gpu_hours, 2)} | "
            f"{_number(r.peak_disk_gb_per_run, 0)} | {r.basis} |"
        )
    lines += [
        "",
        f"Total: {_number(total)} GPU-hours over {int(rows['seeds'].sum())} training runs"
        + (f" ({unknown} (model, method) pairs without an estimate)" if unknown else "")
        + ".",
    ]
    return "\n".join(lines) + "\n"
