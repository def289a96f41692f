from pathlib import Path

from eqpo.workflow.pipeline import logged, run_export_verl

p = snakemake.params
with logged(snakemake.log[0]):
    # images are relative to the cohort's folder; the export goes where the rule's outputs are
    run_export_verl(
        snakemake.input.cohort,
        Path(snakemake.input.cohort).parent,
        Path(snakemake.output[0]).parent,
        p.seed,
        p.custom,
        group_definition=p.group_definition,
        records=p.records,
        covid_blues_options=p.covid_blues_options,
    )
