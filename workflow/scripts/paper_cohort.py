from eqpo.pipeline import logged, not_built

with logged(snakemake.log[0]):
    not_built("Merging the real datasets into one cohort", 4)
