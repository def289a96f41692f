from pathlib import Path

from eqpo.workflow.pipeline import logged, render_paper_comparison

with logged(snakemake.log[0]):
    render_paper_comparison(
        list(snakemake.input.metrics),
        list(snakemake.input.steps),
        list(snakemake.input.dynamics),
        snakemake.params.config,
        Path(snakemake.output.table2).parent,
    )
