from eqpo.workflow.pipeline import logged

with logged(snakemake.log[0]):
    from eqpo.backends.verl.evaluate import run_evaluation
    from eqpo.runs.settings import reproduction_options, train_length, train_settings

    # the run's own lengths (runs.<model>.<method> may change them), as in its training
    train = train_settings(snakemake.config, snakemake.wildcards.model, snakemake.wildcards.method)
    max_tokens = train_length(train, "max_response_length")
    prompt_tokens = train.get("max_prompt_length")
    run_evaluation(
        snakemake.input.checkpoint,
        snakemake.input.test,
        snakemake.output[0],
        snakemake.params.model,
        max_tokens=max_tokens,
        max_model_len=int(prompt_tokens) + max_tokens if prompt_tokens else None,
        tensor_parallel=int(getattr(snakemake.resources, "gpu", 1)),
        options=reproduction_options(snakemake.config),
        max_samples=(snakemake.config.get("evaluation") or {}).get("max_samples"),
        engine=(snakemake.config.get("evaluation") or {}).get("engine", "vllm"),
    )
