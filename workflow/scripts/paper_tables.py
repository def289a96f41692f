from pathlib import Path

from eqpo.workflow.pipeline import logged, render_paper_tables

with logged(snakemake.log[0]):
    render_paper_tables(list(snakemake.input), snakemake.params.config, Path(snakemake.output.table3).parent)
