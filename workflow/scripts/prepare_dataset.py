from eqpo.pipeline import logged, not_built

with logged(snakemake.log[0]):
    not_built("Downloading and preprocessing the real datasets", 4)
