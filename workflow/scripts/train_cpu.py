from eqpo.workflow.pipeline import logged, run_train_cpu

with logged(snakemake.log[0]):
    run_train_cpu(
        snakemake.input.cohort,
        snakemake.input.pretrained,
        snakemake.wildcards.method,
        snakemake.params.estimator,
        snakemake.params.train,
        int(snakemake.wildcards.seed),
        snakemake.params.run_dir,
        options=snakemake.config,
    )
