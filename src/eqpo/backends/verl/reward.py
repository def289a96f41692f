"""verl reward function: the rewards of :mod:`eqpo.core.rewards` (config ``reward``; docs/method.md §2).

Configure verl 0.9.1 with (the top-level ``custom_reward_function`` is ignored by main_ppo)::

    reward.custom_reward_function.path=pkg://eqpo.backends.verl.reward
    reward.custom_reward_function.name=compute_score
    +reward.custom_reward_function.reward_kwargs.function=authors_composite  # or f1, exact
    +reward.custom_reward_function.reward_kwargs.matching=strict             # or lenient
    +reward.custom_reward_function.reward_kwargs.extraction=first_box        # the `prediction`; or last_box
    +reward.custom_reward_function.reward_kwargs.format_weight=0.1     # f1/exact only, default 0

Without reward_kwargs the function runs config.yaml's reproduction defaults (authors_composite,
strict, first_box), so a launch that does not pass them still trains with the configured default reward.

Two readings of one response: the ``score`` (the training reward) always reads the LAST ``\\boxed{}``,
as the authors' training reward (mathruler's ``extract_boxed_content``) did; the ``prediction`` (what
validation is scored on, :mod:`eqpo.backends.verl.logs`) reads the answer by ``extraction`` (config
``metrics.extraction``), as the authors' validation evaluator and our test-split evaluation do.

verl's reward manager (``naive``) calls ``compute_score(data_source=, solution_str=, ground_truth=,
extra_info=)`` once per response. The returned dict's ``score`` is the reward; every key becomes
``reward_extra_info``: numbers are averaged into validation metrics, strings are
skipped there (metric_utils.process_validation_metrics: ``prediction``, ``sample_id``,
``dataset``) but kept in the generation dumps
(``trainer.validation_data_dir``). The key set is the same on every call, as verl requires.

Only absolute imports here, so the file also loads by path (``reward.custom_reward_function.path=
/abs/.../eqpo/backends/verl/reward.py``, verl's load_module executes it as a standalone module).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import cache
from typing import Any

from eqpo.core.rewards import LabelParser, score_response
from eqpo.core.vocabularies import get_spec

#: The keys of every result, in order. sample_id and dataset make verl's validation dumps (which
#: otherwise carry only a random uid) joinable to the samples' demographics (eqpo.backends.verl.logs).
#: unparsed_items / items: answer items that name no label of the vocabulary (their mean per
#: dataset is the share of unparseable items logged during training and validation).
REWARD_KEYS = ("score", "f1", "format_ok", "parsed", "unparsed_items", "items", "prediction", "sample_id", "dataset")
DEFAULT_FUNCTION = "authors_composite"
DEFAULT_MATCHING = "strict"
DEFAULT_EXTRACTION = "first_box"


@cache
def _parser(labels: tuple[str, ...], matching: str = "lenient") -> LabelParser:
    return LabelParser(labels, matching)


def _truth(ground_truth: Any) -> Any:
    """A label string ("A, B") as is; any other sequence (parquet gives numpy arrays) as a list."""
    if isinstance(ground_truth, str):
        return ground_truth
    if hasattr(ground_truth, "tolist"):
        return [str(x) for x in ground_truth.tolist()]
    return [str(x) for x in ground_truth]


def compute_score(
    data_source: str,
    solution_str: str,
    ground_truth: Any,
    extra_info: Mapping | None = None,
    format_weight: float = 0.0,
    function: str = DEFAULT_FUNCTION,
    matching: str = DEFAULT_MATCHING,
    extraction: str = DEFAULT_EXTRACTION,
    **kwargs: Any,
) -> dict:
    """Reward of one response: {score, f1, format_ok, parsed, unparsed_items, items, prediction,
    sample_id, dataset}.

    The label vocabulary is that of ``extra_info["dataset"]`` (else ``data_source``, so a
    ``data_source`` that encodes a group for per-group validation metrics still works when
    extra_info names the dataset). score: :func:`eqpo.core.rewards.score_response` with ``function``,
    ``matching`` and ``format_weight``; format_ok and parsed are 0.0/1.0; unparsed_items and items
    count the answer's items outside the vocabulary and all its items (floats), all three read from the
    last box as the score; prediction is the labels of the answer read by ``extraction`` (config
    ``metrics.extraction``) joined by ", " ("" when unparseable); sample_id is ``str(extra_info["sample_id"])``
    ("" when absent) and dataset the dataset whose vocabulary was used, both strings. Extra keyword
    arguments verl may pass (reward_router_address, ...) are ignored.
    """
    info = extra_info if isinstance(extra_info, Mapping) else {}
    dataset = info.get("dataset") or data_source
    spec = get_spec(str(dataset))
    parser = _parser(spec.labels, matching)
    truth = _truth(ground_truth)
    result = score_response(solution_str, truth, parser, float(format_weight), function=function)
    answer = (
        result
        if extraction == "last_box"
        else score_response(solution_str, truth, parser, function=function, extraction=extraction)
    )
    return {
        "score": float(result.score),
        "f1": float(result.f1),
        "format_ok": float(result.format_ok),
        "parsed": float(result.parsed),
        "unparsed_items": float(len(result.unknown)),
        "items": float(result.n_items),
        "prediction": ", ".join(answer.prediction),
        "sample_id": "" if info.get("sample_id") is None else str(info["sample_id"]),
        "dataset": str(dataset),
    }
