from eqpo.workflow.pipeline import logged, render_plan

with logged(snakemake.log[0]):
    render_plan(snakemake.params.config, snakemake.output[0])
