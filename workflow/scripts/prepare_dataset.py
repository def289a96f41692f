from pathlib import Path

from eqpo.workflow.pipeline import logged, run_prepare_dataset

p = snakemake.params
with logged(snakemake.log[0]):
    dataset = snakemake.wildcards.dataset
    # data.hemorrhage_release (Hemorrhage), data.covid_blues_commit (COVID-BLUES); "" for the others
    releases = {dataset: p.release} if p.release else None
    root = Path(snakemake.output[0]).parent.parent  # <data root>/<experiment>, above <dataset>/table.parquet
    run_prepare_dataset(dataset, root, p.seed, p.split, p.skip_unavailable, releases)
