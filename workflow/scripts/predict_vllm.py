from eqpo.pipeline import logged, not_built

with logged(snakemake.log[0]):
    not_built("GPU evaluation with vLLM", 5)
