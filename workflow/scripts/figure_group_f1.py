from eqpo.pipeline import logged, render_group_f1_figure

with logged(snakemake.log[0]):
    render_group_f1_figure(list(snakemake.input), snakemake.output.png)
