from eqpo.workflow.pipeline import logged, render_dynamics

with logged(snakemake.log[0]):
    render_dynamics(
        list(snakemake.input.dynamics),
        list(snakemake.input.steps),
        snakemake.output.dynamics,
        snakemake.output.steps,
        snakemake.output.timing,
    )
