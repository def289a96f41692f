from eqpo.pipeline import logged, render_dynamics_figure

with logged(snakemake.log[0]):
    render_dynamics_figure(snakemake.input[0], snakemake.output.png)
