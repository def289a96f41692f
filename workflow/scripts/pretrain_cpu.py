from eqpo.workflow.pipeline import logged, run_pretrain

with logged(snakemake.log[0]):
    run_pretrain(snakemake.input.cohort, snakemake.params.model, snakemake.params.settings, 0, snakemake.output[0])
