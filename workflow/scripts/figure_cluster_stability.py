from eqpo.pipeline import logged, render_cluster_stability_figure

with logged(snakemake.log[0]):
    render_cluster_stability_figure(snakemake.input[0], snakemake.output.png)
