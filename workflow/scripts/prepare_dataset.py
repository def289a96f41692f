from eqpo.pipeline import logged, run_prepare_dataset

p = snakemake.params
with logged(snakemake.log[0]):
    run_prepare_dataset(snakemake.wildcards.dataset, p.root, p.seed, p.split, p.skip_unavailable)
