from eqpo.runs.settings import ReproductionOptions
from eqpo.workflow.pipeline import logged, score_predictions

w = snakemake.wildcards
with logged(snakemake.log[0]):
    score_predictions(
        snakemake.input[0],
        snakemake.output[0],
        options=ReproductionOptions(**snakemake.params.options),
        model=w.model,
        method=w.method,
        seed=int(w.seed),
    )
