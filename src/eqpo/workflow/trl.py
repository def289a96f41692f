"""The trl backend's two workflow rules (workflow/rules/trl.smk): ``train_trl`` and ``predict_trl``.

Both read the run's ``train`` block (with its ``runs`` overrides), the config's ``trl`` block and
the reproduction options (reward, matching, answer extraction, metric class set), exactly as the
other backends read them. ``trl.threads``: torch's CPU threads (default: the rule's threads);
``trl.predict_vllm``: answer the test split with vLLM (true/false; default "auto": when vLLM is
installed and a GPU is present); ``evaluation.max_samples`` bounds the validation and test prompts.
"""

from __future__ import annotations

from typing import Any

from eqpo.runs.settings import ReproductionOptions, train_length


def _register_custom(config: dict) -> None:
    """Custom datasets' vocabularies (data.custom), so their answers can be parsed."""
    from eqpo.core.vocabularies import register_dataset
    from eqpo.data.custom import spec_from_entry

    for entry in (config.get("data") or {}).get("custom") or []:
        register_dataset(spec_from_entry(entry))


def _threads(trl: dict, rule_threads: int) -> None:
    import torch

    if not torch.cuda.is_available():
        torch.set_num_threads(int(trl.get("threads", rule_threads)))


def _trl_block(params: Any) -> dict:
    return {k: v for k, v in dict(params.trl or {}).items() if k not in ("threads", "predict_vllm")}


def train_rule(snakemake: Any) -> None:
    from eqpo.backends.trl.trainer import run_training

    config = snakemake.config
    _register_custom(config)
    _threads(dict(snakemake.params.trl or {}), snakemake.threads)
    trl = _trl_block(snakemake.params)
    if snakemake.params.max_samples is not None:
        trl.setdefault("val_max_samples", snakemake.params.max_samples)
    model = snakemake.params.model
    run_training(
        snakemake.input.train,
        snakemake.input.val,
        model["path"],
        snakemake.wildcards.method,
        snakemake.params.estimator,
        snakemake.params.train,
        trl,
        int(snakemake.wildcards.seed),
        snakemake.params.run_dir,
        options=ReproductionOptions.from_config(config),
    )


def predict_rule(snakemake: Any) -> None:
    from eqpo.backends.trl.trainer import run_prediction

    config = snakemake.config
    _register_custom(config)
    block = dict(snakemake.params.trl or {})
    _threads(block, snakemake.threads)
    run_prediction(
        snakemake.input.test,
        snakemake.input.model,
        snakemake.output[0],
        options=ReproductionOptions.from_config(config),
        max_new_tokens=train_length(snakemake.params.train, "max_response_length"),
        max_samples=snakemake.params.max_samples,
        batch_size=int(block.get("eval_batch_size", 8)),
        use_vllm=block.get("predict_vllm", "auto"),
        seed=0,
    )
