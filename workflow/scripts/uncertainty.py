from pathlib import Path

from eqpo.workflow.pipeline import logged, render_uncertainty

with logged(snakemake.log[0]):
    render_uncertainty(
        list(snakemake.input),
        Path(snakemake.output.ci).with_suffix(""),
        Path(snakemake.output.tests).with_suffix(""),
        snakemake.params.n_boot,
        snakemake.params.level,
        class_set=snakemake.params.class_set,
    )
