"""verl reward function: the label-set F1 reward of :mod:`eqpo.rewards` (METHOD.md Section 2).

Configure verl 0.9.1 with (the top-level ``custom_reward_function`` is ignored by main_ppo)::

    reward.custom_reward_function.path=pkg://eqpo.verl_ext.reward
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.format_weight=0.1     # optional, default 0

verl's reward manager (``naive``) calls ``compute_score(data_source=, solution_str=, ground_truth=,
extra_info=)`` once per response. The returned dict's ``score`` is the reward; every key becomes
``reward_extra_info``: numbers are averaged into validation metrics, strings are
skipped there (metric_utils.process_validation_metrics: ``prediction``, ``sample_id``,
``dataset``) but kept in the generation dumps
(``trainer.validation_data_dir``). The key set is the same on every call, as verl requires.

Only absolute imports here, so the file also loads by path (``reward.custom_reward_function.path=
/abs/.../eqpo/verl_ext/reward.py``, verl's load_module executes it as a standalone module).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Mapping

from eqpo.rewards import LabelParser, score_response
from eqpo.vocabularies import get_spec

#: The keys of every result, in order. sample_id and dataset make verl's validation dumps (which
#: otherwise carry only a random uid) joinable to the samples' demographics (eqpo.verl_ext.logs).
REWARD_KEYS = ("score", "f1", "format_ok", "parsed", "prediction", "sample_id", "dataset")


@lru_cache(maxsize=None)
def _parser(labels: tuple[str, ...]) -> LabelParser:
    return LabelParser(labels)


def _truth(ground_truth: Any) -> Any:
    """A label string ("A, B") as is; any other sequence (parquet gives numpy arrays) as a list."""
    if isinstance(ground_truth, str):
        return ground_truth
    if hasattr(ground_truth, "tolist"):
        return [str(x) for x in ground_truth.tolist()]
    return [str(x) for x in ground_truth]


def compute_score(data_source: str, solution_str: str, ground_truth: Any, extra_info: Mapping | None = None,
                  format_weight: float = 0.0, **kwargs: Any) -> dict:
    """Reward of one response: {score, f1, format_ok, parsed, prediction, sample_id, dataset}.

    The label vocabulary is that of ``extra_info["dataset"]`` (else ``data_source``, so a
    ``data_source`` that encodes a group for per-group validation metrics still works when
    extra_info names the dataset). score = (1 - format_weight) * F1 + format_weight * format_ok;
    format_ok and parsed are 0.0/1.0; prediction is the parsed labels joined by ", " ("" when
    unparseable); sample_id is ``str(extra_info["sample_id"])`` ("" when absent) and dataset the
    dataset whose vocabulary was used, both strings. Extra keyword arguments verl may pass (reward_router_address, ...) are ignored.
    """
    info = extra_info if isinstance(extra_info, Mapping) else {}
    dataset = info.get("dataset") or data_source
    spec = get_spec(str(dataset))
    result = score_response(solution_str, _truth(ground_truth), _parser(spec.labels), float(format_weight))
    return {
        "score": float(result.score),
        "f1": float(result.f1),
        "format_ok": float(result.format_ok),
        "parsed": float(result.parsed),
        "prediction": ", ".join(result.prediction),
        "sample_id": "" if info.get("sample_id") is None else str(info["sample_id"]),
        "dataset": str(dataset),
    }
