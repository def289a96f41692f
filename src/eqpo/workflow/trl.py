"""The trl backend's two workflow rules (workflow/rules/trl.smk): ``train_trl`` and ``predict_trl``.

Both read only their rule's params: ``settings`` (the run's :class:`eqpo.runs.settings.RunSettings`
as plain values: its ``train`` block with the ``runs`` overrides, estimator options, reproduction
options with the run's own reward, model, ``evaluation.max_samples``), ``trl`` (the config's ``trl``
block) and ``custom`` (the ``data.custom`` entries, whose vocabularies parse the answers).
``trl.threads``: torch's CPU threads (default: the rule's threads); ``trl.predict_vllm``: answer the
test split with vLLM (true/false; default "auto": when vLLM is installed and a GPU is present);
``evaluation.max_samples`` bounds the validation and test prompts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from eqpo.runs.settings import RunSettings


def _register_custom(entries: Iterable[Mapping] | None) -> None:
    """Custom datasets' vocabularies (``data.custom`` entries), so their answers can be parsed."""
    from eqpo.core.vocabularies import register_dataset
    from eqpo.data.custom import spec_from_entry

    for entry in entries or []:
        register_dataset(spec_from_entry(entry))


def _threads(trl: Mapping, rule_threads: int) -> None:
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(int(trl.get("threads", rule_threads)))


def _rule_inputs(snakemake: Any) -> tuple[RunSettings, dict]:
    """The run's settings and the `trl` block from the rule's params, after registering the custom
    datasets and setting torch's threads."""
    settings = RunSettings.from_dict(snakemake.params.settings)
    trl = dict(snakemake.params.trl or {})
    _register_custom(snakemake.params.custom)
    _threads(trl, snakemake.threads)
    return settings, trl


def train_rule(snakemake: Any) -> None:
    from eqpo.backends.trl.trainer import run_training

    settings, trl = _rule_inputs(snakemake)
    run_training(
        snakemake.input.train,
        snakemake.input.val,
        settings,
        trl,
        int(snakemake.wildcards.seed),
        snakemake.params.run_dir,
    )


def predict_rule(snakemake: Any) -> None:
    from eqpo.backends.trl.trainer import EVAL_BATCH_SIZE, run_prediction

    settings, trl = _rule_inputs(snakemake)
    run_prediction(
        snakemake.input.test,
        snakemake.input.model,
        snakemake.output[0],
        options=settings.options,
        max_new_tokens=settings.train.max_response_length,
        max_samples=settings.max_samples,
        batch_size=int(trl.get("eval_batch_size", EVAL_BATCH_SIZE)),
        use_vllm=trl.get("predict_vllm", "auto"),
        seed=0,
    )
