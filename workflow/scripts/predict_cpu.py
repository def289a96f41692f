from eqpo.runs.settings import ReproductionOptions
from eqpo.workflow.pipeline import logged, run_predict_cpu

with logged(snakemake.log[0]):
    run_predict_cpu(
        snakemake.input.cohort,
        snakemake.input.policy,
        snakemake.output[0],
        options=ReproductionOptions(**snakemake.params.options),
    )
