from pathlib import Path

from eqpo.workflow.pipeline import logged, make_demo_cohort

with logged(snakemake.log[0]):
    make_demo_cohort(
        snakemake.params.settings,
        snakemake.params.datasets,
        snakemake.output.cohort,
        snakemake.output.summary,
        snakemake.params.custom,
        Path(snakemake.output.table1).with_suffix(""),
    )
