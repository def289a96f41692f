from pathlib import Path

from eqpo.workflow.pipeline import build_cohort, logged

with logged(snakemake.log[0]):
    build_cohort(
        list(snakemake.input.tables),
        snakemake.output.cohort,
        Path(snakemake.output.table1).with_suffix(""),
        snakemake.params.custom,
    )
