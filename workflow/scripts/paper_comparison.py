from eqpo.pipeline import logged, render_paper_comparison

with logged(snakemake.log[0]):
    render_paper_comparison(list(snakemake.input.metrics), list(snakemake.input.steps), list(snakemake.input.dynamics),
                            snakemake.params.config, snakemake.params.out_dir)
