"""Snakemake script of rule predict_vllm: a verl run's test answers (eqpo.backends.verl.evaluate)."""

from eqpo.workflow.pipeline import logged

with logged(snakemake.log[0]):
    from eqpo.backends.verl.evaluate import run_evaluation
    from eqpo.runs.settings import RunSettings

    settings = RunSettings.from_dict(snakemake.params.settings)
    train = settings.train  # the run's own lengths (runs.<model>.<method> may change them), as in its training
    run_evaluation(
        snakemake.input.checkpoint,
        snakemake.input.test,
        snakemake.output[0],
        dict(settings.model_config),
        max_tokens=train.max_response_length,
        max_model_len=train.max_prompt_length + train.max_response_length,
        tensor_parallel=int(getattr(snakemake.resources, "gpu", 1)),
        options=settings.options,
        max_samples=settings.max_samples,
        engine=snakemake.params.engine,
    )
