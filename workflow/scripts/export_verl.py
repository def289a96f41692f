from eqpo.pipeline import logged, run_export_verl

p = snakemake.params
with logged(snakemake.log[0]):
    run_export_verl(snakemake.input[0], p.root, p.out_dir, p.seed, p.custom)
