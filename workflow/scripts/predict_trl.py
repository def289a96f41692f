from eqpo.workflow.pipeline import logged

with logged(snakemake.log[0]):
    from eqpo.workflow.trl import predict_rule

    predict_rule(snakemake)
