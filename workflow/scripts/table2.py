from pathlib import Path

from eqpo.workflow.pipeline import logged, render_table2

with logged(snakemake.log[0]):
    render_table2(
        list(snakemake.input.metrics),
        Path(snakemake.output.csv).with_suffix(""),
        options=snakemake.config,
        dynamics=list(snakemake.input.dynamics),
        test_stem=Path(snakemake.output.test).with_suffix(""),
    )
