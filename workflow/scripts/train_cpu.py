from eqpo.runs.settings import RunSettings
from eqpo.workflow.pipeline import logged, run_train_cpu

with logged(snakemake.log[0]):
    run_train_cpu(
        snakemake.input.cohort,
        snakemake.input.pretrained,
        RunSettings.from_dict(snakemake.params.settings),
        int(snakemake.wildcards.seed),
        snakemake.params.run_dir,
        cpu=snakemake.params.cpu,
    )
