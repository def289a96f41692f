from pathlib import Path

from eqpo.workflow.pipeline import logged, render_cluster_stability

with logged(snakemake.log[0]):
    render_cluster_stability(
        list(snakemake.input), snakemake.output.per_step, Path(snakemake.output.table).with_suffix("")
    )
